"""The server's HTTP/1.1 request-head parser: strict, bounded, and nothing lost after it."""

from __future__ import annotations

import pytest

from trillium.core.handshake import ServerHandshake, parse_request_head
from trillium.exceptions import InvalidHandshake

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (
    f"GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n"
    f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()


def test_parser_keeps_target_method_version_and_header_order() -> None:
    request = parse_request_head(b"GET /a?b=c HTTP/1.1\r\nX-A: 1\r\nx-a:  2 \r\nHost: h")
    assert (request.method, request.path, request.http_version) == ("GET", "/a?b=c", "1.1")
    assert request.headers.get_all("X-A") == ["1", "2"]
    assert request.headers.raw_items()[0] == ("X-A", "1")


@pytest.mark.parametrize(
    "head",
    [
        b"GET /a HTTP/1.1 extra",
        b"GET  /a HTTP/1.1",
        b"GET /a HTTP/11",
        b"G(T /a HTTP/1.1",
        b"GET /a\x00 HTTP/1.1",
        b"GET /a HTTP/1.1\r\nHost : h",
        b"GET /a HTTP/1.1\r\nHost: h\r\n folded",
        b"GET /a HTTP/1.1\r\nNo-Colon",
        b"GET /a HTTP/1.1\r\nX: a\x00b",
        b"GET /a HTTP/1.1\r\nX: a\rb",
    ],
)
def test_parser_refuses_malformed_heads_with_400(head: bytes) -> None:
    with pytest.raises(InvalidHandshake) as info:
        parse_request_head(head)
    assert info.value.status_code == 400


def test_request_split_byte_by_byte_keeps_the_frames_that_follow() -> None:
    handshake = ServerHandshake()
    data = UPGRADE + b"\x81\x85frame"
    result = None
    for i in range(len(data)):
        result = handshake.receive_data(data[i : i + 1]) or result
        if result is not None:
            break
    assert result is not None and result.path == "/chat?x=1"
    assert handshake.trailing_data == b""  # the head ended exactly at this byte
    # Bytes arriving in the same read as the head are kept for the frame parser.
    handshake = ServerHandshake()
    assert handshake.receive_data(data) is not None
    assert handshake.trailing_data == b"\x81\x85frame"


def test_head_longer_than_max_header_size_is_refused_with_431() -> None:
    handshake = ServerHandshake(max_header_size=256)
    with pytest.raises(InvalidHandshake) as info:
        handshake.receive_data(b"GET / HTTP/1.1\r\nX: " + b"a" * 300)
    assert info.value.status_code == 431
    assert handshake.reject_invalid(info.value).startswith(b"HTTP/1.1 431 ")


def test_head_within_max_header_size_is_accepted() -> None:
    handshake = ServerHandshake(max_header_size=len(UPGRADE))
    assert handshake.receive_data(UPGRADE) is not None


def test_upgrade_request_with_a_body_is_refused_with_400() -> None:
    head = UPGRADE.replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\n")
    with pytest.raises(InvalidHandshake) as info:
        ServerHandshake().receive_data(head + b"hello")
    assert info.value.status_code == 400


def test_connection_closed_mid_head_is_a_400() -> None:
    handshake = ServerHandshake()
    assert handshake.receive_data(UPGRADE[:20]) is None
    with pytest.raises(InvalidHandshake) as info:
        handshake.receive_data(b"")
    assert info.value.status_code == 400
