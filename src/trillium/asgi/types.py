"""The ASGI 3 callable's types, and the error a server raises on a closed connection.

An ASGI application is ``async def app(scope, receive, send)``: ``scope`` describes
the connection, ``receive()`` returns the next event from the client as a dict and
``send(message)`` hands a dict to the server (see https://asgi.readthedocs.io).

    >>> issubclass(ClientDisconnected, OSError)
    True
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ASGIApp", "ClientDisconnected", "Message", "Receive", "Scope", "Send"]

#: The connection scope: ``type`` ("http", "websocket" or "lifespan") and its fields.
Scope = MutableMapping[str, Any]
#: An event dict, received or sent: ``{"type": "websocket.send", "text": "hi"}``.
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClientDisconnected(OSError):
    """``send()`` was called on a connection that is already closed.

    The ASGI specification asks servers to raise a subclass of ``OSError`` here, so
    that an application streaming to a client that went away stops cleanly::

        try:
            while True:
                await send({"type": "http.response.body", "body": tick(), "more_body": True})
        except OSError:   # trillium.asgi.ClientDisconnected
            pass          # the client left: stop producing
    """
