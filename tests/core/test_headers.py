"""Header fields and the handshake header grammars (RFC 6455 §4.3, §9.1; RFC 9110 §5)."""

from __future__ import annotations

import pytest

from trillium.core.headers import (
    Headers,
    parse_extensions,
    parse_list,
    parse_tokens,
    serialize_extensions,
)

# ---------------------------------------------------------------- Headers


def test_lookup_ignores_case() -> None:
    """RFC 9110 §5.1: field names are case-insensitive."""
    h = Headers([("Sec-WebSocket-Key", "abc")])
    assert h["sec-websocket-key"] == h["SEC-WEBSOCKET-KEY"] == "abc"
    assert "sec-WEBSOCKET-key" in h
    assert h.get("missing") is None
    assert 42 not in h


def test_repeated_fields_are_joined_or_kept_apart() -> None:
    """RFC 9110 §5.3: repeated fields are equivalent to one comma-joined field."""
    h = Headers([("Connection", "keep-alive"), ("X-Other", "1"), ("connection", "Upgrade")])
    assert h["Connection"] == "keep-alive, Upgrade"
    assert h.get_all("CONNECTION") == ["keep-alive", "Upgrade"]
    assert h.get_all("absent") == []
    with pytest.raises(KeyError):
        h["absent"]


def test_setitem_appends_and_delitem_removes_every_occurrence() -> None:
    """RFC 9110 §5.3: a field may repeat, so assignment adds a field."""
    h = Headers()
    h["Via"] = "a"
    h["via"] = "b"
    assert h.get_all("Via") == ["a", "b"]
    del h["VIA"]
    assert "via" not in h
    with pytest.raises(KeyError):
        del h["via"]


def test_iteration_len_and_raw_items() -> None:
    """RFC 9110 §5.1: names are compared without case; the original case is kept on the wire."""
    h = Headers({"Host": "x", "Upgrade": "websocket"})
    h.update([("HOST", "y")], Extra="1")
    assert list(h) == ["host", "upgrade", "extra"]
    assert len(h) == 3
    assert h.raw_items() == [("Host", "x"), ("Upgrade", "websocket"), ("HOST", "y"), ("Extra", "1")]


def test_equality_ignores_name_case_and_copy_is_independent() -> None:
    """RFC 9110 §5.1: headers differing only in name case are the same headers."""
    h = Headers([("A", "1"), ("b", "2")])
    assert h == Headers([("a", "1"), ("B", "2")])
    assert h != Headers([("a", "1"), ("B", "3")])
    assert h != Headers([("B", "2"), ("a", "1")])  # order matters for repeated semantics
    assert h.__eq__({"a": "1"}) is NotImplemented
    copy = h.copy()
    copy["c"] = "3"
    assert "c" not in h


# ---------------------------------------------------------------- token lists


def test_parse_tokens_lowercases_and_strips() -> None:
    """RFC 6455 §4.2.1: Upgrade/Connection tokens are compared case-insensitively."""
    assert parse_tokens(["keep-alive, Upgrade", " WebSocket ,, "]) == [
        "keep-alive",
        "upgrade",
        "websocket",
    ]
    assert parse_tokens([]) == []


def test_parse_list_keeps_case() -> None:
    """RFC 6455 §4.1: subprotocol names are case-sensitive."""
    assert parse_list(["Chat, superchat", " v2.Json "]) == ["Chat", "superchat", "v2.Json"]


# ---------------------------------------------------------------- extensions (§9.1)


def test_parse_extensions_with_parameters() -> None:
    """RFC 6455 §9.1: extension-list = 1#extension; extension = name *( ";" param )."""
    values = [
        "permessage-deflate; client_max_window_bits; server_max_window_bits=10",
        'x-foo;a="1" , x-bar',
    ]
    assert parse_extensions(values) == [
        (
            "permessage-deflate",
            [("client_max_window_bits", None), ("server_max_window_bits", "10")],
        ),
        ("x-foo", [("a", "1")]),
        ("x-bar", []),
    ]


def test_parse_extensions_skips_empty_elements() -> None:
    """RFC 9110 §5.6.1: empty list elements are ignored."""
    assert parse_extensions([", x-a ,, x-b,", ""]) == [("x-a", []), ("x-b", [])]


def test_parse_extensions_unquotes_escaped_token() -> None:
    """RFC 6455 §9.1: a quoted-string value is unquoted and must then be a token."""
    assert parse_extensions(['x; p="a\\b"']) == [("x", [("p", "ab")])]


@pytest.mark.parametrize(
    "value",
    [
        '"quoted-name"',
        "x; =1",
        "x; p=",
        'x; p="a b"',
        "x y",
        "x; p=1 q",
        'x; p="unterminated',
    ],
)
def test_parse_extensions_rejects_malformed_values(value: str) -> None:
    """RFC 6455 §9.1: a header that does not match the grammar is an error."""
    with pytest.raises(ValueError):
        parse_extensions([value])


def test_serialize_extensions_round_trips() -> None:
    """RFC 6455 §9.1: what the server sends back must parse as the same extensions."""
    extensions = [
        (
            "permessage-deflate",
            [("client_max_window_bits", None), ("server_max_window_bits", "12")],
        ),
        ("x-empty", []),
    ]
    text = serialize_extensions(extensions)
    assert text == "permessage-deflate; client_max_window_bits; server_max_window_bits=12, x-empty"
    assert parse_extensions([text]) == extensions


def test_copying_headers_keeps_the_original_case_of_names() -> None:
    """Headers(Headers(...)) must not lowercase names: responses go out as built."""
    original = Headers([("Content-Type", "text/plain"), ("X-Trace", "1"), ("x-trace", "2")])
    assert Headers(original).raw_items() == original.raw_items()
    assert original.copy().raw_items() == original.raw_items()
