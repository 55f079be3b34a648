"""Client libraries under the same pipelined echo load, for ``benchmarks/echo.py``.

Usage: ``python benchmarks/echo_clients.py NAME PORT SIZE INFLIGHT WARMUP DURATION
MAX_MESSAGES``; prints one JSON object: ``messages``, ``elapsed`` and ``cpu`` (this
process's ``time.process_time()`` over the measured window).

Here the server is fixed (picows, the cheapest server of the run, started by the
orchestrator) and the client library is what changes: each client keeps INFLIGHT binary
messages of SIZE bytes outstanding on one connection, with one task sending (as long
as the credit allows) and the main task receiving (returning one credit per echo), so
neither direction can block the other. picows, callback-based, sends the next message
from its frame callback. Compression off, keepalive pings off, size
limits lifted, as on the servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any


class Meter:
    """Counts echoes: warm-up, then a window bounded in time and in messages."""

    def __init__(self, warmup: float, duration: float, max_messages: int) -> None:
        self.warmup = warmup
        self.duration = duration
        self.max_messages = max_messages
        self.count = 0
        self.began = time.perf_counter()
        self.measuring = False
        self.t0 = self.c0 = self.p0 = 0.0
        self.result: dict[str, Any] = {}

    def tick(self) -> bool:
        """One echo received; True once the window is over."""
        self.count += 1
        now = time.perf_counter()
        if not self.measuring:
            if now - self.began >= self.warmup:
                self.measuring = True
                self.t0, self.c0, self.p0 = now, self.count, time.process_time()
            return False
        if now - self.t0 >= self.duration or self.count - self.c0 >= self.max_messages:
            self.result = {
                "messages": self.count - self.c0,
                "elapsed": now - self.t0,
                "cpu": time.process_time() - self.p0,
            }
            return True
        return False


class Credit:
    """How many more messages the sender may send: one back per echo received.

    The sender takes all the credit there is at once and only waits (on the
    framework's own Event) when there is none, so the harness adds a few
    instructions per message and one wake-up per batch, whatever the library.
    """

    def __init__(self, n: int, make_event: Callable[[], Any]) -> None:
        self.n = n
        self.make_event = make_event
        self.event: Any = None
        self.sent = 0
        self.stopped = False

    def give(self) -> None:
        self.n += 1
        if self.event is not None:
            self.event.set()
            self.event = None

    async def take(self) -> int:
        while not self.n:
            self.event = self.make_event()
            await self.event.wait()
        n, self.n = self.n, 0
        return n


async def sender(send: Callable[[bytes], Awaitable[Any]], payload: bytes, credit: Credit) -> None:
    while True:
        for _ in range(await credit.take()):
            if credit.stopped:
                return
            credit.sent += 1
            await send(payload)


async def receiver(recv: Callable[[], Awaitable[Any]], credit: Credit, meter: Meter) -> None:
    """Receive until the window is over, then stop sending and drain what is in flight.

    Draining matters: closing with echoes still unread would leave the closing
    handshake stuck behind them (the reader stops at ``max_queue``) until
    ``close_timeout``.
    """
    while True:
        await recv()
        credit.give()
        if meter.tick():
            break
    credit.stopped = True
    while meter.count < credit.sent:
        await recv()
        meter.count += 1


async def trillium_client(uri: str, size: int, inflight: int, meter: Meter) -> None:
    """trillium.connect; the same code runs on trio and (through anyio) on asyncio."""
    import anyio
    import sniffio
    import trio

    import trillium

    payload = os.urandom(size)
    # The event loop's own Event, as for the other clients (anyio's wraps it: a
    # sniffio lookup and a wrapper object per wake-up, which is the harness's cost,
    # not the library's).
    event = trio.Event if sniffio.current_async_library() == "trio" else asyncio.Event
    async with trillium.connect(uri, ping_interval=None, max_size=None) as ws:
        credit = Credit(inflight, event)
        async with anyio.create_task_group() as tg:
            tg.start_soon(sender, ws.send, payload, credit)
            await receiver(ws.recv, credit, meter)
            tg.cancel_scope.cancel()


async def asyncio_pipeline(
    send: Callable[[bytes], Awaitable[Any]],
    recv: Callable[[], Awaitable[Any]],
    payload: bytes,
    inflight: int,
    meter: Meter,
) -> None:
    credit = Credit(inflight, asyncio.Event)
    task = asyncio.create_task(sender(send, payload, credit))
    try:
        await receiver(recv, credit, meter)
    finally:
        task.cancel()


async def websockets_client(uri: str, size: int, inflight: int, meter: Meter) -> None:
    from websockets.asyncio.client import connect

    payload = os.urandom(size)
    async with connect(uri, compression=None, max_size=None, ping_interval=None, proxy=None) as ws:
        await asyncio_pipeline(ws.send, ws.recv, payload, inflight, meter)


async def aiohttp_client(uri: str, size: int, inflight: int, meter: Meter) -> None:
    import aiohttp

    payload = os.urandom(size)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(uri, compress=0, max_msg_size=0) as ws,
    ):

        async def recv() -> None:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise RuntimeError(f"unexpected {msg.type}")

        await asyncio_pipeline(ws.send_bytes, recv, payload, inflight, meter)


async def trio_websocket_client(uri: str, size: int, inflight: int, meter: Meter) -> None:
    import trio
    from trio_websocket import open_websocket_url

    payload = os.urandom(size)
    async with open_websocket_url(uri, max_message_size=2**31) as ws:
        credit = Credit(inflight, trio.Event)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, ws.send_message, payload, credit)
            await receiver(ws.get_message, credit, meter)
            nursery.cancel_scope.cancel()


async def picows_client(uri: str, size: int, inflight: int, meter: Meter) -> None:
    """picows is callback-based: each echo received sends the next message."""
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    payload = os.urandom(size)
    done = asyncio.Event()

    class Client(WSListener):  # type: ignore[misc]
        sent = 0
        stopped = False

        def on_ws_connected(self, transport: WSTransport) -> None:
            for _ in range(inflight):
                transport.send(WSMsgType.BINARY, payload)
            self.sent = inflight

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type != WSMsgType.BINARY:
                return
            if self.stopped:
                meter.count += 1
            elif meter.tick():
                self.stopped = True
            else:
                transport.send(WSMsgType.BINARY, payload)
                self.sent += 1
            if self.stopped and meter.count >= self.sent:
                done.set()
                transport.send_close()
                transport.disconnect()

    transport, _ = await ws_connect(Client, uri, max_frame_size=2**31)
    await done.wait()
    await transport.wait_disconnected()


def run_trio(fn: Callable[..., Any], *args: Any) -> None:
    import trio

    trio.run(fn, *args)


def run_asyncio(fn: Callable[..., Any], *args: Any) -> None:
    asyncio.run(fn(*args))


def run_anyio_asyncio(fn: Callable[..., Any], *args: Any) -> None:
    import anyio

    anyio.run(fn, *args, backend="asyncio")


CLIENTS: dict[str, tuple[Callable[..., None], Callable[..., Any]]] = {
    "trillium": (run_trio, trillium_client),
    "trillium-asyncio": (run_anyio_asyncio, trillium_client),
    "trio-websocket": (run_trio, trio_websocket_client),
    "websockets": (run_asyncio, websockets_client),
    "aiohttp": (run_asyncio, aiohttp_client),
    "picows": (run_asyncio, picows_client),
}


def main() -> None:
    name, port, size, inflight = sys.argv[1], *map(int, sys.argv[2:5])
    warmup, duration = float(sys.argv[5]), float(sys.argv[6])
    meter = Meter(warmup, duration, int(sys.argv[7]))
    runner, client = CLIENTS[name]
    runner(client, f"ws://127.0.0.1:{port}/", size, inflight, meter)
    print(json.dumps(meter.result))


if __name__ == "__main__":
    main()
