"""The WebSocket bridge, in process: ASGI applications written message by message,
served by ``trillium.asgi.serve`` on trio, driven by trillium's client and by a raw
client. Each edge case of the ASGI WebSocket spec has its test here."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trillium
from trillium.asgi import ClientDisconnected, Config, build_ws_scope
from trillium.core import Headers, Request
from trillium.core.frames import Opcode

from .._support import RawClient, wait_until
from ._support import TEST_TIMEOUT, asgi_serving


class Recorder:
    """An app's observations, and an event a test can wait on."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.done = trio.Event()


def echo_app(recorder: Recorder | None = None, **accept: Any) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        assert await receive() == {"type": "websocket.connect"}
        await send({"type": "websocket.accept", **accept})
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    if recorder is not None:
                        recorder.seen.append(message)
                    return
                await send({**message, "type": "websocket.send"})
        finally:
            if recorder is not None:
                recorder.done.set()

    return app


# --------------------------------------------------------------------------- scope


def test_build_ws_scope_fields() -> None:
    request = Request(
        "/chat/a%2Fb?x=1&y=%20",
        Headers([("Host", "h"), ("X-Two", "1"), ("x-two", "2"), ("Sec-WebSocket-Protocol", "a")]),
    )
    state = {"db": "pool"}
    scope = build_ws_scope(
        request,
        Config(ssl_certfile="c.pem", root_path="/r/"),
        ("1.2.3.4", 5),
        ("6.7.8.9", 443),
        state=state,
    )
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "wss"
    assert scope["root_path"] == "/r"
    assert scope["path"] == "/r/chat/a/b"
    assert scope["raw_path"] == b"/r/chat/a%2Fb"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["headers"][1:3] == [(b"x-two", b"1"), (b"x-two", b"2")]
    assert scope["subprotocols"] == ["a"]
    assert scope["client"] == ("1.2.3.4", 5) and scope["server"] == ("6.7.8.9", 443)
    assert scope["extensions"] == {"websocket.http.response": {}}
    assert scope["state"] == state and scope["state"] is not state  # a shallow copy


async def test_scope_seen_by_the_app_and_per_connection_state() -> None:
    scopes: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await receive()
        scope["state"]["mine"] = len(scopes)  # must not leak into other connections
        await send({"type": "websocket.accept"})
        await receive()

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app, root_path="/api") as (server, port):
            server.state["shared"] = "lifespan value"
            for _ in range(2):
                async with trillium.connect(f"ws://127.0.0.1:{port}/p%20q?a=b") as ws:
                    assert ws.subprotocol is None
    first, second = scopes
    assert first["path"] == "/api/p q" and first["raw_path"] == b"/api/p%20q"
    assert first["query_string"] == b"a=b" and first["scheme"] == "ws"
    assert first["client"][0] == "127.0.0.1" and first["server"] == ("127.0.0.1", port)
    assert second["state"] == {"shared": "lifespan value", "mine": 2}
    assert "mine" not in server.state


# --------------------------------------------------------------------------- accept


async def test_subprotocol_selection_and_accept_headers() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        supported = ["v2", "v1"]
        chosen = next((p for p in scope["subprotocols"] if p in supported), None)
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": chosen,
                "headers": [(b"x-served-by", b"app"), (b"set-cookie", b"a=1")],
            }
        )
        await send({"type": "websocket.send", "text": repr(chosen)})
        await receive()

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            uri = f"ws://127.0.0.1:{port}/"
            async with trillium.connect(uri, subprotocols=["v3", "v1", "v2"]) as ws:
                assert ws.subprotocol == "v1"  # the client's first choice the app supports
                assert await ws.recv() == "'v1'"
                assert ws.response is not None
                assert ws.response.headers["X-Served-By"] == "app"
                assert ws.response.headers["Sec-WebSocket-Protocol"] == "v1"
            async with trillium.connect(uri, subprotocols=["v9"]) as ws:
                assert ws.subprotocol is None
                assert await ws.recv() == "None"
            async with trillium.connect(uri) as ws:
                assert await ws.recv() == "None"


async def test_accepting_an_unoffered_subprotocol_fails_the_app_with_500() -> None:
    errors: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        try:
            await send({"type": "websocket.accept", "subprotocol": "never-offered"})
        except Exception as exc:
            errors.append(exc)
            raise

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            with pytest.raises(trillium.InvalidStatus) as exc_info:
                async with trillium.connect(f"ws://127.0.0.1:{port}/", subprotocols=["v1"]):
                    pass  # pragma: no cover
    assert exc_info.value.response.status_code == 500
    assert isinstance(errors[0], trillium.NegotiationError)


