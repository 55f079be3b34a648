"""Behaviour of ``trillium.serve`` / ``unix_serve``: the handshake options, handlers,
the server's lifecycle and the connections it tracks."""

from __future__ import annotations

import logging
import os
import resource
import socket
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
import trio

import trillium
from trillium import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    Request,
    Response,
    ServerConnection,
    State,
)

from ._support import (
    TEST_TIMEOUT,
    RawClient,
    assert_broken_delivery_logged_once,
    break_delivery_of_boom,
    echo,
    port_of,
    recording_echo,
    serving,
    uri_of,
    wait_until,
)


async def report_subprotocol(ws: ServerConnection) -> None:
    await ws.send(repr(ws.subprotocol))
    await ws.wait_closed()


# --------------------------------------------------------------------------- origins


async def test_server_accepts_allowed_origin_and_rejects_others_with_403() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        origins = ["https://good.example", "https://also.example"]
        async with serving(echo, origins=origins) as (_, uri):
            for origin in origins:
                async with trillium.connect(uri, origin=origin) as ws:
                    await ws.send(origin)
                    assert await ws.recv() == origin
            with pytest.raises(InvalidStatus) as exc_info:
                async with trillium.connect(uri, origin="https://evil.example"):
                    pytest.fail("connected from a forbidden origin")  # pragma: no cover
            assert exc_info.value.status_code == 403
            assert exc_info.value.response.status_code == 403
            assert b"origin not allowed" in exc_info.value.response.body


async def test_server_rejects_missing_origin_unless_none_is_allowed() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo, origins=["https://good.example"]) as (_, uri):
            with pytest.raises(InvalidStatus) as exc_info:
                async with trillium.connect(uri):
                    pass  # pragma: no cover
            assert exc_info.value.status_code == 403
        async with (
            serving(echo, origins=["https://good.example", None]) as (_, uri),
            trillium.connect(uri) as ws,
        ):
            await ws.send("no origin is fine")
            assert await ws.recv() == "no origin is fine"


# --------------------------------------------------------------------------- subprotocols


async def test_subprotocol_negotiation_picks_the_clients_first_supported() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(report_subprotocol, subprotocols=["chat", "superchat"]) as (_, uri):
            async with trillium.connect(uri, subprotocols=["v3", "superchat", "chat"]) as ws:
                assert ws.subprotocol == "superchat"
                assert await ws.recv() == "'superchat'"
                assert ws.response is not None
                assert ws.response.headers["Sec-WebSocket-Protocol"] == "superchat"
            async with trillium.connect(uri, subprotocols=["chat"]) as ws:
                assert ws.subprotocol == "chat"
                assert await ws.recv() == "'chat'"


async def test_no_common_subprotocol_is_rejected_with_400() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(report_subprotocol, subprotocols=["chat"]) as (_, uri):
            with pytest.raises(InvalidStatus) as exc_info:
                async with trillium.connect(uri, subprotocols=["graphql-ws", "mqtt"]):
                    pass  # pragma: no cover
            assert exc_info.value.status_code == 400
            assert b"subprotocol" in exc_info.value.response.body


async def test_client_offering_no_subprotocol_is_accepted_without_one() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            serving(report_subprotocol, subprotocols=["chat"]) as (_, uri),
            trillium.connect(uri) as ws,
        ):
            assert ws.subprotocol is None
            assert await ws.recv() == "None"
            assert ws.response is not None
            assert "Sec-WebSocket-Protocol" not in ws.response.headers


async def test_select_subprotocol_callback_chooses_the_subprotocol() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        calls: list[tuple[object, list[str]]] = []

        def select(connection: ServerConnection, offered: list[str]) -> str | None:
            calls.append((connection, list(offered)))
            return offered[-1] if offered else None

        async with serving(report_subprotocol, select_subprotocol=select) as (_, uri):
            async with trillium.connect(uri, subprotocols=["a", "b", "c"]) as ws:
                assert ws.subprotocol == "c"
                assert await ws.recv() == "'c'"
            async with trillium.connect(uri) as ws:
                assert ws.subprotocol is None
                assert await ws.recv() == "None"
        assert [offered for _, offered in calls] == [["a", "b", "c"], []]
        assert all(isinstance(connection, ServerConnection) for connection, _ in calls)


