"""Fragmentation (RFC 6455 §5.4), UTF-8 in text messages (§5.6, §8.1) and streaming delivery."""

from __future__ import annotations

import pytest

from trillium.core.close import Close
from trillium.core.frames import Opcode
from trillium.core.protocol import CLIENT, SERVER, Message, Ping, Pong, Protocol, Role, State
from trillium.exceptions import InvalidState, InvalidUTF8, ProtocolError

from ._helpers import assert_fails, peer_frame, sent_frames

ROLES = [CLIENT, SERVER]
TEXT, BINARY, CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION


def fragments(receiver: Protocol, opcode: Opcode, *parts: bytes) -> bytes:
    """A message split into one frame per part, as the peer of ``receiver`` sends it."""
    frames = []
    for i, part in enumerate(parts):
        frames.append(
            peer_frame(receiver, opcode if i == 0 else CONT, part, fin=i == len(parts) - 1)
        )
    return b"".join(frames)


# ---------------------------------------------------------------- reassembly (§5.4)


@pytest.mark.parametrize("role", ROLES)
def test_fragmented_text_message_is_delivered_whole(role: Role) -> None:
    """RFC 6455 §5.4: fragments are reassembled into one message, in order."""
    protocol = Protocol(role)
    data = fragments(protocol, TEXT, b"Hel", b"", b"lo ", "wörld".encode())
    assert protocol.receive_data(data) == [Message("Hello wörld")]


@pytest.mark.parametrize("role", ROLES)
def test_fragmented_binary_message_is_delivered_whole(role: Role) -> None:
    """RFC 6455 §5.4: fragments are reassembled into one message, in order."""
    protocol = Protocol(role)
    parts = [bytes([i]) * i for i in range(1, 30)]
    assert protocol.receive_data(fragments(protocol, BINARY, *parts)) == [Message(b"".join(parts))]


def test_fragments_arriving_in_separate_reads_are_delivered_at_the_last() -> None:
    """RFC 6455 §5.4: a fragmented message is complete only with its FIN frame."""
    server = Protocol(SERVER)
    assert server.receive_data(peer_frame(server, TEXT, b"a", fin=False)) == []
    assert server.receive_data(peer_frame(server, CONT, b"b", fin=False)) == []
    assert server.receive_data(peer_frame(server, CONT, b"c")) == [Message("abc")]
    # The next message starts afresh.
    assert server.receive_data(peer_frame(server, BINARY, b"d")) == [Message(b"d")]


@pytest.mark.parametrize("role", ROLES)
def test_control_frames_may_be_interleaved_between_fragments(role: Role) -> None:
    """RFC 6455 §5.4: control frames MAY be injected in the middle of a fragmented message."""
    protocol = Protocol(role)
    data = (
        peer_frame(protocol, TEXT, b"frag", fin=False)
        + peer_frame(protocol, Opcode.PING, b"p1")
        + peer_frame(protocol, CONT, b"men", fin=False)
        + peer_frame(protocol, Opcode.PONG, b"p2")
        + peer_frame(protocol, CONT, b"ted")
    )
    assert protocol.receive_data(data) == [Ping(b"p1"), Pong(b"p2"), Message("fragmented")]
    assert [(f.opcode, f.payload) for f in sent_frames(protocol)] == [(Opcode.PONG, b"p1")]


def test_close_frame_may_arrive_between_fragments() -> None:
    """RFC 6455 §5.4: a close frame MAY be injected in the middle of a fragmented message."""
    server = Protocol(SERVER)
    data = peer_frame(server, TEXT, b"part", fin=False) + peer_frame(
        server, Opcode.CLOSE, b"\x03\xe8"
    )
    assert server.receive_data(data) == [Close(1000)]
    assert server.state is State.CLOSED
    assert [Close.parse(f.payload) for f in sent_frames(server)] == [Close(1000)]