async def test_close_before_accept_rejects_with_403() -> None:
    after: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008, "reason": "no"})
        after.append(await receive())  # the connection is over
        with pytest.raises(ClientDisconnected):
            await send({"type": "websocket.send", "text": "late"})
        await send({"type": "websocket.close"})  # closing again is harmless

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            with pytest.raises(trillium.InvalidStatus) as exc_info:
                async with trillium.connect(f"ws://127.0.0.1:{port}/"):
                    pass  # pragma: no cover
            assert exc_info.value.response.status_code == 403
            await wait_until(lambda: bool(after))
    assert after == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


async def test_denial_response_sends_any_http_response() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert "websocket.http.response" in scope["extensions"]
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"who ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"are you?"})

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            with pytest.raises(trillium.InvalidStatus) as exc_info:
                async with trillium.connect(f"ws://127.0.0.1:{port}/"):
                    pass  # pragma: no cover
    response = exc_info.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Content-Type"] == "text/plain"
    assert response.body == b"who are you?"


async def test_denial_response_rejects_an_invalid_status_and_unexpected_messages() -> None:
    errors: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        for message in (
            {"type": "websocket.http.response.start", "status": 101, "headers": []},
            {"type": "websocket.send", "text": "before accept"},
        ):
            with pytest.raises(RuntimeError) as exc_info:
                await send(message)
            errors.append(str(exc_info.value))
        await send({"type": "websocket.http.response.start", "status": 418, "headers": []})
        with pytest.raises(RuntimeError, match=r"websocket\.http\.response\.body"):
            await send({"type": "websocket.accept"})
        await send({"type": "websocket.http.response.body", "body": b"teapot"})

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            with pytest.raises(trillium.InvalidStatus) as exc_info:
                async with trillium.connect(f"ws://127.0.0.1:{port}/"):
                    pass  # pragma: no cover
    assert exc_info.value.response.status_code == 418
    assert "invalid HTTP status 101" in errors[0]
    assert "Expected ASGI message 'websocket.accept'" in errors[1]


async def test_app_that_returns_without_answering_gets_500() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            with pytest.raises(trillium.InvalidStatus) as exc_info:
                async with trillium.connect(f"ws://127.0.0.1:{port}/"):
                    pass  # pragma: no cover
    assert exc_info.value.response.status_code == 500


async def test_invalid_upgrade_is_refused_by_the_core_handshake() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        raise AssertionError("the app must not see an invalid upgrade")

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
            )
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
            await stream.aclose()
    assert data.startswith(b"HTTP/1.1 426")
    assert b"Sec-WebSocket-Version: 13" in data


# --------------------------------------------------------------------------- messages


async def test_text_and_binary_messages_and_compression() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(echo_app()) as (_, port):
            for compression in ("deflate", None):
                uri = f"ws://127.0.0.1:{port}/"
                async with trillium.connect(uri, compression=compression) as ws:
                    assert ("permessage-deflate" in str(ws.response)) == bool(compression)
                    for message in ("héllo", b"\x00\xff" * 1000, "x" * 100_000, b""):
                        await ws.send(message)
                        assert await ws.recv() == message


async def test_first_frames_sent_with_the_request_are_not_lost() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(echo_app()) as (_, port):
            client = await RawClient.connect(port, handshake=False)
            from trillium.core.frames import serialize_frame

            # The upgrade request and a first frame in a single write.
            frame = serialize_frame(Opcode.TEXT, b"early", mask=True)
            request = (
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await client.send_bytes(request + frame)
            data = b""
            while b"\r\n\r\n" not in data:
                data += await client.sock.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            client.parser.feed(rest)
            echoed = await client.recv_frame()
            assert echoed is not None and echoed.payload == b"early"
            client.close()


# --------------------------------------------------------------------------- disconnect codes


async def test_disconnect_carries_the_clients_code_and_reason() -> None:
    recorder = Recorder()
    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(echo_app(recorder)) as (_, port):
            async with trillium.connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.close(4000, "see you")
            await recorder.done.wait()
    assert recorder.seen == [{"type": "websocket.disconnect", "code": 4000, "reason": "see you"}]


async def test_disconnect_without_a_code_is_1005_and_without_a_close_frame_1006() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        recorder = Recorder()
        async with asgi_serving(echo_app(recorder)) as (_, port):
            client = await RawClient.connect(port)
            await client.send_frame(Opcode.CLOSE, b"")
            await recorder.done.wait()
            client.close()
        assert recorder.seen[0]["code"] == 1005

        recorder = Recorder()
        async with asgi_serving(echo_app(recorder)) as (_, port):
            client = await RawClient.connect(port)
            client.close()  # no close frame: TCP just ends
            await recorder.done.wait()
        assert recorder.seen[0]["code"] == 1006


async def test_message_over_max_size_closes_with_1009() -> None:
    recorder = Recorder()
    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(echo_app(recorder), max_size=1000) as (_, port):
            async with trillium.connect(f"ws://127.0.0.1:{port}/", compression=None) as ws:
                await ws.send(b"x" * 1000)  # at the limit: fine
                assert await ws.recv() == b"x" * 1000
                await ws.send(b"x" * 1001)
                with pytest.raises(trillium.ConnectionClosedError):
                    await ws.recv()
                assert ws.close_code == 1009
            await recorder.done.wait()
    assert recorder.seen[0]["code"] == 1009


# --------------------------------------------------------------------------- closing


async def test_app_close_with_code_and_reason_then_disconnect() -> None:
    after: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4001, "reason": "bye"})
        after.append(await receive())
        after.append(await receive())  # and again: the same answer, no hang

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            async with trillium.connect(f"ws://127.0.0.1:{port}/") as ws:
                with pytest.raises(trillium.ConnectionClosed):
                    await ws.recv()
                assert (ws.close_code, ws.close_reason) == (4001, "bye")
            await wait_until(lambda: len(after) == 2)
    assert after == [{"type": "websocket.disconnect", "code": 4001, "reason": "bye"}] * 2


