"""permessage-deflate end to end: ``compression=`` on serve and connect, over 127.0.0.1.

Trillium talks to trillium, or to a hand-driven peer (``RawClient``, ``raw_server``)
that checks the frames on the wire or sends what no library would: a decompression
bomb, or a handshake answer the client must refuse.
"""

from __future__ import annotations

import gc
import tracemalloc
import zlib

import pytest
import trio

import trillium
from trillium import ConnectionClosed, ConnectionClosedError, PayloadTooBig
from trillium.core.deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from trillium.core.frames import RSV1, FrameParser, Opcode, serialize_frame
from trillium.exceptions import NegotiationError

from ._support import (
    TEST_TIMEOUT,
    RawClient,
    close_payload,
    echo,
    port_of,
    raw_server,
    read_frames,
    read_request,
    serving,
    wait_until,
)

MiB = 2**20
TAIL = b"\x00\x00\xff\xff"
DEFAULT_OFFER = "permessage-deflate; client_max_window_bits"
DEFAULT_ANSWER = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"


def text_like(n: int) -> str:
    """n characters of JSON-ish text: compresses well, but not to nothing."""
    out = []
    i = 0
    while sum(map(len, out)) < n:
        out.append(f'{{"id": {i}, "name": "user{i % 97}", "tags": ["a", "b{i % 13}"]}}, ')
        i += 1
    return "".join(out)[:n]


def extension_of(ws: trillium.Connection) -> PerMessageDeflate | None:
    assert ws.protocol is not None
    (ext,) = ws.protocol.extensions or [None]
    assert ext is None or isinstance(ext, PerMessageDeflate)
    return ext


# --------------------------------------------------------------------------- negotiation


async def test_compression_is_negotiated_by_default() -> None:
    """The issue: compression="deflate" is the default on both serve and connect."""
    with trio.fail_after(TEST_TIMEOUT):
        server_side: list[PerMessageDeflate | None] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            server_side.append(extension_of(ws))
            await echo(ws)

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            assert ws.request is not None and ws.response is not None
            assert ws.request.headers["Sec-WebSocket-Extensions"] == DEFAULT_OFFER
            assert ws.response.headers["Sec-WebSocket-Extensions"] == DEFAULT_ANSWER
            await ws.send("hello " * 100)
            assert await ws.recv() == "hello " * 100
            client_ext = extension_of(ws)
        assert client_ext is not None
        assert (client_ext.local_max_window_bits, client_ext.remote_max_window_bits) == (12, 12)
        [server_ext] = server_side
        assert server_ext is not None
        assert (server_ext.local_max_window_bits, server_ext.remote_max_window_bits) == (12, 12)


@pytest.mark.parametrize("off", ["server", "client", "both"])
async def test_compression_none_on_either_side_turns_it_off(off: str) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server_side: list[PerMessageDeflate | None] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            server_side.append(extension_of(ws))
            await echo(ws)

        server_kwargs = {"compression": None} if off in ("server", "both") else {}
        client_kwargs = {"compression": None} if off in ("client", "both") else {}
        async with (
            serving(handler, **server_kwargs) as (_, uri),
            trillium.connect(uri, **client_kwargs) as ws,  # type: ignore[arg-type]
        ):
            assert ws.request is not None and ws.response is not None
            offered = "Sec-WebSocket-Extensions" in ws.request.headers
            assert offered == (off == "server")
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            assert extension_of(ws) is None
            await ws.send("hello " * 100)
            assert await ws.recv() == "hello " * 100
        assert server_side == [None]


