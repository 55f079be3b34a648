"""Framing rules of RFC 6455 §5: the wire format, masking, RSV bits, opcodes, control frames."""

from __future__ import annotations

import itertools
import os
import struct
import sys
import threading
import time
import tracemalloc

import pytest

from trillium.core import frames
from trillium.core.extensions import Extension
from trillium.core.frames import Frame, FrameParser, Opcode, serialize_frame
from trillium.core.mask import apply_mask
from trillium.core.protocol import CLIENT, SERVER, Message, Ping, Pong, Protocol, Role
from trillium.exceptions import InvalidState, PayloadTooBig, ProtocolError

from ._helpers import assert_fails, peer_frame, raw_frame, sent_frames

RESERVED_OPCODES = [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF]
CONTROL_OPCODES = [Opcode.CLOSE, Opcode.PING, Opcode.PONG]
ROLES = [CLIENT, SERVER]


def parse_one(data: bytes, *, masked: bool, allowed_rsv: int = 0) -> Frame:
    parser = FrameParser(expect_masked=masked, allowed_rsv=allowed_rsv)
    parser.feed(data)
    frame = parser.next_frame()
    assert frame is not None
    assert parser.buffered == 0
    return frame


class ClaimRsv1(Extension):
    """A do-nothing extension that claims RSV1 and strips it from incoming frames."""

    name = "x-claim-rsv1"
    rsv_bits = 0x40

    def decode(self, frame: Frame, *, max_size: int | None) -> Frame:
        return Frame(frame.opcode, frame.payload, frame.fin, frame.rsv & ~self.rsv_bits)

    def encode(self, frame: Frame) -> Frame:
        return Frame(frame.opcode, frame.payload, frame.fin, frame.rsv | self.rsv_bits)


# ---------------------------------------------------------------- wire format (§5.2)


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x82\x00"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_sender_uses_shortest_payload_length_encoding(size: int, header: bytes) -> None:
    """RFC 6455 §5.2: the minimal number of bytes MUST be used to encode the length."""
    payload = bytes(size)
    data = serialize_frame(Opcode.BINARY, payload, mask=False)
    assert data == header + payload
    # The protocol's own send path must use the same encoding.
    assert Protocol(SERVER).send_binary(payload) == header + payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 1 << 20])
@pytest.mark.parametrize(("fin", "rsv"), [(True, 0), (False, 0x40)])
def test_frame_parts_are_the_frame_with_the_payload_itself_behind_the_header(
    size: int, fin: bool, rsv: int
) -> None:
    """Unmasked, ``serialize_frame_parts`` gives the same bytes as ``serialize_frame``,
    as a header and the very payload object (nothing copied): a vectored write of
    the two puts the frame on the wire."""
    payload = os.urandom(size)
    header, body = frames.serialize_frame_parts(
        Opcode.BINARY, payload, mask=False, fin=fin, rsv=rsv
    )
    assert body is payload
    assert header + body == serialize_frame(Opcode.BINARY, payload, mask=False, fin=fin, rsv=rsv)


def test_masked_frame_parts_are_one_buffer_holding_the_masked_frame() -> None:
    """A client's frame is masked into a fresh buffer anyway: one part, a whole frame."""
    payload = os.urandom(70000)
    (frame,) = frames.serialize_frame_parts(Opcode.BINARY, payload, mask=True)
    assert parse_one(frame, masked=True).payload == payload


def test_binary_passthrough_frames_follow_the_same_fragmentation_rules() -> None:
    """``send_binary_passthrough`` is ``send_binary`` with the payload passed through:
    same opcodes for a fragmented message, same refusal to interleave a text one, and
    negotiated extensions still apply (here, one that sets RSV1)."""
    payload = os.urandom(100000)
    proto = Protocol(SERVER, extensions=[ClaimRsv1()])
    twin = Protocol(SERVER, extensions=[ClaimRsv1()])
    first = proto.send_binary_passthrough(payload, fin=False)
    assert first[-1] is payload
    assert b"".join(first) == twin.send_binary(payload, fin=False)
    with pytest.raises(InvalidState):
        proto.send_text("interleaved", fin=True)
    last = proto.send_binary_passthrough(b"end")
    assert b"".join(last) == twin.send_binary(b"end")
    parsed = [parse_one(b"".join(p), masked=False, allowed_rsv=0x40) for p in (first, last)]
    assert [(f.opcode, f.fin, f.rsv) for f in parsed] == [
        (Opcode.BINARY, False, 0x40),
        (Opcode.CONTINUATION, True, 0x40),
    ]


