"""Real ASGI applications for the server tests, run by ``trillium serve`` and by uvicorn.

- ``app``: a FastAPI application with HTTP and WebSocket routes, a lifespan that
  puts state in every scope, and the seed's simple-websocket examples (FastAPI,
  subprotocols, a Django Channels-style consumer) written with ``import trillium as
  simple_websocket``;
- ``starlette_app``: a Starlette application: the seed's Starlette example, an
  echo route and a lifespan;
- ``raw_app``: the seed's bare ASGI application (404 for HTTP, no lifespan support).

What a WebSocket route observes (the disconnect code, what a send after close did)
is recorded under the ``id`` query parameter and read back with ``GET /events/{id}``,
so a test can check what the application saw, whatever server runs it.

If ``TRILLIUM_TEST_LIFESPAN_LOG`` names a file, lifespan startup and shutdown append
a line to it.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

import trillium as simple_websocket
from trillium.asgi import WebSocket as TrilliumWebSocket
from trillium.asgi import WebSocketDisconnect as TrilliumDisconnect

#: What the WebSocket routes observed, by the ``id`` the test gave.
EVENTS: dict[str, list[Any]] = defaultdict(list)
SUBPROTOCOLS = ["v2", "v1"]


def _log_lifespan(event: str) -> None:
    path = os.environ.get("TRILLIUM_TEST_LIFESPAN_LOG")
    if path:
        with open(path, "a") as f:
            f.write(event + "\n")


@asynccontextmanager
async def lifespan(_: Any) -> AsyncIterator[dict[str, Any]]:
    _log_lifespan("startup")
    yield {"greeting": "hello from lifespan"}
    _log_lifespan("shutdown")


app = FastAPI(lifespan=lifespan)


# --------------------------------------------------------------------------- HTTP


@app.get("/")
async def index() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/state")
async def state(request: Request) -> dict[str, str]:
    return {"greeting": request.state.greeting}


@app.post("/echo")
async def echo_body(request: Request) -> Response:
    body = await request.body()
    return Response(
        body,
        media_type=request.headers.get("content-type", "application/octet-stream"),
        headers={"x-body-length": str(len(body))},
    )


@app.get("/stream")
async def stream(n: int = 5, delay: float = 0.0) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(n):
            if delay:
                await anyio.sleep(delay)
            yield f"chunk {i}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


@app.get("/slow")
async def slow(delay: float = 1.0) -> dict[str, float]:
    await anyio.sleep(delay)
    return {"slept": delay}


@app.get("/error")
async def error() -> None:
    raise RuntimeError("boom (raised on purpose by the test application)")


@app.get("/client")
async def client(request: Request) -> dict[str, Any]:
    return {"port": request.client.port if request.client else None}


@app.get("/scope")
async def http_scope(request: Request) -> dict[str, Any]:
    scope = request.scope
    return {
        "type": scope["type"],
        "scheme": scope["scheme"],
        "path": scope["path"],
        "root_path": scope["root_path"],
        "query_string": scope["query_string"].decode(),
        "http_version": scope["http_version"],
        "method": scope["method"],
        "x_custom": request.headers.getlist("x-custom"),
    }


@app.get("/events/{key}")
async def events(key: str) -> list[Any]:
    return EVENTS.get(key, [])


# --------------------------------------------------------------------------- WebSocket


@app.websocket("/ws/echo")
async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    key = websocket.query_params.get("id", "")
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            EVENTS[key].append({"code": message.get("code"), "reason": message.get("reason") or ""})
            return
        if message.get("text") is not None:
            await websocket.send_text(message["text"])
        else:
            await websocket.send_bytes(message["bytes"])


@app.websocket("/ws/subprotocol")
async def ws_subprotocol(websocket: WebSocket) -> None:
    chosen = next((p for p in websocket.scope["subprotocols"] if p in SUBPROTOCOLS), None)
    await websocket.accept(subprotocol=chosen)
    await websocket.send_text(chosen or "none")
    with suppress(WebSocketDisconnect):
        await websocket.receive_text()


@app.websocket("/ws/reject")
async def ws_reject(websocket: WebSocket) -> None:
    await websocket.close(code=1008)  # before accept: HTTP 403


@app.websocket("/ws/deny")
async def ws_deny(websocket: WebSocket) -> None:
    response = PlainTextResponse("no token, no chat", status_code=401, headers={"x-why": "token"})
    await websocket.send_denial_response(response)


@app.websocket("/ws/close")
async def ws_close(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.close(code=4001, reason="bye")


@app.websocket("/ws/fail-before-accept")
async def ws_fail_before_accept(websocket: WebSocket) -> None:
    raise RuntimeError("boom before accept (raised on purpose)")


@app.websocket("/ws/fail-after-accept")
async def ws_fail_after_accept(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.receive_text()
    raise RuntimeError("boom after accept (raised on purpose)")


@app.websocket("/ws/after-close")
async def ws_after_close(websocket: WebSocket) -> None:
    """Close, then use the raw ASGI send and receive: what does the server do?"""
    key = websocket.query_params.get("id", "")
    await websocket.accept()
    await websocket.close(code=1000)
    for message in ({"type": "websocket.send", "text": "late"}, {"type": "websocket.close"}):
        try:
            await websocket._send(message)
            EVENTS[key].append([message["type"], "ok"])
        except Exception as exc:
            EVENTS[key].append([message["type"], type(exc).__name__, isinstance(exc, OSError)])
    EVENTS[key].append(["receive", (await websocket._receive())["type"]])


@app.websocket("/ws/scope")
async def ws_scope(websocket: WebSocket) -> None:
    scope = websocket.scope
    await websocket.accept()
    await websocket.send_json(
        {
            "type": scope["type"],
            "asgi_version": scope["asgi"]["version"],
            "scheme": scope["scheme"],
            "path": scope["path"],
            "raw_path": scope.get("raw_path", b"").decode(),
            "root_path": scope["root_path"],
            "query_string": scope["query_string"].decode(),
            "http_version": scope["http_version"],
            "subprotocols": scope["subprotocols"],
            "x_custom": websocket.headers.getlist("x-custom"),
            "client_is_pair": len(scope["client"]) == 2,
            "greeting": websocket.state.greeting,
            "denial_extension": "websocket.http.response" in scope.get("extensions", {}),
        }
    )
    await websocket.close()


@app.websocket("/ws/simple")
async def ws_simple(websocket: WebSocket) -> None:
    """The seed's FastAPI example, with ``import trillium as simple_websocket``."""
    ws = await simple_websocket.WebSocketASGI.accept(
        scope=websocket.scope,
        receive=websocket.receive,
        send=websocket.send,
        subprotocols=["chat", "echo"],
    )
    key = websocket.query_params.get("id", "")
    try:
        while True:
            message = await ws.receive()
            await ws.send(f"Echo: {message}")
    except simple_websocket.ConnectionClosed as exc:
        EVENTS[key].append({"closed": exc.reason})
    finally:
        await ws.close()