async def test_factories_set_the_parameters_in_the_handshake() -> None:
    """Factory objects on both sides: their parameters are in the request and the answer,
    and each side's extension uses what was agreed."""
    with trio.fail_after(TEST_TIMEOUT):
        server_side: list[PerMessageDeflate | None] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            server_side.append(extension_of(ws))
            await echo(ws)

        server_factory = ServerPerMessageDeflateFactory(
            server_no_context_takeover=True,
            client_max_window_bits=9,
            level=1,
            mem_level=8,
            threshold=0,
        )
        client_factory = ClientPerMessageDeflateFactory(
            client_no_context_takeover=True,
            server_max_window_bits=10,
            level=9,
            mem_level=4,
            threshold=64,
        )
        async with (
            serving(handler, compression=server_factory) as (_, uri),
            trillium.connect(uri, compression=client_factory) as ws,
        ):
            assert ws.request is not None and ws.response is not None
            assert ws.request.headers["Sec-WebSocket-Extensions"] == (
                "permessage-deflate; client_no_context_takeover; server_max_window_bits=10; "
                "client_max_window_bits"
            )
            assert ws.response.headers["Sec-WebSocket-Extensions"] == (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "server_max_window_bits=10; client_max_window_bits=9"
            )
            for message in ("x", "hello " * 1000, b"\x00" * 100_000):
                await ws.send(message)
                assert await ws.recv() == message
            client_ext = extension_of(ws)
        assert client_ext is not None
        assert client_ext.local_no_context_takeover and client_ext.remote_no_context_takeover
        assert (client_ext.local_max_window_bits, client_ext.remote_max_window_bits) == (9, 10)
        assert (client_ext.level, client_ext.mem_level, client_ext.threshold) == (9, 4, 64)
        [server_ext] = server_side
        assert server_ext is not None
        assert (server_ext.local_max_window_bits, server_ext.remote_max_window_bits) == (10, 9)
        assert (server_ext.level, server_ext.mem_level, server_ext.threshold) == (1, 8, 0)


async def test_unsupported_compression_is_refused_by_connect() -> None:
    with pytest.raises(ValueError, match="compression"):
        async with trillium.connect("ws://127.0.0.1:1/", compression="brotli"):
            pass  # pragma: no cover


def answering(extensions_header: str | None):  # type: ignore[no-untyped-def]
    """A raw server behaviour: 101 with this Sec-WebSocket-Extensions value, then echo."""

    async def behaviour(stream: trio.SocketStream) -> None:
        request, handshake = await read_request(stream)
        assert request is not None
        headers = [] if extensions_header is None else [("Sec-WebSocket-Extensions",
                                                         extensions_header)]  # fmt: skip
        await stream.send_all(handshake.accept(request, headers=headers))
        parser = FrameParser(expect_masked=True, allowed_rsv=RSV1)
        while (frame := await read_frames(stream, parser)) is not None:
            if frame.opcode is Opcode.CLOSE:
                await stream.send_all(serialize_frame(Opcode.CLOSE, frame.payload, mask=False))
                return

    return behaviour


@pytest.mark.parametrize(
    ("client_kwargs", "answer"),
    [
        ({}, "permessage-deflate; client_max_window_bits=16"),
        ({}, "permessage-deflate; client_max_window_bits"),
        ({}, "permessage-deflate; server_max_window_bits=08"),
        ({}, "permessage-deflate; mystery=1"),
        ({}, "permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
        ({}, "permessage-deflate, permessage-deflate"),
        ({"compression": None}, "permessage-deflate"),
        (
            {"compression": ClientPerMessageDeflateFactory(client_max_window_bits=None)},
            "permessage-deflate; client_max_window_bits=10",
        ),
        (
            {"compression": ClientPerMessageDeflateFactory(server_max_window_bits=10)},
            "permessage-deflate; server_max_window_bits=11",
        ),
        (
            {"compression": ClientPerMessageDeflateFactory(server_no_context_takeover=True)},
            "permessage-deflate",
        ),
    ],
)
async def test_connect_fails_on_an_answer_it_cannot_accept(
    client_kwargs: dict[str, object], answer: str
) -> None:
    """RFC 7692 §5: the client fails the connection if it can't accept the answer."""
    with trio.fail_after(TEST_TIMEOUT):
        async with raw_server(answering(answer)) as port:
            with pytest.raises(NegotiationError):
                async with trillium.connect(f"ws://127.0.0.1:{port}/", **client_kwargs):  # type: ignore[arg-type]
                    pass  # pragma: no cover


async def test_connect_accepts_a_server_that_declines_compression() -> None:
    """RFC 7692 §5: no extension in the answer is a plain, uncompressed connection."""
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            raw_server(answering(None)) as port,
            trillium.connect(f"ws://127.0.0.1:{port}/") as ws,
        ):
            assert extension_of(ws) is None


