"""``AioServer.accept(aiohttp=request)`` in a real aiohttp app on loopback, driven by
trillium's AioClient and Client and by the ``websockets`` client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from websockets.asyncio.client import connect as websockets_connect

import trillium

TIMEOUT = 15


def make_app(events: list[Any]) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        ws = await trillium.AioServer.accept(
            aiohttp=request, subprotocols=["chat"], max_message_size=1000
        )
        events.append(("subprotocol", ws.subprotocol, ws.mode))
        try:
            while True:
                message = await ws.receive()
                if message == "close please":
                    await ws.close(4000, "as asked")
                    break
                await ws.send(message)
        except trillium.ConnectionClosed as exc:
            events.append(("closed", exc.reason, exc.message))
        return web.Response()

    async def pinger(request: web.Request) -> web.StreamResponse:
        ws = await trillium.AioServer.accept(aiohttp=request, ping_interval=0.2)
        try:
            await ws.receive(timeout=5)
        except trillium.ConnectionClosed:
            events.append(("ping timeout",))
        return web.Response()

    async def plain(request: web.Request) -> web.StreamResponse:
        return web.Response(text="plain HTTP still works")

    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/ping", pinger)
    app.router.add_get("/", plain)
    return app


@asynccontextmanager
async def aiohttp_server(events: list[Any]) -> AsyncIterator[str]:
    runner = web.AppRunner(make_app(events))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"ws://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


async def wait_for(events: list[Any], event: Any) -> None:
    while event not in events:
        await asyncio.sleep(0.01)


def test_aio_client() -> None:
    async def main() -> None:
        events: list[Any] = []
        async with aiohttp_server(events) as base:
            ws = await trillium.AioClient.connect(base + "/ws", subprotocols=["chat"])
            assert ws.subprotocol == "chat"
            for message in ("hello", b"\x00binary", "é" * 300):
                await ws.send(message)
                assert await ws.receive(timeout=5) == message
            await ws.close(1000, "bye")
            await wait_for(events, ("closed", 1000, "bye"))
            # The takeover left aiohttp able to serve plain requests afterwards.
            reader, writer = await asyncio.open_connection("127.0.0.1", int(base.split(":")[-1]))
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert b"plain HTTP still works" in await reader.read()
            writer.close()
        assert ("subprotocol", "chat", "aiohttp") in events

    run(main())


def test_server_close_and_max_message_size() -> None:
    async def main() -> None:
        events: list[Any] = []
        async with aiohttp_server(events) as base:
            ws = await trillium.AioClient.connect(base + "/ws")
            await ws.send("close please")
            with pytest.raises(trillium.ConnectionClosed) as info:
                await ws.receive(timeout=5)
            assert (info.value.reason, info.value.message) == (4000, "as asked")

            ws = await trillium.AioClient.connect(base + "/ws")
            await ws.send("x" * 1001)  # the server's max_message_size is 1000
            with pytest.raises(trillium.ConnectionClosed) as info:
                await ws.receive(timeout=5)
            assert info.value.reason == 1009

    run(main())


def test_server_ping_interval_drops_a_silent_client() -> None:
    async def main() -> None:
        events: list[Any] = []
        async with aiohttp_server(events) as base:
            port = int(base.split(":")[-1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"GET /ping HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            # Never answer the pings: the server gives up after one interval.
            await wait_for(events, ("ping timeout",))
            writer.close()

    run(main())


def test_websockets_client() -> None:
    async def main() -> None:
        events: list[Any] = []
        async with aiohttp_server(events) as base:
            async with websockets_connect(base + "/ws", subprotocols=["chat"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "chat"
                assert ws.response is not None  # deflate offered, and accepted
                assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
                await ws.send("text")
                assert await ws.recv() == "text"
                await ws.send(b"bin")
                assert await ws.recv() == b"bin"
                await ws.send("compressible " * 50)  # the server's limit is 1000 bytes
                assert await ws.recv() == "compressible " * 50
            await wait_for(events, ("closed", 1000, ""))

    run(main())


def test_blocking_client() -> None:
    async def main() -> None:
        events: list[Any] = []
        async with aiohttp_server(events) as base:

            def talk() -> None:
                with trillium.Client.connect(base + "/ws") as ws:
                    ws.send("from a thread")
                    assert ws.receive(timeout=5) == "from a thread"
                    ws.send(b"\x01")
                    assert ws.receive(timeout=5) == b"\x01"

            await asyncio.to_thread(talk)
            await wait_for(events, ("closed", 1000, ""))

    run(main())
