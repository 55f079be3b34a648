"""The client's half of the opening handshake (RFC 6455 §4.1)."""

from __future__ import annotations

import base64

import h11
import pytest
import wsproto
import wsproto.events

from trillium.core.handshake import ClientHandshake, Response, ServerHandshake, accept_key
from trillium.exceptions import (
    InvalidHandshake,
    InvalidHeader,
    InvalidStatus,
    InvalidUpgrade,
    NegotiationError,
)


def parse_request(data: bytes) -> h11.Request:
    """Parse the request with an independent HTTP/1.1 parser."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    return event


def request_headers(data: bytes) -> list[tuple[str, str]]:
    return [(k.decode().lower(), v.decode()) for k, v in parse_request(data).headers]


def header(data: bytes, name: str) -> list[str]:
    return [v for k, v in request_headers(data) if k == name.lower()]


def response_for(
    client: ClientHandshake,
    *,
    status: str = "101 Switching Protocols",
    upgrade: str | None = "websocket",
    connection: str | None = "Upgrade",
    accept: str | None = None,
    extra: str = "",
) -> bytes:
    """A server response to ``client``: a valid 101 unless told otherwise."""
    lines = [f"HTTP/1.1 {status}"]
    if upgrade is not None:
        lines.append(f"Upgrade: {upgrade}")
    if connection is not None:
        lines.append(f"Connection: {connection}")
    lines.append(f"Sec-WebSocket-Accept: {accept or accept_key(client.key)}")
    head = "\r\n".join(lines) + "\r\n" + extra
    return (head + "\r\n").encode()


def new_client(**kwargs: object) -> ClientHandshake:
    client = ClientHandshake("example.com", "/chat?x=1", **kwargs)  # type: ignore[arg-type]
    client.data_to_send()
    return client


# ---------------------------------------------------------------- the request (§4.1)


def test_request_is_an_http_11_get_for_the_resource() -> None:
    """RFC 6455 §4.1: the handshake MUST be a valid HTTP/1.1 GET for the resource name."""
    request = parse_request(ClientHandshake("example.com", "/chat?x=1").data_to_send())
    assert request.method == b"GET"
    assert request.http_version == b"1.1"
    assert request.target == b"/chat?x=1"


def test_request_includes_host() -> None:
    """RFC 6455 §4.1: the request MUST contain a Host header field."""
    data = ClientHandshake("example.com:8080").data_to_send()
    assert header(data, "Host") == ["example.com:8080"]


def test_request_includes_upgrade_websocket() -> None:
    """RFC 6455 §4.1: the request MUST contain Upgrade: websocket."""
    assert header(ClientHandshake("h").data_to_send(), "Upgrade") == ["websocket"]


def test_request_includes_connection_upgrade() -> None:
    """RFC 6455 §4.1: the request MUST contain Connection: Upgrade."""
    assert header(ClientHandshake("h").data_to_send(), "Connection") == ["Upgrade"]


def test_request_key_is_base64_of_16_bytes() -> None:
    """RFC 6455 §4.1: Sec-WebSocket-Key MUST be a base64-encoded 16-byte value."""
    client = ClientHandshake("h")
    (key,) = header(client.data_to_send(), "Sec-WebSocket-Key")
    assert key == client.key
    assert len(base64.b64decode(key, validate=True)) == 16


def test_request_key_is_fresh_for_each_connection() -> None:
    """RFC 6455 §4.1: the nonce MUST be selected randomly for each connection."""
    keys = {ClientHandshake("h").key for _ in range(100)}
    assert len(keys) == 100


def test_request_includes_version_13() -> None:
    """RFC 6455 §4.1: the request MUST include Sec-WebSocket-Version: 13."""
    assert header(ClientHandshake("h").data_to_send(), "Sec-WebSocket-Version") == ["13"]


def test_request_includes_origin_only_when_given() -> None:
    """RFC 6455 §4.1: browser clients MUST send Origin; others may."""
    assert header(ClientHandshake("h", origin="https://a.example").data_to_send(), "Origin") == [
        "https://a.example"
    ]
    assert header(ClientHandshake("h").data_to_send(), "Origin") == []


def test_request_offers_subprotocols_in_order_when_given() -> None:
    """RFC 6455 §4.1: Sec-WebSocket-Protocol lists subprotocols by preference."""
    data = ClientHandshake("h", subprotocols=["v2.chat", "chat"]).data_to_send()
    assert header(data, "Sec-WebSocket-Protocol") == ["v2.chat, chat"]
    assert header(ClientHandshake("h").data_to_send(), "Sec-WebSocket-Protocol") == []


def test_request_offers_extensions_when_given() -> None:
    """RFC 6455 §4.1, §9.1: Sec-WebSocket-Extensions lists the extensions offered."""
    offer = [("permessage-deflate", [("client_max_window_bits", None)]), ("x-foo", [("a", "1")])]
    data = ClientHandshake("h", extensions=offer).data_to_send()
    assert header(data, "Sec-WebSocket-Extensions") == [
        "permessage-deflate; client_max_window_bits, x-foo; a=1"
    ]
    assert header(ClientHandshake("h").data_to_send(), "Sec-WebSocket-Extensions") == []


def test_request_includes_extra_headers_and_user_agent() -> None:
    """RFC 6455 §4.1: the request MAY include other header fields (cookies, auth, ...)."""
    data = ClientHandshake(
        "h", headers=[("Authorization", "Bearer t"), ("Cookie", "a=1")], user_agent="ua/1"
    ).data_to_send()
    assert header(data, "Authorization") == ["Bearer t"]
    assert header(data, "Cookie") == ["a=1"]
    assert header(data, "User-Agent") == ["ua/1"]


def test_accept_key_matches_the_rfc_example() -> None:
    """RFC 6455 §1.3: the accept value for "dGhlIHNhbXBsZSBub25jZQ==" is known."""
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# ---------------------------------------------------------------- a valid response (§4.1)


def test_valid_101_response_is_accepted() -> None:
    """RFC 6455 §4.1: a 101 with the right Upgrade, Connection and Accept completes it."""
    client = new_client()
    response = client.receive_data(response_for(client, extra="X-Server: t\r\n"))
    assert isinstance(response, Response)
    assert response.status_code == 101
    assert response.headers["x-server"] == "t"
    assert client.response is response
    assert client.subprotocol is None
    assert client.extensions == []
    assert client.trailing_data == b""


def test_response_split_across_many_reads_is_assembled() -> None:
    """RFC 6455 §4.1: the response may arrive in any number of TCP segments."""
    client = new_client()
    data = response_for(client)
    for i in range(len(data) - 1):
        assert client.receive_data(data[i : i + 1]) is None
    assert client.receive_data(data[-1:]) is not None


@pytest.mark.parametrize("upgrade", ["WebSocket", "WEBSOCKET", "websocket, foo"])
def test_upgrade_token_is_matched_case_insensitively(upgrade: str) -> None:
    """RFC 6455 §4.1: the Upgrade value is compared as an ASCII case-insensitive match."""
    client = new_client()
    assert client.receive_data(response_for(client, upgrade=upgrade)) is not None


@pytest.mark.parametrize("connection", ["upgrade", "UPGRADE", "keep-alive, Upgrade"])
def test_connection_token_is_matched_case_insensitively(connection: str) -> None:
    """RFC 6455 §4.1: the Connection token is compared as an ASCII case-insensitive match."""
    client = new_client()
    assert client.receive_data(response_for(client, connection=connection)) is not None


def test_trailing_data_holds_frames_sent_with_the_response() -> None:
    """RFC 6455 §4.1: frames may follow the response in the same read; none are lost."""
    client = new_client()
    frames = b"\x81\x02hi\x89\x00"
    assert client.receive_data(response_for(client) + frames) is not None
    assert client.trailing_data == frames


def test_informational_response_before_101_is_skipped() -> None:
    """RFC 9110 §15.2: 1xx responses other than 101 are interim; wait for the final one."""
    client = new_client()
    assert client.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n") is None
    assert client.receive_data(response_for(client)) is not None


# ---------------------------------------------------------------- rejections (§4.1 step 1)


def test_non_101_with_content_length_body_raises_invalid_status() -> None:
    """RFC 6455 §4.1: a status other than 101 is handled per HTTP, body included."""
    client = new_client()
    data = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\nX-Why: policy\r\n\r\nforbidden"
    with pytest.raises(InvalidStatus) as info:
        client.receive_data(data)
    response = info.value.response
    assert (response.status_code, response.reason_phrase) == (403, "Forbidden")
    assert response.headers["X-Why"] == "policy"
    assert response.body == b"forbidden"
    assert info.value.status_code == 403
    assert client.response is response


def test_non_101_with_chunked_body_raises_invalid_status() -> None:
    """RFC 6455 §4.1: a chunked rejection body is decoded."""
    client = new_client()
    data = (
        b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"
    )
    with pytest.raises(InvalidStatus) as info:
        client.receive_data(data)
    assert info.value.response.status_code == 500
    assert info.value.response.body == b"abcdef"


def test_non_101_with_body_until_eof_raises_invalid_status_at_eof() -> None:
    """RFC 9112 §6.3: without length or chunking, the body runs until the connection closes."""
    client = new_client()
    assert client.receive_data(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nno ") is None
    assert client.receive_data(b"such path") is None
    with pytest.raises(InvalidStatus) as info:
        client.receive_data(b"")
    assert info.value.response.status_code == 404
    assert info.value.response.body == b"no such path"


def test_redirect_is_reported_with_its_location() -> None:
    """RFC 6455 §4.1: a 3xx may be followed by the client; it needs the Location."""
    client = new_client()
    with pytest.raises(InvalidStatus) as info:
        client.receive_data(b"HTTP/1.1 302 Found\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n")
    assert info.value.response.headers["Location"] == "/new"
    assert info.value.response.body == b""


def test_rejection_body_over_the_limit_raises_invalid_handshake() -> None:
    """RFC 6455 §10.4: the client bounds what it buffers of a rejection."""
    client = new_client(max_body_size=10)
    with pytest.raises(InvalidHandshake, match="exceeds") as info:
        client.receive_data(b"HTTP/1.1 500 X\r\nContent-Length: 11\r\n\r\n01234567890")
    assert not isinstance(info.value, InvalidStatus)


def test_eof_before_response_raises_invalid_handshake() -> None:
    """RFC 6455 §4.1: a connection closed before the response fails the handshake."""
    client = new_client()
    assert client.receive_data(b"HTTP/1.1 101 Switch") is None
    with pytest.raises(InvalidHandshake, match="closed"):
        client.receive_data(b"")


def test_malformed_response_raises_invalid_handshake() -> None:
    """RFC 6455 §4.1: the response MUST be valid HTTP."""
    client = new_client()
    with pytest.raises(InvalidHandshake, match="malformed"):
        client.receive_data(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")


# ---------------------------------------------------------------- invalid 101 (§4.1 steps 2-6)


@pytest.mark.parametrize("upgrade", [None, "", "h2c", "web-socket"])
def test_fails_on_missing_or_wrong_upgrade(upgrade: str | None) -> None:
    """RFC 6455 §4.1: without Upgrade: websocket the client MUST fail the connection."""
    client = new_client()
    with pytest.raises(InvalidUpgrade, match="Upgrade"):
        client.receive_data(response_for(client, upgrade=upgrade))
    assert client.response is None


@pytest.mark.parametrize("connection", [None, "", "keep-alive", "upgrades"])
def test_fails_on_missing_or_wrong_connection(connection: str | None) -> None:
    """RFC 6455 §4.1: without a Connection: Upgrade token the client MUST fail the connection."""
    client = new_client()
    with pytest.raises(InvalidUpgrade, match="Connection"):
        client.receive_data(response_for(client, connection=connection))


def test_fails_on_wrong_accept() -> None:
    """RFC 6455 §4.1: a Sec-WebSocket-Accept not derived from our key MUST fail."""
    client = new_client()
    wrong = accept_key(ClientHandshake("h").key)
    with pytest.raises(InvalidHeader, match="mismatch") as info:
        client.receive_data(response_for(client, accept=wrong))
    assert info.value.name == "Sec-WebSocket-Accept"


def test_fails_on_missing_accept() -> None:
    """RFC 6455 §4.1: a response without Sec-WebSocket-Accept MUST fail."""
    client = new_client()
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    with pytest.raises(InvalidHeader) as info:
        client.receive_data(data)
    assert info.value.name == "Sec-WebSocket-Accept"
    assert info.value.value is None


def test_fails_on_repeated_accept() -> None:
    """RFC 6455 §4.1: exactly one Sec-WebSocket-Accept is expected."""
    client = new_client()
    extra = f"Sec-WebSocket-Accept: {accept_key(client.key)}\r\n"
    with pytest.raises(InvalidHeader):
        client.receive_data(response_for(client, extra=extra))


def test_selected_subprotocol_is_recorded() -> None:
    """RFC 6455 §4.1: the server selects one of the offered subprotocols."""
    client = new_client(subprotocols=["v2.chat", "chat"])
    client.receive_data(response_for(client, extra="Sec-WebSocket-Protocol: chat\r\n"))
    assert client.subprotocol == "chat"


@pytest.mark.parametrize(
    ("offered", "selected"),
    [(["chat"], "superchat"), (["chat"], "CHAT"), ([], "chat"), (["a", "b"], "a, b")],
)
def test_fails_on_unoffered_subprotocol(offered: list[str], selected: str) -> None:
    """RFC 6455 §4.1: a subprotocol the client did not offer MUST fail the connection."""
    client = new_client(subprotocols=offered)
    with pytest.raises(NegotiationError):
        client.receive_data(response_for(client, extra=f"Sec-WebSocket-Protocol: {selected}\r\n"))
    assert client.subprotocol is None


def test_accepted_extensions_are_recorded() -> None:
    """RFC 6455 §4.1, §9.1: the server lists the extensions in use with their parameters."""
    client = new_client(extensions=[("permessage-deflate", [("client_max_window_bits", None)])])
    extra = "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n"
    client.receive_data(response_for(client, extra=extra))
    assert client.extensions == [("permessage-deflate", [("server_max_window_bits", "10")])]


@pytest.mark.parametrize("offered", [[], [("permessage-deflate", [])]])
def test_fails_on_unoffered_extension(
    offered: list[tuple[str, list[tuple[str, str | None]]]],
) -> None:
    """RFC 6455 §4.1: an extension the client did not request MUST fail the connection."""
    client = new_client(extensions=offered)
    with pytest.raises(NegotiationError, match="x-unasked"):
        client.receive_data(response_for(client, extra="Sec-WebSocket-Extensions: x-unasked\r\n"))


def test_fails_on_malformed_extensions_header() -> None:
    """RFC 6455 §9.1: a Sec-WebSocket-Extensions that does not parse fails the handshake."""
    client = new_client(extensions=[("x-a", [])])
    with pytest.raises(InvalidHeader):
        client.receive_data(response_for(client, extra="Sec-WebSocket-Extensions: x-a; =\r\n"))


# ---------------------------------------------------------------- interoperability


def test_wsproto_server_accepts_our_request_and_we_accept_its_response() -> None:
    """RFC 6455 §4: the handshake interoperates with wsproto's server."""
    client = ClientHandshake("example.com", "/chat", subprotocols=["v1", "v2"])
    server = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    server.receive_data(client.data_to_send())
    (request,) = server.events()
    assert isinstance(request, wsproto.events.Request)
    assert (request.host, request.target, request.subprotocols) == (
        "example.com",
        "/chat",
        ["v1", "v2"],
    )
    frames = server.send(wsproto.events.AcceptConnection(subprotocol="v2"))
    frames += server.send(wsproto.events.TextMessage("hello"))
    response = client.receive_data(frames)
    assert response is not None
    assert response.status_code == 101
    assert client.subprotocol == "v2"
    assert client.trailing_data == b"\x81\x05hello"


def test_our_server_accepts_our_client() -> None:
    """RFC 6455 §4: both halves of trillium's handshake agree."""
    client = ClientHandshake("example.com", subprotocols=["b", "a"])
    server = ServerHandshake()
    request = server.receive_data(client.data_to_send())
    assert request is not None
    response = client.receive_data(server.accept(request, subprotocol="a"))
    assert response is not None
    assert client.subprotocol == "a"