# --------------------------------------------------------------------------- on the wire


async def test_messages_round_trip_compressed() -> None:
    """Text, binary, small, large and fragmented messages, both ways, many in a row."""
    with trio.fail_after(TEST_TIMEOUT):
        big_text = text_like(300_000)
        big_binary = bytes(range(256)) * 2000
        async with (
            serving(echo, max_size=4 * MiB) as (_, uri),
            trillium.connect(uri, max_size=4 * MiB) as ws,
        ):
            for message in ("", b"", "é", "x" * 127, "x" * 128, big_text, big_binary, "🎉" * 9999):
                await ws.send(message)
                assert await ws.recv() == message
            await ws.send([big_text[:1000], big_text[1000:], ""])
            assert await ws.recv() == big_text
            await ws.send([b"\x00" * 70_000, b"\x01" * 70_000])
            assert await ws.recv() == b"\x00" * 70_000 + b"\x01" * 70_000
            for i in range(50):  # context takeover over many messages
                await ws.send(text_like(1000 + i))
            for i in range(50):
                assert await ws.recv() == text_like(1000 + i)


async def test_server_frames_are_compressed_on_the_wire() -> None:
    """A raw client that offers deflate sees RSV1 frames that inflate to the message,
    smaller than the message, and a repeat that is smaller still (context takeover)."""
    with trio.fail_after(TEST_TIMEOUT):
        message = text_like(3000)  # fits in the 4 KiB window: the repeat refers back

        async def handler(ws: trillium.ServerConnection) -> None:
            await ws.send(message)
            await ws.send(message)
            await ws.send("short")
            await ws.wait_closed()

        async with serving(handler) as (server, _):
            client = await RawClient.connect(
                port_of(server), headers=(("Sec-WebSocket-Extensions", "permessage-deflate"),)
            )
            client.parser.allowed_rsv = RSV1
            assert b"permessage-deflate; server_max_window_bits=12" in client.response_head
            frames = [await client.recv_frame_skipping_pings() for _ in range(3)]
            client.close()
        d = zlib.decompressobj(wbits=-12)
        sizes = []
        for frame in frames[:2]:
            assert frame is not None and frame.rsv == RSV1 and frame.opcode is Opcode.TEXT
            assert not frame.payload.endswith(TAIL)
            assert d.decompress(frame.payload + TAIL) == message.encode()
            sizes.append(len(frame.payload))
        assert sizes[0] < len(message) // 3
        assert sizes[1] < sizes[0] // 10
        # Below the 128-byte threshold: sent as is.
        assert frames[2] is not None and (frames[2].rsv, frames[2].payload) == (0, b"short")


async def test_client_frames_are_compressed_on_the_wire() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        seen: list[tuple[int, bytes]] = []

        async def behaviour(stream: trio.SocketStream) -> None:
            request, handshake = await read_request(stream)
            assert request is not None
            assert request.headers["Sec-WebSocket-Extensions"] == DEFAULT_OFFER
            header = "permessage-deflate; client_max_window_bits=10"
            await stream.send_all(
                handshake.accept(request, headers=[("Sec-WebSocket-Extensions", header)])
            )
            parser = FrameParser(expect_masked=True, allowed_rsv=RSV1)
            while (frame := await read_frames(stream, parser)) is not None:
                if frame.opcode is Opcode.CLOSE:
                    await stream.send_all(serialize_frame(Opcode.CLOSE, frame.payload, mask=False))
                    return
                seen.append((frame.rsv, frame.payload))

        message = text_like(700)  # fits in the 1 KiB window: the repeat refers back
        async with raw_server(behaviour) as port:
            async with trillium.connect(f"ws://127.0.0.1:{port}/") as ws:
                client_ext = extension_of(ws)
                assert client_ext is not None and client_ext.local_max_window_bits == 10
                await ws.send(message)
                await ws.send(message)
            await wait_until(lambda: len(seen) == 2)
        d = zlib.decompressobj(wbits=-10)
        assert [rsv for rsv, _ in seen] == [RSV1, RSV1]
        assert [d.decompress(p + TAIL) for _, p in seen] == [message.encode()] * 2
        assert len(seen[1][1]) < len(seen[0][1]) // 5


