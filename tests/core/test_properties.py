"""Properties of the framing core, checked with hypothesis on generated inputs."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trillium.core.close import _WIRE_CODES, Close
from trillium.core.frames import Frame, FrameParser, Opcode, serialize_frame
from trillium.core.mask import ACCELERATED, apply_mask, py_apply_mask
from trillium.core.protocol import CLIENT, SERVER, Protocol, Role, State
from trillium.core.utf8 import Utf8Decoder
from trillium.exceptions import InvalidUTF8, ProtocolError

from ._helpers import close_of, raw_frame, sent_frames

FAST = settings(max_examples=150, deadline=None)
THOROUGH = settings(max_examples=400, deadline=None)

VALID_CODES = sorted(_WIRE_CODES) + list(range(3000, 5000))


def sized_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """Payloads of any size up to max_size, cheap to generate even when large."""
    sizes = st.one_of(
        st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, max_size]),
        st.integers(0, max_size),
    ).filter(lambda n: n <= max_size)
    return st.one_of(
        st.binary(max_size=min(max_size, 200)),
        st.builds(lambda n, seed: random.Random(seed).randbytes(n), sizes, st.integers(0, 2**32)),
    )


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    opcode = draw(st.sampled_from(list(Opcode)))
    if opcode.is_control:
        # Control frames never carry RSV bits, whatever the extensions (RFC 7692 §6.1).
        return Frame(opcode, draw(st.binary(max_size=125)), True, 0)
    rsv = draw(st.sampled_from([0, 0x10, 0x20, 0x40, 0x70]))
    return Frame(opcode, draw(sized_bytes(70000)), draw(st.booleans()), rsv)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def cuts_for(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=12)


# ---------------------------------------------------------------- frames


@FAST
@given(frame=frames(), masked=st.booleans())
def test_serialize_then_parse_is_the_identity(frame: Frame, masked: bool) -> None:
    """RFC 6455 §5.2: any frame survives encoding and decoding, masked or not."""
    data = serialize_frame(frame.opcode, frame.payload, mask=masked, fin=frame.fin, rsv=frame.rsv)
    n = len(frame.payload)
    extended = 0 if n < 126 else 2 if n < 65536 else 8
    assert len(data) == 2 + extended + (4 if masked else 0) + n
    parser = FrameParser(expect_masked=masked, allowed_rsv=0x70)
    parser.feed(data)
    assert parser.next_frame() == frame
    assert parser.buffered == 0
    assert parser.next_frame() is None


# ---------------------------------------------------------------- chunking


@st.composite
def client_streams(draw: st.DrawFn) -> bytes:
    """Bytes a client may send: messages split at any byte, control frames in between."""
    out = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["text", "binary", "ping", "pong"]))
        if kind in ("ping", "pong"):
            opcode = Opcode.PING if kind == "ping" else Opcode.PONG
            out.append(serialize_frame(opcode, draw(st.binary(max_size=125)), mask=True))
            continue
        if kind == "text":
            opcode, payload = Opcode.TEXT, draw(st.text(max_size=30)).encode()
        else:
            opcode, payload = Opcode.BINARY, draw(st.binary(max_size=30))
        pieces = split(payload, draw(st.lists(st.integers(0, len(payload)), max_size=4)))
        pieces = pieces or [b""]
        for i, piece in enumerate(pieces):
            fin = i == len(pieces) - 1
            out.append(serialize_frame(opcode if i == 0 else 0, piece, mask=True, fin=fin))
            if not fin and draw(st.booleans()):
                out.append(serialize_frame(Opcode.PING, b"mid", mask=True))
    ending = draw(st.sampled_from(["none", "close", "close+more", "garbage"]))
    if ending.startswith("close"):
        out.append(serialize_frame(Opcode.CLOSE, b"\x03\xe8bye", mask=True))
    if ending in ("close+more", "garbage"):
        out.append(draw(st.binary(min_size=1, max_size=20)))
    return b"".join(out)


def feed(protocol: Protocol, chunks: list[bytes]) -> tuple[list[object], object, bytes]:
    """Feed chunks until an error; return the events, the error (type, code), and replies."""
    events: list[object] = []
    for chunk in chunks:
        try:
            events.extend(protocol.receive_data(chunk))
        except ProtocolError as exc:
            events.extend(exc.events)
            return events, (type(exc), exc.code), protocol.data_to_send()
    return events, None, protocol.data_to_send()


@THOROUGH
@given(
    stream=client_streams(),
    max_size=st.sampled_from([None, 2**20, 8]),
    streaming=st.booleans(),
    data=st.data(),
)
def test_any_chunking_yields_the_same_events(
    stream: bytes, max_size: int | None, streaming: bool, data: st.DataObject
) -> None:
    """RFC 6455 §5.2: TCP may split the byte stream anywhere; the outcome never changes."""
    whole = feed(Protocol(SERVER, max_size=max_size, streaming=streaming), [stream])
    chunks = split(stream, data.draw(cuts_for(stream)))
    assert feed(Protocol(SERVER, max_size=max_size, streaming=streaming), chunks) == whole
    one_by_one = [stream[i : i + 1] for i in range(len(stream))]
    assert feed(Protocol(SERVER, max_size=max_size, streaming=streaming), one_by_one) == whole


def feed_paused(
    protocol: Protocol, chunks: list[bytes], max_events: int
) -> tuple[list[object], object, bytes]:
    """``feed``, parsing at most ``max_events`` per call as the connection manager does."""
    events: list[object] = []
    for chunk in chunks:
        try:
            batch = protocol.receive_data(chunk, max_events=max_events)
            assert len(batch) <= max_events
            events.extend(batch)
            while protocol.paused:
                batch = protocol.receive_buffered(max_events=max_events)
                assert batch or not protocol.paused, "a pause that makes no progress"
                assert len(batch) <= max_events
                events.extend(batch)
        except ProtocolError as exc:
            events.extend(exc.events)
            return events, (type(exc), exc.code), protocol.data_to_send()
    return events, None, protocol.data_to_send()


@THOROUGH
@given(
    stream=client_streams(),
    max_size=st.sampled_from([None, 8]),
    streaming=st.booleans(),
    max_events=st.integers(1, 4),
    data=st.data(),
)
def test_max_events_pauses_without_changing_the_events(
    stream: bytes, max_size: int | None, streaming: bool, max_events: int, data: st.DataObject
) -> None:
    """Parsing a few events at a time (the reader's bound on its queue) changes nothing
    but when they come: same events, same failure, same replies."""
    whole = feed(Protocol(SERVER, max_size=max_size, streaming=streaming), [stream])
    chunks = split(stream, data.draw(cuts_for(stream)))
    paused = feed_paused(
        Protocol(SERVER, max_size=max_size, streaming=streaming), chunks, max_events
    )
    assert paused == whole


def test_max_events_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Protocol(SERVER).receive_data(b"\x81", max_events=0)


# ---------------------------------------------------------------- robustness


@st.composite
def hostile_streams(draw: st.DrawFn, role: Role) -> bytes:
    """Frame-shaped bytes with every field drawn freely, mixed with raw garbage."""
    pieces = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 4)) == 0:
            pieces.append(draw(st.binary(max_size=30)))
            continue
        opcode = draw(st.one_of(st.sampled_from(list(Opcode)), st.integers(0, 15)))
        if opcode == Opcode.CLOSE and draw(st.booleans()):
            payload = draw(st.integers(0, 5100)).to_bytes(2, "big") + draw(st.binary(max_size=8))
        elif opcode == Opcode.TEXT:
            payload = draw(st.one_of(st.text(max_size=10).map(str.encode), st.binary(max_size=10)))
        else:
            payload = draw(st.binary(max_size=130))
        # Mostly honest lengths; sometimes a lie, or a needlessly long encoding.
        length_bits = draw(st.sampled_from([None, None, None, 7, 16, 64]))
        length = None
        if length_bits is not None:
            limit = {7: 125, 16: 2**16 - 1, 64: 2**64 - 1}[length_bits]
            length = draw(st.one_of(st.none(), st.integers(0, limit)))
            if length is None and len(payload) > limit:
                length_bits = None
        pieces.append(
            raw_frame(
                opcode,
                payload,
                mask=draw(st.booleans()) if draw(st.integers(0, 5)) == 0 else role is SERVER,
                fin=draw(st.booleans()),
                rsv=draw(st.sampled_from([0, 0, 0, 0x40, 0x10])),
                length=length,
                length_bits=length_bits,
            )
        )
    return b"".join(pieces)


@pytest.mark.parametrize("role", [SERVER, CLIENT])
@THOROUGH
@given(data=st.data(), max_size=st.sampled_from([None, 2**20, 20]), eof=st.booleans())
def test_arbitrary_bytes_only_ever_raise_protocol_error(
    role: Role, data: st.DataObject, max_size: int | None, eof: bool
) -> None:
    """RFC 6455 §7.1.7: whatever the peer sends, the endpoint fails with 1002, 1007 or 1009."""
    stream = data.draw(hostile_streams(role))
    chunks = split(stream, data.draw(cuts_for(stream)))
    protocol = Protocol(role, max_size=max_size)
    for chunk in [*chunks, b""] if eof else chunks:
        had_sent_close = protocol.close_sent is not None
        try:
            protocol.receive_data(chunk)
        except ProtocolError as exc:
            assert exc.code in {1002, 1007, 1009}
            replies = sent_frames(protocol)
            if not had_sent_close and protocol.close_rcvd is None:
                # The failure's own close frame; otherwise the echo was the one close sent.
                assert protocol.failure is exc
                assert close_of(replies[-1]).code == exc.code
                assert protocol.state is State.CLOSING
        else:
            sent_frames(protocol)  # whatever was queued is well-formed
    if eof:
        assert protocol.state is State.CLOSED
        assert protocol.close_code is not None


# ---------------------------------------------------------------- UTF-8


def is_valid_prefix(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data" and exc.end == len(data)
    return True


TRICKY = [b"\xed\xa0", b"\xed\x9f", b"\xf4\x90", b"\xf4\x8f", b"\xe0\xa0", b"\xe0\x9f", b"\xc2"]
utf8ish = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.lists(
        st.one_of(
            st.text(max_size=5).map(str.encode),
            st.binary(max_size=3),
            st.sampled_from(TRICKY),
            st.sampled_from([b"\x80", b"\xbf", b"\xa0\x80"]),
        ),
        max_size=8,
    ).map(b"".join),
)


@THOROUGH
@given(data=st.data(), raw=utf8ish)
def test_utf8_decoder_agrees_with_python_on_any_split(data: st.DataObject, raw: bytes) -> None:
    """RFC 6455 §8.1: valid iff Python decodes it, same text, and errors as early as possible."""
    bounds = [0, *sorted(set(data.draw(cuts_for(raw)))), len(raw)]
    bounds = sorted(set(bounds)) if len(raw) else [0, 0]
    pieces = list(itertools.pairwise(bounds))
    decoder = Utf8Decoder()
    text, failed_at = [], None
    for i, (a, b) in enumerate(pieces):
        try:
            text.append(decoder.decode(raw[a:b], final=i == len(pieces) - 1))
        except InvalidUTF8 as exc:
            assert exc.code == 1007
            failed_at = i
            break
    try:
        expected: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        expected = None
    if expected is not None:
        assert failed_at is None
        assert "".join(text) == expected
    else:
        # The first piece after which no continuation could make the bytes valid.
        first_bad = next(
            (i for i, (_, b) in enumerate(pieces[:-1]) if not is_valid_prefix(raw[:b])),
            len(pieces) - 1,
        )
        assert failed_at == first_bad


# ---------------------------------------------------------------- masking


@pytest.mark.skipif(not ACCELERATED, reason="C accelerator not built")
@FAST
@given(payload=sized_bytes(5000), key=st.binary(min_size=4, max_size=4), offset=st.integers(0, 7))
def test_py_apply_mask_agrees_with_the_accelerator(payload: bytes, key: bytes, offset: int) -> None:
    """RFC 6455 §5.3: both masking implementations compute the same XOR."""
    view = memoryview(bytes(offset) + payload)[offset:]
    assert py_apply_mask(view, key) == apply_mask(view, key)
    assert apply_mask(apply_mask(payload, key), key) == payload


# ---------------------------------------------------------------- close frames


reasons = st.text(max_size=123).filter(lambda r: len(r.encode()) <= 123)


@FAST
@given(code=st.sampled_from(VALID_CODES), reason=reasons)
def test_close_payload_round_trips(code: int, reason: str) -> None:
    """RFC 6455 §5.5.1: a valid code and a reason of at most 123 bytes survive the wire."""
    assert Close.parse(Close(code, reason).serialize()) == Close(code, reason)
    client, server = Protocol(CLIENT), Protocol(SERVER)
    assert server.receive_data(client.send_close(code, reason)) == [Close(code, reason)]
    assert client.receive_data(server.data_to_send()) == [Close(code, reason)]


@FAST
@given(code=st.integers(0, 65535).filter(lambda c: c not in VALID_CODES), reason=reasons)
def test_invalid_close_codes_are_neither_sent_nor_accepted(code: int, reason: str) -> None:
    """RFC 6455 §7.4: codes outside the valid ranges never cross the wire."""
    with pytest.raises(ProtocolError) as info:
        Close.parse(code.to_bytes(2, "big") + reason.encode())
    assert info.value.code == 1002
    if code == 1005 and not reason:
        assert Close(code, reason).serialize() == b""  # "no code": an empty close body
    else:
        with pytest.raises(ValueError):
            Close(code, reason).serialize()