def test_serialize_sets_fin_rsv_and_opcode_bits() -> None:
    """RFC 6455 §5.2: FIN is the high bit, then RSV1-3, then the 4-bit opcode."""
    assert serialize_frame(Opcode.TEXT, b"", mask=False)[0] == 0x81
    assert serialize_frame(Opcode.TEXT, b"", mask=False, fin=False)[0] == 0x01
    assert serialize_frame(Opcode.CONTINUATION, b"", mask=False, rsv=0x40)[0] == 0xC0
    assert serialize_frame(Opcode.PONG, b"", mask=False, rsv=0x30)[0] == 0xBA


def test_parser_reads_every_length_encoding() -> None:
    """RFC 6455 §5.2: 7-bit, 16-bit and 64-bit payload lengths are all readable."""
    for size in (0, 125, 126, 65535, 65536):
        payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
        frame = parse_one(serialize_frame(Opcode.BINARY, payload, mask=False), masked=False)
        assert frame == Frame(Opcode.BINARY, payload, True, 0)


def test_parser_waits_for_the_whole_frame() -> None:
    """RFC 6455 §5.2: a frame split anywhere on the stream is reassembled."""
    data = serialize_frame(Opcode.TEXT, b"x" * 300, mask=True)
    parser = FrameParser(expect_masked=True)
    for byte in data[:-1]:
        parser.feed(bytes([byte]))
        assert parser.next_frame() is None
    parser.feed(data[-1:])
    assert parser.next_frame() == Frame(Opcode.TEXT, b"x" * 300, True, 0)
    assert parser.next_frame() is None


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [1000, 4096, 65536, 300_001])
def test_parser_reassembles_big_frames_split_across_reads(masked: bool, chunk: int) -> None:
    """RFC 6455 §5.2: a frame longer than one read, its header split too, then more frames.

    Big payloads are collected read by read (frames.COLLECT_ABOVE): the frame after
    a big one starts inside the read that ends it, and must come out whole.
    """
    big = os.urandom(frames.COLLECT_ABOVE * 20 + 3)
    wire = (
        serialize_frame(Opcode.BINARY, big, mask=masked)
        + serialize_frame(Opcode.TEXT, b"after", mask=masked)
        + serialize_frame(Opcode.BINARY, big[::-1], mask=masked, fin=False)
        + serialize_frame(Opcode.PING, b"p", mask=masked)
    )
    parser = FrameParser(expect_masked=masked)
    got = []
    for i in range(0, len(wire), chunk):
        parser.feed(wire[i : i + chunk])
        while (frame := parser.next_frame()) is not None:
            got.append(frame)
    assert got == [
        Frame(Opcode.BINARY, big, True, 0),
        Frame(Opcode.TEXT, b"after", True, 0),
        Frame(Opcode.BINARY, big[::-1], False, 0),
        Frame(Opcode.PING, b"p", True, 0),
    ]
    assert parser.buffered == 0


def test_parser_keeps_what_was_fed_past_a_big_frame_over_several_feeds() -> None:
    """RFC 6455 §5.2: bytes fed after a big frame completes, before it is parsed, are kept."""
    big = b"x" * (frames.COLLECT_ABOVE * 2)
    wire = serialize_frame(Opcode.BINARY, big, mask=False)
    tail = serialize_frame(Opcode.TEXT, b"one", mask=False)
    tail += serialize_frame(Opcode.TEXT, b"two", mask=False)
    parser = FrameParser(expect_masked=False)
    parser.feed(wire[:100])
    assert parser.next_frame() is None  # the header is read: collecting from here
    assert parser.buffered == 100 - 4
    parser.feed(wire[100:] + tail[:2])
    parser.feed(tail[2:7])
    parser.feed(tail[7:])
    assert parser.buffered == len(wire) - 4 + len(tail)
    assert parser.next_frame() == Frame(Opcode.BINARY, big, True, 0)
    assert parser.next_frame() == Frame(Opcode.TEXT, b"one", True, 0)
    assert parser.next_frame() == Frame(Opcode.TEXT, b"two", True, 0)
    assert parser.next_frame() is None


