"""Benchmark trillium's blocking and asyncio faces against the clients they replace.

What runs. One echo server, in its own process (``trillium.serve`` on trio, keepalive
pings off, no size limit, no compression), and six clients against it in the same
run, interleaved round by round:

* blocking: ``trillium.Client`` (the process-wide trio thread), simple-websocket's
  ``Client`` (a reader thread per connection) and ``websockets.sync.client``;
* asyncio: ``trillium.AioClient`` (the connection manager on asyncio through anyio),
  simple-websocket's ``AioClient`` and ``websockets.asyncio.client``.

Every client has compression off (websockets offers permessage-deflate by default,
the others don't) and keepalive pings off.

What is measured, for each client:

* **Round trip**: one 16 B text message in flight, sent then received back:
  median (p50) and p99 latency in microseconds, and round trips per second.
* **Pipelined**: 64 binary messages sent, then 64 received, repeated: messages per
  second for 16 B and 16 KiB payloads. This is where handing messages between
  threads without a round trip per message matters.

Every echoed message is checked against what was sent. Each cell is the best of the
interleaved rounds (the least disturbed); ratios are against trillium's client of the
same kind (> 1 means trillium is faster).

Usage: ``python benchmarks/faces.py [--quick]`` (``nox -s bench`` runs it). The full
run takes about a minute; ``--quick`` a few seconds, for smoke tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

PIPELINE = 64
SIZES = (16, 16 * 1024)


# --------------------------------------------------------------------- the server


def serve(port_file: str | None) -> None:
    """The echo server (run in a subprocess): prints its URL, echoes until killed."""
    import trio

    import trillium

    async def echo(ws: trillium.ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with trillium.serve(
            echo, "127.0.0.1", 0, ping_interval=None, max_size=None, compression=None
        ) as server:
            port = server.sockets[0].getsockname()[1]
            print(f"ws://127.0.0.1:{port}/", flush=True)
            await server.serve_forever()

    trio.run(main)


# --------------------------------------------------------------------- the clients


@dataclass
class Result:
    p50_us: float = float("inf")
    p99_us: float = float("inf")
    rtt_per_s: float = 0.0
    pipelined: dict[int, float] | None = None  # size -> messages per second


class SyncClient:
    """A blocking client, behind a common interface: send(), recv(), close()."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        if name == "trillium":
            import trillium

            ws: Any = trillium.Client.connect(url)
            self.send, self.recv, self.close = ws.send, ws.receive, ws.close
        elif name == "simple-websocket":
            import simple_websocket

            ws = simple_websocket.Client.connect(url)
            self.send, self.recv, self.close = ws.send, ws.receive, ws.close
        else:
            from websockets.sync.client import connect

            # As a context manager, its documented use (entered here, exited by close).
            ws = connect(url, compression=None, ping_interval=None, max_size=None).__enter__()
            self.send, self.recv, self.close = ws.send, ws.recv, ws.close


class AsyncClient:
    """An asyncio client, behind a common interface."""

    @classmethod
    async def connect(cls, name: str, url: str) -> AsyncClient:
        self = cls()
        self.name = name
        if name == "trillium":
            import trillium

            ws: Any = await trillium.AioClient.connect(url)
            self.send, self.recv, self.close = ws.send, ws.receive, ws.close
        elif name == "simple-websocket":
            import simple_websocket

            ws = await simple_websocket.AioClient.connect(url)
            self.send, self.recv, self.close = ws.send, ws.receive, ws.close
        else:
            from websockets.asyncio.client import connect

            ws = await connect(url, compression=None, ping_interval=None, max_size=None)
            self.send, self.recv, self.close = ws.send, ws.recv, ws.close
        return self


def measure_sync(name: str, url: str, rtts: int, seconds: float) -> Result:
    client = SyncClient(name, url)
    result = Result(pipelined={})
    try:
        for _ in range(50):  # warm up
            client.send("warm")
            assert client.recv() == "warm"
        samples = []
        message = "x" * 16
        for _ in range(rtts):
            t0 = time.perf_counter_ns()
            client.send(message)
            reply = client.recv()
            samples.append(time.perf_counter_ns() - t0)
            assert reply == message
        set_latency(result, samples)
        for size in SIZES:
            payloads = [os.urandom(size) for _ in range(PIPELINE)]
            count = 0
            t0 = time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                for payload in payloads:
                    client.send(payload)
                for payload in payloads:
                    assert client.recv() == payload
                count += PIPELINE
            assert result.pipelined is not None
            result.pipelined[size] = count / elapsed
    finally:
        client.close()
    return result


