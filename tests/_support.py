"""Helpers for the connection, server and client tests.

- ``serving(handler, **kwargs)``: a trillium server on 127.0.0.1, port 0, and its URI;
- ``echo``: the handler that sends every message back; ``recording_echo(handled)``
  does the same after adding its connection to ``handled``;
- ``RawClient``: a hand-driven client over a plain trio socket (a hand-made opening
  handshake, frames built with ``serialize_frame``), for peers that misbehave;
- ``raw_server(behaviour)``: a plain trio TCP server calling ``behaviour(stream)`` for
  each connection, and ``accept_handshake(stream)`` to answer the upgrade by hand;
- ``open_fds()`` and ``count_tasks()``: what a leak would leave behind;
- ``small_buffer_listener()``, ``send_until_stalled()`` and ``send_rest()``: a peer
  that floods a server until the server stops reading (``max_queue``), then finishes.
"""

from __future__ import annotations

import base64
import os
import random
import socket
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from traceback import format_exception
from typing import Any, Protocol

import pytest
import trio

import trillium
from trillium.connection import Connection
from trillium.core.close import Close
from trillium.core.frames import Frame, FrameParser, Opcode, serialize_frame
from trillium.core.handshake import Request, ServerHandshake, accept_key

#: Upper bound for any single test.
TEST_TIMEOUT = 10


