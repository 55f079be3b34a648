"""Behaviour of an open connection: sending, receiving, limits, keepalive and closing.

Trillium talks to trillium over 127.0.0.1, or to a hand-driven peer (``RawClient``,
``raw_server``) when the test needs one that misbehaves: never reads, never answers
pings, never answers a close frame.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import AsyncIterator

import anyio
import pytest
import trio
import trio.testing

import trillium
from trillium import (
    Close,
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    PayloadTooBig,
    State,
)
from trillium.connection import Connection, _TrioSocketReader
from trillium.core.frames import FrameParser, Opcode, serialize_frame
from trillium.core.mask import ACCELERATED
from trillium.core.protocol import SERVER, Protocol

from ._support import (
    TEST_TIMEOUT,
    RawClient,
    accept_handshake,
    big_and_small_messages,
    close_payload,
    echo,
    port_of,
    raw_server,
    read_frames,
    read_request,
    recv_big_frame_traced,
    recv_messages,
    send_big_frame_traced,
    send_rest,
    send_until_stalled,
    sends_all,
    sends_big_messages,
    serving,
    small_buffer_listener,
    uri_of,
    wait_until,
)

# --------------------------------------------------------------------------- send / recv


async def test_send_str_is_received_as_text_and_bytes_as_binary() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        received: list[object] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            received.append(await ws.recv())
            received.append(await ws.recv())
            received.append(await ws.recv())
            await ws.send("text back")
            await ws.send(b"binary back")

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            await ws.send("héllo")
            await ws.send(b"\x00\xff")
            await ws.send(bytearray(b"ba"))
            assert await ws.recv() == "text back"
            assert await ws.recv() == b"binary back"
        assert received == ["héllo", b"\x00\xff", b"ba"]
        assert type(received[2]) is bytes


async def test_recv_decode_converts_between_text_and_bytes() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri) as ws:
            await ws.send("é")
            assert await ws.recv(decode=False) == "é".encode()
            await ws.send("é".encode())
            assert await ws.recv(decode=True) == "é"


async def test_send_list_of_str_fragments_arrives_as_one_message_for_recv() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri) as ws:
            await ws.send(["Hel", "lo, ", "wörld"])
            assert await ws.recv() == "Hello, wörld"
            # The connection is back to normal afterwards.
            await ws.send("next")
            assert await ws.recv() == "next"


async def test_send_fragments_are_received_in_pieces_by_recv_streaming() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        pieces: list[list[object]] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            for _ in range(2):
                pieces.append([piece async for piece in ws.recv_streaming()])
            await ws.send("done")

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in (b"ab", b"cd", b"ef"):
                await trio.sleep(0)
                yield chunk

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            await ws.send(chunks())
            await ws.send(["x", "y"])
            assert await ws.recv() == "done"

        binary, text = pieces
        # Every fragment arrives on its own; a closing empty fragment may end the message.
        assert [p for p in binary if p] == [b"ab", b"cd", b"ef"]
        assert all(type(p) is bytes for p in binary)
        assert [p for p in text if p] == ["x", "y"]
        assert all(type(p) is str for p in text)


async def test_async_iterable_of_bytes_is_received_whole_by_recv() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(10):
                yield bytes([i]) * 1000

        async with serving(echo) as (_, uri), trillium.connect(uri) as ws:
            await ws.send(chunks())
            assert await ws.recv() == b"".join(bytes([i]) * 1000 for i in range(10))


@pytest.mark.parametrize(
    "fragments", [["text", b"bytes"], [b"bytes", "text"]], ids=["str-then-bytes", "bytes-then-str"]
)
async def test_send_mixed_fragment_types_raises_type_error_and_fails_with_1011(
    fragments: list[object],
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        outcome: list[BaseException] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                outcome.append(exc)

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            with pytest.raises(TypeError):
                await ws.send(fragments)  # type: ignore[arg-type]
            # Half a fragmented message can't be taken back: the connection is failed.
            await ws.wait_closed()
            with pytest.raises(ConnectionClosed):
                await ws.send("more")
        await wait_until(lambda: bool(outcome))
        assert isinstance(outcome[0], ConnectionClosedError)
        assert outcome[0].code == 1011


async def test_send_of_unsupported_type_raises_type_error() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri) as ws:
            with pytest.raises(TypeError):
                await ws.send(42)  # type: ignore[arg-type]
            await ws.send("still open")
            assert await ws.recv() == "still open"


async def test_send_after_close_raises_connection_closed() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri) as ws:
            await ws.close()
            assert ws.state is State.CLOSED
            with pytest.raises(ConnectionClosedOK):
                await ws.send("too late")
            with pytest.raises(ConnectionClosedOK):
                await ws.send([b"too", b"late"])
            with pytest.raises(ConnectionClosedOK):
                await ws.ping()


async def test_cancelled_sends_never_put_half_a_frame_on_the_wire() -> None:
    """Cancel many sends at random points; the peer gets exactly the sends that returned."""
    with trio.fail_after(TEST_TIMEOUT):
        rng = random.Random(20240611)
        received: list[bytes | str] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            while (message := await ws.recv()) != "END":
                received.append(message)
            await ws.send("got END")
            await echo(ws)

        completed: list[bytes | str] = []
        cancelled = 0
        # A small write_limit makes most sends wait for room, where they get cancelled.
        async with (
            serving(handler) as (_, uri),
            trillium.connect(uri, write_limit=(4096, 1024)) as ws,
        ):
            for i in range(300):
                size = rng.choice([0, 1, 125, 126, 65535, 65536, rng.randrange(200_000)])
                message: bytes | str
                if i % 3 == 0:
                    message = f"{i}:" + "é" * (size // 2)
                else:
                    message = struct.pack("!I", i) + bytes([i % 251]) * size
                with trio.move_on_after(rng.choice([0, 0.00001, 0.0001, 0.001])) as scope:
                    await ws.send(message)
                if scope.cancelled_caught:
                    cancelled += 1
                else:
                    completed.append(message)
            await ws.send("END")
            assert await ws.recv() == "got END"
            # Still usable: a round trip works.
            await ws.send("ping?")
            assert await ws.recv() == "ping?"
            assert ws.state is State.OPEN
        assert cancelled > 0, "the test should cancel some sends"
        assert len(completed) > 0, "the test should let some sends through"
        assert received == completed


async def test_cancelling_a_fragmented_send_fails_the_connection_with_1011() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        outcome: list[object] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            try:
                outcome.append(await ws.recv())
            except ConnectionClosed as exc:
                outcome.append(exc)

        async def slow_fragments() -> AsyncIterator[str]:
            yield "first fragment"
            await trio.sleep_forever()
            yield "never"  # pragma: no cover

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            with trio.move_on_after(0.1):
                await ws.send(slow_fragments())
            with pytest.raises(ConnectionClosed):
                await ws.send("after")
        await wait_until(lambda: bool(outcome))
        (exc,) = outcome
        assert isinstance(exc, ConnectionClosedError)
        assert exc.code == 1011


async def test_two_concurrent_recv_raise_concurrency_error() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri) as ws:
            first: list[object] = []

            async def receive() -> None:
                first.append(await ws.recv())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(ConcurrencyError):
                    await ws.recv()
                with pytest.raises(ConcurrencyError):
                    async for _ in ws.recv_streaming():
                        pass  # pragma: no cover
                await ws.send("for the first")
            assert first == ["for the first"]
            # Once the first receiver is done, receiving works again.
            await ws.send("again")
            assert await ws.recv() == "again"


async def test_messages_queued_before_the_peer_closed_are_delivered_first() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def handler(ws: trillium.ServerConnection) -> None:
            for word in ("one", "two", "three"):
                await ws.send(word)
            # returning closes the connection with 1000

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            await ws.wait_closed()
            assert ws.state is State.CLOSED
            assert [await ws.recv() for _ in range(3)] == ["one", "two", "three"]
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()


async def test_async_for_ends_on_normal_closure() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def handler(ws: trillium.ServerConnection) -> None:
            await ws.send("a")
            await ws.send(b"b")
            await ws.close(1001, "going away")

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            assert [message async for message in ws] == ["a", b"b"]
            assert ws.close_code == 1001
            assert ws.close_reason == "going away"


async def test_recv_inside_async_for_still_raises_connection_closed_ok() -> None:
    """Only the loop turns a normal closure into its end; a recv() in its body, or
    after it, raises ConnectionClosedOK as always."""
    with trio.fail_after(TEST_TIMEOUT):

        async def handler(ws: trillium.ServerConnection) -> None:
            await ws.send("a")
            await ws.close()

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            received = []
            with pytest.raises(ConnectionClosedOK):
                async for message in ws:
                    received.append(message)
                    await ws.recv()
            assert received == ["a"]
            assert [message async for message in ws] == []
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()


async def test_closed_normally_agrees_with_the_protocols_close_exception() -> None:
    """``async for`` decides how a connection ended without building the exception;
    it must decide as Protocol.close_exception does, for every pair of close frames."""
    frames = [None, *(Close(code, "") for code in (1000, 1001, 1002, 1005, 1011, 3000, 4000))]
    connection = Connection(None)  # type: ignore[arg-type]  # no stream needed
    assert not connection._closed_normally()  # never opened
    connection.protocol = protocol = Protocol(SERVER)
    for rcvd in frames:
        for sent in frames:
            protocol.close_rcvd, protocol.close_sent = rcvd, sent
            expected = isinstance(protocol.close_exception(), ConnectionClosedOK)
            assert connection._closed_normally() is expected, (rcvd, sent)


async def test_async_for_raises_connection_closed_error_on_error_closure() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def handler(ws: trillium.ServerConnection) -> None:
            await ws.send("a")
            await ws.close(4000, "bad client")

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            received = []
            with pytest.raises(ConnectionClosedError) as exc_info:
                async for message in ws:
                    received.append(message)
            assert received == ["a"]
            assert exc_info.value.code == 4000


async def test_connection_closed_error_carries_close_frames_code_reason_and_message() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server_side: list[ConnectionClosed] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            await ws.close(4001, "custom reason")
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                server_side.append(exc)

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            with pytest.raises(ConnectionClosedError) as exc_info:
                await ws.recv()
        exc = exc_info.value
        assert exc.rcvd == Close(4001, "custom reason")
        assert exc.sent == Close(4001, "custom reason")  # the client echoed it
        assert exc.rcvd_then_sent is True
        assert exc.code == 4001
        assert exc.reason == 4001  # simple-websocket: reason is the code
        assert exc.message == "custom reason"
        assert ws.close_code == 4001
        assert ws.close_reason == "custom reason"

        await wait_until(lambda: bool(server_side))
        (server_exc,) = server_side
        assert isinstance(server_exc, ConnectionClosedError)
        assert server_exc.sent == Close(4001, "custom reason")
        assert server_exc.rcvd == Close(4001, "custom reason")
        assert server_exc.rcvd_then_sent is False


async def test_connection_closed_ok_after_normal_close_carries_code_and_message() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri) as ws:
            await ws.close(1000, "done")
            with pytest.raises(ConnectionClosedOK) as exc_info:
                await ws.recv()
        exc = exc_info.value
        assert exc.sent == Close(1000, "done")
        assert exc.rcvd is not None and exc.rcvd.code == 1000
        assert exc.rcvd_then_sent is False
        assert (exc.code, exc.reason, exc.message) == (1000, 1000, "done")
        assert ws.close_code == 1000


async def test_connection_exposes_handshake_and_addresses() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        seen: dict[str, object] = {}

        async def handler(ws: trillium.ServerConnection) -> None:
            seen["path"] = ws.request.path if ws.request else None
            seen["remote"] = ws.remote_address
            seen["local"] = ws.local_address
            seen["state"] = ws.state
            await ws.send("hi")

        async with serving(handler) as (server, uri):
            async with trillium.connect(uri.rstrip("/") + "/chat?room=1") as ws:
                assert await ws.recv() == "hi"
                assert ws.response is not None and ws.response.status_code == 101
                assert ws.remote_address[1] == port_of(server)
                assert seen["remote"] == ws.local_address
            assert seen["path"] == "/chat?room=1"
            assert seen["local"][1] == port_of(server)  # type: ignore[index]
            assert seen["state"] is State.OPEN


# --------------------------------------------------------------------------- max_size


async def test_server_fails_connection_with_1009_when_message_exceeds_max_size() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server_side: list[BaseException] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            try:
                async for message in ws:
                    await ws.send(message)
            except ConnectionClosed as exc:
                server_side.append(exc)

        async with serving(handler, max_size=1000) as (_, uri), trillium.connect(uri) as ws:
            await ws.send(b"x" * 1000)  # exactly at the limit: fine
            assert await ws.recv() == b"x" * 1000
            await ws.send(b"x" * 1001)
            with pytest.raises(ConnectionClosedError) as exc_info:
                await ws.recv()
            assert exc_info.value.code == 1009
            assert exc_info.value.rcvd is not None and exc_info.value.rcvd.code == 1009

        await wait_until(lambda: bool(server_side))
        (exc,) = server_side
        assert isinstance(exc, ConnectionClosedError)
        assert exc.sent is not None and exc.sent.code == 1009
        assert isinstance(exc.__cause__, PayloadTooBig)


async def test_server_fails_connection_with_1009_when_fragmented_message_exceeds_max_size() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo, max_size=1000) as (_, uri), trillium.connect(uri) as ws:
            await ws.send([b"x" * 600, b"x" * 600])
            with pytest.raises(ConnectionClosedError) as exc_info:
                await ws.recv()
            assert exc_info.value.code == 1009


async def test_client_fails_connection_with_1009_when_message_exceeds_max_size() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        server_side: list[BaseException] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            await ws.send("y" * 2000)
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                server_side.append(exc)

        async with serving(handler) as (_, uri), trillium.connect(uri, max_size=1999) as ws:
            with pytest.raises(ConnectionClosedError) as exc_info:
                await ws.recv()
            assert exc_info.value.sent is not None and exc_info.value.sent.code == 1009
            assert isinstance(exc_info.value.__cause__, PayloadTooBig)

        await wait_until(lambda: bool(server_side))
        assert isinstance(server_side[0], ConnectionClosedError)
        assert server_side[0].code == 1009


async def test_max_size_none_accepts_2_mib_messages() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        big = bytes(range(256)) * (2 * 2**20 // 256)
        async with (
            serving(echo, max_size=None) as (_, uri),
            trillium.connect(uri, max_size=None) as ws,
        ):
            await ws.send(big)
            assert await ws.recv() == big
            await ws.send(["é" * 2**20])
            assert await ws.recv() == "é" * 2**20


async def test_default_max_size_refuses_2_mib_messages() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri) as ws:
            await ws.send(b"x" * 2 * 2**20)
            with pytest.raises(ConnectionClosedError) as exc_info:
                await ws.recv()
            assert exc_info.value.code == 1009


# --------------------------------------------------------------------------- max_queue


async def test_server_stops_reading_at_max_queue_messages_and_resumes_after_recv() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        connections: list[trillium.ServerConnection] = []
        start_reading = trio.Event()
        received: list[bytes] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            connections.append(ws)
            await start_reading.wait()
            while (message := await ws.recv()) != "END":
                received.append(message)  # type: ignore[arg-type]

        listening = small_buffer_listener()
        async with trillium.serve(handler, sock=listening, max_queue=4) as server:
            client = await RawClient.connect(port_of(server), sndbuf=65536)
            # 64 KiB messages: one read of the server completes at most one message.
            payloads = [bytes([i]) * 65536 for i in range(200)]
            data = b"".join(serialize_frame(Opcode.BINARY, p, mask=True) for p in payloads)
            rest = await send_until_stalled(client, data)
            (ws,) = connections
            assert len(ws._messages) <= 4
            queued = len(ws._messages)
            await trio.sleep(0.1)
            assert len(ws._messages) == queued  # still not reading

            start_reading.set()
            with trio.fail_after(5):
                await send_rest(client, rest)
                await client.send_frame(Opcode.TEXT, b"END")
                await wait_until(lambda: ws.state is not State.OPEN or len(received) == 200)
            assert received == payloads
            client.close()


async def test_max_queue_none_reads_without_bound() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        connections: list[trillium.ServerConnection] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            connections.append(ws)
            await ws.wait_closed()

        async with (
            serving(handler, max_queue=None) as (_, uri),
            trillium.connect(uri) as ws,
        ):
            for i in range(100):
                await ws.send(str(i))
            await wait_until(lambda: bool(connections) and len(connections[0]._messages) == 100)


# --------------------------------------------------------------------------- reading


async def test_reads_take_four_times_read_size_while_they_fill_the_buffer() -> None:
    """A read that fills the buffer means more is waiting: the reads that follow it
    before waiting take four times ``read_size`` (fewer system calls for a peer that
    streams big messages); the first read after a wait takes ``read_size`` again."""
    ours, theirs = socket.socketpair()
    with ours, theirs, trio.fail_after(TEST_TIMEOUT):
        ours.setblocking(False)
        reader = _TrioSocketReader(ours)
        theirs.sendall(bytes(10_000))
        assert reader.read_now(1000) is None  # no streak yet: wait first
        await reader.wait()
        sizes = [len(reader.read_ready(1000) or b"")]
        while (data := reader.read_now(1000)) is not None:
            sizes.append(len(data))
        assert sizes == [1000, 4000, 4000, 1000]

        theirs.sendall(bytes(10_000))
        await reader.wait()
        assert len(reader.read_ready(1000) or b"") == 1000


# --------------------------------------------------------------------------- write_limit


async def test_send_blocks_while_peer_does_not_read_and_resumes_when_it_reads() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        start_reading = trio.Event()
        sizes: list[int] = []

        async def never_reads_at_first(stream: trio.SocketStream) -> None:
            await accept_handshake(stream)
            await start_reading.wait()
            parser = FrameParser(expect_masked=True)
            while (frame := await read_frames(stream, parser)) is not None:
                if frame.opcode is Opcode.BINARY:
                    sizes.append(len(frame.payload))
                if frame.opcode is Opcode.CLOSE:
                    return

        message = b"m" * 2**20
        async with raw_server(never_reads_at_first) as port:
            async with trillium.connect(f"ws://127.0.0.1:{port}", write_limit=1024) as ws:
                sent = 0
                with trio.move_on_after(1) as scope:
                    for _ in range(64):  # 64 MiB: far more than the kernel buffers hold
                        await ws.send(message)
                        sent += 1
                assert scope.cancelled_caught, "send() never blocked"
                assert sent < 64
                # The writer holds at most one message beyond the limit.
                assert ws._out_size <= 1024 + len(message) + 14

                start_reading.set()
                with trio.fail_after(5):
                    await ws.send(message)
                sent += 1
                await wait_until(lambda: len(sizes) == sent)
            assert sizes == [len(message)] * sent


class _CountingSocket:
    """A trio socket whose ``send`` calls are counted."""

    def __init__(self, sock: object) -> None:
        self._sock = sock
        self.sends = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self._sock.send(data)  # type: ignore[attr-defined, no-any-return]


async def test_burst_of_sends_on_trio_leaves_in_two_writes_per_scheduler_pass() -> None:
    """Sends in a row after the first are written when trio's scheduler pass ends,
    together: a task sending 200 small messages makes a few system calls, not 200."""
    with trio.fail_after(TEST_TIMEOUT):
        received: list[object] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            async for message in ws:
                received.append(message)

        async with serving(handler) as (_, uri), trillium.connect(uri) as ws:
            counting = _CountingSocket(ws._write_now._sock)  # type: ignore[union-attr]
            ws._write_now._sock = counting  # type: ignore[union-attr]
            for i in range(200):
                await ws.send(f"message {i}")
            await wait_until(lambda: len(received) == 200)
            # send() yields to the scheduler every 16 sends: about 13 passes, each
            # writing its first frame at once and the rest at its end.
            assert 1 <= counting.sends <= 30
        assert received == [f"message {i}" for i in range(200)]


async def test_sends_queued_behind_a_full_kernel_buffer_all_arrive_before_the_close() -> None:
    """What the kernel doesn't take at the end of a scheduler pass waits for the writer
    task, and close() waits for all of it: the peer, which starts reading only once
    everything is queued, gets every message in order, then the close frame."""
    with trio.fail_after(TEST_TIMEOUT):
        start_reading = trio.Event()
        received: list[bytes] = []

        async def reads_late(stream: trio.SocketStream) -> None:
            await accept_handshake(stream)
            await start_reading.wait()
            parser = FrameParser(expect_masked=True)
            while (frame := await read_frames(stream, parser)) is not None:
                if frame.opcode is Opcode.BINARY:
                    received.append(frame.payload)
                if frame.opcode is Opcode.CLOSE:
                    await stream.send_all(serialize_frame(Opcode.CLOSE, frame.payload, mask=False))
                    return

        # 16 MB, more than the kernel buffers hold, under a write_limit that never
        # makes send() wait: all of it is queued before the peer reads a byte.
        messages = [i.to_bytes(4, "big") * 250 for i in range(16000)]
        async with raw_server(reads_late) as port, trio.open_nursery() as nursery:
            uri = f"ws://127.0.0.1:{port}"
            async with trillium.connect(uri, write_limit=2**25, close_timeout=3) as ws:
                for message in messages:
                    await ws.send(message)
                nursery.start_soon(_set_later, start_reading)
            assert ws.close_code == 1000
        assert received == messages


async def test_big_messages_queued_behind_a_full_kernel_buffer_arrive_whole_and_in_order() -> None:
    """A big binary message is queued as its header and its payload, and goes out in
    vectored writes that the kernel may cut anywhere (inside a header, between
    messages); small frames queued between big ones join them. The peer, which
    starts reading once all of it is queued, gets every byte in order."""
    with trio.fail_after(TEST_TIMEOUT):
        messages = big_and_small_messages()
        queued = trio.Event()
        handler = sends_all(messages, queued)

        async with serving(handler, write_limit=2**26) as (server, _):
            client = await RawClient.connect(port_of(server), rcvbuf=4096)
            await queued.wait()
            assert await recv_messages(client, len(messages)) == messages
            client.close()


async def test_server_sends_a_big_binary_message_without_copying_its_payload() -> None:
    """On a plain socket the frame header and the payload go out in one vectored
    write: sending 8 MiB allocates nothing near 8 MiB (the peer here reads into one
    buffer it owns, so the sender's allocations are all that is traced)."""
    with trio.fail_after(TEST_TIMEOUT):
        payload = os.urandom(2**23)
        go, sent = trio.Event(), trio.Event()

        async def handler(ws: trillium.ServerConnection) -> None:
            await go.wait()
            await ws.send(payload)
            await ws._flush()
            sent.set()
            await ws.wait_closed()

        async with serving(handler) as (server, _):
            client = await RawClient.connect(port_of(server))
            peak = await recv_big_frame_traced(client, payload, go.set)
            await sent.wait()
            client.close()
        assert peak < 2**20, peak


@pytest.mark.skipif(not ACCELERATED, reason="pure Python: take() copies")
async def test_server_receives_a_big_message_in_place_allocating_it_once() -> None:
    """A big frame's payload is read straight into the buffer that becomes the
    message, and unmasked there: receiving 8 MiB allocates about 8 MiB (collecting
    the reads and then joining them allocated it twice)."""
    with trio.fail_after(TEST_TIMEOUT):
        payload = os.urandom(2**23)
        got: list[str | bytes] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            got.append(await ws.recv())
            await ws.wait_closed()

        async with serving(handler, max_size=2**24) as (server, _):
            client = await RawClient.connect(port_of(server))
            peak = await send_big_frame_traced(client, payload, lambda: got)
            client.close()
        assert got == [payload]
        assert peak < 1.5 * len(payload), peak


async def test_peer_resetting_while_a_big_message_is_written_closes_the_connection() -> None:
    """The writer is part-way through big messages, waiting for room in the kernel's
    buffer, when the peer resets the connection: the connection closes abnormally
    (1006), the handler's wait ends, and the server forgets it."""
    with trio.fail_after(TEST_TIMEOUT):
        writing = trio.Event()
        outcome: list[int | None] = []
        handler = sends_big_messages(writing, outcome)
        async with serving(handler, write_limit=2**26) as (server, _):
            client = await RawClient.connect(port_of(server), rcvbuf=4096)
            await writing.wait()
            server_side = next(iter(server.connections))
            await wait_until(lambda: server_side._writing)
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            await wait_until(lambda: bool(outcome) and not server.connections)
        assert outcome == [1006]


async def _set_later(event: trio.Event) -> None:
    await trio.sleep(0.2)
    event.set()


# --------------------------------------------------------------------------- keepalive


async def test_server_fails_connection_with_1011_when_peer_never_answers_pings() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        outcome: list[object] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                outcome.append(exc)

        async with serving(handler, ping_interval=0.1, ping_timeout=0.2) as (server, _):
            start = trio.current_time()
            client = await RawClient.connect(port_of(server))
            first = await client.recv_frame()
            assert first is not None and first.opcode is Opcode.PING  # never answered
            close = await client.recv_frame_skipping_pings()
            elapsed = trio.current_time() - start
            assert close is not None
            assert close_payload(close).code == 1011
            assert 0.25 <= elapsed < 1.5, elapsed
            assert await client.read_until_eof() == b""
            client.close()
            await wait_until(lambda: bool(outcome))
        (exc,) = outcome
        assert isinstance(exc, ConnectionClosedError)
        assert exc.sent is not None and exc.sent.code == 1011


async def test_client_fails_connection_with_1011_when_server_never_answers_pings() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def silent(stream: trio.SocketStream) -> None:
            await accept_handshake(stream)
            while await stream.receive_some(65536):
                pass

        async with raw_server(silent) as port:
            uri = f"ws://127.0.0.1:{port}"
            async with trillium.connect(uri, ping_interval=0.1, ping_timeout=0.2) as ws:
                start = trio.current_time()
                with pytest.raises(ConnectionClosedError) as exc_info:
                    await ws.recv()
                elapsed = trio.current_time() - start
            assert exc_info.value.sent is not None and exc_info.value.sent.code == 1011
            assert 0.25 <= elapsed < 1.5, elapsed
            assert ws.state is State.CLOSED


async def test_keepalive_measures_latency_with_a_responsive_peer() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            serving(echo) as (_, uri),
            trillium.connect(uri, ping_interval=0.05, ping_timeout=1) as ws,
        ):
            assert ws.latency == 0.0
            await wait_until(lambda: ws.latency > 0, timeout=3)
            await trio.sleep(0.3)  # several ping intervals: still healthy
            assert ws.state is State.OPEN
            await ws.send("alive")
            assert await ws.recv() == "alive"


