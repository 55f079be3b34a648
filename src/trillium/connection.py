"""The connection manager: one task group per connection, written once for trio and asyncio.

A ``Connection`` wraps a byte stream (TCP, TLS or Unix socket, through anyio, so the
same code runs on trio and on asyncio) and a sans-I/O ``Protocol``. While it runs,
its task group holds three tasks:

- the **reader** reads from the stream, feeds the protocol, queues the messages it
  yields for ``recv()``, and stops reading when ``max_queue`` messages wait, so TCP
  pushes back on the peer (it parses no more messages than the queue has room for,
  so a read full of tiny messages doesn't overfill it);
- the **writer** sends what ``send()`` and the protocol queued, joining everything
  that piled up into one write; ``send()`` waits while more than ``write_limit``
  bytes are buffered, so a slow reader on the other side cannot grow our memory;
- the **keepalive** pings every ``ping_interval`` seconds and fails the connection
  (1011) when no pong comes within ``ping_timeout``; the round trip is ``latency``.
  A failed connection's TCP connection is dropped at most ``close_timeout`` later,
  even when the peer has vanished and our close frame can't get out.

``send()`` never writes to the stream itself: it encodes the frame and appends it to
the writer's buffer in one step with no checkpoint in between, so cancelling a
``send()`` either drops the whole frame or none of it. Half a frame never reaches the
wire.

Connections are made by ``trillium.serve`` and ``trillium.connect``; this module is
the part they share.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractContextManager, nullcontext, suppress
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
import trio

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from ._backend import current_backend
from .core.close import CloseCode
from .core.handshake import Request, Response
from .core.protocol import CLIENT, Event, Message, Pong, Protocol, State
from .exceptions import (
    ConcurrencyError,
    ConnectionClosed,
    ConnectionClosedError,
    ProtocolError,
)

__all__ = ["Connection", "Data", "WaterMarks"]

Data = str | bytes
WaterMarks = int | tuple[int, int | None] | None

logger = logging.getLogger("trillium")

_STREAM_ERRORS = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    OSError,
)


#: Sends that complete without waiting yield to the scheduler once every this many.
_YIELD_EVERY = 16

#: A read in a streak (the one before it filled the buffer) takes this many times the
#: connection's ``read_size``. A peer streaming big messages has megabytes waiting, and
#: fewer, bigger reads cost fewer system calls and fewer turns of the reader's loop: a
#: trio server echoing 64 KiB messages spent about 38 µs of CPU per message instead of
#: 54, and 525 instead of 618 at 1 MiB. The first read after a wait stays at
#: ``read_size``: a connection that has caught up rarely finds more, and glibc serves a
#: block over its mmap threshold (128 KiB at first, raised only by freeing a bigger
#: one) from the kernel, so a 1 MiB buffer that a 1 KiB read shrank was mapped,
#: remapped and unmapped on every read: 8% more CPU per 1 KiB message.
_STREAK_READ_FACTOR = 4

#: What waiting for a plain trio socket raises once it is closed (then: end of stream).
_WAIT_ERRORS = (OSError, trio.ClosedResourceError, ValueError)

#: A binary message at least this long is queued as its frame header and its payload,
#: uncopied (``Protocol.send_binary_passthrough``), and on a plain trio socket a queue
#: of several buffers holding at least this much goes out in one ``sendmsg`` rather
#: than joined first: copying 1 MiB to put ten bytes in front of it took about a
#: tenth of the CPU a server spent echoing it. (Below this, joining costs less than
#: the vectored write's setup.)
_GATHER_ABOVE = 65536

#: The most buffers one ``sendmsg`` takes (Linux's IOV_MAX); the rest wait their turn.
_MAX_GATHER = 1024

#: An empty receive queue (see ``Connection.__init__``): an empty tuple, so ``len()``
#: and truth tests work and appending to it by mistake fails loudly.
_NO_MESSAGES: Any = ()

# Connection states the per-message paths compare against, as module globals (an
# enum member read through its class costs about 90 ns on Python 3.11, a global 10).
_OPEN, _CLOSED = State.OPEN, State.CLOSED

#: Close codes of a normal closure (see ``Connection._closed_normally``).
_NORMAL_CLOSE_CODES = frozenset(
    {CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD}
)

#: What ``Connection._shielded`` gives when the task group already shields the tasks.
_UNSCOPED = nullcontext()


def _raw_trio_socket(stream: anyio.abc.ByteStream) -> Any:
    """The socket under anyio's plain trio socket stream, else None (TLS, asyncio...).

    Read from anyio's private ``_raw_socket`` where it exists: the public
    ``stream.extra(SocketAttribute.raw_socket)`` first builds a dict of every socket
    attribute, calling ``getpeername()`` on the way, which is a measurable share of
    a handshake's cost.
    """
    if type(stream).__module__ != "anyio._backends._trio":
        return None
    try:
        return stream._raw_socket  # type: ignore[attr-defined]
    except AttributeError:
        return stream.extra(anyio.abc.SocketAttribute.raw_socket, None)


class _EndOfPass(trio.abc.Instrument):
    """Writes what connections queued during one pass of trio's scheduler at the end
    of the pass, just before trio waits for I/O (see ``Connection._push_soon``).

    A task that sends several messages in a row (a client streaming requests, a
    handler answering a burst) would otherwise make one system call per message, and
    on loopback a ``send`` costs several times what framing a small message does.
    The pass ends as soon as the runnable tasks have run, so nothing waits longer
    than that; and the first frame of a pass, when no reply is likely to follow it,
    does not wait at all.

    The hook must not wake tasks: trio has already decided how long to sleep. A
    connection whose write needs the writer task, or that has a task waiting for
    its buffer to drain, is finished by ``Connection._after_end_of_pass`` through
    ``run_sync_soon``, which wakes trio.
    """

    def __init__(self) -> None:
        self.pending: list[Connection] = []
        self._token = trio.lowlevel.current_trio_token()

    def before_io_wait(self, timeout: float) -> None:
        pending = self.pending
        if pending:
            self.pending = []
            for connection in pending:
                if not connection._write_at_end_of_pass():
                    self._token.run_sync_soon(connection._after_end_of_pass)


_END_OF_PASS: trio.lowlevel.RunVar[_EndOfPass] = trio.lowlevel.RunVar("trillium_end_of_pass")


def _end_of_pass() -> _EndOfPass:
    """This trio run's ``_EndOfPass`` instrument, installed the first time it is needed."""
    try:
        return _END_OF_PASS.get()
    except LookupError:
        instrument = _EndOfPass()
        trio.lowlevel.add_instrument(instrument)
        _END_OF_PASS.set(instrument)
        return instrument


def _close_trio_socket_stream(stream: anyio.abc.ByteStream) -> bool:
    """Close anyio's plain trio socket stream now; False for any other stream.

    This is what the stream's ``aclose()`` does (mark it closed, close the trio
    socket, which wakes any task waiting on it), without the checkpoint that
    follows: for the reader, closing is the last thing a connection does, and that
    checkpoint costs it one more trip through the scheduler.
    """
    if type(stream).__module__ != "anyio._backends._trio":
        return False
    trio_socket = getattr(stream, "_trio_socket", None)
    if trio_socket is None:
        return False
    stream._closed = True  # type: ignore[attr-defined]
    trio_socket.close()
    return True


class _TrioSocketWriter:
    """``write(data) -> bytes taken``: a non-blocking ``send`` on a plain trio socket.

    trio keeps no buffer of its own, so nothing queued can be overtaken. (An object
    rather than a closure: it is held for the connection's life, and is a quarter
    of the size.) ``end_of_pass`` is the run's instrument that writes what was
    queued during a pass (see ``_EndOfPass``).
    """

    __slots__ = ("_sock", "end_of_pass")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.end_of_pass = _end_of_pass()

    def __call__(self, data: bytes | memoryview) -> int:
        try:
            return int(self._sock.send(data))
        except OSError:  # BlockingIOError, or an error the writer will meet again
            return 0

    def gather(self, buffers: list[bytes | memoryview]) -> int:
        """The buffers one after the other, in one non-blocking ``sendmsg``."""
        try:
            return int(self._sock.sendmsg(buffers[:_MAX_GATHER]))
        except OSError:
            return 0


def _drop_sent(buffers: list[bytes | memoryview], sent: int) -> None:
    """Remove the first ``sent`` bytes from ``buffers``: the buffers that went out
    whole, then the part sent of the next one (leaving a view of its rest, not a
    copy: it may be most of a big message)."""
    done = 0
    for buffer in buffers:
        if sent < len(buffer):
            break
        sent -= len(buffer)
        done += 1
    del buffers[:done]
    if sent:
        buffers[0] = memoryview(buffers[0])[sent:]


