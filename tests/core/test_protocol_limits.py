"""Size limits (RFC 6455 §10.4, close code 1009) and what a failure reports."""

from __future__ import annotations

import pytest

from trillium.core.extensions import Extension
from trillium.core.frames import Frame, Opcode
from trillium.core.protocol import CLIENT, SERVER, Close, Message, Ping, Pong, Protocol, Role
from trillium.exceptions import InvalidUTF8, PayloadTooBig, ProtocolError

from ._helpers import assert_fails, close_of, peer_frame, sent_frames

ROLES = [CLIENT, SERVER]
MiB = 2**20


# ---------------------------------------------------------------- max_size (§10.4)


def test_default_max_size_is_one_mebibyte() -> None:
    """RFC 6455 §10.4: an endpoint limits message size; trillium's default is 2**20 bytes."""
    assert Protocol(SERVER).max_size == MiB


@pytest.mark.parametrize("role", ROLES)
def test_message_of_exactly_max_size_is_accepted(role: Role) -> None:
    """RFC 6455 §10.4: the limit is inclusive."""
    protocol = Protocol(role)
    payload = b"x" * MiB
    assert protocol.receive_data(peer_frame(protocol, Opcode.BINARY, payload)) == [Message(payload)]


@pytest.mark.parametrize("role", ROLES)
def test_fails_connection_on_message_over_max_size(role: Role) -> None:
    """RFC 6455 §10.4, §7.4.1: a message too big to process fails with 1009."""
    protocol = Protocol(role)
    frame = peer_frame(protocol, Opcode.BINARY, b"x" * (MiB + 1))
    assert_fails(protocol, frame, PayloadTooBig, 1009)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("length_bits", [16, 64])
