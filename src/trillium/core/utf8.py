"""Incremental UTF-8 validation for text messages (RFC 6455 §8.1).

A text message arrives in fragments, and a code point may straddle two of them. The
receiver must fail the connection (1007) as soon as the bytes seen so far cannot
begin valid UTF-8, not only when the message ends. CPython's incremental decoder
does that for almost every case, and decodes at C speed; its one gap is the
surrogate range: after ``ED A0`` it waits for the third byte before complaining,
although no valid sequence starts that way. ``Utf8Decoder`` closes that gap.

    >>> d = Utf8Decoder()
    >>> d.decode(b"caf\\xc3"), d.decode(b"\\xa9", final=True)
    ('caf', 'é')
    >>> Utf8Decoder().decode(b"\\xed\\xa0")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    trillium.exceptions.InvalidUTF8: invalid UTF-8 in text message: encoded surrogate ...
"""

from __future__ import annotations

import codecs

from ..exceptions import InvalidUTF8

__all__ = ["Utf8Decoder"]

_IncrementalDecoder = codecs.getincrementaldecoder("utf-8")


class Utf8Decoder:
    """Decode UTF-8 piece by piece, raising InvalidUTF8 at the first impossible byte."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = _IncrementalDecoder("strict")

    def decode(self, data: bytes | bytearray | memoryview, final: bool = False) -> str:
        """Decode the next piece; with ``final=True``, a truncated code point is an error."""
        try:
            text = self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise InvalidUTF8(f"invalid UTF-8 in text message: {exc.reason}") from None
        if not final:
            pending = self._decoder.getstate()[0]
            # ED followed by A0-BF would encode U+D800-U+DFFF, a surrogate.
            if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                raise InvalidUTF8("invalid UTF-8 in text message: encoded surrogate")
        return text

    def reset(self) -> None:
        """Forget any partial code point, ready for the next message."""
        self._decoder.reset()