async def test_app_close_then_return_keeps_the_apps_code() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4002, "reason": "done"})
        # returning at once must not turn the close into a 1000

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            for _ in range(3):
                async with trillium.connect(f"ws://127.0.0.1:{port}/") as ws:
                    with pytest.raises(trillium.ConnectionClosed):
                        await ws.recv()
                    assert (ws.close_code, ws.close_reason) == (4002, "done")


async def test_messages_after_close() -> None:
    results: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})
        for message in (
            {"type": "websocket.send", "text": "late"},
            {"type": "websocket.close", "code": 4000},
            {"type": "websocket.accept"},
        ):
            try:
                await send(message)
                results.append("ok")
            except Exception as exc:
                results.append(type(exc))
        results.append((await receive())["type"])

    with trio.fail_after(TEST_TIMEOUT):
        async with (
            asgi_serving(app) as (_, port),
            trillium.connect(f"ws://127.0.0.1:{port}/") as ws,
        ):
            with pytest.raises(trillium.ConnectionClosedOK):
                await ws.recv()
                assert ws.close_code == 1000
            await wait_until(lambda: len(results) == 4)
    # Sending on a closed connection is an OSError (ASGI spec); closing again does
    # nothing; anything else is a RuntimeError.
    assert results == [ClientDisconnected, "ok", RuntimeError, "websocket.disconnect"]
    assert issubclass(ClientDisconnected, OSError)


async def test_send_after_the_client_left_raises_an_oserror() -> None:
    outcome: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        outcome.append(await receive())
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except OSError as exc:
            outcome.append(exc)

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            async with trillium.connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.close(1001)
            await wait_until(lambda: len(outcome) == 2)
    assert outcome[0] == {"type": "websocket.disconnect", "code": 1001, "reason": ""}
    assert isinstance(outcome[1], ClientDisconnected)


async def test_invalid_close_code_from_the_app_raises_in_the_app() -> None:
    errors: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            await send({"type": "websocket.close", "code": 1006})
        except ValueError as exc:
            errors.append(exc)
        await send({"type": "websocket.close", "code": 1000})

    with trio.fail_after(TEST_TIMEOUT):
        async with (
            asgi_serving(app) as (_, port),
            trillium.connect(f"ws://127.0.0.1:{port}/") as ws,
        ):
            with pytest.raises(trillium.ConnectionClosedOK):
                await ws.recv()
    assert len(errors) == 1


async def test_app_returning_after_accept_closes_with_1000() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "that's all"})

    with trio.fail_after(TEST_TIMEOUT):
        async with (
            asgi_serving(app) as (_, port),
            trillium.connect(f"ws://127.0.0.1:{port}/") as ws,
        ):
            assert await ws.recv() == "that's all"
            with pytest.raises(trillium.ConnectionClosedOK):
                await ws.recv()
            assert ws.close_code == 1000


# --------------------------------------------------------------------------- app exceptions


