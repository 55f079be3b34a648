"""Helpers for the interop tests: peer processes, and the trillium side of each exchange.

Every peer runs as its own process on 127.0.0.1 with an ephemeral port. A peer
speaks to the test on its stdout, one JSON object a line: a server first prints
``{"port": N}``, then one line per event (e.g. ``{"event": "closed", "code": 4001,
"reason": "bye"}``); a client prints its observations and exits 0 when every check
it made passed. Peers' stderr goes to pytest's capture, so it shows on failure.

The payloads are the same everywhere (see ``peers/_common.py`` and the Node and
browser scripts): ``TEXT``, ``BINARY`` and the 1 MiB ``BIG`` message, and for the
permessage-deflate scenarios the compressible ``JSON_TEXT`` and ``ZEBRA``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

import trillium
from trillium.core.deflate import PerMessageDeflate
from trillium.core.frames import RSV1, Frame
from trillium.exceptions import ConnectionClosed

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
NODE_DIR = HERE / "node"
BROWSER_DIR = HERE / "browser"

TEXT = "héllo wörld ✓ 🎉"
BINARY = bytes(range(256))
BIG = bytes(range(256)) * 4096  # 1 MiB, the same pattern in every peer
assert len(BIG) == 2**20
MAX_SIZE = 4 * 2**20  # raised on both sides so the 1 MiB message fits with room to spare
# JSON-like text of about 230 kB, and 256 KiB of binary, half zeros: both compress well.
JSON_TEXT = (
    "["
    + ", ".join(
        f'{{"id": {i}, "name": "user{i % 97}", "ok": {str(i % 3 == 0).lower()}}}'
        for i in range(5000)
    )
    + "]"
)
ZEBRA = (bytes(range(256)) + bytes(256)) * 512


class Peer:
    """A peer process whose stdout is read as JSON lines."""

    def __init__(self, process: trio.Process, name: str) -> None:
        self.process = process
        self.name = name
        self._buffer = b""

    async def read_json(self) -> dict[str, Any]:
        """The next JSON line the peer prints (fails if it exits first)."""
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                raise AssertionError(
                    f"{self.name} exited (code {self.process.poll()}) before printing "
                    f"a line; got {self._buffer!r}"
                )
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)  # type: ignore[no-any-return]
        except json.JSONDecodeError:
            raise AssertionError(f"{self.name} printed a line that is not JSON: {line!r}") from None

    async def read_event(self, event: str) -> dict[str, Any]:
        """The next line whose ``event`` is ``event`` (other lines are skipped)."""
        while True:
            line = await self.read_json()
            if line.get("event") == event:
                return line


def kill_process_group(process: trio.Process | subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its children (it was started in a session of its own)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@asynccontextmanager
async def run_peer(
    args: Sequence[str | os.PathLike[str]], *, name: str, cwd: Path | None = None
) -> AsyncIterator[Peer]:
    """Start a peer process; kill it (and its children) when the block ends, whatever happens."""
    process = await trio.lowlevel.open_process(
        [os.fspath(a) for a in args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        yield Peer(process, name)
    finally:
        with trio.CancelScope(shield=True):
            kill_process_group(process)
            with trio.move_on_after(5):
                await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


@asynccontextmanager
async def python_peer_server(script: str, *args: str) -> AsyncIterator[tuple[Peer, int]]:
    """Run ``peers/<script>`` as a server; yield it and the port it printed."""
    async with run_peer([sys.executable, PEERS / script, "server", *args], name=script) as peer:
        with trio.fail_after(10):
            first = await peer.read_json()
        yield peer, int(first["port"])


async def run_peer_client(args: Sequence[str | os.PathLike[str]], *, name: str) -> dict[str, Any]:
    """Run a peer client to completion; check it exited 0 and return its last JSON line."""
    process = await trio.run_process(
        [os.fspath(a) for a in args],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        check=False,
    )
    stdout = process.stdout.decode("utf-8", "replace")
    assert process.returncode == 0, f"{name} failed (exit {process.returncode}):\n{stdout}"
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, f"{name} printed nothing"
    return json.loads(lines[-1])  # type: ignore[no-any-return]


@dataclass
class DeflateWatch:
    """A connection's negotiated permessage-deflate, and the compressed frames it saw."""

    extension: PerMessageDeflate | None
    compressed_in: int = 0  # frames received with RSV1 set
    compressed_out: int = 0  # frames sent with RSV1 set
    bytes_in: int = 0  # compressed payload bytes received...
    bytes_out: int = 0  # ... and sent
    inflated_in: int = 0  # what the received ones inflated to
    deflated_out: int = 0  # what the sent ones were before compression


