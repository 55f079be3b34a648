"""Interop with the ``websockets`` library (asyncio), run in its own process, both ways."""

from __future__ import annotations

import sys

import pytest
import trio

import trillium
from trillium.exceptions import ConnectionClosedError

from ._helpers import (
    BIG,
    BINARY,
    MAX_SIZE,
    PEERS,
    TEXT,
    Recorder,
    python_peer_server,
    run_peer_client,
    short,
    trillium_echo_server,
)

SCRIPT = "websockets_peer.py"


# ---------------------------------------------------------------- trillium client -> websockets


async def test_client_messages_ping_subprotocol_and_close() -> None:
    with trio.fail_after(20):
        async with python_peer_server(SCRIPT) as (peer, port):
            async with trillium.connect(
                f"ws://127.0.0.1:{port}", max_size=MAX_SIZE, subprotocols=["chat.v0", "chat.v1"]
            ) as ws:
                assert ws.subprotocol == "chat.v1"
                for message in (TEXT, BINARY, BIG, "", b""):
                    await ws.send(message)
                    answer = await ws.recv()
                    assert type(answer) is type(message)
                    assert answer == message, f"{short(message)} came back as {short(answer)}"

                # Fragmented messages sent by trillium, reassembled by websockets.
                await ws.send(["frag", "men", "ted"])
                assert await ws.recv() == "fragmented"
                await ws.send([b"\x00" * 70000, b"\x01" * 70000, b"\x02"])
                assert await ws.recv() == b"\x00" * 70000 + b"\x01" * 70000 + b"\x02"

                async def fragments():  # type: ignore[no-untyped-def]
                    for part in ("as", "ync"):
                        await trio.sleep(0)
                        yield part

                await ws.send(fragments())
                assert await ws.recv() == "async"

                # trillium pings, websockets answers; then websockets pings trillium.
                latency = await ws.ping(b"trillium")
                assert 0 <= latency < 10
                assert 0 < ws.latency <= latency
                await ws.send("cmd:ping")
                assert await ws.recv() == "pinged"

                await ws.send("cmd:subprotocol")
                assert await ws.recv() == "chat.v1"

                await ws.close(4001, "bye")
                # websockets echoes the close code and reason back.
                assert ws.close_code == 4001
                assert ws.close_reason == "bye"
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
                assert info.value.code == 4001

            seen = await peer.read_event("closed")
    assert seen == {
        "event": "closed",
        "code": 4001,
        "reason": "bye",
        "exception": "ConnectionClosedError",
        "subprotocol": "chat.v1",
    }


async def test_client_sees_server_initiated_close() -> None:
    with trio.fail_after(20):
        async with python_peer_server(SCRIPT) as (peer, port):
            async with trillium.connect(f"ws://127.0.0.1:{port}") as ws:
                assert ws.subprotocol is None
                await ws.send("cmd:close 4002 server-bye")
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
                assert info.value.code == 4002
                assert info.value.message == "server-bye"
                assert info.value.rcvd is not None and info.value.rcvd.reason == "server-bye"
                assert ws.close_code == 4002
                assert ws.close_reason == "server-bye"
                with pytest.raises(ConnectionClosedError):
                    await ws.send("too late")
            seen = await peer.read_event("closed")
    # trillium echoed the server's close code (RFC 6455 §5.5.1).
    assert seen["code"] == 4002
    assert seen["exception"] is None


async def test_client_normal_close_is_ok_on_both_sides() -> None:
    with trio.fail_after(20):
        async with python_peer_server(SCRIPT) as (peer, port):
            async with trillium.connect(f"ws://127.0.0.1:{port}") as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
            assert ws.close_code == 1000
            messages = [m async for m in ws]  # normal closure ends iteration quietly
            assert messages == []
            seen = await peer.read_event("closed")
    assert seen["code"] == 1000
    assert seen["exception"] is None


async def test_client_keepalive_pings_are_answered() -> None:
    with trio.fail_after(20):
        async with python_peer_server(SCRIPT) as (_peer, port):
            async with trillium.connect(
                f"ws://127.0.0.1:{port}", ping_interval=0.05, ping_timeout=5
            ) as ws:
                assert ws.latency == 0
                with trio.fail_after(5):
                    while ws.latency == 0:
                        await trio.sleep(0.02)
                await trio.sleep(0.2)  # a few more keepalive rounds
                await ws.send("still open")
                assert await ws.recv() == "still open"
                assert 0 < ws.latency < 5
            assert ws.close_code == 1000