@pytest.mark.parametrize("masked", [False, True])
def test_parser_holds_a_big_frame_dripped_byte_by_byte_in_little_more_than_its_size(
    masked: bool,
) -> None:
    """RFC 6455 §10.4: a peer sending a big frame a byte per read can't make the parser
    hold many times the payload (one object per read would be ~50 bytes per byte)."""
    payload = os.urandom(frames.COLLECT_ABOVE * 4)
    wire = serialize_frame(Opcode.BINARY, payload, mask=masked)
    parser = FrameParser(expect_masked=masked)
    tracemalloc.start()
    try:
        for i in range(len(wire) - 1):
            parser.feed(wire[i : i + 1])
            assert parser.next_frame() is None
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * len(payload)
    parser.feed(wire[-1:])
    assert parser.next_frame() == Frame(Opcode.BINARY, payload, True, 0)


def test_parser_parses_what_follows_a_collected_frame_without_copying_it() -> None:
    """A read that ends a big frame usually holds the next frames too: they are parsed
    from that read as it is. Copying them out first cost a copy of most of each read."""
    first = os.urandom(frames.COLLECT_ABOVE * 2)
    second = os.urandom(frames.COLLECT_ABOVE * 64)
    wire = serialize_frame(Opcode.BINARY, first, mask=False)
    wire += serialize_frame(Opcode.BINARY, second, mask=False)
    cut = len(first) // 2
    parser = FrameParser(expect_masked=False)
    parser.feed(wire[:cut])
    assert parser.next_frame() is None  # collecting the first frame from here
    rest = wire[cut:]
    tracemalloc.start()
    try:
        parser.feed(rest)
        frame = parser.next_frame()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frame == Frame(Opcode.BINARY, first, True, 0)
    assert peak < len(first) + len(second) // 2  # the first payload, not the second too
    assert parser.next_frame() == Frame(Opcode.BINARY, second, True, 0)


def receive_in_place(
    parser: FrameParser, wire: bytes, chunk: int
) -> tuple[list[Frame], list[tuple[int, int]]]:
    """Give ``wire`` to ``parser`` as a reader with ``recv_into`` does: into the
    parser's buffer when it offers one, else ``feed()``, at most ``chunk`` bytes a read.
    Returns the frames, and for each read into a parser's buffer, the buffer's length
    and how many bytes the read took."""
    frames_out: list[Frame] = []
    into: list[tuple[int, int]] = []
    pos = 0
    while pos < len(wire):
        buffer = parser.receive_buffer()
        if buffer is None:
            parser.feed(wire[pos : pos + chunk])
            pos += chunk
        else:
            room = len(buffer)
            size = min(chunk, room, len(wire) - pos)
            buffer[:size] = wire[pos : pos + size]
            parser.received_into(size)
            into.append((room, size))
            pos += size
        while (frame := parser.next_frame()) is not None:
            frames_out.append(frame)
    return frames_out, into


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [1000, 65536, 300_001])
def test_parser_takes_a_big_payload_in_place_then_just_the_next_header(
    masked: bool, chunk: int
) -> None:
    """RFC 6455 §5.2: a big frame's payload is read into the parser's buffer for it
    (nothing to copy out), and right after it only a header's worth, so that the next
    big frame's payload too lands in place; frames of every size come out whole."""
    big = os.urandom(frames.RECEIVE_INTO_ABOVE + 3)
    other = os.urandom(frames.RECEIVE_INTO_ABOVE * 2)
    tail = serialize_frame(Opcode.CONTINUATION, b"end", mask=masked)
    tail += serialize_frame(Opcode.PING, b"p", mask=masked)
    wire = serialize_frame(Opcode.BINARY, big, mask=masked)
    wire += serialize_frame(Opcode.BINARY, other, mask=masked, fin=False) + tail
    parser = FrameParser(expect_masked=masked)
    got, into = receive_in_place(parser, wire, chunk)
    assert got == [
        Frame(Opcode.BINARY, big, True, 0),
        Frame(Opcode.BINARY, other, False, 0),
        Frame(Opcode.CONTINUATION, b"end", True, 0),
        Frame(Opcode.PING, b"p", True, 0),
    ]
    assert parser.buffered == 0
    # Only the first read and what follows the last big frame are read as usual:
    # every other byte (payloads, the header after a big frame) came in place.
    assert len(wire) - sum(size for _, size in into) <= chunk + len(tail)
    assert (14, min(14, len(tail))) in into  # a header's room, after a big frame