async def test_select_subprotocol_choosing_an_unoffered_subprotocol_refuses_the_client() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        def select(connection: ServerConnection, offered: list[str]) -> str | None:
            return "unoffered" if "trigger" in offered else None

        async with serving(report_subprotocol, select_subprotocol=select) as (_, uri):
            with pytest.raises(InvalidHandshake):
                async with trillium.connect(uri, subprotocols=["trigger"]):
                    pass  # pragma: no cover
            # The server is still fine.
            async with trillium.connect(uri, subprotocols=["chat"]) as ws:
                assert ws.subprotocol is None
                assert await ws.recv() == "None"


# ------------------------------------------------------------------ process_request/response


async def test_process_request_response_rejects_the_client_with_its_status_and_body() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        handled: list[ServerConnection] = []

        async def handler(ws: ServerConnection) -> None:
            handled.append(ws)  # pragma: no cover

        def process_request(connection: ServerConnection, request: Request) -> Response | None:
            return connection.respond(401, "no")

        async with serving(handler, process_request=process_request) as (_, uri):
            with pytest.raises(InvalidStatus) as exc_info:
                async with trillium.connect(uri):
                    pass  # pragma: no cover
        exc = exc_info.value
        assert exc.status_code == 401
        assert exc.response.status_code == 401
        assert exc.response.body == b"no"
        assert exc.response.headers["Content-Type"].startswith("text/plain")
        assert handled == []


async def test_async_process_request_sees_the_request_and_may_accept() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        seen: list[tuple[str, str | None]] = []

        async def process_request(
            connection: ServerConnection, request: Request
        ) -> Response | None:
            await trio.sleep(0)
            seen.append((request.path, request.headers.get("X-Token")))
            if request.path != "/allowed":
                return connection.respond(404, "not here\n")
            return None

        async with serving(echo, process_request=process_request) as (server, _):
            async with trillium.connect(
                uri_of(server, "/allowed"), additional_headers={"X-Token": "t0k"}
            ) as ws:
                await ws.send("in")
                assert await ws.recv() == "in"
            with pytest.raises(InvalidStatus) as exc_info:
                async with trillium.connect(uri_of(server, "/elsewhere")):
                    pass  # pragma: no cover
            assert exc_info.value.status_code == 404
            assert exc_info.value.response.body == b"not here\n"
        assert seen == [("/allowed", "t0k"), ("/elsewhere", None)]


async def test_process_response_adds_a_header_the_client_sees() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        def process_response(
            connection: ServerConnection, request: Request, response: Response
        ) -> None:
            response.headers["X-Trillium-Test"] = f"seen {request.path}"

        async with (
            serving(echo, process_response=process_response) as (server, _),
            trillium.connect(uri_of(server, "/path")) as ws,
        ):
            assert ws.response is not None
            assert ws.response.headers["X-Trillium-Test"] == "seen /path"


async def test_process_response_may_replace_the_response() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def process_response(
            connection: ServerConnection, request: Request, response: Response
        ) -> Response:
            return connection.respond(503, "maintenance")

        async with serving(echo, process_response=process_response) as (_, uri):
            with pytest.raises(InvalidStatus) as exc_info:
                async with trillium.connect(uri):
                    pass  # pragma: no cover
            assert exc_info.value.status_code == 503
            assert exc_info.value.response.body == b"maintenance"


