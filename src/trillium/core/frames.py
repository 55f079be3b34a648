"""Frames: the unit of the WebSocket wire format (RFC 6455 §5.2).

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-------+-+-------------+-------------------------------+
    |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
    |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
    |N|V|V|V|       |S|             |   (if payload len==126/127)   |
    | |1|2|3|       |K|             |                               |
    +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
    |     Extended payload length continued, if payload len == 127  |
    + - - - - - - - - - - - - - - - +-------------------------------+
    |                               |Masking-key, if MASK set to 1  |
    +-------------------------------+-------------------------------+
    | Masking-key (continued)       |          Payload Data         |
    +-------------------------------- - - - - - - - - - - - - - - - +

``serialize_frame`` turns a frame into bytes (always the shortest length encoding);
``FrameParser`` turns a byte stream back into frames, checking every rule that can be
checked on a frame by itself. Rules that need the surrounding conversation
(fragmentation, close handshake, UTF-8 across fragments) live in ``protocol``.

    >>> data = serialize_frame(Opcode.TEXT, b"hi", mask=False)
    >>> data
    b'\\x81\\x02hi'
    >>> parser = FrameParser(expect_masked=False)
    >>> parser.feed(data)
    >>> parser.next_frame()
    Frame(opcode=<Opcode.TEXT: 1>, payload=b'hi', fin=True, rsv=0)
"""

from __future__ import annotations

import enum
import os
import struct
from dataclasses import dataclass

from ..exceptions import PayloadTooBig, ProtocolError
from .mask import PayloadBuffer, apply_mask

__all__ = [
    "MAX_CONTROL_PAYLOAD",
    "Frame",
    "FrameParser",
    "Opcode",
    "serialize_frame",
    "serialize_frame_parts",
]


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 §5.2). 3-7 and 0xB-0xF are reserved."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA

    @property
    def is_control(self) -> bool:
        """Control opcodes have the high bit set: close, ping and pong."""
        return self >= 0x8


_OPCODES = {int(op): op for op in Opcode}
_TEXT, _BINARY = Opcode.TEXT, Opcode.BINARY

#: Control frames carry at most 125 bytes (RFC 6455 §5.5), so they fit the 7-bit length.
MAX_CONTROL_PAYLOAD = 125

FIN = 0x80
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
MASK_BIT = 0x80

_H16 = struct.Struct("!BBH")
_H64 = struct.Struct("!BBQ")
_H7_KEY = struct.Struct("!BB4s")  # the same headers, with the masking key after them
_H16_KEY = struct.Struct("!BBH4s")
_H64_KEY = struct.Struct("!BBQ4s")
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


@dataclass(slots=True)
class Frame:
    """One frame, with its payload already unmasked."""

    opcode: Opcode
    payload: bytes
    fin: bool = True
    rsv: int = 0  # the RSV1-3 bits as they sit in the first byte (0x70 mask)


class _MaskKeys:
    """Fresh random masking keys (RFC 6455 §5.3), drawn from os.urandom in batches.

    Every frame gets four bytes never used before, from the OS's cryptographic
    generator; fetching them 1 KiB at a time saves a system call per frame. The
    keys wait in a list because ``list.pop()`` is atomic: threads that encode frames
    at once (the blocking face sends from the caller's thread) never get the same
    key, without paying for a lock. Two threads refilling at once each make a fresh
    list; the keys left in the one that loses are never used.
    """

    __slots__ = ("_keys",)

    def __init__(self) -> None:
        self._keys: list[bytes] = []

    def next(self) -> bytes:
        try:
            return self._keys.pop()
        except IndexError:
            keys = self._keys = list(_SPLIT_KEYS.unpack(os.urandom(_SPLIT_KEYS.size)))
            return keys.pop()


#: Splits 1 KiB of random bytes into 256 keys, in C (a list comprehension of slices
#: took a fifth of the time of encoding a small frame, spread over 256 frames).
_SPLIT_KEYS = struct.Struct("4s" * 256)


mask_keys = _MaskKeys()


def serialize_frame(
    opcode: int, payload: bytes, *, mask: bool, fin: bool = True, rsv: int = 0
) -> bytes:
    """Encode one frame; a client passes ``mask=True`` and gets a fresh random key."""
    b0 = (FIN if fin else 0) | rsv | opcode
    n = len(payload)
    if mask:
        # Header and key packed at once, then the frame built in one allocation.
        key = mask_keys.next()
        if n < 126:
            header = _H7_KEY.pack(b0, MASK_BIT | n, key)
        elif n < 65536:
            header = _H16_KEY.pack(b0, MASK_BIT | 126, n, key)
        else:
            header = _H64_KEY.pack(b0, MASK_BIT | 127, n, key)
        return apply_mask(payload, key, header)
    if n < 126:  # the usual small frame, without a call
        return bytes((b0, n)) + payload
    return _unmasked_header(b0, n) + payload