def test_parser_offers_no_buffer_for_frames_it_is_cheaper_to_read_in_bulk() -> None:
    """Frames under RECEIVE_INTO_ABOVE come several per read (cheaper in system calls
    than the copy saved); frames over RESERVE_AT_MOST are not reserved in advance."""
    for length in [frames.RECEIVE_INTO_ABOVE - 1, frames.RESERVE_AT_MOST + 1]:
        parser = FrameParser(expect_masked=False)
        parser.feed(raw_frame(Opcode.BINARY, mask=False, length=length) + b"x" * 100)
        assert parser.next_frame() is None
        assert parser.receive_buffer() is None


@pytest.mark.parametrize("masked", [False, True])
def test_parser_reassembles_a_frame_longer_than_it_reserves(masked: bool) -> None:
    """RFC 6455 §5.2: a frame over RESERVE_AT_MOST (max_size raised past it, or None)
    is grown read by read rather than reserved at its header, and comes out whole."""
    payload = os.urandom(frames.RESERVE_AT_MOST + 5)
    wire = serialize_frame(Opcode.BINARY, payload, mask=masked)
    wire += serialize_frame(Opcode.TEXT, b"after", mask=masked)
    parser = FrameParser(expect_masked=masked)
    got, into = receive_in_place(parser, wire, 2**20)
    assert got == [Frame(Opcode.BINARY, payload, True, 0), Frame(Opcode.TEXT, b"after", True, 0)]
    assert into == []  # nothing offered in place: no buffer of its own


def test_parser_reserves_nothing_for_a_huge_announced_payload_without_a_limit() -> None:
    """RFC 6455 §10.4: with no max_payload, a header announcing 2**62 bytes costs
    only the bytes that actually arrive (reserving the length would be a memory bomb)."""
    parser = FrameParser(expect_masked=True)
    head = raw_frame(Opcode.BINARY, mask=True, length=2**62)
    tracemalloc.start()
    try:
        parser.feed(head + bytes(1000))
        assert parser.next_frame() is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000
    assert parser.receive_buffer() is None


def test_parser_takes_the_rest_of_a_frame_fed_after_offering_its_buffer() -> None:
    """A reader may ignore receive_buffer() (the blocking face's TLS, say) and feed():
    the frame still comes out whole, and the view it was offered is let go."""
    big = os.urandom(frames.RECEIVE_INTO_ABOVE * 2)
    wire = serialize_frame(Opcode.BINARY, big, mask=True) + serialize_frame(
        Opcode.TEXT, b"next", mask=True
    )
    parser = FrameParser(expect_masked=True)
    parser.feed(wire[:5000])
    assert parser.next_frame() is None
    buffer = parser.receive_buffer()
    assert buffer is not None
    buffer[:1000] = wire[5000:6000]
    parser.received_into(1000)
    assert parser.receive_buffer() is not None  # offered again, not used
    parser.feed(wire[6000:])
    assert parser.next_frame() == Frame(Opcode.BINARY, big, True, 0)
    assert parser.next_frame() == Frame(Opcode.TEXT, b"next", True, 0)
    buffer = parser.receive_buffer()  # room for the header after a big frame, alone
    assert buffer is not None and len(buffer) == 14


def test_parser_refuses_received_into_that_does_not_fit() -> None:
    """received_into() counts bytes written into the buffer just offered: none, more
    than was missing, or with no buffer offered is a bug in the reader, said at once."""
    parser = FrameParser(expect_masked=False)
    with pytest.raises(RuntimeError, match="receive_buffer"):
        parser.received_into(10)
    parser.feed(raw_frame(Opcode.BINARY, mask=False, length=frames.RECEIVE_INTO_ABOVE) + b"x")
    assert parser.next_frame() is None
    buffer = parser.receive_buffer()
    assert buffer is not None
    for size in [0, len(buffer) + 1]:
        with pytest.raises(ValueError, match="missing"):
            parser.received_into(size)


