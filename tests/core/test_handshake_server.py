"""The server's half of the opening handshake (RFC 6455 §4.2, §4.4)."""

from __future__ import annotations

import h11
import pytest
import wsproto
import wsproto.events

from trillium.core.handshake import (
    ClientHandshake,
    Request,
    ServerHandshake,
    accept_key,
    select_subprotocol,
    serialize_response,
)
from trillium.exceptions import InvalidHandshake, InvalidHeader, InvalidStatus, NegotiationError

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
VALID_HEADERS = {
    "Host": "server.example.com",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def make_request(
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    path: str = "/chat",
    drop: tuple[str, ...] = (),
    body: bytes = b"",
    **overrides: str,
) -> bytes:
    """A request head: valid unless a header is dropped or overridden (``_`` for ``-``)."""
    headers = dict(VALID_HEADERS)
    for name in drop:
        del headers[name]
    for name, value in overrides.items():
        headers[name.replace("_", "-")] = value
    lines = [f"{method} {path} {version}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def rejection(data: bytes) -> tuple[InvalidHandshake, h11.Response, bytes]:
    """Feed ``data``; return the error, and the rejection response parsed by h11."""
    server = ServerHandshake()
    with pytest.raises(InvalidHandshake) as info:
        server.receive_data(data)
    raw = server.reject_invalid(info.value)
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    response = conn.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage)
    return info.value, response, body


def assert_bad_request(data: bytes, reason: str) -> None:
    exc, response, body = rejection(data)
    assert exc.status_code == 400
    assert response.status_code == 400
    assert reason.encode() in body


# ---------------------------------------------------------------- a valid request (§4.2.1)


def test_valid_request_is_parsed() -> None:
    """RFC 6455 §4.2.1: the server reads the resource, Host, key, version and options."""
    data = make_request(
        path="/chat?room=1",
        Origin="http://example.com",
        Sec_WebSocket_Protocol="chat, superchat",
        Sec_WebSocket_Extensions="permessage-deflate; client_max_window_bits",
    )
    server = ServerHandshake()
    request = server.receive_data(data)
    assert isinstance(request, Request)
    assert server.request is request
    assert request.method == "GET"
    assert request.http_version == "1.1"
    assert request.path == "/chat?room=1"
    assert request.host == "server.example.com"
    assert request.origin == "http://example.com"
    assert request.key == KEY
    assert request.subprotocols == ["chat", "superchat"]
    assert request.extensions == [("permessage-deflate", [("client_max_window_bits", None)])]
    assert server.trailing_data == b""


def test_request_split_across_many_reads_is_assembled() -> None:
    """RFC 6455 §4.2.1: the request may arrive in any number of TCP segments."""
    data = make_request()
    server = ServerHandshake()
    for i in range(len(data) - 1):
        assert server.receive_data(data[i : i + 1]) is None
    request = server.receive_data(data[-1:])
    assert request is not None
    assert request.key == KEY


def test_trailing_data_holds_frames_sent_with_the_request() -> None:
    """RFC 6455 §4.2.1: frames may follow the request in the same read; none are lost."""
    frames = b"\x81\x82abcd\x09\x0b"
    server = ServerHandshake()
    assert server.receive_data(make_request() + frames) is not None
    assert server.trailing_data == frames


@pytest.mark.parametrize(
    ("upgrade", "connection"),
    [("WebSocket", "upgrade"), ("websocket", "keep-alive, Upgrade"), ("WEBSOCKET", "UPGRADE")],
)
def test_upgrade_and_connection_tokens_match_case_insensitively(
    upgrade: str, connection: str
) -> None:
    """RFC 6455 §4.2.1: Upgrade and Connection are compared ASCII case-insensitively."""
    request = ServerHandshake().receive_data(make_request(Upgrade=upgrade, Connection=connection))
    assert request is not None


# ---------------------------------------------------------------- invalid requests (§4.2.1)


def test_rejects_request_without_host_with_400() -> None:
    """RFC 6455 §4.2.1: the request MUST have a Host header; else 400 Bad Request."""
    assert_bad_request(make_request(drop=("Host",)), "Host")


def test_rejects_http_10_request_with_400() -> None:
    """RFC 6455 §4.2.1: the request MUST be HTTP/1.1 or higher; else 400 Bad Request."""
    assert_bad_request(make_request(version="HTTP/1.0"), "HTTP/1.1")


@pytest.mark.parametrize("method", ["POST", "HEAD", "PUT"])
def test_rejects_non_get_request_with_400(method: str) -> None:
    """RFC 6455 §4.2.1: the method MUST be GET; else 400 Bad Request."""
    body = b"abc" if method in ("POST", "PUT") else b""
    data = make_request(method=method, body=body, Content_Length=str(len(body)))
    assert_bad_request(data, method)


@pytest.mark.parametrize("value", [None, "h2c", "websocketx"])
def test_rejects_request_without_upgrade_websocket_with_400(value: str | None) -> None:
    """RFC 6455 §4.2.1: the request MUST have Upgrade: websocket; else 400 Bad Request."""
    data = make_request(drop=("Upgrade",)) if value is None else make_request(Upgrade=value)
    assert_bad_request(data, "Upgrade")


@pytest.mark.parametrize("value", [None, "keep-alive", "close"])
def test_rejects_request_without_connection_upgrade_with_400(value: str | None) -> None:
    """RFC 6455 §4.2.1: Connection MUST include the Upgrade token; else 400 Bad Request."""
    data = make_request(drop=("Connection",)) if value is None else make_request(Connection=value)
    assert_bad_request(data, "Connection")


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(None, id="missing"),
        pytest.param("not base64!!", id="not-base64"),
        pytest.param("AAAAAAAAAAAAAAAAAAAA", id="15-bytes"),
        pytest.param("AAAAAAAAAAAAAAAAAAAAAAA=", id="17-bytes"),
        pytest.param("dGhlIHNhbXBsZSBub25jZQ", id="unpadded"),
        pytest.param("", id="empty"),
    ],
)
def test_rejects_request_with_bad_key_with_400(key: str | None) -> None:
    """RFC 6455 §4.2.1: Sec-WebSocket-Key MUST decode to 16 bytes; else 400 Bad Request."""
    if key is None:
        data = make_request(drop=("Sec-WebSocket-Key",))
    else:
        data = make_request(Sec_WebSocket_Key=key)
    assert_bad_request(data, "Sec-WebSocket-Key")