@app.websocket("/ws/simple-subprotocols")
async def ws_simple_subprotocols(websocket: WebSocket) -> None:
    """The seed's subprotocol negotiation example."""
    ws = await simple_websocket.WebSocketASGI.accept(
        scope=websocket.scope,
        receive=websocket.receive,
        send=websocket.send,
        subprotocols=["chat.v1", "chat.v2", "echo"],
    )
    try:
        if ws.subprotocol == "chat.v1":
            await ws.send("Welcome to Chat v1!")
        elif ws.subprotocol == "chat.v2":
            await ws.send("Welcome to Chat v2 with enhanced features!")
        elif ws.subprotocol == "echo":
            await ws.send("Echo mode activated")
        else:
            await ws.send("No subprotocol selected")
        while True:
            message = await ws.receive()
            if ws.subprotocol == "echo":
                await ws.send(f"Echo: {message}")
            else:
                await ws.send(f"[{ws.subprotocol}] Received: {message}")
    except simple_websocket.ConnectionClosed:
        pass


@app.websocket("/ws/wrapper")
async def ws_wrapper(websocket: WebSocket) -> None:
    """trillium.asgi.WebSocket over the raw ASGI callables (under any server)."""
    ws = TrilliumWebSocket(websocket.scope, websocket._receive, websocket._send)
    await ws.accept()
    try:
        while True:
            data = await ws.receive_json()
            await ws.send_json(
                {
                    "got": data,
                    "q": ws.query_params.get("q"),
                    "path": ws.url.path,
                    "greeting": ws.state.greeting,
                }
            )
    except TrilliumDisconnect:
        pass


