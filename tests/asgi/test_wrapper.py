"""The ASGI wrappers' own behaviour, against hand-written ``receive``/``send`` fakes.

(They run under real servers in ``test_serve.py``; here every ASGI message in and
out is checked.)
"""

from __future__ import annotations

from typing import Any

import pytest

import trillium
import trillium as simple_websocket
from trillium.asgi import (
    URL,
    QueryParams,
    State,
    WebSocket,
    WebSocketASGI,
    WebSocketDisconnect,
    WebSocketState,
)


class FakeServer:
    """``receive`` pops scripted events; ``send`` records messages (or raises)."""

    def __init__(self, *events: dict[str, Any], send_error: BaseException | None = None) -> None:
        self.events = list(events)
        self.sent: list[dict[str, Any]] = []
        self.send_error = send_error

    async def receive(self) -> dict[str, Any]:
        assert self.events, "the application received more than the test scripted"
        return self.events.pop(0)

    async def send(self, message: dict[str, Any]) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append(dict(message))


def ws_scope(**fields: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "websocket",
        "scheme": "ws",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 51000),
        "root_path": "",
        "path": "/ws",
        "query_string": b"",
        "headers": [(b"host", b"example.com:8000")],
        "subprotocols": [],
    }
    scope.update(fields)
    return scope


CONNECT = {"type": "websocket.connect"}


def text(value: str) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": value}


def binary(value: bytes) -> dict[str, Any]:
    return {"type": "websocket.receive", "bytes": value}


def disconnect(code: int = 1000, reason: str = "") -> dict[str, Any]:
    return {"type": "websocket.disconnect", "code": code, "reason": reason}


# --------------------------------------------------------------------------- WebSocketASGI


def test_websocket_asgi_is_exported_for_simple_websocket_users() -> None:
    assert simple_websocket.WebSocketASGI is WebSocketASGI
    assert trillium.WebSocketASGI is WebSocketASGI


async def test_websocket_asgi_accept_negotiates_in_the_clients_order() -> None:
    server = FakeServer(CONNECT)
    scope = ws_scope(subprotocols=["v3", "v1", "v2"])
    ws = await WebSocketASGI.accept(scope, server.receive, server.send, subprotocols=["v2", "v1"])
    assert ws.subprotocol == "v1"  # the client's preference among those supported
    assert ws.connected
    assert server.sent == [{"type": "websocket.accept", "subprotocol": "v1"}]


async def test_websocket_asgi_accept_without_a_match_or_a_list_chooses_none() -> None:
    for supported in (None, ["chat"]):
        server = FakeServer(CONNECT)
        scope = ws_scope(subprotocols=["v1"])
        ws = await WebSocketASGI.accept(scope, server.receive, server.send, supported)
        assert ws.subprotocol is None
        assert server.sent == [{"type": "websocket.accept", "subprotocol": None}]


async def test_websocket_asgi_accept_needs_websocket_connect_first() -> None:
    server = FakeServer(text("too early"))
    with pytest.raises(ValueError, match=r"websocket\.connect"):
        await WebSocketASGI.accept(ws_scope(), server.receive, server.send)


async def test_websocket_asgi_receive_returns_str_or_bytes_then_connection_closed() -> None:
    server = FakeServer(CONNECT, text("hé"), binary(b"\x00\xff"), disconnect(4002, "gone"))
    ws = await WebSocketASGI.accept(ws_scope(), server.receive, server.send)
    assert await ws.receive() == "hé"
    assert await ws.receive() == b"\x00\xff"
    with pytest.raises(trillium.ConnectionClosed) as exc_info:
        await ws.receive()
    # simple-websocket's names: ``reason`` is the code, ``message`` the text.
    assert exc_info.value.reason == 4002
    assert exc_info.value.message == "gone"
    assert not ws.connected


async def test_websocket_asgi_receive_a_disconnect_without_a_code_reports_1005() -> None:
    server = FakeServer(CONNECT, {"type": "websocket.disconnect"})
    ws = await WebSocketASGI.accept(ws_scope(), server.receive, server.send)
    with pytest.raises(simple_websocket.ConnectionClosed) as exc_info:
        await ws.receive()
    assert exc_info.value.reason == 1005


