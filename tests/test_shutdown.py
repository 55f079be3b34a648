"""Shutting down under load: ``server.close()`` in-process, and SIGTERM to the
``python -m trillium echo`` process, while hundreds of clients are mid-stream.

Every client gets 1001 (going away); every message whose ``send()`` returned before
the shutdown reaches its client, in order and before the close frame; nothing is
left running afterwards (tasks and file descriptors counted, the process gone).
"""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys

import trio

import trillium
from trillium import ConnectionClosed, ConnectionClosedOK

from ._support import count_tasks, open_fds, serving, wait_until

CLIENTS = 200


async def test_server_close_under_load_delivers_every_accepted_message_then_1001() -> None:
    # For each server-side connection, keyed by the client's port: the number of the
    # last message whose send() returned (accepted), and what each client received.
    accepted: dict[int, int] = {}
    received: dict[int, list[int]] = {}
    closures: dict[int, ConnectionClosed] = {}
    from_clients = 0
    everyone_connected = trio.Event()

    async def push(ws: trillium.ServerConnection) -> None:
        port = ws.remote_address[1]
        accepted[port] = -1

        async def count_incoming() -> None:
            nonlocal from_clients
            async for _ in ws:
                from_clients += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_incoming)
            await everyone_connected.wait()
            seq = 0
            try:
                while True:
                    await ws.send(str(seq))  # raises ConnectionClosed once closing
                    accepted[port] = seq
                    seq += 1
            except ConnectionClosed:
                pass

    async def client(uri: str, *, task_status: trio.TaskStatus[None]) -> None:
        async with trillium.connect(uri) as ws:
            port = ws.local_address[1]
            received[port] = []
            task_status.started()

            async def chatter() -> None:
                try:
                    while True:
                        await ws.send("from the client")
                        await trio.sleep(0.01)
                except ConnectionClosed:
                    pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(chatter)
                try:
                    while True:
                        received[port].append(int(await ws.recv()))
                except ConnectionClosed as exc:
                    closures[port] = exc

    with trio.fail_after(30):
        gc.collect()
        fds, tasks = open_fds(), count_tasks()
        async with (
            trio.open_nursery() as clients,
            serving(push, close_timeout=5) as (server, uri),
        ):
            for _ in range(CLIENTS):
                await clients.start(client, uri)
            await wait_until(lambda: len(server.connections) == CLIENTS)
            everyone_connected.set()
            await trio.sleep(1)  # mid-stream, both ways
            assert all(n > 0 for n in accepted.values())
            await server.close()
            assert server.connections == set()
        assert (open_fds(), count_tasks()) == (fds, tasks)  # nothing left running

    assert len(closures) == len(received) == len(accepted) == CLIENTS
    assert from_clients > 0
    for port, numbers in received.items():
        exc = closures[port]
        assert isinstance(exc, ConnectionClosedOK) and exc.code == 1001, exc
        assert exc.rcvd is not None and exc.rcvd.reason == "server shutting down"
        # Exactly the messages send() accepted: all of them, in order, once.
        assert numbers == list(range(accepted[port] + 1)), (port, len(numbers), accepted[port])


async def test_sigterm_under_load_closes_every_client_with_1001_and_exits() -> None:
    """SIGTERM to ``python -m trillium echo`` with clients streaming: each client gets
    the echoes of a prefix of what it sent (in order, none lost in the middle), then
    1001; the process exits with status 0."""
    clients = 100
    echoes: dict[int, list[int]] = {}
    closures: dict[int, ConnectionClosed] = {}
    process = subprocess.Popen(
        [sys.executable, "-m", "trillium", "echo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(10):
            line = await trio.to_thread.run_sync(process.stdout.readline)
        match = re.search(rb"ws://127\.0\.0\.1:(\d+)", line)
        assert match, line
        uri = f"ws://127.0.0.1:{int(match.group(1))}/"

        async def client(index: int, *, task_status: trio.TaskStatus[None]) -> None:
            echoes[index] = []
            async with trillium.connect(uri) as ws:
                task_status.started()

                async def send_numbers() -> None:
                    seq = 0
                    try:
                        while True:
                            await ws.send(str(seq))
                            seq += 1
                            if seq % 50 == 0:
                                await trio.sleep(0.005)
                    except ConnectionClosed:
                        pass

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send_numbers)
                    try:
                        while True:
                            echoes[index].append(int(await ws.recv()))
                    except ConnectionClosed as exc:
                        closures[index] = exc

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for index in range(clients):
                    await nursery.start(client, index)
                await trio.sleep(1)
                assert all(echoes[i] for i in range(clients))
                process.send_signal(signal.SIGTERM)
            returncode = await trio.to_thread.run_sync(process.wait, 10)
    finally:
        if process.poll() is None:  # pragma: no cover - a failure
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
    assert returncode == 0
    assert len(closures) == clients
    for index in range(clients):
        exc = closures[index]
        assert isinstance(exc, ConnectionClosedOK) and exc.code == 1001, exc
        assert echoes[index] == list(range(len(echoes[index]))), index
