"""trillium: a trio-native WebSocket library (RFC 6455, RFC 7692).

::

    import trio, trillium

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with trillium.serve(echo, "127.0.0.1", 8765):
            async with trillium.connect("ws://127.0.0.1:8765") as ws:
                await ws.send("Hello")
                assert await ws.recv() == "Hello"

    trio.run(main)

The sans-I/O framing core lives in ``trillium.core``; the connection manager in
``trillium.connection``; the faces (trio, asyncio, blocking, ASGI) build on them.
"""

__version__ = "0.1.0"

from . import _green  # noqa: F401  # first: lets trio be imported under eventlet
from .aio import AioClient, AioServer
from .asgi.wrapper import WebSocketASGI
from .auth import basic_auth
from .broadcast import broadcast
from .client import ClientConnection, connect, run_client, unix_connect
from .connection import Connection
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
    InvalidUpgrade,
    InvalidURI,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
    WebSocketException,
)
from .server import ServerConnection, WebSocketServer, serve, unix_serve
from .sync import Client, Server

__all__ = [
    "AioClient",
    "AioServer",
    "Client",
    "ClientConnection",
    "Close",
    "CloseCode",
    "ConcurrencyError",
    "Connection",
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
    "Server",
    "ServerConnection",
    "State",
    "WebSocketASGI",
    "WebSocketException",
    "WebSocketServer",
    "__version__",
    "basic_auth",
    "broadcast",
    "connect",
    "run_client",
    "serve",
    "unix_connect",
    "unix_serve",
]
