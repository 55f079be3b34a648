"""Behaviour of ``trillium.connect`` and ``trillium.run_client``: redirects, refusals,
bad URIs, the open timeout, reconnection and its backoff."""

from __future__ import annotations

import random
import socket

import pytest
import trio

import trillium
from trillium import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    Request,
    Response,
    ServerConnection,
)
from trillium.core.frames import FrameParser, Opcode, serialize_frame

from ._support import (
    TEST_TIMEOUT,
    accept_handshake,
    echo,
    port_of,
    raw_server,
    read_frames,
    read_request,
    serving,
    uri_of,
    wait_until,
)


def redirect_server(location: str, hits: list[str], status: int = 302):  # type: ignore[no-untyped-def]
    async def behaviour(stream: trio.SocketStream) -> None:
        request, _ = await read_request(stream)
        assert request is not None
        hits.append(request.path)
        await stream.send_all(
            f"HTTP/1.1 {status} Redirect\r\nLocation: {location}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )

    return behaviour


async def serve_one_websocket(stream: trio.SocketStream) -> None:
    """Accept the upgrade by hand, greet with the path, then echo the close frame."""
    request = await accept_handshake(stream)
    await stream.send_all(serialize_frame(Opcode.TEXT, f"at {request.path}".encode(), mask=False))
    parser = FrameParser(expect_masked=True)
    while (frame := await read_frames(stream, parser)) is not None:
        if frame.opcode is Opcode.CLOSE:
            await stream.send_all(serialize_frame(Opcode.CLOSE, frame.payload, mask=False))
            return


# --------------------------------------------------------------------------- connect


async def test_connect_sends_user_agent_and_additional_headers() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        seen: list[Request] = []

        def process_request(connection: ServerConnection, request: Request) -> None:
            seen.append(request)

        async with serving(echo, process_request=process_request) as (_, uri):
            async with trillium.connect(uri, additional_headers=[("X-One", "1")]):
                pass
            async with trillium.connect(uri, user_agent_header=None):
                pass
            async with trillium.connect(uri, user_agent_header="custom/1.0"):
                pass
        default, none, custom = seen
        assert default.headers["User-Agent"] == f"Python trillium/{trillium.__version__}"
        assert default.headers["X-One"] == "1"
        assert "User-Agent" not in none.headers
        assert custom.headers["User-Agent"] == "custom/1.0"


async def test_connect_follows_a_redirect_to_the_real_server() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        hits: list[str] = []
        paths: list[str] = []

        async def handler(ws: ServerConnection) -> None:
            paths.append(ws.request.path if ws.request else "")
            await echo(ws)

        async with serving(handler) as (server, _):
            target = uri_of(server, "/target?x=1").replace("ws://", "http://")
            async with (
                raw_server(redirect_server(target, hits)) as port,
                trillium.connect(f"ws://127.0.0.1:{port}/start") as ws,
            ):
                await ws.send("redirected")
                assert await ws.recv() == "redirected"
                assert ws.request is not None and ws.request.path == "/target?x=1"
        assert hits == ["/start"]
        assert paths == ["/target?x=1"]


async def test_connect_over_an_already_connected_socket_uses_it_for_the_handshake() -> None:
    """``sock``: the URI gives only the Host header and the path; the socket, which
    the caller connected, carries the connection."""
    with trio.fail_after(TEST_TIMEOUT):
        paths: list[str] = []

        async def handler(ws: ServerConnection) -> None:
            paths.append(ws.request.path if ws.request else "")
            await echo(ws)

        async with serving(handler) as (server, _):
            sock = socket.create_connection(("127.0.0.1", port_of(server)))
            local = sock.getsockname()
            async with trillium.connect("ws://example.invalid/over-sock", sock=sock) as ws:
                assert ws.local_address == local
                await ws.send("via sock")
                assert await ws.recv() == "via sock"
                assert ws.request is not None
                assert ws.request.headers["Host"] == "example.invalid"
        assert paths == ["/over-sock"]


async def test_connect_over_a_given_socket_does_not_follow_a_redirect() -> None:
    """A redirect names another server, which the socket handed in can't reach: the
    refusal is raised as it came."""
    with trio.fail_after(TEST_TIMEOUT):
        hits: list[str] = []
        async with raw_server(redirect_server("ws://127.0.0.1:1/elsewhere", hits)) as port:
            sock = socket.create_connection(("127.0.0.1", port))
            with pytest.raises(InvalidStatus) as exc_info:
                async with trillium.connect(f"ws://127.0.0.1:{port}/start", sock=sock):
                    pass
        assert exc_info.value.response.status_code == 302
        assert hits == ["/start"]


@pytest.mark.parametrize("status", [301, 303, 307, 308])
async def test_connect_follows_every_redirect_status(status: int) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        hits: list[str] = []
        async with (
            serving(echo) as (_, uri),
            raw_server(redirect_server(uri, hits, status)) as port,
            trillium.connect(f"ws://127.0.0.1:{port}/") as ws,
        ):
            await ws.send("ok")
            assert await ws.recv() == "ok"
        assert hits == ["/"]


async def test_connect_follows_a_relative_redirect_on_the_same_server() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        hits: list[str] = []

        async def behaviour(stream: trio.SocketStream) -> None:
            request, handshake = await read_request(stream)
            assert request is not None
            hits.append(request.path)
            if request.path == "/old":
                await stream.send_all(handshake.reject(301, [("Location", "/new")]))
                return
            await stream.send_all(handshake.accept(request))
            await stream.send_all(serialize_frame(Opcode.TEXT, b"welcome", mask=False))
            parser = FrameParser(expect_masked=True)
            while (frame := await read_frames(stream, parser)) is not None:
                if frame.opcode is Opcode.CLOSE:
                    await stream.send_all(serialize_frame(Opcode.CLOSE, frame.payload, mask=False))
                    return

        async with (
            raw_server(behaviour) as port,
            trillium.connect(f"ws://127.0.0.1:{port}/old") as ws,
        ):
            assert await ws.recv() == "welcome"
            assert ws.request is not None and ws.request.path == "/new"
        assert hits == ["/old", "/new"]


async def test_connect_gives_up_after_10_redirects() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        hits: list[str] = []
        # A server that redirects to itself forever.
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        behaviour = redirect_server(f"ws://127.0.0.1:{port}/again", hits)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, behaviour, listeners)
            with pytest.raises(InvalidHandshake) as exc_info:
                async with trillium.connect(f"ws://127.0.0.1:{port}/"):
                    pass  # pragma: no cover
            nursery.cancel_scope.cancel()
        assert not isinstance(exc_info.value, InvalidStatus)
        assert "redirect" in str(exc_info.value)
        assert len(hits) == 11  # the first request and 10 redirects followed


