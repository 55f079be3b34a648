"""The blocking face: ``trillium.Client`` (and the process-wide trio thread) against a
trillium server in another thread, raw servers that misbehave, and killed processes.

``trillium.Server`` (the WSGI takeover) is tested under real WSGI servers in
``frameworks/test_wsgi.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal

import trillium
from trillium.core.handshake import Headers, Request

from ._faces import GUID, PROC_TIMEOUT, echo_process, silent_server, tls_contexts, trio_server


def test_text_binary_and_clean_close() -> None:
    with trio_server() as (url, closes):
        ws = trillium.Client.connect(url)
        assert ws.connected
        ws.send("Hello")
        assert ws.receive() == "Hello"
        ws.send(b"\x00\xff")
        assert ws.receive() == b"\x00\xff"
        ws.send(bytearray(b"ba"))  # bytes-like: binary
        assert ws.receive() == b"ba"
        ws.send(42)  # anything else: its str(), as simple-websocket does
        assert ws.receive() == "42"
        ws.close(4000, "bye")
        assert not ws.connected
        assert closes.wait() == [(4000, "bye")]


def test_context_manager_and_iteration() -> None:
    with trio_server() as (url, closes):
        with trillium.Client.connect(url) as ws:
            ws.send("a")
            ws.send("!close 1000 done")
            assert list(ws) == ["a"]  # a normal closure ends the loop
            assert ws.close_reason == 1000 and ws.close_message == "done"
        assert closes.wait() == [(1000, "done")]


def test_server_close_is_connection_closed_with_code_and_text() -> None:
    with trio_server() as (url, _):
        ws = trillium.Client.connect(url)
        ws.send("last")
        ws.send("!close 4001 going")
        assert ws.receive() == "last"  # messages before the close come first
        with pytest.raises(trillium.ConnectionClosed) as info:
            ws.receive()
        assert (info.value.reason, info.value.message) == (4001, "going")
        with pytest.raises(trillium.ConnectionClosed):  # again, and for send
            ws.receive(timeout=0)
        with pytest.raises(trillium.ConnectionClosed):
            ws.send("more")
        with pytest.raises(trillium.ConnectionClosed):  # simple-websocket's close() too
            ws.close()


def test_receive_timeout_returns_none() -> None:
    with trio_server() as (url, _), trillium.Client.connect(url) as ws:
        assert ws.receive(timeout=0) is None
        started = time.monotonic()
        assert ws.receive(timeout=0.2) is None
        assert 0.15 < time.monotonic() - started < 2
        ws.send("x")
        assert ws.receive(timeout=5) == "x"
        ws.send("y")
        deadline = time.monotonic() + 5
        while (message := ws.receive(timeout=0)) is None:  # non-blocking poll
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert message == "y"


def test_subprotocols_and_headers() -> None:
    with trio_server(subprotocols=["b", "a"]) as (url, _):
        with trillium.Client.connect(url, subprotocols=["a", "c"], headers={"X-Token": "t1"}) as ws:
            assert ws.subprotocol == "a"
            ws.send("!headers")
            headers = {k.lower(): v for k, v in json.loads(ws.receive()).items()}
            assert headers["x-token"] == "t1"
        with trillium.Client.connect(url.replace("ws://", "http://"), subprotocols="b") as ws:
            assert ws.subprotocol == "b"  # one name, and an http:// URL, as simple-websocket


def test_compression_when_asked_for() -> None:
    with trio_server() as (url, _):  # trillium.serve accepts permessage-deflate
        with trillium.Client.connect(url) as ws:  # simple-websocket's client: no offer
            assert ws._connection is not None and not ws._connection.protocol.extensions
        with trillium.Client.connect(url, compression="deflate") as ws:
            assert ws._connection is not None and ws._connection.protocol.extensions
            text = "compressible " * 10_000
            ws.send(text)
            assert ws.receive(timeout=5) == text


def test_wss_with_an_ssl_context_and_verification_by_default() -> None:
    server_context, client_context = tls_contexts()
    with trio_server(ssl=server_context) as (url, _):
        wss = url.replace("ws://127.0.0.1", "wss://localhost")
        with trillium.Client.connect(wss, ssl_context=client_context) as ws:
            ws.send("secret")
            assert ws.receive(timeout=5) == "secret"
        with pytest.raises(ssl.SSLCertVerificationError):
            trillium.Client.connect(wss)  # the test CA isn't trusted by default


def test_refused_handshake_is_connection_error_with_status() -> None:
    def refuse(connection: trillium.ServerConnection, request: Request) -> trillium.Response:
        return connection.respond(403, "no\n")

    with trio_server(process_request=refuse) as (url, _):
        with pytest.raises(trillium.ConnectionError) as info:
            trillium.Client.connect(url)
        assert info.value.status_code == 403


def test_open_timeout() -> None:
    with silent_server(handshake=False) as url:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            trillium.Client.connect(url, open_timeout=0.3)
        assert time.monotonic() - started < 3


def test_max_message_size_closes_with_1009() -> None:
    with trio_server() as (url, closes):
        ws = trillium.Client.connect(url, max_message_size=1000)
        ws.send("!big 1000")
        assert ws.receive() == b"x" * 1000  # at the limit: fine
        ws.send("!big 1001")
        with pytest.raises(trillium.ConnectionClosed) as info:
            ws.receive(timeout=5)
        assert info.value.sent is not None and info.value.sent.code == 1009
        assert closes.wait()[0][0] == 1009


def test_ping_interval_drops_a_peer_that_never_answers() -> None:
    with silent_server() as url:
        ws = trillium.Client.connect(url, ping_interval=0.2)
        started = time.monotonic()
        with pytest.raises(trillium.ConnectionClosed):
            ws.receive(timeout=5)
        assert 0.3 < time.monotonic() - started < 3  # a ping, then no pong in 0.2 s


def test_ping_interval_keeps_an_answering_peer() -> None:
    with trio_server() as (url, _), trillium.Client.connect(url, ping_interval=0.05) as ws:
        assert ws.receive(timeout=0.4) is None  # several pings answered meanwhile
        assert ws.connected
        ws.send("still here")
        assert ws.receive(timeout=5) == "still here"


def test_close_timeout_bounds_close() -> None:
    with silent_server() as url:
        ws = trillium.Client.connect(url, close_timeout=0.3)
        started = time.monotonic()
        ws.close()
        assert time.monotonic() - started < 3
        assert not ws.connected


def test_server_killed_mid_receive_raises_connection_closed() -> None:
    with echo_process() as (url, proc):
        ws = trillium.Client.connect(url)
        ws.send("hi")
        assert ws.receive() == "hi"
        threading.Timer(0.2, proc.kill).start()
        started = time.monotonic()
        with pytest.raises(trillium.ConnectionClosed) as info:
            ws.receive()  # no timeout: it must not hang
        assert info.value.reason == 1006
        assert time.monotonic() - started < 5


def test_connection_reset_mid_receive_raises_connection_closed() -> None:
    with trio_server() as (url, _):
        ws = trillium.Client.connect(url)
        ws.send("!drop")
        with pytest.raises(trillium.ConnectionClosed) as info:
            ws.receive(timeout=5)
        assert info.value.reason == 1006


def test_max_queue_bounds_what_is_buffered_and_keeps_order() -> None:
    with trio_server() as (url, _), trillium.Client.connect(url, max_queue=8) as ws:
        ws.send("!burst 500")
        time.sleep(0.3)  # the server sends as fast as we let it
        assert ws._connection.inbox.qsize() <= 8
        assert [ws.receive(timeout=5) for _ in range(500)] == [str(i) for i in range(500)]


def test_send_waits_for_room_beyond_write_limit_and_keeps_order() -> None:
    with (
        trio_server(max_size=None) as (url, _),
        trillium.Client.connect(url, write_limit=2**14, max_queue=None) as ws,
    ):
        payloads = [bytes([i]) * 50_000 for i in range(40)]  # 2 MB, far above the limit
        for payload in payloads:
            ws.send(payload)
        assert [ws.receive(timeout=10) for _ in payloads] == payloads


def test_big_messages_arrive_whole_between_small_ones() -> None:
    # When a receiving caller reads the socket itself, payloads of 256 KiB and more
    # are read straight into their own buffer (see Protocol.receive_buffer), and what
    # follows each with its header alone; the trio thread's reader reads as usual.
    with (
        trio_server(max_size=None) as (url, _),
        trillium.Client.connect(url, max_message_size=None, max_queue=None) as ws,
    ):
        messages = [os.urandom(3 * 2**20), "é" * 2**19, b"small", os.urandom(2**18), "tiny"]
        for message in messages:  # read by the trio thread's reader
            ws.send(message)
        assert [ws.receive(timeout=10) for _ in messages] == messages
        for message in messages:  # one by one: read in this thread, by receive()
            ws.send(message)
            assert ws.receive(timeout=10) == message


def test_a_burst_of_sends_arrives_whole_and_in_order() -> None:
    # Sends in a tight loop are batched for the trio thread, others go out at once.
    with trio_server() as (url, _), trillium.Client.connect(url, max_queue=None) as ws:
        ws.send("first")
        assert ws.receive(timeout=5) == "first"
        for i in range(500):
            ws.send(f"m{i}")
        assert [ws.receive(timeout=5) for _ in range(500)] == [f"m{i}" for i in range(500)]


def test_close_right_after_a_burst_of_sends_follows_every_message() -> None:
    received: list[object] = []
    done = threading.Event()

    async def handler(ws: trillium.ServerConnection) -> None:
        async for message in ws:
            received.append(message)
        received.append((ws.close_code, ws.close_reason))
        done.set()

    async def make_server() -> trillium.WebSocketServer:
        return trillium.serve(handler, "127.0.0.1", 0, ping_interval=None)

    with (
        start_blocking_portal("trio") as portal,
        portal.wrap_async_context_manager(portal.call(make_server)) as server,
    ):
        port = server.sockets[0].getsockname()[1]
        ws = trillium.Client.connect(f"ws://127.0.0.1:{port}/")
        for i in range(500):
            ws.send(f"m{i}")
        ws.close(1000, "done")
        assert done.wait(10)
    assert received == [f"m{i}" for i in range(500)] + [(1000, "done")]


def test_sends_from_many_threads() -> None:
    with trio_server() as (url, _), trillium.Client.connect(url, max_queue=None) as ws:

        def sender(n: int) -> None:
            for i in range(200):
                ws.send(f"{n}:{i}")

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        got = [ws.receive(timeout=5) for _ in range(800)]
        assert sorted(got) == sorted(f"{n}:{i}" for n in range(4) for i in range(200))
        for n in range(4):  # each thread's messages stay in order
            mine = [m for m in got if m.startswith(f"{n}:")]
            assert mine == [f"{n}:{i}" for i in range(200)]


def test_one_trio_thread_for_all_connections() -> None:
    with trio_server() as (url, _):
        before = {t.name for t in threading.enumerate()}
        clients = [trillium.Client.connect(url) for _ in range(5)]
        for n, ws in enumerate(clients):
            ws.send(str(n))
        assert [ws.receive(timeout=5) for ws in clients] == ["0", "1", "2", "3", "4"]
        after = [t.name for t in threading.enumerate() if t.name not in before]
        assert after.count("trillium") <= 1
        assert [t.name for t in threading.enumerate()].count("trillium") == 1
        for ws in clients:
            ws.close()


def test_server_choose_subprotocol_default() -> None:
    server = trillium.Server.__new__(trillium.Server)
    server.subprotocols = ["x", "y"]
    offered = Request("/", Headers({"Sec-WebSocket-Protocol": "z, y, x"}))
    assert server.choose_subprotocol(offered) == "y"


def test_environ_without_a_socket_is_refused() -> None:
    with pytest.raises(RuntimeError, match="Cannot obtain socket"):
        trillium.Server.accept({"REQUEST_METHOD": "GET", "HTTP_UPGRADE": "websocket"})


# --------------------------------------------------------------------- processes

CTRL_C = """
import sys, trillium
ws = trillium.Client.connect(sys.argv[1])
print("receiving", flush=True)
try:
    ws.receive()