async def test_ping_returns_round_trip_time_as_float() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri, ping_interval=None) as ws:
            latency = await ws.ping()
            assert isinstance(latency, float)
            assert 0 < latency < 1
            assert 0 < ws.latency <= latency  # measured when the pong arrived
            assert isinstance(await ws.ping("custom"), float)
            assert isinstance(await ws.ping(b"\x00" * 125), float)


async def test_ping_waits_for_its_pong_and_a_cancelled_ping_is_harmless() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        answer = trio.Event()

        async def late_pong(stream: trio.SocketStream) -> None:
            await accept_handshake(stream)
            parser = FrameParser(expect_masked=True)
            while (frame := await read_frames(stream, parser)) is not None:
                if frame.opcode is Opcode.PING and frame.payload == b"late":
                    await answer.wait()
                    await stream.send_all(serialize_frame(Opcode.PONG, b"late", mask=False))

        async with (
            raw_server(late_pong) as port,
            trillium.connect(f"ws://127.0.0.1:{port}", ping_interval=None, close_timeout=0.1) as ws,
        ):
            with trio.move_on_after(0.1) as scope:
                await ws.ping()  # never answered
            assert scope.cancelled_caught
            results: list[float] = []

            async def ping() -> None:
                results.append(await ws.ping(b"late"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ping)
                await trio.sleep(0.2)
                assert not results
                answer.set()
            assert len(results) == 1
            assert results[0] >= 0.2


async def test_unsolicited_pong_is_sent_to_the_peer() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        frames = []

        async def record(stream: trio.SocketStream) -> None:
            await accept_handshake(stream)
            parser = FrameParser(expect_masked=True)
            while (frame := await read_frames(stream, parser)) is not None:
                frames.append(frame)
                if frame.opcode is Opcode.CLOSE:
                    await stream.send_all(serialize_frame(Opcode.CLOSE, frame.payload, mask=False))
                    return

        async with raw_server(record) as port:
            async with trillium.connect(f"ws://127.0.0.1:{port}", ping_interval=None) as ws:
                await ws.pong(b"heartbeat")
            assert [(f.opcode, f.payload) for f in frames[:1]] == [(Opcode.PONG, b"heartbeat")]


# --------------------------------------------------------------------------- close_timeout


async def test_close_gives_up_after_close_timeout_when_peer_never_answers() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        close_frames = []

        async def never_answers_close(stream: trio.SocketStream) -> None:
            await accept_handshake(stream)
            parser = FrameParser(expect_masked=True)
            while (frame := await read_frames(stream, parser)) is not None:
                if frame.opcode is Opcode.CLOSE:
                    close_frames.append(close_payload(frame))

        async with raw_server(never_answers_close) as port:
            async with trillium.connect(f"ws://127.0.0.1:{port}", close_timeout=0.3) as ws:
                start = trio.current_time()
                await ws.close()
                elapsed = trio.current_time() - start
                assert 0.25 <= elapsed < 1.5, elapsed
                assert ws.state is State.CLOSED
                assert ws.close_code == 1006
                with pytest.raises(ConnectionClosedError) as exc_info:
                    await ws.recv()
                assert exc_info.value.code == 1006
                assert exc_info.value.sent == Close(1000, "")
            await wait_until(lambda: bool(close_frames))
            assert close_frames == [Close(1000, "")]


async def test_server_close_gives_up_after_close_timeout_when_client_never_answers() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        outcome: dict[str, object] = {}

        async def handler(ws: trillium.ServerConnection) -> None:
            start = trio.current_time()
            await ws.close(1000, "bye")
            outcome["elapsed"] = trio.current_time() - start
            outcome["state"] = ws.state
            outcome["code"] = ws.close_code

        async with serving(handler, close_timeout=0.3) as (server, _):
            client = await RawClient.connect(port_of(server))
            frame = await client.recv_frame()
            assert frame is not None and close_payload(frame) == Close(1000, "bye")
            # Never answer; the server drops TCP after close_timeout.
            assert await client.read_until_eof() == b""
            client.close()
            await wait_until(lambda: "code" in outcome)
        assert 0.25 <= outcome["elapsed"] < 1.5  # type: ignore[operator]
        assert outcome["state"] is State.CLOSED
        assert outcome["code"] == 1006


async def test_server_close_gives_up_after_close_timeout_while_big_messages_wait_to_go_out() -> (
    None
):
    """A client that reads nothing holds back megabytes queued ahead of the close
    frame: close() stops waiting for them after close_timeout and drops TCP, with
    the writer part-way through them."""
    with trio.fail_after(TEST_TIMEOUT):
        outcome: dict[str, object] = {}

        async def handler(ws: trillium.ServerConnection) -> None:
            for _ in range(4):
                await ws.send(bytes(2**21))
            start = trio.current_time()
            await ws.close(1000, "bye")
            outcome["elapsed"] = trio.current_time() - start
            outcome["code"] = ws.close_code

        async with serving(handler, close_timeout=0.3, write_limit=2**26) as (server, _):
            client = await RawClient.connect(port_of(server), rcvbuf=4096)
            await wait_until(lambda: "code" in outcome)
            client.close()
        assert 0.25 <= outcome["elapsed"] < 1.5  # type: ignore[operator]
        assert outcome["code"] == 1006


async def test_close_completes_quickly_with_a_responsive_peer() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri, close_timeout=5) as ws:
            start = time.monotonic()
            await ws.close(1000, "bye")
            assert time.monotonic() - start < 1
            assert ws.state is State.CLOSED
            assert ws.close_code == 1000
            await ws.close()  # closing again does nothing