async def test_ten_redirects_are_still_followed() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, real_uri):
            hits: list[str] = []
            async with trio.open_nursery() as nursery:
                # A chain of 10 redirecting servers, the last pointing at the real one.
                target = real_uri
                for _ in range(10):
                    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                    behaviour = redirect_server(target, hits)
                    nursery.start_soon(trio.serve_listeners, behaviour, listeners)
                    target = f"ws://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
                async with trillium.connect(target) as ws:
                    await ws.send("end of chain")
                    assert await ws.recv() == "end of chain"
                nursery.cancel_scope.cancel()
            assert len(hits) == 10


async def test_invalid_status_carries_status_headers_and_body() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def busy(stream: trio.SocketStream) -> None:
            await read_request(stream)
            await stream.send_all(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n"
                b"Content-Length: 5\r\n\r\nbusy!"
            )

        async with raw_server(busy) as port:
            with pytest.raises(InvalidStatus) as exc_info:
                async with trillium.connect(f"ws://127.0.0.1:{port}/"):
                    pass  # pragma: no cover
        exc = exc_info.value
        assert exc.status_code == 503
        assert exc.response.status_code == 503
        assert exc.response.reason_phrase == "Service Unavailable"
        assert exc.response.headers["Retry-After"] == "7"
        assert exc.response.body == b"busy!"
        assert isinstance(exc, trillium.ConnectionError)


