"""trillium and ASGI: wrappers for any ASGI server, and an ASGI server of trillium's own.

- ``WebSocketASGI`` (simple-websocket's API) and ``WebSocket`` / ``WebSocketState`` /
  ``WebSocketDisconnect`` (Starlette's style) wrap an ASGI ``(scope, receive,
  send)`` triple, under any server (``trillium.asgi.wrapper``).
- ``serve`` and ``run`` host any ASGI 3 application on trio (or asyncio): HTTP/1.1
  through h11, WebSocket through trillium's own core and connection manager
  (``trillium.asgi.server``), bridged to the application by ``build_ws_scope``,
  ``create_ws_receive`` and ``create_ws_send`` (``trillium.asgi.bridge``). From the
  command line: ``trillium serve module:app``.

::

    from trillium.asgi import WebSocket

    async def app(scope, receive, send):
        ws = WebSocket(scope, receive, send)
        await ws.accept()
        async for text in ws.iter_text():
            await ws.send_text(f"echo: {text}")

    # trillium serve mymodule:app --port 8000
"""

from .bridge import WebSocketSession, build_ws_scope, create_ws_receive, create_ws_send
from .config import Config
from .server import ASGIServer, run, serve
from .types import ASGIApp, ClientDisconnected, Message, Receive, Scope, Send
from .wrapper import (
    URL,
    QueryParams,
    State,
    WebSocket,
    WebSocketASGI,
    WebSocketDisconnect,
    WebSocketState,
)

__all__ = [
    "URL",
    "ASGIApp",
    "ASGIServer",
    "ClientDisconnected",
    "Config",
    "Message",
    "QueryParams",
    "Receive",
    "Scope",
    "Send",
    "State",
    "WebSocket",
    "WebSocketASGI",
    "WebSocketDisconnect",
    "WebSocketSession",
    "WebSocketState",
    "build_ws_scope",
    "create_ws_receive",
    "create_ws_send",
    "run",
    "serve",
]