async def test_server_header_is_sent_by_default_and_removed_with_none() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri) as ws:
            assert ws.response is not None
            assert ws.response.headers["Server"] == f"Python trillium/{trillium.__version__}"
        async with (
            serving(echo, server_header="my-server/2") as (_, uri),
            trillium.connect(uri) as ws,
        ):
            assert ws.response is not None
            assert ws.response.headers["Server"] == "my-server/2"
        async with serving(echo, server_header=None) as (_, uri), trillium.connect(uri) as ws:
            assert ws.response is not None
            assert "Server" not in ws.response.headers


async def test_server_answers_a_plain_http_request_with_400() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (server, _):
            client = await RawClient.connect(port_of(server), handshake=False)
            await client.send_bytes(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            response = await client.read_until_eof()
            assert response.startswith(b"HTTP/1.1 400"), response
            client.close()


async def test_server_answers_an_unsupported_version_with_426() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (server, _):
            client = await RawClient.connect(port_of(server), handshake=False)
            await client.send_bytes(
                b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 8\r\n\r\n"
            )
            response = await client.read_until_eof()
            assert response.startswith(b"HTTP/1.1 426"), response
            assert b"sec-websocket-version: 13" in response.lower()
            client.close()


# --------------------------------------------------------------------------- open_timeout


async def test_server_drops_a_client_that_sends_nothing_after_open_timeout() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo, open_timeout=0.2) as (server, uri):
            start = trio.current_time()
            silent = await RawClient.connect(port_of(server), handshake=False)
            assert await silent.read_until_eof() == b""
            elapsed = trio.current_time() - start
            assert 0.15 <= elapsed < 1.5, elapsed
            silent.close()

            # Half a request is no better.
            start = trio.current_time()
            slow = await RawClient.connect(port_of(server), handshake=False)
            await slow.send_bytes(b"GET / HTTP/1.1\r\nHost: local")
            assert await slow.read_until_eof() == b""
            assert trio.current_time() - start < 1.5
            slow.close()

            # A prompt client is served as usual.
            async with trillium.connect(uri) as ws:
                await trio.sleep(0.3)  # longer than open_timeout: it no longer applies
                await ws.send("still here")
                assert await ws.recv() == "still here"


@pytest.mark.parametrize("callback", ["process_request", "process_response"])
async def test_server_times_out_a_handshake_whose_async_callback_never_returns(
    callback: str, caplog: pytest.LogCaptureFixture
) -> None:
    # open_timeout bounds the whole handshake, the server's own callbacks included:
    # the client is dropped, the server logs it and keeps serving.
    with trio.fail_after(TEST_TIMEOUT):
        stuck = True

        async def hang(connection: ServerConnection, *args: object) -> None:
            if stuck:
                await trio.sleep_forever()

        with caplog.at_level(logging.INFO, logger="trillium"):
            async with serving(echo, open_timeout=0.2, **{callback: hang}) as (server, uri):
                client = await RawClient.connect(port_of(server), handshake=False)
                await client.send_bytes(
                    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                )
                assert await client.read_until_eof() == b""
                client.close()
                assert server.connections == set()
                stuck = False
                async with trillium.connect(uri) as ws:
                    await ws.send("served")
                    assert await ws.recv() == "served"
        assert "opening handshake failed" in caplog.text


async def test_server_accepts_every_connection_waiting_at_once_with_tcp_nodelay() -> None:
    # More clients than the accept loop takes before yielding, all connected before
    # it runs: every one is served, over a socket with Nagle's algorithm off.
    with trio.fail_after(TEST_TIMEOUT):
        nodelay: list[int] = []

        async def handler(ws: ServerConnection) -> None:
            sock = ws.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            await echo(ws)

        async with serving(handler) as (server, _):
            clients = []
            for _ in range(40):
                sock = trio.socket.socket()
                await sock.connect(("127.0.0.1", port_of(server)))
                clients.append(RawClient(sock))
            for client in clients:
                await client.handshake(port_of(server))
                await client.send_frame(0x1, b"hi")
                frame = await client.recv_frame()
                assert frame is not None and frame.payload == b"hi"
                client.close()
        assert len(nodelay) == 40
        assert all(nodelay)


