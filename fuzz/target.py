"""The fuzz target for the sans-I/O core: one input, one conversation, every invariant.

``check(data)`` reads a small configuration from the first bytes of ``data`` (role,
permessage-deflate and its parameters, streaming, ``max_size``, ``max_events``, how
to split the rest into reads, an EOF at the end, a local close or fragment in the
middle), then feeds the rest to ``Protocol.receive_data`` as a peer's bytes (and,
when it pauses at ``max_events``, ``receive_buffered``). It raises
``AssertionError`` (or lets an unexpected exception through) when the core:

- raises anything but ``ProtocolError`` (or its subclasses ``InvalidUTF8`` and
  ``PayloadTooBig``) with a close code of 1002, 1007 or 1009 from ``receive_data``,
  including ``InvalidState``;
- allocates more than the bound below during one ``receive_data`` call, or holds more
  than it between calls (measured with tracemalloc when it is tracing);
- keeps more parts of a message in progress than it has bytes, or streams an empty
  fragment (what max_size can't bound);
- queues bytes in ``data_to_send()`` that the peer would not accept (they are parsed
  by a peer ``Protocol`` with the matching extension, which must never fail), or
  events of the wrong shape;
- doesn't reach CLOSED, with a close code, after end of file.

Termination is the runner's job: libFuzzer's ``-timeout`` (``fuzz_protocol.py``), or
an interval timer (``tests/core/test_fuzz.py``).

This module imports no fuzzing engine: the atheris runner and the test suite share it.
"""

from __future__ import annotations

import random
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

from trillium.core.close import Close
from trillium.core.deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from trillium.core.frames import RSV1, Frame, FrameParser, Opcode
from trillium.core.protocol import (
    CLIENT,
    SERVER,
    Event,
    Message,
    Ping,
    Pong,
    Protocol,
    Role,
    State,
)
from trillium.exceptions import InvalidState, ProtocolError

#: The max_size values the target runs with: small, so that limits are easy to reach.
MAX_SIZES = (65536, 4096, 1024, 125)
#: Documented close codes of a failed connection (RFC 6455 §7.4.1).
FAILURE_CODES = frozenset({1002, 1007, 1009})

#: Allocation allowed during one receive_data(chunk) call, at its peak, above what was
#: allocated when it started. See ``allocation_bound`` for where each term comes from.
ALLOC_PER_BYTE_OF_MAX_SIZE = 10
ALLOC_PER_BYTE_OF_INPUT = 3
ALLOC_PER_FRAME = 192
ALLOC_CONSTANT = 96 * 1024

#: The largest allocation seen beyond the input and frame terms, in bytes, for each
#: max_size, with the input that caused it: ``replay.py`` reports them.
worst_allocation: dict[int, tuple[int, bytes]] = {}


def allocation_bound(max_size: int, data: int, frames: int) -> int:
    """The most one receive_data call may allocate, given ``data`` bytes to parse (the
    new chunk and what was left over from the last call) holding ``frames`` frames.

    - ``max_size``: a payload is copied out of the read buffer, then unmasked into a
      new object (2x); decompressed, it is at most ``max_size + 1`` bytes (1x); text
      is decoded into a str, which CPython stores with 1, 2 or 4 bytes per code point:
      ASCII with one emoji takes 4 bytes per byte of UTF-8 (4x), and without
      streaming the fragments are joined into one more str. 10x covers the worst of
      these together. This is the term that must not depend on what the peer
      *announces*: a frame header claiming 2**63 bytes, or 8 KiB that inflate to
      gigabytes, stay within it.
    - ``data``: the unparsed rest of the last call is joined with the new chunk (1x);
      a compressed payload is copied with the 4 bytes of RFC 7692 §7.2.2 (1x).
    - ``frames``: each frame costs Python objects whatever its size: an event
      (``Message``, ``Ping``...), its payload object, a list slot, and for a ping the
      pong queued in reply: measured at up to ~100 bytes for a 2-byte ping.
    - the constant: zlib's inflate state and window (about 40 KiB, raw mallocs that
      tracemalloc sees), exceptions and list slack.
    """
    return (
        ALLOC_PER_BYTE_OF_MAX_SIZE * max_size
        + ALLOC_PER_BYTE_OF_INPUT * data
        + ALLOC_PER_FRAME * frames
        + ALLOC_CONSTANT
    )


class CountingParser(FrameParser):
    """The protocol's frame parser, counting the frames it returns (for the bound)."""

    __slots__ = ("frames",)

    def __init__(self, *, expect_masked: bool, allowed_rsv: int = 0) -> None:
        super().__init__(expect_masked=expect_masked, allowed_rsv=allowed_rsv)
        self.frames = 0

    def next_frame(self, max_payload: int = 2**63 - 1) -> Frame | None:
        frame = super().next_frame(max_payload)
        if frame is not None:
            self.frames += 1
        return frame


