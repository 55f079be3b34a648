"""Masking (RFC 6455 §5.3): the C accelerator and the pure-Python fallback."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

import trillium.core.mask as mask_module
from trillium.core.mask import (
    ACCELERATED,
    apply_mask,
    join_and_mask,
    py_apply_mask,
    py_join_and_mask,
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


JOIN_IMPLEMENTATIONS = python_and_accelerated(py_join_and_mask, join_and_mask)


@pytest.mark.parametrize("impl", JOIN_IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "sizes", [[], [0], [1, 2, 3], [5, 0, 17, 3], [70_000, 1, 70_001], [4096] * 5]
)
def test_parts_are_masked_as_one_payload(impl, sizes: list[int]) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 §5.3: a payload read in pieces of any length, masked with the key's
    phase carried across the pieces, whatever buffers they are."""
    data = bytes(range(256)) * (sum(sizes) // 256 + 1)
    parts: list[bytes | bytearray | memoryview] = []
    offset = 0
    for i, n in enumerate(sizes):
        piece = data[offset : offset + n]
        parts.append((bytes, bytearray, memoryview)[i % 3](piece))
        offset += n
    joined = impl(parts, KEY)
    assert type(joined) is bytes
    assert joined == reference(data[:offset], KEY)


@pytest.mark.parametrize("impl", JOIN_IMPLEMENTATIONS)
def test_join_and_mask_checks_the_key_and_the_parts(impl) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 §5.3: a 4-byte key; parts that aren't bytes-like raise TypeError."""
    with pytest.raises(ValueError, match="4 bytes"):
        impl([b"data"], b"abc")
    with pytest.raises(TypeError):
        impl([b"data", 3], KEY)
