"""``AioServer.accept(asgi=(scope, receive, send))`` in FastAPI and Starlette apps
served by uvicorn on loopback, driven by trillium's AioClient and Client and by the
``websockets`` client. The ASGI server does the framing; trillium maps
simple-websocket's calls onto ASGI messages."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi import WebSocket as FastAPIWebSocket
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket as StarletteWebSocket
from websockets.asyncio.client import connect as websockets_connect

import trillium

TIMEOUT = 15


async def session(ws: trillium.AioServer, events: list[Any], timeout: float) -> None:
    """The app's conversation, the same in both frameworks."""
    events.append(("accepted", ws.mode, ws.subprotocol))
    try:
        while True:
            message = await ws.receive(timeout=timeout)
            if message is None:
                events.append(("receive timed out",))
                await ws.send("anyone there?")
            elif message == "close please":
                await ws.close(4000, "as asked")
                return
            else:
                await ws.send(message)
    except trillium.ConnectionClosed as exc:
        events.append(("closed", exc.reason))


async def late_sender(ws: trillium.AioServer, events: list[Any]) -> None:
    """Sends once the client is surely gone."""
    await asyncio.sleep(0.3)
    try:
        await ws.send("too late")
    except trillium.ConnectionClosed:
        events.append(("send after the client left raised ConnectionClosed",))


def fastapi_app(events: list[Any]) -> Any:
    app = FastAPI()

    @app.websocket("/late")
    async def late(websocket: FastAPIWebSocket) -> None:
        ws = await trillium.AioServer.accept(
            asgi=(websocket.scope, websocket.receive, websocket.send)
        )
        await late_sender(ws, events)

    @app.websocket("/ws")
    async def endpoint(websocket: FastAPIWebSocket) -> None:
        ws = await trillium.AioServer.accept(
            asgi=(websocket.scope, websocket.receive, websocket.send),
            subprotocols=["chat"],
            max_message_size=1000,
        )
        await session(ws, events, float(websocket.query_params.get("timeout", 30)))

    return app


def starlette_app(events: list[Any]) -> Any:
    async def endpoint(websocket: StarletteWebSocket) -> None:
        ws = await trillium.AioServer.accept(
            asgi=(websocket.scope, websocket.receive, websocket.send),
            subprotocols=["chat"],
            max_message_size=1000,
        )
        await session(ws, events, float(websocket.query_params.get("timeout", 30)))

    async def late(websocket: StarletteWebSocket) -> None:
        ws = await trillium.AioServer.accept(
            asgi=(websocket.scope, websocket.receive, websocket.send)
        )
        await late_sender(ws, events)

    return Starlette(routes=[WebSocketRoute("/ws", endpoint), WebSocketRoute("/late", late)])


@asynccontextmanager
async def uvicorn_server(app: Any) -> AsyncIterator[str]:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield f"ws://127.0.0.1:{port}/ws"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


APPS = {"fastapi": fastapi_app, "starlette": starlette_app}


async def wait_for(events: list[Any], event: Any) -> None:
    while event not in events:
        await asyncio.sleep(0.01)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


@pytest.mark.parametrize("framework", APPS)
def test_aio_client(framework: str) -> None:
    async def main() -> None:
        events: list[Any] = []
        async with uvicorn_server(APPS[framework](events)) as url:
            ws = await trillium.AioClient.connect(url, subprotocols=["chat"])
            assert ws.subprotocol == "chat"
            for message in ("hello", b"\x00binary", "é" * 300):
                await ws.send(message)
                assert await ws.receive(timeout=5) == message
            await ws.close(1000)
            await wait_for(events, ("closed", 1000))
        assert ("accepted", "asgi", "chat") in events

    run(main())


@pytest.mark.parametrize("framework", APPS)
def test_limits_and_server_close(framework: str) -> None:
    async def main() -> None:
        events: list[Any] = []
        async with uvicorn_server(APPS[framework](events)) as url:
            # The app's receive(timeout=0.3) times out, and the connection goes on.
            ws = await trillium.AioClient.connect(url + "?timeout=0.3")
            assert await ws.receive(timeout=5) == "anyone there?"
            await ws.send("still here")
            assert await ws.receive(timeout=5) == "still here"
            # The app closes with a code and reason.
            await ws.send("close please")
            with pytest.raises(trillium.ConnectionClosed) as info:
                await ws.receive(timeout=5)
            assert (info.value.reason, info.value.message) == (4000, "as asked")
            # max_message_size=1000: the app closes with 1009.
            ws = await trillium.AioClient.connect(url)
            await ws.send(b"x" * 1001)
            with pytest.raises(trillium.ConnectionClosed) as info:
                await ws.receive(timeout=5)
            assert info.value.reason == 1009

    run(main())


@pytest.mark.parametrize("framework", APPS)
def test_websockets_and_blocking_clients(framework: str) -> None:
    async def main() -> None:
        events: list[Any] = []
        async with uvicorn_server(APPS[framework](events)) as url:
            async with websockets_connect(url, subprotocols=["chat"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "chat"
                await ws.send("text")
                assert await ws.recv() == "text"
                await ws.send(b"bin")
                assert await ws.recv() == b"bin"
            await wait_for(events, ("closed", 1000))

            def talk() -> None:
                with trillium.Client.connect(url) as ws:
                    ws.send("from a thread")
                    assert ws.receive(timeout=5) == "from a thread"

            await asyncio.to_thread(talk)
            while events.count(("closed", 1000)) < 2:
                await asyncio.sleep(0.01)

    run(main())


@pytest.mark.parametrize("framework", APPS)
def test_send_after_the_client_left_raises_connection_closed(framework: str) -> None:
    async def main() -> None:
        events: list[Any] = []
        async with uvicorn_server(APPS[framework](events)) as url:
            ws = await trillium.AioClient.connect(url.replace("/ws", "/late"))
            await ws.close()
            await wait_for(events, ("send after the client left raised ConnectionClosed",))

    run(main())
