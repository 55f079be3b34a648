"""The close frame and the closing handshake (RFC 6455 §5.5.1, §7)."""

from __future__ import annotations

import pytest

from trillium.core.close import Close, CloseCode
from trillium.core.frames import Opcode
from trillium.core.protocol import CLIENT, SERVER, Message, Ping, Protocol, Role, State
from trillium.exceptions import (
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
    InvalidUTF8,
    ProtocolError,
)

from ._helpers import assert_fails, close_of, peer_frame, sent_frames

ROLES = [CLIENT, SERVER]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]
VALID_CODES = [
    *range(1000, 1004),
    *range(1007, 1015),
    3000,
    3999,
    4000,
    4999,
]


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def close_frame_to(receiver: Protocol, code: int | None, reason: bytes = b"") -> bytes:
    payload = b"" if code is None else close_payload(code, reason)
    return peer_frame(receiver, Opcode.CLOSE, payload)


# ---------------------------------------------------------------- close frame body (§5.5.1)


@pytest.mark.parametrize("role", ROLES)
def test_empty_close_frame_is_accepted_and_reported_as_1005(role: Role) -> None:
    """RFC 6455 §5.5.1, §7.1.5: a close frame MAY have no body; the code is then 1005."""
    protocol = Protocol(role)
    assert protocol.receive_data(close_frame_to(protocol, None)) == [Close(1005)]
    assert protocol.close_code == 1005
    assert protocol.close_reason == ""
    # The echo is an empty close frame too: 1005 itself never goes on the wire.
    assert [f.payload for f in sent_frames(protocol)] == [b""]


@pytest.mark.parametrize("role", ROLES)
def test_close_frame_with_code_and_utf8_reason_is_accepted(role: Role) -> None:
    """RFC 6455 §5.5.1: the body is a 2-byte code in network order, then a UTF-8 reason."""
    protocol = Protocol(role)
    events = protocol.receive_data(close_frame_to(protocol, 1001, "au revoir ✋".encode()))
    assert events == [Close(1001, "au revoir ✋")]
    assert (protocol.close_code, protocol.close_reason) == (1001, "au revoir ✋")


@pytest.mark.parametrize("role", ROLES)
def test_fails_connection_on_close_frame_with_one_byte_body(role: Role) -> None:
    """RFC 6455 §5.5.1: a close body, if present, starts with a 2-byte code (1002)."""
    protocol = Protocol(role)
    exc = assert_fails(protocol, peer_frame(protocol, Opcode.CLOSE, b"\x03"), ProtocolError, 1002)
    assert "1 byte" in exc.reason


@pytest.mark.parametrize("role", ROLES)
def test_fails_connection_on_close_reason_with_invalid_utf8(role: Role) -> None:
    """RFC 6455 §5.5.1, §8.1: the close reason MUST be UTF-8; otherwise fail with 1007."""
    protocol = Protocol(role)
    assert_fails(protocol, close_frame_to(protocol, 1000, b"bad \xff"), InvalidUTF8, 1007)


def test_close_reason_of_123_bytes_is_received() -> None:
    """RFC 6455 §5.5: code + reason fit the 125-byte control payload, so 123 bytes of reason."""
    server = Protocol(SERVER)
    reason = "é" * 61 + "x"  # 123 bytes of UTF-8
    assert server.receive_data(close_frame_to(server, 1000, reason.encode())) == [
        Close(1000, reason)
    ]


def test_sending_close_reason_over_123_bytes_raises() -> None:
    """RFC 6455 §5.5: a close reason of more than 123 bytes cannot be sent."""
    client = Protocol(CLIENT)
    with pytest.raises(ValueError, match="123"):
        client.send_close(1000, "é" * 62)  # 124 bytes
    assert client.state is State.OPEN
    frames = sent_frames(client, client.send_close(1000, "x" * 123))
    assert close_of(frames[0]) == Close(1000, "x" * 123)