class ChannelsStyleConsumer:
    """A Django Channels-style consumer (``scope``, ``receive``, ``send`` attributes,
    ``connect`` and ``disconnect`` hooks, ``as_asgi()``) using the seed's example code."""

    def __init__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope, self.receive, self.send = scope, receive, send

    @classmethod
    def as_asgi(cls) -> Any:
        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            await cls(scope, receive, send).run()

        return asgi

    async def run(self) -> None:
        await self.connect()
        try:
            while True:
                data = await self.ws.receive()
                if isinstance(data, str):
                    response = f"Processed text: {data.upper()}"
                else:
                    response = f"Processed binary data: {len(data)} bytes"
                await self.ws.send(response)
        except simple_websocket.ConnectionClosed as exc:
            await self.disconnect(exc.reason)

    async def connect(self) -> None:
        self.ws = await simple_websocket.WebSocketASGI.accept(
            scope=self.scope, receive=self.receive, send=self.send
        )
        await self.ws.send("Connected to Django Channels via simple-websocket")

    async def disconnect(self, close_code: int) -> None:
        if hasattr(self, "ws"):
            await self.ws.close()


app.mount("/channels", ChannelsStyleConsumer.as_asgi())


# --------------------------------------------------------------------------- Starlette


async def starlette_index(request: Any) -> PlainTextResponse:
    return PlainTextResponse(f"starlette says {request.state.motto}")


async def starlette_example(websocket: Any) -> None:
    """The seed's Starlette example, with ``import trillium as simple_websocket``."""
    ws = await simple_websocket.WebSocketASGI.accept(
        scope=websocket.scope, receive=websocket.receive, send=websocket.send
    )
    try:
        await ws.send("Welcome to the WebSocket server!")
        while True:
            data = await ws.receive()
            if isinstance(data, str):
                await ws.send(f"Text received: {data}")
            elif isinstance(data, bytes):
                await ws.send(f"Binary data received: {len(data)} bytes")
    except simple_websocket.ConnectionClosed:
        pass


async def starlette_echo(websocket: Any) -> None:
    await websocket.accept()
    async for message in websocket.iter_bytes():
        await websocket.send_bytes(message)


@asynccontextmanager
async def starlette_lifespan(_: Any) -> AsyncIterator[dict[str, Any]]:
    yield {"motto": "less is more"}


starlette_app = Starlette(
    routes=[
        Route("/", starlette_index),
        WebSocketRoute("/ws", starlette_example),
        WebSocketRoute("/ws/echo", starlette_echo),
    ],
    lifespan=starlette_lifespan,
)


# --------------------------------------------------------------------------- raw ASGI


async def raw_app(scope: Any, receive: Any, send: Any) -> None:
    """The seed's bare ASGI application (which doesn't speak lifespan)."""
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"Not Found"})
        return
    ws = await simple_websocket.WebSocketASGI.accept(
        scope=scope, receive=receive, send=send, subprotocols=["v1", "v2"]
    )
    message_count = 0
    try:
        await ws.send(f"Connected with subprotocol: {ws.subprotocol}")
        while True:
            data = await ws.receive()
            message_count += 1
            response = {"message_id": message_count, "echo": data, "subprotocol": ws.subprotocol}
            await ws.send(str(response))
    except simple_websocket.ConnectionClosed:
        pass
