"""Interop with Node's ``ws`` package (``tests/interop/node``), each peer its own process."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

import trillium
from trillium.core.deflate import ServerPerMessageDeflateFactory
from trillium.core.headers import parse_extensions
from trillium.exceptions import ConnectionClosedError

from ._helpers import (
    BIG,
    BINARY,
    JSON_TEXT,
    MAX_SIZE,
    NODE_DIR,
    TEXT,
    ZEBRA,
    DeflateWatch,
    Recorder,
    run_peer,
    run_peer_client,
    short,
    skip_or_fail_in_ci,
    trillium_echo_server,
    watch_deflate,
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


# ---------------------------------------------------------------- permessage-deflate, both ways

#: What the compressed scenarios exchange, in bytes of payload, one way.
EXCHANGED = (
    2 * len(JSON_TEXT)
    + 2 * len(ZEBRA)
    + len(BIG)
    + len(TEXT.encode())
    + len(JSON_TEXT)
    + 2 * len(ZEBRA)
)
STRICT_ANSWER = (
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
    "server_max_window_bits=10; client_max_window_bits=10"
)


def unordered(header: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """A Sec-WebSocket-Extensions value, parsed, parameters sorted."""
    return [(name, sorted(params)) for name, params in parse_extensions([header])]


def check_deflate(watch: DeflateWatch | None, peer: dict[str, Any], strict: bool) -> None:
    """Both sides compressed, and the peer's socket carried a fraction of the payload."""
    assert watch is not None and watch.extension is not None, "deflate was not negotiated"
    ext = watch.extension
    assert peer["extensions"] == "permessage-deflate"
    if strict:
        assert ext.local_no_context_takeover and ext.remote_no_context_takeover
        assert ext.local_max_window_bits == ext.remote_max_window_bits == 10
    # ws inflated (at least) every frame trillium compressed, and the other way round.
    assert watch.compressed_out > 0 and peer["compressed_in"] >= watch.compressed_out
    assert watch.compressed_in > 0
    assert watch.bytes_in * 5 < watch.inflated_in
    assert watch.bytes_out * 5 < watch.deflated_out
    # On the wire: far fewer bytes than the messages' payloads.
    assert peer["bytes_read"] < EXCHANGED // 5
    assert peer["bytes_written"] < EXCHANGED // 5


@pytest.mark.parametrize("mode", ["on", "strict"])
async def test_client_compression_with_node_server(node: str, mode: str) -> None:
    """ws' server with ``perMessageDeflate: true`` (or strict parameters), trillium's
    default client offer."""
    with trio.fail_after(20):
        async with run_peer(
            [node, node_script("echo_server.js"), mode], name="node ws server", cwd=NODE_DIR
        ) as peer:
            port = int((await peer.read_json())["port"])
            async with trillium.connect(f"ws://127.0.0.1:{port}", max_size=MAX_SIZE) as ws:
                watch = watch_deflate(ws)
                assert ws.response is not None
                answer = ws.response.headers["Sec-WebSocket-Extensions"]
                if mode == "strict":  # ws orders the parameters its own way
                    assert unordered(answer) == unordered(STRICT_ANSWER)
                else:
                    assert answer.startswith("permessage-deflate")
                for message in (JSON_TEXT, ZEBRA, BIG, TEXT, JSON_TEXT, ZEBRA):
                    await ws.send(message)
                    answer_ = await ws.recv()
                    assert answer_ == message, f"{short(message)} came back as {short(answer_)}"
                await ws.send([JSON_TEXT[:100_000], JSON_TEXT[100_000:]])
                assert await ws.recv() == JSON_TEXT
                await ws.send([ZEBRA, b"", ZEBRA])
                assert await ws.recv() == ZEBRA + ZEBRA
                await ws.send("cmd:deflate")
                seen_by_peer = json.loads(await ws.recv())
            seen = await peer.read_event("closed")
    assert seen["code"] == 1000
    check_deflate(watch, seen_by_peer, strict=mode == "strict")


@pytest.mark.parametrize(
    ("mode", "compression"),
    [
        pytest.param("on", "deflate", id="defaults"),
        pytest.param("strict", "deflate", id="ws-strict"),
        pytest.param(
            "on",
            ServerPerMessageDeflateFactory(
                server_no_context_takeover=True,
                client_no_context_takeover=True,
                server_max_window_bits=10,
                client_max_window_bits=10,
            ),
            id="trillium-strict",
        ),
    ],
)
async def test_server_compression_with_node_client(node: str, mode: str, compression: Any) -> None:
    """ws' client with ``perMessageDeflate: true`` (or strict parameters) against a
    trillium server, default or strict."""
    recorder = Recorder()
    with trio.fail_after(20):
        async with trillium_echo_server(recorder, compression=compression) as (_server, port):
            observed = await run_peer_client(
                [node, node_script("client.js"), f"ws://127.0.0.1:{port}", "compressed", mode],
                name=f"node ws client (compressed, {mode})",
            )
            await recorder.wait()
    assert observed["close_code"] == 1000
    assert recorder.received == [
        JSON_TEXT,
        ZEBRA,
        BIG,
        TEXT,
        JSON_TEXT,
        ZEBRA,
        JSON_TEXT,
        ZEBRA + ZEBRA,
        "cmd:fragments",
        "cmd:binfragments",
    ]
    assert recorder.connection is not None and recorder.connection.request is not None
    offer = recorder.connection.request.headers["Sec-WebSocket-Extensions"]
    assert recorder.connection.response is not None
    answer = recorder.connection.response.headers["Sec-WebSocket-Extensions"]
    strict = mode == "strict" or compression != "deflate"
    if mode == "strict":
        assert offer == STRICT_ANSWER
    else:
        assert offer == "permessage-deflate; client_max_window_bits"
    if strict:
        assert answer == STRICT_ANSWER
    else:
        assert answer == "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
    assert observed["deflate"]["params"] is not None
    check_deflate(recorder.deflate, observed["deflate"], strict=strict)