def serialize_frame_parts(
    opcode: int, payload: bytes, *, mask: bool, fin: bool = True, rsv: int = 0
) -> list[bytes]:
    """``serialize_frame``, but an unmasked frame comes back as ``[header, payload]``,
    the payload itself rather than a copy behind the header (a masked frame is built
    in one piece anyway, as ``[frame]``).

    Written one after the other with a vectored write (``sendmsg``), they make the
    same bytes on the wire. A server echoing 1 MiB messages otherwise copies each one
    once more just to put ten bytes in front of it (h11 offers the same, as
    ``send_with_data_passthrough``).
    """
    if mask:
        return [serialize_frame(opcode, payload, mask=True, fin=fin, rsv=rsv)]
    return [_unmasked_header((FIN if fin else 0) | rsv | opcode, len(payload)), payload]


def _unmasked_header(b0: int, n: int) -> bytes:
    """The header of an unmasked frame: first byte ``b0``, payload length ``n``."""
    if n < 126:
        return bytes((b0, n))
    if n < 65536:
        return _H16.pack(b0, 126, n)
    return _H64.pack(b0, 127, n)


#: An incomplete frame whose payload is at least this long is collected in a buffer
#: of its own (see ``_Collecting``) rather than grown with the parser's buffer.
COLLECT_ABOVE = 16384

#: A frame whose payload is at least this long is received in place: the reader
#: writes the rest of it straight into its buffer (see ``FrameParser.receive_buffer``).
#: Shorter ones come in the reader's usual reads, several frames at once, which
#: costs fewer system calls than the copy it saves.
RECEIVE_INTO_ABOVE = 262144

#: The most a frame's header can make the parser set aside for its payload before
#: the payload arrives. A longer frame (``max_size`` raised past it, or None) grows
#: the parser's buffer as its bytes arrive, like a short one.
RESERVE_AT_MOST = 16 * 2**20

#: The longest frame header: two bytes, a 64-bit length and a masking key.
_LONGEST_HEADER = 14


class _Collecting:
    """A big frame whose header is parsed and whose payload is still arriving.

    The payload gets a buffer of its size when the header is parsed (a
    ``PayloadBuffer``; with the C accelerator its pages are touched only as bytes
    arrive, see ``docs/security.md``). Each chunk goes
    to its place in it and is unmasked there at once, while it is still in the
    cache, and the finished buffer becomes the frame's payload without a copy.
    Growing one buffer read by read instead copied the payload again at every
    reallocation, and slicing the frame out of it once more: for a 1 MiB message,
    several megabytes of copying per message.
    """

    __slots__ = ("filled", "fin", "in_place", "key", "missing", "opcode", "payload", "rsv", "view")

    def __init__(
        self,
        opcode: Opcode,
        fin: bool,
        rsv: int,
        key: bytes | None,
        first: bytes | memoryview,
        missing: int,
    ) -> None:
        self.opcode = opcode
        self.fin = fin
        self.rsv = rsv
        self.key = key
        size = len(first) + missing
        self.payload = PayloadBuffer(size)
        self.in_place = size >= RECEIVE_INTO_ABOVE
        self.view: memoryview | None = None  # the one receive_buffer() handed out
        self.filled = 0  # payload bytes in place
        self.missing = size  # payload bytes still to come
        self.add(first)

    def add(self, data: bytes | memoryview) -> None:
        """One more chunk, all of it payload (``FrameParser`` cuts a chunk at the
        frame's end)."""
        size = len(data)
        with memoryview(self.payload) as view:
            view[self.filled : self.filled + size] = data
        self.arrived(size)

    def buffer(self) -> memoryview:
        """Where the rest of the payload goes (the same view until bytes arrive)."""
        if self.view is None:
            with memoryview(self.payload) as whole:
                self.view = whole[self.filled :]
        return self.view

    def release(self) -> None:
        """Let go of the view ``buffer()`` handed out: the payload can't become
        ``bytes`` while one is held, and bytes arriving make it stale."""
        if self.view is not None:
            self.view.release()
            self.view = None

    def arrived(self, size: int) -> None:
        """``size`` more bytes are in place: unmask them."""
        self.release()
        if self.key is not None:
            self.payload.unmask(self.filled, size, self.key)
        self.filled += size
        self.missing -= size

    def frame(self) -> Frame:
        """The whole frame, once nothing is missing."""
        return Frame(self.opcode, self.payload.take(), self.fin, self.rsv)


