"""A ``trio-websocket`` peer for the interop tests.

``trio_websocket_peer.py server``: an echo server on 127.0.0.1, ephemeral port, printed
first as ``{"port": N}``; ``cmd:close CODE REASON`` closes with that code and reason.
After each connection it prints ``{"event": "closed", "code": ..., "reason": ...}``:
the close that trio-websocket reports.

``trio_websocket_peer.py client URL SCENARIO``: runs SCENARIO against a trillium echo
server, checks every answer, prints its observations as one JSON line and exits 0.
"""

from __future__ import annotations

import sys

import trio
from _common import BIG, BINARY, MAX_SIZE, TEXT, check, parse_close_command, report, summary
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)


async def handler(request: WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            message = await ws.get_message()
            close = parse_close_command(message)
            if close is not None:
                await ws.aclose(*close)
                break
            await ws.send_message(message)
    except ConnectionClosed:
        pass
    closed = ws.closed
    report(
        event="closed",
        code=closed.code if closed else None,
        reason=closed.reason if closed else None,
    )


async def run_server() -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve_websocket(
                handler,
                "127.0.0.1",
                0,
                None,
                max_message_size=MAX_SIZE,
                task_status=task_status,
            )
        )
        report(port=server.port)


async def expect_echo(ws: WebSocketConnection, message: str | bytes) -> None:
    await ws.send_message(message)
    answer = await ws.get_message()
    check(answer == message, f"echo of {summary(message)} came back as {summary(answer)}")


async def run_client(url: str, scenario: str) -> None:
    observed: dict[str, object] = {}
    async with open_websocket_url(url, max_message_size=MAX_SIZE) as ws:
        if scenario == "echo":
            await expect_echo(ws, TEXT)
            await expect_echo(ws, BINARY)
            await expect_echo(ws, BIG)
            await ws.send_message("cmd:fragments")
            check(await ws.get_message() == "fragmented", "fragmented text from trillium")
            await ws.aclose(4000, "done")
        elif scenario == "server-close":
            await ws.send_message("cmd:close 4002 server-bye")
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                observed["exception"] = [exc.reason.code, exc.reason.reason]
            else:
                check(False, "get_message() should raise ConnectionClosed")
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
    closed = ws.closed
    observed["close_code"] = closed.code if closed else None
    observed["close_reason"] = closed.reason if closed else None
    report(**observed)


def main() -> None:
    if sys.argv[1] == "server":
        trio.run(run_server)
    else:
        url, scenario = sys.argv[2], sys.argv[3]

        async def bounded() -> None:
            with trio.fail_after(15):
                await run_client(url, scenario)

        trio.run(bounded)


if __name__ == "__main__":
    main()
