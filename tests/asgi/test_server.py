"""The ASGI server's life, in process: lifespan, graceful shutdown, where it listens
(TCP, Unix socket, TLS) and the event loop it runs on (trio, asyncio)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio
import trustme

import trillium
import trillium.asgi
from trillium.asgi.lifespan import LifespanFailure

from ._support import TEST_TIMEOUT, asgi_serving, drain_body, port_of, respond


def lifespan_app(log: list[str], *, fail: str | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    log.append("startup")
                    if fail == "startup":
                        await send({"type": "lifespan.startup.failed", "message": "no db"})
                        return
                    scope["state"]["db"] = "connected"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    log.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "http":
            await drain_body(receive)
            await respond(send, 200, scope["state"]["db"].encode())

    return app


async def test_lifespan_startup_state_and_shutdown() -> None:
    log: list[str] = []
    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(lifespan_app(log), lifespan="auto") as (server, port):
            assert log == ["startup"]
            assert server.state == {"db": "connected"}
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"http://127.0.0.1:{port}/")).text == "connected"
        assert log == ["startup", "shutdown"]


async def test_lifespan_startup_failure_stops_the_server_before_it_listens() -> None:
    log: list[str] = []
    with trio.fail_after(TEST_TIMEOUT), pytest.raises(LifespanFailure, match="no db"):
        async with asgi_serving(lifespan_app(log, fail="startup"), lifespan="on"):
            pytest.fail("served after a failed startup")  # pragma: no cover
    assert log == ["startup"]


async def test_lifespan_unsupported_is_fine_in_auto_mode_and_fatal_in_on_mode() -> None:
    async def no_lifespan(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "lifespan not supported"
        await respond(send, 200, b"plain")

    with trio.fail_after(TEST_TIMEOUT):
        async with (
            asgi_serving(no_lifespan, lifespan="auto") as (_, port),
            httpx.AsyncClient() as client,
        ):
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "plain"
        with pytest.raises(LifespanFailure):
            async with asgi_serving(no_lifespan, lifespan="on"):
                pass  # pragma: no cover


async def test_port_in_use_raises_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            async with trillium.asgi.serve(respond, "127.0.0.1", port, lifespan="off"):
                pass  # pragma: no cover


async def test_graceful_close_finishes_in_flight_requests_and_closes_websockets() -> None:
    started = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await receive()
            return
        if scope["path"] == "/slow":
            started.set()
            await trio.sleep(0.5)
        await respond(send, 200, b"done")

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (server, port):
            base = f"http://127.0.0.1:{port}"
            async with (
                httpx.AsyncClient() as idle_client,
                httpx.AsyncClient() as client,
                trillium.connect(f"ws://127.0.0.1:{port}/") as ws,
                trio.open_nursery() as nursery,
            ):
                assert (await idle_client.get(base + "/")).text == "done"  # now idle
                results: list[httpx.Response] = []

                async def slow_request() -> None:
                    results.append(await client.get(base + "/slow"))

                nursery.start_soon(slow_request)
                await started.wait()
                await server.close()
                # The in-flight request finished; the WebSocket got 1001; no one
                # can connect any more.
                while not results:
                    await trio.sleep(0.01)
                assert results[0].text == "done"
                assert results[0].headers["connection"] == "close"
                with pytest.raises(trillium.ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1001
                with pytest.raises(httpx.ConnectError):
                    await idle_client.get(base + "/")


async def test_graceful_close_cancels_what_outlives_the_timeout() -> None:
    cancelled = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app, timeout_graceful_shutdown=0.2) as (server, port):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await trio.sleep(0.05)
            start = trio.current_time()
            await server.close()
            assert trio.current_time() - start < 2
            assert cancelled.is_set()
            assert await stream.receive_some(100) == b""  # cut without a response
            await stream.aclose()


async def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "asgi.sock")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": repr(scope["server"])})
            await receive()
        else:
            await respond(send, 200, repr((scope["client"], scope["server"])).encode())

    with trio.fail_after(TEST_TIMEOUT):
        async with trillium.asgi.serve(app, uds=path, lifespan="off", access_log=False):
            transport = httpx.AsyncHTTPTransport(uds=path)
            async with httpx.AsyncClient(transport=transport) as client:
                response = await client.get("http://localhost/")
                assert response.text == repr((None, (path, None)))
            async with trillium.unix_connect(path) as ws:
                assert await ws.recv() == repr((path, None))
    assert not Path(path).exists()  # removed on shutdown


async def test_tls_serves_https_and_wss() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] == "websocket.receive":
                await send(
                    {"type": "websocket.send", "text": f"{scope['scheme']}:{message['text']}"}
                )
        else:
            await respond(send, 200, scope["scheme"].encode())

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app, ssl=server_context) as (_, port):
            async with httpx.AsyncClient(verify=client_context) as client:
                assert (await client.get(f"https://localhost:{port}/")).text == "https"
            async with trillium.connect(f"wss://localhost:{port}/", ssl=client_context) as ws:
                await ws.send("secret")
                assert await ws.recv() == "wss:secret"
            # A client that doesn't speak TLS is dropped, and the server goes on.
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with trio.move_on_after(2):
                await stream.receive_some(100)  # whatever comes back, it's over
            await stream.aclose()
            async with httpx.AsyncClient(verify=client_context) as client:
                assert (await client.get(f"https://localhost:{port}/")).status_code == 200


def test_runs_on_asyncio_too() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] == "websocket.receive":
                await send({**message, "type": "websocket.send"})
        elif scope["type"] == "http":
            body = await drain_body(receive)
            await respond(send, 200, b"asyncio:" + body)

    async def main() -> None:
        import asyncio

        import websockets

        with anyio.fail_after(TEST_TIMEOUT):
            async with trillium.asgi.serve(
                app, "127.0.0.1", 0, lifespan="off", access_log=False, max_queue=2
            ) as server:
                port = port_of(server)
                async with httpx.AsyncClient() as client:
                    response = await client.post(f"http://127.0.0.1:{port}/", content=b"hi")
                    assert response.text == "asyncio:hi"
                uri = f"ws://127.0.0.1:{port}/"
                async with websockets.connect(uri) as ws:
                    for i in range(20):
                        await ws.send(f"m{i}")
                    assert [await ws.recv() for _ in range(20)] == [f"m{i}" for i in range(20)]
                    await ws.send(b"\x00\x01")
                    assert await ws.recv() == b"\x00\x01"
                async with websockets.connect(uri) as ws:
                    await server.close()
                    await asyncio.wait_for(ws.wait_closed(), 5)
                    assert ws.close_code == 1001

    anyio.run(main, backend="asyncio")
