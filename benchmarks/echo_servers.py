"""The servers that ``benchmarks/echo.py`` measures, one per process.

Usage: ``python benchmarks/echo_servers.py NAME MODE`` where MODE is

* ``echo``: every message is sent back as received (binary stays binary);
* ``fanout``: messages are not echoed; a connection that sends the binary message
  ``b"go"`` makes the server send one 16-byte binary message to every open connection
  (the library's broadcast helper where it has one, else a loop of sends). The first
  8 bytes are ``time.monotonic_ns()`` taken just before the broadcast starts, so the
  load generator (same machine, same clock) can time the fan-out.

The server listens on 127.0.0.1 on a free port, prints ``PORT <n>`` on stdout once it
accepts connections, and runs until killed. Every server has compression off,
keepalive pings off and message size limits lifted; everything else is the library's
default. Logging is silenced so that no server pays for log lines the others don't.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import resource
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
GO = b"go"
BIG = 2**31  # a message size limit nothing here reaches


def stamp() -> bytes:
    """The fan-out message: the send time, then padding to 16 bytes."""
    return struct.pack("!Q", time.monotonic_ns()) + bytes(8)


def listening(port: int) -> None:
    print(f"PORT {port}", flush=True)


# --------------------------------------------------------------------- trillium


async def trillium_server(mode: str) -> None:
    """trillium.serve; the same coroutine runs on trio and, through anyio, on asyncio."""
    import trillium

    async def echo(ws: trillium.ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def fanout(ws: trillium.ServerConnection) -> None:
        async for message in ws:
            if message == GO:
                trillium.broadcast(server.connections, stamp())

    handler = echo if mode == "echo" else fanout
    async with trillium.serve(
        handler, HOST, 0, ping_interval=None, max_size=None, compression=None
    ) as server:
        listening(server.sockets[0].getsockname()[1])
        await server.serve_forever()


# --------------------------------------------------------------------- trio-websocket


async def trio_websocket_server(mode: str) -> None:
    import trio
    from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

    clients: set[Any] = set()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        clients.add(ws)
        try:
            while True:
                message = await ws.get_message()
                if mode == "echo":
                    await ws.send_message(message)
                elif message == GO:
                    payload = stamp()
                    for client in list(clients):  # no broadcast helper: a loop of sends
                        with contextlib.suppress(ConnectionClosed):
                            await client.send_message(payload)
        except ConnectionClosed:
            pass
        finally:
            clients.discard(ws)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_websocket(
                handler, HOST, 0, None, max_message_size=BIG, task_status=task_status
            )
        )
        listening(server.port)


# --------------------------------------------------------------------- websockets


async def websockets_server(mode: str) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def fanout(ws: ServerConnection) -> None:
        async for message in ws:
            if message == GO:
                broadcast(server.connections, stamp())

    handler = echo if mode == "echo" else fanout
    async with serve(
        handler, HOST, 0, compression=None, ping_interval=None, max_size=None
    ) as server:
        listening(server.sockets[0].getsockname()[1])
        await server.serve_forever()


# --------------------------------------------------------------------- aiohttp


async def aiohttp_server(mode: str) -> None:
    from aiohttp import WSMsgType, web

    clients: set[web.WebSocketResponse] = set()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        clients.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    if mode == "echo":
                        await ws.send_bytes(msg.data)
                    elif msg.data == GO:
                        payload = stamp()
                        for client in list(clients):  # no broadcast helper
                            if not client.closed:
                                await client.send_bytes(payload)
                elif msg.type == WSMsgType.TEXT and mode == "echo":
                    await ws.send_str(msg.data)
        finally:
            clients.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    listening(runner.addresses[0][1])
    await asyncio.Event().wait()


# --------------------------------------------------------------------- picows


async def picows_server(mode: str) -> None:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    clients: set[WSTransport] = set()
    data_types = (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION)

    class Echo(WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: WSTransport) -> None:
            clients.add(transport)

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            clients.discard(transport)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            kind = frame.msg_type
            if kind in data_types:
                if mode == "echo":
                    transport.send(kind, frame.get_payload_as_memoryview(), frame.fin)
                elif frame.get_payload_as_bytes() == GO:
                    payload = stamp()
                    for client in list(clients):  # no broadcast helper
                        client.send(WSMsgType.BINARY, payload)
            elif kind == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

    server = await ws_create_server(
        lambda request: Echo(), HOST, 0, max_frame_size=BIG, websocket_handshake_timeout=None
    )
    listening(server.sockets[0].getsockname()[1])
    await server.serve_forever()


# --------------------------------------------------------------------- raw TCP


async def raw_trio_server(mode: str) -> None:
    """Bytes in, the same bytes out: the floor under any trio WebSocket server."""
    import trio

    async def echo(stream: trio.SocketStream) -> None:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host=HOST))
        listening(listeners[0].socket.getsockname()[1])


async def raw_asyncio_server(mode: str) -> None:
    """asyncio's fastest echo: a Protocol that writes back what it receives."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    server = await asyncio.get_running_loop().create_server(Echo, HOST, 0)
    listening(server.sockets[0].getsockname()[1])
    await server.serve_forever()


# --------------------------------------------------------------------- main


def run_trio(fn: Callable[[str], Any], mode: str) -> None:
    import trio

    trio.run(fn, mode)


def run_asyncio(fn: Callable[[str], Any], mode: str) -> None:
    asyncio.run(fn(mode))


def run_anyio_asyncio(fn: Callable[[str], Any], mode: str) -> None:
    import anyio

    anyio.run(fn, mode, backend="asyncio")


SERVERS: dict[str, tuple[Callable[[Callable[[str], Any], str], None], Callable[[str], Any]]] = {
    "trillium": (run_trio, trillium_server),
    "trillium-asyncio": (run_anyio_asyncio, trillium_server),
    "trio-websocket": (run_trio, trio_websocket_server),
    "websockets": (run_asyncio, websockets_server),
    "aiohttp": (run_asyncio, aiohttp_server),
    "picows": (run_asyncio, picows_server),
    "raw-trio": (run_trio, raw_trio_server),
    "raw-asyncio": (run_asyncio, raw_asyncio_server),
}


def main() -> None:
    name, mode = sys.argv[1], sys.argv[2]
    if mode not in ("echo", "fanout"):
        sys.exit(f"unknown mode {mode!r}")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logging.disable(logging.CRITICAL)
    runner, server = SERVERS[name]
    runner(server, mode)


if __name__ == "__main__":
    main()
