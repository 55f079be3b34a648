"""Behaviour of ``trillium.uri.parse_uri``: which URIs are WebSocket URIs, and their parts."""

from __future__ import annotations

import pytest

from trillium import InvalidURI
from trillium.uri import WebSocketURI, parse_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("ws://localhost/", WebSocketURI(False, "localhost", 80, "/")),
        ("ws://localhost", WebSocketURI(False, "localhost", 80, "/")),
        ("wss://example.com", WebSocketURI(True, "example.com", 443, "/")),
        ("ws://localhost:8765/chat", WebSocketURI(False, "localhost", 8765, "/chat")),
        ("wss://example.com/a/b?x=1&y=2", WebSocketURI(True, "example.com", 443, "/a/b?x=1&y=2")),
        ("ws://example.com?x=1", WebSocketURI(False, "example.com", 80, "/?x=1")),
        ("WS://Example.COM/", WebSocketURI(False, "example.com", 80, "/")),
        ("ws://[::1]:8080/", WebSocketURI(False, "::1", 8080, "/")),
        ("ws://127.0.0.1:9/", WebSocketURI(False, "127.0.0.1", 9, "/")),
    ],
)
def test_parse_uri_splits_a_websocket_uri(uri: str, expected: WebSocketURI) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "host_header"),
    [
        ("ws://example.com/", "example.com"),
        ("ws://example.com:80/", "example.com"),
        ("ws://example.com:443/", "example.com:443"),
        ("wss://example.com:443/", "example.com"),
        ("wss://example.com:80/", "example.com:80"),
        ("ws://[::1]/", "[::1]"),
        ("ws://[::1]:8080/", "[::1]:8080"),
    ],
)
def test_host_header_leaves_out_the_default_port(uri: str, host_header: str) -> None:
    assert parse_uri(uri).host_header == host_header


def test_user_info_is_extracted_and_unquoted() -> None:
    assert parse_uri("ws://alice:s%40cret@example.com/").user_info == ("alice", "s@cret")
    assert parse_uri("ws://bob@example.com/").user_info == ("bob", "")
    assert parse_uri("ws://example.com/").user_info is None
    # The credentials never leak into the host or the resource name.
    parsed = parse_uri("ws://alice:pw@example.com:81/p")
    assert (parsed.host, parsed.port, parsed.resource_name) == ("example.com", 81, "/p")


def test_non_ascii_host_and_path_are_encoded_for_the_wire() -> None:
    parsed = parse_uri("ws://bücher.example/straße and more?q=é")
    assert parsed.host == "xn--bcher-kva.example"
    assert parsed.resource_name == "/stra%C3%9Fe%20and%20more?q=%C3%A9"
    parsed.resource_name.encode("ascii")
    # Already-encoded paths are left alone.
    assert parse_uri("ws://h/a%20b").resource_name == "/a%20b"


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("http://x", "scheme"),
        ("https://example.com/", "scheme"),
        ("example.com", "scheme"),
        ("", "scheme"),
        ("ws://", "hostname"),
        ("ws:///path", "hostname"),
        ("ws://example.com/#fragment", "fragment"),
        ("ws://example.com:99999/", "port"),
        ("ws://example.com:port/", "port"),
    ],
)
def test_parse_uri_raises_invalid_uri(uri: str, why: str) -> None:
    with pytest.raises(InvalidURI) as exc_info:
        parse_uri(uri)
    assert exc_info.value.uri == uri
    assert why in str(exc_info.value).lower()
    assert isinstance(exc_info.value, ValueError)
