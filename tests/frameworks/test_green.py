"""The blocking face under eventlet and gevent: ``trillium.Server.accept(environ)``
and Flask-Sock (trillium installed as ``simple_websocket``) in wsgi_app.py's Flask
app, served by Gunicorn's gevent and eventlet workers, gevent.pywsgi and
eventlet.wsgi, and ``trillium.Client`` in greenlets of a monkey-patched process.

Every green process is a subprocess, monkey-patched as the servers' users do it;
this process is never patched. The clients here are ``websockets``' and trillium's
blocking ones, on real threads. Gunicorn dropped its eventlet worker in 26: an older
Gunicorn is used for that one (``nox -s tests`` installs it; see
``_gunicorn_with_eventlet``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed as WebSocketsClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websockets_connect

import trillium

from .._faces import PROC_TIMEOUT, free_port, wait_for_port
from .test_wsgi import APPS, events, wait_for_event

pytest.importorskip("gevent")
pytest.importorskip("eventlet")

REPO = Path(__file__).parents[2]
#: Where ``nox -s tests`` puts a Gunicorn that still has ``-k eventlet``.
OLD_GUNICORN = REPO / ".nox" / "gunicorn-eventlet"
SERVERS = ["gunicorn-gevent", "gunicorn-eventlet", "gevent-pywsgi", "eventlet-wsgi"]


def _gunicorn_with_eventlet() -> str:
    """A ``sys.path`` entry with a Gunicorn that has the eventlet worker ("" for the
    installed one); installed into OLD_GUNICORN with pip if it isn't there yet."""
    if importlib.util.find_spec("gunicorn.workers.geventlet") is not None:
        return ""
    if not (OLD_GUNICORN / "gunicorn" / "workers" / "geventlet.py").exists():
        pip = subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                "--target", str(OLD_GUNICORN), "gunicorn>=22,<26",
            ],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if pip.returncode != 0:
            pytest.skip(f"no Gunicorn with an eventlet worker (gunicorn<26): {pip.stderr}")
    return str(OLD_GUNICORN)


def _start(name: str, port: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if name.startswith("gunicorn"):
        worker = name.partition("-")[2]
        path = _gunicorn_with_eventlet() if worker == "eventlet" else ""
        if path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, env.get("PYTHONPATH")]))
        command = [
            sys.executable, "-m", "gunicorn",
            "--worker-class", worker, "--workers", "1",
            "--bind", f"127.0.0.1:{port}", "--chdir", str(APPS),
            "--graceful-timeout", "1", "--log-level", "warning",
            "wsgi_app:app",
        ]  # fmt: skip
    else:
        library = name.partition("-")[0]
        command = [sys.executable, str(APPS / "green_server.py"), library, str(port)]
    return subprocess.Popen(
        command, cwd=APPS, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="module")
def green_servers() -> Iterator[dict[str, str]]:
    """host:port of each green server, started on first use, all stopped at the end
    (their stderr must show no traceback)."""
    procs: dict[str, subprocess.Popen[str]] = {}

    class Servers(dict[str, str]):
        def __missing__(self, name: str) -> str:
            port = free_port()
            procs[name] = proc = _start(name, port)
            wait_for_port(port, proc)
            self[name] = f"127.0.0.1:{port}"
            return self[name]

    try:
        yield Servers()
    finally:
        errors = {}
        for name, proc in procs.items():
            proc.terminate()
            try:
                _, errors[name] = proc.communicate(timeout=PROC_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, errors[name] = proc.communicate()
        for name, err in errors.items():
            assert "Traceback" not in err, f"{name}:\n{err}"


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, green_servers: dict[str, str]) -> str:
    """host:port of wsgi_app.py's app under each green server."""
    return green_servers[request.param]


def _echo(ws: ClientConnection, *messages: str | bytes) -> None:
    for message in messages:
        ws.send(message)
        assert ws.recv(timeout=10) == message


def test_flask_sock_echoes_text_and_binary_then_closes_with_1000(server: str) -> None:
    with websockets_connect(f"ws://{server}/sock", open_timeout=10) as ws:
        _echo(ws, "text", b"\x00\x01binary", "compressible " * 10_000)
        ws.close()
    assert ws.close_code == 1000  # Flask-Sock's server echoed our close frame


def test_trillium_client_echoes_through_flask_sock(server: str) -> None:
    with trillium.Client.connect(f"ws://{server}/sock") as ws:
        for message in ("text", b"\x00binary"):
            ws.send(message)
            assert ws.receive(timeout=10) == message
        ws.close(1000, "done")
        assert ws.close_reason == 1000