async def echo(ws: trillium.ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def recording_echo(
    handled: list[trillium.ServerConnection],
) -> Callable[[trillium.ServerConnection], Awaitable[None]]:
    """An ``echo`` handler that first adds its connection to ``handled``."""

    async def handler(ws: trillium.ServerConnection) -> None:
        handled.append(ws)
        await echo(ws)

    return handler


def port_of(server: trillium.WebSocketServer) -> int:
    """The TCP port a server listens on."""
    return int(server.sockets[0].getsockname()[1])


def uri_of(server: trillium.WebSocketServer, path: str = "/") -> str:
    return f"ws://127.0.0.1:{port_of(server)}{path}"


@asynccontextmanager
async def serving(
    handler: Callable[[trillium.ServerConnection], Awaitable[None]], **kwargs: Any
) -> AsyncIterator[tuple[trillium.WebSocketServer, str]]:
    """Run a trillium server on 127.0.0.1 (port 0) for the block; yield it and its URI."""
    async with trillium.serve(handler, "127.0.0.1", 0, **kwargs) as server:
        yield server, uri_of(server)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail the test if it doesn't within ``timeout``."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.005)


def open_fds() -> int:
    """File descriptors open in this process (Linux)."""
    return len(os.listdir("/proc/self/fd"))


def count_tasks() -> int:
    """Every task alive in this trio run, found by walking the task tree from the root."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    return walk(trio.lowlevel.current_root_task())


def close_payload(frame: Frame) -> Close:
    assert frame.opcode is Opcode.CLOSE, f"expected a close frame, got {frame.opcode!r}"
    return Close.parse(frame.payload)


class RawClient:
    """A WebSocket client driven by hand over a plain trio socket.

    It never answers pings or close frames on its own, reads only when told to, and
    sends exactly the bytes it is given: the misbehaving peer the limits are about.
    """

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.parser = FrameParser(expect_masked=False)
        self.response_head = b""

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        path: str = "/",
        headers: tuple[tuple[str, str], ...] = (),
        handshake: bool = True,
        sndbuf: int | None = None,
        rcvbuf: int | None = None,
    ) -> RawClient:
        sock = trio.socket.socket()
        if sndbuf is not None:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, sndbuf)
        if rcvbuf is not None:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        client = cls(sock)
        if handshake:
            await client.handshake(port, path=path, headers=headers)
        return client

    async def handshake(
        self, port: int, *, path: str = "/", headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in headers),
        ]
        await self.send_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            data = await self.sock.recv(65536)
            if not data:
                raise AssertionError(f"server closed during the handshake: {buffer!r}")
            buffer += data
        head, _, rest = buffer.partition(b"\r\n\r\n")
        self.response_head = head
        assert head.startswith(b"HTTP/1.1 101"), head
        assert accept_key(key).encode() in head, head
        self.parser.feed(rest)

    async def send_bytes(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = await self.sock.send(view)
            view = view[sent:]

    async def send_frame(self, opcode: int, payload: bytes = b"", *, fin: bool = True) -> None:
        await self.send_bytes(serialize_frame(opcode, payload, mask=True, fin=fin))

    async def recv_frame(self) -> Frame | None:
        """The next frame from the server, or None at end of stream."""
        while True:
            frame = self.parser.next_frame()
            if frame is not None:
                return frame
            data = await self.sock.recv(65536)
            if not data:
                return None
            self.parser.feed(data)

    async def recv_frame_skipping_pings(self) -> Frame | None:
        while True:
            frame = await self.recv_frame()
            if frame is None or frame.opcode is not Opcode.PING:
                return frame

    async def read_until_eof(self) -> bytes:
        """Read (unparsed) until the server closes TCP; return what was read."""
        chunks = []
        while data := await self.sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


async def read_request(stream: trio.SocketStream) -> tuple[Request | None, ServerHandshake]:
    """Read an opening handshake request from ``stream`` (None if the client left)."""
    handshake = ServerHandshake()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return None, handshake
        request = handshake.receive_data(data)
        if request is not None:
            return request, handshake


async def accept_handshake(stream: trio.SocketStream) -> Request:
    """Answer a client's upgrade with 101, by hand; return its request."""
    request, handshake = await read_request(stream)
    assert request is not None, "client left during the handshake"
    await stream.send_all(handshake.accept(request))
    return request


async def read_frames(stream: trio.SocketStream, parser: FrameParser) -> Frame | None:
    """The next frame a client sent on ``stream`` (None at end of stream)."""
    while True:
        frame = parser.next_frame(2**40)
        if frame is not None:
            return frame
        data = await stream.receive_some(65536)
        if not data:
            return None
        parser.feed(data)


@asynccontextmanager
async def raw_server(
    behaviour: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[int]:
    """A plain TCP server on 127.0.0.1 calling ``behaviour(stream)``; yield its port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, behaviour, listeners))
        yield port
        nursery.cancel_scope.cancel()


def small_buffer_listener() -> socket.socket:
    """A listening socket on 127.0.0.1 with a 64 KiB receive buffer, which accepted
    sockets inherit: a server that stops reading stalls its sender after a few
    hundred KiB instead of tens of MiB."""
    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    return listening


async def send_until_stalled(client: RawClient, data: bytes) -> memoryview:
    """Send ``data`` 64 KiB at a time until a send waits 0.5 s (the server stopped
    reading); return what is left. Fails if everything went out."""
    view = memoryview(data)
    while view:
        with trio.move_on_after(0.5) as scope:
            sent = await client.sock.send(view[:65536])
            view = view[sent:]
        if scope.cancelled_caught:
            return view
    raise AssertionError("the server kept reading past max_queue")


async def send_rest(client: RawClient, view: memoryview) -> None:
    """What ``send_until_stalled`` left, once the server reads again."""
    while view:
        sent = await client.sock.send(view[:65536])
        view = view[sent:]


def big_and_small_messages() -> list[str | bytes]:
    """Binary messages around and far above the size at which a frame is queued as
    header and payload (64 KiB), each followed by a short text message."""
    messages: list[str | bytes] = []
    for i, size in enumerate([65536, 3, 2**20 + 3, 65535, 70000, 10, 2**21, 65536]):
        messages.append(random.Random(i).randbytes(size))
        messages.append(f"after {i}")
    return messages


async def recv_messages(client: RawClient, count: int) -> list[str | bytes]:
    """The next ``count`` messages of unfragmented frames: text as str, binary as bytes."""
    received: list[str | bytes] = []
    while len(received) < count:
        frame = await client.recv_frame()
        assert frame is not None
        payload = frame.payload
        received.append(payload.decode() if frame.opcode is Opcode.TEXT else payload)
    return received


async def recv_big_frame_traced(client: RawClient, payload: bytes, go: Callable[[], object]) -> int:
    """Call ``go()``, which makes the server send ``payload`` (at least 64 KiB) as
    one binary frame; read the frame into one buffer owned here, check it, and
    return the peak of memory traced meanwhile: the sender's allocations."""
    expected = len(payload) + 10  # after the 10-byte header of a 64-bit length
    into = bytearray(expected)
    view = memoryview(into)
    got = 0
    tracemalloc.start()
    try:
        go()
        while got < expected:
            got += await client.sock.recv_into(view[got:])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert into[:2] == b"\x82\x7f" and int.from_bytes(into[2:10], "big") == len(payload)
    assert into[10:] == payload
    return peak


async def send_big_frame_traced(
    client: RawClient, payload: bytes, received: Callable[[], object]
) -> int:
    """Send ``payload`` as one masked binary frame, wait until ``received()`` is true
    (the server's handler has the message), and return the peak of memory traced
    meanwhile: the receiver's allocations (the frame is built before tracing starts,
    and the sender allocates nothing per write)."""
    wire = serialize_frame(Opcode.BINARY, payload, mask=True)
    tracemalloc.start()
    try:
        await client.send_bytes(wire)
        await wait_until(lambda: bool(received()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


class _Settable(Protocol):
    def set(self) -> None: ...


def sends_all(
    messages: list[str | bytes], queued: _Settable
) -> Callable[[trillium.ServerConnection], Awaitable[None]]:
    """A handler that sends ``messages``, sets ``queued`` once all are queued, and
    stays until the connection closes."""

    async def handler(ws: trillium.ServerConnection) -> None:
        for message in messages:
            await ws.send(message)
        queued.set()
        await ws.wait_closed()

    return handler


def sends_big_messages(
    writing: _Settable, outcome: list[int | None]
) -> Callable[[trillium.ServerConnection], Awaitable[None]]:
    """A handler that sends four 2 MiB messages (more than the kernel takes from a
    peer that doesn't read), sets ``writing``, then records the close code once the
    connection is closed."""

    async def handler(ws: trillium.ServerConnection) -> None:
        for _ in range(4):
            await ws.send(bytes(2**21))
        writing.set()
        await ws.wait_closed()
        outcome.append(ws.close_code)

    return handler


def break_delivery_of_boom(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug inside trillium, for the tests of how one is contained: the reader's
    delivery of the text message "boom" raises ``RuntimeError("broken delivery")``."""
    received = Connection._received

    def broken(self: Connection, events: list[Any]) -> None:
        if any(getattr(event, "data", None) == "boom" for event in events):
            raise RuntimeError("broken delivery")
        received(self, events)

    monkeypatch.setattr(Connection, "_received", broken)


def assert_broken_delivery_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Exactly one ERROR record, saying the connection failed, with the traceback of
    the ``RuntimeError`` from ``break_delivery_of_boom``."""
    (record,) = [record for record in caplog.records if record.levelname == "ERROR"]
    assert record.getMessage().endswith("failed")
    assert record.exc_info is not None
    assert "RuntimeError: broken delivery" in "".join(format_exception(record.exc_info[1]))
