"""The connection manager on asyncio, where it takes its own ways: the transport's
data callback takes the reader's turn while the reader waits
(``_AsyncioStreamReader``), and big messages go to the transport without being
joined to their header (``_AsyncioTransportWriter``).

The server runs on asyncio in a thread of its own (a blocking portal); the test
drives it from trio with a hand-made peer (``RawClient``), which sends exactly the
bytes it is told to and reads only when told to. The limits and failures that the
connection handles on trio must hold on these paths too.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
import trio
from anyio.from_thread import start_blocking_portal

import trillium
from trillium.connection import _AsyncioInPlace, _AsyncioStreamReader
from trillium.core.frames import RECEIVE_INTO_ABOVE, Opcode, serialize_frame
from trillium.core.mask import ACCELERATED

from ._support import (
    TEST_TIMEOUT,
    RawClient,
    assert_broken_delivery_logged_once,
    big_and_small_messages,
    break_delivery_of_boom,
    close_payload,
    echo,
    recv_big_frame_traced,
    recv_messages,
    send_big_frame_traced,
    send_rest,
    send_until_stalled,
    sends_all,
    sends_big_messages,
    small_buffer_listener,
    wait_until,
)

Handler = Callable[[trillium.ServerConnection], Awaitable[None]]


@contextmanager
def asyncio_server(handler: Handler, **kwargs: Any) -> Iterator[int]:
    """``trillium.serve(handler, ...)`` on asyncio in another thread; yields its port."""

    async def make_server() -> trillium.WebSocketServer:  # made in the event loop
        return trillium.serve(handler, **kwargs)

    kwargs.setdefault("ping_interval", None)
    if "sock" not in kwargs:
        kwargs.update(host="127.0.0.1", port=0)
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(portal.call(make_server)) as server,
    ):
        yield server.sockets[0].getsockname()[1]


async def echo_first(ws: trillium.ServerConnection) -> None:
    """The handler's first step in the tests below: echo one message, so that the
    peer knows when the reader has gone back to waiting (see ``connect_once_waiting``)."""
    await ws.send(await ws.recv())


async def connect_once_waiting(port: int) -> RawClient:
    """A ``RawClient`` whose first message a handler starting with ``echo_first`` has
    echoed: from then on the server's reader waits with nothing buffered, so what
    the client sends next is the data callback's to take."""
    client = await RawClient.connect(port)
    await client.send_frame(Opcode.TEXT, b"ready")
    assert await client.recv_frame() is not None
    return client


async def wait_for_thread_event(event: threading.Event) -> None:
    """From the server's asyncio thread: until ``event`` is set in the test's thread."""
    while not event.is_set():
        await anyio.sleep(0.01)


async def test_one_read_with_more_than_max_queue_messages_stops_at_max_queue() -> None:
    connections: list[trillium.ServerConnection] = []
    start_reading = threading.Event()
    received: list[bytes] = []

    async def handler(ws: trillium.ServerConnection) -> None:
        connections.append(ws)
        await echo_first(ws)
        await wait_for_thread_event(start_reading)
        for _ in range(100):
            received.append(await ws.recv())  # type: ignore[arg-type]

    # max_queue=2: the callback parses two messages and stops; the other 98 stay
    # buffered until recv() makes room, and then all arrive, in order.
    with trio.fail_after(TEST_TIMEOUT), asyncio_server(handler, max_queue=2) as port:
        client = await connect_once_waiting(port)
        payloads = [b"%d" % i for i in range(100)]
        await client.send_bytes(
            b"".join(serialize_frame(Opcode.BINARY, p, mask=True) for p in payloads)
        )
        (ws,) = connections
        await wait_until(lambda: len(ws._messages) == 2)
        await trio.sleep(0.1)
        assert len(ws._messages) == 2  # and no more
        start_reading.set()
        await wait_until(lambda: len(received) == 100)
        assert received == payloads
        client.close()


async def test_message_in_more_fragments_than_max_queue_arrives_from_one_read() -> None:
    received: list[str] = []

    async def handler(ws: trillium.ServerConnection) -> None:
        await echo_first(ws)
        received.append(await ws.recv())  # type: ignore[arg-type]

    # The callback parses two fragments and pauses; the queue holds no whole
    # message, so it is not full, yet the other fragments must still be parsed.
    with trio.fail_after(TEST_TIMEOUT), asyncio_server(handler, max_queue=2) as port:
        client = await connect_once_waiting(port)
        fragments = [
            serialize_frame(
                Opcode.TEXT if i == 0 else Opcode.CONTINUATION, b"%d," % i, mask=True, fin=i == 9
            )
            for i in range(10)
        ]
        await client.send_bytes(b"".join(fragments))
        await wait_until(lambda: bool(received))
        assert received == ["0,1,2,3,4,5,6,7,8,9,"]
        client.close()


