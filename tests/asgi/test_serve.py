"""``python -m trillium serve``: real FastAPI and Starlette applications (``apps.py``)
served by the command line in a subprocess, driven by httpx (HTTP) and by real
WebSocket clients: websockets' and trillium's."""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect, unix_connect

import trillium

from ._servers import ServerProcess, start_trillium

#: Largest message the FastAPI server is started with (``--ws-max-size``).
MAX_SIZE = 65536


@pytest.fixture(scope="module")
def fastapi_server() -> Iterator[ServerProcess]:
    server = start_trillium("tests.asgi.apps:app", "--ws-max-size", str(MAX_SIZE))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def starlette_server() -> Iterator[ServerProcess]:
    server = start_trillium("tests.asgi.apps:starlette_app")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def raw_server() -> Iterator[ServerProcess]:
    server = start_trillium("tests.asgi.apps:raw_app")
    yield server
    server.stop()


def http_url(server: ServerProcess, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def ws_url(server: ServerProcess, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def events(server: ServerProcess, key: str) -> list[Any]:
    """What the application recorded under ``key`` (it may take a moment to finish)."""
    deadline = time.monotonic() + 5
    while True:
        recorded: list[Any] = httpx.get(http_url(server, f"/events/{key}")).json()
        if recorded or time.monotonic() > deadline:
            return recorded
        time.sleep(0.02)


def close_of(ws: Any) -> tuple[int | None, str | None]:
    """Wait for the server to close ``ws``; its close code and reason."""
    with pytest.raises(ConnectionClosed) as exc_info:
        ws.recv(timeout=5)
    rcvd = exc_info.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)


def refused(url: str, **kwargs: Any) -> Any:
    """The HTTP response that refused a WebSocket upgrade."""
    with pytest.raises(InvalidStatus) as exc_info:
        connect(url, open_timeout=5, **kwargs)
    return exc_info.value.response


# --------------------------------------------------------------------------- FastAPI: HTTP


def test_fastapi_http_routes(fastapi_server: ServerProcess) -> None:
    with httpx.Client(base_url=http_url(fastapi_server), timeout=5) as client:
        assert client.get("/").json() == {"hello": "world"}
        assert client.get("/state").json() == {"greeting": "hello from lifespan"}
        assert client.get("/missing").status_code == 404
        scope = client.get("/scope?a=1&b=2", headers={"X-Custom": "x"}).json()
        assert scope == {
            "type": "http",
            "scheme": "http",
            "path": "/scope",
            "root_path": "",
            "query_string": "a=1&b=2",
            "http_version": "1.1",
            "method": "GET",
            "x_custom": ["x"],
        }


def test_fastapi_keep_alive_reuses_the_connection(fastapi_server: ServerProcess) -> None:
    with httpx.Client(base_url=http_url(fastapi_server), timeout=5) as client:
        ports = {client.get("/client").json()["port"] for _ in range(5)}
    assert len(ports) == 1


def test_fastapi_request_bodies_content_length_and_chunked(fastapi_server: ServerProcess) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"first,"
        yield b"second," * 1000
        yield b"last"

    with httpx.Client(base_url=http_url(fastapi_server), timeout=5) as client:
        response = client.post("/echo", content=b"abc", headers={"Content-Type": "text/x"})
        assert response.content == b"abc"
        assert response.headers["x-body-length"] == "3"
        assert response.headers["content-type"].startswith("text/x")
        response = client.post("/echo", content=chunks())  # Transfer-Encoding: chunked
        assert response.content == b"first," + b"second," * 1000 + b"last"
        big = bytes(range(256)) * 4096  # 1 MiB
        assert client.post("/echo", content=big).content == big


def test_fastapi_streaming_response(fastapi_server: ServerProcess) -> None:
    with (
        httpx.Client(timeout=5) as client,
        client.stream("GET", http_url(fastapi_server, "/stream?n=4&delay=0.05")) as response,
    ):
        assert response.headers["transfer-encoding"] == "chunked"
        pieces = list(response.iter_raw())
    assert b"".join(pieces) == b"chunk 0\nchunk 1\nchunk 2\nchunk 3\n"
    assert len(pieces) >= 2  # it arrived as it was produced, not in one piece


def test_fastapi_http_exception_gives_500_and_the_server_keeps_serving(
    fastapi_server: ServerProcess,
) -> None:
    response = httpx.get(http_url(fastapi_server, "/error"), timeout=5)
    assert response.status_code == 500
    assert httpx.get(http_url(fastapi_server, "/"), timeout=5).status_code == 200
    assert "RuntimeError: boom (raised on purpose" in fastapi_server.output()


def test_access_log(fastapi_server: ServerProcess) -> None:
    httpx.get(http_url(fastapi_server, "/?logged=1"), timeout=5)
    with connect(ws_url(fastapi_server, "/ws/echo?logged=2")):
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        output = fastapi_server.output()
        if '"GET /?logged=1 HTTP/1.1" 200' in output and "/ws/echo?logged=2" in output:
            break
        time.sleep(0.02)
    assert '"GET /?logged=1 HTTP/1.1" 200' in output
    assert '"WebSocket /ws/echo?logged=2" [accepted]' in output


# --------------------------------------------------------------------------- FastAPI: WebSocket


def test_fastapi_websocket_echo_with_the_websockets_client(fastapi_server: ServerProcess) -> None:
    key = uuid.uuid4().hex
    with connect(ws_url(fastapi_server, f"/ws/echo?id={key}"), open_timeout=5) as ws:
        for message in ("héllo", b"\x00\x01\xff", "x" * 50_000, b"y" * MAX_SIZE):
            ws.send(message)
            assert ws.recv(timeout=5) == message
        ws.close(4005, "see you later")
    assert events(fastapi_server, key) == [{"code": 4005, "reason": "see you later"}]


async def test_fastapi_websocket_echo_with_the_trillium_client(
    fastapi_server: ServerProcess,
) -> None:
    key = uuid.uuid4().hex
    with trio.fail_after(10):
        async with trillium.connect(ws_url(fastapi_server, f"/ws/echo?id={key}")) as ws:
            assert ws.response is not None
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
            for message in ("compressed " * 1000, b"\x00" * 10_000):
                await ws.send(message)
                assert await ws.recv() == message
            # Pipelined: many messages in flight, answered in order.
            for i in range(200):
                await ws.send(f"n{i}")
            assert [await ws.recv() for _ in range(200)] == [f"n{i}" for i in range(200)]
        assert ws.close_code == 1000
        recorded = await trio.to_thread.run_sync(events, fastapi_server, key)
    assert recorded == [{"code": 1000, "reason": ""}]


def test_fastapi_websocket_scope(fastapi_server: ServerProcess) -> None:
    url = ws_url(fastapi_server, "/ws/scope?q=1")
    with connect(url, additional_headers={"X-Custom": "z"}, subprotocols=["a", "b"]) as ws:
        scope = json.loads(ws.recv(timeout=5))
    assert scope == {
        "type": "websocket",
        "asgi_version": "3.0",
        "scheme": "ws",
        "path": "/ws/scope",
        "raw_path": "/ws/scope",
        "root_path": "",
        "query_string": "q=1",
        "http_version": "1.1",
        "subprotocols": ["a", "b"],
        "x_custom": ["z"],
        "client_is_pair": True,
        "greeting": "hello from lifespan",
        "denial_extension": True,
    }


def test_subprotocol_selection(fastapi_server: ServerProcess) -> None:
    url = ws_url(fastapi_server, "/ws/subprotocol")
    for offered, chosen in (
        (["v1", "v2"], "v1"),
        (["v3", "v2"], "v2"),
        (["v9"], None),
        (None, None),
    ):
        with connect(url, subprotocols=offered, open_timeout=5) as ws:
            assert ws.subprotocol == chosen
            assert ws.recv(timeout=5) == (chosen or "none")


def test_close_before_accept_is_a_403(fastapi_server: ServerProcess) -> None:
    response = refused(ws_url(fastapi_server, "/ws/reject"))
    assert response.status_code == 403


def test_denial_response(fastapi_server: ServerProcess) -> None:
    response = refused(ws_url(fastapi_server, "/ws/deny"))
    assert response.status_code == 401
    assert response.headers["x-why"] == "token"
    assert response.body == b"no token, no chat"


def test_close_with_code_and_reason(fastapi_server: ServerProcess) -> None:
    with connect(ws_url(fastapi_server, "/ws/close"), open_timeout=5) as ws:
        assert close_of(ws) == (4001, "bye")


def test_app_exceptions_give_500_or_1011_and_the_server_keeps_serving(
    fastapi_server: ServerProcess,
) -> None:
    response = refused(ws_url(fastapi_server, "/ws/fail-before-accept"))
    assert response.status_code == 500
    with connect(ws_url(fastapi_server, "/ws/fail-after-accept"), open_timeout=5) as ws:
        ws.send("trigger")
        assert close_of(ws)[0] == 1011
    with connect(ws_url(fastapi_server, "/ws/echo"), open_timeout=5) as ws:
        ws.send("still serving")
        assert ws.recv(timeout=5) == "still serving"


def test_messages_after_close(fastapi_server: ServerProcess) -> None:
    key = uuid.uuid4().hex
    with connect(ws_url(fastapi_server, f"/ws/after-close?id={key}"), open_timeout=5) as ws:
        assert close_of(ws) == (1000, "")
    assert events(fastapi_server, key) == [
        ["websocket.send", "ClientDisconnected", True],  # an OSError, as the spec asks
        ["websocket.close", "ok"],  # closing twice is harmless
        ["receive", "websocket.disconnect"],
    ]


def test_message_over_max_size_is_1009(fastapi_server: ServerProcess) -> None:
    key = uuid.uuid4().hex
    with connect(ws_url(fastapi_server, f"/ws/echo?id={key}"), open_timeout=5) as ws:
        ws.send(b"z" * (MAX_SIZE + 1))
        assert close_of(ws)[0] == 1009
    assert events(fastapi_server, key)[0]["code"] == 1009


def test_seed_examples_with_trillium_as_simple_websocket(fastapi_server: ServerProcess) -> None:
    key = uuid.uuid4().hex
    with connect(ws_url(fastapi_server, f"/ws/simple?id={key}"), subprotocols=["echo"]) as ws:
        assert ws.subprotocol == "echo"
        ws.send("yo")
        assert ws.recv(timeout=5) == "Echo: yo"
        ws.close(1001)
    assert events(fastapi_server, key) == [{"closed": 1001}]

    url = ws_url(fastapi_server, "/ws/simple-subprotocols")
    with connect(url, subprotocols=["chat.v2"]) as ws:
        assert ws.recv(timeout=5) == "Welcome to Chat v2 with enhanced features!"
        ws.send("m")
        assert ws.recv(timeout=5) == "[chat.v2] Received: m"

    with connect(ws_url(fastapi_server, "/channels/")) as ws:
        assert ws.recv(timeout=5) == "Connected to Django Channels via simple-websocket"
        ws.send("abc")
        assert ws.recv(timeout=5) == "Processed text: ABC"
        ws.send(b"abc")
        assert ws.recv(timeout=5) == "Processed binary data: 3 bytes"


def test_trillium_asgi_websocket_wrapper_in_a_real_app(fastapi_server: ServerProcess) -> None:
    with connect(ws_url(fastapi_server, "/ws/wrapper?q=search")) as ws:
        ws.send(json.dumps({"n": 1}))
        assert json.loads(ws.recv(timeout=5)) == {
            "got": {"n": 1},
            "q": "search",
            "path": "/ws/wrapper",
            "greeting": "hello from lifespan",
        }


# --------------------------------------------------------------------------- Starlette, raw ASGI


def test_starlette_app(starlette_server: ServerProcess) -> None:
    assert httpx.get(http_url(starlette_server), timeout=5).text == "starlette says less is more"
    with connect(ws_url(starlette_server, "/ws"), open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "Welcome to the WebSocket server!"
        ws.send("hi")
        assert ws.recv(timeout=5) == "Text received: hi"
        ws.send(b"1234")
        assert ws.recv(timeout=5) == "Binary data received: 4 bytes"
    with connect(ws_url(starlette_server, "/ws/echo"), open_timeout=5) as ws:
        ws.send(b"\x00\x01")
        assert ws.recv(timeout=5) == b"\x00\x01"


def test_raw_asgi_app(raw_server: ServerProcess) -> None:
    response = httpx.get(http_url(raw_server), timeout=5)
    assert (response.status_code, response.text) == (404, "Not Found")
    with connect(ws_url(raw_server, "/"), subprotocols=["v2"], open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "Connected with subprotocol: v2"
        ws.send("hello")
        assert ws.recv(timeout=5) == str({"message_id": 1, "echo": "hello", "subprotocol": "v2"})
    assert "lifespan' protocol appears unsupported" in raw_server.output()


# --------------------------------------------------------------------------- lifecycle


def test_graceful_shutdown_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "lifespan.log"
    server = start_trillium("tests.asgi.apps:app", env={"TRILLIUM_TEST_LIFESPAN_LOG": str(log)})
    try:
        assert log.read_text() == "startup\n"
        results: list[Any] = []

        def slow_request() -> None:
            results.append(httpx.get(http_url(server, "/slow?delay=1"), timeout=10))

        thread = threading.Thread(target=slow_request)
        with connect(ws_url(server, "/ws/echo"), open_timeout=5) as ws:
            thread.start()
            time.sleep(0.3)  # the request is in flight
            server.terminate()
            start = time.monotonic()
            assert close_of(ws) == (1001, "server shutting down")
            assert time.monotonic() - start < 0.5  # at once, not after the request
        thread.join(10)
        assert results[0].status_code == 200 and results[0].json() == {"slept": 1.0}
        assert server.wait(10) == 0
        assert log.read_text() == "startup\nshutdown\n"
        with pytest.raises(httpx.ConnectError):
            httpx.get(http_url(server), timeout=2)
    finally:
        server.stop()


def test_unix_socket_and_root_path(tmp_path: Path) -> None:
    path = str(tmp_path / "app.sock")
    server = ServerProcess(
        [
            *start_args("tests.asgi.apps:app"),
            "--uds",
            path,
            "--root-path",
            "/api",
        ]
    )
    try:
        deadline = time.monotonic() + 15
        while not Path(path).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        # As behind a proxy that strips the prefix: the request comes without it,
        # the scope's path has it (as under uvicorn).
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport, timeout=5) as client:
            scope = client.get("http://localhost/scope").json()
        assert (scope["root_path"], scope["path"]) == ("/api", "/api/scope")
        with unix_connect(path, "ws://localhost/ws/echo") as ws:
            ws.send("over a unix socket")
            assert ws.recv(timeout=5) == "over a unix socket"
    finally:
        server.stop()


def start_args(app: str) -> list[str]:
    return [sys.executable, "-m", "trillium", "serve", app]


def test_tls_from_certificate_files(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    server = start_trillium(
        "tests.asgi.apps:starlette_app",
        "--ssl-certfile",
        str(certfile),
        "--ssl-keyfile",
        str(keyfile),
    )
    try:
        response = httpx.get(f"https://localhost:{server.port}/", verify=context, timeout=5)
        assert response.text == "starlette says less is more"
        with connect(f"wss://localhost:{server.port}/ws/echo", ssl=context) as ws:
            ws.send(b"secret")
            assert ws.recv(timeout=5) == b"secret"
    finally:
        server.stop()


def test_asyncio_backend(tmp_path: Path) -> None:
    server = start_trillium("tests.asgi.apps:app", "--backend", "asyncio")
    try:
        assert httpx.get(http_url(server, "/state"), timeout=5).json() == {
            "greeting": "hello from lifespan"
        }
        with connect(ws_url(server, "/ws/echo"), open_timeout=5) as ws:
            ws.send("on asyncio")
            assert ws.recv(timeout=5) == "on asyncio"
        server.terminate()
        assert server.wait(10) == 0
    finally:
        server.stop()


def test_bad_application_path_fails_clearly() -> None:
    server = ServerProcess(start_args("tests.asgi.apps:nope"))
    try:
        assert server.wait(15) == 1
        assert "has no attribute 'nope'" in server.output()
    finally:
        server.stop()