def test_fails_connection_on_too_big_frame_header_before_the_payload(
    role: Role, length_bits: int
) -> None:
    """RFC 6455 §10.4: a frame announcing too big a payload fails before the payload arrives."""
    protocol = Protocol(role, max_size=1000)
    frame = peer_frame(protocol, Opcode.TEXT, length=1001, length_bits=length_bits)
    header = frame[: 2 + length_bits // 8]  # not even the masking key is needed
    assert_fails(protocol, header, PayloadTooBig, 1009)


def test_fails_connection_on_huge_announced_length_without_buffering() -> None:
    """RFC 6455 §10.4: a 2**62-byte announcement fails at once, with the default limit."""
    server = Protocol(SERVER)
    header = peer_frame(server, Opcode.BINARY, length=2**62, length_bits=64)
    assert_fails(server, header, PayloadTooBig, 1009)


def test_fails_connection_on_fragmented_message_over_max_size() -> None:
    """RFC 6455 §10.4: the limit applies to the whole message, summed over its fragments."""
    server = Protocol(SERVER, max_size=10)
    assert server.receive_data(peer_frame(server, Opcode.TEXT, b"12345", fin=False)) == []
    assert server.receive_data(peer_frame(server, Opcode.CONTINUATION, b"6789", fin=False)) == []
    assert_fails(server, peer_frame(server, Opcode.CONTINUATION, b"ab"), PayloadTooBig, 1009)


def test_fragment_crossing_max_size_fails_at_its_header() -> None:
    """RFC 6455 §10.4: the fragment that would cross the limit fails before its payload."""
    server = Protocol(SERVER, max_size=10)
    server.receive_data(peer_frame(server, Opcode.BINARY, b"x" * 8, fin=False))
    header = peer_frame(server, Opcode.CONTINUATION, b"abc")[:2]
    assert_fails(server, header, PayloadTooBig, 1009)


def test_fragmented_message_of_exactly_max_size_is_accepted() -> None:
    """RFC 6455 §10.4: fragments adding up to the limit exactly are fine."""
    server = Protocol(SERVER, max_size=10)
    data = peer_frame(server, Opcode.BINARY, b"x" * 6, fin=False) + peer_frame(
        server, Opcode.CONTINUATION, b"y" * 4
    )
    # The size count restarts with each message.
    data += data
    assert server.receive_data(data) == [Message(b"x" * 6 + b"y" * 4)] * 2


def test_control_frames_do_not_count_towards_max_size() -> None:
    """RFC 6455 §5.4: control frames between fragments are not part of the message."""
    server = Protocol(SERVER, max_size=10)
    data = (
        peer_frame(server, Opcode.TEXT, b"x" * 10, fin=False)
        + peer_frame(server, Opcode.PING, b"ping")
        + peer_frame(server, Opcode.PONG, b"pong")
        + peer_frame(server, Opcode.CONTINUATION, b"")
    )
    assert server.receive_data(data) == [Ping(b"ping"), Pong(b"pong"), Message("x" * 10)]


def test_close_frame_is_read_whatever_max_size() -> None:
    """RFC 6455 §5.5.1: a close frame (at most 125 bytes) is never refused as too big."""
    server = Protocol(SERVER, max_size=1)
    assert server.receive_data(peer_frame(server, Opcode.CLOSE, b"\x03\xe8bye")) == [
        Close(1000, "bye")
    ]
    assert close_of(sent_frames(server)[0]) == Close(1000, "bye")


class Doubler(Extension):
    """An extension whose decoded frames are twice as long as on the wire (like inflate)."""

    name = "x-doubler"
    rsv_bits = 0x40

    def decode(self, frame: Frame, *, max_size: int | None) -> Frame:
        return Frame(frame.opcode, frame.payload * 2, frame.fin, 0)

    def encode(self, frame: Frame) -> Frame:
        return frame


def test_fails_connection_when_extension_output_exceeds_max_size() -> None:
    """RFC 6455 §10.4, RFC 7692 §8.1: the limit applies to the decoded message, not the wire."""
    server = Protocol(SERVER, max_size=10, extensions=[Doubler()])
    assert server.receive_data(peer_frame(server, Opcode.BINARY, b"abcde", rsv=0x40)) == [
        Message(b"abcdeabcde")
    ]
    data = peer_frame(server, Opcode.BINARY, b"abcd", fin=False, rsv=0x40) + peer_frame(
        server, Opcode.CONTINUATION, b"de"
    )
    assert_fails(server, data, PayloadTooBig, 1009)


def test_max_size_none_means_unlimited() -> None:
    """RFC 6455 §10.4: with max_size=None, no message is too big."""
    server = Protocol(SERVER, max_size=None)
    big = b"z" * (MiB + 1)
    data = peer_frame(server, Opcode.BINARY, big)
    data += peer_frame(server, Opcode.BINARY, big, fin=False)
    data += peer_frame(server, Opcode.CONTINUATION, big)
    assert server.receive_data(data) == [Message(big), Message(big + big)]


def test_streaming_still_enforces_max_size_per_message() -> None:
    """RFC 6455 §10.4: fragments delivered one by one still count towards their message."""
    server = Protocol(SERVER, max_size=4, streaming=True)
    data = peer_frame(server, Opcode.BINARY, b"ab", fin=False) + peer_frame(
        server, Opcode.CONTINUATION, b"cde"
    )
    exc = assert_fails(server, data, PayloadTooBig, 1009)
    assert exc.events == [Message(b"ab", False)]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
def test_endless_empty_fragments_keep_nothing(streaming: bool, opcode: Opcode) -> None:
    """Empty continuation frames count nothing against max_size: they must cost nothing
    either (a regression found by fuzz/: they grew the list of parts, and streamed an
    empty event each, without bound)."""
    server = Protocol(SERVER, max_size=16, streaming=streaming)
    empty = peer_frame(server, Opcode.CONTINUATION, b"", fin=False)
    events = server.receive_data(peer_frame(server, opcode, b"", fin=False) + empty * 10_000)
    assert events == []
    assert server._in_parts == [] and server._in_text == []
    # The message itself is intact, and typed by its first frame.
    data = b"ok" if opcode is Opcode.BINARY else "ok"
    last = server.receive_data(peer_frame(server, Opcode.CONTINUATION, b"ok"))
    assert last == [Message(data, True)]


def test_a_streamed_fragment_holding_half_a_character_waits_for_the_rest() -> None:
    server = Protocol(SERVER, streaming=True)
    start = peer_frame(server, Opcode.TEXT, "é".encode()[:1], fin=False)
    assert server.receive_data(start) == []
    end = peer_frame(server, Opcode.CONTINUATION, "é".encode()[1:])
    assert server.receive_data(end) == [Message("é", True)]


# ---------------------------------------------------------------- what a failure reports


def test_protocol_error_carries_events_parsed_before_the_violation() -> None:
    """RFC 6455 §7.1.7: what the peer sent correctly before failing is not lost."""
    server = Protocol(SERVER)
    data = (
        peer_frame(server, Opcode.TEXT, b"one")
        + peer_frame(server, Opcode.PING, b"p")
        + peer_frame(server, Opcode.BINARY, b"two")
        + peer_frame(server, 0xB, b"bad")
        + peer_frame(server, Opcode.TEXT, b"never seen")
    )
    exc = assert_fails(server, data, ProtocolError, 1002)
    assert exc.events == [Message("one"), Ping(b"p"), Message(b"two")]


def test_protocol_error_events_are_empty_when_the_first_frame_is_bad() -> None:
    """RFC 6455 §7.1.7: events from earlier reads are not repeated in the exception."""
    server = Protocol(SERVER)
    assert server.receive_data(peer_frame(server, Opcode.TEXT, b"ok")) == [Message("ok")]
    exc = assert_fails(server, peer_frame(server, Opcode.TEXT, b"\xff"), InvalidUTF8, 1007)
    assert exc.events == []
