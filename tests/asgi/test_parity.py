"""Parity: the same FastAPI application under ``trillium serve`` and under uvicorn
(its websockets and wsproto WebSocket backends) gives the same answers.

Each server gets the same probe: HTTP routes (JSON, 404, 500, bodies in both
framings, a streamed response, the scope) and WebSocket routes (echo, subprotocol
selection, close before accept, the denial response, close codes, the disconnect
code the application saw, the seed's simple-websocket examples). The results are
compared whole.

Two answers differ on purpose and are checked in ``test_serve.py`` instead:
an application that raises after accepting closes the connection with 1011 under
trillium (uvicorn drops TCP with no close frame), and ``websocket.send`` after
``websocket.close`` raises an ``OSError`` as the ASGI spec asks (uvicorn raises
RuntimeError).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from ._servers import ServerProcess, start_trillium, start_uvicorn

APP = "tests.asgi.apps:app"


def probe(port: int) -> dict[str, Any]:
    """Everything a client can observe of the application, as plain data."""
    base, ws_base = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    for path in ("/", "/state", "/missing", "/error", "/scope?a=1&b=%20"):
        # One connection each: after an error some servers close the connection.
        response = httpx.get(base + path, headers={"X-Custom": "c"}, timeout=5)
        out[path] = (response.status_code, response.headers.get("content-type"), response.text)
    with httpx.Client(base_url=base, timeout=5) as client:
        response = client.post("/echo", content=b"abc", headers={"Content-Type": "text/x"})
        out["post"] = (response.status_code, response.text, response.headers["x-body-length"])
        response = client.post("/echo", content=iter([b"a", b"b" * 5000]))
        out["post chunked"] = (response.status_code, len(response.content))
        response = client.get("/stream?n=3")
        out["stream"] = (response.status_code, response.text)

    def ws(path: str, exchange: Callable[[ClientConnection], Any], **kwargs: Any) -> Any:
        try:
            with connect(ws_base + path, open_timeout=5, **kwargs) as conn:
                return exchange(conn)
        except InvalidStatus as exc:
            response = exc.response
            return ("refused", response.status_code, response.body, response.headers.get("x-why"))

    def closed(conn: ClientConnection) -> Any:
        try:
            conn.recv(timeout=5)
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else None
        return "not closed"

    def echo(conn: ClientConnection) -> Any:
        replies = []
        for message in ("text", b"\x00bytes", "x" * 10_000):
            conn.send(message)
            replies.append(conn.recv(timeout=5))
        return replies

    def talk(*messages: str | bytes) -> Callable[[ClientConnection], Any]:
        def exchange(conn: ClientConnection) -> Any:
            replies = [conn.subprotocol]
            for message in messages:
                if message:
                    conn.send(message)
                replies.append(conn.recv(timeout=5))
            return replies

        return exchange

    out["ws echo"] = ws("/ws/echo", echo)
    for offered in (["v1", "v2"], ["v3", "v2"], ["v9"], None):
        out[f"ws subprotocol {offered}"] = ws("/ws/subprotocol", talk(""), subprotocols=offered)
    out["ws reject"] = ws("/ws/reject", closed)
    out["ws deny"] = ws("/ws/deny", closed)
    out["ws fail before accept"] = ws("/ws/fail-before-accept", closed)
    out["ws close"] = ws("/ws/close", closed)
    scope = ws("/ws/scope?q=1", talk(""), subprotocols=["a"], additional_headers={"X-Custom": "z"})
    out["ws scope"] = [scope[0], json.loads(scope[1])]
    out["ws simple"] = ws("/ws/simple", talk("yo"), subprotocols=["chat", "echo"])
    out["ws simple subprotocols"] = ws(
        "/ws/simple-subprotocols", talk("", "m"), subprotocols=["echo"]
    )
    out["ws wrapper"] = ws("/ws/wrapper?q=z", talk('{"a": 1}'))
    out["ws channels"] = ws("/channels/", talk("", "abc", b"abc"))
    for code, reason in ((1000, ""), (4005, "later")):
        key = uuid.uuid4().hex
        ws(f"/ws/echo?id={key}", lambda conn, c=code, r=reason: conn.close(c, r))
        out[f"disconnect seen by the app {code}"] = recorded(base, key)
    return out


def recorded(base: str, key: str) -> Any:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = httpx.get(f"{base}/events/{key}", timeout=5).json()
        if events:
            return events
        time.sleep(0.02)
    return None


@pytest.fixture(scope="module")
def trillium_answers() -> Iterator[dict[str, Any]]:
    server = start_trillium(APP)
    try:
        yield probe(server.port)
    finally:
        server.stop()


def servers() -> list[Any]:
    return [
        pytest.param(("--ws", "websockets"), id="uvicorn-websockets"),
        pytest.param(("--ws", "wsproto"), id="uvicorn-wsproto"),
    ]


@pytest.mark.parametrize("uvicorn_args", servers())
def test_same_answers_as_uvicorn(
    trillium_answers: dict[str, Any], uvicorn_args: tuple[str, ...]
) -> None:
    server: ServerProcess = start_uvicorn(APP, *uvicorn_args)
    try:
        uvicorn_answers = probe(server.port)
    finally:
        server.stop()
    assert trillium_answers.keys() == uvicorn_answers.keys()
    different = {
        key: (trillium_answers[key], uvicorn_answers[key])
        for key in trillium_answers
        if trillium_answers[key] != uvicorn_answers[key]
    }
    assert not different, f"trillium vs uvicorn: {different}"
    # And the answers are the right ones, not just the same.
    assert trillium_answers["ws close"] == (4001, "bye")
    assert trillium_answers["ws reject"][:2] == ("refused", 403)
    assert trillium_answers["ws deny"] == ("refused", 401, b"no token, no chat", "token")
    assert trillium_answers["disconnect seen by the app 4005"] == [
        {"code": 4005, "reason": "later"}
    ]
