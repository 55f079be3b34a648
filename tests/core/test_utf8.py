"""The incremental UTF-8 validator for text messages (RFC 6455 §8.1, RFC 3629)."""

from __future__ import annotations

import itertools

import pytest

from trillium.core.utf8 import Utf8Decoder
from trillium.exceptions import InvalidUTF8


def is_valid_prefix(data: bytes) -> bool:
    """Whether some continuation could make ``data`` valid UTF-8 (the oracle: CPython)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data" and exc.end == len(data)
    return True


def decode_in_pieces(data: bytes, cuts: list[int]) -> str:
    decoder = Utf8Decoder()
    pieces = list(itertools.pairwise([0, *cuts, len(data)]))
    parts = [decoder.decode(data[a:b]) for a, b in pieces[:-1]]
    parts.append(decoder.decode(data[pieces[-1][0] :], final=True))
    return "".join(parts)


def test_decodes_text_split_at_every_byte() -> None:
    """RFC 6455 §5.6: a code point may be split across fragments."""
    text = "aé€😀z"
    data = text.encode()
    for cut in range(len(data) + 1):
        assert decode_in_pieces(data, [cut]) == text
    assert decode_in_pieces(data, list(range(1, len(data)))) == text


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xff", id="never-valid-byte"),
        pytest.param(b"\x80", id="lone-continuation"),
        pytest.param(b"\xc0", id="overlong-2-byte-lead"),
        pytest.param(b"\xe0\x80", id="overlong-3-byte"),
        pytest.param(b"\xf0\x80", id="overlong-4-byte"),
        pytest.param(b"\xf4\x90", id="above-U+10FFFF"),
        pytest.param(b"\xf5", id="lead-above-F4"),
        pytest.param(b"\xed\xa0", id="high-surrogate"),
        pytest.param(b"\xed\xbf", id="low-surrogate"),
        pytest.param(b"\xc3\x28", id="bad-continuation"),
    ],
)
def test_fails_as_soon_as_the_bytes_cannot_start_valid_utf8(data: bytes) -> None:
    """RFC 6455 §8.1: invalid UTF-8 fails when the impossible byte is seen, not at the end."""
    with pytest.raises(InvalidUTF8) as info:
        Utf8Decoder().decode(b"ok " + data)
    assert info.value.code == 1007


def test_surrogate_lead_is_refused_when_its_second_byte_comes_separately() -> None:
    """RFC 3629 §3: ED A0-BF would encode U+D800-U+DFFF, which UTF-8 excludes."""
    decoder = Utf8Decoder()
    assert decoder.decode(b"\xed") == ""
    with pytest.raises(InvalidUTF8, match="surrogate"):
        decoder.decode(b"\xa0")


def test_last_code_point_before_the_surrogates_is_accepted() -> None:
    """RFC 3629 §3: ED 9F BF is U+D7FF, which is valid."""
    decoder = Utf8Decoder()
    assert decoder.decode(b"\xed\x9f") == ""
    assert decoder.decode(b"\xbf", final=True) == "\ud7ff"


def test_truncated_code_point_fails_only_when_final() -> None:
    """RFC 6455 §8.1: a message that ends inside a code point is invalid."""
    decoder = Utf8Decoder()
    assert decoder.decode(b"caf\xc3") == "caf"
    with pytest.raises(InvalidUTF8):
        decoder.decode(b"", final=True)


def test_reset_forgets_a_partial_code_point() -> None:
    """RFC 6455 §8.1: each message is validated from a clean state."""
    decoder = Utf8Decoder()
    decoder.decode(b"\xe2\x82")
    decoder.reset()
    assert decoder.decode(b"ok", final=True) == "ok"


def test_every_short_prefix_is_judged_like_cpython() -> None:
    """RFC 3629 §4: exhaustively, up to 3 bytes, refuse exactly the impossible prefixes."""
    candidates = [bytes([a]) for a in range(256)]
    candidates += [bytes([a, b]) for a in range(0xC0, 0x100) for b in range(256)]
    candidates += [
        bytes([a, b, c]) for a in range(0xE0, 0xF5) for b in range(0x80, 0xC0) for c in range(256)
    ]
    wrong = []
    for data in candidates:
        try:
            Utf8Decoder().decode(data)
            refused = False
        except InvalidUTF8:
            refused = True
        if refused == is_valid_prefix(data):
            wrong.append(data)
    assert wrong == []