except KeyboardInterrupt:
    print("interrupted", flush=True)
    raise
"""


def test_ctrl_c_interrupts_a_blocking_receive() -> None:
    with trio_server() as (url, closes):
        proc = subprocess.Popen(
            [sys.executable, "-c", CTRL_C, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "receiving\n"
            time.sleep(0.2)  # into the blocking receive()
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=PROC_TIMEOUT)
        finally:
            proc.kill()
            proc.wait()
        assert time.monotonic() - started < 5
        assert out == "interrupted\n"
        assert err.rstrip().endswith("KeyboardInterrupt"), err
        assert proc.returncode != 0
        # At exit, the connection was closed properly: 1001, going away.
        assert closes.wait() == [(1001, "")]


EXIT_WITHOUT_CLOSE = """
import sys, trillium
ws = trillium.Client.connect(sys.argv[1])
ws.send("hi")
assert ws.receive() == "hi"
print("done", flush=True)
"""


def test_interpreter_exit_closes_open_connections() -> None:
    with trio_server() as (url, closes):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", EXIT_WITHOUT_CLOSE, url],
            capture_output=True,
            text=True,
            timeout=PROC_TIMEOUT,
            check=False,
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")
        assert time.monotonic() - started < 10
        assert closes.wait() == [(1001, "")]


# ------------------------------------------------- callers reading the socket themselves
#
# While callers keep receiving, the reader task leaves the socket to them and the
# receiving thread reads and parses it itself; the reader takes it back when nobody
# has received for a while, and for good when the connection ends.


@contextmanager
def serving(handler: Any) -> Iterator[str]:
    """A trillium server in a trio thread running ``handler``; yields its URL."""

    async def make_server() -> trillium.WebSocketServer:
        return trillium.serve(handler, "127.0.0.1", 0, ping_interval=None)

    with (
        start_blocking_portal("trio") as portal,
        portal.wrap_async_context_manager(portal.call(make_server)) as server,
    ):
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


def warm_up(ws: trillium.Client) -> None:
    """A few exchanges: afterwards the socket is read by receive() itself."""
    for i in range(5):
        ws.send(f"warm {i}")
        assert ws.receive(timeout=5) == f"warm {i}"


async def echo_then(ws: trillium.ServerConnection, then: Any) -> None:
    for _ in range(5):
        await ws.send(await ws.recv())
    await then(ws)


@pytest.mark.parametrize("receiving", [True, False], ids=["receiving", "nobody-receiving"])
def test_the_servers_pings_are_answered(receiving: bool) -> None:
    # Blocked in receive(), the caller reads the socket and answers them itself;
    # when nobody receives, the reader task in the trio thread does.
    pings: list[float] = []

    async def ping_three_times(ws: trillium.ServerConnection) -> None:
        await anyio.sleep(0.3)
        for _ in range(3):
            with anyio.fail_after(5):
                pings.append(await ws.ping())
        await ws.send("pinged")
        await ws.wait_closed()

    with (
        serving(lambda ws: echo_then(ws, ping_three_times)) as url,
        trillium.Client.connect(url) as ws,
    ):
        warm_up(ws)
        if not receiving:
            deadline = time.monotonic() + 10
            while len(pings) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(pings) == 3
        assert ws.receive(timeout=10) == "pinged"
    assert len(pings) == 3


def test_receive_with_zero_timeout_reads_what_already_arrived() -> None:
    with trio_server() as (url, _), trillium.Client.connect(url) as ws:
        for pause in (0.01, 0.3):  # within the callers' lease, and after it
            warm_up(ws)
            ws.send("!burst 3")
            time.sleep(pause)
            got = [ws.receive(timeout=0) for _ in range(3)]
            assert got == ["0", "1", "2"]


def test_close_from_another_thread_ends_a_blocked_receive() -> None:
    with trio_server() as (url, closes):
        ws = trillium.Client.connect(url)
        warm_up(ws)
        outcome: list[BaseException] = []

        def receive_forever() -> None:
            try:
                ws.receive()
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=receive_forever)
        thread.start()
        time.sleep(0.2)  # it is waiting on the socket now
        ws.close(1000, "bye")
        thread.join(5)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], trillium.ConnectionClosed)
        assert closes.wait() == [(1000, "bye")]


def test_threads_receiving_at_once_get_every_message_exactly_once() -> None:
    with trio_server() as (url, _), trillium.Client.connect(url, max_queue=None) as ws:
        warm_up(ws)
        got: list[list[object]] = [[] for _ in range(4)]

        def take(into: list[object]) -> None:
            for _ in range(100):
                into.append(ws.receive(timeout=10))

        threads = [threading.Thread(target=take, args=(into,)) for into in got]
        for thread in threads:
            thread.start()
        ws.send("!burst 400")
        for thread in threads:
            thread.join(15)
        everything = [message for into in got for message in into]
        assert sorted(everything, key=str) == sorted((str(i) for i in range(400)), key=str)
        for into in got:  # each thread sees its share in order
            assert into == sorted(into, key=lambda m: int(str(m)))


def test_a_protocol_error_read_by_a_receiving_caller_fails_with_1002() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    close_frames: list[bytes] = []

    def raw_server() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            for i in range(5):
                conn.sendall(b"\x81\x01" + str(i).encode())
            time.sleep(0.2)  # the client reads the socket itself by now
            conn.sendall(b"\x81\x81abcd" + bytes([ord("x") ^ ord("a")]))  # masked: forbidden
            data = b""
            while len(data) < 8:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            close_frames.append(data)

    server = threading.Thread(target=raw_server)
    server.start()
    try:
        ws = trillium.Client.connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/")
        assert [ws.receive(timeout=5) for _ in range(5)] == ["0", "1", "2", "3", "4"]
        with pytest.raises(trillium.ConnectionClosed):
            ws.receive(timeout=5)
        server.join(10)
    finally:
        listener.close()
    frame = close_frames[0]  # the client's close frame: masked, code 1002 first
    assert frame[0] == 0x88
    key, masked_code = frame[2:6], frame[6:8]
    assert bytes(m ^ key[i] for i, m in enumerate(masked_code)) == (1002).to_bytes(2, "big")


def test_server_accepts_a_socket_whose_request_was_read_by_the_caller() -> None:
    from websockets.sync.client import connect

    listener = socket.create_server(("127.0.0.1", 0))
    outcome: list[object] = []

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
            headers = dict(line.split(": ", 1) for line in lines)
            ws = trillium.Server.accept(sock=conn, headers=headers, subprotocols=["chat"])
            outcome.append((ws.mode, ws.subprotocol))
            try:
                while True:
                    ws.send(ws.receive(timeout=5))
            except trillium.ConnectionClosed as exc:
                outcome.append(exc.reason)

    thread = threading.Thread(target=serve_one)
    thread.start()
    try:
        port = listener.getsockname()[1]
        with connect(f"ws://127.0.0.1:{port}/", subprotocols=["chat"]) as client:  # type: ignore[list-item]
            client.send("text")
            assert client.recv(timeout=5) == "text"
            client.send(b"\x00\x01")
            assert client.recv(timeout=5) == b"\x00\x01"
        thread.join(10)
    finally:
        listener.close()
    assert outcome == [("custom", "chat"), 1000]


def test_server_needs_an_environ_or_a_socket() -> None:
    with pytest.raises(TypeError, match="environ"):
        trillium.Server.accept()
