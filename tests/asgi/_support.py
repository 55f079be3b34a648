"""In-process helpers for the ASGI server tests: serve an app on trio, port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trillium.asgi
from trillium.asgi import ASGIApp, ASGIServer

#: Upper bound for any single in-process test.
TEST_TIMEOUT = 10


def port_of(server: ASGIServer) -> int:
    return int(server.sockets[0].getsockname()[1])


@asynccontextmanager
async def asgi_serving(app: ASGIApp, **options: Any) -> AsyncIterator[tuple[ASGIServer, int]]:
    """``trillium.asgi.serve(app)`` on 127.0.0.1, port 0, for the block; yield it and its port."""
    options.setdefault("access_log", False)
    options.setdefault("lifespan", "off")
    async with trillium.asgi.serve(app, "127.0.0.1", 0, **options) as server:
        yield server, port_of(server)


async def drain_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def respond(send: Any, status: int = 200, body: bytes = b"", headers: Any = ()) -> None:
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})