class Config:
    """What the first four bytes of an input choose."""

    __slots__ = (
        "deflate_params",
        "eof",
        "local_action",
        "local_after",
        "max_events",
        "max_size",
        "role",
        "split_seed",
        "streaming",
        "use_deflate",
    )

    HEADER = 4

    def __init__(self, head: bytes) -> None:
        head = head.ljust(self.HEADER, b"\x00")
        b0 = head[0]
        self.role: Role = SERVER if b0 & 0x01 == 0 else CLIENT
        self.use_deflate = bool(b0 & 0x02)
        self.streaming = bool(b0 & 0x04)
        self.max_size = MAX_SIZES[(b0 >> 3) & 0x03]
        self.eof = bool(b0 & 0x20)
        # Bit 6: parse at most 1 or 3 events per call (bit 7), as the connection
        # manager does when its queue is nearly full; otherwise no limit.
        self.max_events: int | None = (3 if b0 & 0x80 else 1) if b0 & 0x40 else None
        self.deflate_params = head[1]
        self.split_seed = head[2]
        self.local_action = head[3] & 0x07  # 0: none
        self.local_after = head[3] >> 3  # after this many chunks

    @staticmethod
    def encode(
        *,
        role: Role = SERVER,
        deflate: bool = False,
        streaming: bool = False,
        max_size: int = 65536,
        eof: bool = False,
        max_events: int | None = None,
        deflate_params: int = 0,
        split_seed: int = 0,
        local_action: int = 0,
        local_after: int = 0,
    ) -> bytes:
        """The four bytes that select this configuration (for seeds and regressions)."""
        b0 = (
            (0x01 if role is CLIENT else 0)
            | (0x02 if deflate else 0)
            | (0x04 if streaming else 0)
            | (MAX_SIZES.index(max_size) << 3)
            | (0x20 if eof else 0)
            | {None: 0, 1: 0x40, 3: 0xC0}[max_events]
        )
        return bytes((b0, deflate_params, split_seed, local_action | (local_after << 3)))


def negotiate(params: int) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """(server extension, client extension) negotiated from an offer chosen by ``params``.

    Both ends come from the real negotiation,
    ``ServerPerMessageDeflateFactory().negotiate([ClientPerMessageDeflateFactory().offer()])``,
    with the parameters of RFC 7692 §7.1 varied by the bits of ``params``.
    """
    client_bits: int | bool | None = (True, None, 9, 15)[params & 0x03]
    server_bits = (None, 9, 12, 15)[(params >> 2) & 0x03]
    client_factory = ClientPerMessageDeflateFactory(
        client_no_context_takeover=bool(params & 0x10),
        server_no_context_takeover=bool(params & 0x20),
        client_max_window_bits=client_bits,
        server_max_window_bits=server_bits,
        threshold=0 if params & 0x40 else 128,
    )
    server_factory = ServerPerMessageDeflateFactory(
        server_max_window_bits=None if params & 0x80 else 12,
        client_max_window_bits=None if params & 0x80 else 12,
        threshold=0 if params & 0x40 else 128,
    )
    negotiated = server_factory.negotiate([client_factory.offer()])
    assert negotiated is not None, "the server declined an offer it should accept"
    (_, answer), server_ext = negotiated
    client_ext = client_factory.accept(answer)
    return server_ext, client_ext


def make_pair(config: Config) -> tuple[Protocol, Protocol]:
    """The protocol under test and the peer that reads what it sends."""
    ours: list[PerMessageDeflate] = []
    theirs: list[PerMessageDeflate] = []
    if config.use_deflate:
        server_ext, client_ext = negotiate(config.deflate_params)
        if config.role is SERVER:
            ours, theirs = [server_ext], [client_ext]
        else:
            ours, theirs = [client_ext], [server_ext]
    peer_role = CLIENT if config.role is SERVER else SERVER
    protocol = Protocol(
        config.role, max_size=config.max_size, streaming=config.streaming, extensions=ours
    )
    original = protocol._parser
    protocol._parser = CountingParser(
        expect_masked=original.expect_masked, allowed_rsv=original.allowed_rsv
    )
    # The peer accepts anything we may send: no limit on its side.
    peer = Protocol(peer_role, max_size=None, streaming=True, extensions=theirs)
    return protocol, peer


