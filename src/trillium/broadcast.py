"""``broadcast``: one message to many connections, encoded once.

A server's frames are not masked, so the same bytes serve every server-side
connection: the frame is built once and handed to each connection's writer. A
connection whose write buffer is already above its ``write_limit`` is skipped rather
than waited for, so one slow client never holds up the others (or grows our
memory)::

    trillium.broadcast(server.connections, "tick")
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .connection import Connection
from .core.frames import Opcode, serialize_frame
from .core.protocol import CLIENT, State

__all__ = ["broadcast"]

logger = logging.getLogger("trillium")


def broadcast(connections: Iterable[Connection], message: str | bytes) -> int:
    """Queue ``message`` on every open connection; return how many were skipped.

    Skipped: connections not OPEN, in the middle of sending a fragmented message,
    or whose write buffer is above ``write_limit``. This never waits, so it is a
    plain function, safe to call from any task.
    """
    if isinstance(message, str):
        opcode, payload = Opcode.TEXT, message.encode("utf-8")
    elif isinstance(message, (bytes, bytearray, memoryview)):
        opcode, payload = Opcode.BINARY, bytes(message)
    else:
        raise TypeError(f"cannot broadcast {type(message).__name__}: need str or bytes")
    unmasked: bytes | None = None
    skipped = 0
    for connection in connections:
        protocol = connection.protocol
        if (
            protocol is None
            or connection.state is not State.OPEN
            or not protocol.can_send_message()
            or connection._out_size > connection._write_high
        ):
            skipped += 1
            continue
        if protocol.role is CLIENT or protocol.extensions:
            frame = (
                protocol.send_binary(payload)
                if opcode is Opcode.BINARY
                else (protocol.send_text(payload.decode("utf-8")))
            )
        else:
            if unmasked is None:
                unmasked = serialize_frame(opcode, payload, mask=False)
            frame = unmasked
        connection._write(frame)
    if skipped:
        logger.info("broadcast skipped %d connection(s)", skipped)
    return skipped
