"""Interop with the ``websockets`` library (asyncio), run in its own process, both ways."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
import trio

import trillium
from trillium.core.deflate import ClientPerMessageDeflateFactory, ServerPerMessageDeflateFactory
from trillium.exceptions import ConnectionClosedError

from ._helpers import (
    BIG,
    BINARY,
    JSON_TEXT,
    MAX_SIZE,
    PEERS,
    TEXT,
    ZEBRA,
    DeflateWatch,
    Recorder,
    python_peer_server,
    run_peer_client,
    short,
    trillium_echo_server,
    watch_deflate,
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


async def run_websockets_client(
    port: int, scenario: str, compression: str = "default"
) -> dict[str, Any]:
    return await run_peer_client(
        [sys.executable, PEERS / SCRIPT, "client", f"ws://127.0.0.1:{port}", scenario, compression],
        name=f"websockets client ({scenario}, compression {compression})",
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


# ---------------------------------------------------------------- permessage-deflate, both ways

# No context takeover either way, 10-bit windows both ways: what the peers' "strict"
# compression mode sets too.
STRICT = {
    "server_no_context_takeover": True,
    "client_no_context_takeover": True,
    "server_max_window_bits": 10,
    "client_max_window_bits": 10,
}


def check_deflate(watch: DeflateWatch | None, peer: dict[str, Any], strict: bool) -> None:
    """trillium's side and the peer's agree on the parameters, and both compressed."""
    assert watch is not None and watch.extension is not None, "deflate was not negotiated"
    ext = watch.extension
    assert peer, "the peer has no permessage-deflate"
    # Each side's "local" is the other's "remote".
    assert ext.local_no_context_takeover == peer["remote_no_context_takeover"]
    assert ext.remote_no_context_takeover == peer["local_no_context_takeover"]
    assert ext.local_max_window_bits == peer["remote_max_window_bits"]
    assert ext.remote_max_window_bits == peer["local_max_window_bits"]
    if strict:
        assert ext.local_no_context_takeover and ext.remote_no_context_takeover
        assert ext.local_max_window_bits == ext.remote_max_window_bits == 10
    # Frames really went compressed both ways, and shrank.
    assert watch.compressed_out > 0 and peer["compressed_in"] == watch.compressed_out
    assert watch.compressed_in > 0
    assert watch.bytes_in * 5 < watch.inflated_in
    assert watch.bytes_out * 5 < watch.deflated_out


@pytest.mark.parametrize(
    ("peer_mode", "compression"),
    [
        pytest.param("default", "deflate", id="both-defaults"),
        pytest.param("strict", "deflate", id="websockets-strict"),
        pytest.param("default", ClientPerMessageDeflateFactory(**STRICT), id="trillium-strict"),
    ],
)
async def test_client_compression_with_websockets_server(peer_mode: str, compression: Any) -> None:
    with trio.fail_after(20):
        async with python_peer_server(SCRIPT, peer_mode) as (peer, port):
            async with trillium.connect(
                f"ws://127.0.0.1:{port}", max_size=MAX_SIZE, compression=compression
            ) as ws:
                watch = watch_deflate(ws)
                assert ws.response is not None
                assert ws.response.headers["Sec-WebSocket-Extensions"].startswith(
                    "permessage-deflate"
                )
                for message in (JSON_TEXT, ZEBRA, BIG, TEXT, JSON_TEXT, ZEBRA):
                    await ws.send(message)
                    answer = await ws.recv()
                    assert answer == message, f"{short(message)} came back as {short(answer)}"
                await ws.send([JSON_TEXT[:100_000], JSON_TEXT[100_000:]])
                assert await ws.recv() == JSON_TEXT
                await ws.send([ZEBRA, b"", ZEBRA])
                assert await ws.recv() == ZEBRA + ZEBRA
                await ws.send("cmd:deflate")
                seen_by_peer = json.loads(await ws.recv())
            seen = await peer.read_event("closed")
    assert seen["code"] == 1000
    # The peer's count was taken before "cmd:deflate" itself (too short to compress).
    check_deflate(watch, seen_by_peer, strict=peer_mode == "strict" or compression != "deflate")


@pytest.mark.parametrize(
    ("peer_mode", "compression"),
    [
        pytest.param("default", "deflate", id="both-defaults"),
        pytest.param("strict", "deflate", id="websockets-strict"),
        pytest.param("default", ServerPerMessageDeflateFactory(**STRICT), id="trillium-strict"),
    ],
)
async def test_server_compression_with_websockets_client(peer_mode: str, compression: Any) -> None:
    recorder = Recorder()
    with trio.fail_after(20):
        async with trillium_echo_server(recorder, compression=compression) as (_server, port):
            observed = await run_websockets_client(port, "compressed", peer_mode)
            await recorder.wait()
    assert observed["close_code"] == 1000
    assert recorder.received[:6] == [JSON_TEXT, ZEBRA, BIG, TEXT, JSON_TEXT, ZEBRA]
    assert recorder.received[6:] == [
        JSON_TEXT,
        ZEBRA + ZEBRA,
        "cmd:fragments",
        "cmd:binfragments",
    ]
    assert recorder.connection is not None and recorder.connection.response is not None
    answer = recorder.connection.response.headers["Sec-WebSocket-Extensions"]
    if peer_mode == "strict" or compression != "deflate":
        assert answer == (
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=10; client_max_window_bits=10"
        )
    else:
        assert answer == (
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        )
    check_deflate(
        recorder.deflate,
        observed["deflate"],
        strict=peer_mode == "strict" or compression != "deflate",
    )