# ---------------------------------------------------------------- close codes (§7.4)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("code", INVALID_CODES)
def test_fails_connection_on_invalid_close_code(role: Role, code: int) -> None:
    """RFC 6455 §7.4: a close code that may not appear on the wire MUST fail (1002)."""
    protocol = Protocol(role)
    assert_fails(protocol, close_frame_to(protocol, code, b"why"), ProtocolError, 1002)
    assert protocol.close_rcvd is None


@pytest.mark.parametrize("code", VALID_CODES)
def test_valid_close_code_is_accepted(code: int) -> None:
    """RFC 6455 §7.4: 1000-1003, 1007-1014 and 3000-4999 are valid close codes."""
    server = Protocol(SERVER)
    assert server.receive_data(close_frame_to(server, code, b"r")) == [Close(code, "r")]
    assert server.failure is None
    assert server.close_code == code


@pytest.mark.parametrize("code", VALID_CODES)
def test_valid_close_code_can_be_sent(code: int) -> None:
    """RFC 6455 §7.4: an endpoint may send any valid code in a close frame."""
    client = Protocol(CLIENT)
    assert close_of(sent_frames(client, client.send_close(code, "r"))[0]) == Close(code, "r")


@pytest.mark.parametrize("code", [0, 999, 1004, 1006, 1015, 1016, 2999, 5000])
def test_invalid_close_code_is_never_sent(code: int) -> None:
    """RFC 6455 §7.4.1: 1005, 1006 and 1015 MUST NOT be sent; nor may unassigned codes."""
    client = Protocol(CLIENT)
    with pytest.raises(ValueError, match=str(code)):
        client.send_close(code)
    assert client.state is State.OPEN
    assert client.close_sent is None


def test_1005_is_never_sent_even_when_asked_for() -> None:
    """RFC 6455 §7.4.1: 1005 MUST NOT be put in a close frame; it means "no body"."""
    client = Protocol(CLIENT)
    with pytest.raises(ValueError, match="1005"):
        client.send_close(1005, "a reason needs a code")
    assert client.state is State.OPEN
    # Without a reason, 1005 asks for a close frame with an empty body.
    assert [f.payload for f in sent_frames(client, client.send_close(1005))] == [b""]


# ---------------------------------------------------------------- closing handshake (§7)


@pytest.mark.parametrize("role", ROLES)
def test_endpoint_echoes_the_peer_close_code(role: Role) -> None:
    """RFC 6455 §5.5.1: on receiving a close it did not answer, an endpoint MUST send one."""
    protocol = Protocol(role)
    assert protocol.receive_data(close_frame_to(protocol, 4321, b"done")) == [Close(4321, "done")]
    frames = sent_frames(protocol)
    assert len(frames) == 1
    assert close_of(frames[0]).code == 4321
    assert protocol.close_sent is not None
    assert protocol.close_sent.code == 4321
    assert protocol.close_rcvd_then_sent is True


def test_closing_handshake_goes_open_closing_closed() -> None:
    """RFC 6455 §7.1.2-4: sending a close moves to CLOSING, the peer's reply to CLOSED."""
    client, server = Protocol(CLIENT), Protocol(SERVER)
    assert client.state is State.OPEN
    assert client.close_code is None
    data = client.send_close(1000, "bye")
    assert client.state is State.CLOSING
    assert client.close_code is None
    assert server.receive_data(data) == [Close(1000, "bye")]
    assert server.state is State.CLOSED
    assert client.receive_data(server.data_to_send()) == [Close(1000, "bye")]
    assert client.state is State.CLOSED
    assert client.data_to_send() == b""  # no echo of an echo
    assert client.close_rcvd_then_sent is False
    assert (client.close_code, client.close_reason) == (1000, "bye")


def test_messages_received_while_closing_are_still_delivered() -> None:
    """RFC 6455 §7.1.2: after sending a close, data keeps arriving until the peer's close."""
    client = Protocol(CLIENT)
    client.send_close()
    data = peer_frame(client, Opcode.TEXT, b"late") + close_frame_to(client, 1000)
    assert client.receive_data(data) == [Message("late"), Close(1000)]
    assert client.state is State.CLOSED