def _direct_writer(
    stream: anyio.abc.ByteStream, high: int
) -> Callable[[bytes | memoryview], int] | None:
    """A synchronous ``write(data) -> bytes taken`` straight to the kernel, if there is one.

    On a plain trio socket stream: a non-blocking ``send`` on the raw socket (see
    ``_TrioSocketWriter``). On anyio's asyncio socket stream: the transport's
    ``write``, which takes everything while its buffer stays under ``high`` (the
    stream's own ``send`` would add a checkpoint and a task switch per message).
    None for TLS or other wrapped streams, which must go through the stream's
    ``send``.
    """
    sock = _raw_trio_socket(stream)
    if sock is not None:
        return _TrioSocketWriter(sock)
    transport = getattr(stream, "_transport", None)  # anyio's asyncio SocketStream
    if type(stream).__module__ == "anyio._backends._asyncio" and isinstance(
        transport, asyncio.WriteTransport
    ):
        return _AsyncioTransportWriter(transport, high)
    return None


class _AsyncioTransportWriter:
    """``write(data) -> bytes taken``: into an asyncio transport, which sends what it
    can at once and keeps the rest; nothing once it keeps more than ``high`` (the
    writer task then waits for it to drain).

    ``gather(buffers)`` writes several without joining them first, which asyncio's
    ``writelines`` does before Python 3.12: on CPython's socket transport with
    nothing kept, they go out in one ``sendmsg`` and only what the kernel didn't take
    is copied into the transport. A 1 MiB message is then never copied just to put
    its header in front of it, as on trio (see ``_GATHER_ABOVE``).
    """

    __slots__ = ("_high", "_sock", "_transport")

    def __init__(self, transport: asyncio.WriteTransport, high: int) -> None:
        self._transport = transport
        self._high = high
        # Only under a selector loop's transport, which sends with plain non-blocking
        # calls itself (a proactor's owns its socket's I/O), where sendmsg exists.
        sock = getattr(transport, "_sock", None)
        selector = type(transport).__module__ == "asyncio.selector_events"
        self._sock = sock if selector and hasattr(sock, "sendmsg") else None

    def __call__(self, data: bytes | memoryview) -> int:
        transport = self._transport
        if transport.is_closing() or transport.get_write_buffer_size() > self._high:
            return 0  # let the writer wait for the transport to drain
        transport.write(data)
        return len(data)

    def gather(self, buffers: list[bytes | memoryview]) -> int:
        """The buffers one after the other; all of them, or nothing (as ``write``)."""
        transport = self._transport
        kept = transport.get_write_buffer_size()
        if transport.is_closing() or kept > self._high:
            return 0
        rest = buffers[:]
        if self._sock is not None and not kept:
            try:
                sent = self._sock.sendmsg(rest[:_MAX_GATHER])
            except OSError:  # BlockingIOError, or an error the transport meets again
                pass
            else:
                _drop_sent(rest, sent)
        for buffer in rest:
            transport.write(buffer)
        return sum(map(len, buffers))


#: The writers whose ``gather`` writes several buffers without joining them.
_GATHERING_WRITERS = (_TrioSocketWriter, _AsyncioTransportWriter)


class _TrioSocketReader:
    """``receive(max_bytes)`` straight from a plain trio socket, for the reader task.

    trio's own ``recv`` first tries the socket and, when nothing is there (the usual
    case once a connection has caught up), waits for it to become readable and tries
    again: one wasted system call per read, under three layers of wrappers (anyio's
    stream, trio's socket, its non-blocking helper) whose frames an idle connection
    keeps alive. This waits first and reads once; only after a read that filled the
    buffer, when more is likely waiting, it reads again before waiting, at most
    ``_YIELD_EVERY`` times in a row so that a flooding peer can't starve other tasks.
    Those reads take ``_STREAK_READ_FACTOR`` times as much (see there).
    End of stream, a closed socket and socket errors all read as ``b""``.

    The reader task takes these steps itself rather than calling it: ``read_now()``,
    then ``wait()`` and ``read_ready()`` until there is something. Its own frame is
    then the only one of ours on the stack while it waits, one fewer (about 250
    bytes) for every idle connection.
    """

    __slots__ = ("_sock", "_streak")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._streak = 0

    async def __call__(self, max_bytes: int) -> bytes:
        data = self.read_now(max_bytes)
        while data is None:
            try:
                await self.wait()
            except _WAIT_ERRORS:
                return b""
            data = self.read_ready(max_bytes)
        return data

    def read_now(self, max_bytes: int) -> bytes | None:
        """A read before waiting, when one is likely to find data (see above); None
        when the caller must ``wait()`` first."""
        if 0 < self._streak < _YIELD_EVERY:
            max_bytes *= _STREAK_READ_FACTOR
            data = self._recv(max_bytes)
            if data is not None:
                self._streak = self._streak + 1 if len(data) == max_bytes else 0
                return data
        return None

    def wait(self) -> Awaitable[None]:
        """Until the socket is readable: what to await (no frame of its own)."""
        return trio.lowlevel.wait_readable(self._sock)

    def read_ready(self, max_bytes: int) -> bytes | None:
        """The read once ``wait()`` returned; None after a spurious wakeup."""
        data = self._recv(max_bytes)
        if data is not None:
            self._streak = 1 if len(data) == max_bytes else 0
        return data

    def _recv(self, max_bytes: int) -> bytes | None:
        try:
            data: bytes = self._sock.recv(max_bytes)
        except BlockingIOError:
            return None
        except (OSError, ValueError):  # ValueError: the socket is closed (fd -1)
            return b""
        return data

    def read_into(self, buffer: memoryview) -> int | bytes | None:
        """A read into ``buffer`` (the protocol's: see ``Protocol.receive_buffer``):
        how many bytes came, ``b""`` at the end of the stream (as ``read_ready``
        says it), None when the caller must ``wait()`` first."""
        try:
            size: int = self._sock.recv_into(buffer)
        except BlockingIOError:
            return None
        except (OSError, ValueError):
            return b""
        return size or b""