async def test_a_closed_connections_stream_is_closed_as_by_its_aclose() -> None:
    # The reader closes a plain socket without anyio's aclose() (and its
    # checkpoint), to the same effect: the stream says it is closed.
    with trio.fail_after(TEST_TIMEOUT):
        handled: list[ServerConnection] = []
        async with serving(recording_echo(handled)) as (server, uri):
            async with trillium.connect(uri) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
            await wait_until(lambda: server.connections == set())
        (connection,) = handled
        assert connection.state is State.CLOSED
        with pytest.raises(anyio.ClosedResourceError):
            await connection.stream.send(b"after")
        with pytest.raises(anyio.ClosedResourceError):
            await connection.stream.receive()


async def test_server_keeps_accepting_after_accept_fails_for_lack_of_file_descriptors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # accept() failing with EMFILE is logged and retried: once descriptors are free
    # again, the client that was waiting is served.
    with trio.fail_after(TEST_TIMEOUT), caplog.at_level(logging.WARNING, logger="trillium"):
        async with serving(echo) as (server, uri):
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            client = trio.socket.socket()
            try:
                # No room for another descriptor: the lowest free one is over the limit.
                lowest_free = os.dup(0)
                os.close(lowest_free)
                resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
                await client.connect(("127.0.0.1", port_of(server)))
                await wait_until(lambda: "accept() failed" in caplog.text)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            raw = RawClient(client)
            await raw.handshake(port_of(server))
            await raw.send_frame(0x1, b"served")
            frame = await raw.recv_frame()
            assert frame is not None and frame.payload == b"served"
            raw.close()
            async with trillium.connect(uri) as ws:
                await ws.send("and the next one")
                assert await ws.recv() == "and the next one"
        assert "Too many open files" in caplog.text


# --------------------------------------------------------------------------- handlers


async def test_handler_exception_closes_with_1011_and_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        calls = 0

        async def handler(ws: ServerConnection) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("handler bug")
            await echo(ws)

        with caplog.at_level(logging.ERROR, logger="trillium"):
            async with serving(handler) as (_, uri):
                async with trillium.connect(uri) as ws:
                    with pytest.raises(ConnectionClosedError) as exc_info:
                        await ws.recv()
                    assert exc_info.value.code == 1011
                async with trillium.connect(uri) as ws:
                    await ws.send("second client")
                    assert await ws.recv() == "second client"
        assert calls == 2
        assert any(
            record.exc_info and "handler bug" in str(record.exc_info[1])
            for record in caplog.records
        )