def test_protocol_receives_a_big_message_in_place_until_the_peer_closes() -> None:
    """A big message read into the protocol's buffer is the same event as one fed;
    once the peer's close frame is in, nothing more is read into anything."""
    server, client = Protocol(SERVER), Protocol(CLIENT)
    big = os.urandom(frames.RECEIVE_INTO_ABOVE)
    wire = client.send_binary(big)
    assert server.receive_buffer() is None  # nothing to place yet: read as usual
    assert server.receive_data(wire[:1000]) == []
    buffer = server.receive_buffer()
    assert buffer is not None
    size = len(buffer)
    buffer[:] = wire[1000:]
    assert server.received_into(size) == [Message(big)]
    assert server.receive_buffer() is not None  # the next header's room
    events = server.receive_data(client.send_close(1000, "bye"))
    assert [(event.code, event.reason) for event in events] == [(1000, "bye")]  # type: ignore[union-attr]
    assert server.receive_buffer() is None


def test_parser_refuses_a_big_frame_over_limit_before_collecting_it() -> None:
    """RFC 6455 §10.4: the limit applies to the header of a frame that would be collected."""
    parser = FrameParser(expect_masked=True)
    head = raw_frame(Opcode.BINARY, mask=True, length=10 * frames.COLLECT_ABOVE) + bytes(100)
    parser.feed(head)
    with pytest.raises(PayloadTooBig):
        parser.next_frame(max_payload=10 * frames.COLLECT_ABOVE - 1)
    assert parser.buffered == len(head)  # nothing was set aside to collect


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_parser_short_whole_messages_obey_every_rule(masked: bool, opcode: Opcode) -> None:
    """RFC 6455 §5.2, §5.1, §10.4: short whole messages (parsed by a shorter path) are
    still split anywhere, limited by max_payload, and refused with the wrong mask."""
    payload = bytes(range(125))
    data = serialize_frame(opcode, payload, mask=masked)
    parser = FrameParser(expect_masked=masked)
    for byte in data[:-1]:
        parser.feed(bytes([byte]))
        assert parser.next_frame() is None
    parser.feed(data[-1:])
    assert parser.next_frame() == Frame(opcode, payload, True, 0)

    parser = FrameParser(expect_masked=masked)
    parser.feed(serialize_frame(opcode, b"x" * 10, mask=masked))
    with pytest.raises(PayloadTooBig):
        parser.next_frame(max_payload=9)

    parser = FrameParser(expect_masked=not masked)
    parser.feed(serialize_frame(opcode, b"x" * 10, mask=masked))
    with pytest.raises(ProtocolError, match="mask"):
        parser.next_frame()


def test_parser_returns_every_frame_of_one_chunk() -> None:
    """RFC 6455 §5.2: frames follow each other on the stream without separators."""
    parser = FrameParser(expect_masked=False)
    parser.feed(
        serialize_frame(Opcode.TEXT, b"a", mask=False, fin=False)
        + serialize_frame(Opcode.PING, b"p", mask=False)
        + serialize_frame(Opcode.CONTINUATION, b"b", mask=False)
    )
    assert parser.next_frame() == Frame(Opcode.TEXT, b"a", False, 0)
    assert parser.next_frame() == Frame(Opcode.PING, b"p", True, 0)
    assert parser.next_frame() == Frame(Opcode.CONTINUATION, b"b", True, 0)
    assert parser.next_frame() is None
    assert parser.buffered == 0


def test_parser_copies_a_buffer_the_caller_may_reuse() -> None:
    """RFC 6455 §5.2: payloads are not corrupted when the read buffer is reused."""
    parser = FrameParser(expect_masked=False)
    data = serialize_frame(Opcode.BINARY, b"hello", mask=False)
    buf = bytearray(data[:4])
    parser.feed(buf)
    buf[:] = b"\x00" * 4
    parser.feed(memoryview(bytearray(data[4:])))
    assert parser.next_frame() == Frame(Opcode.BINARY, b"hello", True, 0)