async def test_invalid_status_body_read_until_the_server_closes() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def no_length(stream: trio.SocketStream) -> None:
            await read_request(stream)
            await stream.send_all(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nnothing ")
            await stream.send_all(b"here")

        async with raw_server(no_length) as port:
            with pytest.raises(InvalidStatus) as exc_info:
                async with trillium.connect(f"ws://127.0.0.1:{port}/"):
                    pass  # pragma: no cover
        assert exc_info.value.response.body == b"nothing here"


async def test_a_101_with_a_wrong_accept_key_is_refused() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def wrong_key(stream: trio.SocketStream) -> None:
            await read_request(stream)
            await stream.send_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n"
            )
            await trio.sleep_forever()

        async with raw_server(wrong_key) as port:
            with pytest.raises(InvalidHandshake) as exc_info:
                async with trillium.connect(f"ws://127.0.0.1:{port}/"):
                    pass  # pragma: no cover
        assert not isinstance(exc_info.value, InvalidStatus)


@pytest.mark.parametrize("uri", ["http://x", "ws://", "https://example.com/", "ws://h:99999/"])
async def test_connect_raises_invalid_uri_for_a_bad_uri(uri: str) -> None:
    with trio.fail_after(TEST_TIMEOUT), pytest.raises(InvalidURI) as exc_info:
        async with trillium.connect(uri):
            pass  # pragma: no cover
    assert exc_info.value.uri == uri


async def test_connect_raises_timeout_error_when_server_never_answers() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def mute(stream: trio.SocketStream) -> None:
            while await stream.receive_some(65536):
                pass

        async with raw_server(mute) as port:
            start = trio.current_time()
            with pytest.raises(TimeoutError):
                async with trillium.connect(f"ws://127.0.0.1:{port}/", open_timeout=0.2):
                    pass  # pragma: no cover
            elapsed = trio.current_time() - start
        assert 0.15 <= elapsed < 1.5, elapsed


async def test_connect_raises_os_error_when_nothing_listens() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await listeners[0].aclose()
        with pytest.raises(OSError):
            async with trillium.connect(f"ws://127.0.0.1:{port}/"):
                pass  # pragma: no cover


async def test_connect_raises_invalid_handshake_when_server_closes_during_handshake() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def hang_up(stream: trio.SocketStream) -> None:
            await read_request(stream)

        async with raw_server(hang_up) as port:
            with pytest.raises(InvalidHandshake):
                async with trillium.connect(f"ws://127.0.0.1:{port}/"):
                    pass  # pragma: no cover


async def test_leaving_the_connect_block_closes_with_1000() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        outcome: list[ConnectionClosed] = []

        async def handler(ws: ServerConnection) -> None:
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                outcome.append(exc)

        async with serving(handler) as (_, uri):
            async with trillium.connect(uri) as ws:
                pass
            assert ws.close_code == 1000
            await wait_until(lambda: bool(outcome))
        assert isinstance(outcome[0], ConnectionClosedOK)
        assert outcome[0].code == 1000


async def test_cancelling_the_connect_block_still_sends_a_close_frame() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        outcome: list[ConnectionClosed] = []

        async def handler(ws: ServerConnection) -> None:
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                outcome.append(exc)

        async with serving(handler) as (_, uri):
            # Whether the close frame makes it out depends on the order in which trio
            # delivers the cancellation; 20 rounds make the outcome certain.
            for round_ in range(1, 21):
                with trio.move_on_after(0.05):
                    async with trillium.connect(uri):
                        await trio.sleep_forever()
                await wait_until(lambda: len(outcome) == round_)  # noqa: B023
        assert [type(exc) for exc in outcome] == [ConnectionClosedOK] * 20
        assert [exc.code for exc in outcome] == [1000] * 20


async def test_exception_inside_connect_block_propagates_unwrapped() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri):
            with pytest.raises(KeyError):
                async with trillium.connect(uri):
                    raise KeyError("from the body")


async def test_connection_closed_raised_inside_connect_block_can_be_caught_outside() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def handler(ws: ServerConnection) -> None:
            await ws.close(1012, "restart")

        async with serving(handler) as (_, uri):
            with pytest.raises(ConnectionClosedError) as exc_info:
                async with trillium.connect(uri) as ws:
                    await ws.recv()
        assert exc_info.value.code == 1012


# --------------------------------------------------------------------------- run_client