def test_rejects_request_with_two_keys_with_400() -> None:
    """RFC 6455 §11.3.1: Sec-WebSocket-Key MUST NOT appear more than once."""
    data = make_request().replace(b"\r\n\r\n", f"\r\nSec-WebSocket-Key: {KEY}\r\n\r\n".encode())
    assert_bad_request(data, "Sec-WebSocket-Key")


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8"])
def test_rejects_unsupported_version_with_426_listing_version_13(version: str) -> None:
    """RFC 6455 §4.2.2, §4.4: an unsupported version gets 426 and Sec-WebSocket-Version: 13."""
    server = ServerHandshake()
    with pytest.raises(InvalidHeader) as info:
        server.receive_data(make_request(Sec_WebSocket_Version=version))
    assert info.value.status_code == 426
    raw = server.reject_invalid(info.value)
    assert raw.startswith(b"HTTP/1.1 426 ")
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in raw
    # A client reading this rejection sees the status and the supported version.
    client = ClientHandshake("h")
    client.data_to_send()
    with pytest.raises(InvalidStatus) as status:
        client.receive_data(raw)
    assert status.value.response.status_code == 426
    assert status.value.response.headers["Sec-WebSocket-Version"] == "13"


def test_rejects_malformed_extensions_header_with_400() -> None:
    """RFC 6455 §9.1: a Sec-WebSocket-Extensions that does not parse is a bad request."""
    assert_bad_request(make_request(Sec_WebSocket_Extensions="x; =1"), "parameter name")


