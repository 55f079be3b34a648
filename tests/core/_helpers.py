"""Helpers for the core tests: frames built by hand, and the checks for a failed connection."""

from __future__ import annotations

import struct

import pytest

from trillium.core.close import Close
from trillium.core.frames import Frame, FrameParser, Opcode
from trillium.core.mask import py_apply_mask
from trillium.core.protocol import CLIENT, SERVER, Protocol, State
from trillium.exceptions import ProtocolError

MASK_KEY = b"\x37\xfa\x21\x3d"


def raw_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    mask: bool,
    fin: bool = True,
    rsv: int = 0,
    length: int | None = None,
    length_bits: int | None = None,
) -> bytes:
    """Frame bytes built by hand, including frames ``serialize_frame`` never produces.

    ``length`` overrides the announced payload length and ``length_bits`` (7, 16 or 64)
    forces the length encoding; the payload itself is appended as given (masked with
    MASK_KEY when ``mask`` is true).
    """
    n = len(payload) if length is None else length
    if length_bits is None:
        length_bits = 7 if n < 126 else 16 if n < 65536 else 64
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if mask else 0
    if length_bits == 7:
        header = bytes((b0, m | n))
    elif length_bits == 16:
        header = struct.pack("!BBH", b0, m | 126, n)
    else:
        header = struct.pack("!BBQ", b0, m | 127, n)
    if mask:
        return header + MASK_KEY + py_apply_mask(payload, MASK_KEY)
    return header + payload


def peer_frame(receiver: Protocol, opcode: int, payload: bytes = b"", **kwargs: object) -> bytes:
    """A frame as the peer of ``receiver`` sends it: masked towards a server only."""
    return raw_frame(opcode, payload, mask=receiver.role is SERVER, **kwargs)  # type: ignore[arg-type]


def sent_frames(protocol: Protocol, data: bytes | None = None) -> list[Frame]:
    """Parse bytes ``protocol`` sent (by default its ``data_to_send()``), checking masking."""
    if data is None:
        data = protocol.data_to_send()
    parser = FrameParser(expect_masked=protocol.role is CLIENT)
    parser.feed(data)
    frames = []
    while (frame := parser.next_frame()) is not None:
        frames.append(frame)
    assert parser.buffered == 0, "trailing bytes after the last frame"
    return frames


def close_of(frame: Frame) -> Close:
    """The Close carried by ``frame``, which must be a close frame."""
    assert frame.opcode is Opcode.CLOSE
    return Close.parse(frame.payload)


def assert_fails(
    protocol: Protocol, data: bytes, exc_type: type[ProtocolError], code: int
) -> ProtocolError:
    """Feed ``data``; check it fails the connection with ``exc_type`` and close ``code``.

    The exception must be exactly ``exc_type`` with ``.code == code``, and
    ``data_to_send()`` must end with a close frame carrying that same code.
    """
    with pytest.raises(ProtocolError) as info:
        protocol.receive_data(data)
    exc = info.value
    assert type(exc) is exc_type
    assert exc.code == code
    assert protocol.failure is exc
    frames = sent_frames(protocol)
    assert frames, "no close frame queued for the peer"
    assert close_of(frames[-1]).code == code
    assert protocol.state is State.CLOSING
    return exc