# --------------------------------------------------------------------------- asyncio


def test_echo_ping_and_close_codes_run_on_asyncio() -> None:
    async def main() -> None:
        with anyio.fail_after(TEST_TIMEOUT):
            closed: list[int] = []

            async def handler(ws: trillium.ServerConnection) -> None:
                try:
                    async for message in ws:
                        await ws.send(message)
                finally:
                    await ws.wait_closed()
                    closed.append(ws.close_code or 0)

            async with trillium.serve(handler, "127.0.0.1", 0) as server:
                async with trillium.connect(uri_of(server)) as ws:
                    await ws.send("hello")
                    assert await ws.recv() == "hello"
                    await ws.send(["frag", "ments"])
                    assert await ws.recv() == "fragments"
                    await ws.send(b"\x01\x02")
                    assert await ws.recv() == b"\x01\x02"
                    assert isinstance(await ws.ping(), float)
                    await ws.close(1000, "bye")
                    assert ws.close_code == 1000
                await anyio.sleep(0)
                while not closed:
                    await anyio.sleep(0.01)
                assert closed == [1000]

    anyio.run(main, backend="asyncio")


def test_max_size_and_server_close_run_on_asyncio() -> None:
    async def main() -> None:
        with anyio.fail_after(TEST_TIMEOUT):

            async def handler(ws: trillium.ServerConnection) -> None:
                async for message in ws:
                    await ws.send(message)

            async with trillium.serve(handler, "127.0.0.1", 0, max_size=100) as server:
                async with trillium.connect(uri_of(server)) as ws:
                    await ws.send(b"x" * 101)
                    with pytest.raises(ConnectionClosedError) as exc_info:
                        await ws.recv()
                    assert exc_info.value.code == 1009
                async with trillium.connect(uri_of(server)) as ws:
                    await ws.send("ok")
                    assert await ws.recv() == "ok"
                    await server.close()
                    with pytest.raises(ConnectionClosedOK) as ok_info:
                        await ws.recv()
                    assert ok_info.value.code == 1001

    anyio.run(main, backend="asyncio")