def test_ping_received_while_closing_is_answered() -> None:
    """RFC 6455 §5.5.2: a ping MUST be answered unless a close was already received."""
    client = Protocol(CLIENT)
    client.send_close()
    assert client.receive_data(peer_frame(client, Opcode.PING, b"still there?")) == [
        Ping(b"still there?")
    ]
    assert [(f.opcode, f.payload) for f in sent_frames(client)] == [(Opcode.PONG, b"still there?")]


@pytest.mark.parametrize(
    "send",
    [
        lambda p: p.send_text("x"),
        lambda p: p.send_binary(b"x"),
        lambda p: p.send_ping(b""),
        lambda p: p.send_pong(b""),
        lambda p: p.send_close(),
    ],
    ids=["text", "binary", "ping", "pong", "close"],
)
def test_sending_after_sending_close_raises_invalid_state(send) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 §5.5.1: after sending a close frame, no further data frames may be sent."""
    client = Protocol(CLIENT)
    client.send_close()
    with pytest.raises(InvalidState, match="closing"):
        send(client)


@pytest.mark.parametrize(
    "send",
    [lambda p: p.send_text("x"), lambda p: p.send_binary(b"x"), lambda p: p.send_close()],
    ids=["text", "binary", "close"],
)
def test_sending_after_receiving_close_raises_invalid_state(send) -> None:  # type: ignore[no-untyped-def]
    """RFC 6455 §5.5.1: once the close was echoed the connection is closed for sending."""
    server = Protocol(SERVER)
    server.receive_data(close_frame_to(server, 1000))
    with pytest.raises(InvalidState, match="closed"):
        send(server)


def test_data_after_peer_close_in_the_same_read_is_refused() -> None:
    """RFC 6455 §5.5.1: the close frame is the last one a peer may send."""
    server = Protocol(SERVER)
    data = close_frame_to(server, 1000) + peer_frame(server, Opcode.TEXT, b"late")
    with pytest.raises(ProtocolError, match="after the peer's close") as info:
        server.receive_data(data)
    assert info.value.code == 1002
    assert info.value.events == [Close(1000)]
    # The echo was already queued; the close handshake is complete.
    assert [close_of(f) for f in sent_frames(server)] == [Close(1000)]
    assert server.state is State.CLOSED


def test_data_after_peer_close_in_a_later_read_is_refused() -> None:
    """RFC 6455 §5.5.1: the close frame is the last one a peer may send."""
    server = Protocol(SERVER)
    server.receive_data(close_frame_to(server, 1000))
    server.data_to_send()
    with pytest.raises(ProtocolError, match="after the peer's close") as info:
        server.receive_data(peer_frame(server, Opcode.TEXT, b"late"))
    assert info.value.code == 1002
    assert server.data_to_send() == b""  # no second close frame
    assert server.close_code == 1000


def test_failed_connection_ignores_further_data() -> None:
    """RFC 6455 §7.1.7: once the connection is failed, no more data is processed."""
    server = Protocol(SERVER)
    assert_fails(server, peer_frame(server, 0x3), ProtocolError, 1002)
    assert server.receive_data(peer_frame(server, Opcode.TEXT, b"ignored")) == []
    assert server.data_to_send() == b""


def test_failure_after_sending_close_sends_no_second_close() -> None:
    """RFC 6455 §5.5.1: only one close frame is ever sent."""
    client = Protocol(CLIENT)
    client.send_close(1001)
    with pytest.raises(ProtocolError) as info:
        client.receive_data(peer_frame(client, 0x3))
    assert info.value.code == 1002
    assert client.data_to_send() == b""
    assert client.close_sent == Close(1001)


# ---------------------------------------------------------------- end of stream (§7.1.5)


@pytest.mark.parametrize("role", ROLES)
def test_eof_without_close_frame_gives_closed_and_1006(role: Role) -> None:
    """RFC 6455 §7.1.5: a connection closed with no close frame received has code 1006."""
    protocol = Protocol(role)
    assert protocol.receive_data(b"") == []
    assert protocol.state is State.CLOSED
    assert protocol.close_code == 1006
    assert protocol.close_reason == ""


def test_eof_mid_message_gives_closed_and_1006() -> None:
    """RFC 6455 §7.1.5: an incomplete message is dropped when the TCP connection ends."""
    server = Protocol(SERVER)
    server.receive_data(peer_frame(server, Opcode.TEXT, b"half", fin=False))
    assert server.receive_data(b"") == []
    assert server.state is State.CLOSED
    assert server.close_code == 1006


def test_eof_while_closing_gives_closed_and_1006() -> None:
    """RFC 6455 §7.1.5: our close frame alone does not give a close code; 1006 does."""
    client = Protocol(CLIENT)
    client.send_close(1000)
    client.receive_data(b"")
    assert client.state is State.CLOSED
    assert client.close_code == 1006


# ---------------------------------------------------------------- close_exception()


@pytest.mark.parametrize(
    ("code", "payload"), [(1000, b"\x03\xe8"), (1001, b"\x03\xe9"), (1005, b"")]
)
def test_close_exception_is_ok_after_a_clean_close(code: int, payload: bytes) -> None:
    """RFC 6455 §7.1.3: close frames exchanged with 1000, 1001 or no code close cleanly."""
    server = Protocol(SERVER)
    server.receive_data(peer_frame(server, Opcode.CLOSE, payload))
    exc = server.close_exception()
    assert type(exc) is ConnectionClosedOK
    assert exc.code == code
    assert exc.rcvd == Close(code)
    assert exc.sent == Close(code)
    assert exc.rcvd_then_sent is True


def test_close_exception_is_ok_when_we_started_the_close() -> None:
    """RFC 6455 §7.1.3: the initiator's clean close is OK too."""
    client = Protocol(CLIENT)
    client.send_close(1001)
    client.receive_data(close_frame_to(client, 1000))
    exc = client.close_exception()
    assert type(exc) is ConnectionClosedOK
    assert exc.rcvd_then_sent is False