def test_parser_refuses_payload_over_limit_from_the_header() -> None:
    """RFC 6455 §10.4: a payload over the limit is refused as soon as its length is read."""
    parser = FrameParser(expect_masked=False)
    parser.feed(raw_frame(Opcode.BINARY, mask=False, length=1000)[:4])
    with pytest.raises(PayloadTooBig):
        parser.next_frame(max_payload=999)


# ---------------------------------------------------------------- masking (§5.1, §5.3)


def test_client_masks_every_frame_it_sends() -> None:
    """RFC 6455 §5.1: a client MUST mask all frames that it sends to the server."""
    client = Protocol(CLIENT)
    data = (
        client.send_text("t")
        + client.send_binary(b"b", fin=False)
        + client.send_binary(b"c")
        + client.send_ping(b"p")
        + client.send_pong(b"q")
        + client.send_close(1000)
    )
    parser = FrameParser(expect_masked=True)
    parser.feed(data)
    payloads = []
    while (frame := parser.next_frame()) is not None:
        payloads.append(frame.payload)
    assert payloads == [b"t", b"b", b"c", b"p", b"q", b"\x03\xe8"]


def test_server_never_masks_frames_it_sends() -> None:
    """RFC 6455 §5.1: a server MUST NOT mask any frames that it sends to the client."""
    server = Protocol(SERVER)
    data = (
        server.send_text("t")
        + server.send_binary(b"b")
        + server.send_ping(b"p")
        + server.send_pong(b"q")
        + server.send_close(1000)
    )
    assert [f.payload for f in sent_frames(server, data)] == [b"t", b"b", b"p", b"q", b"\x03\xe8"]


def test_client_uses_a_fresh_masking_key_for_each_frame() -> None:
    """RFC 6455 §5.3: the masking key MUST be a fresh, unpredictable value per frame."""
    client = Protocol(CLIENT)
    keys = set()
    for _ in range(600):  # crosses refills of the 256-key pool
        data = client.send_binary(b"same payload")
        key = data[2:6]
        assert apply_mask(data[6:], key) == b"same payload"
        keys.add(key)
    # Random 32-bit keys may collide by chance, but hardly ever more than once or twice.
    assert len(keys) > 590


