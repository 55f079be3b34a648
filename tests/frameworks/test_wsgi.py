"""``trillium.Server.accept(environ)`` and Flask-Sock (with trillium installed as
``simple_websocket``) in a Flask app served by Werkzeug (in this process, threaded)
and by Gunicorn (gthread workers, in a subprocess), driven by trillium's Client and
AioClient and by the ``websockets`` client."""

from __future__ import annotations

import asyncio
import importlib
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as websockets_connect

import trillium

from .._faces import PROC_TIMEOUT, free_port, wait_for_port

APPS = Path(__file__).parent / "apps"
UPGRADE = (
    "GET /ws?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture(scope="module")
def werkzeug_url() -> Iterator[str]:
    """The app under Werkzeug's threaded server, in this process."""
    from werkzeug.serving import make_server

    saved = {name: sys.modules.get(name) for name in ("simple_websocket", "flask_sock")}
    sys.path.insert(0, str(APPS))
    try:
        module = importlib.import_module("wsgi_app")
        server = make_server("127.0.0.1", 0, module.app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            thread.join(10)
            server.server_close()
    finally:
        sys.path.remove(str(APPS))
        sys.modules.pop("wsgi_app", None)
        for name, saved_module in saved.items():  # simple_websocket is trillium no more
            if saved_module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = saved_module


@pytest.fixture(scope="module")
def gunicorn_url() -> Iterator[str]:
    """The app under Gunicorn (one gthread worker, 8 threads), in a subprocess."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn",
            "--worker-class", "gthread", "--workers", "1", "--threads", "8",
            "--bind", f"127.0.0.1:{port}", "--chdir", str(APPS),
            "--graceful-timeout", "1", "--log-level", "warning",
            "wsgi_app:app",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=PROC_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        assert "Traceback" not in err, err


@pytest.fixture(params=["werkzeug", "gunicorn"])
def server(request: pytest.FixtureRequest) -> str:
    """host:port of the app under each WSGI server."""
    return str(request.getfixturevalue(f"{request.param}_url"))


def events(server: str) -> list[Any]:
    with urllib.request.urlopen(f"http://{server}/events", timeout=5) as response:
        return list(json.load(response))


def wait_for_event(server: str, event: list[Any]) -> None:
    deadline = time.monotonic() + 10
    while event not in events(server):
        assert time.monotonic() < deadline, f"{event} not in {events(server)}"
        time.sleep(0.02)


def test_server_accept_with_the_blocking_client(
    server: str, request: pytest.FixtureRequest
) -> None:
    with trillium.Client.connect(f"ws://{server}/ws", subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        for message in ("hello", b"\x00binary", "é" * 300):
            ws.send(message)
            assert ws.receive(timeout=5) == message
        started = time.monotonic()
    assert time.monotonic() - started < 2  # the server ended TCP at once
    wait_for_event(server, ["closed", 1000])
    wsgi_server = request.node.callspec.params["server"]
    assert ["accepted", wsgi_server, "chat"] in events(server)  # Server.mode


def test_server_close_timeout_and_max_message_size(server: str) -> None:
    ws = trillium.Client.connect(f"ws://{server}/ws?timeout=0.3")
    assert ws.receive(timeout=5) == "anyone there?"  # the view's receive(timeout) ran out
    ws.send("close please")
    with pytest.raises(trillium.ConnectionClosed) as info:
        ws.receive(timeout=5)
    assert (info.value.reason, info.value.message) == (4000, "as asked")

    ws = trillium.Client.connect(f"ws://{server}/ws")
    ws.send(b"x" * 1001)  # the view's max_message_size is 1000
    with pytest.raises(trillium.ConnectionClosed) as info:
        ws.receive(timeout=5)
    assert info.value.reason == 1009


def test_server_ping_interval_drops_a_silent_client(server: str) -> None:
    host, port = server.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(UPGRADE.format(query="ping=0.2&tag=silent").encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        # Never answer: after a ping and one interval without a pong, the view's
        # receive() raises ConnectionClosed and TCP is closed.
        started = time.monotonic()
        while sock.recv(4096):
            pass
        assert time.monotonic() - started < 5
    wait_for_event(server, ["closed", 1006, "silent"])


def test_client_vanishing_mid_receive_ends_the_view(server: str) -> None:
    host, port = server.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(UPGRADE.format(query="tag=vanished").encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    # Gone without a close frame: the view's blocking receive() raises at once.
    wait_for_event(server, ["closed", 1006, "vanished"])


def test_aio_client(server: str) -> None:
    async def main() -> None:
        ws = await trillium.AioClient.connect(f"ws://{server}/ws")
        await ws.send("async")
        assert await ws.receive(timeout=5) == "async"
        await ws.close()

    asyncio.run(asyncio.wait_for(main(), 15))


def test_flask_sock_echo_with_websockets(server: str) -> None:
    # websockets offers permessage-deflate, and Flask-Sock's server takes it, as with
    # simple-websocket.
    with websockets_connect(f"ws://{server}/sock") as ws:
        assert ws.response is not None
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        ws.send("text")
        assert ws.recv(timeout=5) == "text"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=5) == b"\x00\x01binary"
        ws.send("compressible " * 10_000)
        assert ws.recv(timeout=5) == "compressible " * 10_000
        started = time.monotonic()
        ws.close()
        assert time.monotonic() - started < 2
    assert ws.close_code == 1000  # Flask-Sock's server echoed our close frame


def test_flask_sock_echo_with_trillium_clients(server: str) -> None:
    with trillium.Client.connect(f"ws://{server}/sock") as ws:
        ws.send("text")
        assert ws.receive(timeout=5) == "text"
        ws.send(b"bin")
        assert ws.receive(timeout=5) == b"bin"
        ws.close(1000, "done")
        assert ws.close_reason == 1000  # the server's answer to our close

    async def main() -> None:
        async with await trillium.AioClient.connect(f"ws://{server}/sock") as ws:
            await ws.send("async")
            assert await ws.receive(timeout=5) == "async"

    asyncio.run(asyncio.wait_for(main(), 15))
