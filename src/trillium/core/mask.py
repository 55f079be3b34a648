"""Masking (RFC 6455 §5.3): XOR the payload with a 4-byte key, repeated.

A client masks every frame it sends, so a server unmasks every byte it receives:
this is the hottest loop in the protocol. The compiled accelerator
(``trillium.core._speedups``, built at install time when a C compiler is there)
runs at memory speed; the pure-Python fallback treats the whole payload as one big
integer, which is about 50 times slower at 1 MiB but has no per-byte Python loop.

    >>> apply_mask(b"Hello", b"\\x37\\xfa\\x21\\x3d")
    b'\\x7f\\x9fMQX'
    >>> apply_mask(apply_mask(b"Hello", b"abcd"), b"abcd")
    b'Hello'
    >>> apply_mask(b"Hello", b"\\x37\\xfa\\x21\\x3d", b"head:")
    b'head:\\x7f\\x9fMQX'

A big frame's payload is unmasked where it lands instead, chunk by chunk as the
reads bring it, in a ``PayloadBuffer``:

    >>> payload = PayloadBuffer(5)
    >>> with memoryview(payload) as view:
    ...     view[:2], view[2:] = b"\\x7f\\x9f", b"MQX"
    >>> payload.unmask(0, 2, b"\\x37\\xfa\\x21\\x3d")
    >>> payload.unmask(2, 3, b"\\x37\\xfa\\x21\\x3d")
    >>> payload.take()
    b'Hello'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = [
    "ACCELERATED",
    "PayloadBuffer",
    "PyPayloadBuffer",
    "apply_mask",
    "py_apply_mask",
]

Buffer = bytes | bytearray | memoryview


def py_apply_mask(data: Buffer, mask: Buffer, prefix: Buffer = b"", /) -> bytes:
    """XOR ``data`` with ``mask`` repeated, in pure Python (one big-integer XOR).

    ``prefix`` is put in front of the result: a client's frame header and key go
    there, so that the compiled version builds the whole frame in one allocation.
    """
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes")
    n = len(data)
    if n == 0:
        return bytes(prefix)
    key = (bytes(mask) * ((n >> 2) + 1))[:n]
    masked = int.from_bytes(data, "little") ^ int.from_bytes(key, "little")
    return bytes(prefix) + masked.to_bytes(n, "little")


class PyPayloadBuffer(bytearray):
    """A big frame's payload, received in place: the reader writes each chunk into a
    view of it, ``unmask()`` unmasks the chunk there, and ``take()`` returns the
    payload as ``bytes``.

    The compiled version's storage is the ``bytes`` object itself, so ``take()``
    copies nothing. Here it is a bytearray, and ``take()`` costs a copy.
    """

    __slots__ = ()

    def unmask(self, start: int, length: int, mask: Buffer, /) -> None:
        """XOR ``length`` bytes from ``start`` with ``mask``, as bytes of a payload
        masked from its first byte (the key turns with the offset)."""
        if start < 0 or length < 0 or start + length > len(self):
            raise ValueError("unmask() range outside the buffer")
        phase = start & 3
        key = bytes(mask[phase:]) + bytes(mask[:phase])
        with memoryview(self) as view:
            view[start : start + length] = py_apply_mask(view[start : start + length], key)

    def take(self) -> bytes:
        """The payload, as bytes."""
        return bytes(self)


class _PayloadBuffer(Protocol):
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def unmask(self, start: int, length: int, mask: Buffer, /) -> None: ...
    def take(self) -> bytes: ...


class _ApplyMask(Protocol):
    def __call__(self, data: Buffer, mask: Buffer, prefix: Buffer = ..., /) -> bytes: ...


apply_mask: _ApplyMask
PayloadBuffer: Callable[[int], _PayloadBuffer]
try:
    from ._speedups import PayloadBuffer as _CPayloadBuffer
    from ._speedups import apply_mask as _c_apply_mask
except ImportError:  # no compiler at install time, or TRILLIUM_NO_EXTENSIONS=1
    apply_mask, PayloadBuffer = py_apply_mask, PyPayloadBuffer
    ACCELERATED = False
else:
    apply_mask, PayloadBuffer = _c_apply_mask, _CPayloadBuffer
    ACCELERATED = True