def watch_deflate(ws: trillium.Connection) -> DeflateWatch:
    """Count ``ws``'s compressed frames, both ways, by wrapping its extension's codec."""
    assert ws.protocol is not None
    extensions = [e for e in ws.protocol.extensions if isinstance(e, PerMessageDeflate)]
    watch = DeflateWatch(extensions[0] if extensions else None)
    ext = watch.extension
    if ext is None:
        return watch
    decode, encode = ext.decode, ext.encode
    compressed_message = [False]

    def counting_decode(frame: Frame, *, max_size: int | None) -> Frame:
        if frame.rsv & RSV1:
            watch.compressed_in += 1
            compressed_message[0] = True
        out = decode(frame, max_size=max_size)
        if compressed_message[0]:
            watch.bytes_in += len(frame.payload)
            watch.inflated_in += len(out.payload)
        if frame.fin:
            compressed_message[0] = False
        return out

    def counting_encode(frame: Frame) -> Frame:
        out = encode(frame)
        if out.rsv & RSV1:
            watch.compressed_out += 1
        if out.payload is not frame.payload:
            watch.bytes_out += len(out.payload)
            watch.deflated_out += len(frame.payload)
        return out

    ext.decode = counting_decode  # type: ignore[method-assign]
    ext.encode = counting_encode  # type: ignore[method-assign]
    return watch


@dataclass
class Recorder:
    """What the trillium echo server saw on its one connection."""

    connection: trillium.ServerConnection | None = None
    received: list[str | bytes] = field(default_factory=list)
    subprotocol: str | None = None
    latency: float | None = None
    exception: ConnectionClosed | None = None
    close_code: int | None = None
    close_reason: str | None = None
    deflate: DeflateWatch | None = None
    done: trio.Event = field(default_factory=trio.Event)

    async def wait(self, timeout: float = 15) -> None:
        """Wait for the handler to return and the connection to close; note the close."""
        with trio.fail_after(timeout):
            await self.done.wait()
            assert self.connection is not None
            # The handler may return (e.g. after send() raised ConnectionClosed while
            # the closing handshake was under way) before the TCP connection is
            # closed; close_code is None until then.
            await self.connection.wait_closed()
        self.close_code = self.connection.close_code
        self.close_reason = self.connection.close_reason


def echo_handler(recorder: Recorder) -> Any:
    """A trillium handler that echoes, obeys a few commands, and records what it saw.

    Commands (text messages): ``cmd:fragments`` sends ``"fragmented"`` as three
    fragments (and ``cmd:binfragments`` ``b"fragmented"``), ``cmd:ping`` pings the
    peer and answers ``"pinged"`` once the pong came, ``cmd:subprotocol`` answers the
    negotiated subprotocol, ``cmd:close CODE REASON`` closes with that code and reason.
    Anything else is echoed as it came (text as text, binary as binary).
    """

    async def handler(ws: trillium.ServerConnection) -> None:
        recorder.connection = ws
        recorder.subprotocol = ws.subprotocol
        recorder.deflate = watch_deflate(ws)
        try:
            async for message in ws:
                recorder.received.append(message)
                if message == "cmd:fragments":
                    await ws.send(["frag", "men", "ted"])
                elif message == "cmd:binfragments":
                    await ws.send([b"frag", b"men", b"ted"])
                elif message == "cmd:ping":
                    recorder.latency = await ws.ping()
                    await ws.send("pinged")
                elif message == "cmd:subprotocol":
                    await ws.send(ws.subprotocol or "")
                elif isinstance(message, str) and message.startswith("cmd:close "):
                    _, code, reason = message.split(" ", 2)
                    await ws.close(int(code), reason)
                    break
                else:
                    await ws.send(message)
        except ConnectionClosed as exc:
            recorder.exception = exc
        finally:
            recorder.done.set()

    return handler


@asynccontextmanager
async def trillium_echo_server(
    recorder: Recorder, **kwargs: Any
) -> AsyncIterator[tuple[trillium.WebSocketServer, int]]:
    """A trillium echo server on 127.0.0.1 with an ephemeral port; yields it and the port."""
    kwargs.setdefault("max_size", MAX_SIZE)
    async with trillium.serve(echo_handler(recorder), "127.0.0.1", 0, **kwargs) as server:
        yield server, server.sockets[0].getsockname()[1]


def short(data: object) -> str:
    """A readable summary of a (possibly 1 MiB) message for assertion messages."""
    if isinstance(data, (str, bytes)) and len(data) > 64:
        return f"<{type(data).__name__} of {len(data)}: {data[:32]!r}...>"
    return repr(data)


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip a test whose peer is missing; in CI (CI=true) a missing peer is a failure."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI must install it (tests/interop/setup.sh)")
    pytest.skip(reason)