def test_keepalive_measures_latency_on_asyncio() -> None:
    async def main() -> None:
        with anyio.fail_after(TEST_TIMEOUT):
            got_close = anyio.Event()

            async def handler(ws: trillium.ServerConnection) -> None:
                await ws.wait_closed()
                got_close.set()

            async with trillium.serve(handler, "127.0.0.1", 0) as server:
                async with trillium.connect(
                    uri_of(server), ping_interval=0.05, ping_timeout=1
                ) as ws:
                    while ws.latency == 0:
                        await anyio.sleep(0.01)
                    assert ws.latency > 0
                await got_close.wait()

    anyio.run(main, backend="asyncio")


# --------------------------------------------------------------------------- probes


async def test_ping_raises_connection_closed_when_the_connection_closes_first() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def one_pong_then_hang_up(stream: trio.SocketStream) -> None:
            await accept_handshake(stream)
            parser = FrameParser(expect_masked=True)
            frame = await read_frames(stream, parser)
            assert frame is not None and frame.opcode is Opcode.PING
            await stream.send_all(serialize_frame(Opcode.PONG, frame.payload, mask=False))
            frame = await read_frames(stream, parser)
            assert frame is not None and frame.opcode is Opcode.PING
            await trio.sleep(0.1)
            # Hang up without answering the second ping.

        async with (
            raw_server(one_pong_then_hang_up) as port,
            trillium.connect(f"ws://127.0.0.1:{port}", ping_interval=None) as ws,
        ):
            assert await ws.ping() > 0
            with pytest.raises(ConnectionClosedError):
                await ws.ping()


