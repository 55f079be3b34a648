"""Behaviour of ``trillium.broadcast``: one message to many connections, never waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import trillium
from trillium import ServerConnection, State
from trillium.core.frames import Opcode

from ._support import TEST_TIMEOUT, RawClient, port_of, serving, wait_until


async def test_broadcast_reaches_every_connection() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        connections: list[ServerConnection] = []

        async def handler(ws: ServerConnection) -> None:
            connections.append(ws)
            await ws.wait_closed()

        received: dict[int, list[object]] = {}

        async def client(uri: str, index: int, *, task_status: trio.TaskStatus[None]) -> None:
            async with trillium.connect(uri) as ws:
                task_status.started()
                received[index] = [await ws.recv(), await ws.recv()]

        async with serving(handler) as (server, uri), trio.open_nursery() as nursery:
            for index in range(5):
                await nursery.start(client, uri, index)
            await wait_until(lambda: len(server.connections) == 5)
            assert trillium.broadcast(server.connections, "to everyone") == 0
            assert trillium.broadcast(connections, b"\x00binary") == 0
        assert received == {i: ["to everyone", b"\x00binary"] for i in range(5)}


async def test_broadcast_skips_a_connection_whose_peer_does_not_read() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        connections: list[ServerConnection] = []

        async def handler(ws: ServerConnection) -> None:
            connections.append(ws)
            await ws.wait_closed()

        payload = b"p" * 2**18
        counts = [0, 0, 0]

        async def reader(uri: str, index: int, *, task_status: trio.TaskStatus[None]) -> None:
            async with trillium.connect(uri) as ws:
                task_status.started()
                while (message := await ws.recv()) != "tick":
                    assert message == payload
                    counts[index] += 1

        async with (
            serving(handler, write_limit=4096, close_timeout=0.5) as (server, uri),
            trio.open_nursery() as nursery,
        ):
            for index in range(3):
                await nursery.start(reader, uri, index)
            stalled = await RawClient.connect(port_of(server), rcvbuf=65536)
            await wait_until(lambda: len(connections) == 4)
            (stalled_conn,) = [
                c for c in connections if c.remote_address == stalled.sock.getsockname()
            ]
            readers = [c for c in connections if c is not stalled_conn]

            # Broadcast big messages until the connection that nobody reads fills up.
            sent = 0
            while stalled_conn._out_size <= 4096:
                assert sent < 400, "the unread connection never filled up"
                trillium.broadcast(connections, payload)
                sent += 1
                await trio.sleep(0.005)
            # The others read everything they were sent.
            await wait_until(lambda: all(c._out_size == 0 for c in readers))
            assert trillium.broadcast(connections, "tick") == 1
            assert trillium.broadcast([stalled_conn], "tick") == 1
            assert stalled_conn.state is State.OPEN  # skipped, not closed
        assert counts == [sent] * 3

        # What the slow peer did get is whole messages (the server dropped it at close).
        frames = []
        while (frame := await stalled.recv_frame()) is not None:
            frames.append(frame)
        stalled.close()
        messages = [f for f in frames if f.opcode is not Opcode.CLOSE]
        assert 0 < len(messages) <= sent
        assert all(f.opcode is Opcode.BINARY and f.payload == payload for f in messages)


async def test_broadcast_skips_closed_connections() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        connections: list[ServerConnection] = []

        async def handler(ws: ServerConnection) -> None:
            connections.append(ws)
            await ws.wait_closed()

        async with (
            serving(handler) as (_, uri),
            trillium.connect(uri) as first,
            trillium.connect(uri) as second,
        ):
            async with trillium.connect(uri):
                await wait_until(lambda: len(connections) == 3)
            await wait_until(lambda: connections[2].state is State.CLOSED)
            assert trillium.broadcast(connections, "still here?") == 1
            assert await first.recv() == "still here?"
            assert await second.recv() == "still here?"


async def test_broadcast_skips_a_connection_sending_a_fragmented_message() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        connections: list[ServerConnection] = []
        finish = trio.Event()

        async def fragments() -> AsyncIterator[str]:
            yield "part 1, "
            await finish.wait()
            yield "part 2"

        async def handler(ws: ServerConnection) -> None:
            connections.append(ws)
            await ws.send(fragments())
            await ws.wait_closed()

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            await wait_until(lambda: bool(connections))
            await trio.testing.wait_all_tasks_blocked()
            # A broadcast frame in the middle would corrupt the fragmented message.
            assert trillium.broadcast(connections, "interleaved?") == 1
            finish.set()
            assert await ws.recv() == "part 1, part 2"
            await wait_until(lambda: connections[0].protocol.can_send_message())  # type: ignore[union-attr]
            assert trillium.broadcast(connections, "after") == 0
            assert await ws.recv() == "after"


async def test_broadcast_from_client_connections_masks_each_frame() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        received: list[object] = []

        async def handler(ws: ServerConnection) -> None:
            received.append(await ws.recv())
            await ws.wait_closed()

        async with (
            serving(handler) as (_, uri),
            trillium.connect(uri) as first,
            trillium.connect(uri) as second,
        ):
            assert trillium.broadcast([first, second], "from clients") == 0
            await wait_until(lambda: len(received) == 2)
        # A server refuses unmasked frames (1002): both arrived intact.
        assert received == ["from clients", "from clients"]


def test_broadcast_rejects_a_message_that_is_not_str_or_bytes() -> None:
    with pytest.raises(TypeError):
        trillium.broadcast([], 42)  # type: ignore[arg-type]