async def test_client_unsupported_subprotocol_is_refused() -> None:
    with trio.fail_after(20):
        async with python_peer_server(SCRIPT) as (_peer, port):
            with pytest.raises(trillium.InvalidStatus) as info:
                async with trillium.connect(f"ws://127.0.0.1:{port}", subprotocols=["nope"]):
                    pass  # pragma: no cover
    assert info.value.response.status_code == 400


# ---------------------------------------------------------------- websockets client -> trillium


async def run_websockets_client(port: int, scenario: str) -> dict[str, object]:
    return await run_peer_client(
        [sys.executable, PEERS / SCRIPT, "client", f"ws://127.0.0.1:{port}", scenario],
        name=f"websockets client ({scenario})",
    )


async def test_server_messages_ping_subprotocol_and_close() -> None:
    recorder = Recorder()
    with trio.fail_after(20):
        async with trillium_echo_server(recorder, subprotocols=["chat.v1"]) as (_server, port):
            observed = await run_websockets_client(port, "full")
            await recorder.wait()
    # What the websockets client saw.
    assert observed["extensions"] == ["PerMessageDeflate"]  # offered and accepted
    assert observed["subprotocol"] == "chat.v1"
    assert observed["server_subprotocol"] == "chat.v1"
    assert 0 <= observed["ping_latency"] < 10  # type: ignore[operator]
    assert observed["close_code"] == 4001  # trillium echoed the client's code and reason
    assert observed["close_reason"] == "bye"
    # What trillium saw.
    assert recorder.subprotocol == "chat.v1"
    assert recorder.received[:3] == [TEXT, BINARY, BIG]
    assert recorder.received[3:] == [
        "fragmented",
        b"\x00\x01\x02",
        "cmd:fragments",
        "cmd:binfragments",
        "cmd:ping",
        "cmd:subprotocol",
    ]
    assert recorder.latency is not None and 0 <= recorder.latency < 10
    assert isinstance(recorder.exception, ConnectionClosedError)
    assert recorder.exception.code == 4001
    assert recorder.exception.message == "bye"
    assert (recorder.close_code, recorder.close_reason) == (4001, "bye")


async def test_server_initiated_close() -> None:
    recorder = Recorder()
    with trio.fail_after(20):
        async with trillium_echo_server(recorder) as (_server, port):
            observed = await run_websockets_client(port, "server-close")
            await recorder.wait()
    assert observed["exception"] == "ConnectionClosedError"
    assert observed["rcvd"] == [4002, "server-bye"]
    assert observed["close_code"] == 4002
    assert observed["close_reason"] == "server-bye"
    assert observed["subprotocol"] is None
    # websockets echoed the code back to trillium.
    assert recorder.close_code == 4002
    assert recorder.exception is None


async def test_server_shutdown_closes_with_1001() -> None:
    recorder = Recorder()
    result: dict[str, object] = {}
    with trio.fail_after(20):
        async with (
            trio.open_nursery() as nursery,
            trillium_echo_server(recorder) as (server, port),
        ):

            async def client() -> None:
                result.update(await run_websockets_client(port, "wait-close"))

            nursery.start_soon(client)
            while recorder.received != ["hello"]:
                await trio.sleep(0.02)
            await server.close()
            assert not server.connections
            await recorder.wait()
    assert result["exception"] == "ConnectionClosedOK"
    assert result["rcvd"] == [1001, "server shutting down"]
    assert recorder.close_code == 1001  # websockets echoed it
    assert recorder.exception is None  # normal closure ends `async for` quietly


async def test_server_fails_a_too_big_message_with_1009() -> None:
    recorder = Recorder()
    with trio.fail_after(20):
        async with trillium_echo_server(recorder, max_size=2**16) as (_server, port):
            observed = await run_websockets_client(port, "too-big")
            await recorder.wait()
    assert observed["exception"] == "ConnectionClosedError"
    assert observed["rcvd"] is not None and observed["rcvd"][0] == 1009  # type: ignore[index]
    assert recorder.received == []
    assert isinstance(recorder.exception, ConnectionClosedError)
