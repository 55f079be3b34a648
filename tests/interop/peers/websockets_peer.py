"""A ``websockets`` (asyncio) peer for the interop tests.

``websockets_peer.py server [COMPRESSION]``: an echo server on 127.0.0.1, ephemeral
port, printed first as ``{"port": N}``. It selects subprotocol ``chat.v1`` when offered
(refusing other offers), obeys ``cmd:close CODE
REASON`` (closes with that), ``cmd:ping`` (pings, answers ``pinged`` after the pong),
``cmd:subprotocol`` and ``cmd:deflate`` (answers, as JSON, the negotiated
permessage-deflate parameters and how many compressed frames it received); after each
connection it prints ``{"event": "closed", ...}`` with the close code and reason it
received and the exception it saw.

``websockets_peer.py client URL SCENARIO [COMPRESSION]``: runs SCENARIO against a
trillium echo server (see ``echo_handler`` in ``_helpers.py``), checks every answer,
prints its observations as one JSON line and exits 0.

COMPRESSION is ``default`` (websockets' own permessage-deflate settings, the default),
``strict`` (no context takeover either way, 10-bit windows both ways) or ``off``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

from _common import (
    BIG,
    BINARY,
    JSON_TEXT,
    MAX_SIZE,
    TEXT,
    ZEBRA,
    check,
    parse_close_command,
    report,
    summary,
)
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.extensions import permessage_deflate
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)

# Count the compressed frames (RSV1 set) each connection receives: proof that the
# peer really compressed, not merely negotiated.
_decode = PerMessageDeflate.decode


def _counting_decode(self: Any, frame: Any, *, max_size: int | None = None) -> Any:
    if frame.rsv1:
        self.compressed_in = getattr(self, "compressed_in", 0) + 1
    return _decode(self, frame, max_size=max_size)


permessage_deflate.PerMessageDeflate.decode = _counting_decode  # type: ignore[method-assign]

STRICT = {
    "server_no_context_takeover": True,
    "client_no_context_takeover": True,
    "server_max_window_bits": 10,
    "client_max_window_bits": 10,
}


def compression_kwargs(mode: str, side: str) -> dict[str, Any]:
    """connect()/serve() arguments for COMPRESSION ``mode``."""
    if mode == "default":
        return {}  # compression="deflate", websockets' default
    if mode == "off":
        return {"compression": None}
    if mode == "strict":
        factory = (
            ClientPerMessageDeflateFactory if side == "client" else ServerPerMessageDeflateFactory
        )
        return {"compression": None, "extensions": [factory(**STRICT)]}  # type: ignore[arg-type]
    raise SystemExit(f"unknown compression mode {mode!r}")


def deflate_state(ws: Any) -> dict[str, Any]:
    """The negotiated permessage-deflate parameters, and the compressed frames received."""
    for ext in ws.protocol.extensions:
        if isinstance(ext, PerMessageDeflate):
            return {
                "remote_no_context_takeover": ext.remote_no_context_takeover,
                "local_no_context_takeover": ext.local_no_context_takeover,
                "remote_max_window_bits": ext.remote_max_window_bits,
                "local_max_window_bits": ext.local_max_window_bits,
                "compressed_in": getattr(ext, "compressed_in", 0),
            }
    return {}


async def handler(ws: ServerConnection) -> None:
    exception = None
    try:
        async for message in ws:
            close = parse_close_command(message)
            if close is not None:
                await ws.close(*close)
                break
            if message == "cmd:ping":
                pong_waiter = await ws.ping(b"from websockets")
                await asyncio.wait_for(pong_waiter, 10)
                await ws.send("pinged")
            elif message == "cmd:subprotocol":
                await ws.send(ws.subprotocol or "")
            elif message == "cmd:deflate":
                await ws.send(json.dumps(deflate_state(ws)))
            else:
                await ws.send(message)
    except ConnectionClosed as exc:
        exception = type(exc).__name__
    await ws.wait_closed()
    report(
        event="closed",
        code=ws.close_code,
        reason=ws.close_reason,
        exception=exception,
        subprotocol=ws.subprotocol,
    )


def select_subprotocol(ws: ServerConnection, offered: Sequence[str]) -> str | None:
    """``chat.v1`` if offered; no subprotocol if none offered; refuse (400) otherwise."""
    if "chat.v1" in offered:
        return "chat.v1"
    if offered:
        raise NegotiationError(f"unsupported subprotocols {offered}; supported: chat.v1")
    return None


async def run_server(compression: str) -> None:
    async with serve(
        handler,
        "127.0.0.1",
        0,
        max_size=MAX_SIZE,
        select_subprotocol=select_subprotocol,
        **compression_kwargs(compression, "server"),
    ) as server:
        report(port=server.sockets[0].getsockname()[1])
        await server.serve_forever()


async def expect_echo(ws, message) -> None:  # type: ignore[no-untyped-def]
    await ws.send(message)
    answer = await ws.recv()
    check(answer == message, f"echo of {summary(message)} came back as {summary(answer)}")


async def run_client(url: str, scenario: str, compression: str) -> None:
    # websockets offers permessage-deflate by default.
    async with connect(
        url,
        max_size=MAX_SIZE,
        subprotocols=["chat.v1", "chat.v0"],
        **compression_kwargs(compression, "client"),
    ) as ws:
        observed: dict[str, object] = {
            "subprotocol": ws.subprotocol,
            "extensions": [type(ext).__name__ for ext in ws.protocol.extensions],
        }
        if scenario == "full":
            await expect_echo(ws, TEXT)
            await expect_echo(ws, BINARY)
            await expect_echo(ws, BIG)
            # A fragmented message from websockets, reassembled by trillium.
            await ws.send(["frag", "men", "ted"])
            check(await ws.recv() == "fragmented", "fragmented text echo")
            await ws.send([b"\x00\x01", b"\x02"])
            check(await ws.recv() == b"\x00\x01\x02", "fragmented binary echo")
            # A fragmented message from trillium, reassembled by websockets.
            await ws.send("cmd:fragments")
            check(await ws.recv() == "fragmented", "fragmented text from trillium")
            await ws.send("cmd:binfragments")
            check(await ws.recv() == b"fragmented", "fragmented binary from trillium")
            # websockets pings, trillium answers.
            latency = await asyncio.wait_for(await ws.ping(b"ws-client-ping"), 10)
            observed["ping_latency"] = latency
            # trillium pings, websockets answers.
            await ws.send("cmd:ping")
            check(await ws.recv() == "pinged", "trillium's ping was answered")
            await ws.send("cmd:subprotocol")
            observed["server_subprotocol"] = await ws.recv()
            await ws.close(4001, "bye")
            observed["exception"] = None
        elif scenario == "compressed":
            # Large compressible messages both ways, whole and fragmented, many in a row
            # (context takeover, unless negotiated off).
            for message in (JSON_TEXT, ZEBRA, BIG, TEXT, JSON_TEXT, ZEBRA):
                await expect_echo(ws, message)
            await ws.send([JSON_TEXT[:100_000], JSON_TEXT[100_000:]])
            check(await ws.recv() == JSON_TEXT, "fragmented compressible text echo")
            await ws.send([ZEBRA, b"", ZEBRA])
            check(await ws.recv() == ZEBRA + ZEBRA, "fragmented compressible binary echo")
            await ws.send("cmd:fragments")
            check(await ws.recv() == "fragmented", "fragmented text from trillium")
            await ws.send("cmd:binfragments")
            check(await ws.recv() == b"fragmented", "fragmented binary from trillium")
            observed["deflate"] = deflate_state(ws)
            await ws.close(1000, "done")
            observed["exception"] = None
        elif scenario == "server-close":
            await ws.send("cmd:close 4002 server-bye")
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                observed["exception"] = type(exc).__name__
                observed["rcvd"] = [exc.rcvd.code, exc.rcvd.reason] if exc.rcvd else None
            else:
                check(False, "recv() should raise ConnectionClosed after the server closed")
        elif scenario == "wait-close":
            # Wait for the server to close the connection (e.g. on shutdown).
            await expect_echo(ws, "hello")
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                observed["exception"] = type(exc).__name__
                observed["rcvd"] = [exc.rcvd.code, exc.rcvd.reason] if exc.rcvd else None
            else:
                check(False, "recv() should raise ConnectionClosed after the server closed")
        elif scenario == "too-big":
            # One byte over a 64 KiB max_size: trillium must fail the connection with 1009.
            await ws.send(b"x" * (2**16 + 1))
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                observed["exception"] = type(exc).__name__
                observed["rcvd"] = [exc.rcvd.code, exc.rcvd.reason] if exc.rcvd else None
            else:
                check(False, "recv() should raise ConnectionClosed after a too big message")
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
    observed["close_code"] = ws.close_code
    observed["close_reason"] = ws.close_reason
    report(**observed)


def main() -> None:
    if sys.argv[1] == "server":
        asyncio.run(run_server(sys.argv[2] if len(sys.argv) > 2 else "default"))
    else:
        compression = sys.argv[4] if len(sys.argv) > 4 else "default"
        asyncio.run(asyncio.wait_for(run_client(sys.argv[2], sys.argv[3], compression), 15))


if __name__ == "__main__":
    main()