async def test_reading_stops_at_max_queue_when_each_read_holds_one_message() -> None:
    connections: list[trillium.ServerConnection] = []
    start_reading = threading.Event()
    received: list[str] = []

    async def handler(ws: trillium.ServerConnection) -> None:
        connections.append(ws)
        await echo_first(ws)
        await wait_for_thread_event(start_reading)
        for _ in range(10):
            received.append(await ws.recv())  # type: ignore[arg-type]

    with trio.fail_after(TEST_TIMEOUT), asyncio_server(handler, max_queue=2) as port:
        client = await connect_once_waiting(port)
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle
        # Each message in a read of its own, ending on a frame boundary: nothing
        # stays buffered, so only the queue tells the reader to stop.
        for i in range(10):
            await client.send_frame(Opcode.TEXT, b"%d" % i)
            await trio.sleep(0.02)
        (ws,) = connections
        assert len(ws._messages) == 2
        start_reading.set()
        await wait_until(lambda: len(received) == 10)
        assert received == [str(i) for i in range(10)]
        client.close()


async def test_server_stops_reading_at_max_queue_and_resumes_after_recv() -> None:
    connections: list[trillium.ServerConnection] = []
    start_reading = threading.Event()
    received: list[bytes] = []

    async def handler(ws: trillium.ServerConnection) -> None:
        connections.append(ws)
        await wait_for_thread_event(start_reading)
        while (message := await ws.recv()) != "END":
            received.append(message)  # type: ignore[arg-type]

    with (
        trio.fail_after(TEST_TIMEOUT),
        asyncio_server(handler, sock=small_buffer_listener(), max_queue=4) as port,
    ):
        client = await RawClient.connect(port, sndbuf=65536)
        payloads = [bytes([i]) * 65536 for i in range(200)]
        data = b"".join(serialize_frame(Opcode.BINARY, p, mask=True) for p in payloads)
        rest = await send_until_stalled(client, data)
        (ws,) = connections
        assert len(ws._messages) <= 4

        start_reading.set()
        with trio.fail_after(5):
            await send_rest(client, rest)
            await client.send_frame(Opcode.TEXT, b"END")
            await wait_until(lambda: ws.state is not trillium.State.OPEN or len(received) == 200)
        assert received == payloads
        client.close()


async def test_ping_is_answered_while_the_handler_is_not_reading() -> None:
    release = threading.Event()

    async def handler(ws: trillium.ServerConnection) -> None:
        await wait_for_thread_event(release)
        assert await ws.recv() == "queued"

    with trio.fail_after(TEST_TIMEOUT), asyncio_server(handler) as port:
        client = await RawClient.connect(port)
        # A message waits for recv() first: the pong then goes through the writer task.
        await client.send_frame(Opcode.TEXT, b"queued")
        await client.send_frame(Opcode.PING, b"are you there")
        pong = await client.recv_frame()
        assert pong is not None
        assert (pong.opcode, pong.payload) == (Opcode.PONG, b"are you there")
        release.set()
        frame = await client.recv_frame()
        assert frame is not None and frame.opcode is Opcode.CLOSE
        assert close_payload(frame).code == 1000
        client.close()


async def test_server_fails_connection_on_unmasked_frame() -> None:
    closes: list[int | None] = []

    async def handler(ws: trillium.ServerConnection) -> None:
        await ws.wait_closed()
        closes.append(ws.close_code)

    with trio.fail_after(TEST_TIMEOUT), asyncio_server(handler) as port:
        client = await RawClient.connect(port)
        await client.send_bytes(serialize_frame(Opcode.TEXT, b"bare", mask=False))
        frame = await client.recv_frame()
        assert frame is not None and frame.opcode is Opcode.CLOSE
        assert close_payload(frame).code == 1002
        assert await client.read_until_eof() == b""  # and the server closes TCP
        await wait_until(lambda: bool(closes))
        client.close()


