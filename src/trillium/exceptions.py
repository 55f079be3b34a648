"""One exception hierarchy for every contract trillium serves.

The names and attributes follow the ``websockets`` library (``ConnectionClosed`` with
``rcvd``/``sent``, ``InvalidStatus`` carrying the response, ...) *and*
simple-websocket (``ConnectionClosed.reason`` is the close code and ``.message`` its
text; ``ConnectionError.status_code``), so code written against either keeps working::

    >>> from trillium.core.close import Close
    >>> exc = ConnectionClosedOK(Close(1000, "bye"), Close(1000, "bye"))
    >>> exc.code, exc.reason, exc.message
    (1000, 1000, 'bye')

This module imports nothing but the standard library, so the sans-I/O core can raise
these exceptions too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core.close import Close
    from .core.handshake import Response

__all__ = [
    "ConcurrencyError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionError",
    "InvalidHandshake",
    "InvalidHeader",
    "InvalidOrigin",
    "InvalidState",
    "InvalidStatus",
    "InvalidURI",
    "InvalidUpgrade",
    "NegotiationError",
    "PayloadTooBig",
    "ProtocolError",
    "WebSocketException",
]


class WebSocketException(Exception):
    """Base class of every exception trillium raises on purpose."""


class ConnectionClosed(WebSocketException, RuntimeError):
    """Raised when using a connection that is closed or closing.

    ``rcvd`` is the close frame received from the peer (None if none came), ``sent``
    the one we sent (None if none went out), and ``rcvd_then_sent`` tells which came
    first when both exist. ``code`` is the code that describes the closure: the one
    received, else 1006 (abnormal closure, no close frame received).

    For simple-websocket users, ``reason`` is that same close code and ``message``
    the close reason text, and ``ConnectionClosed(1000, "bye")`` builds one the way
    simple-websocket does (code, then text).
    """

    def __init__(
        self,
        rcvd: Close | int | None = None,
        sent: Close | str | None = None,
        rcvd_then_sent: bool | None = None,
    ) -> None:
        if isinstance(rcvd, int):
            # simple-websocket's signature: ConnectionClosed(reason=code, message=text).
            from .core.close import Close

            rcvd = Close(rcvd, sent if isinstance(sent, str) else "")
            sent = None
        assert not isinstance(sent, str)
        self.rcvd = rcvd
        self.sent = sent
        self.rcvd_then_sent = rcvd_then_sent
        super().__init__(str(self))

    @property
    def code(self) -> int:
        """The close code received from the peer, else 1006 (no close frame received)."""
        if self.rcvd is not None:
            return self.rcvd.code
        return 1006

    @property
    def reason(self) -> int:
        """The close code, as simple-websocket names it (``ConnectionClosed.reason``)."""
        return self.code

    @property
    def message(self) -> str:
        """The close reason text received from the peer (empty when there was none)."""
        return self.rcvd.reason if self.rcvd is not None else ""

    def __str__(self) -> str:
        if self.rcvd is None and self.sent is None:
            return "no close frame received or sent"
        if self.rcvd is None:
            return f"sent {self.sent}; no close frame received"
        if self.sent is None:
            return f"received {self.rcvd}; no close frame sent"
        if self.rcvd_then_sent:
            return f"received {self.rcvd}; then sent {self.sent}"
        return f"sent {self.sent}; then received {self.rcvd}"


class ConnectionClosedOK(ConnectionClosed):
    """The connection closed cleanly: both close frames exchanged with code 1000 or 1001."""


class ConnectionClosedError(ConnectionClosed):
    """The connection closed with an error code, or without a complete close handshake."""


class ConnectionError(WebSocketException, RuntimeError):
    """The connection could not be established (simple-websocket's ``ConnectionError``).

    ``status_code`` is the HTTP status the peer answered with, or None when the
    failure happened before or without one.
    """

    def __init__(self, status_code: int | None = None, message: str | None = None) -> None:
        self.status_code = status_code
        super().__init__(message or f"connection error: {status_code}")


class InvalidHandshake(ConnectionError):
    """The opening handshake failed: the peer's request or response broke RFC 6455 §4."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(status_code, message)


class InvalidUpgrade(InvalidHandshake):
    """The request or response is not a valid WebSocket upgrade (a header is missing or wrong)."""


class InvalidHeader(InvalidHandshake):
    """A handshake header is missing, duplicated or malformed."""

    def __init__(self, name: str, value: str | None = None, message: str | None = None) -> None:
        self.name = name
        self.value = value
        if message is None:
            message = (
                f"missing {name} header" if value is None else f"invalid {name} header: {value!r}"
            )
        super().__init__(message)


class InvalidOrigin(InvalidHeader):
    """The request's Origin is not one the server accepts."""

    def __init__(self, origin: str | None) -> None:
        super().__init__("Origin", origin, f"origin not allowed: {origin!r}")


class NegotiationError(InvalidHandshake):
    """Subprotocol or extension negotiation failed."""


class InvalidStatus(InvalidHandshake):
    """The server answered the upgrade with something other than 101.

    ``response`` holds its status, headers and body, e.g. for a redirect or a 403.
    """

    def __init__(self, response: Response) -> None:
        self.response = response
        super().__init__(
            f"server rejected WebSocket connection: HTTP {response.status_code}",
            response.status_code,
        )


class InvalidURI(WebSocketException, ValueError):
    """The URI is not a valid ws:// or wss:// URI."""

    def __init__(self, uri: str, msg: str) -> None:
        self.uri = uri
        self.msg = msg
        super().__init__(f"{uri} isn't a valid URI: {msg}")


class ProtocolError(WebSocketException):
    """The peer broke RFC 6455; the connection is failed with close code ``code``.

    The sans-I/O core raises this from ``receive_data()`` after queueing the close
    frame that fails the connection (so ``data_to_send()`` holds it). ``events``
    lists the events parsed from the same data *before* the violation, so nothing
    the peer sent correctly is lost.
    """

    code: int = 1002

    def __init__(self, reason: str, code: int | None = None) -> None:
        if code is not None:
            self.code = code
        self.reason = reason
        self.events: list[object] = []
        super().__init__(f"{reason} (close code {self.code})")


class InvalidUTF8(ProtocolError):
    """A text message or close reason is not valid UTF-8 (close code 1007)."""

    code = 1007


class PayloadTooBig(ProtocolError):
    """A message exceeds ``max_size`` (close code 1009)."""

    code = 1009


class InvalidState(WebSocketException, AssertionError):
    """An operation is not allowed in the connection's current state (e.g. sending after close)."""


class ConcurrencyError(WebSocketException, RuntimeError):
    """Two tasks tried to receive at the same time, which would interleave messages."""