@pytest.mark.parametrize("code", [1002, 1003, 1011, 3000, 4000])
def test_close_exception_is_error_for_an_error_code(code: int) -> None:
    """RFC 6455 §7.4.1: any code but 1000/1001 reports an error closure."""
    server = Protocol(SERVER)
    server.receive_data(close_frame_to(server, code))
    exc = server.close_exception()
    assert type(exc) is ConnectionClosedError
    assert exc.code == code


def test_close_exception_is_error_without_close_frame() -> None:
    """RFC 6455 §7.1.5: a connection dropped without close frames is abnormal (1006)."""
    client = Protocol(CLIENT)
    client.send_close(1000)
    client.receive_data(b"")
    exc = client.close_exception()
    assert type(exc) is ConnectionClosedError
    assert exc.code == 1006
    assert exc.rcvd is None
    assert exc.sent == Close(1000)


def test_close_exception_is_error_after_failing_the_connection() -> None:
    """RFC 6455 §7.1.7: a failed connection never closes cleanly."""
    server = Protocol(SERVER)
    assert_fails(server, peer_frame(server, Opcode.TEXT, b"\xff"), InvalidUTF8, 1007)
    server.receive_data(b"")
    exc = server.close_exception()
    assert type(exc) is ConnectionClosedError
    assert exc.sent is not None
    assert exc.sent.code == 1007


def test_close_code_enum_names_the_registered_codes() -> None:
    """RFC 6455 §7.4.1: the registered codes and their meanings."""
    assert CloseCode.NORMAL_CLOSURE == 1000
    assert CloseCode.MESSAGE_TOO_BIG == 1009
    assert str(Close(1000, "bye")) == "1000 (normal closure) bye"
    assert str(Close(4000)) == "4000 (private use)"
    assert str(Close(3000)) == "3000 (registered)"