class _AsyncioStreamReader:
    """``receive(max_bytes)`` from anyio's asyncio socket stream, for the reader task.

    anyio's own ``receive`` resumes the transport's reading before each wait and
    pauses it after: two ``epoll_ctl`` system calls per read, and a message that
    arrives in between waits for the next resume. This leaves reading on and takes
    what the transport queued, with flow control the way asyncio's own
    ``StreamReader`` does it: the transport is paused once more than ``limit``
    bytes wait (so a reader stopped at ``max_queue`` still makes TCP push back on
    the peer) and resumed when the reader has taken them. It yields to the event
    loop at least every ``_YIELD_EVERY`` reads. End of stream, a lost connection
    and a closed stream read as ``b""``.

    While the reader waits with nothing queued, bytes that arrive don't wake it:
    the transport's callback hands them to ``step`` (the connection's
    ``_step_in_callback``), which takes the reader's turn right there, as
    websockets does. A message then reaches ``recv()`` one pass of the event loop
    sooner: the handler's task is the only one that wakes. Only when ``step`` says
    the reader must look (reading is over, or must stop for now) does the reader
    wake, and ``receive`` returns None: no new bytes, parse what is buffered.
    Anything ``step`` raises is raised by ``receive``, in the reader task.

    On a selector loop's socket transport, while the reader waits and the protocol
    offers a buffer for what comes next (``place``: a big frame's payload, see
    ``Protocol.receive_buffer``), the transport reads into it: the transport's
    protocol is then ``_AsyncioInPlace``, and ``step`` gets the count of bytes read.
    """

    __slots__ = (
        "_error",
        "_in_place",
        "_limit",
        "_look",
        "_parked",
        "_place",
        "_protocol",
        "_queued",
        "_read_sizes",
        "_step",
        "_streak",
        "_transport",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: Any,
        limit: int,
        step: Callable[[bytes | int], bool],
        place: Callable[[], memoryview | None],
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._limit = limit
        self._step = step
        self._place = place
        # The transport's protocol while it reads in place (None: it never does).
        self._in_place = (
            _AsyncioInPlace(self, protocol)
            if type(transport).__module__ == "asyncio.selector_events"
            else None
        )
        self._queued = sum(map(len, protocol.read_queue))
        self._streak = 0
        self._parked = False  # the reader waits in __call__, nothing queued
        self._look = False  # step woke it: receive returns None
        self._error: Exception | None = None
        # The transport reads max_size bytes per callback (256 KiB in CPython); after
        # a read that filled it, the next takes _STREAK_READ_FACTOR times as much,
        # as the trio reader's do in a streak. (None: a transport without it.)
        size = getattr(transport, "max_size", None)
        self._read_sizes = (size, size * _STREAK_READ_FACTOR) if type(size) is int else None
        protocol.data_received = self._data_received  # the transport calls it by name

    def _data_received(self, data: bytes) -> None:
        protocol = self._protocol
        sizes = self._read_sizes
        if sizes is not None:
            transport: Any = self._transport
            size = sizes[len(data) >= transport.max_size]
            if transport.max_size != size:
                transport.max_size = size
        if self._parked:
            self.take_turn(bytes(data))
            return
        protocol.read_queue.append(bytes(data))
        protocol.read_event.set()
        self._queued += len(data)
        if self._queued > self._limit:
            self._transport.pause_reading()

    def take_turn(self, data: bytes | int) -> None:
        """The reader's turn, in the transport's callback while the reader waits:
        ``data`` read, or (an int) that many bytes read into the protocol's buffer."""
        try:
            look = self._step(data)
        except Exception as exc:  # for the reader task to raise
            self._error = exc
            look = True
        if look:
            self._parked = False  # what comes next waits in the queue, in order
            self._look = True
            self._protocol.read_event.set()
        in_place = self._in_place
        if in_place is not None:
            # The next read goes in place if the protocol has a place for it.
            on = not look and self._place() is not None
            if on is not in_place.on:
                in_place.use(on)

    def buffer(self) -> memoryview | None:
        """For ``_AsyncioInPlace``: where the transport reads, if in place."""
        return self._place() if self._parked else None

    async def __call__(self, max_bytes: int) -> bytes | None:
        protocol = self._protocol
        queue = protocol.read_queue
        if queue and self._streak < _YIELD_EVERY:
            self._streak += 1
        else:
            self._streak = 0
            if queue:
                await asyncio.sleep(0)
            else:
                if protocol.exception is not None or protocol.is_at_eof:
                    return b""
                if self._transport.is_closing():
                    return b""
                self._transport.resume_reading()  # a no-op unless paused
                self._parked = True
                try:
                    await protocol.read_event.wait()
                finally:
                    self._parked = False
                if self._look:
                    self._look = False
                    if not queue:
                        protocol.read_event.clear()
                    if self._error is not None:
                        error, self._error = self._error, None
                        raise error
                    return None
                if not queue:
                    return b""  # the event was set by EOF or the connection's loss
        chunk: bytes = queue.popleft()
        if len(chunk) > max_bytes:
            chunk, leftover = chunk[:max_bytes], chunk[max_bytes:]
            queue.appendleft(leftover)
        self._queued -= len(chunk)
        if not queue:
            protocol.read_event.clear()
            if self._queued <= 0:
                self._transport.resume_reading()
        return chunk


class _AsyncioInPlace(asyncio.BufferedProtocol):
    """The socket transport's protocol while it reads a big frame's payload in place.

    A selector loop's socket transport reads with ``recv_into`` into the buffer its
    protocol's ``get_buffer`` gives when that protocol is a ``BufferedProtocol``
    (``set_protocol`` chooses). While the reader waits and the protocol offers a
    place, this is the transport's protocol: it hands out that place, and tells the
    reader how many bytes came. The rest (end of stream, loss of the connection,
    write flow control) goes on to anyio's protocol, which is the transport's
    protocol again as soon as there is no place to read into. Should the reader have
    stopped waiting between the choice and the read, the bytes are read into a
    buffer of their own and go the usual way.
    """

    __slots__ = ("_buffer", "_inner", "_placed", "_reader", "_transport", "on")

    def __init__(self, reader: _AsyncioStreamReader, inner: Any) -> None:
        self._reader = reader
        self._inner = inner
        self._transport: Any = reader._transport
        self._buffer: Any = None  # what get_buffer() gave
        self._placed = False  # whether it is the protocol's
        self.on = False  # whether this is the transport's protocol

    def use(self, on: bool) -> None:
        """Make this (or anyio's protocol) the transport's protocol."""
        if on is not self.on:
            self.on = on
            self._transport.set_protocol(self if on else self._inner)

    def get_buffer(self, sizehint: int) -> memoryview | bytearray:
        placed = self._reader.buffer()
        self._placed = placed is not None
        buffer = bytearray(self._transport.max_size) if placed is None else placed
        self._buffer = buffer
        return buffer

    def buffer_updated(self, nbytes: int) -> None:
        buffer, self._buffer = self._buffer, None
        assert buffer is not None
        if self._placed:
            self._reader.take_turn(nbytes)
        else:
            self.use(False)
            self._inner.data_received(bytes(buffer[:nbytes]))

    def eof_received(self) -> bool | None:
        self.use(False)
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _direct_reader(
    stream: anyio.abc.ByteStream,
    limit: int,
    step: Callable[[bytes | int], bool],
    place: Callable[[], memoryview | None],
) -> Callable[[int], Awaitable[bytes | None]]:
    """The reader's ``receive``: from the raw socket on plain trio socket streams
    (see ``_TrioSocketReader``), from the transport's queue on anyio's asyncio socket
    streams (``_AsyncioStreamReader``, whose data callback runs ``step``), else the
    stream's own (TLS, others)."""
    sock = _raw_trio_socket(stream)
    if sock is not None:
        return _TrioSocketReader(sock)
    if type(stream).__module__ == "anyio._backends._asyncio":
        transport = getattr(stream, "_transport", None)
        protocol = getattr(stream, "_protocol", None)
        if (
            isinstance(transport, asyncio.Transport)
            and hasattr(protocol, "read_queue")
            and hasattr(protocol, "read_event")
        ):
            return _AsyncioStreamReader(transport, protocol, limit, step, place)
    return stream.receive


T = TypeVar("T")


async def accept_forever(
    listener: anyio.abc.SocketListener,
    task_group: Any,
    handle: Callable[[anyio.abc.SocketStream], Awaitable[None]],
    logger: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """Accept connections until the listener closes, each handled in ``task_group``.

    A failing ``accept()`` (e.g. EMFILE, out of file descriptors) is logged and
    retried after a pause instead of spinning or stopping the server.
    """
    # The name trio would give each task, made once: not a new string per connection.
    name = f"{handle.__module__}.{handle.__qualname__}"
    if _trio_socket_listener(listener) is not None:
        await _accept_trio_sockets(listener, task_group, handle, logger, name)
        return
    while True:
        try:
            stream = await listener.accept()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        except OSError as exc:
            logger.warning("accept() failed: %s", exc)
            await anyio.sleep(0.1)
            continue
        task_group.start_soon(handle, stream, name=name)


def _trio_socket_listener(listener: anyio.abc.SocketListener) -> Any:
    """The stream class that anyio's trio listener ``listener`` makes of what it
    accepts (its ``SocketStream`` or ``UNIXSocketStream``), else None (asyncio, TLS,
    anything else)."""
    if type(listener).__module__ != "anyio._backends._trio":
        return None
    from anyio._backends import _trio as anyio_trio

    if type(listener) is anyio_trio.TCPSocketListener:
        return anyio_trio.SocketStream
    if type(listener) is anyio_trio.UNIXSocketListener:
        return anyio_trio.UNIXSocketStream
    return None


async def _accept_trio_sockets(
    listener: anyio.abc.SocketListener,
    task_group: Any,
    handle: Callable[[anyio.abc.SocketStream], Awaitable[None]],
    logger: logging.Logger | logging.LoggerAdapter[Any],
    name: str,
) -> None:
    """``accept_forever`` for anyio's trio listeners, on their raw socket.

    ``listener.accept()`` takes a scheduler round trip for every connection (trio's
    socket accepts, then yields, then tries again and finds nothing), under three
    layers of wrappers. This accepts every connection that is waiting, then waits
    for the socket once; each connection gets the same stream ``listener.accept()``
    would have made (anyio's, over a trio socket, TCP_NODELAY on TCP). It yields
    every ``_YIELD_EVERY`` connections all the same, so that a flood of them can't
    starve the connections already open.
    """
    stream_class = _trio_socket_listener(listener)
    tcp = stream_class.__name__ == "SocketStream"
    sock = listener._raw_socket
    wait_readable = trio.lowlevel.wait_readable
    from_stdlib_socket = trio.socket.from_stdlib_socket
    accepted = 0
    while True:
        try:
            client, _ = sock.accept()
        except BlockingIOError:
            accepted = 0
            try:
                await wait_readable(sock)
            except _WAIT_ERRORS:  # the listener was closed
                return
            continue
        except OSError as exc:
            if sock.fileno() < 0:  # the listener was closed
                return
            logger.warning("accept() failed: %s", exc)
            await anyio.sleep(0.1)
            continue
        if tcp:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task_group.start_soon(handle, stream_class(from_stdlib_socket(client)), name=name)
        accepted += 1
        if accepted == _YIELD_EVERY:
            accepted = 0
            await trio.lowlevel.checkpoint()


async def by_deadline(deadline: float, awaitable: Awaitable[T]) -> T:
    """``await awaitable``, or TimeoutError if it isn't done by ``deadline`` (a
    ``time.monotonic()`` value: the same on every event loop, where trio's clock and
    asyncio's differ)."""
    with current_backend().move_on_after(deadline - time.monotonic()):
        return await awaitable
    raise TimeoutError


async def read_handshake(
    stream: anyio.abc.ByteStream,
    feed: Callable[[bytes], T | None],
    *,
    sent: bool = False,
    deadline: float | None = None,
) -> T:
    """Feed what ``stream`` gives to a handshake parser until it returns its result.

    ``feed`` is a ``ClientHandshake``'s or ``ServerHandshake``'s ``receive_data``:
    it gets ``b""`` at end of file, and raises InvalidHandshake when it must.

    ``sent=True`` says the peer has most likely sent already (a server reading the
    request of a client it just accepted): on a plain trio socket, a non-blocking
    read comes first, which finds it there without trio's wait-and-retry
    machinery and its round trip through the scheduler. Anything else (nothing
    there yet, an error) goes through the stream as usual, and only then, when it
    may wait, is held to ``deadline`` (see ``by_deadline``).
    """
    sock = _raw_trio_socket(stream) if sent else None
    while True:
        data: bytes | None = None
        if sock is not None:
            try:
                data = sock.recv(65536)
            except OSError:  # nothing yet, or an error the stream will raise properly
                data = None
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
        if data is None:
            try:
                if deadline is None:
                    data = await stream.receive(65536)
                else:
                    data = await by_deadline(deadline, stream.receive(65536))
            except anyio.EndOfStream:
                data = b""
        result = feed(data)
        if result is not None:
            return result


async def send_all(
    stream: anyio.abc.ByteStream, data: bytes, *, deadline: float | None = None
) -> None:
    """``stream.send(data)``, straight to the kernel when it takes it all at once.

    On a plain trio socket a non-blocking ``send`` usually takes a handshake
    response whole, without trio's wait-and-retry machinery and its round trip
    through the scheduler; what it doesn't take, and any other stream, goes
    through ``stream.send``, held to ``deadline`` if there is one (see
    ``by_deadline``).
    """
    sock = _raw_trio_socket(stream)
    if sock is not None:
        try:
            sent = sock.send(data)
        except OSError:  # the kernel's buffer is full, or an error stream.send will raise
            sent = 0
        if sent == len(data):
            await trio.lowlevel.checkpoint_if_cancelled()
            return
        data = data[sent:]
    if deadline is None:
        await stream.send(data)
    else:
        await by_deadline(deadline, stream.send(data))


def _water_marks(limit: WaterMarks, default_low_ratio: int = 4) -> tuple[int, int]:
    """(high, low) from ``limit``, which is ``high`` or ``(high, low)`` as in websockets."""
    if limit is None:
        return (2**62, 2**62)
    if isinstance(limit, tuple):
        high, low = limit
        if low is None:
            low = high // default_low_ratio
    else:
        high, low = limit, limit // default_low_ratio
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high, got high={high}, low={low}")
    return high, low


class Connection:
    """An open WebSocket connection: the API of websockets' ``ServerConnection`` and
    ``ClientConnection``, on trio (and asyncio, through anyio).

    Typical use, from a server handler or inside ``async with trillium.connect(...)``::

        async def handler(ws):
            async for message in ws:
                await ws.send(message)

    Attributes: ``id`` (a UUID), ``request`` and ``response`` (the opening handshake),
    ``subprotocol``, ``state``, ``latency`` (seconds, from the last keepalive ping),
    ``local_address``, ``remote_address``, ``close_code`` and ``close_reason``.
    """

    # Slots, not a __dict__: a server holds thousands of these, mostly idle.
    __slots__ = (
        "_backend",
        "_closed",
        "_complete",
        "_exception",
        "_id",
        "_iterating",
        "_message_arrived",
        "_messages",
        "_out",
        "_out_size",
        "_pings",
        "_queue_drained",
        "_queue_high",
        "_queue_low",
        "_read_now",
        "_read_size",
        "_receiving",
        "_scopes",
        "_sends_since_yield",
        "_task_group",
        "_transport_closing",
        "_write_drained",
        "_write_high",
        "_write_low",
        "_write_now",
        "_writer_done",
        "_writer_started",
        "_writer_wakeup",
        "_writing",
        "_written_at_end_of_pass",
        "close_timeout",
        "initial_data",
        "latency",
        "logger",
        "ping_interval",
        "ping_timeout",
        "protocol",
        "request",
        "response",
        "stream",
        "subprotocol",
        "username",
    )

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float | None = 10,
        max_queue: WaterMarks = 16,
        write_limit: WaterMarks = 2**15,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        read_size: int = 262144,
    ) -> None:
        self._id: uuid.UUID | None = None
        self._backend = current_backend()
        self.stream = stream
        self.protocol: Protocol | None = None
        self.request: Request | None = None
        self.response: Response | None = None
        self.subprotocol: str | None = None
        #: Set by ``basic_auth`` once the client authenticated.
        self.username: str | None = None
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.logger = logger if logger is not None else globals()["logger"]
        #: Round trip of the last ping answered, in seconds (0 until one is).
        self.latency = 0.0
        self._read_size = read_size
        #: Bytes read with the handshake that belong to the first frames.
        self.initial_data = b""
        self._queue_high, self._queue_low = _water_marks(max_queue)
        self._write_high, self._write_low = _water_marks(write_limit)

        # Incoming messages (and fragments of streamed ones) waiting for recv(). While
        # none wait it is the shared _NO_MESSAGES: a deque takes 760 bytes even empty
        # (its first block has room for 64 items), and most of a server's connections
        # have nothing queued most of the time. _received makes a deque when messages
        # arrive; _pop drops it once the last is taken.
        self._messages: deque[Message] = _NO_MESSAGES
        self._complete = 0  # how many queued fragments end a message
        self._message_arrived: anyio.Event | None = None
        self._queue_drained: anyio.Event | None = None
        self._receiving = False
        self._iterating = False  # set by __anext__ for the recv() it returns
        # Outgoing bytes waiting for the writer.
        self._out: list[bytes | memoryview] = []
        self._out_size = 0
        self._writing = False
        self._written_at_end_of_pass = False  # wrote in this pass: in _EndOfPass.pending
        self._write_now: Callable[[bytes | memoryview], int] | None = None  # set by _running
        self._read_now: Callable[[int], Awaitable[bytes | None]] | None = None  # set by _running
        self._sends_since_yield = 0
        self._writer_wakeup: anyio.Event | None = None
        self._writer_started = False
        self._write_drained: anyio.Event | None = None
        # Pings awaiting their pong: payload -> (time sent, event set on pong).
        self._pings: dict[bytes, tuple[float, anyio.Event]] | None = None
        # The connection's task group, and the shielded scopes of its tasks (None
        # when the task group shields them all: see _running).
        self._task_group: Any = None  # a trio nursery or an anyio task group
        self._scopes: list[anyio.CancelScope] | None = None
        # Set once the TCP connection is closed and everything is torn down.
        self._closed = self._backend.Event()
        self._transport_closing = False
        self._writer_done = False
        self._exception: BaseException | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def id(self) -> uuid.UUID:
        """A unique identifier for the connection, e.g. for logs (made on first use)."""
        if self._id is None:
            self._id = uuid.uuid4()
        return self._id

    @property
    def local_address(self) -> Any:
        """The local address of the socket (host, port) or path."""
        return self.stream.extra(anyio.abc.SocketAttribute.local_address, None)

    @property
    def remote_address(self) -> Any:
        """The peer's address (host, port) or path."""
        return self.stream.extra(anyio.abc.SocketAttribute.remote_address, None)

    @property
    def state(self) -> State:
        """CONNECTING during the handshake, then OPEN, CLOSING and CLOSED."""
        if self.protocol is None:
            return State.CONNECTING
        if self._closed.is_set():
            return State.CLOSED
        return self.protocol.state

    @property
    def close_code(self) -> int | None:
        """The close code of a closed connection (1006 without a close frame), else None."""
        if self.protocol is None or not self._closed.is_set():
            return None
        rcvd = self.protocol.close_rcvd
        return rcvd.code if rcvd is not None else CloseCode.ABNORMAL_CLOSURE

    @property
    def close_reason(self) -> str | None:
        """The close reason of a closed connection, else None."""
        if self.protocol is None or not self._closed.is_set():
            return None
        rcvd = self.protocol.close_rcvd
        return rcvd.reason if rcvd is not None else ""

    # ------------------------------------------------------------------ running

    def _running(self, protocol: Protocol, *, shield: bool = False) -> _Running:
        """Run the reader, writer and keepalive tasks for the body of the block::

            async with connection._running(protocol):
                ...  # the handler, or the body of ``async with connect(...)``

        On the way out the connection is closed (1000, or whatever close was
        already under way), waiting at most ``close_timeout``; nothing outlives the
        block. The background tasks are shielded from cancellation coming from
        outside, so that when the body is cancelled the close frame still goes out
        and the peer sees a proper closure rather than a dropped connection; they
        are cancelled explicitly once the close is done. The writer task is only
        started the first time the kernel doesn't take a write at once (on trio,
        most connections never need it), which keeps idle connections small.

        ``shield=True`` shields the whole block, body included, from outside
        cancellation, through the task group's own cancel scope: that is what a
        server wants for its handlers (``WebSocketServer.close()`` lets them finish,
        then cancels them through that scope). The tasks then need no scopes of
        their own, about 600 bytes each per connection.

        An exception from the body propagates as itself, not wrapped in an
        exception group by the task group, so ``except ConnectionClosed`` around an
        ``async with connect(...)`` block works.
        """
        return _Running(self, protocol, shield)

    def _shielded(self) -> AbstractContextManager[Any]:
        """A scope for a background task: immune to outside cancellation, cancelled
        by ``_running`` once the connection is closed. (Nothing when the whole block
        is shielded: see ``_running``.)"""
        if self._scopes is None:
            return _UNSCOPED
        scope: anyio.CancelScope = self._backend.CancelScope(shield=True)
        self._scopes.append(scope)
        if self._task_group is None:  # the connection is done: don't outlive it
            scope.cancel()
        return scope

    async def _reader(self) -> None:
        """The reader task: read, parse, queue messages for ``recv()``, answer pings
        and close frames; close the stream on the way out, whatever the reason.

        (The shielding scope is opened here rather than in a wrapper around the
        loop: an idle connection holds this frame for its whole life, and one frame
        fewer is about 220 bytes.)
        """
        protocol = self.protocol
        assert protocol is not None
        stream = self.stream
        receive = self._read_now
        assert receive is not None
        # On a plain trio socket, the reader takes receive()'s steps itself (see
        # _TrioSocketReader): one frame fewer while it waits.
        direct = receive if type(receive) is _TrioSocketReader else None
        with self._shielded():
            try:
                while True:
                    if protocol.state is _OPEN and self._queue_full():
                        # Stop reading: the kernel buffer fills and TCP pushes back on the peer.
                        # Not once we sent a close frame: the peer's close must get through,
                        # even if nobody reads messages any more. (Checked again once the
                        # event is published: another thread may drain the queue.)
                        self._queue_drained = self._backend.Event()
                        if self._queue_full():
                            await self._queue_drained.wait()
                        continue
                    data: bytes | int | None
                    if protocol.paused:
                        data = None  # complete frames may be buffered: parse them first
                    elif self.initial_data:
                        data, self.initial_data = self.initial_data, b""
                    elif direct is not None:
                        # A big frame's payload (or the header after one) is read in
                        # place; likely there already, so it is read before waiting.
                        buffer = protocol.receive_buffer()
                        if buffer is None:
                            data = direct.read_now(self._read_size)
                        else:
                            data = direct.read_into(buffer)
                        while data is None:
                            try:
                                await direct.wait()
                            except _WAIT_ERRORS:
                                data = b""
                            else:
                                if buffer is None:
                                    data = direct.read_ready(self._read_size)
                                else:
                                    data = direct.read_into(buffer)
                    else:
                        try:
                            data = await receive(self._read_size)
                        except _STREAM_ERRORS:
                            data = b""
                        if (
                            data is None
                            and protocol.failure is None
                            and protocol.state is not _CLOSED
                        ):
                            # The data callback took the turn and stopped for now
                            # (see _AsyncioStreamReader): the queue is full, or
                            # parsing paused. The top of the loop sees to both.
                            continue
                    if self._step(data):
                        if (
                            protocol.role is CLIENT
                            and protocol.state is _CLOSED
                            and protocol.failure is None
                            and data != b""
                        ):
                            # Closing handshake done: the server closes TCP first (RFC
                            # 6455 §7.1.1); the client waits for that, at most
                            # close_timeout.
                            with self._backend.move_on_after(self._close_wait()):
                                while True:
                                    try:
                                        if not await stream.receive(self._read_size):
                                            break
                                    except _STREAM_ERRORS:
                                        break
                        break
            finally:
                if direct is not None and self._out_size and not self._writing:
                    # Nothing more will join what is queued (usually our close frame):
                    # it goes to the kernel now, not at the end of the scheduler's
                    # pass, which closing would otherwise have to wait for.
                    assert self._write_now is not None
                    self._write_out(self._write_now)
                if direct is not None and not self._out_size:
                    # A plain socket with nothing left to send closes at once, without
                    # a checkpoint (see _close_trio_socket_stream): nothing to shield
                    # (and a scope costs as much as a tenth of a short connection's
                    # handshake).
                    await self._close_transport()
                else:
                    with self._backend.CancelScope(shield=True):
                        await self._close_transport()

    def _step(self, data: bytes | int | None) -> bool:
        """The reader's turn once it has read ``data`` (None: no new bytes, parse what
        is buffered; ``b""``: end of stream; an int: that many bytes were read into
        ``protocol.receive_buffer()``). Parse it, queue the messages for
        ``recv()``, send the replies the protocol owes (pongs, the close echo, the
        close that fails the connection). True when reading is over: the connection
        failed, or it is closed (the peer's close frame, or end of stream).

        Synchronous, so that on asyncio the transport's data callback can take the
        turn itself while the reader waits (see ``_AsyncioStreamReader``).
        """
        protocol = self.protocol
        assert protocol is not None
        # Parse no more events than the queue has room for: one read may hold
        # thousands of tiny messages, and max_queue bounds what waits for recv(), not
        # just when we stop reading. The rest stays buffered in the protocol (paused)
        # until recv() makes room. Once closing, parse everything: the peer's close
        # frame must get through.
        room = max(1, self._queue_high - self._queued()) if protocol.state is _OPEN else None
        try:
            if data is None:
                events = protocol.receive_buffered(max_events=room)
            elif isinstance(data, int):
                events = protocol.received_into(data, max_events=room)
            else:
                events = protocol.receive_data(data, max_events=room)
        except ProtocolError as exc:
            events = exc.events  # type: ignore[assignment]
            self.logger.info("failing connection %s: %s", self.id, exc)
        if events:
            self._received(events)
        reply = protocol.data_to_send()
        if reply:
            self._write(reply)
        return protocol.failure is not None or protocol.state is _CLOSED

    def _step_in_callback(self, data: bytes | int) -> bool:
        """``_step`` for asyncio's data callback, while the reader waits with nothing
        buffered. True when the reader must wake and look: reading is over, or must
        stop for now (the queue is full, or parsing paused at ``max_queue``)."""
        protocol = self.protocol
        assert protocol is not None
        return self._step(data) or protocol.paused or self._queue_full()

    def _receive_buffer(self) -> memoryview | None:
        """Where the protocol wants the next bytes read (``Protocol.receive_buffer``)."""
        protocol = self.protocol
        return None if protocol is None else protocol.receive_buffer()

    def _received(self, events: list[Event]) -> None:
        """Queue the messages parsed from one read for ``recv()``, all in one pass;
        a pong answers its ping (the protocol already queued pongs for pings)."""
        messages = self._messages
        protocol = self.protocol
        assert protocol is not None
        for event in events:
            if type(event) is Message:
                if len(messages) >= self._queue_high and protocol.state is not State.OPEN:
                    continue  # closing, and nobody is reading: don't grow without bound
                if messages is _NO_MESSAGES:
                    messages = self._messages = deque()
                messages.append(event)
                if event.final:
                    self._complete += 1
            elif type(event) is Pong:
                self._pong_received(event.payload)
        if self._message_arrived is not None and messages:
            # (Only with something to take: a read with just a ping or the peer's
            # close frame would wake recv() to wait again.)
            self._message_arrived.set()

    def _queued(self) -> int:
        """How many messages (or fragments) wait for ``recv()``."""
        return len(self._messages)

    def _queue_full(self) -> bool:
        """Whether the reader must stop: ``max_queue`` wait, one of them complete (a
        message bigger than the queue must still get through)."""
        return len(self._messages) >= self._queue_high and self._complete > 0

    def _make_receive(self) -> Callable[[int], Awaitable[bytes | None]]:
        """The reader task's ``receive(max_bytes)`` (see ``_direct_reader``)."""
        return _direct_reader(
            self.stream, self._read_size, self._step_in_callback, self._receive_buffer
        )

    def _close_wait(self) -> float:
        return self.close_timeout if self.close_timeout is not None else float("inf")

    def _start_writer(self) -> None:
        """Wake the writer, starting it the first time it is needed."""
        if not self._writer_started:
            if self._task_group is None:
                return  # not running yet (or any more): nothing to write with
            self._writer_started = True
            self._writer_wakeup = self._backend.Event()
            self._task_group.start_soon(self._writer, name="trillium writer")
        elif self._writer_wakeup is not None:
            self._writer_wakeup.set()

    async def _writer(self) -> None:
        """The writer task: send whatever piled up in one write; once closing, flush
        and close the stream."""
        stream = self.stream
        with self._shielded():
            try:
                while True:
                    if not self._out:
                        if self._transport_closing:
                            break
                        assert self._writer_wakeup is not None
                        await self._writer_wakeup.wait()
                        self._writer_wakeup = self._backend.Event()
                        continue
                    data = self._take_out()
                    try:
                        if type(data) is list:
                            size = sum(map(len, data))
                            await self._send_gathered(data)
                        else:
                            size = len(data)
                            # anyio's streams take any buffer, though typed for bytes.
                            await stream.send(data)  # type: ignore[arg-type]
                    except _STREAM_ERRORS as exc:
                        self._writing = False
                        if not self._transport_closing:
                            self.logger.debug("connection %s lost while writing: %r", self.id, exc)
                            self._exception = exc
                        break
                    except BaseException:
                        self._writing = False
                        raise
                    self._sent(size)
                    if self._out_size <= self._write_low:
                        self._wake_senders()
            finally:
                self._writer_done = True
                self._out.clear()
                self._out_size = 0
                self._wake_senders()
                with self._backend.CancelScope(shield=True):
                    await self._abort()

    def _take_out(self) -> bytes | memoryview | list[bytes | memoryview]:
        """For the writer: everything queued, as one write (``_writing`` from now on);
        a list for ``_send_gathered`` when it can take it (see ``_gathers``)."""
        out = self._out
        data: bytes | memoryview | list[bytes | memoryview]
        if len(out) == 1:
            data = out[0]
        elif self._gathers():
            data = out.copy()
        else:
            data = b"".join(out)
        out.clear()
        self._writing = True
        return data

    def _gathers(self) -> bool:
        """Whether what is queued (several buffers) goes out in one vectored write,
        rather than joined first (see ``_GATHER_ABOVE``)."""
        return self._out_size >= _GATHER_ABOVE and type(self._write_now) in _GATHERING_WRITERS

    async def _send_gathered(self, buffers: list[bytes | memoryview]) -> None:
        """For the writer, ``buffers`` without joining them: on a plain trio socket to
        the kernel with vectored writes, waiting for room whenever it takes only
        part; on asyncio's transport one after the other (it keeps what it can't
        send at once)."""
        write_now = self._write_now
        if type(write_now) is not _TrioSocketWriter:
            for buffer in buffers:
                await self.stream.send(buffer)  # type: ignore[arg-type]
            return
        sock = write_now._sock
        while True:
            try:
                sent = sock.sendmsg(buffers[:_MAX_GATHER])
            except BlockingIOError:
                sent = 0
            _drop_sent(buffers, sent)
            if not buffers:
                return
            try:
                await trio.lowlevel.wait_writable(sock)
            except _WAIT_ERRORS as exc:  # closed meanwhile
                raise anyio.ClosedResourceError from exc

    def _sent(self, size: int) -> None:
        """For the writer: ``size`` bytes of what it took are on the wire."""
        self._writing = False
        self._out_size -= size

    def _write(self, data: bytes | list[bytes]) -> None:
        """Hand complete frames to the writer (no checkpoint: frames are never split).

        On a plain trio socket, see ``_push_soon``; elsewhere, ``_push``.
        """
        if isinstance(data, bytes):  # the usual case, without a call (see _enqueue)
            self._out.append(data)
            self._out_size += len(data)
        else:
            self._enqueue(data)
        self._push_soon()

    def _enqueue(self, data: bytes | list[bytes]) -> None:
        """Queue frames: bytes, or the buffers of one frame (``_encode``)."""
        if isinstance(data, bytes):
            self._out.append(data)
            self._out_size += len(data)
        else:
            self._out += data
            self._out_size += sum(map(len, data))

    def _push_soon(self) -> None:
        """Send what is queued now, or at the end of this pass of trio's scheduler.

        On a plain trio socket the first frame of a pass goes to the kernel at once
        when no received message waits to be handled (a reply to a request, a lone
        send: no other frame is likely to follow it in this pass, and waiting would
        only add latency). Every other frame of the pass waits for its end (see
        ``_EndOfPass``), so that a burst costs one ``send``: a handler answering a
        batch of messages, a task sending several in a row. Elsewhere, see ``_push``.
        """
        write_now = self._write_now
        if (
            type(write_now) is not _TrioSocketWriter
            or self._writing
            or self._out_size > self._write_high
        ):
            self._push()
            return
        if self._written_at_end_of_pass:
            return  # it leaves with the rest of the pass
        self._written_at_end_of_pass = True
        write_now.end_of_pass.pending.append(self)
        if not self._messages and self._write_out(write_now) and self._write_drained is not None:
            self._wake_senders()  # a close may be waiting for what just went out

    def _push(self) -> None:
        """Send what is queued: straight to the kernel if it can go now, else through
        the writer.

        On plain sockets (see ``_direct_writer``), when the writer is idle and either
        no received message is waiting to be handled (so no reply is likely to follow
        at once) or more than ``write_limit`` is queued, everything queued goes
        straight to the socket with a non-blocking send: a request and response
        exchange then costs no task switch, a burst of small replies to a burst of
        messages still leaves in one write, and big messages reach the kernel
        without waiting for the writer. What the kernel doesn't take waits for the
        writer.
        """
        write_now = self._write_now
        if (
            write_now is not None
            and not self._writing
            and (not self._messages or self._out_size > self._write_high)
            and self._write_out(write_now)
        ):
            if self._write_drained is not None:
                self._wake_senders()  # a close may be waiting for what just went out
            return
        self._start_writer()

    def _write_out(self, write_now: Callable[[bytes | memoryview], int]) -> bool:
        """Everything queued, to the kernel in one non-blocking write; True if it
        took it all (else the rest stays queued, for the writer)."""
        out = self._out
        if not out:
            return True
        if len(out) == 1:
            pending = out[0]
            sent = write_now(pending)
            if sent == len(pending):  # the usual case: all of it, at once
                self._out_size -= sent
                out.clear()
                return True
        elif self._gathers():
            sent = write_now.gather(out)  # type: ignore[attr-defined]
        else:
            joined = b"".join(out)
            out.clear()
            out.append(joined)
            sent = write_now(joined)
        if sent:
            self._out_size -= sent
            _drop_sent(out, sent)
        return not out

    def _write_at_end_of_pass(self) -> bool:
        """For ``_EndOfPass``: write what was queued during the pass. False when the
        writer must take the rest or a task waits for the buffer to drain: waking
        them is ``_after_end_of_pass``'s job."""
        self._written_at_end_of_pass = False
        write_now = self._write_now
        if self._writing or write_now is None:
            return True  # the writer task has it in hand
        return self._write_out(write_now) and self._write_drained is None

    def _after_end_of_pass(self) -> None:
        """Wake what ``_write_at_end_of_pass`` could not: the writer, for what the
        kernel didn't take, or the tasks waiting for the buffer to drain."""
        if self._out:
            self._start_writer()
        else:
            self._wake_senders()

    def _wake_senders(self) -> None:
        if self._write_drained is not None:
            self._write_drained.set()
            self._write_drained = None

    async def _flush(self) -> None:
        """Wait until the writer has sent everything queued so far."""
        while self._out_size > 0 and not self._writer_done:
            if self._write_drained is None:
                self._write_drained = self._backend.Event()
            await self._write_drained.wait()

    async def _keepalive(self) -> None:
        """The keepalive task: every ``ping_interval``, a ping that must be answered
        within ``ping_timeout``, else the connection fails (1011).

        Between pings it waits for the connection to close, with ping_interval as
        the timeout, rather than sleeping: the same pause in fewer nested frames
        (an idle connection holds them for its whole life), and it ends as soon as
        the connection does.
        """
        assert self.ping_interval is not None
        backend = self._backend
        with self._shielded():
            while True:
                with backend.move_on_after(self.ping_interval):
                    await self._closed.wait()
                if self.state is not State.OPEN:
                    return
                try:
                    with backend.move_on_after(self.ping_timeout or float("inf")) as waiting:
                        await self.ping()
                except ConnectionClosed:
                    return
                if waiting.cancelled_caught:
                    self.logger.info("connection %s: no pong within ping_timeout", self.id)
                    self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    return

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection: send a close frame if we still can, then drop TCP.

        The writer flushes the close frame and closes the stream; the reader then
        sees the stream end and tears the rest down.
        """
        assert self.protocol is not None
        if self.protocol.state is State.OPEN:
            self._write(self.protocol.send_close(code, reason))
        self._transport_closing = True
        self._resume_reading()
        # A send() waiting for room would wait for a peer that may never read again:
        # wake it, to raise ConnectionClosed (_wait_for_room sees _transport_closing).
        self._wake_senders()
        self._start_writer()
        # The writer may be stuck in a send to a peer that stopped reading (one that
        # vanished without a FIN, the very case keepalive detects), and the reader in a
        # receive from it: nothing else would ever close the stream, and the
        # connection and its handler would hang. Give the close frame close_timeout
        # to go out, then drop TCP, as close() does.
        if self._task_group is not None and not self._closed.is_set():
            self._task_group.start_soon(self._abort_after_close_timeout, name="trillium abort")

    async def _abort_after_close_timeout(self) -> None:
        with self._shielded():
            with self._backend.move_on_after(self._close_wait()):
                await self._closed.wait()
                return
            self.logger.debug("connection %s: close frame not sent in time; dropping TCP", self.id)
            await self._abort()

    async def _close_transport(self) -> None:
        """Flush what is queued (at most close_timeout), close the stream, wake everyone."""
        if not self._closed.is_set():
            try:
                if self._out_size:
                    with self._backend.move_on_after(self._close_wait()):
                        await self._flush()
                await self._abort()
            finally:  # even if cancelled at the stream's last checkpoint
                self._closed.set()
                if self._message_arrived is not None:
                    self._message_arrived.set()
                self._wake_senders()
                for _, event in (self._pings or {}).values():
                    event.set()

    async def _abort(self) -> None:
        self._transport_closing = True
        self._resume_reading()  # the reader then meets the closed stream and tears down
        if self._writer_wakeup is not None:
            self._writer_wakeup.set()
        if not _close_trio_socket_stream(self.stream):
            with suppress(*_STREAM_ERRORS):
                await self.stream.aclose()

    # ------------------------------------------------------------------ receiving

    async def recv(self, decode: bool | None = None) -> Data:
        """Receive the next message: ``str`` for text, ``bytes`` for binary.

        Raises ConnectionClosedOK after a normal closure, ConnectionClosedError
        otherwise, and ConcurrencyError if another task is already receiving.
        ``decode=False`` returns text as UTF-8 bytes, ``decode=True`` binary as text.
        """
        iterating, self._iterating = self._iterating, False  # see __anext__
        if self._receiving:
            raise ConcurrencyError("another task is already receiving a message")
        if self._complete:
            await self._backend.checkpoint_if_cancelled()
        else:
            # Wait for a whole message before taking any of it, so that cancelling
            # recv() never loses a fragment.
            self._receiving = True
            try:
                while not self._complete:
                    if self._closed.is_set():
                        if iterating and self._closed_normally():
                            raise StopAsyncIteration
                        raise self._closed_exception()
                    self._message_arrived = self._backend.Event()
                    await self._message_arrived.wait()
            finally:
                self._receiving = False
                self._message_arrived = None
        if decode is None:
            return self._pop_message()
        return _decode(self._pop_message(), decode)

    def _pop_message(self) -> Data:
        """Take the oldest complete message off the queue, its fragments joined."""
        message = self._pop()
        if message.final:
            return message.data
        parts = [message.data]
        while not message.final:
            message = self._pop()
            parts.append(message.data)
        if isinstance(parts[0], str):
            return "".join(parts)
        return b"".join(parts)

    async def recv_streaming(self, decode: bool | None = None) -> AsyncIterator[Data]:
        """Receive the next message fragment by fragment, as the frames arrive.

        ::

            async for fragment in ws.recv_streaming():
                ...
        """
        async for fragment in self._fragments():
            yield _decode(fragment, decode)

    async def _fragments(self) -> AsyncIterator[Data]:
        if self._receiving:
            raise ConcurrencyError("another task is already receiving a message")
        self._receiving = True
        try:
            while True:
                message = await self._next_fragment()
                yield message.data
                if message.final:
                    return
        finally:
            self._receiving = False

    async def _next_fragment(self) -> Message:
        if self._messages:
            await self._backend.checkpoint_if_cancelled()
        else:
            while not self._messages:  # (a new deque once messages arrive)
                if self._closed.is_set():
                    raise self._closed_exception()
                self._message_arrived = self._backend.Event()
                await self._message_arrived.wait()
                self._message_arrived = None
        return self._pop()

    def _pop(self) -> Message:
        """Take the oldest queued message; let the reader resume below the low mark."""
        messages = self._messages
        message = messages.popleft()
        if message.final:
            self._complete -= 1
        if not messages:
            self._messages = _NO_MESSAGES
        if len(messages) <= self._queue_low:
            self._resume_reading()
        return message

    def _resume_reading(self) -> None:
        if self._queue_drained is not None:
            self._queue_drained.set()
            self._queue_drained = None

    def __aiter__(self) -> Connection:
        """``async for message in connection``: messages until the connection closes;
        normal closure ends the loop, any other raises ConnectionClosedError.

        A handler spends its idle life inside this loop, so it is made of as few
        objects as can be: the connection is its own iterator (an async generator,
        its ``asend`` object and trio's registration of it would be about 350 bytes
        per connection), and ``__anext__`` is ``recv()`` itself (see there).
        """
        return self

    def __anext__(self) -> Awaitable[Data]:
        # recv(), except that a normal closure ends the loop (StopAsyncIteration)
        # rather than raising ConnectionClosedOK. It tells recv() so through a flag
        # that recv() reads and clears first thing, rather than wrapping it in a
        # coroutine of its own: that frame would be another 200 bytes per idle
        # connection.
        self._iterating = True
        return self.recv()

    # ------------------------------------------------------------------ sending

    async def send(
        self,
        message: Data | Iterable[Data] | AsyncIterable[Data],
        text: bool | None = None,
    ) -> None:
        """Send a message: ``str`` as text, bytes-like as binary.

        An iterable or async iterable of str or bytes is sent as one fragmented
        message (all fragments must be the same type). ``text=True`` sends bytes as a
        text frame (they must be UTF-8), ``text=False`` sends str as binary. Waits
        while more than ``write_limit`` bytes are buffered. Raises ConnectionClosed
        once the connection is closing or closed.
        """
        if isinstance(message, (str, bytes, bytearray, memoryview)):
            await self._wait_for_room()
            self._write(self._encode(message, text, True))
            return
        if isinstance(message, AsyncIterable):
            iterator = aiter(message)
            try:
                first = await anext(iterator)
            except StopAsyncIteration:
                return
            await self._send_fragments(first, iterator, text)
            return
        if isinstance(message, Iterable):
            sync_iter = iter(message)
            try:
                first = next(sync_iter)
            except StopIteration:
                return

            async def as_async() -> AsyncIterator[Data]:
                for item in sync_iter:
                    yield item

            await self._send_fragments(first, as_async(), text)
            return
        raise TypeError(f"cannot send {type(message).__name__}: need str, bytes or an iterable")

    async def _send_fragments(
        self, first: Data, rest: AsyncIterator[Data], text: bool | None
    ) -> None:
        kind = str if isinstance(first, str) else bytes
        await self._wait_for_room()
        self._write(self._encode(first, text, False))
        try:
            async for fragment in rest:
                if not isinstance(
                    fragment, kind if kind is str else (bytes, bytearray, memoryview)
                ):
                    raise TypeError("all fragments of a message must be str, or all bytes")
                await self._wait_for_room()
                self._write(self._encode(fragment, text, False))
        except BaseException:
            # Never leave a fragmented message open: it would block every later send.
            # Fail the connection as websockets does (1011): the peer can't tell.
            if self.protocol is not None and self.protocol.state is State.OPEN:
                self._fail(CloseCode.INTERNAL_ERROR, "error while sending a fragmented message")
            raise
        self._write(self._encode("" if kind is str else b"", text, True))

    def _encode(
        self, data: Data | bytearray | memoryview, text: bool | None, fin: bool
    ) -> bytes | list[bytes]:
        """The frame for one message or fragment: bytes, or for a big binary one its
        buffers (header and payload, see ``_GATHER_ABOVE``)."""
        protocol = self.protocol
        if protocol is None or protocol.state is not _OPEN or self._transport_closing:
            raise self._closed_exception()
        if isinstance(data, str):
            if text is False:
                return protocol.send_binary(data.encode("utf-8"), fin)
            return protocol.send_text(data, fin)
        if text:
            return protocol.send_text(bytes(data).decode("utf-8"), fin)
        if len(data) >= _GATHER_ABOVE:
            return protocol.send_binary_passthrough(data, fin)
        return protocol.send_binary(data, fin)

    def _wait_for_room(self) -> Awaitable[None]:
        """What ``send()`` awaits first: until no more than write_limit bytes are queued.

        Sends that don't have to wait still yield to the scheduler every
        ``_YIELD_EVERY`` calls, so a loop of sends can't starve other tasks, without
        paying a scheduler round trip on every message; the others only check for
        cancellation. (A plain method returning what to await: the usual case then
        costs no coroutine of its own.)
        """
        if self._out_size <= self._write_high:
            self._sends_since_yield += 1
            if self._sends_since_yield >= _YIELD_EVERY:
                self._sends_since_yield = 0
                return self._backend.checkpoint()
            return self._backend.checkpoint_if_cancelled()
        return self._wait_for_drain()

    async def _wait_for_drain(self) -> None:
        self._sends_since_yield = 0
        while self._out_size > self._write_high:
            if self._closed.is_set() or self._transport_closing:
                raise self._closed_exception()
            if self._write_drained is None:
                self._write_drained = self._backend.Event()
            await self._write_drained.wait()

    async def ping(self, data: Data | None = None) -> float:
        """Send a ping and wait for its pong; return the round trip in seconds.

        ``data`` (at most 125 bytes) defaults to four random bytes. Raises
        ConnectionClosed if the connection closes first.
        """
        if self._pings is None:
            self._pings = {}
        if data is None:
            payload = os.urandom(4)
            while payload in self._pings:
                payload = os.urandom(4)
        else:
            payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            if payload in self._pings:
                raise ConcurrencyError("already waiting for a pong with the same data")
        protocol = self.protocol
        if protocol is None or protocol.state is not State.OPEN:
            raise self._closed_exception()
        pong = self._backend.Event()
        sent_at = time.monotonic()
        self._pings[payload] = (sent_at, pong)
        self._write(protocol.send_ping(payload))
        try:
            await pong.wait()
            if payload in self._pings:  # a pong pops its ping: still here, closed first
                raise self._closed_exception()
        finally:
            self._pings.pop(payload, None)
        return time.monotonic() - sent_at

    def _pong_received(self, payload: bytes) -> None:
        """A pong answers its ping and every ping sent before it (RFC 6455 §5.5.3)."""
        if self._pings is None or payload not in self._pings:
            return  # unsolicited pong: a heartbeat, nothing to do
        now = time.monotonic()
        for key in list(self._pings):
            sent_at, event = self._pings.pop(key)
            event.set()
            if key == payload:
                self.latency = now - sent_at
                break

    async def pong(self, data: Data = b"") -> None:
        """Send an unsolicited pong (a one-way heartbeat)."""
        protocol = self.protocol
        if protocol is None or protocol.state is not State.OPEN:
            raise self._closed_exception()
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._write(protocol.send_pong(payload))
        await self._backend.checkpoint()

    # ------------------------------------------------------------------ closing

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Perform the closing handshake and wait for the TCP connection to close.

        Waits at most ``close_timeout`` for the peer's close frame and for the TCP
        connection to end, then drops it. Calling it again, or on a closed
        connection, does nothing.
        """
        protocol = self.protocol
        if protocol is None:
            await self._abort()
            self._closed.set()
            return
        if protocol.state is State.OPEN and not self._transport_closing:
            self._write(protocol.send_close(code, reason))
            self._resume_reading()  # the peer's close must get through a full queue
        if not self._closed.is_set():
            with self._backend.move_on_after(self._close_wait()):
                await self._closed.wait()
        if not self._closed.is_set():
            self.logger.debug("connection %s: close timed out; dropping TCP", self.id)
            await self._abort()
            with self._backend.move_on_after(1):
                await self._closed.wait()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed (for whatever reason)."""
        await self._closed.wait()

    def _closed_normally(self) -> bool:
        """Whether ``_closed_exception()`` is a ConnectionClosedOK, without making it.

        It decides as ``Protocol.close_exception`` does (close frames both ways, each
        1000, 1001 or without a code): ``async for`` asks at the end of every
        connection, and the exception, its message formatted, would be thrown away.
        tests/test_connection.py checks that the two agree.
        """
        protocol = self.protocol
        if protocol is None:
            return False
        rcvd, sent = protocol.close_rcvd, protocol.close_sent
        return (
            rcvd is not None
            and sent is not None
            and rcvd.code in _NORMAL_CLOSE_CODES
            and sent.code in _NORMAL_CLOSE_CODES
        )

    def _closed_exception(self) -> ConnectionClosed:
        protocol = self.protocol
        if protocol is None:
            return ConnectionClosedError(None, None)
        exc = protocol.close_exception()
        if protocol.failure is not None:
            exc.__cause__ = protocol.failure
        elif self._exception is not None:
            exc.__cause__ = self._exception
        return exc


class _Running:
    """What ``Connection._running`` returns: its block, as ``__aenter__`` and ``__aexit__``.

    (A class rather than an ``@asynccontextmanager`` generator: a server keeps one
    for each connection's whole life, and a generator, its context manager object
    and trio's registration of the async generator come to about 560 bytes.)
    """

    __slots__ = ("_connection", "_protocol", "_shield", "_task_group_cm")

    def __init__(self, connection: Connection, protocol: Protocol, shield: bool) -> None:
        self._connection = connection
        self._protocol = protocol
        self._shield = shield
        self._task_group_cm: Any = None

    async def __aenter__(self) -> Connection:
        connection = self._connection
        connection.protocol = self._protocol
        # After any TLS wrapping: plain sockets are written to and read from directly.
        connection._write_now = _direct_writer(connection.stream, connection._write_high)
        connection._read_now = connection._make_receive()
        self._task_group_cm = connection._backend.open_task_group()
        task_group = await self._task_group_cm.__aenter__()
        connection._task_group = task_group
        if self._shield:
            task_group.cancel_scope.shield = True
        else:
            connection._scopes = []
        task_group.start_soon(connection._reader, name="trillium reader")
        if type(connection._read_now) is _AsyncioStreamReader:
            # Its data callback may queue replies that need the writer (see
            # _AsyncioStreamReader), and only a task can start a task on asyncio.
            connection._start_writer()
        if connection.ping_interval is not None:
            task_group.start_soon(connection._keepalive, name="trillium keepalive")
        return connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        connection = self._connection
        task_group = connection._task_group
        error = exc  # what the task group is told of: the body's exception, or close()'s
        try:
            if connection._closed.is_set():
                await connection.close()  # returns at once, without a checkpoint to shield
            else:
                with connection._backend.CancelScope(shield=True):
                    await connection.close()
        except BaseException as close_error:
            error = close_error
        connection._task_group = None  # from now on, tasks start cancelled
        if connection._scopes is None:
            # The tasks, as the body is done; on trio, only if some are left (usually
            # none once the peer has closed): cancelling a scope costs as much as a
            # thirtieth of a short connection's handshake.
            if getattr(task_group, "child_tasks", True):
                task_group.cancel_scope.cancel()
        else:
            for scope in connection._scopes:
                scope.cancel()
        try:
            if error is None:
                suppressed = await self._task_group_cm.__aexit__(None, None, None)
            else:
                suppressed = await self._task_group_cm.__aexit__(
                    type(error), error, error.__traceback__
                )
        except BaseExceptionGroup as group:
            if exc is not None and _only_contains(group, exc):
                raise exc from None
            raise
        if error is not exc and not suppressed:
            assert error is not None
            raise error
        return bool(suppressed)


def _only_contains(group: BaseExceptionGroup[BaseException], exc: BaseException) -> bool:
    """Whether an exception group holds ``exc`` and nothing else (at any depth)."""
    for inner in group.exceptions:
        if isinstance(inner, BaseExceptionGroup):
            if not _only_contains(inner, exc):
                return False
        elif inner is not exc:
            return False
    return True


def _decode(data: Data, decode: bool | None) -> Data:
    if decode is None:
        return data
    if decode and isinstance(data, bytes):
        return data.decode("utf-8")
    if not decode and isinstance(data, str):
        return data.encode("utf-8")
    return data