class FrameParser:
    """Incremental frame parser: ``feed()`` bytes, then call ``next_frame()`` until None.

    It never holds more than one frame's header plus ``max_payload`` bytes for the
    frame in progress: a frame that announces a longer payload is refused with
    PayloadTooBig (1009) as soon as its header is read.

    ``expect_masked`` is True on a server (clients must mask, §5.1) and False on a
    client (servers must not). ``allowed_rsv`` holds the RSV bits that negotiated
    extensions claim; any other RSV bit fails the connection (§5.2).
    """

    __slots__ = ("_buf", "_collecting", "_header", "_pos", "allowed_rsv", "expect_masked")

    def __init__(self, *, expect_masked: bool, allowed_rsv: int = 0) -> None:
        self.expect_masked = expect_masked
        self.allowed_rsv = allowed_rsv
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._collecting: _Collecting | None = None
        # Room for the next frame's header alone, offered by receive_buffer() right
        # after a frame received in place.
        self._header: bytearray | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet parsed into a frame."""
        buffered = len(self._buf) - self._pos
        if self._collecting is not None:
            buffered += self._collecting.filled
        return buffered

    def receive_buffer(self) -> memoryview | None:
        """Where the next bytes read from the network should go, when the parser has
        a better place for them than a read's fresh ``bytes``; None when it hasn't
        (read as usual and ``feed()`` them). Write into it (``socket.recv_into``),
        then tell ``received_into()`` how many bytes came.

        It is the rest of a big frame's payload (``RECEIVE_INTO_ABOVE``): the bytes
        land where they stay, with no copy to collect them. Right after such a
        frame it is room for just the next frame's header, so that if that frame is
        big too, none of its payload lands in a read's bytes to be copied out.

            >>> wire = serialize_frame(Opcode.BINARY, bytes(RECEIVE_INTO_ABOVE), mask=False)
            >>> parser = FrameParser(expect_masked=False)
            >>> parser.feed(wire[:1000])
            >>> parser.next_frame() is None
            True
            >>> buffer = parser.receive_buffer()
            >>> len(buffer) == len(wire) - 1000
            True
            >>> buffer[:] = wire[1000:]
            >>> parser.received_into(len(buffer))
            >>> len(parser.next_frame().payload) == RECEIVE_INTO_ABOVE
            True
            >>> len(parser.receive_buffer())  # the next header, alone
            14
        """
        collecting = self._collecting
        if collecting is not None:
            return collecting.buffer() if collecting.in_place and collecting.missing else None
        if self._header is not None and self._pos >= len(self._buf):
            return memoryview(self._header)
        return None

    def received_into(self, size: int) -> None:
        """``size`` bytes were written at the start of ``receive_buffer()``'s buffer."""
        collecting = self._collecting
        if collecting is not None and collecting.view is not None:
            if not 0 < size <= collecting.missing:
                raise ValueError(f"received_into({size}) with {collecting.missing} bytes missing")
            collecting.arrived(size)
        elif self._header is not None:
            if not 0 < size <= _LONGEST_HEADER:
                raise ValueError(f"received_into({size}) into a frame header's room")
            self.feed(bytes(self._header[:size]))
        else:
            raise RuntimeError("received_into() without a buffer from receive_buffer()")

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes. A ``bytes`` object is kept as it is (and replaces
        a fully consumed buffer); any other buffer is copied, as its owner may reuse
        it."""
        self._header = None
        if type(data) is not bytes:
            data = bytes(data)
        collecting = self._collecting
        if collecting is not None and collecting.missing:
            # The payload part goes to the frame being collected; what follows is
            # the next frames', parsed from where it is, uncopied (nothing else is
            # buffered while a frame is collected: see _collect).
            missing = collecting.missing
            if len(data) <= missing:
                collecting.add(data)
                return
            collecting.add(memoryview(data)[:missing])
            self._buf, self._pos = data, missing
            return
        buf = self._buf
        if self._pos >= len(buf):
            self._buf, self._pos = data, 0
            return
        if isinstance(buf, bytes):
            self._buf = bytearray(memoryview(buf)[self._pos :]) + data
        else:
            del buf[: self._pos]
            buf += data
        self._pos = 0

    def next_frame(self, max_payload: int = 2**63 - 1) -> Frame | None:
        """Return the next complete frame, or None if more bytes are needed.

        Raises ProtocolError (1002) for malformed frames and PayloadTooBig (1009) for a
        data frame payload over ``max_payload`` bytes.
        """
        collecting = self._collecting
        if collecting is not None:
            if collecting.missing:
                return None
            self._collecting = None
            if collecting.in_place:
                self._header = bytearray(_LONGEST_HEADER)
            return collecting.frame()
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 2:
            return None
        b0 = buf[pos]
        b1 = buf[pos + 1]
        # The common case first, in few steps: a whole text or binary message of at
        # most 125 bytes, no RSV bit, masked exactly when it must be. It passes every
        # check below by construction; any other frame goes through them.
        masking = self.expect_masked
        length = b1 ^ MASK_BIT if masking else b1
        if (b0 == 0x82 or b0 == 0x81) and length < 126 and length <= max_payload:
            start = pos + 6 if masking else pos + 2
            end = start + length
            if end - pos > avail:
                return None
            if masking:
                payload = apply_mask(buf[start:end], buf[start - 4 : start])
            elif isinstance(buf, bytes):
                payload = buf[start:end]
            else:
                payload = bytes(buf[start:end])
            self._pos = end
            return Frame(_BINARY if b0 == 0x82 else _TEXT, payload, True, 0)
        fin = b0 & FIN
        rsv = b0 & 0x70
        opcode = b0 & 0x0F
        length = b1 & 0x7F
        masked = b1 & MASK_BIT

        if rsv & ~self.allowed_rsv:
            raise ProtocolError(f"reserved bits set (0x{rsv:02x}) with no extension to claim them")
        op = _OPCODES.get(opcode)
        if op is None:
            raise ProtocolError(f"reserved opcode 0x{opcode:x}")
        if opcode >= 0x8:
            if rsv:
                # Extensions define RSV bits for data frames only (RFC 7692 §6.1).
                raise ProtocolError(f"reserved bits set on a control frame ({op.name})")
            if not fin:
                raise ProtocolError(f"fragmented control frame ({op.name})")
            if length > MAX_CONTROL_PAYLOAD:
                raise ProtocolError(f"control frame ({op.name}) payload longer than 125 bytes")
        if bool(masked) != self.expect_masked:
            raise ProtocolError(
                "client frame is not masked" if self.expect_masked else "server frame is masked"
            )

        offset = pos + 2
        if length == 126:
            if avail < 4:
                return None
            (length,) = _U16.unpack_from(buf, offset)
            offset += 2
        elif length == 127:
            if avail < 10:
                return None
            (length,) = _U64.unpack_from(buf, offset)
            if length >> 63:
                raise ProtocolError("64-bit payload length with the most significant bit set")
            offset += 8
        # Control frames (at most 125 bytes) are not part of a message: no limit applies.
        if length > max_payload and opcode < 0x8:
            raise PayloadTooBig(f"frame of {length} bytes exceeds the limit of {max_payload} bytes")

        key = None
        if masked:
            if offset + 4 - pos > avail:
                return None
            key = bytes(buf[offset : offset + 4])
            offset += 4
        end = offset + length
        if end - pos > avail:
            if COLLECT_ABOVE <= length <= RESERVE_AT_MOST:
                self._collect(op, bool(fin), rsv, key, offset, end)
            return None
        if key is not None:
            if isinstance(buf, bytes) and length < COLLECT_ABOVE:
                payload = apply_mask(buf[offset:end], key)
            else:
                with memoryview(buf) as view:
                    payload = apply_mask(view[offset:end], key)
        elif isinstance(buf, bytes):
            payload = buf[offset:end]
        else:
            with memoryview(buf) as view:
                payload = bytes(view[offset:end])
        self._pos = end
        return Frame(op, payload, bool(fin), rsv)

    def _collect(
        self, opcode: Opcode, fin: bool, rsv: int, key: bytes | None, offset: int, end: int
    ) -> None:
        """Start collecting a big frame's payload chunk by chunk (see ``_Collecting``)."""
        buf = self._buf
        with memoryview(buf) as view:
            self._collecting = _Collecting(opcode, fin, rsv, key, view[offset:], end - len(buf))
        self._buf = b""
        self._pos = 0