async def test_failure_of_a_connections_own_task_ends_that_connection_only_and_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in trillium itself, here in the reader task's delivery of one message,
    ends that connection (TCP dropped, the handler cancelled) and is logged with its
    traceback; the server and its other connections go on."""
    break_delivery_of_boom(monkeypatch)
    with trio.fail_after(TEST_TIMEOUT), caplog.at_level(logging.ERROR, logger="trillium"):
        async with serving(echo) as (server, uri), trillium.connect(uri) as bystander:
            async with trillium.connect(uri) as ws:
                await ws.send("boom")
                with pytest.raises(ConnectionClosedError) as exc_info:
                    await ws.recv()
                assert exc_info.value.code == 1006
            await wait_until(lambda: len(server.connections) == 1)
            await bystander.send("still here")
            assert await bystander.recv() == "still here"
            async with trillium.connect(uri) as later:
                await later.send("and served")
                assert await later.recv() == "and served"
    assert_broken_delivery_logged_once(caplog)


async def test_handler_returning_closes_the_connection_with_1000() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def handler(ws: ServerConnection) -> None:
            await ws.send("bye")

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            assert await ws.recv() == "bye"
            with pytest.raises(ConnectionClosedOK) as exc_info:
                await ws.recv()
            assert exc_info.value.code == 1000


# --------------------------------------------------------------------------- lifecycle


async def test_server_close_closes_every_connection_with_1001_and_waits_for_handlers() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        finished: list[ServerConnection] = []

        async def handler(ws: ServerConnection) -> None:
            try:
                await echo(ws)
            finally:
                finished.append(ws)

        async with serving(handler) as (server, uri), AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(trillium.connect(uri)) for _ in range(3)]
            await wait_until(lambda: len(server.connections) == 3)
            await server.close()
            # close() returns once every handler has ended.
            assert len(finished) == 3
            assert server.connections == set()
            assert all(ws.state is State.CLOSED and ws.close_code == 1001 for ws in finished)
            for ws in clients:
                with pytest.raises(ConnectionClosedOK) as exc_info:
                    await ws.recv()
                assert exc_info.value.code == 1001
            # No longer listening.
            with pytest.raises(OSError):
                async with trillium.connect(uri):
                    pass  # pragma: no cover
            await server.wait_closed()
            await server.close()  # closing twice is fine


async def test_leaving_the_serve_block_closes_connections_with_1001() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        outcomes: list[ConnectionClosed] = []
        handlers_done = 0

        async def handler(ws: ServerConnection) -> None:
            nonlocal handlers_done
            try:
                await echo(ws)
            finally:
                handlers_done += 1

        async def client(uri: str, *, task_status: trio.TaskStatus[None]) -> None:
            async with trillium.connect(uri) as ws:
                task_status.started()
                try:
                    await ws.recv()
                except ConnectionClosed as exc:
                    outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            async with serving(handler) as (server, uri):
                for _ in range(3):
                    await nursery.start(client, uri)
                await wait_until(lambda: len(server.connections) == 3)
            assert handlers_done == 3
        assert len(outcomes) == 3
        assert all(isinstance(exc, ConnectionClosedOK) and exc.code == 1001 for exc in outcomes)


async def test_server_close_cancels_handlers_that_outlive_close_timeout() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        cancelled: list[bool] = []

        async def stubborn(ws: ServerConnection) -> None:
            try:
                await trio.sleep_forever()  # ignores the connection closing
            except trio.Cancelled:
                cancelled.append(True)
                raise

        async with (
            serving(stubborn, close_timeout=0.3) as (server, uri),
            trillium.connect(uri) as ws,
        ):
            await wait_until(lambda: len(server.connections) == 1)
            start = trio.current_time()
            await server.close()
            elapsed = trio.current_time() - start
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
        assert cancelled == [True]
        assert 0.25 <= elapsed < 2, elapsed


async def test_nursery_start_returns_the_server_once_listening_and_cancel_closes_it() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        outcomes: list[ConnectionClosed] = []

        async def client(uri: str, *, task_status: trio.TaskStatus[None]) -> None:
            async with trillium.connect(uri) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                task_status.started()
                try:
                    await ws.recv()
                except ConnectionClosed as exc:
                    outcomes.append(exc)

        async with trio.open_nursery() as clients:
            async with trio.open_nursery() as server_nursery:
                server = await server_nursery.start(trillium.serve, echo, "127.0.0.1", 0)
                assert isinstance(server, trillium.WebSocketServer)
                uri = uri_of(server)  # listening already: connecting works at once
                await clients.start(client, uri)
                assert len(server.connections) == 1
                server_nursery.cancel_scope.cancel()
            assert server.connections == set()
        # The connection is closed (the test below checks it is closed cleanly, with 1001).
        (exc,) = outcomes
        assert isinstance(exc, ConnectionClosed)
        with pytest.raises(OSError):
            async with trillium.connect(uri):
                pass  # pragma: no cover


async def test_cancelling_a_nursery_started_server_closes_connections_with_1001() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        outcomes: list[ConnectionClosed] = []

        async def client(uri: str, *, task_status: trio.TaskStatus[None]) -> None:
            async with trillium.connect(uri) as ws:
                task_status.started()
                try:
                    await ws.recv()
                except ConnectionClosed as exc:
                    outcomes.append(exc)

        async with trio.open_nursery() as clients, trio.open_nursery() as server_nursery:
            server = await server_nursery.start(trillium.serve, echo, "127.0.0.1", 0)
            for _ in range(5):
                await clients.start(client, uri_of(server))
            await wait_until(lambda: len(server.connections) == 5)
            server_nursery.cancel_scope.cancel()
        assert [type(exc) for exc in outcomes] == [ConnectionClosedOK] * 5
        assert [exc.code for exc in outcomes] == [1001] * 5


async def test_server_connections_tracks_open_connections() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        handled: list[ServerConnection] = []
        async with serving(recording_echo(handled)) as (server, uri):
            assert server.connections == set()
            async with trillium.connect(uri) as first:
                await wait_until(lambda: len(server.connections) == 1)
                async with trillium.connect(uri) as second:
                    await wait_until(lambda: len(server.connections) == 2)
                    assert server.connections == set(handled)
                    assert all(isinstance(c, ServerConnection) for c in server.connections)
                    ids = {c.id for c in server.connections}
                    assert len(ids) == 2
                    await second.send("x")
                    assert await second.recv() == "x"
                await wait_until(lambda: len(server.connections) == 1)
                assert server.connections == {handled[0]}
                await first.send("y")
                assert await first.recv() == "y"
            await wait_until(lambda: server.connections == set())


async def test_server_exposes_its_listening_sockets() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (server, _):
            (sock,) = server.sockets
            assert isinstance(sock, socket.socket)
            host, port = sock.getsockname()[:2]
            assert host == "127.0.0.1"
            assert port > 0


async def test_serve_accepts_an_already_listening_socket() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        async with trillium.serve(echo, sock=listening) as server:
            assert port_of(server) == port
            async with trillium.connect(f"ws://127.0.0.1:{port}") as ws:
                await ws.send("via sock")
                assert await ws.recv() == "via sock"


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")
async def test_reuse_port_lets_two_servers_share_a_port_and_the_kernel_spreads_clients() -> None:
    """Without ``reuse_port`` a second server can't bind the first one's port; with
    it on both, both listen there, and connections reach each of them."""

    def answering(name: str) -> trillium.server.Handler:
        async def handler(ws: trillium.ServerConnection) -> None:
            await ws.send(name)

        return handler

    with trio.fail_after(TEST_TIMEOUT):
        async with trillium.serve(answering("first"), "127.0.0.1", 0, reuse_port=True) as first:
            port = port_of(first)
            with pytest.raises(OSError):
                async with trillium.serve(echo, "127.0.0.1", port):
                    pass
            async with trillium.serve(
                answering("second"), "127.0.0.1", port, reuse_port=True
            ) as second:
                assert port_of(second) == port
                answered = set()
                for _ in range(200):  # the kernel picks a listener by the client's port
                    async with trillium.connect(f"ws://127.0.0.1:{port}") as ws:
                        answered.add(await ws.recv())
                    if len(answered) == 2:
                        break
                assert answered == {"first", "second"}


async def test_unix_serve_and_unix_connect_talk_over_a_unix_socket(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        path = str(tmp_path / "ws.sock")
        paths: list[str | None] = []

        async def handler(ws: ServerConnection) -> None:
            paths.append(ws.request.path if ws.request else None)
            await echo(ws)

        async with trillium.unix_serve(handler, path) as server:
            assert Path(path).exists()
            async with trillium.unix_connect(path) as ws:
                await ws.send("over unix")
                assert await ws.recv() == "over unix"
                await ws.send(b"\x00bytes")
                assert await ws.recv() == b"\x00bytes"
                assert len(server.connections) == 1
            async with trillium.unix_connect(path, "ws://localhost/chat") as ws:
                await ws.send("again")
                assert await ws.recv() == "again"
        assert paths == ["/", "/chat"]


async def test_unix_serve_started_in_a_nursery(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        path = str(tmp_path / "nursery.sock")
        async with trio.open_nursery() as nursery:
            server = await nursery.start(trillium.unix_serve, echo, path)
            assert isinstance(server, trillium.WebSocketServer)
            async with trillium.unix_connect(path) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            nursery.cancel_scope.cancel()


async def test_serve_rejects_unsupported_compression() -> None:
    with pytest.raises(ValueError):
        trillium.serve(echo, "127.0.0.1", 0, compression="brotli")


async def test_exception_inside_serve_block_propagates_unwrapped() -> None:
    with trio.fail_after(TEST_TIMEOUT), pytest.raises(KeyError):
        async with serving(echo):
            raise KeyError("from the body")


@pytest.mark.parametrize(
    "limits", [{"max_queue": (2, 5)}, {"write_limit": (10, 20)}, {"max_queue": -1}]
)
async def test_serve_rejects_invalid_water_marks_before_accepting_anyone(
    limits: dict[str, object],
) -> None:
    with trio.fail_after(TEST_TIMEOUT), pytest.raises(ValueError):
        trillium.serve(echo, "127.0.0.1", 0, **limits)  # type: ignore[arg-type]


@pytest.mark.parametrize("limits", [{"max_queue": (2, 5)}, {"write_limit": (10, 20)}])
async def test_connect_rejects_invalid_water_marks(limits: dict[str, object]) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri):
            with pytest.raises(ValueError):
                async with trillium.connect(uri, **limits):  # type: ignore[arg-type]
                    pass  # pragma: no cover
            # The server is unharmed.
            async with trillium.connect(uri) as ws:
                await ws.send("fine")
                assert await ws.recv() == "fine"


async def test_process_request_raising_refuses_the_client_and_server_keeps_serving() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        calls = 0

        def process_request(connection: ServerConnection, request: Request) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("process_request bug")

        async with serving(echo, process_request=process_request) as (_, uri):
            with pytest.raises(InvalidHandshake):
                async with trillium.connect(uri):
                    pass  # pragma: no cover
            async with trillium.connect(uri) as ws:
                await ws.send("second")
                assert await ws.recv() == "second"


def test_task_group_start_returns_a_server_on_asyncio() -> None:
    async def main() -> None:
        with anyio.fail_after(TEST_TIMEOUT):
            async with anyio.create_task_group() as tg:
                server = await tg.start(trillium.serve, echo, "127.0.0.1", 0)
                assert isinstance(server, trillium.WebSocketServer)
                async with trillium.connect(uri_of(server)) as ws:
                    await ws.send("on asyncio")
                    assert await ws.recv() == "on asyncio"
                    assert len(server.connections) == 1
                await server.close()
                tg.cancel_scope.cancel()

    anyio.run(main, backend="asyncio")


async def test_process_request_can_answer_a_plain_http_request() -> None:
    """A GET without Upgrade (a health check, a page) reaches process_request, which may
    answer it; without an answer it still gets 400."""

    def health(connection: trillium.ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(200, "OK\n")
        return None

    async def handler(ws: trillium.ServerConnection) -> None:
        await ws.send("upgraded")

    with trio.fail_after(TEST_TIMEOUT):
        async with trillium.serve(handler, "127.0.0.1", 0, process_request=health) as server:
            port = port_of(server)
            for path, status in [("/healthz", b"200"), ("/other", b"400")]:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                answer = b""
                while b"\r\n\r\n" not in answer:
                    answer += await stream.receive_some()
                assert answer.split(b" ")[1] == status
                await stream.aclose()
            async with trillium.connect(f"ws://127.0.0.1:{port}/") as ws:
                assert await ws.recv() == "upgraded"
