"""The asyncio face: ``trillium.AioClient`` against a trillium server in another
thread, raw servers that misbehave and killed processes; ``AioServer.accept(sock=...)``
on a bare asyncio server.

The tests are plain functions that call ``asyncio.run`` (pytest runs ``async def``
tests on trio here). ``AioServer`` under aiohttp and ASGI servers is tested in
``frameworks/``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import trillium
from trillium.core.handshake import Request

from ._faces import echo_process, run_script, silent_server, tls_contexts, trio_server

TIMEOUT = 10


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(main(), TIMEOUT)

    return asyncio.run(bounded())


def test_text_binary_and_clean_close() -> None:
    with trio_server() as (url, closes):

        async def main() -> None:
            ws = await trillium.AioClient.connect(url)
            assert ws.connected
            await ws.send("Hello")
            assert await ws.receive() == "Hello"
            await ws.send(b"\x00\xff")
            assert await ws.receive() == b"\x00\xff"
            await ws.send(memoryview(b"mv"))
            assert await ws.receive() == b"mv"
            await ws.send(3.5)
            assert await ws.receive() == "3.5"
            await ws.close(4000, "bye")
            assert not ws.connected
            with pytest.raises(trillium.ConnectionClosed):
                await ws.close()  # as in simple-websocket

        run(main)
        assert closes.wait() == [(4000, "bye")]


def test_context_manager_and_async_iteration() -> None:
    with trio_server() as (url, closes):

        async def main() -> list[Any]:
            async with await trillium.AioClient.connect(url) as ws:
                await ws.send("a")
                await ws.send(b"b")
                await ws.send("!close 1000 done")
                got = [message async for message in ws]
                assert (ws.close_reason, ws.close_message) == (1000, "done")
                return got

        assert run(main) == ["a", b"b"]
        assert closes.wait() == [(1000, "done")]


def test_server_close_reaches_receive_after_pending_messages() -> None:
    with trio_server() as (url, _):

        async def main() -> None:
            ws = await trillium.AioClient.connect(url)
            await ws.send("last")
            await ws.send("!close 4001 going")
            assert await ws.receive() == "last"
            with pytest.raises(trillium.ConnectionClosed) as info:
                await ws.receive()
            assert (info.value.reason, info.value.message) == (4001, "going")
            with pytest.raises(trillium.ConnectionClosed):
                await ws.send("more")

        run(main)


def test_receive_timeout_returns_none() -> None:
    with trio_server() as (url, _):

        async def main() -> None:
            async with await trillium.AioClient.connect(url) as ws:
                assert await ws.receive(timeout=0) is None
                started = time.monotonic()
                assert await ws.receive(timeout=0.2) is None
                assert 0.15 < time.monotonic() - started < 2
                await ws.send("x")
                assert await ws.receive(timeout=5) == "x"
                await ws.send("y")
                while (message := await ws.receive(timeout=0)) is None:
                    await asyncio.sleep(0.01)
                assert message == "y"  # a zero timeout returns what is there

        run(main)


def test_subprotocols_headers_and_refusal() -> None:
    def refuse(connection: trillium.ServerConnection, request: Request) -> Any:
        if request.path == "/private":
            return connection.respond(403, "no\n")
        return None

    with trio_server(subprotocols=["b", "a"], process_request=refuse) as (url, _):

        async def main() -> None:
            async with await trillium.AioClient.connect(
                url, subprotocols=["a"], headers=[("X-Token", "t2")]
            ) as ws:
                assert ws.subprotocol == "a"
                await ws.send("!headers")
                headers = {k.lower(): v for k, v in json.loads(await ws.receive()).items()}
                assert headers["x-token"] == "t2"
            with pytest.raises(trillium.ConnectionError) as info:
                await trillium.AioClient.connect(url + "private")
            assert info.value.status_code == 403

        run(main)


def test_wss_with_an_ssl_context_and_verification_by_default() -> None:
    server_context, client_context = tls_contexts()
    with trio_server(ssl=server_context) as (url, _):
        wss = url.replace("ws://127.0.0.1", "wss://localhost")

        async def main() -> None:
            async with await trillium.AioClient.connect(wss, ssl_context=client_context) as ws:
                await ws.send("secret")
                assert await ws.receive(timeout=5) == "secret"
            with pytest.raises(ssl.SSLCertVerificationError):
                await trillium.AioClient.connect(wss)

        run(main)


def test_open_timeout() -> None:
    with silent_server(handshake=False) as url:

        async def main() -> None:
            with pytest.raises(TimeoutError):
                await trillium.AioClient.connect(url, open_timeout=0.3)

        started = time.monotonic()
        run(main)
        assert time.monotonic() - started < 3


def test_max_message_size_closes_with_1009() -> None:
    with trio_server() as (url, closes):

        async def main() -> None:
            ws = await trillium.AioClient.connect(url, max_message_size=1000)
            await ws.send("!big 1000")
            assert await ws.receive() == b"x" * 1000
            await ws.send("!big 1001")
            with pytest.raises(trillium.ConnectionClosed) as info:
                await ws.receive(timeout=5)
            assert info.value.sent is not None and info.value.sent.code == 1009

        run(main)
        assert closes.wait()[0][0] == 1009


def test_ping_interval_drops_a_peer_that_never_answers() -> None:
    with silent_server() as url:

        async def main() -> float:
            ws = await trillium.AioClient.connect(url, ping_interval=0.2)
            started = time.monotonic()
            with pytest.raises(trillium.ConnectionClosed):
                await ws.receive(timeout=5)
            return time.monotonic() - started

        assert 0.3 < run(main) < 3


def test_ping_interval_keeps_an_answering_peer() -> None:
    with trio_server() as (url, _):

        async def main() -> None:
            async with await trillium.AioClient.connect(url, ping_interval=0.05) as ws:
                assert await ws.receive(timeout=0.4) is None
                assert ws.connected
                await ws.send("still here")
                assert await ws.receive(timeout=5) == "still here"

        run(main)


def test_close_timeout_bounds_close() -> None:
    with silent_server() as url:

        async def main() -> None:
            ws = await trillium.AioClient.connect(url, close_timeout=0.3)
            await ws.close()
            assert not ws.connected

        started = time.monotonic()
        run(main)
        assert time.monotonic() - started < 3


def test_server_killed_mid_receive_raises_connection_closed() -> None:
    with echo_process() as (url, proc):

        async def main() -> None:
            ws = await trillium.AioClient.connect(url)
            await ws.send("hi")
            assert await ws.receive() == "hi"
            asyncio.get_running_loop().call_later(0.2, proc.kill)
            with pytest.raises(trillium.ConnectionClosed) as info:
                await ws.receive()  # no timeout: it must not hang
            assert info.value.reason == 1006

        run(main)


def test_server_accept_on_a_bare_socket() -> None:
    """AioServer.accept(sock=, headers=): the application read the request itself."""

    async def main() -> None:
        accepted: asyncio.Queue[socket.socket] = asyncio.Queue()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setblocking(False)
        loop = asyncio.get_running_loop()

        async def accept_one() -> None:
            conn, _ = await loop.sock_accept(listener)
            await accepted.put(conn)

        acceptor = asyncio.create_task(accept_one())
        port = listener.getsockname()[1]
        client_task = asyncio.create_task(
            trillium.AioClient.connect(f"ws://127.0.0.1:{port}/", subprotocols=["chat"])
        )
        conn = await accepted.get()
        head = b""
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(conn, 4096)
        lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")[1:]
        headers = dict(line.split(": ", 1) for line in lines)
        server = await trillium.AioServer.accept(sock=conn, headers=headers, subprotocols=["chat"])
        client = await client_task
        assert server.mode == "custom" and server.subprotocol == client.subprotocol == "chat"
        await client.send("ping")
        assert await server.receive(timeout=5) == "ping"
        await server.send(b"pong")
        assert await client.receive(timeout=5) == b"pong"
        await client.close(1000, "thanks")
        with pytest.raises(trillium.ConnectionClosed) as info:
            await server.receive(timeout=5)
        assert (info.value.reason, info.value.message) == (1000, "thanks")
        await acceptor
        listener.close()

    run(main)


def test_server_accept_refuses_an_invalid_upgrade_before_writing() -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        with pytest.raises(trillium.InvalidHandshake) as info:
            await trillium.AioServer.accept(sock=a, headers={"Host": "x", "Upgrade": "h2c"})
        assert info.value.status_code == 400
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)  # nothing was written
        a.close()
        b.close()

    run(main)


def test_accept_argument_rules() -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            await trillium.AioServer.accept(aiohttp=object(), sock=object())
        with pytest.raises(ValueError):
            await trillium.AioServer.accept()

    run(main)


async def test_on_trio_it_says_to_use_the_trio_api() -> None:
    with pytest.raises(RuntimeError, match=r"trillium\.connect"):
        await trillium.AioClient.connect("ws://127.0.0.1:1/")


LEAVE_OPEN = """
import asyncio, sys, trillium

async def main():
    ws = await trillium.AioClient.connect(sys.argv[1])
    await ws.send("hi")
    assert await ws.receive() == "hi"
    print("done", flush=True)   # and return without closing

asyncio.run(main())
"""


def test_asyncio_run_ending_with_an_open_connection_ends_quietly() -> None:
    """asyncio.run cancels every task at its end, the connection's too: it is dropped
    (no close frame; call close() first for a clean closure), without noise or delay."""
    with trio_server() as (url, closes):
        started = time.monotonic()
        result = run_script(LEAVE_OPEN, url)
        assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")
        assert time.monotonic() - started < 10
        assert len(closes.wait()) == 1
