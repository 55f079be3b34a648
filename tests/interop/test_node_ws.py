"""Interop with Node's ``ws`` package (``tests/interop/node``), each peer its own process."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import trio

import trillium
from trillium.exceptions import ConnectionClosedError

from ._helpers import (
    BIG,
    BINARY,
    MAX_SIZE,
    NODE_DIR,
    TEXT,
    Recorder,
    run_peer,
    run_peer_client,
    short,
    skip_or_fail_in_ci,
    trillium_echo_server,
)


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` binary, with ``ws`` installed in tests/interop/node (npm install if needed).

    Skips only when node or npm is not installed at all; a failing npm install fails.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        skip_or_fail_in_ci("Node.js is not installed (need `node` and `npm` on PATH)")
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"npm install failed:\n{result.stdout}\n{result.stderr}"
        assert (NODE_DIR / "node_modules" / "ws").is_dir()
    return node


def node_script(name: str) -> Path:
    return NODE_DIR / name


async def test_client_echo_and_close_code(node: str) -> None:
    with trio.fail_after(20):
        async with run_peer(
            [node, node_script("echo_server.js")], name="node ws server", cwd=NODE_DIR
        ) as peer:
            port = int((await peer.read_json())["port"])
            async with trillium.connect(f"ws://127.0.0.1:{port}", max_size=MAX_SIZE) as ws:
                for message in (TEXT, BINARY, BIG, ""):
                    await ws.send(message)
                    answer = await ws.recv()
                    assert type(answer) is type(message)
                    assert answer == message, f"{short(message)} came back as {short(answer)}"
                await ws.send(["frag", "men", "ted"])
                assert await ws.recv() == "fragmented"
                await ws.send([b"\xff" * 100_000, b"\xfe"])
                assert await ws.recv() == b"\xff" * 100_000 + b"\xfe"
                assert await ws.ping(b"node") < 10
                await ws.send("cmd:ping")
                assert await ws.recv() == "pinged"
                await ws.close(4001, "bye")
                assert (ws.close_code, ws.close_reason) == (4001, "bye")
            seen = await peer.read_event("closed")
    assert (seen["code"], seen["reason"]) == (4001, "bye")


async def test_client_sees_server_initiated_close(node: str) -> None:
    with trio.fail_after(20):
        async with run_peer(
            [node, node_script("echo_server.js")], name="node ws server", cwd=NODE_DIR
        ) as peer:
            port = int((await peer.read_json())["port"])
            async with trillium.connect(f"ws://127.0.0.1:{port}") as ws:
                await ws.send("cmd:close 4002 server-bye")
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
                assert (info.value.code, info.value.message) == (4002, "server-bye")
                assert (ws.close_code, ws.close_reason) == (4002, "server-bye")
            seen = await peer.read_event("closed")
    assert seen["code"] == 4002


async def test_server_echo_and_close_code(node: str) -> None:
    recorder = Recorder()
    with trio.fail_after(20):
        async with trillium_echo_server(recorder) as (_server, port):
            observed = await run_peer_client(
                [node, node_script("client.js"), f"ws://127.0.0.1:{port}"], name="node ws client"
            )
            await recorder.wait()
    assert recorder.received == [TEXT, BINARY, BIG, "fragmented", "cmd:fragments", "cmd:ping"]
    assert recorder.latency is not None and recorder.latency < 10
    assert isinstance(recorder.exception, ConnectionClosedError)
    assert (recorder.exception.code, recorder.exception.message) == (4000, "done")
    assert (recorder.close_code, recorder.close_reason) == (4000, "done")
    assert observed == {"close_code": 4000, "close_reason": "done"}


async def test_server_initiated_close(node: str) -> None:
    recorder = Recorder()
    with trio.fail_after(20):
        async with trillium_echo_server(recorder) as (_server, port):
            observed = await run_peer_client(
                [node, node_script("client.js"), f"ws://127.0.0.1:{port}", "server-close"],
                name="node ws client",
            )
            await recorder.wait()
    assert observed == {"close_code": 4002, "close_reason": "server-bye"}
    assert recorder.close_code == 4002  # ws echoes the code
    assert recorder.exception is None


async def test_server_flood_keeps_every_message_in_order(node: str) -> None:
    recorder = Recorder()
    with trio.fail_after(20):
        async with trillium_echo_server(recorder) as (_server, port):
            observed = await run_peer_client(
                [node, node_script("client.js"), f"ws://127.0.0.1:{port}", "flood"],
                name="node ws client",
            )
            await recorder.wait()
    assert observed == {"echoes": 500, "close_code": 4000, "close_reason": "done"}
    assert [(len(m), m[0]) for m in recorder.received] == [(20000, i & 255) for i in range(500)]
    assert recorder.close_code == 4000