async def test_error_in_the_data_callback_ends_its_connection_only_and_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error there (a bug) must not vanish into asyncio's exception handler and
    leave the connection hanging: the reader task raises it, as it would on trio,
    which ends that connection and logs the error; the server serves on."""
    break_delivery_of_boom(monkeypatch)

    with trio.fail_after(TEST_TIMEOUT), asyncio_server(echo) as port:
        client = await RawClient.connect(port)
        await client.send_frame(Opcode.TEXT, b"hello")
        echoed = await client.recv_frame()  # the reader waits again: the callback's turn
        assert echoed is not None and echoed.payload == b"hello"
        await client.send_frame(Opcode.TEXT, b"boom")
        await client.read_until_eof()  # the connection ends, it does not hang
        client.close()

        other = await connect_once_waiting(port)  # served, and echoed
        other.close()
    assert_broken_delivery_logged_once(caplog)


def test_transport_reads_take_four_times_as_much_after_one_fills_its_buffer() -> None:
    """The transport reads ``max_size`` bytes per callback; after a read that filled
    it (more is likely waiting) the next take four times as much, and after a short
    one the transport's own size again, as the trio reader's reads in a streak."""

    class Transport(asyncio.Transport):
        max_size = 1000

        def pause_reading(self) -> None:
            pass

    transport = Transport()
    protocol = SimpleNamespace(read_queue=deque(), read_event=asyncio.Event())
    _AsyncioStreamReader(transport, protocol, 2**20, lambda data: False, lambda: None)
    sizes = []
    for n in (500, 1000, 4000, 4000, 2500, 1000):
        protocol.data_received(bytes(n))
        sizes.append(transport.max_size)
    assert sizes == [1000, 4000, 4000, 4000, 1000, 4000]
    assert b"".join(protocol.read_queue) == bytes(13_000)  # every byte queued, in order


async def test_transport_reads_a_big_payload_in_place_while_the_reader_waits() -> None:
    """While a big frame's payload arrives and the reader waits, the socket transport
    reads straight into the payload's buffer (its protocol is then ``_AsyncioInPlace``);
    once frames are small again it reads the usual way, into anyio's protocol."""
    connections: list[trillium.ServerConnection] = []
    got: list[str | bytes] = []

    async def handler(ws: trillium.ServerConnection) -> None:
        connections.append(ws)
        await echo_first(ws)
        async for message in ws:
            got.append(message)

    def transport_protocol() -> object:
        return connections[0].stream._transport.get_protocol()  # type: ignore[attr-defined]

    payload = os.urandom(RECEIVE_INTO_ABOVE * 4)
    wire = serialize_frame(Opcode.BINARY, payload, mask=True)
    with trio.fail_after(TEST_TIMEOUT), asyncio_server(handler, max_size=None) as port:
        client = await connect_once_waiting(port)
        anyio_protocol = transport_protocol()
        await client.send_bytes(wire[:100_000])
        await wait_until(lambda: type(transport_protocol()) is _AsyncioInPlace)
        await client.send_bytes(wire[100_000:])
        await wait_until(lambda: len(got) == 1)
        for i in range(3):  # small ones: read the usual way again
            await client.send_frame(Opcode.TEXT, b"small %d" % i)
        await wait_until(lambda: len(got) == 4)
        assert got == [payload, "small 0", "small 1", "small 2"]
        assert transport_protocol() is anyio_protocol
        client.close()


async def test_peer_vanishing_in_the_middle_of_a_payload_read_in_place_is_1006() -> None:
    """The peer drops TCP while the transport reads a big payload in place: end of
    stream reaches the connection as usual, which closes abnormally (1006)."""
    outcome: list[int | None] = []
    connections: list[trillium.ServerConnection] = []

    async def handler(ws: trillium.ServerConnection) -> None:
        connections.append(ws)
        await echo_first(ws)
        with pytest.raises(trillium.ConnectionClosedError):
            await ws.recv()
        outcome.append(ws.close_code)

    wire = serialize_frame(Opcode.BINARY, bytes(RECEIVE_INTO_ABOVE * 4), mask=True)
    with trio.fail_after(TEST_TIMEOUT), asyncio_server(handler, max_size=None) as port:
        client = await connect_once_waiting(port)
        await client.send_bytes(wire[:500_000])
        await wait_until(
            lambda: (
                type(connections[0].stream._transport.get_protocol())  # type: ignore[attr-defined]
                is _AsyncioInPlace
            )
        )
        client.close()
        await wait_until(lambda: bool(outcome))
    assert outcome == [1006]


