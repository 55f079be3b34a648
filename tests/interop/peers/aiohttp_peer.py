"""An ``aiohttp`` peer for the interop tests.

``aiohttp_peer.py server``: an echo server (``web.WebSocketResponse``) on 127.0.0.1,
ephemeral port, printed first as ``{"port": N}``; ``cmd:close CODE REASON`` closes
with that code and reason. After each connection it prints ``{"event": "closed",
"code": ..., "reason": ...}`` with the close frame it received.

``aiohttp_peer.py client URL SCENARIO``: runs SCENARIO against a trillium echo server
with ``ClientSession.ws_connect``, checks every answer, prints its observations as one
JSON line and exits 0.
"""

from __future__ import annotations

import asyncio
import sys

from _common import BIG, BINARY, MAX_SIZE, TEXT, check, parse_close_command, report, summary
from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType, web


async def handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_SIZE)
    await ws.prepare(request)
    code = reason = None
    while True:
        msg = await ws.receive()
        if msg.type is WSMsgType.TEXT:
            close = parse_close_command(msg.data)
            if close is not None:
                await ws.close(code=close[0], message=close[1].encode())
                code = ws.close_code
                break
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
        elif msg.type is WSMsgType.CLOSE:
            code, reason = msg.data, msg.extra
            await ws.close()
            break
        else:  # CLOSING, CLOSED, ERROR
            code, reason = ws.close_code, repr(msg)
            break
    report(event="closed", code=code, reason=reason)
    return ws


async def run_server() -> None:
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    report(port=runner.addresses[0][1])
    await asyncio.Event().wait()


async def expect_echo(ws: ClientWebSocketResponse, message: str | bytes) -> None:
    if isinstance(message, str):
        await ws.send_str(message)
        answer = await ws.receive_str()
    else:
        await ws.send_bytes(message)
        answer = await ws.receive_bytes()
    check(answer == message, f"echo of {summary(message)} came back as {summary(answer)}")


async def run_client(url: str, scenario: str) -> None:
    observed: dict[str, object] = {}
    async with (
        ClientSession() as session,
        session.ws_connect(url, max_msg_size=MAX_SIZE, autoping=True) as ws,
    ):
        if scenario == "echo":
            await expect_echo(ws, TEXT)
            await expect_echo(ws, BINARY)
            await expect_echo(ws, BIG)
            await ws.send_str("cmd:fragments")
            check(await ws.receive_str() == "fragmented", "fragmented text from trillium")
            await ws.send_str("cmd:ping")  # trillium pings; aiohttp's autoping answers
            check(await ws.receive_str() == "pinged", "trillium's ping was answered")
            await ws.close(code=4000, message=b"done")
        elif scenario == "server-close":
            await ws.send_str("cmd:close 4002 server-bye")
            msg = await ws.receive()
            observed["message"] = [msg.type.name, msg.data, msg.extra]
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")
    observed["close_code"] = ws.close_code
    report(**observed)


def main() -> None:
    if sys.argv[1] == "server":
        asyncio.run(run_server())
    else:
        asyncio.run(asyncio.wait_for(run_client(sys.argv[2], sys.argv[3]), 15))


if __name__ == "__main__":
    main()