@pytest.mark.parametrize("role", ROLES)
def test_fails_connection_on_continuation_without_a_message_to_continue(role: Role) -> None:
    """RFC 6455 §5.4: a continuation frame with no message started MUST fail (1002)."""
    protocol = Protocol(role)
    assert_fails(protocol, peer_frame(protocol, CONT, b"x"), ProtocolError, 1002)


def test_fails_connection_on_continuation_after_the_final_fragment() -> None:
    """RFC 6455 §5.4: after a FIN frame, a continuation has nothing to continue (1002)."""
    server = Protocol(SERVER)
    data = fragments(server, BINARY, b"a", b"b") + peer_frame(server, CONT, b"c", fin=False)
    exc = assert_fails(server, data, ProtocolError, 1002)
    assert exc.events == [Message(b"ab")]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("first", "second"), [(TEXT, TEXT), (TEXT, BINARY), (BINARY, TEXT)])
def test_fails_connection_on_new_data_frame_inside_fragmented_message(
    role: Role, first: Opcode, second: Opcode
) -> None:
    """RFC 6455 §5.4: fragments of different messages MUST NOT be interleaved (1002)."""
    protocol = Protocol(role)
    data = peer_frame(protocol, first, b"a", fin=False) + peer_frame(protocol, second, b"b")
    assert_fails(protocol, data, ProtocolError, 1002)


# ---------------------------------------------------------------- sending fragments (§5.4)


@pytest.mark.parametrize("role", ROLES)
def test_sent_fragments_use_continuation_opcode_and_fin_on_the_last(role: Role) -> None:
    """RFC 6455 §5.4: the first fragment has the opcode, the rest are continuations."""
    protocol = Protocol(role)
    data = (
        protocol.send_text("a", fin=False)
        + protocol.send_text("b", fin=False)
        + protocol.send_text("c")
        + protocol.send_binary(b"d", fin=False)
        + protocol.send_binary(b"e")
    )
    frames = [(f.opcode, f.payload, f.fin) for f in sent_frames(protocol, data)]
    assert frames == [
        (TEXT, b"a", False),
        (CONT, b"b", False),
        (CONT, b"c", True),
        (BINARY, b"d", False),
        (CONT, b"e", True),
    ]


def test_sender_cannot_interleave_fragments_of_different_messages() -> None:
    """RFC 6455 §5.4: fragments of one message MUST NOT be interleaved with another's."""
    client = Protocol(CLIENT)
    data = client.send_text("a", fin=False)
    with pytest.raises(InvalidState, match="in progress"):
        client.send_binary(b"b")
    # The refused fragment left no trace: the text message can still be finished.
    data += client.send_text("c")
    assert Protocol(SERVER).receive_data(data) == [Message("ac")]


def test_can_send_message_is_false_while_a_fragmented_message_is_in_progress() -> None:
    """RFC 6455 §5.4: a new message may start only once the previous one is finished."""
    client = Protocol(CLIENT)
    assert client.can_send_message()
    client.send_binary(b"a", fin=False)
    assert not client.can_send_message()
    client.send_binary(b"b")
    assert client.can_send_message()
    client.send_close()
    assert not client.can_send_message()


def test_sender_may_send_control_frames_between_fragments() -> None:
    """RFC 6455 §5.4: an endpoint MAY inject control frames between fragments it sends."""
    client = Protocol(CLIENT)
    server = Protocol(SERVER)
    data = (
        client.send_binary(b"a", fin=False)
        + client.send_ping(b"p")
        + client.send_binary(b"b")
        + client.send_pong(b"q")
    )
    assert server.receive_data(data) == [Ping(b"p"), Message(b"ab"), Pong(b"q")]


# ---------------------------------------------------------------- UTF-8 (§5.6, §8.1)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    "payload",
    [b"\xff", b"abc\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"caf\xc3"],
)
def test_fails_connection_on_text_message_with_invalid_utf8(role: Role, payload: bytes) -> None:
    """RFC 6455 §8.1: a text message that is not valid UTF-8 MUST fail the connection (1007)."""
    protocol = Protocol(role)
    assert_fails(protocol, peer_frame(protocol, TEXT, payload), InvalidUTF8, 1007)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("bad", [b"ok\xff", b"ok\xed\xa0", b"ok\xf8", b"\xe0\x80"])