async def test_app_exceptions_give_500_before_accept_and_1011_after() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if scope["path"] == "/before":
            raise RuntimeError("boom before accept (on purpose)")
        await send({"type": "websocket.accept"})
        message = await receive()
        if scope["path"] == "/after":
            raise RuntimeError("boom after accept (on purpose)")
        await send({**message, "type": "websocket.send"})
        await receive()

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            with pytest.raises(trillium.InvalidStatus) as exc_info:
                async with trillium.connect(f"ws://127.0.0.1:{port}/before"):
                    pass  # pragma: no cover
            assert exc_info.value.response.status_code == 500
            async with trillium.connect(f"ws://127.0.0.1:{port}/after") as ws:
                await ws.send("trigger")
                with pytest.raises(trillium.ConnectionClosedError):
                    await ws.recv()
                assert ws.close_code == 1011
            # The server carries on.
            async with trillium.connect(f"ws://127.0.0.1:{port}/fine") as ws:
                await ws.send("still here")
                assert await ws.recv() == "still here"


async def test_accept_only_once_and_send_needs_text_or_bytes() -> None:
    errors: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        for message in ({"type": "websocket.accept"}, {"type": "websocket.send"}):
            try:
                await send(message)
            except (RuntimeError, ValueError) as exc:
                errors.append(str(exc))
        await send({"type": "websocket.close"})

    with trio.fail_after(TEST_TIMEOUT):
        async with (
            asgi_serving(app) as (_, port),
            trillium.connect(f"ws://127.0.0.1:{port}/") as ws,
        ):
            with pytest.raises(trillium.ConnectionClosedOK):
                await ws.recv()
    assert "Expected ASGI message 'websocket.send' or 'websocket.close'" in errors[0]
    assert "needs 'text' or 'bytes'" in errors[1]


# --------------------------------------------------------------------------- backpressure


async def test_max_queue_stops_reading_until_the_app_receives() -> None:
    go = trio.Event()
    received: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await go.wait()  # not receiving: messages pile up, up to max_queue
        while (message := await receive())["type"] == "websocket.receive":
            received.append(message["bytes"])

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app, max_queue=4) as (server, port):
            client = await RawClient.connect(port, sndbuf=4096)
            (session,) = server.websockets
            payload = b"m" * 32768

            async def flood() -> None:
                for i in range(64):
                    await client.send_frame(Opcode.BINARY, bytes([i]) + payload)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                try:
                    await wait_until(lambda: len(session.connection._messages) >= 4)
                    await trio.sleep(0.2)
                    # The reader stopped at max_queue (give or take what its last
                    # read held); the rest waits in the kernel, and in the client.
                    queued = len(session.connection._messages)
                    assert queued <= 4 + session.connection._read_size // len(payload) + 1
                    await trio.sleep(0.2)
                    assert len(session.connection._messages) == queued
                finally:
                    go.set()
            await client.send_frame(Opcode.CLOSE, b"\x03\xe8")
            await wait_until(lambda: len(received) == 64)
            client.close()
    assert [m[0] for m in received] == list(range(64))


async def test_write_limit_makes_the_app_wait_for_a_slow_client() -> None:
    sent = 0
    done = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal sent
        await receive()
        await send({"type": "websocket.accept"})
        for _ in range(200):
            await send({"type": "websocket.send", "bytes": b"z" * 65536})
            sent += 1
        done.set()
        await receive()

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app, write_limit=65536) as (server, port):
            client = await RawClient.connect(port, rcvbuf=4096)  # and it never reads
            await wait_until(lambda: sent > 0)
            await trio.sleep(0.3)
            (session,) = server.websockets
            stalled_at = sent
            assert stalled_at < 200 and not done.is_set()
            # What waits in the server is bounded by the limit (plus one message).
            assert session.connection._out_size <= 65536 + 65536 + 16
            # Reading lets the app go on.
            total = 0
            while total < 200:
                frame = await client.recv_frame_skipping_pings()
                assert frame is not None
                total += 1
            await done.wait()
            client.close()


# --------------------------------------------------------------------------- shutdown


async def test_server_close_closes_websockets_with_1001() -> None:
    recorder = Recorder()
    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(echo_app(recorder)) as (server, port):
            async with trillium.connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                await server.close()
                with pytest.raises(trillium.ConnectionClosedOK):
                    await ws.recv()
                assert (ws.close_code, ws.close_reason) == (1001, "server shutting down")
            await recorder.done.wait()
    assert recorder.seen[0]["code"] == 1001


async def test_cancelled_server_closes_websockets_with_1001() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                _serve_in_nursery, echo_app(), {"access_log": False, "lifespan": "off"}
            )
            port = server.sockets[0].getsockname()[1]
            async with trillium.connect(f"ws://127.0.0.1:{port}/") as ws:
                nursery.cancel_scope.cancel()
                with pytest.raises(trillium.ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1001


async def _serve_in_nursery(app: Any, options: dict[str, Any], *, task_status: Any) -> None:
    await trillium.asgi.serve(app, "127.0.0.1", 0, task_status=task_status, **options)