async def test_two_pings_with_the_same_payload_raise_concurrency_error() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def mute(stream: trio.SocketStream) -> None:
            await accept_handshake(stream)
            while await stream.receive_some(65536):
                pass

        async with (
            raw_server(mute) as port,
            trillium.connect(f"ws://127.0.0.1:{port}", ping_interval=None, close_timeout=0.1) as ws,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(ws.ping, b"same")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ConcurrencyError):
                await ws.ping(b"same")
            nursery.cancel_scope.cancel()


async def test_text_flag_overrides_the_message_type() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri) as ws:
            await ws.send("as binary", text=False)
            assert await ws.recv() == b"as binary"
            await ws.send("é".encode(), text=True)
            assert await ws.recv() == "é"


async def test_server_answers_a_ping_with_a_pong() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (server, _):
            client = await RawClient.connect(port_of(server))
            await client.send_frame(Opcode.PING, b"are you there")
            frame = await client.recv_frame()
            assert frame is not None
            assert (frame.opcode, frame.payload) == (Opcode.PONG, b"are you there")
            client.close()


async def test_server_reads_frames_sent_right_behind_the_handshake_request() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (server, _):
            client = await RawClient.connect(port_of(server), handshake=False)
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            request = (
                "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            frames = serialize_frame(Opcode.TEXT, b"early", mask=True) + serialize_frame(
                Opcode.TEXT, b"bird", mask=True
            )
            await client.send_bytes(request + frames)  # one write
            data = b""
            while b"\r\n\r\n" not in data:
                data += await client.sock.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            client.parser.feed(rest)
            first, second = await client.recv_frame(), await client.recv_frame()
            assert first is not None and first.payload == b"early"
            assert second is not None and second.payload == b"bird"
            client.close()