def test_rejects_malformed_http_with_400() -> None:
    """RFC 6455 §4.2.1: the request MUST be valid HTTP; else 400 Bad Request."""
    assert_bad_request(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n", "malformed")


def test_eof_before_the_request_is_complete_raises() -> None:
    """RFC 6455 §4.2.1: a connection closed mid-request cannot be upgraded."""
    server = ServerHandshake()
    assert server.receive_data(make_request()[:20]) is None
    with pytest.raises(InvalidHandshake, match="closed") as info:
        server.receive_data(b"")
    assert info.value.status_code == 400


# ---------------------------------------------------------------- the response (§4.2.2)


def test_accept_builds_the_101_response() -> None:
    """RFC 6455 §4.2.2: 101, Upgrade: websocket, Connection: Upgrade and the accept hash."""
    server = ServerHandshake()
    request = server.receive_data(make_request())
    assert request is not None
    raw = server.accept(request)
    assert raw.startswith(b"HTTP/1.1 101 ")
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(
            method="GET",
            target="/",
            headers=[("Host", "x"), ("Upgrade", "websocket"), ("Connection", "Upgrade")],
        )
    )
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, h11.InformationalResponse)
    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
    assert headers["upgrade"] == "websocket"
    assert headers["connection"] == "Upgrade"
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" == accept_key(KEY)
    assert "sec-websocket-protocol" not in headers
    assert "sec-websocket-extensions" not in headers


def test_accept_includes_subprotocol_extensions_and_extra_headers() -> None:
    """RFC 6455 §4.2.2: the server echoes its chosen subprotocol and accepted extensions."""
    server = ServerHandshake()
    request = server.receive_data(
        make_request(Sec_WebSocket_Protocol="a, b", Sec_WebSocket_Extensions="x-ext")
    )
    assert request is not None
    raw = server.accept(
        request,
        subprotocol="b",
        extensions=[("x-ext", [("p", "1")])],
        headers=[("Set-Cookie", "s=1")],
    )
    assert b"\r\nSec-WebSocket-Protocol: b\r\n" in raw
    assert b"\r\nSec-WebSocket-Extensions: x-ext; p=1\r\n" in raw
    assert b"\r\nSet-Cookie: s=1\r\n" in raw


@pytest.mark.parametrize(
    ("offered", "supported", "expected"),
    [
        (["chat", "superchat"], ["superchat", "chat"], "chat"),
        (["v3", "v2", "v1"], ["v1", "v2"], "v2"),
        (["chat"], ["other"], None),
        ([], ["chat"], None),
        (["Chat"], ["chat"], None),
    ],
)
def test_select_subprotocol_picks_the_first_offered_that_is_supported(
    offered: list[str], supported: list[str], expected: str | None
) -> None:
    """RFC 6455 §4.2.2: the server picks one of the client's values, or none."""
    assert select_subprotocol(offered, supported) == expected


@pytest.mark.parametrize("offer", [None, "chat"])
def test_accept_refuses_a_subprotocol_the_client_did_not_offer(offer: str | None) -> None:
    """RFC 6455 §4.2.2: the selected subprotocol MUST be one the client offered."""
    server = ServerHandshake()
    data = make_request() if offer is None else make_request(Sec_WebSocket_Protocol=offer)
    request = server.receive_data(data)
    assert request is not None
    with pytest.raises(NegotiationError, match="superchat"):
        server.accept(request, subprotocol="superchat")


@pytest.mark.parametrize(
    ("status", "reason"), [(403, "Forbidden"), (302, "Found"), (503, "Service Unavailable")]
)
def test_reject_produces_any_status_with_headers_and_body(status: int, reason: str) -> None:
    """RFC 6455 §4.2.2: the server MAY answer with any HTTP status instead of 101."""
    server = ServerHandshake()
    raw = server.reject(status, [("Location", "/elsewhere"), ("Retry-After", "5")], b"go away")
    assert raw.startswith(f"HTTP/1.1 {status} {reason}\r\n".encode())
    client = ClientHandshake("h")
    client.data_to_send()
    with pytest.raises(InvalidStatus) as info:
        client.receive_data(raw)
    response = info.value.response
    assert response.status_code == status
    assert response.reason_phrase == reason
    assert response.headers["Location"] == "/elsewhere"
    assert response.headers["Retry-After"] == "5"
    assert response.headers["Content-Length"] == "7"
    assert response.headers["Connection"] == "close"
    assert response.body == b"go away"


