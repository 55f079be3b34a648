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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["ACCELERATED", "apply_mask", "join_and_mask", "py_apply_mask", "py_join_and_mask"]

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


def py_join_and_mask(parts: Sequence[Buffer], mask: Buffer, /) -> bytes:
    """The parts one after the other, masked as one payload (a big frame's payload
    arrives in many reads: the compiled version masks them into the result in one
    pass, rather than joining them first)."""
    return py_apply_mask(b"".join(parts), mask)


class _ApplyMask(Protocol):
    def __call__(self, data: Buffer, mask: Buffer, prefix: Buffer = ..., /) -> bytes: ...


apply_mask: _ApplyMask
join_and_mask: Callable[[Sequence[Buffer], Buffer], bytes]
try:
    from ._speedups import apply_mask as _c_apply_mask
    from ._speedups import join_and_mask as _c_join_and_mask
except ImportError:  # no compiler at install time, or TRILLIUM_NO_EXTENSIONS=1
    apply_mask, join_and_mask, ACCELERATED = py_apply_mask, py_join_and_mask, False
else:
    apply_mask, join_and_mask, ACCELERATED = _c_apply_mask, _c_join_and_mask, True
