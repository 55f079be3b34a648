"""Helpers for the asyncio and blocking face tests (``test_aio.py``, ``test_sync.py``,
``frameworks/``).

- ``trio_server(**kwargs)``: a trillium server in a thread of its own (a blocking
  portal), running ``commands``: it echoes, and obeys messages starting with ``!``;
  it records how each connection ended in ``closes``;
- ``silent_server()``: accepts the upgrade by hand, then never reads nor answers
  (for ping and close timeouts); ``mute_server()`` never even answers the handshake;
- ``echo_process()``: ``python -m trillium echo`` in a subprocess, to kill mid-way;
- ``tls_contexts()``: server and client SSL contexts from trustme's test CA;
- ``free_port()``, ``wait_for_port()``, ``run_script()``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.from_thread import start_blocking_portal

import trillium

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Upper bound for any subprocess a test starts.
PROC_TIMEOUT = 30


@dataclass
class Closes:
    """How the server's connections ended: (close code, reason) of each."""

    items: list[tuple[int | None, str | None]] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    def wait(self, count: int = 1, timeout: float = 10) -> list[tuple[int | None, str | None]]:
        deadline = time.monotonic() + timeout
        while len(self.items) < count:
            assert time.monotonic() < deadline, f"only {self.items} closed"
            time.sleep(0.01)
        return self.items


async def commands(ws: trillium.ServerConnection, closes: Closes) -> None:
    """Echo; ``!close CODE REASON``, ``!burst N``, ``!big N``, ``!headers``,
    ``!subprotocol``, ``!drop`` (TCP reset without a close frame) are commands."""
    try:
        async for message in ws:
            if not (isinstance(message, str) and message.startswith("!")):
                await ws.send(message)
                continue
            command, *args = message[1:].split(" ")
            if command == "close":
                await ws.close(int(args[0]), " ".join(args[1:]))
            elif command == "burst":
                for i in range(int(args[0])):
                    await ws.send(str(i))
            elif command == "big":
                await ws.send(b"x" * int(args[0]))
            elif command == "headers":
                assert ws.request is not None
                await ws.send(json.dumps(dict(ws.request.headers.raw_items())))
            elif command == "subprotocol":
                await ws.send(str(ws.subprotocol))
            elif command == "drop":
                sock = ws.stream.extra(anyio.abc.SocketAttribute.raw_socket)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                await ws.stream.aclose()
    finally:
        with anyio.CancelScope(shield=True):
            await ws.wait_closed()
        closes.items.append((ws.close_code, ws.close_reason))


@contextmanager
def trio_server(**kwargs: Any) -> Iterator[tuple[str, Closes]]:
    """A trillium server on 127.0.0.1 running ``commands``; yields its URL and closes."""
    closes = Closes()

    async def handler(ws: trillium.ServerConnection) -> None:
        await commands(ws, closes)

    async def make_server() -> trillium.WebSocketServer:  # made in the event loop
        return trillium.serve(handler, "127.0.0.1", 0, **kwargs)

    kwargs.setdefault("ping_interval", None)
    with (
        start_blocking_portal("trio") as portal,
        portal.wrap_async_context_manager(portal.call(make_server)) as server,
    ):
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/", closes


def _read_head(conn: socket.socket) -> dict[str, str]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return {}
        data += chunk
    lines = data.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}


@contextmanager
def silent_server(*, handshake: bool = True) -> Iterator[str]:
    """A raw server: answers the upgrade (if ``handshake``), then neither reads nor
    answers anything (no pongs, no close frame)."""
    listener = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def run() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conns.append(conn)
            if handshake:
                headers = _read_head(conn)
                key = headers.get("sec-websocket-key", "")
                digest = hashlib.sha1((key + GUID).encode()).digest()
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                    + base64.b64encode(digest)
                    + b"\r\n\r\n"
                )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        thread.join(5)
        for conn in conns:
            conn.close()
        listener.close()


@contextmanager
def echo_process() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m trillium echo`` in a subprocess (killed on the way out)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "trillium", "echo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        assert url.startswith("ws://"), url
        yield url, proc
    finally:
        proc.kill()
        proc.wait(PROC_TIMEOUT)


def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts: a certificate for localhost, and a client trusting it."""
    import trustme

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[Any] | None = None, timeout: float = 20
) -> None:
    """Wait until something listens on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.05)


def run_script(
    code: str, *args: str, timeout: float = PROC_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (with trillium importable)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
