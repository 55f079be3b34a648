"""Masking (RFC 6455 §5.3): the C accelerator and the pure-Python fallback."""

from __future__ import annotations

import shutil
import sys
import tracemalloc
from typing import Any

import pytest

import trillium.core.mask as mask_module
from trillium.core.mask import (
    ACCELERATED,
    PayloadBuffer,
    PyPayloadBuffer,
    apply_mask,
    py_apply_mask,
)


def python_and_accelerated(python: object, accelerated: object) -> list[Any]:
    """Parameters for a test run against both versions of a function."""
    return [
        pytest.param(python, id="python"),
        pytest.param(
            accelerated,
            id="accelerated",
            marks=pytest.mark.skipif(not ACCELERATED, reason="C accelerator not built"),
        ),
    ]


IMPLEMENTATIONS = python_and_accelerated(py_apply_mask, apply_mask)
KEY = b"\x37\xfa\x21\x3d"


def reference(data: bytes, key: bytes) -> bytes:
    """RFC 6455 §5.3 word for word: octet i is XORed with octet i MOD 4 of the key."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def test_accelerator_is_built_when_a_compiler_is_present() -> None:
    """RFC 6455 §5.3: with a C compiler at install time, masking runs in C."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler on this machine")
    assert mask_module.ACCELERATED
    assert apply_mask is not py_apply_mask


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_masks_every_length_from_0_to_40(impl) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 §5.3: every length, across word and vector boundaries and tails."""
    for n in range(41):
        data = bytes(range(100, 100 + n))
        masked = impl(data, KEY)
        assert type(masked) is bytes
        assert masked == reference(data, KEY)
        assert impl(masked, KEY) == data


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_masks_one_mebibyte(impl) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 §5.3: a large payload (the accelerator releases the GIL for it)."""
    data = bytes(range(256)) * 4096 + b"tail"
    key = b"\x00\xff\x5a\xa5"
    expected = bytes(a ^ b for a, b in zip(data, key * (len(data) // 4 + 1), strict=False))
    assert impl(data, key) == expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("container", [bytes, bytearray])
def test_masks_unaligned_memoryview_slices(impl, container) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 §5.3: the payload may start at any offset of the receive buffer."""
    buf = container(bytes(range(256)) * 3)
    for start in range(9):
        for length in (0, 1, 7, 15, 16, 17, 33, 100):
            view = memoryview(buf)[start : start + length]
            assert impl(view, KEY) == reference(bytes(view), KEY)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_accepts_bytearray_and_memoryview_keys_and_data(impl) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 §5.3: the key and payload may come from any buffer."""
    assert impl(bytearray(b"Hello"), KEY) == b"\x7f\x9fMQX"
    assert impl(b"Hello", bytes(memoryview(KEY))) == b"\x7f\x9fMQX"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("key", [b"", b"abc", b"abcde", b"\x00" * 8])
@pytest.mark.parametrize("data", [b"", b"x", b"payload of some length"])
def test_wrong_length_mask_raises_value_error(impl, key: bytes, data: bytes) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 §5.3: the masking key is exactly 4 bytes."""
    with pytest.raises(ValueError, match="4 bytes"):
        impl(data, key)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("n", [0, 3, 16, 17, 70_000])
@pytest.mark.parametrize("prefix", [b"", b"\x82\x7e\x00\x11", bytearray(b"head+key")])
def test_prefix_is_copied_in_front_of_the_masked_bytes(impl, n: int, prefix: bytes) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 §5.3: a client's frame (header, key, masked payload) built in one call;
    the prefix is copied as it is, the payload masked from its first byte."""
    data = bytes(range(256)) * (n // 256) + bytes(n % 256)
    framed = impl(memoryview(data), KEY, prefix)
    assert type(framed) is bytes
    assert framed == bytes(prefix) + reference(data, KEY)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_wrong_length_mask_raises_value_error_with_a_prefix(impl) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 §5.3: the key is checked whatever else is passed."""
    with pytest.raises(ValueError, match="4 bytes"):
        impl(b"data", b"abc", b"prefix")


BUFFERS = python_and_accelerated(PyPayloadBuffer, PayloadBuffer)


@pytest.mark.parametrize("buffer_class", BUFFERS)
@pytest.mark.parametrize(
    "sizes", [[], [0], [1, 2, 3], [5, 0, 17, 3], [70_000, 1, 70_001], [4096] * 5]
)
def test_a_payload_received_in_pieces_is_unmasked_in_place_as_one_payload(
    buffer_class: Any, sizes: list[int]
) -> None:
    """RFC 6455 §5.3: a payload read in pieces of any length, each unmasked where it
    landed, with the key's phase carried across the pieces."""
    data = bytes(range(256)) * (sum(sizes) // 256 + 1)
    data = data[: sum(sizes)]
    masked = reference(data, KEY)
    payload = buffer_class(len(data))
    offset = 0
    for n in sizes:
        with memoryview(payload) as view:
            view[offset : offset + n] = masked[offset : offset + n]
        payload.unmask(offset, n, KEY)
        offset += n
    taken = payload.take()
    assert type(taken) is bytes
    assert taken == data


@pytest.mark.parametrize("buffer_class", BUFFERS)
def test_payload_buffer_checks_the_key_and_the_range(buffer_class: Any) -> None:
    """RFC 6455 §5.3: a 4-byte key, and only bytes inside the payload."""
    payload = buffer_class(8)
    with pytest.raises(ValueError, match="4 bytes"):
        payload.unmask(0, 4, b"abc")
    for start, length in [(-1, 2), (0, -1), (5, 4), (9, 0), (5, sys.maxsize)]:
        with pytest.raises(ValueError, match="range"):
            payload.unmask(start, length, KEY)
    with pytest.raises(ValueError):
        buffer_class(-1)


@pytest.mark.skipif(not ACCELERATED, reason="C accelerator not built")
def test_compiled_payload_buffer_hands_out_its_bytes_without_a_copy() -> None:
    """The compiled buffer's storage is the bytes that take() returns: a 1 MiB payload
    costs one allocation of 1 MiB, not two."""
    size = 2**20
    tracemalloc.start()
    try:
        payload = PayloadBuffer(size)
        with memoryview(payload) as view:
            view[:] = bytes(size)  # the one other allocation: what is written in
        del view
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        taken = payload.take()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(taken) == size
    assert peak - before < 1024


@pytest.mark.skipif(not ACCELERATED, reason="C accelerator not built")
def test_compiled_payload_buffer_never_changes_bytes_it_handed_out() -> None:
    """Bytes are immutable: no view may be out when take() hands them over, and none
    can be made afterwards, so what recv() returned never changes under its owner."""
    payload = PayloadBuffer(4)
    view = memoryview(payload)
    with pytest.raises(BufferError, match="views"):
        payload.take()
    view.release()
    taken = payload.take()
    with pytest.raises(BufferError, match="taken"):
        memoryview(payload)
    with pytest.raises(BufferError, match="taken"):
        payload.unmask(0, 4, KEY)
    with pytest.raises(BufferError, match="taken"):
        payload.take()
    assert len(taken) == 4
