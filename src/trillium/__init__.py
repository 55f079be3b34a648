"""trillium: a trio-native WebSocket library (RFC 6455, RFC 7692).

The sans-I/O framing core lives in ``trillium.core``; the faces (trio, asyncio,
blocking, ASGI) build on it.
"""

from .core import Close, CloseCode, Headers, Request, Response, State
from .exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    ConnectionError,
    InvalidHandshake,
    InvalidHeader,
    InvalidOrigin,
    InvalidState,
    InvalidStatus,
    InvalidURI,
    InvalidUpgrade,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
    WebSocketException,
)

__version__ = "0.1.0"

__all__ = [
    "Close",
    "CloseCode",
    "ConcurrencyError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "ConnectionError",
    "Headers",
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
    "Request",
    "Response",
    "State",
    "WebSocketException",
    "__version__",
]
