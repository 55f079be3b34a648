"""Compressed echo benchmark: trillium against websockets, both with permessage-deflate.

What runs. Each server is its own process (this file, ``--serve NAME SETTINGS``) on
127.0.0.1, echoing every message as received, keepalive pings off, size limits lifted:
trillium (``trillium.serve`` on trio) and websockets (``websockets.asyncio.server``).
Both compress, with two settings:

* ``default``: each library's ``compression="deflate"`` default, untouched;
* ``same``: the same parameters spelled out for both: 12-bit windows both ways,
  zlib memLevel 5, level 6, context takeover on.

(Today both libraries' defaults happen to be exactly these; ``same`` keeps the
comparison fair should either default change.)

The load generator is this process: one connection per cell, raw non-blocking
socket, no WebSocket library. It offers ``permessage-deflate; client_max_window_bits``,
honours the answer, and compresses a cycle of 64 distinct messages **once**, in order,
with one compressor (context takeover included: replaying the cycle is valid, since
its first message refers to nothing before it and each later one only to those before
it in the cycle). So the client's work per message is a masked ``send`` of prepared
bytes, the same for both servers, and the servers do all the compression work: inflate
each message, then deflate it back. Replies are counted from frame headers; before
timing, the first cycle's replies are inflated and checked against what was sent.

The messages: **1 KiB of JSON-like text** (64 distinct records) and **64 KiB of text**
(log-like lines), sent as text messages, 32 and 8 in flight respectively.

Measured per cell over a timed window after a warm-up: messages per second, the
server's CPU per message (``utime + stime`` from ``/proc/<pid>/stat``), the
generator's CPU per message, and the bytes per message on the wire each way (so a
server that compressed less, and so worked less, would show). Rounds interleave
servers, settings and sizes; the best round of each cell is reported. The target
(throughput at least that of websockets, in every cell) is printed PASS or MISS.

Usage: ``python benchmarks/compression.py [--quick]`` (about 90 s; ``--quick``
about 15 s).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import random
import selectors
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
HERE = Path(__file__).resolve()
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = ["trillium", "websockets"]
SETTINGS = ["default", "same"]
CYCLE = 64  # distinct messages, compressed once and replayed
KEY = base64.b64encode(b"trillium-deflate").decode()
ACCEPT = base64.b64encode(
    hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
).decode()
TAIL = b"\x00\x00\xff\xff"


# --------------------------------------------------------------------- the servers


async def trillium_server(settings: str) -> None:
    import trillium
    from trillium.core.deflate import ServerPerMessageDeflateFactory

    async def echo(ws: trillium.ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    compression: Any = "deflate"
    if settings == "same":
        compression = ServerPerMessageDeflateFactory(
            server_max_window_bits=12, client_max_window_bits=12, mem_level=5, level=6
        )
    async with trillium.serve(
        echo, HOST, 0, compression=compression, ping_interval=None, max_size=None
    ) as server:
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()


async def websockets_server(settings: str) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    kwargs: dict[str, Any] = {"compression": "deflate"}
    if settings == "same":
        factory = ServerPerMessageDeflateFactory(
            server_max_window_bits=12,
            client_max_window_bits=12,
            compress_settings={"memLevel": 5, "level": 6},
        )
        kwargs = {"compression": None, "extensions": [factory]}
    async with serve(echo, HOST, 0, ping_interval=None, max_size=None, **kwargs) as server:
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await server.serve_forever()


def serve(name: str, settings: str) -> None:
    import logging

    logging.disable(logging.CRITICAL)
    if name == "trillium":
        import trio

        trio.run(trillium_server, settings)
    else:
        import asyncio

        asyncio.run(websockets_server(settings))


class Server:
    """A server process, started and stopped by the orchestrator."""

    def __init__(self, name: str, settings: str) -> None:
        self.name, self.settings = name, settings
        self.process = subprocess.Popen(
            [sys.executable, str(HERE), "--serve", name, settings],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"{name} server didn't start: {line!r}")
        self.port = int(line.split()[1])

    def cpu(self) -> float:
        """The server's CPU seconds so far (user + system, all threads)."""
        with open(f"/proc/{self.process.pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --------------------------------------------------------------------- the messages


def json_messages(size: int) -> list[bytes]:
    """CYCLE distinct JSON-like records of exactly ``size`` bytes."""
    rng = random.Random(1)
    names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
    out = []
    for i in range(CYCLE):
        items = []
        while len(json.dumps(items)) < size:
            items.append(
                {
                    "id": 1000 * i + len(items),
                    "user": rng.choice(names),
                    "score": round(rng.random() * 100, 2),
                    "active": rng.random() < 0.5,
                    "tags": rng.sample(["red", "green", "blue", "new", "vip", "beta"], 2),
                }
            )
        out.append(json.dumps(items).encode()[: size - 1] + b"]")
    return out


def text_messages(size: int) -> list[bytes]:
    """CYCLE distinct texts of exactly ``size`` bytes: log-like lines."""
    rng = random.Random(2)
    words = [
        "the",
        "server",
        "client",
        "message",
        "frame",
        "request",
        "response",
        "error",
        "ok",
        "timeout",
    ]
    levels = ["INFO", "DEBUG", "WARN"]
    out = []
    for i in range(CYCLE):
        lines = []
        n = 0
        while n < size:
            line = (
                f"2024-05-{1 + i % 28:02d}T12:{rng.randrange(60):02d}:{rng.randrange(60):02d} "
                f"{rng.choice(levels)} conn={rng.randrange(10000)} "
                + " ".join(rng.choices(words, k=rng.randint(4, 10)))
                + "\n"
            )
            lines.append(line)
            n += len(line)
        out.append("".join(lines).encode()[:size])
    return out


SIZES = {
    "1 KiB JSON": (json_messages, 1024, 32),
    "64 KiB text": (text_messages, 65536, 8),
}


# --------------------------------------------------------------------- the load generator


def client_frame(payload: bytes, *, rsv1: bool, opcode: int = 0x1) -> bytes:
    """One FIN frame, masked with a fresh key, as a client must."""
    b0 = 0x80 | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", b0, 0x80 | 127, n)
    key = os.urandom(4)
    keys = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(
        n, "little"
    )
    return header + key + masked


@dataclass
class Params:
    """The negotiated permessage-deflate parameters, from the server's answer."""

    client_bits: int = 15
    server_bits: int = 15
    client_no_context_takeover: bool = False
    server_no_context_takeover: bool = False

    @classmethod
    def parse(cls, head: str) -> Params:
        for line in head.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                break
        else:
            raise RuntimeError(f"the server didn't accept permessage-deflate:\n{head}")
        params = cls()
        for item in value.split(";")[1:]:
            key, _, val = item.strip().partition("=")
            if key == "client_max_window_bits":
                params.client_bits = int(val)
            elif key == "server_max_window_bits":
                params.server_bits = int(val)
            elif key == "client_no_context_takeover":
                params.client_no_context_takeover = True
            elif key == "server_no_context_takeover":
                params.server_no_context_takeover = True
        return params


class Connection:
    """One compressed WebSocket connection driven by hand."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = (
            f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the server closed during the handshake")
            buffer += chunk
        head, _, self.buffer = buffer.partition(b"\r\n\r\n")
        text = head.decode()
        if not text.startswith("HTTP/1.1 101") or ACCEPT not in text:
            raise RuntimeError(f"handshake refused:\n{text}")
        self.params = Params.parse(text)
        self.payload_bytes = 0  # of the compressed cycle
        self.sock.setblocking(False)

    def compress_cycle(self, messages: list[bytes]) -> list[bytes]:
        """The messages as masked compressed frames, in order, with context takeover
        unless the server asked us not to."""
        bits = self.params.client_bits
        compressor = zlib.compressobj(6, zlib.DEFLATED, -bits, 8)
        frames = []
        for message in messages:
            if self.params.client_no_context_takeover:
                compressor = zlib.compressobj(6, zlib.DEFLATED, -bits, 8)
            data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
            assert data.endswith(TAIL)
            frames.append(client_frame(data[:-4], rsv1=True))
            self.payload_bytes += len(data) - 4
        return frames

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(client_frame(struct.pack("!H", 1000), rsv1=False, opcode=0x8))
        except OSError:
            pass
        self.sock.close()


class Replies:
    """Server frames, parsed from a byte stream: headers always, payloads on request."""

    def __init__(self, initial: bytes) -> None:
        self.buffer = bytearray(initial)
        self.messages = 0
        self.wire_bytes = 0  # payload bytes of the data frames received
        self.keep: list[tuple[int, bytes]] | None = None  # (rsv1, payload) when checking

    def feed(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if n - start < length:
                break
            opcode = b0 & 0x0F
            if opcode < 0x8:
                self.wire_bytes += length
                if self.keep is not None:
                    self.keep.append((b0 & 0x40, bytes(buf[start : start + length])))
                if b0 & 0x80:
                    self.messages += 1
            pos = start + length
        del buf[:pos]


def run_cell(port: int, messages: list[bytes], depth: int, warmup: float, duration: float,
             server: Server) -> dict[str, float]:  # fmt: skip
    """Echo ``messages`` (cycled) on one connection; measure the timed window."""
    conn = Connection(port)
    frames = conn.compress_cycle(messages)
    replies = Replies(conn.buffer)
    sel = selectors.DefaultSelector()
    sel.register(conn.sock, selectors.EVENT_READ)
    out = bytearray()
    sent = 0

    def pump(until_messages: int | None, until_time: float | None) -> None:
        nonlocal sent
        writing = False
        while True:
            if until_messages is not None and replies.messages >= until_messages:
                return
            if until_time is not None and time.perf_counter() >= until_time:
                return
            limit = until_messages if until_messages is not None else sent + depth
            while sent - replies.messages < depth and sent < limit:
                out.extend(frames[sent % CYCLE])
                sent += 1
            if out and not writing:
                sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
                writing = True
            elif not out and writing:
                sel.modify(conn.sock, selectors.EVENT_READ)
                writing = False
            events = sel.select(5)
            if not events:
                raise RuntimeError(f"{server.name}: no progress for 5 s")
            for _, mask in events:
                if mask & selectors.EVENT_WRITE and out:
                    try:
                        n = conn.sock.send(out)
                    except BlockingIOError:
                        n = 0
                    del out[:n]
                if mask & selectors.EVENT_READ:
                    try:
                        data = conn.sock.recv(1 << 20)
                    except BlockingIOError:
                        continue
                    if not data:
                        raise RuntimeError(f"{server.name} closed the connection")
                    replies.feed(data)

    # Check: the first cycle's echoes, inflated as the server's parameters say.
    replies.keep = []
    pump(CYCLE, None)
    decoder = zlib.decompressobj(wbits=-conn.params.server_bits)
    for i, (rsv1, payload) in enumerate(replies.keep):
        if not rsv1:
            raise RuntimeError(f"{server.name} sent echo {i} uncompressed")
        if conn.params.server_no_context_takeover:
            decoder = zlib.decompressobj(wbits=-conn.params.server_bits)
        if decoder.decompress(payload + TAIL) != messages[i]:
            raise RuntimeError(f"{server.name} echoed message {i} wrong")
    replies.keep = None

    # Warm up, then time a window (whole messages only: it ends when depth drains).
    pump(None, time.perf_counter() + warmup)
    start_msgs, start_bytes = replies.messages, replies.wire_bytes
    cpu0, own0, t0 = server.cpu(), time.process_time(), time.perf_counter()
    pump(None, t0 + duration)
    t1, cpu1, own1 = time.perf_counter(), server.cpu(), time.process_time()
    done = replies.messages - start_msgs
    conn.close()
    sel.close()
    return {
        "rate": done / (t1 - t0),
        "server_us": (cpu1 - cpu0) / done * 1e6,
        "client_us": (own1 - own0) / done * 1e6,
        "in_bytes": conn.payload_bytes / CYCLE,  # compressed payload per message sent
        "out_bytes": (replies.wire_bytes - start_bytes) / done,
    }


# --------------------------------------------------------------------- orchestration


@dataclass
class Best:
    rate: float = 0.0
    server_us: float = float("inf")
    client_us: float = float("inf")
    in_bytes: float = 0.0
    out_bytes: float = 0.0

    def add(self, result: dict[str, float]) -> None:
        self.rate = max(self.rate, result["rate"])
        self.server_us = min(self.server_us, result["server_us"])
        self.client_us = min(self.client_us, result["client_us"])
        self.in_bytes, self.out_bytes = result["in_bytes"], result["out_bytes"]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
        return
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    args = parser.parse_args()
    rounds, warmup, duration = (1, 0.5, 1.0) if args.quick else (3, 1.0, 2.5)
    started = time.perf_counter()

    print(
        f"# permessage-deflate echo: trillium vs websockets{' (--quick)' if args.quick else ''}\n"
    )
    print(f"- Python {platform.python_version()}, {platform.machine()}, ", end="")
    print(f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs, ", end="")
    print(f"zlib {zlib.ZLIB_RUNTIME_VERSION}")
    print(f"- trillium {version('trillium')}, websockets {version('websockets')}")
    print(
        f"- {rounds} round(s) of {duration} s windows after {warmup} s of warm-up; "
        "one connection per cell; best round reported\n",
        flush=True,
    )

    corpora = {label: (make(size), depth) for label, (make, size, depth) in SIZES.items()}
    results: dict[tuple[str, str, str], Best] = {}
    servers = {(n, s): Server(n, s) for s in SETTINGS for n in SERVERS}
    try:
        for r in range(rounds):
            for label, (messages, depth) in corpora.items():
                for settings in SETTINGS:
                    order = SERVERS if r % 2 == 0 else SERVERS[::-1]
                    for name in order:
                        server = servers[name, settings]
                        result = run_cell(server.port, messages, depth, warmup, duration, server)
                        results.setdefault((label, settings, name), Best()).add(result)
                        print(
                            f"  round {r + 1}: {label:<11} {settings:<7} {name:<10} "
                            f"{result['rate']:>9,.0f} msg/s",
                            flush=True,
                        )
    finally:
        for server in servers.values():
            server.stop()

    print(
        "\n| message | settings | server | msg/s | server CPU µs/msg | client CPU µs/msg "
        "| B/msg in → out |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    misses = []
    for label in corpora:
        for settings in SETTINGS:
            t = results[label, settings, "trillium"]
            w = results[label, settings, "websockets"]
            for name, best in (("trillium", t), ("websockets", w)):
                print(
                    f"| {label} | {settings} | {name} | {best.rate:,.0f} | {best.server_us:.1f} "
                    f"| {best.client_us:.1f} | {best.in_bytes:,.0f} → {best.out_bytes:,.0f} |"
                )
            ratio, cpu_ratio = t.rate / w.rate, t.server_us / w.server_us
            print(
                f"| {label} | {settings} | **trillium / websockets** | **{ratio:.2f}x** "
                f"| {cpu_ratio:.2f}x | | |"
            )
            if ratio < 1:
                misses.append(f"{label} {settings} ({ratio:.2f}x)")
    verdict = "PASS" if not misses else "MISS: " + ", ".join(misses)
    print(f"\nTarget: compressed echo throughput >= websockets in every cell: {verdict}")
    print(f"\n(total time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