async def test_websocket_asgi_receive_an_unexpected_message_type_raises_oserror() -> None:
    server = FakeServer(CONNECT, {"type": "websocket.something_else"})
    ws = await WebSocketASGI.accept(ws_scope(), server.receive, server.send)
    with pytest.raises(OSError, match="not supported"):
        await ws.receive()


async def test_websocket_asgi_send_picks_text_or_bytes() -> None:
    server = FakeServer(CONNECT)
    ws = await WebSocketASGI.accept(ws_scope(), server.receive, server.send)
    await ws.send("hello")
    await ws.send(b"\x01\x02")
    await ws.send(bytearray(b"\x03"))
    assert server.sent[1:] == [
        {"type": "websocket.send", "text": "hello"},
        {"type": "websocket.send", "bytes": b"\x01\x02"},
        {"type": "websocket.send", "bytes": b"\x03"},
    ]


async def test_websocket_asgi_send_to_a_gone_client_raises_connection_closed() -> None:
    server = FakeServer(CONNECT)
    ws = await WebSocketASGI.accept(ws_scope(), server.receive, server.send)
    server.send_error = OSError("client gone")
    with pytest.raises(simple_websocket.ConnectionClosed) as exc_info:
        await ws.send("hello")
    assert exc_info.value.reason == 1006
    assert not ws.connected


async def test_websocket_asgi_close_once_and_quietly() -> None:
    server = FakeServer(CONNECT)
    ws = await WebSocketASGI.accept(ws_scope(), server.receive, server.send)
    await ws.close()
    await ws.close()  # a second close does nothing
    assert server.sent[1:] == [{"type": "websocket.close"}]
    assert not ws.connected

    server = FakeServer(CONNECT)
    ws = await WebSocketASGI.accept(ws_scope(), server.receive, server.send)
    await ws.close(4000, "done")
    assert server.sent[-1] == {"type": "websocket.close", "code": 4000, "reason": "done"}

    server = FakeServer(CONNECT)
    ws = await WebSocketASGI.accept(ws_scope(), server.receive, server.send)
    server.send_error = RuntimeError("the server already closed it")
    await ws.close()  # errors from a connection that is gone are ignored


# --------------------------------------------------------------------------- WebSocket


def test_websocket_refuses_a_scope_that_is_not_websocket() -> None:
    server = FakeServer()
    with pytest.raises(ValueError, match="'websocket' scope"):
        WebSocket({"type": "http"}, server.receive, server.send)


async def test_websocket_accept_then_typed_receive_and_send() -> None:
    server = FakeServer(CONNECT, text("hi"), binary(b"\x00"), text('{"a": [1, 2]}'))
    ws = WebSocket(ws_scope(), server.receive, server.send)
    assert ws.connection_state is WebSocketState.CONNECTING
    await ws.accept(subprotocol="v1", headers={"X-Extra": "yes"})
    assert ws.connection_state is WebSocketState.CONNECTED
    assert server.sent == [
        {"type": "websocket.accept", "subprotocol": "v1", "headers": [(b"X-Extra", b"yes")]}
    ]
    assert await ws.receive_text() == "hi"
    assert await ws.receive_bytes() == b"\x00"
    assert await ws.receive_json() == {"a": [1, 2]}
    await ws.send_text("t")
    await ws.send_bytes(b"b")
    await ws.send_json({"k": "é"})
    assert server.sent[1:] == [
        {"type": "websocket.send", "text": "t"},
        {"type": "websocket.send", "bytes": b"b"},
        {"type": "websocket.send", "text": '{"k":"é"}'},
    ]


