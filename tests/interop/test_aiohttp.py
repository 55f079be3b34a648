"""Interop with ``aiohttp``'s WebSocket client and server, run in their own process."""

from __future__ import annotations

import sys

import pytest
import trio

import trillium
from trillium.exceptions import ConnectionClosedError

from ._helpers import (
    BIG,
    BINARY,
    MAX_SIZE,
    PEERS,
    TEXT,
    Recorder,
    python_peer_server,
    run_peer_client,
    short,
    trillium_echo_server,
)

SCRIPT = "aiohttp_peer.py"


async def test_client_echo_and_close_code() -> None:
    with trio.fail_after(20):
        async with python_peer_server(SCRIPT) as (peer, port):
            async with trillium.connect(f"ws://127.0.0.1:{port}/", max_size=MAX_SIZE) as ws:
                for message in (TEXT, BINARY, BIG):
                    await ws.send(message)
                    answer = await ws.recv()
                    assert answer == message, f"{short(message)} came back as {short(answer)}"
                await ws.send([b"frag", b"men", b"ted"])
                assert await ws.recv() == b"fragmented"
                assert await ws.ping() < 10
                await ws.close(4001, "bye")
                # aiohttp answers every close frame with 1000 instead of echoing the
                # code (RFC 6455 §5.5.1 makes echoing usual, not required).
                assert (ws.close_code, ws.close_reason) == (1000, "")
            seen = await peer.read_event("closed")
    assert (seen["code"], seen["reason"]) == (4001, "bye")


async def test_client_sees_server_initiated_close() -> None:
    with trio.fail_after(20):
        async with python_peer_server(SCRIPT) as (peer, port):
            async with trillium.connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("cmd:close 4002 server-bye")
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
                assert (info.value.code, info.value.message) == (4002, "server-bye")
                assert (ws.close_code, ws.close_reason) == (4002, "server-bye")
            seen = await peer.read_event("closed")
    assert seen["code"] == 4002


async def run_aiohttp_client(port: int, scenario: str) -> dict[str, object]:
    return await run_peer_client(
        [sys.executable, PEERS / SCRIPT, "client", f"ws://127.0.0.1:{port}/", scenario],
        name=f"aiohttp client ({scenario})",
    )


async def test_server_echo_and_close_code() -> None:
    recorder = Recorder()
    with trio.fail_after(20):
        async with trillium_echo_server(recorder) as (_server, port):
            observed = await run_aiohttp_client(port, "echo")
            await recorder.wait()
    assert recorder.received == [TEXT, BINARY, BIG, "cmd:fragments", "cmd:ping"]
    assert recorder.latency is not None
    assert isinstance(recorder.exception, ConnectionClosedError)
    assert (recorder.close_code, recorder.close_reason) == (4000, "done")
    assert observed["close_code"] == 4000


async def test_server_initiated_close() -> None:
    recorder = Recorder()
    with trio.fail_after(20):
        async with trillium_echo_server(recorder) as (_server, port):
            observed = await run_aiohttp_client(port, "server-close")
            await recorder.wait()
    assert observed["message"] == ["CLOSE", 4002, "server-bye"]
    assert observed["close_code"] == 4002
    assert recorder.close_code == 1000  # aiohttp answers with 1000, not an echo
    assert recorder.exception is None
