"""The WebSocket conversation after the handshake, as a sans-I/O state machine.

Feed it the bytes you read, get events; call its send methods, get bytes to write.
It never touches a socket, a clock or an event loop::

    >>> server = Protocol(SERVER)
    >>> client = Protocol(CLIENT)
    >>> server.receive_data(client.send_text("Hello"))
    [Message(data='Hello', final=True)]
    >>> server.receive_data(client.send_ping(b"?"))
    [Ping(payload=b'?')]
    >>> client.receive_data(server.data_to_send())   # the pong the server owes
    [Pong(payload=b'?')]
    >>> server.receive_data(client.send_close(1000, "bye"))
    [Close(code=1000, reason='bye')]
    >>> server.state, client.state
    (<State.CLOSED: 3>, <State.CLOSING: 2>)

Replies the protocol owes the peer on its own account (a pong for each ping, the
echo of a close frame, the close frame that fails the connection) wait in
``data_to_send()``; write them out after each ``receive_data()``.

Events are ``Message`` (text as str, binary as bytes), ``Ping``, ``Pong`` and
``Close`` (the peer's close frame, whose code is echoed back). A peer that breaks the
protocol makes ``receive_data()`` raise ``ProtocolError`` carrying the close code
(1002, 1007 or 1009) and the events parsed before the violation; the close frame
that fails the connection is already queued in ``data_to_send()``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ..exceptions import (
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
    InvalidUTF8,
    PayloadTooBig,
    ProtocolError,
)
from .close import Close, CloseCode
from .extensions import Extension
from .frames import (
    MAX_CONTROL_PAYLOAD,
    Frame,
    FrameParser,
    Opcode,
    serialize_frame,
    serialize_frame_parts,
)
from .utf8 import Utf8Decoder

__all__ = [
    "CLIENT",
    "SERVER",
    "Close",
    "Event",
    "Message",
    "Ping",
    "Pong",
    "Protocol",
    "Role",
    "State",
]


class Role(enum.Enum):
    """Which end of the connection this is: masking rules differ (RFC 6455 §5.1)."""

    CLIENT = "client"
    SERVER = "server"


CLIENT = Role.CLIENT
SERVER = Role.SERVER


class State(enum.IntEnum):
    """Where the connection is in its life (RFC 6455 §4 and §7)."""

    CONNECTING = 0  # the opening handshake is under way (used by the connection manager)
    OPEN = 1  # messages flow both ways
    CLOSING = 2  # we sent a close frame (or failed the connection) and await the peer's
    CLOSED = 3  # both close frames exchanged, or the TCP connection is gone


@dataclass(slots=True)
class Message:
    """A received message (text as ``str``, binary as ``bytes``).

    In streaming mode a fragmented message arrives as several ``Message`` events, all
    but the last with ``final=False``; otherwise each event is a whole message.
    """

    data: str | bytes
    final: bool = True


@dataclass(slots=True)
class Ping:
    """A ping from the peer; the pong that answers it is already queued."""

    payload: bytes


@dataclass(slots=True)
class Pong:
    """A pong from the peer: an answer to our ping, or an unsolicited heartbeat."""

    payload: bytes


Event = Message | Ping | Pong | Close

_UNLIMITED = 2**63 - 1

# Enum members the per-frame paths compare against, as module globals: reading
# ``Opcode.TEXT`` goes through the enum class, about 90 ns on Python 3.11 against
# 10 for a global, and a small message meets half a dozen of them.
_TEXT, _BINARY, _CONTINUATION = Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION
_PING, _PONG = Opcode.PING, Opcode.PONG
_OPEN, _CLOSED = State.OPEN, State.CLOSED

#: What a frame is serialized as: ``bytes``, or ``list[bytes]`` (``send_binary_passthrough``).
_Wire = TypeVar("_Wire")


class Protocol:
    """One WebSocket connection's framing, close handshake and limits (no I/O).

    ``max_size`` bounds each incoming message (None for no limit): a message that
    grows past it fails the connection with 1009, and no more than ``max_size`` bytes
    plus one frame header are ever buffered for it. With ``streaming=True`` every data
    frame is delivered as soon as it arrives (see ``Message.final``).
    """

    # Slots, not a __dict__: a server holds one per connection (56 bytes less each).
    __slots__ = (
        "_decoder",
        "_in_opcode",
        "_in_parts",
        "_in_size",
        "_in_text",
        "_mask",
        "_out_opcode",
        "_outgoing",
        "_parser",
        "close_rcvd",
        "close_rcvd_then_sent",
        "close_sent",
        "extensions",
        "failure",
        "max_size",
        "paused",
        "role",
        "state",
        "streaming",
    )

    def __init__(
        self,
        role: Role,
        *,
        max_size: int | None = 2**20,
        streaming: bool = False,
        extensions: Sequence[Extension] = (),
    ) -> None:
        self.role = role
        self.max_size = max_size
        self.streaming = streaming
        self.extensions = list(extensions)
        self.state = State.OPEN
        #: The close frame received from the peer, and the one we sent (None until then).
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        #: When both exist: True if the peer's close came first (we echoed it).
        self.close_rcvd_then_sent: bool | None = None
        #: The protocol violation that failed the connection, if any.
        self.failure: ProtocolError | None = None
        #: True when receive_data stopped at max_events with bytes still buffered:
        #: call receive_buffered() before waiting for more bytes.
        self.paused = False

        rsv = 0
        for ext in self.extensions:
            rsv |= ext.rsv_bits
        self._parser = FrameParser(expect_masked=role is SERVER, allowed_rsv=rsv)
        self._mask = role is CLIENT
        self._outgoing: list[bytes] = []
        # Incoming message being assembled (fragmented messages only).
        self._in_opcode: Opcode | None = None
        self._in_size = 0
        self._in_parts: list[bytes] = []
        self._in_text: list[str] = []
        self._decoder: Utf8Decoder | None = None
        # Outgoing fragmented message in progress, if any.
        self._out_opcode: Opcode | None = None

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes, *, max_events: int | None = None) -> list[Event]:
        """Feed bytes read from the network; return the events they complete.

        ``b""`` means the peer closed the TCP connection (end of file).

        ``max_events`` stops parsing once that many events are returned, so that a
        caller with room for a few messages never holds thousands of them from one
        read of tiny frames. The rest stays buffered, ``paused`` is True, and
        ``receive_buffered()`` parses on from there::

            >>> server, client = Protocol(SERVER), Protocol(CLIENT)
            >>> wire = client.send_text("a") + client.send_text("b") + client.send_text("c")
            >>> server.receive_data(wire, max_events=2), server.paused
            ([Message(data='a', final=True), Message(data='b', final=True)], True)
            >>> server.receive_buffered(), server.paused
            ([Message(data='c', final=True)], False)
        """
        if not data:
            self._receive_eof()
            return []
        if self.failure is not None:
            return []  # we failed the connection: what follows is not worth reading
        if self.close_rcvd is not None:
            raise ProtocolError("data received after the peer's close frame")
        self._parser.feed(data)
        return self._parse(_UNLIMITED if max_events is None else max_events)

    def receive_buffer(self) -> memoryview | None:
        """Where the next bytes read should go, or None: read as usual and pass them
        to ``receive_data()``. A reader that can read into a buffer
        (``socket.recv_into``) asks before each read: for a big frame's payload, the
        bytes then land where they stay, with no copy to collect them (see
        ``FrameParser.receive_buffer``). ``received_into()`` takes it from there.
        """
        if self.failure is not None or self.close_rcvd is not None:
            return None
        return self._parser.receive_buffer()

    def received_into(self, size: int, *, max_events: int | None = None) -> list[Event]:
        """``receive_data()`` for ``size`` bytes (at least one) written into the buffer
        from ``receive_buffer()``. End of stream is still ``receive_data(b"")``."""
        self._parser.received_into(size)
        return self._parse(_UNLIMITED if max_events is None else max_events)

    def receive_buffered(self, *, max_events: int | None = None) -> list[Event]:
        """Parse on from where ``receive_data(..., max_events=...)`` paused (no new bytes).

        Returns ``[]`` (and clears ``paused``) when no complete frame is left.
        """
        if self.failure is not None or self.close_rcvd is not None:
            self.paused = False
            return []
        return self._parse(_UNLIMITED if max_events is None else max_events)

    def _parse(self, max_events: int) -> list[Event]:
        """Turn buffered bytes into events until a frame is incomplete (or max_events)."""
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        parser = self._parser
        events: list[Event] = []
        self.paused = False
        try:
            while True:
                if len(events) >= max_events:
                    self.paused = parser.buffered > 0
                    break
                limit = _UNLIMITED if self.max_size is None else self.max_size - self._in_size
                frame = parser.next_frame(limit)
                if frame is None:
                    break
                opcode = frame.opcode
                if opcode is _TEXT or opcode is _BINARY:
                    if self._in_opcode is not None:
                        raise ProtocolError(f"{opcode.name} frame inside a fragmented message")
                    if frame.fin and not frame.rsv and not self.extensions:
                        # The common case, kept short: a whole message in one frame.
                        if opcode is _TEXT:
                            events.append(Message(_decode_text(frame.payload)))
                        else:
                            events.append(Message(frame.payload))
                    else:
                        self._start_message(frame, events)
                elif opcode is _CONTINUATION:
                    if self._in_opcode is None:
                        raise ProtocolError("continuation frame without a message to continue")
                    self._continue_message(frame, events)
                elif opcode is _PING:
                    events.append(Ping(frame.payload))
                    # §5.5.2: answer unless the peer's close came (CLOSING still answers).
                    if self.state is not _CLOSED:
                        self._outgoing.append(self._frame(_PONG, frame.payload))
                elif opcode is _PONG:
                    events.append(Pong(frame.payload))
                else:  # CLOSE
                    events.append(self._receive_close(frame.payload))
                    if parser.buffered:
                        raise ProtocolError("data received after the peer's close frame")
                    break
        except ProtocolError as exc:
            self._fail(exc)
            exc.events = list(events)
            raise
        return events

    def _start_message(self, frame: Frame, events: list[Event]) -> None:
        self._in_opcode = frame.opcode
        self._in_size = 0
        if frame.opcode is Opcode.TEXT:
            self._decoder = Utf8Decoder()
        self._continue_message(frame, events)

    def _continue_message(self, frame: Frame, events: list[Event]) -> None:
        for ext in self.extensions:
            frame = ext.decode(frame, max_size=self._remaining())
        payload = frame.payload
        self._in_size += len(payload)
        if self.max_size is not None and self._in_size > self.max_size:
            raise PayloadTooBig(f"message exceeds the limit of {self.max_size} bytes")
        fin = frame.fin
        if not fin and not payload:
            # A fragment that adds nothing is not kept: max_size counts bytes, so
            # endless empty continuation frames would otherwise grow the list of
            # parts (or, streaming, the caller's queue of fragments) without bound.
            return
        if self._decoder is not None:
            text = self._decoder.decode(payload, final=fin)
            if self.streaming:
                if text or fin:  # not the first bytes of a code point alone
                    events.append(Message(text, fin))
            else:
                self._in_text.append(text)
                if fin:
                    events.append(Message("".join(self._in_text)))
        else:
            if self.streaming:
                events.append(Message(payload, fin))
            else:
                self._in_parts.append(payload)
                if fin:
                    events.append(Message(b"".join(self._in_parts)))
        if fin:
            self._in_opcode = None
            self._in_size = 0
            self._in_parts = []
            self._in_text = []
            self._decoder = None

    def _remaining(self) -> int | None:
        return None if self.max_size is None else self.max_size - self._in_size

    def _receive_close(self, payload: bytes) -> Close:
        close = Close.parse(payload)
        self.close_rcvd = close
        if self.close_sent is None:
            # Echo the peer's code (RFC 6455 §5.5.1); an empty close gets an empty one.
            self._outgoing.append(self._close_frame(close))
            self.close_sent = close
            self.close_rcvd_then_sent = True
        elif self.close_rcvd_then_sent is None:
            self.close_rcvd_then_sent = False
        self.state = State.CLOSED
        return close

    def _receive_eof(self) -> None:
        """The TCP connection ended: whatever was not closed properly is now closed."""
        self.state = State.CLOSED
        self._in_opcode = None
        self._in_parts = []
        self._in_text = []

    def _fail(self, exc: ProtocolError) -> None:
        """Fail the connection (RFC 6455 §7.1.7): queue a close frame with exc.code."""
        self.failure = exc
        if self.close_sent is None and self.close_rcvd is None:
            close = Close(exc.code, _truncate_reason(exc.reason))
            self._outgoing.append(self._close_frame(close))
            self.close_sent = close
            self.state = State.CLOSING

    # ------------------------------------------------------------------ sending

    def data_to_send(self) -> bytes:
        """Bytes the protocol queued on its own: pongs, close echoes, failure closes."""
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def can_send_message(self) -> bool:
        """Whether a new message may start now: OPEN, and no fragmented message under way."""
        return self.state is State.OPEN and self._out_opcode is None

    def send_text(self, data: str, fin: bool = True) -> bytes:
        """Encode a text message, or one fragment of it when ``fin=False``."""
        return self._send_data(_TEXT, data.encode("utf-8"), fin, serialize_frame)

    def send_binary(self, data: bytes | bytearray | memoryview, fin: bool = True) -> bytes:
        """Encode a binary message, or one fragment of it when ``fin=False``."""
        return self._send_data(_BINARY, bytes(data), fin, serialize_frame)

    def send_binary_passthrough(
        self, data: bytes | bytearray | memoryview, fin: bool = True
    ) -> list[bytes]:
        """``send_binary``, with the payload passed through uncopied where it can be:
        the frame as the buffers to write one after the other (see
        ``serialize_frame_parts``). Unmasked (a server), ``[header, payload]``, the
        payload being ``data`` itself when it is ``bytes`` and no extension rewrote
        it; masked (a client), ``[frame]``. Meant for big messages, written with one
        ``sendmsg``. (Any other buffer is copied first: the caller may change it
        once this returns.)"""
        return self._send_data(_BINARY, bytes(data), fin, serialize_frame_parts)

    def _send_data(
        self,
        opcode: Opcode,
        payload: bytes,
        fin: bool,
        serialize: Callable[..., _Wire],
    ) -> _Wire:
        if self.state is not _OPEN:
            raise InvalidState(self._closed_message(f"send a {opcode.name.lower()} message"))
        if self._out_opcode is None:
            wire_opcode = opcode
        elif self._out_opcode is opcode:
            wire_opcode = _CONTINUATION
        else:
            raise InvalidState(
                f"cannot send a {opcode.name.lower()} fragment: a fragmented "
                f"{self._out_opcode.name.lower()} message is in progress; finish it first"
            )
        self._out_opcode = None if fin else opcode
        if not self.extensions:
            return serialize(wire_opcode, payload, mask=self._mask, fin=fin)
        frame = Frame(wire_opcode, payload, fin, 0)
        for ext in self.extensions:
            frame = ext.encode(frame)
        return serialize(frame.opcode, frame.payload, mask=self._mask, fin=frame.fin, rsv=frame.rsv)

    def send_ping(self, payload: bytes = b"") -> bytes:
        """Encode a ping; the peer answers with a pong carrying the same payload."""
        return self._send_control(Opcode.PING, payload)

    def send_pong(self, payload: bytes = b"") -> bytes:
        """Encode a pong (unsolicited pongs serve as a one-way heartbeat)."""
        return self._send_control(Opcode.PONG, payload)

    def _send_control(self, opcode: Opcode, payload: bytes) -> bytes:
        if self.state is not State.OPEN:
            raise InvalidState(self._closed_message(f"send a {opcode.name.lower()}"))
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError(f"{opcode.name.lower()} payload is limited to 125 bytes")
        return self._frame(opcode, bytes(payload))

    def send_close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> bytes:
        """Start the closing handshake (RFC 6455 §7.1.2); the state becomes CLOSING.

        Pass ``code=1005`` (with no reason) to send a close frame without a payload.
        Raises ValueError for codes that can't be sent and InvalidState if a close
        frame was already sent or received.
        """
        if self.state is not State.OPEN:
            raise InvalidState(self._closed_message("send a close frame"))
        close = Close(code, reason)
        frame = self._close_frame(close)  # validates before changing state
        self.close_sent = close
        self.state = State.CLOSING
        return frame

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        return serialize_frame(opcode, payload, mask=self._mask)

    def _close_frame(self, close: Close) -> bytes:
        return self._frame(Opcode.CLOSE, close.serialize())

    def _closed_message(self, action: str) -> str:
        if self.state is State.CLOSING:
            return f"cannot {action}: a close frame was sent, the connection is closing"
        if self.state is State.CLOSED:
            return f"cannot {action}: the connection is closed"
        return f"cannot {action} in state {self.state.name}"

    # ------------------------------------------------------------------ reporting

    @property
    def close_code(self) -> int | None:
        """The peer's close code once CLOSED (1006 if no close frame came), else None."""
        if self.state is not State.CLOSED:
            return None
        return self.close_rcvd.code if self.close_rcvd is not None else CloseCode.ABNORMAL_CLOSURE

    @property
    def close_reason(self) -> str | None:
        """The peer's close reason once CLOSED, else None."""
        if self.state is not State.CLOSED:
            return None
        return self.close_rcvd.reason if self.close_rcvd is not None else ""

    def close_exception(self) -> ConnectionClosedOK | ConnectionClosedError:
        """The exception that describes how this connection ended, for the caller to raise.

        OK when close frames were exchanged both ways with 1000 or 1001 (or an empty
        close), an error otherwise.
        """
        rcvd, sent = self.close_rcvd, self.close_sent
        ok_codes = (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD)
        if (
            rcvd is not None
            and sent is not None
            and rcvd.code in ok_codes
            and sent.code in ok_codes
        ):
            return ConnectionClosedOK(rcvd, sent, self.close_rcvd_then_sent)
        return ConnectionClosedError(rcvd, sent, self.close_rcvd_then_sent)


def _decode_text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidUTF8(f"invalid UTF-8 in text message: {exc.reason}") from None


def _truncate_reason(reason: str) -> str:
    """Fit a reason into a close frame (123 bytes of UTF-8) without splitting a character."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= 123:
        return reason
    return encoded[:123].decode("utf-8", "ignore")