async def test_run_client_reconnects_after_the_server_closes_with_1012() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        invocations = 0

        async def handler(ws: ServerConnection) -> None:
            nonlocal invocations
            invocations += 1
            if invocations < 3:
                await ws.close(1012, "restarting")
                return
            await ws.send("welcome")
            await ws.wait_closed()

        received: list[object] = []

        async def client_handler(ws: trillium.ClientConnection) -> None:
            received.append(await ws.recv())

        async with serving(handler) as (_, uri):
            await trillium.run_client(uri, client_handler, backoff_min=0.01, backoff_max=0.02)
        assert invocations == 3
        assert received == ["welcome"]


async def test_run_client_retries_a_5xx_refusal_and_returns_when_the_handler_returns() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        attempts = 0

        def process_request(connection: ServerConnection, request: Request) -> Response | None:
            nonlocal attempts
            attempts += 1
            if attempts < 3:
                return connection.respond(503, "later")
            return None

        async def handler(ws: ServerConnection) -> None:
            await ws.send("finally")
            await ws.wait_closed()

        received: list[object] = []

        async def client_handler(ws: trillium.ClientConnection) -> None:
            received.append(await ws.recv())

        async with serving(handler, process_request=process_request) as (_, uri):
            await trillium.run_client(uri, client_handler, backoff_min=0.01, backoff_max=0.02)
        assert attempts == 3
        assert received == ["finally"]


async def test_run_client_does_not_reconnect_after_a_403_refusal() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        attempts = 0
        calls = 0

        def process_request(connection: ServerConnection, request: Request) -> Response | None:
            nonlocal attempts
            attempts += 1
            return connection.respond(403, "forbidden")

        async def client_handler(ws: trillium.ClientConnection) -> None:
            nonlocal calls
            calls += 1  # pragma: no cover

        async with serving(echo, process_request=process_request) as (_, uri):
            with pytest.raises(InvalidStatus) as exc_info:
                await trillium.run_client(uri, client_handler, backoff_min=0.01)
        assert exc_info.value.status_code == 403
        assert attempts == 1
        assert calls == 0


async def test_run_client_does_not_reconnect_after_an_origin_refusal() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo, origins=["https://good.example"]) as (_, uri):
            with pytest.raises(InvalidStatus) as exc_info:
                await trillium.run_client(
                    uri, echo, origin="https://evil.example", backoff_min=0.01
                )
        assert exc_info.value.status_code == 403


async def test_run_client_raises_invalid_uri_at_once() -> None:
    with trio.fail_after(TEST_TIMEOUT), pytest.raises(InvalidURI):
        await trillium.run_client("http://example.com/", echo, backoff_min=0.01)


async def test_run_client_gives_up_after_max_attempts() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        attempts = 0

        def process_request(connection: ServerConnection, request: Request) -> Response:
            nonlocal attempts
            attempts += 1
            return connection.respond(503, "down")

        async with serving(echo, process_request=process_request) as (_, uri):
            with pytest.raises(InvalidStatus) as exc_info:
                await trillium.run_client(uri, echo, backoff_min=0.01, max_attempts=3)
        assert exc_info.value.status_code == 503
        assert attempts == 3


async def test_run_client_retries_network_errors_until_max_attempts() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await listeners[0].aclose()
        start = trio.current_time()
        with pytest.raises(OSError):
            await trillium.run_client(
                f"ws://127.0.0.1:{port}/", echo, backoff_min=0.01, max_attempts=4
            )
        assert trio.current_time() - start < 2


def _all_tasks() -> set[trio.lowlevel.Task]:
    tasks: set[trio.lowlevel.Task] = set()
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None:
            continue
        tasks.add(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return tasks


async def test_run_client_cancelled_during_backoff_stops_at_once_and_leaves_no_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        attempts = 0

        def process_request(connection: ServerConnection, request: Request) -> Response:
            nonlocal attempts
            attempts += 1
            return connection.respond(503, "down")

        # Full jitter picks a delay in [0, backoff]; make it the whole backoff.
        monkeypatch.setattr(random, "uniform", lambda low, high: high)
        async with serving(echo, process_request=process_request) as (server, uri):
            await wait_until(lambda: server.connections == set())
            before = _all_tasks()
            start = trio.current_time()
            with trio.move_on_after(0.3) as scope:
                await trillium.run_client(uri, echo, backoff_min=60, backoff_max=60)
            elapsed = trio.current_time() - start
            assert scope.cancelled_caught
            assert attempts == 1  # it was sleeping before a second attempt
            assert elapsed < 1
            await wait_until(lambda: _all_tasks() == before)