async def test_client_reads_frames_sent_right_behind_the_handshake_response() -> None:
    with trio.fail_after(TEST_TIMEOUT):

        async def eager(stream: trio.SocketStream) -> None:
            request, handshake = await read_request(stream)
            assert request is not None
            greeting = serialize_frame(Opcode.TEXT, b"hello at once", mask=False)
            await stream.send_all(handshake.accept(request) + greeting)  # one write
            await trio.sleep_forever()

        async with (
            raw_server(eager) as port,
            trillium.connect(f"ws://127.0.0.1:{port}", close_timeout=0.1) as ws,
        ):
            assert await ws.recv() == "hello at once"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (serialize_frame(Opcode.TEXT, b"not masked", mask=False), 1002),
        (serialize_frame(Opcode.TEXT, b"\xff\xfe invalid utf-8", mask=True), 1007),
        (serialize_frame(0x3, b"reserved opcode", mask=True), 1002),
        (serialize_frame(Opcode.CONTINUATION, b"nothing to continue", mask=True), 1002),
    ],
    ids=["unmasked", "invalid-utf8", "reserved-opcode", "stray-continuation"],
)
async def test_server_fails_the_connection_when_the_peer_breaks_the_protocol(
    frame: bytes, code: int
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        outcome: list[ConnectionClosed] = []

        async def handler(ws: trillium.ServerConnection) -> None:
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                outcome.append(exc)

        async with serving(handler) as (server, _):
            client = await RawClient.connect(port_of(server))
            await client.send_bytes(frame)
            close = await client.recv_frame()
            assert close is not None
            assert close_payload(close).code == code
            assert await client.read_until_eof() == b""  # the server drops TCP
            client.close()
            await wait_until(lambda: bool(outcome))
        assert isinstance(outcome[0], ConnectionClosedError)
        assert outcome[0].sent is not None and outcome[0].sent.code == code


async def test_keepalive_disabled_with_ping_interval_none_sends_no_ping() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo, ping_interval=None) as (server, _):
            client = await RawClient.connect(port_of(server))
            with trio.move_on_after(0.3) as scope:
                await client.recv_frame()
            assert scope.cancelled_caught  # nothing came
            client.close()


async def test_cancelled_recv_loses_no_message() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving(echo) as (_, uri), trillium.connect(uri) as ws:
            for _ in range(3):
                with trio.move_on_after(0.02) as scope:
                    await ws.recv()
                assert scope.cancelled_caught
            await ws.send("after cancellations")
            assert await ws.recv() == "after cancellations"


async def test_server_close_unblocks_a_handler_stuck_in_send_to_a_peer_that_never_reads() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        outcome: list[BaseException] = []

        async def flood(ws: trillium.ServerConnection) -> None:
            try:
                while True:
                    await ws.send(b"f" * 2**20)
            except ConnectionClosed as exc:
                outcome.append(exc)

        async with serving(flood, write_limit=1024, close_timeout=0.3) as (server, _):
            client = await RawClient.connect(port_of(server), rcvbuf=65536)
            await wait_until(lambda: len(server.connections) == 1)
            (conn,) = server.connections
            await wait_until(lambda: conn._out_size > 1024)  # blocked in send()
            start = trio.current_time()
            await server.close()
            elapsed = trio.current_time() - start
            client.close()
        assert elapsed < 2, elapsed
        assert len(outcome) == 1
        assert isinstance(outcome[0], ConnectionClosedError)