def test_server_accept_reports_the_server_and_closes_with_its_code(
    server: str, request: pytest.FixtureRequest
) -> None:
    tag = request.node.callspec.id
    with websockets_connect(f"ws://{server}/ws", subprotocols=["chat"], open_timeout=10) as ws:
        assert ws.subprotocol == "chat"
        _echo(ws, "hello", b"\x00bytes", "é" * 300)
        ws.send("close please")
        with pytest.raises(WebSocketsClosed):
            ws.recv(timeout=10)
    assert (ws.close_code, ws.close_reason) == (4000, "as asked")
    mode = "gunicorn" if tag.startswith("gunicorn") else tag.partition("-")[0]
    assert ["accepted", mode, "chat"] in events(server)  # Server.mode, as Flask-Sock reads it

    with websockets_connect(f"ws://{server}/ws?tag={tag}", open_timeout=10) as ws:
        ws.send(b"x" * 1001)  # the view's max_message_size is 1000
        with pytest.raises(WebSocketsClosed):
            ws.recv(timeout=10)
    assert ws.close_code == 1009


def test_echoes_while_another_connection_waits_in_receive(server: str) -> None:
    # The view of the first connection blocks in ws.receive(): were that blocking its
    # whole process, the second handshake, its echoes and the HTTP request would
    # never be answered (and the recv timeouts would fail the test).
    with websockets_connect(f"ws://{server}/ws", open_timeout=10) as idle:
        with websockets_connect(f"ws://{server}/ws", open_timeout=10) as busy:
            for i in range(50):
                _echo(busy, f"message {i}")
            with urllib.request.urlopen(f"http://{server}/events", timeout=10) as response:
                assert response.status == 200
        _echo(idle, "still there")


def test_plain_http_is_served_while_websockets_are_open(server: str) -> None:
    with websockets_connect(f"ws://{server}/sock", open_timeout=10) as ws:
        _echo(ws, "open")
        for _ in range(3):
            assert isinstance(events(server), list)
        _echo(ws, "still open")


def test_thirty_idle_connections_dont_starve_a_thirty_first(server: str) -> None:
    # More waiting views than eventlet's tpool (20) or gevent's threadpool (10) has
    # threads: a wait must park its greenlet in the hub, not hold a thread.
    with ExitStack() as stack:
        idle = [
            stack.enter_context(websockets_connect(f"ws://{server}/ws", open_timeout=10))
            for _ in range(30)
        ]
        with websockets_connect(f"ws://{server}/sock", open_timeout=10) as ws:
            _echo(ws, "through")
        for i, ws in enumerate(idle):
            _echo(ws, f"idle {i}")


def test_client_vanishing_ends_the_view_blocked_in_receive(server: str) -> None:
    host, port = server.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"GET /ws?tag=vanished HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    wait_for_event(server, ["closed", 1006, "vanished"])


@pytest.mark.parametrize("library", ["gevent", "eventlet"])
def test_blocking_client_in_patched_process_blocks_only_its_greenlet(
    library: str, green_servers: dict[str, str]
) -> None:
    server = green_servers[f"{library}-{'pywsgi' if library == 'gevent' else 'wsgi'}"]
    done = subprocess.run(
        [sys.executable, str(APPS / "green_client.py"), library, server],
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=PROC_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    results = json.loads(done.stdout)
    for name in "abc":  # "b" and "c" connected to "localhost"
        assert results[name]["echoed"] == [True, True]
        assert results[name]["nothing"] is None  # receive(timeout=0.3) ran out
        assert results[name]["ticked_while_waiting"] > 0  # the hub ran meanwhile
        assert results[name]["close_reason"] == 1000  # the server's answer to our close
    assert results["closed_by_server"] == [4000, "as asked"]
    assert results["left_open"] == "still here"
    wait_for_event(server, ["closed", 1001, f"left-open-{library}"])  # closed at exit


def test_trio_imported_after_patching_before_trillium_is_refused_with_advice() -> None:
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import trio, trillium\n"
        "trillium.Client.connect('ws://127.0.0.1:1/')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=PROC_TIMEOUT,
        check=False,
    )
    assert done.returncode != 0
    assert (
        "RuntimeError: trio was imported after gevent monkey-patched the standard "
        "library, before trillium: import trillium first (or before patching)"
    ) in done.stderr


def test_unpatched_process_gets_the_standard_primitives() -> None:
    from trillium import _green

    assert _green.library() is None  # this process is never patched
    assert type(_green.simple_queue()) is queue.SimpleQueue
    assert type(_green.event()) is threading.Event
    assert _green.socket_class() is socket.socket