async def measure_async(name: str, url: str, rtts: int, seconds: float) -> Result:
    client = await AsyncClient.connect(name, url)
    result = Result(pipelined={})
    try:
        for _ in range(50):
            await client.send("warm")
            assert await client.recv() == "warm"
        samples = []
        message = "x" * 16
        for _ in range(rtts):
            t0 = time.perf_counter_ns()
            await client.send(message)
            reply = await client.recv()
            samples.append(time.perf_counter_ns() - t0)
            assert reply == message
        set_latency(result, samples)
        for size in SIZES:
            payloads = [os.urandom(size) for _ in range(PIPELINE)]
            count = 0
            t0 = time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                for payload in payloads:
                    await client.send(payload)
                for payload in payloads:
                    assert await client.recv() == payload
                count += PIPELINE
            assert result.pipelined is not None
            result.pipelined[size] = count / elapsed
    finally:
        await client.close()
    return result


def set_latency(result: Result, samples: list[int]) -> None:
    samples.sort()
    result.p50_us = statistics.median(samples) / 1000
    result.p99_us = samples[int(len(samples) * 0.99) - 1] / 1000
    result.rtt_per_s = 1e9 / statistics.fmean(samples)


def best(a: Result, b: Result) -> Result:
    assert a.pipelined is not None and b.pipelined is not None
    return Result(
        min(a.p50_us, b.p50_us),
        min(a.p99_us, b.p99_us),
        max(a.rtt_per_s, b.rtt_per_s),
        {size: max(a.pipelined.get(size, 0), b.pipelined[size]) for size in b.pipelined},
    )


# --------------------------------------------------------------------- the report

CLIENTS = ("trillium", "simple-websocket", "websockets")


def render(kind: str, results: dict[str, Result]) -> str:
    ref = results["trillium"]
    assert ref.pipelined is not None
    header = ["client", "p50 µs", "p99 µs", "round trips/s"]
    header += [f"pipelined {size_label(s)} msg/s" for s in SIZES]
    rows = [header, ["---"] * len(header)]
    for name in CLIENTS:
        r = results[name]
        assert r.pipelined is not None
        row = [f"{kind} {name}", f"{r.p50_us:.0f}", f"{r.p99_us:.0f}", f"{r.rtt_per_s:,.0f}"]
        for size in SIZES:
            row.append(f"{r.pipelined[size]:,.0f}")
        if name != "trillium":
            row[1] += f" ({r.p50_us / ref.p50_us:.2f}x)"
            row[3] += f" ({ref.rtt_per_s / r.rtt_per_s:.2f}x)"
            for i, size in enumerate(SIZES):
                row[4 + i] += f" ({ref.pipelined[size] / r.pipelined[size]:.2f}x)"
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (smoke test)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(None)
        return
    rounds, rtts, seconds = (1, 300, 0.2) if args.quick else (3, 3000, 1.0)

    import trillium

    started = time.perf_counter()
    print(f"# trillium faces benchmark{' (--quick)' if args.quick else ''}\n")
    print(f"- Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs")
    print(
        f"- trillium {trillium.__version__}, simple-websocket {version('simple-websocket')}, "
        f"websockets {version('websockets')}"
    )
    print(
        f"- one trillium echo server (trio) in its own process; best of {rounds} "
        f"interleaved rounds; {rtts} round trips and {seconds:.1f} s per pipelined cell\n"
    )
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        blocking: dict[str, Result] = {}
        aio: dict[str, Result] = {}
        for _ in range(rounds):
            for name in CLIENTS:
                got = measure_sync(name, url, rtts, seconds)
                blocking[name] = best(blocking[name], got) if name in blocking else got
            for name in CLIENTS:
                got = asyncio.run(measure_async(name, url, rtts, seconds))
                aio[name] = best(aio[name], got) if name in aio else got
    finally:
        server.kill()
        server.wait()
    print("## Blocking clients (ratios: how many times trillium.Client is faster)\n")
    print(render("sync", blocking))
    print("\n## asyncio clients (ratios: how many times trillium.AioClient is faster)\n")
    print(render("asyncio", aio))
    print(f"\nAll echoes matched what was sent. (total time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