def chunks(data: bytes, seed: int) -> Iterator[bytes]:
    """Split ``data`` into reads: whole when ``seed`` is 0, else pseudo-random sizes."""
    if seed == 0:
        if data:
            yield data
        return
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        size = rng.choice((1, 2, 3, 7, 14, 127, 1000, rng.randint(1, 4096)))
        yield data[pos : pos + size]
        pos += size


def local_action(protocol: Protocol, action: int) -> bytes:
    """Something our side does in the middle of the conversation; the bytes it sends."""
    open_before = protocol.state is State.OPEN
    try:
        if action == 1:
            return protocol.send_close(1000, "local close")
        if action == 2:
            return protocol.send_text("fragment é " * 20, fin=False)
        if action == 3:
            return protocol.send_binary(b"\x00" * 300)
        if action == 4:
            return protocol.send_ping(b"local ping")
        if action == 5:
            return protocol.send_close(1005)
        if action == 6:
            return protocol.send_close(4000, "x" * 123)
        return protocol.send_text("é" * 200)
    except InvalidState:
        # Sending is refused exactly when the connection isn't open (one local
        # action per input: no fragmented message of ours can be under way).
        assert not open_before, "InvalidState while OPEN"
        return b""


def check_events(config: Config, events: list[object]) -> None:
    for event in events:
        if isinstance(event, Message):
            assert isinstance(event.data, (str, bytes)), event
            # A streamed fragment carries data: otherwise endless empty fragments
            # make endless events, and memory that max_size doesn't bound.
            assert event.final or event.data, "an empty non-final fragment"
            if not config.streaming:
                assert event.final, "a partial message without streaming"
                size = len(event.data.encode() if isinstance(event.data, str) else event.data)
                assert size <= config.max_size, f"message of {size} bytes > max_size"
        elif isinstance(event, (Ping, Pong)):
            assert isinstance(event.payload, bytes) and len(event.payload) <= 125, event
        else:
            assert isinstance(event, Close), f"undocumented event {event!r}"


def deliver(peer: Protocol, data: bytes) -> None:
    """What we send must be what a correct peer accepts: no error, ever."""
    if not data or peer.state is State.CLOSED:
        return
    try:
        peer.receive_data(data)
    except ProtocolError as exc:  # pragma: no cover - a finding
        raise AssertionError(f"the peer refused what we sent: {exc}") from exc


def check(data: bytes) -> None:
    """Run one input; raise on any violation of the documented behaviour."""
    config = Config(data[: Config.HEADER])
    stream = data[Config.HEADER :]
    protocol, peer = make_pair(config)
    parser = protocol._parser
    assert isinstance(parser, CountingParser)
    count = 0
    for chunk in chunks(stream, config.split_seed):
        if config.local_action and count == config.local_after:
            deliver(peer, local_action(protocol, config.local_action))
        count += 1
        fed = len(chunk) + parser.buffered
        receive(config, protocol, data, fed, protocol.receive_data, chunk)
        # Paused at max_events: parse what is buffered before feeding more, as the
        # connection manager does. Each call returns an event or ends the pause.
        for _ in range(len(stream) + 1):
            if not protocol.paused:
                break
            receive(config, protocol, data, parser.buffered, protocol.receive_buffered)
        else:  # pragma: no cover - a finding
            raise AssertionError("receive_buffered() never ends the pause")
        deliver(peer, protocol.data_to_send())
    if config.local_action and count <= config.local_after:
        deliver(peer, local_action(protocol, config.local_action))
    if config.eof:
        assert protocol.receive_data(b"") == []
        assert protocol.state is State.CLOSED
        assert protocol.close_code is not None
        assert protocol.close_exception() is not None


