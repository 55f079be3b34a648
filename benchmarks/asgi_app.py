"""The application of ``benchmarks/asgi.py``: a Starlette WebSocket echo, nothing else.

Every server under test (``trillium serve``, uvicorn, hypercorn) imports this same
module (``asgi_app:app``, with ``benchmarks/`` on the path) and runs it unchanged.
Each message is sent back as it came: binary as binary, text as text. The route is
``/``, where the load generator (``echo_load.py``) connects.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] != "websocket.receive":
            return
        data = message.get("bytes")
        if data is not None:
            await websocket.send_bytes(data)
        else:
            await websocket.send_text(message["text"])


app = Starlette(routes=[WebSocketRoute("/", echo)])
