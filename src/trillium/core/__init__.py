"""The sans-I/O framing core: RFC 6455 with no sockets, clocks or event loops.

``handshake`` builds and checks the HTTP upgrade, ``frames`` encodes and parses
frames, ``protocol`` runs the conversation (fragmentation, UTF-8, ping/pong, close,
limits), ``close`` holds close codes, ``utf8`` the incremental validator and ``mask``
the masking loop. Everything here can be read top to bottom to learn the protocol.
"""

from .close import Close, CloseCode
from .frames import Frame, FrameParser, Opcode, serialize_frame, serialize_frame_parts
from .handshake import (
    ClientHandshake,
    Headers,
    Request,
    Response,
    ServerHandshake,
    accept_key,
)
from .mask import apply_mask
from .protocol import CLIENT, SERVER, Event, Message, Ping, Pong, Protocol, Role, State

__all__ = [
    "CLIENT",
    "SERVER",
    "ClientHandshake",
    "Close",
    "CloseCode",
    "Event",
    "Frame",
    "FrameParser",
    "Headers",
    "Message",
    "Opcode",
    "Ping",
    "Pong",
    "Protocol",
    "Request",
    "Response",
    "Role",
    "ServerHandshake",
    "State",
    "accept_key",
    "apply_mask",
    "serialize_frame",
    "serialize_frame_parts",
]