async def test_broadcast_reaches_compressed_and_uncompressed_connections() -> None:
    """broadcast encodes per connection when deflate is negotiated, once otherwise."""
    with trio.fail_after(TEST_TIMEOUT):

        async def handler(ws: trillium.ServerConnection) -> None:
            async for message in ws:
                if message == "go":
                    trillium.broadcast(server.connections, "news " * 100)

        async with (
            serving(handler) as (server, uri),
            trillium.connect(uri) as compressed,
            trillium.connect(uri, compression=None) as plain,
        ):
            await wait_until(lambda: len(server.connections) == 2)
            await compressed.send("go")
            assert await compressed.recv() == "news " * 100
            assert await plain.recv() == "news " * 100
            assert extension_of(compressed) is not None and extension_of(plain) is None


# --------------------------------------------------------------------------- max_size


async def test_max_size_applies_to_the_decompressed_size_on_the_server() -> None:
    """A 2 MiB message that compresses to a few KB still exceeds max_size=1 MiB: 1009."""
    with trio.fail_after(TEST_TIMEOUT):
        server_side: list[BaseException] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            try:
                async for message in ws:
                    await ws.send(message)
            except ConnectionClosed as exc:
                server_side.append(exc)

        async with (
            serving(handler, max_size=MiB) as (_, uri),
            trillium.connect(uri, max_size=None) as ws,
        ):
            await ws.send("a" * MiB)  # exactly the limit, once inflated
            assert await ws.recv() == "a" * MiB
            await ws.send("a" * (2 * MiB))
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.code == 1009
        await wait_until(lambda: bool(server_side))
        (exc,) = server_side
        assert isinstance(exc, ConnectionClosedError)
        assert exc.sent is not None and exc.sent.code == 1009
        assert isinstance(exc.__cause__, PayloadTooBig)


async def test_max_size_applies_to_the_decompressed_size_on_the_client() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def handler(ws: trillium.ServerConnection) -> None:
            await ws.send(b"\x00" * (2 * MiB))
            await ws.wait_closed()

        async with serving(handler) as (_, uri), trillium.connect(uri, max_size=MiB) as ws:
            with pytest.raises(ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.sent is not None and info.value.sent.code == 1009
            assert isinstance(info.value.__cause__, PayloadTooBig)


async def test_decompression_bomb_is_rejected_with_1009_by_a_server() -> None:
    """100 MiB of zeros, deflated to ~100 KB, in one frame: the server fails the
    connection with 1009 after inflating at most max_size bytes (the process's traced
    memory stays under 20 MiB meanwhile), and serves the next client as usual."""
    with trio.fail_after(TEST_TIMEOUT):
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        zeros = bytes(MiB)
        bomb = b"".join([c.compress(zeros) for _ in range(100)] + [c.flush(zlib.Z_SYNC_FLUSH)])
        assert len(bomb) < 200_000
        server_side: list[BaseException] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                server_side.append(exc)

        async with serving(handler, max_size=MiB) as (server, uri):
            client = await RawClient.connect(
                port_of(server), headers=(("Sec-WebSocket-Extensions", "permessage-deflate"),)
            )
            assert b"Sec-WebSocket-Extensions: permessage-deflate" in client.response_head
            wire = serialize_frame(Opcode.BINARY, bomb[:-4], mask=True, rsv=RSV1)
            del bomb
            gc.collect()
            tracemalloc.start()
            try:
                await client.send_bytes(wire)
                frame = await client.recv_frame_skipping_pings()
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            # The whole process (server and raw client) while the bomb was handled.
            assert peak < 20 * MiB, f"peak {peak / MiB:.1f} MiB"
            assert frame is not None
            assert close_payload(frame).code == 1009
            assert await client.read_until_eof() == b""
            client.close()
            await wait_until(lambda: bool(server_side))
            (exc,) = server_side
            assert isinstance(exc.__cause__, PayloadTooBig)
            # The server is unharmed: the next client gets served.
            async with trillium.connect(uri) as ws:
                await ws.send("still here")