def receive(
    config: Config,
    protocol: Protocol,
    data: bytes,
    fed: int,
    method: Callable[..., list[Event]],
    *args: bytes,
) -> None:
    """One call to receive_data (or receive_buffered), and every check around it."""
    parser = protocol._parser
    assert isinstance(parser, CountingParser)
    parser.frames = 0
    had_sent_close = protocol.close_sent is not None
    failed_before = protocol.failure is not None
    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
    try:
        events = method(*args, max_events=config.max_events)
    except ProtocolError as exc:
        assert exc.code in FAILURE_CODES, f"undocumented close code {exc.code}: {exc!r}"
        assert type(exc.code) is int
        check_events(config, exc.events)
        assert not protocol.paused
        if not had_sent_close and protocol.close_rcvd is None:
            # The failure's own close frame is queued (RFC 6455 §7.1.7) ...
            assert protocol.failure is exc, "failed without recording it"
            assert protocol.state is State.CLOSING
            assert protocol.close_sent is not None
            assert protocol.close_sent.code == exc.code
        elif protocol.close_rcvd is not None:
            # ... unless the peer's close came first: it was echoed, and that's all.
            assert protocol.state is State.CLOSED
    else:
        check_events(config, events)
        if config.max_events is not None:
            assert len(events) <= config.max_events, "more events than max_events"
        if failed_before:
            assert events == [], "events after the connection failed"
    if tracing:
        peak = tracemalloc.get_traced_memory()[1] - before
        bound = allocation_bound(config.max_size, fed, parser.frames)
        assert peak <= bound, (
            f"receive_data allocated {peak} bytes at its peak; bound {bound} (max_size="
            f"{config.max_size}, {fed} bytes to parse, {parser.frames} frames)"
        )
        beyond = peak - ALLOC_PER_BYTE_OF_INPUT * fed - ALLOC_PER_FRAME * parser.frames
        if beyond > worst_allocation.get(config.max_size, (0, b""))[0]:
            worst_allocation[config.max_size] = (beyond, data)
    # What is kept of a message in progress is bounded by its size, not by how
    # many frames it came in: at most one part per byte received.
    parts = len(protocol._in_parts) + len(protocol._in_text)
    assert parts <= max(1, protocol._in_size), f"{parts} parts for {protocol._in_size} bytes"
    # The state machine stays consistent.
    assert protocol.state in (State.OPEN, State.CLOSING, State.CLOSED)
    if protocol.close_rcvd is not None:
        assert protocol.state is State.CLOSED


# ------------------------------------------------------------------ seeds


def frame_bytes(
    opcode: int, payload: bytes, *, masked: bool, fin: bool = True, rsv: int = 0
) -> bytes:
    """A frame with a zero masking key when masked: the payload stays readable on the
    wire, so mutations of compressed data or UTF-8 are mutations of the data itself."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        header = bytes((b0, m | n))
    elif n < 65536:
        header = bytes((b0, m | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((b0, m | 127)) + n.to_bytes(8, "big")
    return header + (b"\x00\x00\x00\x00" if masked else b"") + payload


def compress(data: bytes, *, wbits: int = 15) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


def seeds() -> Iterator[bytes]:
    """Inputs that reach deep into the core, for every configuration: the corpus's start."""
    text = "Hello, trillium! é€😀 ".encode()
    big = bytes(range(256)) * 20
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb_data = bomb.compress(b"\x00" * 2**20) + bomb.flush(zlib.Z_SYNC_FLUSH)
    for role in (SERVER, CLIENT):
        masked = role is SERVER
        for deflate in (False, True):
            for max_size in MAX_SIZES[:2]:

                def f(*args: object, masked: bool = masked, **kwargs: object) -> bytes:
                    return frame_bytes(*args, masked=masked, **kwargs)  # type: ignore[arg-type]

                plain = [
                    f(Opcode.TEXT, text),
                    f(Opcode.BINARY, big[:1000]),
                    f(Opcode.TEXT, text[:5], fin=False)
                    + f(Opcode.PING, b"ping")
                    + f(Opcode.CONTINUATION, text[5:9], fin=False)
                    + f(Opcode.CONTINUATION, text[9:]),
                    f(Opcode.BINARY, big, fin=False) + f(Opcode.CONTINUATION, big),
                    f(Opcode.PONG, b"pong") + f(Opcode.CLOSE, b"\x03\xe8bye"),
                    f(Opcode.CLOSE, b""),
                    f(Opcode.TEXT, b"caf\xc3") + f(Opcode.TEXT, "\xed\xa0\x80".encode("latin-1")),
                ]
                compressed: list[bytes] = []
                if deflate:
                    compressed = [
                        f(Opcode.TEXT, compress(text * 10), rsv=RSV1),
                        f(Opcode.BINARY, compress(big), rsv=RSV1)
                        + f(Opcode.BINARY, compress(big), rsv=RSV1),
                        f(Opcode.TEXT, compress(text)[:6], rsv=RSV1, fin=False)
                        + f(Opcode.CONTINUATION, compress(text)[6:])
                        + f(Opcode.CLOSE, b"\x03\xe9"),
                        f(Opcode.BINARY, bomb_data[:4000], rsv=RSV1),
                        f(Opcode.TEXT, zlib.compress(text)[2:], rsv=RSV1),  # BFINAL + adler
                    ]
                for i, stream in enumerate(plain + compressed):
                    for eof, split in ((False, 0), (True, 1 + i)):
                        head = Config.encode(
                            role=role,
                            deflate=deflate,
                            max_size=max_size,
                            eof=eof,
                            split_seed=split,
                            streaming=bool(i % 2),
                            local_action=i % 8,
                            local_after=i % 3,
                            max_events=(None, 1, 3)[(i + split) % 3],
                        )
                        yield head + stream