async def test_websocket_accept_takes_header_pairs_as_str_or_bytes() -> None:
    server = FakeServer(CONNECT)
    ws = WebSocket(ws_scope(), server.receive, server.send)
    await ws.accept(headers=[("set-cookie", "a=1"), (b"set-cookie", b"b=2")])
    assert server.sent[0]["headers"] == [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
    with pytest.raises(RuntimeError, match="already"):
        await ws.accept()


async def test_websocket_accept_when_the_client_already_left() -> None:
    server = FakeServer(disconnect(1001))
    ws = WebSocket(ws_scope(), server.receive, server.send)
    with pytest.raises(WebSocketDisconnect) as exc_info:
        await ws.accept()
    assert exc_info.value.code == 1001
    assert ws.connection_state is WebSocketState.DISCONNECTED
    assert server.sent == []


async def test_websocket_receive_text_rejects_bytes_and_receive_bytes_rejects_text() -> None:
    server = FakeServer(CONNECT, binary(b"\x00"), text("x"), binary(b"{}"))
    ws = WebSocket(ws_scope(), server.receive, server.send)
    await ws.accept()
    with pytest.raises(TypeError, match="receive_bytes"):
        await ws.receive_text()
    with pytest.raises(TypeError, match="receive_text"):
        await ws.receive_bytes()
    with pytest.raises(TypeError):
        await ws.receive_json()  # JSON comes as text


async def test_websocket_disconnect_carries_the_code_and_reason() -> None:
    server = FakeServer(CONNECT, disconnect(4003, "kicked"))
    ws = WebSocket(ws_scope(), server.receive, server.send)
    await ws.accept()
    with pytest.raises(WebSocketDisconnect) as exc_info:
        await ws.receive_text()
    assert (exc_info.value.code, exc_info.value.reason) == (4003, "kicked")
    assert ws.connection_state is WebSocketState.DISCONNECTED
    with pytest.raises(RuntimeError, match="disconnected"):
        await ws.receive_text()


async def test_websocket_iterators_stop_at_disconnect() -> None:
    server = FakeServer(CONNECT, text("a"), text("b"), disconnect())
    ws = WebSocket(ws_scope(), server.receive, server.send)
    await ws.accept()
    assert [t async for t in ws.iter_text()] == ["a", "b"]

    server = FakeServer(CONNECT, binary(b"a"), binary(b"b"), disconnect())
    ws = WebSocket(ws_scope(), server.receive, server.send)
    await ws.accept()
    assert [b async for b in ws.iter_bytes()] == [b"a", b"b"]

    server = FakeServer(CONNECT, text("a"), binary(b"b"))
    ws = WebSocket(ws_scope(), server.receive, server.send)
    await ws.accept()
    with pytest.raises(TypeError):
        [t async for t in ws.iter_text()]


async def test_websocket_send_or_receive_before_accept_says_what_to_do() -> None:
    server = FakeServer(CONNECT)
    ws = WebSocket(ws_scope(), server.receive, server.send)
    for call in (ws.send_text("x"), ws.send_bytes(b"x"), ws.send_json(1), ws.receive_text()):
        with pytest.raises(
            RuntimeError, match=r"not accepted yet; call `await websocket.accept\(\)`"
        ):
            await call
    assert server.sent == []


async def test_websocket_send_after_close_says_what_to_do() -> None:
    server = FakeServer(CONNECT)
    ws = WebSocket(ws_scope(), server.receive, server.send)
    await ws.accept()
    await ws.close()
    with pytest.raises(RuntimeError, match="closed; stop sending once close"):
        await ws.send_text("late")


async def test_websocket_close_is_idempotent_and_not_allowed_before_accept() -> None:
    server = FakeServer(CONNECT)
    ws = WebSocket(ws_scope(), server.receive, server.send)
    with pytest.raises(RuntimeError, match="not accepted yet"):
        await ws.close()
    await ws.accept()
    await ws.close(4000, "bye")
    await ws.close()
    await ws.close(1001)
    assert server.sent[1:] == [{"type": "websocket.close", "code": 4000, "reason": "bye"}]
    assert ws.connection_state is WebSocketState.DISCONNECTED


async def test_websocket_close_when_the_server_reports_the_client_gone() -> None:
    server = FakeServer(CONNECT)
    ws = WebSocket(ws_scope(), server.receive, server.send)
    await ws.accept()
    server.send_error = OSError("gone")
    await ws.close()  # nothing to complain about: it is closed either way
    assert ws.connection_state is WebSocketState.DISCONNECTED


async def test_websocket_send_to_a_gone_client_raises_websocket_disconnect() -> None:
    server = FakeServer(CONNECT)
    ws = WebSocket(ws_scope(), server.receive, server.send)
    await ws.accept()
    server.send_error = OSError("gone")
    with pytest.raises(WebSocketDisconnect) as exc_info:
        await ws.send_text("x")
    assert exc_info.value.code == 1006
    assert ws.connection_state is WebSocketState.DISCONNECTED


async def test_websocket_send_checks_types() -> None:
    server = FakeServer(CONNECT)
    ws = WebSocket(ws_scope(), server.receive, server.send)
    await ws.accept()
    with pytest.raises(TypeError):
        await ws.send_text(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await ws.send_bytes("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await ws.send_json(object())


async def test_websocket_reject_uses_the_denial_response_extension_when_offered() -> None:
    server = FakeServer()
    scope = ws_scope(extensions={"websocket.http.response": {}})
    ws = WebSocket(scope, server.receive, server.send)
    await ws.reject(401, "who are you?", {"www-authenticate": "Bearer"})
    assert server.sent == [
        {
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": [(b"www-authenticate", b"Bearer")],
        },
        {"type": "websocket.http.response.body", "body": b"who are you?"},
    ]
    assert ws.connection_state is WebSocketState.DISCONNECTED

    server = FakeServer()
    ws = WebSocket(ws_scope(), server.receive, server.send)  # no extension: a plain 403
    await ws.reject(401)
    assert server.sent == [{"type": "websocket.close"}]


async def test_websocket_asgi_receive_is_the_raw_callable() -> None:
    server = FakeServer(CONNECT)
    ws = WebSocket(ws_scope(), server.receive, server.send)
    assert ws.asgi_receive == server.receive
    assert await ws.asgi_receive() == CONNECT


def test_websocket_request_properties() -> None:
    server = FakeServer()
    scope = ws_scope(
        root_path="/api",
        path="/api/chat room",
        query_string=b"room=1&tag=a&tag=b",
        headers=[
            (b"host", b"example.com:8000"),
            (b"x-multi", b"1"),
            (b"X-Multi", b"2"),
            (b"cookie", b"a=b"),
        ],
        subprotocols=["v1"],
        state={"db": "pool"},
    )
    ws = WebSocket(scope, server.receive, server.send)
    assert ws.scope is scope
    assert ws.headers["COOKIE"] == "a=b"
    assert ws.headers.get_all("x-multi") == ["1", "2"]
    assert ws.query_params["room"] == "1"
    assert ws.query_params.getlist("tag") == ["a", "b"]
    assert str(ws.url) == "ws://127.0.0.1:8000/api/chat%20room?room=1&tag=a&tag=b"
    assert ws.url.path == "/api/chat%20room"
    assert ws.url.port == 8000
    assert ws.client == ("127.0.0.1", 51000)
    assert ws.subprotocols == ["v1"]
    assert ws.state.db == "pool"
    ws.state.user = "ann"
    assert scope["state"]["user"] == "ann"  # the bag is this connection's scope state
    with pytest.raises(AttributeError):
        _ = ws.state.missing


def test_url_from_scope_server_root_path_and_host_header_fallback() -> None:
    scope = ws_scope(headers=[], scheme="wss", server=("::1", 443), root_path="/r", path="/p")
    assert str(URL.from_scope(scope)) == "wss://[::1]/r/p"  # root_path added when missing
    scope = ws_scope(server=("10.0.0.1", 8080), root_path="/r", path="/r/p")
    assert URL.from_scope(scope) == "ws://10.0.0.1:8080/r/p"  # and not twice
    scope = ws_scope(server=("/run/app.sock", None), path="/p")  # a Unix socket
    assert URL.from_scope(scope) == "ws://example.com:8000/p"
    scope = ws_scope(server=None, headers=[], path="/p")
    assert URL.from_scope(scope) == "/p"


def test_query_params_and_state_helpers() -> None:
    params = QueryParams(b"a=1&b=&a=2")
    assert dict(params) == {"a": "2", "b": ""}
    assert params.multi_items() == [("a", "1"), ("b", ""), ("a", "2")]
    assert len(params) == 2 and "b" in params
    state = State()
    state.x = 1
    del state.x
    with pytest.raises(AttributeError):
        del state.x