def test_reject_accepts_unusual_status_and_custom_reason() -> None:
    """RFC 9110 §15: any three-digit status may be sent, with any reason phrase."""
    server = ServerHandshake()
    raw = server.reject(599, body=b"", reason_phrase="Custom Thing")
    assert raw == b"HTTP/1.1 599 Custom Thing\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert server.response.status_code == 599


def test_accept_response_can_be_adjusted_before_serializing() -> None:
    """RFC 6455 §4.2.2: the server MAY add headers (e.g. Set-Cookie) to the 101."""
    server = ServerHandshake()
    request = server.receive_data(make_request())
    assert request is not None
    response = server.accept_response(request)
    assert server.response is response
    response.headers["Set-Cookie"] = "s=1"
    raw = serialize_response(response)
    client_view = raw.split(b"\r\n")
    assert client_view[0] == b"HTTP/1.1 101 Switching Protocols"
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}".encode() in client_view
    assert b"Set-Cookie: s=1" in client_view
    assert raw == server.accept(request).replace(b"\r\n\r\n", b"\r\nSet-Cookie: s=1\r\n\r\n")


def test_reject_response_fills_in_length_connection_and_type() -> None:
    """RFC 9112 §6.3: the rejection is delimited by Content-Length, then the connection closes."""
    response = ServerHandshake().reject_response(404, body=b"nope")
    assert response.status_code == 404
    assert response.reason_phrase == "Not Found"
    assert response.headers["Content-Length"] == "4"
    assert response.headers["Connection"] == "close"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    custom = ServerHandshake().reject_response(
        401, [("Content-Type", "application/json"), ("WWW-Authenticate", "Basic")], b"{}"
    )
    assert custom.headers.get_all("Content-Type") == ["application/json"]


def test_reject_refuses_header_injection() -> None:
    """RFC 9110 §5.5: field values cannot contain CR or LF."""
    with pytest.raises(ValueError, match="invalid header"):
        ServerHandshake().reject(400, [("X-Bad", "a\r\nSet-Cookie: evil=1")])


# ---------------------------------------------------------------- interoperability


def test_wsproto_client_request_is_accepted_and_wsproto_accepts_our_response() -> None:
    """RFC 6455 §4: the handshake interoperates with wsproto's client."""
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    data = client.send(
        wsproto.events.Request(
            host="example.com",
            target="/ws?x=1",
            subprotocols=["mqtt", "chat"],
            extra_headers=[(b"Origin", b"https://example.com")],
        )
    )
    server = ServerHandshake()
    request = server.receive_data(data)
    assert request is not None
    assert request.path == "/ws?x=1"
    assert request.origin == "https://example.com"
    chosen = select_subprotocol(request.subprotocols, ["chat", "mqtt"])
    assert chosen == "mqtt"
    client.receive_data(server.accept(request, subprotocol=chosen) + b"\x82\x03abc")
    events = list(client.events())
    assert isinstance(events[0], wsproto.events.AcceptConnection)
    assert events[0].subprotocol == "mqtt"
    assert isinstance(events[1], wsproto.events.BytesMessage)
    assert events[1].data == b"abc"


def test_wsproto_client_sees_our_rejection() -> None:
    """RFC 6455 §4.2.2: a rejection is a plain HTTP response any client can read."""
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    server = ServerHandshake()
    request = server.receive_data(client.send(wsproto.events.Request(host="h", target="/")))
    assert request is not None
    client.receive_data(server.reject(403, [("X-Reason", "no")], b"denied"))
    events = list(client.events())
    assert isinstance(events[0], wsproto.events.RejectConnection)
    assert events[0].status_code == 403
    assert (b"x-reason", b"no") in events[0].headers
    assert isinstance(events[1], wsproto.events.RejectData)
    assert events[1].data == b"denied"
