"""Plain HTTP/1.1 through the ASGI server, in process: ``http`` scopes, bodies in and out,
keep-alive and pipelining, ``http.disconnect``, and what happens when the app fails."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio

from ._support import TEST_TIMEOUT, asgi_serving, drain_body, respond


async def raw_exchange(port: int, data: bytes, *, until: bytes | None = None) -> bytes:
    """Send ``data`` on a fresh TCP connection; read until EOF (or ``until`` is seen)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    received = b""
    while until is None or until not in received:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        received += chunk
    await stream.aclose()
    return received


async def body_echo(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    body = await drain_body(receive)
    headers = [(b"content-type", b"text/plain"), (b"x-method", scope["method"].encode())]
    await respond(send, 200, body or scope["path"].encode(), headers)


async def test_http_scope_fields() -> None:
    scopes: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scopes.append(scope)
        await respond(send, 204)

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app, root_path="/api") as (server, port):
            server.state["pool"] = "db"
            async with httpx.AsyncClient() as client:
                response = await client.get(
                    f"http://127.0.0.1:{port}/a%20b?x=1", headers={"X-Two": "2"}
                )
            assert response.status_code == 204
    (scope,) = scopes
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1" and scope["method"] == "GET"
    assert scope["scheme"] == "http" and scope["root_path"] == "/api"
    assert scope["path"] == "/api/a b" and scope["raw_path"] == b"/api/a%20b"
    assert scope["query_string"] == b"x=1"
    assert (b"x-two", b"2") in scope["headers"]
    assert scope["server"] == ("127.0.0.1", port) and scope["client"][0] == "127.0.0.1"
    assert scope["state"] == {"pool": "db"}


async def test_keep_alive_content_length_and_chunked_bodies() -> None:
    async def chunks() -> Any:
        for part in (b"abc", b"", b"def" * 10000):
            yield part

    with trio.fail_after(TEST_TIMEOUT):
        async with (
            asgi_serving(body_echo) as (_, port),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            response = await client.post("/", content=b"hello")
            assert response.text == "hello"
            assert response.headers["content-length"] == "5"
            assert response.headers["server"] == "trillium"
            response = await client.post("/", content=chunks())  # Transfer-Encoding: chunked
            assert response.content == b"abc" + b"def" * 10000
            response = await client.get("/path")
            assert response.text == "/path"
            response = await client.head("/path")
            assert response.status_code == 200 and response.content == b""
            assert response.headers["x-method"] == "HEAD"


async def test_pipelined_requests_are_answered_in_order() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(body_echo) as (_, port):
            data = await raw_exchange(
                port,
                b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b"/one") < data.index(b"abc") < data.index(b"/three")


async def test_expect_100_continue() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(body_echo) as (_, port):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
            )
            interim = await stream.receive_some(65536)
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send_all(b"body")
            response = b""
            while b"body" not in response:
                response += await stream.receive_some(65536)
            assert response.startswith(b"HTTP/1.1 200 OK")
            await stream.aclose()


async def test_streaming_response_and_disconnect_while_streaming() -> None:
    outcome: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/short":
            for part in (b"one ", b"two ", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        # Stream until the client leaves: receive() reports it as http.disconnect,
        # and send() raises an OSError.
        await send({"type": "http.response.body", "body": b"start", "more_body": True})
        assert (await receive())["type"] == "http.request"
        outcome.append((await receive())["type"])
        try:
            while True:
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                await trio.sleep(0.01)
        except OSError as exc:
            outcome.append(type(exc).__name__)

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port):
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/short")
                assert response.text == "one two three"
                assert response.headers["transfer-encoding"] == "chunked"
            data = await raw_exchange(
                port, b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n", until=b"start"
            )
            assert b"start" in data
            while len(outcome) < 2:
                await trio.sleep(0.01)
    assert outcome == ["http.disconnect", "ClientDisconnected"]


async def test_receive_after_the_response_is_http_disconnect() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await drain_body(receive)
        await respond(send, 200, b"ok")
        seen.append(await receive())
        with pytest.raises(RuntimeError, match="complete"):
            await send({"type": "http.response.body", "body": b"more"})

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port), httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
            assert (await client.get(f"http://127.0.0.1:{port}/")).text == "ok"
    assert seen == [{"type": "http.disconnect"}] * 2


async def test_app_errors_give_500_and_the_server_keeps_serving() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/raise":
            raise RuntimeError("boom (on purpose)")
        if path == "/nothing":
            return
        if path == "/half":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            raise RuntimeError("boom mid-response (on purpose)")
        if path == "/bad-order":
            await send({"type": "http.response.body", "body": b"no start"})
        await respond(send, 200, b"fine")

    with trio.fail_after(TEST_TIMEOUT):
        async with (
            asgi_serving(app) as (_, port),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        ):
            for path in ("/raise", "/nothing", "/bad-order"):
                response = await client.get(path)
                assert response.status_code == 500, path
                assert response.text == "Internal Server Error"
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/half")  # a truncated response: connection cut
            assert (await client.get("/")).text == "fine"


async def test_a_complete_response_stands_when_the_app_raises_afterwards() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await respond(send, 503, b"sorry")  # as Starlette's error middleware does
        raise RuntimeError("re-raised after responding (on purpose)")

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port), httpx.AsyncClient() as client:
            for _ in range(2):  # and the connection is reused
                response = await client.get(f"http://127.0.0.1:{port}/")
                assert (response.status_code, response.text) == (503, "sorry")


async def test_malformed_request_gets_400() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(body_echo) as (_, port):
            data = await raw_exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"Invalid HTTP request received." in data


async def test_request_head_over_max_header_size_is_refused() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(body_echo, max_header_size=1024) as (_, port):
            ok = await raw_exchange(
                port,
                b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 900 + b"\r\nConnection: close\r\n\r\n",
            )
            too_big = await raw_exchange(
                port, b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 2000 + b"\r\n\r\n"
            )
    assert ok.startswith(b"HTTP/1.1 200 ")
    assert too_big.startswith(b"HTTP/1.1 431 ")


async def test_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(body_echo, timeout_keep_alive=0.2) as (_, port):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            start = trio.current_time()
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 200 ")
            assert 0.15 < trio.current_time() - start < 3
            await stream.aclose()


async def test_unread_request_body_is_drained_for_the_next_request() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await respond(send, 200, b"did not read it")

    with trio.fail_after(TEST_TIMEOUT):
        async with asgi_serving(app) as (_, port), httpx.AsyncClient() as client:
            for _ in range(3):
                response = await client.post(f"http://127.0.0.1:{port}/", content=b"x" * 5000)
                assert response.text == "did not read it"