def test_invalid_utf8_fails_as_soon_as_visible_mid_fragmented_message(
    streaming: bool, bad: bytes
) -> None:
    """RFC 6455 §8.1: invalid UTF-8 fails (1007) at the fragment that shows it, before FIN."""
    server = Protocol(SERVER, streaming=streaming)
    assert server.receive_data(peer_frame(server, TEXT, b"start ", fin=False)) == (
        [Message("start ", False)] if streaming else []
    )
    # The message is not finished: no FIN has been seen, yet the byte is impossible.
    assert_fails(server, peer_frame(server, CONT, bad, fin=False), InvalidUTF8, 1007)


def test_encoded_surrogate_fails_before_its_third_byte_arrives() -> None:
    """RFC 6455 §8.1: ED A0 can only start a surrogate, which UTF-8 forbids (1007)."""
    server = Protocol(SERVER)
    server.receive_data(peer_frame(server, TEXT, b"\xed", fin=False))
    assert_fails(server, peer_frame(server, CONT, b"\xa0", fin=False), InvalidUTF8, 1007)


def test_code_point_split_across_fragments_is_accepted() -> None:
    """RFC 6455 §5.6: a code point may straddle fragments; only the whole message is UTF-8."""
    server = Protocol(SERVER)
    data = fragments(server, TEXT, b"\xf0", b"\x9f", b"\x98", b"\x80 \xed", b"\x9f\xbf")
    assert server.receive_data(data) == [Message("\U0001f600 \ud7ff")]


def test_text_message_ending_inside_a_code_point_fails_at_its_end() -> None:
    """RFC 6455 §8.1: a text message cut inside a code point fails (1007) at its final frame."""
    server = Protocol(SERVER)
    assert server.receive_data(peer_frame(server, TEXT, b"caf\xc3", fin=False)) == []
    assert server.data_to_send() == b""
    assert_fails(server, peer_frame(server, CONT, b""), InvalidUTF8, 1007)


def test_invalid_utf8_in_binary_message_is_accepted() -> None:
    """RFC 6455 §5.6: binary data is opaque; only text frames must be UTF-8."""
    server = Protocol(SERVER)
    assert server.receive_data(fragments(server, BINARY, b"\xff", b"\xed\xa0")) == [
        Message(b"\xff\xed\xa0")
    ]


def test_utf8_state_is_reset_between_messages() -> None:
    """RFC 6455 §8.1: each text message is validated on its own."""
    server = Protocol(SERVER)
    data = fragments(server, TEXT, b"a", "é".encode()) + fragments(server, TEXT, b"b", b"c")
    assert server.receive_data(data) == [Message("aé"), Message("bc")]


# ---------------------------------------------------------------- streaming delivery


def test_streaming_delivers_each_fragment_with_its_final_flag() -> None:
    """RFC 6455 §5.4: with streaming=True each fragment is delivered as it arrives."""
    server = Protocol(SERVER, streaming=True)
    assert server.receive_data(peer_frame(server, BINARY, b"a", fin=False)) == [
        Message(b"a", False)
    ]
    data = peer_frame(server, CONT, b"b", fin=False) + peer_frame(server, CONT, b"c")
    assert server.receive_data(data) == [Message(b"b", False), Message(b"c", True)]
    assert server.receive_data(peer_frame(server, BINARY, b"whole")) == [Message(b"whole", True)]


def test_streaming_text_fragments_split_code_points_at_boundaries() -> None:
    """RFC 6455 §5.6: streamed text fragments are decoded incrementally, never mid-character."""
    server = Protocol(SERVER, streaming=True)
    data = fragments(server, TEXT, b"caf\xc3", b"\xa9!", "ü".encode())
    assert server.receive_data(data) == [
        Message("caf", False),
        Message("é!", False),
        Message("ü", True),
    ]