def test_threads_encoding_at_once_never_share_a_masking_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The blocking face encodes in its callers' threads: concurrent draws from the
    shared key pool must each get their own four bytes, never the same slot twice."""
    counter = itertools.count()

    def numbered_bytes(n: int) -> bytes:  # every 4-byte slot of every batch differs
        time.sleep(0.0002)  # let the other threads in, mid-refill
        return b"".join(struct.pack(">I", next(counter)) for _ in range(n // 4))

    monkeypatch.setattr(frames.os, "urandom", numbered_bytes)
    monkeypatch.setattr(frames, "mask_keys", frames._MaskKeys())
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # force thread switches inside next()
    try:
        drawn: list[list[bytes]] = [[] for _ in range(4)]

        def draw(into: list[bytes]) -> None:
            for _ in range(20_000):
                into.append(frames.mask_keys.next())

        threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    keys = [key for into in drawn for key in into]
    assert len(keys) == 80_000
    assert len(set(keys)) == len(keys)


def test_server_fails_connection_on_unmasked_frame() -> None:
    """RFC 6455 §5.1: a server MUST close the connection on an unmasked frame (1002)."""
    server = Protocol(SERVER)
    assert_fails(server, raw_frame(Opcode.TEXT, b"hi", mask=False), ProtocolError, 1002)


def test_client_fails_connection_on_masked_frame() -> None:
    """RFC 6455 §5.1: a client MUST close the connection on a masked frame (1002)."""
    client = Protocol(CLIENT)
    assert_fails(client, raw_frame(Opcode.TEXT, b"hi", mask=True), ProtocolError, 1002)


@pytest.mark.parametrize("opcode", CONTROL_OPCODES)
def test_server_fails_connection_on_unmasked_control_frame(opcode: Opcode) -> None:
    """RFC 6455 §5.1: the masking requirement covers control frames too (1002)."""
    payload = b"\x03\xe8" if opcode is Opcode.CLOSE else b"x"
    assert_fails(Protocol(SERVER), raw_frame(opcode, payload, mask=False), ProtocolError, 1002)


# ---------------------------------------------------------------- RSV bits (§5.2)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
def test_fails_connection_on_rsv_bits_without_extension(role: Role, rsv: int) -> None:
    """RFC 6455 §5.2: nonzero RSV bits with no extension defining them MUST fail (1002)."""
    protocol = Protocol(role)
    assert_fails(protocol, peer_frame(protocol, Opcode.TEXT, b"hi", rsv=rsv), ProtocolError, 1002)


def test_accepts_rsv_bit_claimed_by_negotiated_extension() -> None:
    """RFC 6455 §5.2: RSV bits MAY be nonzero when a negotiated extension defines them."""
    server = Protocol(SERVER, extensions=[ClaimRsv1()])
    events = server.receive_data(peer_frame(server, Opcode.TEXT, b"hi", rsv=0x40))
    assert events == [Message("hi")]
    assert server.data_to_send() == b""


def test_fails_connection_on_rsv_bit_the_extension_does_not_claim() -> None:
    """RFC 6455 §5.2: an extension claims only its own RSV bits; others still fail (1002)."""
    server = Protocol(SERVER, extensions=[ClaimRsv1()])
    assert_fails(server, peer_frame(server, Opcode.TEXT, b"hi", rsv=0x20), ProtocolError, 1002)


# ---------------------------------------------------------------- opcodes (§5.2)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("opcode", RESERVED_OPCODES)
def test_fails_connection_on_reserved_opcode(role: Role, opcode: int) -> None:
    """RFC 6455 §5.2: an unknown opcode MUST fail the connection (1002)."""
    protocol = Protocol(role)
    assert_fails(protocol, peer_frame(protocol, opcode, b"x"), ProtocolError, 1002)


# ---------------------------------------------------------------- control frames (§5.5)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("opcode", CONTROL_OPCODES)
def test_fails_connection_on_control_frame_over_125_bytes(role: Role, opcode: Opcode) -> None:
    """RFC 6455 §5.5: control frames MUST have a payload length of 125 bytes or less (1002)."""
    protocol = Protocol(role)
    payload = b"\x03\xe8" + b"x" * 124 if opcode is Opcode.CLOSE else b"x" * 126
    assert_fails(protocol, peer_frame(protocol, opcode, payload), ProtocolError, 1002)


def test_fails_connection_on_control_frame_announcing_more_than_125_bytes() -> None:
    """RFC 6455 §5.5: an oversized control frame fails at its header, payload unseen (1002)."""
    server = Protocol(SERVER)
    header = raw_frame(Opcode.PING, mask=True, length=126)[:4]
    assert_fails(server, header, ProtocolError, 1002)


def test_control_frame_of_125_bytes_is_accepted() -> None:
    """RFC 6455 §5.5: a control frame payload of exactly 125 bytes is allowed."""
    server = Protocol(SERVER)
    payload = bytes(range(125))
    assert server.receive_data(peer_frame(server, Opcode.PING, payload)) == [Ping(payload)]
    assert [(f.opcode, f.payload) for f in sent_frames(server)] == [(Opcode.PONG, payload)]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("opcode", CONTROL_OPCODES)
def test_fails_connection_on_fragmented_control_frame(role: Role, opcode: Opcode) -> None:
    """RFC 6455 §5.5: control frames MUST NOT be fragmented (FIN clear fails with 1002)."""
    protocol = Protocol(role)
    payload = b"\x03\xe8" if opcode is Opcode.CLOSE else b"x"
    frame = peer_frame(protocol, opcode, payload, fin=False)
    assert_fails(protocol, frame, ProtocolError, 1002)


@pytest.mark.parametrize("role", ROLES)
def test_sending_control_frame_over_125_bytes_raises(role: Role) -> None:
    """RFC 6455 §5.5: an endpoint never sends a control frame with more than 125 bytes."""
    protocol = Protocol(role)
    with pytest.raises(ValueError, match="125"):
        protocol.send_ping(b"x" * 126)
    with pytest.raises(ValueError, match="125"):
        protocol.send_pong(b"x" * 126)
    assert len(protocol.send_ping(b"x" * 125)) == 2 + (4 if role is CLIENT else 0) + 125


# ---------------------------------------------------------------- payload length (§5.2)


@pytest.mark.parametrize("role", ROLES)
def test_fails_connection_on_64_bit_length_with_most_significant_bit_set(role: Role) -> None:
    """RFC 6455 §5.2: the most significant bit of a 64-bit length MUST be 0 (1002)."""
    protocol = Protocol(role, max_size=None)
    header = peer_frame(protocol, Opcode.BINARY, length=2**63 + 5, length_bits=64)
    assert_fails(protocol, header, ProtocolError, 1002)


def test_64_bit_length_with_top_bit_clear_is_read() -> None:
    """RFC 6455 §5.2: a 64-bit length is accepted when its top bit is 0."""
    frame = raw_frame(Opcode.BINARY, b"abc", mask=False, length_bits=64)
    assert parse_one(frame, masked=False) == Frame(Opcode.BINARY, b"abc", True, 0)


# ---------------------------------------------------------------- ping and pong (§5.5.2-3)


@pytest.mark.parametrize("role", ROLES)
def test_ping_is_answered_with_pong_carrying_the_same_payload(role: Role) -> None:
    """RFC 6455 §5.5.2-3: a ping MUST be answered by a pong with identical application data."""
    protocol = Protocol(role)
    events = protocol.receive_data(
        peer_frame(protocol, Opcode.PING, b"one") + peer_frame(protocol, Opcode.PING, b"")
    )
    assert events == [Ping(b"one"), Ping(b"")]
    frames = sent_frames(protocol)
    assert [(f.opcode, f.payload) for f in frames] == [(Opcode.PONG, b"one"), (Opcode.PONG, b"")]


@pytest.mark.parametrize("role", ROLES)
def test_unsolicited_pong_is_accepted_without_reply(role: Role) -> None:
    """RFC 6455 §5.5.3: an unsolicited pong MAY be sent and expects no response."""
    protocol = Protocol(role)
    assert protocol.receive_data(peer_frame(protocol, Opcode.PONG, b"beat")) == [Pong(b"beat")]
    assert protocol.data_to_send() == b""
    # The connection is still fully usable afterwards.
    assert protocol.receive_data(peer_frame(protocol, Opcode.BINARY, b"x")) == [Message(b"x")]


def test_sending_pong_produces_an_unsolicited_pong_frame() -> None:
    """RFC 6455 §5.5.3: a pong MAY be sent unsolicited, as a unidirectional heartbeat."""
    server = Protocol(SERVER)
    assert [(f.opcode, f.payload) for f in sent_frames(server, server.send_pong(b"hb"))] == [
        (Opcode.PONG, b"hb")
    ]


def test_masked_payload_is_unmasked_with_the_frame_key() -> None:
    """RFC 6455 §5.3: the payload is XORed with the 4-byte key, octet i with key[i % 4]."""
    key = b"\x37\xfa\x21\x3d"
    # The example of RFC 6455 §5.7: a masked "Hello" from client to server.
    data = b"\x81\x85" + key + b"\x7f\x9f\x4d\x51\x58"
    assert parse_one(data, masked=True) == Frame(Opcode.TEXT, b"Hello", True, 0)
    server = Protocol(SERVER)
    assert server.receive_data(data) == [Message("Hello")]


def test_unmasked_examples_of_the_rfc_are_parsed() -> None:
    """RFC 6455 §5.7: the unmasked single-frame and fragmented "Hello" examples."""
    client = Protocol(CLIENT)
    assert client.receive_data(b"\x81\x05\x48\x65\x6c\x6c\x6f") == [Message("Hello")]
    assert client.receive_data(b"\x01\x03\x48\x65\x6c\x80\x02\x6c\x6f") == [Message("Hello")]
    assert client.receive_data(b"\x89\x05\x48\x65\x6c\x6c\x6f") == [Ping(b"Hello")]
    assert client.data_to_send()[:2] == b"\x8a\x85"  # masked pong, as §5.7 shows
    big = struct.pack("!BBH", 0x82, 126, 256) + bytes(256)
    assert client.receive_data(big) == [Message(bytes(256))]