def test_bytes_read_after_the_reader_stopped_waiting_go_the_usual_way() -> None:
    """Should the reader stop waiting between the choice to read in place and the
    read itself, the transport reads into a buffer of its own, whose bytes go to
    anyio's protocol (queued for the reader, in order), and reading in place stops."""

    class Transport(asyncio.Transport):
        max_size = 1000

        def __init__(self) -> None:
            super().__init__()
            self.protocol: Any = None

        def get_protocol(self) -> Any:
            return self.protocol

        def set_protocol(self, protocol: Any) -> None:
            self.protocol = protocol

    transport = Transport()
    inner = SimpleNamespace(read_queue=deque(), read_event=asyncio.Event())
    reader = _AsyncioStreamReader(transport, inner, 2**20, lambda data: False, lambda: None)
    in_place = _AsyncioInPlace(reader, inner)
    in_place.use(True)
    assert transport.protocol is in_place
    buffer = in_place.get_buffer(-1)
    assert len(buffer) == 1000  # not parked: a buffer of its own
    buffer[:5] = b"hello"
    in_place.buffer_updated(5)
    assert transport.protocol is inner
    assert list(inner.read_queue) == [b"hello"]


# --------------------------------------------------------------------------- writing


async def test_big_messages_queued_behind_a_full_kernel_buffer_arrive_whole_and_in_order() -> None:
    """Big binary messages go to the transport as header and payload; what the
    kernel doesn't take at once the transport keeps, behind anything it already
    keeps. The peer, which starts reading once all of it is queued, gets every byte
    in order."""
    messages = big_and_small_messages()
    queued = threading.Event()
    handler = sends_all(messages, queued)

    with trio.fail_after(TEST_TIMEOUT), asyncio_server(handler, write_limit=2**26) as port:
        client = await RawClient.connect(port, rcvbuf=4096)
        await wait_until(queued.is_set)
        assert await recv_messages(client, len(messages)) == messages
        client.close()


async def test_server_sends_a_big_binary_message_without_joining_it_to_its_header() -> None:
    """Header and payload go out in one vectored write, and only what the kernel
    didn't take is copied, into the transport: sending 8 MiB allocates less than
    8 MiB (joining them first would allocate all of it, and then the copy)."""
    payload = os.urandom(2**23)
    go = threading.Event()

    async def handler(ws: trillium.ServerConnection) -> None:
        await wait_for_thread_event(go)
        await ws.send(payload)
        await ws.wait_closed()

    with trio.fail_after(TEST_TIMEOUT), asyncio_server(handler) as port:
        client = await RawClient.connect(port)
        peak = await recv_big_frame_traced(client, payload, go.set)
        client.close()
    assert peak < len(payload), peak


@pytest.mark.skipif(not ACCELERATED, reason="pure Python: take() copies")
async def test_server_receives_a_big_message_allocating_it_once() -> None:
    """Each read of a big frame's payload goes to its place in the buffer that becomes
    the message, and the read is let go: receiving 8 MiB allocates about 8 MiB
    (collecting the reads and then joining them allocated it twice)."""
    payload = os.urandom(2**23)
    got: list[str | bytes] = []

    async def handler(ws: trillium.ServerConnection) -> None:
        got.append(await ws.recv())
        await ws.wait_closed()

    with trio.fail_after(TEST_TIMEOUT), asyncio_server(handler, max_size=2**24) as port:
        client = await RawClient.connect(port)
        peak = await send_big_frame_traced(client, payload, lambda: got)
        client.close()
    assert got == [payload]
    assert peak < 1.5 * len(payload), peak


async def test_peer_resetting_while_big_messages_wait_in_the_transport_closes_the_connection() -> (
    None
):
    """Big messages the kernel didn't take wait in the transport when the peer resets
    the connection: the connection closes abnormally (1006) and the handler's wait
    ends."""
    writing = threading.Event()
    outcome: list[int | None] = []
    with (
        trio.fail_after(TEST_TIMEOUT),
        asyncio_server(sends_big_messages(writing, outcome), write_limit=2**26) as port,
    ):
        client = await RawClient.connect(port, rcvbuf=4096)
        await wait_until(writing.is_set)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        await wait_until(lambda: bool(outcome))
    assert outcome == [1006]
