"""The blocking face: simple-websocket's ``Server`` and ``Client``, for scripts, WSGI
views (Flask, Werkzeug, Gunicorn, Eventlet, gevent) and Jupyter.

>>> import subprocess, sys, trillium
>>> echo = subprocess.Popen([sys.executable, "-m", "trillium", "echo", "--port", "0"],
...                         stdout=subprocess.PIPE, text=True)
>>> url = echo.stdout.readline().split()[-1]
>>> ws = trillium.Client.connect(url)
>>> ws.send("Hello")
>>> ws.receive()
'Hello'
>>> ws.send(b"\\x00\\x01")
>>> ws.receive()
b'\\x00\\x01'
>>> ws.receive(timeout=0.1) is None  # nothing came within the timeout
True
>>> ws.close()
>>> echo.terminate(); echo.wait()  # SIGTERM: every client gets 1001, then exit 0
0

In a WSGI view, ``Server.accept(environ)`` takes the connection over from the web
server (Werkzeug, Gunicorn, Eventlet and gevent are supported; Flask-Sock works
with ``sys.modules["simple_websocket"] = trillium``)::

    @app.route("/ws", websocket=True)
    def echo():
        ws = trillium.Server.accept(request.environ)
        try:
            while True:
                ws.send(ws.receive())
        except trillium.ConnectionClosed:
            pass
        return ""

How it runs: one trio thread per process, started on first use and stopped at
interpreter exit (open connections are closed with 1001 then), runs every connection
on the same connection manager as the trio face. The per-message path stays in your
thread: while you keep receiving, ``receive()`` reads and parses the socket itself
(otherwise the connection's reader puts complete messages into a thread-safe queue
that ``receive()`` reads), and ``send()`` encodes the message and writes it to the
socket itself (a lock keeps its frames whole and in order with the trio thread's
pongs and close frames), so a request and its response need no thread switch.
Sends in a tight loop are batched instead, for the trio thread to write in one
system call. ``send()`` only waits when more than ``write_limit``
bytes are already waiting to go out, until there is room. A blocking
``receive()`` is interrupted by Ctrl-C like any blocking call. The same calls work
in a Jupyter kernel, whose main thread runs an asyncio loop of its own.

Differences from simple-websocket: ``close()`` waits for the closing handshake (at
most ``close_timeout``); with ``ping_interval`` set a pong must come back within
one interval or the connection fails (1011); bytes-like objects are sent as binary;
``thread_class``, ``event_class`` and ``selector_class`` are accepted and unused.
A TLS socket can't be taken over from a WSGI server (terminate TLS in a proxy in
front of it).

Under Eventlet or gevent (``gunicorn -k gevent``, ``-k eventlet``, their own WSGI
servers, or any monkey-patched process), the trio thread is still a real OS thread,
and a greenlet that waits for it (``receive()``, ``close()``, a handshake, a full
send buffer) or for the socket it reads itself is parked in its hub, so the other
greenlets run meanwhile; the trio thread wakes it through the hub. Import trillium
after the monkey patching, as both libraries ask, and before anything else that
imports trio. See ``trillium._green``.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import queue
import ssl as ssl_module
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import anyio
import anyio.abc
import trio
from anyio.from_thread import BlockingPortal

from . import _green
from ._simple import (
    ClientCompression,
    HeadersArg,
    ServerCompression,
    SimpleConnection,
    SubprotocolsArg,
    check_upgrade,
    closed_exception,
    open_client,
    start_server,
    subprotocol_list,
    take_over,
    to_message,
)
from .connection import Connection, _TrioSocketReader
from .core.close import CloseCode
from .core.protocol import CLIENT, Event, Pong, Protocol, State
from .exceptions import ConnectionClosed, ConnectionClosedOK, ProtocolError

__all__ = ["Client", "Server"]

logger = logging.getLogger("trillium")

Data = str | bytes
_Self = TypeVar("_Self", bound="_SyncBase")


# ---------------------------------------------------------------------- the trio thread


class _Deliveries(trio.abc.Instrument):
    """Hands the messages parsed in one pass of the trio thread to the receiving
    threads at the end of the pass, just before the thread waits for I/O.

    Putting a message into a receiver's queue wakes that thread, which then needs
    the GIL. Done by the reader straight away, the wake lands while the trio thread
    still has work before it sleeps (re-arming the socket in epoll, a system call),
    and the two threads pass the GIL back and forth a few times per message. Done
    here, the trio thread goes to sleep in ``epoll_wait`` right after, releasing the
    GIL to the thread it woke. Messages from many connections also go out in one go.
    """

    def __init__(self) -> None:
        self.pending: list[_ThreadedConnection] = []

    def before_io_wait(self, timeout: float) -> None:
        pending = self.pending
        if pending:
            for connection in pending:
                connection.deliver()
            pending.clear()


class _TrioThread:
    """The process-wide trio thread: a blocking portal (anyio, backend="trio") in a
    daemon thread, and the trio token for fire-and-forget calls into it."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.deliveries = _Deliveries()
        #: Open connections, closed with 1001 at interpreter exit.
        self.sessions: weakref.WeakSet[_SyncBase] = weakref.WeakSet()
        self._ready = _green.event()
        self._error: BaseException | None = None
        self.portal: BlockingPortal
        self.token: trio.lowlevel.TrioToken
        # A daemon thread: threading's shutdown would otherwise wait for it before the
        # atexit hook that stops it gets a chance to run. (A real OS thread even
        # where eventlet or gevent patched threads: see _green.)
        self.thread = _green.start_thread(self._run, "trillium")

    def wait_ready(self) -> None:
        """Wait until the thread runs (or raise why it couldn't start)."""
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            instruments = _green.prepare_trio()
            anyio.run(self._main, backend="trio", backend_options={"instruments": instruments})
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        async with BlockingPortal() as portal:
            self.portal = portal
            self.token = trio.lowlevel.current_trio_token()
            trio.lowlevel.add_instrument(self.deliveries)
            self._ready.set()
            await portal.sleep_until_stopped()

    def stop(self) -> None:
        """Close the open connections (1001, at most their close_timeout), then stop."""

        async def close_all() -> None:
            async with anyio.create_task_group() as tg:
                for session in list(self.sessions):
                    if session.connected and session._connection is not None:
                        tg.start_soon(session._close, CloseCode.GOING_AWAY, "")

        try:
            _green.call(self, close_all)
            _green.call(self, self.portal.stop, True)
        except BaseException as exc:  # the thread may be gone already
            logger.debug("stopping the trio thread: %r", exc)
        self.thread.join(5)


_thread: _TrioThread | None = None
_thread_lock = threading.Lock()


def _trio_thread() -> _TrioThread:
    """The trio thread, started on first use (and again in a forked child)."""
    global _thread
    current = _thread
    if current is None or current.pid != os.getpid() or not current.thread.is_alive():
        with _thread_lock:  # not held while waiting: that may switch greenlets
            if _thread is None or _thread.pid != os.getpid() or not _thread.thread.is_alive():
                _thread = _TrioThread()
            current = _thread
    current.wait_ready()  # another thread may have started it, and be waiting too
    return current


@atexit.register
def _stop_trio_thread() -> None:
    current = _thread
    if current is not None and current.pid == os.getpid():
        current.stop()


# ---------------------------------------------------------------------- connections

_CLOSED = object()  # the inbox's last item: the connection is closed

#: Sends closer together than this (seconds), with no receive in between, are batched.
_BATCH_WINDOW = 0.0002
#: The reader task leaves the socket to callers while one received this recently (s).
_LEASE = 0.05


class _ThreadedConnection(Connection):
    """A connection run by the trio thread and used from its callers' threads.

    The per-message path stays in the caller's thread:

    - the reader puts each complete message into ``inbox`` (a thread-safe queue),
      at the end of the trio thread's pass (see ``_Deliveries``), so ``receive()``
      takes it without a trip through the trio thread; the reader stops reading
      once ``max_queue`` messages wait, and a receiving thread tells it (``taken``)
      when they are down to a quarter;
    - ``send_now`` encodes a message and writes it to the socket in the caller's
      thread when nothing else is queued (what the kernel doesn't take, and anything
      on TLS, waits for the writer task in the trio thread);
    - on a plain socket, while callers keep receiving, the reading itself moves to
      their thread (``next_message``): the trio thread's reader steps aside, and a
      caller waiting for a message reads and parses the socket itself, so a request
      and response exchange involves no thread switch at all. The reader takes the
      socket back as soon as no caller has been receiving for ``_LEASE`` seconds
      (pings are answered, and the close frame read, whether or not anyone
      receives), when a caller's read ends the connection (a close frame, end of
      file, a protocol error: the reader then tears down as usual), and when the
      trio thread closes or fails the connection.

    ``lock`` makes each write, with its encoding and the check that the connection
    is still open, one step between the threads: a frame is never interleaved with
    another, and nothing is written after the close frame or once the socket is
    closing. The trio thread takes it around every write of its own (pongs, pings,
    close frames), around the writer's bookkeeping, and before closing the socket.
    """

    __slots__ = (
        "_caller_active_at",
        "_caller_reading",
        "_deliveries",
        "_flush_scheduled",
        "_handback",
        "_inbox_waiters",
        "_last_send",
        "_poll",
        "_revoked",
        "_sock",
        "_trio_reading",
        "_trio_thread_id",
        "_undelivered",
        "inbox",
        "lock",
        "received",
        "token",
    )

    def __init__(self, stream: anyio.abc.ByteStream, **kwargs: Any) -> None:
        super().__init__(stream, **kwargs)  # in the trio thread
        self.inbox: queue.SimpleQueue[Any] = _green.simple_queue()
        self._undelivered: list[Data] = []
        self._deliveries = _trio_thread().deliveries
        self._flush_scheduled = False
        self._last_send = 0.0
        #: Set by receive(): a send after it answers something, and goes out at once.
        self.received = True
        self.lock = _green.lock()
        self.token = trio.lowlevel.current_trio_token()
        self._trio_thread_id = threading.get_ident()
        # Who reads the socket (all written under ``lock``): the reader task while
        # _trio_reading (from its decision to read until it asks for more data, so
        # its parsing is covered too), a caller while _caller_reading, nobody while
        # the reader waits for _handback. _revoked: callers may read no more.
        self._sock: Any = None
        self._poll: Any = None  # a select.poll on _sock, for callers' reads
        self._trio_reading = True
        self._caller_reading = False
        self._revoked = False
        self._inbox_waiters = 0
        self._caller_active_at = 0.0
        self._handback: trio.Event | None = None

    # ------------------------------------------------------------ caller's threads

    def send_now(self, message: Data) -> None:
        """Encode one message and write it, or queue it for the next batch.

        A send that follows a receive, or comes after a pause, goes straight to the
        socket: a request and response exchange never waits for the trio thread. A
        send that follows another send within ``_BATCH_WINDOW`` (a loop producing
        messages) is queued instead, and the trio thread writes everything queued
        in one system call when it gets to it, rather than one call per message.
        Raises ConnectionClosed once the connection is closing.
        """
        now = time.monotonic()
        with self.lock:
            self._enqueue(self._encode(message, None, True))
            if self.received or now - self._last_send > _BATCH_WINDOW:
                self._push()
            elif not self._flush_scheduled:
                self._flush_scheduled = True
                self.token.run_sync_soon(self._flush_batch)
            self._last_send = now
            self.received = False

    def _flush_batch(self) -> None:
        """In the trio thread: write the batch the senders queued (never raises:
        trio treats an exception from a run_sync_soon callback as a crash)."""
        with self.lock:
            self._flush_scheduled = False
            if self._out and not self._transport_closing:
                self._push()

    def next_message(self, deadline: float | None) -> Any:
        """The next item for ``receive()``: from the inbox, reading the socket in this
        thread while the reader task leaves it to callers; None after ``deadline``."""
        inbox = self.inbox
        try:
            while True:
                if self._poll is not None and self._take_socket():
                    try:
                        self._read_in_caller(deadline)
                    finally:
                        self._release_socket()
                    try:
                        return inbox.get_nowait()
                    except queue.Empty:
                        if deadline is not None and time.monotonic() >= deadline:
                            return None
                        continue
                with self.lock:
                    self._inbox_waiters += 1
                try:
                    if deadline is None:
                        return inbox.get()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return inbox.get_nowait()
                    return inbox.get(timeout=min(remaining, threading.TIMEOUT_MAX))
                except queue.Empty:
                    return None
                finally:
                    with self.lock:
                        self._inbox_waiters -= 1
        finally:
            self._caller_active_at = time.monotonic()

    def _take_socket(self) -> bool:
        """Become the socket's reader, if the reader task has left it to callers and
        everything it parsed was handed over (messages stay in order)."""
        with self.lock:
            if (
                self._trio_reading
                or self._caller_reading
                or self._revoked
                or self._undelivered
                or self.inbox.qsize()
            ):
                return False
            self._caller_reading = True
            return True

    def _release_socket(self) -> None:
        with self.lock:
            self._caller_reading = False
            waiters = self._inbox_waiters
        if waiters:  # they wait for a reader: the reader task, then
            self.token.run_sync_soon(self._wake_reader)

    def _read_in_caller(self, deadline: float | None) -> None:
        """Wait (at most until ``deadline``) for the socket, read it once, and handle
        what it holds as the reader task would: messages to the inbox, pongs to the
        trio thread, answers written; if that ends the connection, hand the socket
        back for the reader task to tear down."""
        protocol = self.protocol
        assert protocol is not None
        if not protocol.paused:
            if deadline is None:
                timeout_ms = None
            else:
                timeout_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            if not self._poll.poll(timeout_ms):
                return
        with self.lock:
            if self._revoked:
                return
            data: bytes | int | None = None
            failure: ProtocolError | None = None
            try:
                if protocol.paused:
                    events = protocol.receive_buffered(max_events=self._queue_high)
                else:
                    # A big frame's payload goes straight to its place (see
                    # Protocol.receive_buffer); an int says how much came.
                    buffer = protocol.receive_buffer()
                    try:
                        if buffer is None:
                            data = self._sock.recv(self._read_size)
                        else:
                            data = self._sock.recv_into(buffer) or b""
                    except BlockingIOError:
                        return
                    except OSError:
                        data = b""
                    if isinstance(data, int):
                        events = protocol.received_into(data, max_events=self._queue_high)
                    else:
                        events = protocol.receive_data(data, max_events=self._queue_high)
            except ProtocolError as exc:
                failure = exc
                events = exc.events  # type: ignore[assignment]
                self.logger.info("failing connection %s: %s", self.id, exc)
            for event in events:
                if type(event) is Pong:  # its ping waits in the trio thread
                    self.token.run_sync_soon(self._pong_received, event.payload)
            Connection._received(self, [event for event in events if type(event) is not Pong])
            while self._complete:
                self.inbox.put(self._pop_message())
            reply = protocol.data_to_send()
            if reply:
                Connection._write(self, reply)
            if failure is not None or data == b"" or protocol.state is not State.OPEN:
                self._revoked = True
                self.token.run_sync_soon(self._wake_reader)

    def taken(self) -> None:
        """A message was taken from the inbox: resume a paused reader at the low mark."""
        if self._queue_drained is not None and self.inbox.qsize() <= self._queue_low:
            self.token.run_sync_soon(self._resume_if_drained)

    def _resume_if_drained(self) -> None:
        if self.inbox.qsize() <= self._queue_low:
            self._resume_reading()

    # ------------------------------------------------------------ both threads

    def _write(self, data: bytes | list[bytes]) -> None:
        with self.lock:
            super()._write(data)

    def _push_soon(self) -> None:
        # At once, from either thread: the end of the trio thread's pass is no time
        # for a caller's thread to wait for, and what the trio thread would write
        # then must be written under the lock.
        self._push()

    def _start_writer(self) -> None:
        if threading.get_ident() == self._trio_thread_id:
            super()._start_writer()
        else:
            self.token.run_sync_soon(super()._start_writer)

    def _wake_senders(self) -> None:
        if threading.get_ident() == self._trio_thread_id:
            super()._wake_senders()
        else:
            self.token.run_sync_soon(super()._wake_senders)

    async def _flush(self) -> None:
        # The base's loop, with its check under the lock: a caller's write may be
        # half done (sent, not yet counted), and would then wake nobody.
        while True:
            with self.lock:
                if self._out_size <= 0 or self._writer_done:
                    return
                if self._write_drained is None:
                    self._write_drained = self._backend.Event()
                drained = self._write_drained
            await drained.wait()

    # ------------------------------------------------------------ the trio thread

    def _make_receive(self) -> Callable[[int], Awaitable[bytes | None]]:
        receive = super()._make_receive()
        if not isinstance(receive, _TrioSocketReader):
            return receive  # TLS: one reader only
        self._sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self._poll = _green.poller(self._sock)  # under eventlet, gevent: parks greenlets
        socket_receive = receive

        async def shared_receive(max_bytes: int) -> bytes:
            """The reader task's receive: steps aside while callers read."""
            protocol = self.protocol
            assert protocol is not None
            while not self._reader_takes():
                self._handback = trio.Event()
                with trio.move_on_after(_LEASE):
                    await self._handback.wait()
                self._handback = None
            if protocol.failure is not None:
                return b""  # a caller's read failed the connection: tear down
            if protocol.state is State.CLOSED:  # a caller read the close frame, or EOF
                if protocol.role is CLIENT:  # the server closes TCP first (RFC 6455 §7.1.1)
                    with trio.move_on_after(self._close_wait()):
                        await socket_receive(max_bytes)
                return b""
            return await socket_receive(max_bytes)

        return shared_receive

    def _reader_takes(self) -> bool:
        """Whether the reader task reads the socket now (it handled all it read)."""
        with self.lock:
            self._trio_reading = False
            if self._revoked:
                take = True
            elif self._caller_reading:
                take = False
            elif self._inbox_waiters > len(self._undelivered) + self.inbox.qsize():
                take = True  # callers wait for messages nobody is reading
            else:
                take = time.monotonic() - self._caller_active_at >= _LEASE
            self._trio_reading = take
            return take

    def _wake_reader(self) -> None:
        if self._handback is not None:
            self._handback.set()

    async def _wait_for_room(self) -> None:
        # A caller waiting to send isn't receiving: the reader task takes the socket
        # at once, or the peer, blocked writing to us, may never read what we send.
        self._caller_active_at = 0.0
        self._wake_reader()
        await super()._wait_for_room()

    def _revoke(self) -> None:
        """The trio thread takes the socket back for good (closing, failing)."""
        with self.lock:  # no caller is parsing after this, and none starts
            self._revoked = True
        self._wake_reader()

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        self._revoke()
        await super().close(code, reason)

    def _fail(self, code: int, reason: str) -> None:
        self._revoke()
        super()._fail(code, reason)

    def _received(self, events: list[Event]) -> None:
        super()._received(events)
        if self._complete:
            undelivered = self._undelivered
            if not undelivered:
                self._deliveries.pending.append(self)
            while self._complete:
                undelivered.append(self._pop_message())

    def deliver(self) -> None:
        """Hand the messages parsed so far to the receiving threads."""
        put = self.inbox.put
        for message in self._undelivered:
            put(message)
        self._undelivered.clear()

    def _queued(self) -> int:
        return len(self._messages) + len(self._undelivered) + self.inbox.qsize()

    def _queue_full(self) -> bool:  # all complete messages
        return len(self._undelivered) + self.inbox.qsize() >= self._queue_high

    def _take_out(self) -> bytes | memoryview | list[bytes | memoryview]:
        with self.lock:
            return super()._take_out()

    def _sent(self, size: int) -> None:
        with self.lock:
            super()._sent(size)

    async def _abort(self) -> None:
        with self.lock:  # no caller's write or read is under way, and none starts after this
            self._transport_closing = True
            self._revoked = True
        self._wake_reader()
        await super()._abort()


class _SyncBase(SimpleConnection):
    """What Server and Client share: the session in the trio thread, receive, send, close."""

    def __init__(self, **options: Any) -> None:
        super().__init__(connection_class=_ThreadedConnection, **options)
        self._connection: _ThreadedConnection | None = None
        self._closed_exc: ConnectionClosed | None = None
        self._done = _green.event()  # set once the session is over

    # ------------------------------------------------------------------ the session

    def _start(self, open_connection: Callable[[], Awaitable[tuple[Connection, Protocol]]]) -> None:
        """Open the connection in the trio thread and leave it running there."""
        self._thread = _trio_thread()
        _green.start_task(self._thread, self._session, open_connection, name="trillium session")
        self._thread.sessions.add(self)

    async def _session(
        self,
        open_connection: Callable[[], Awaitable[tuple[Connection, Protocol]]],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        connection, protocol = await open_connection()
        assert isinstance(connection, _ThreadedConnection)
        self._connection = connection
        try:
            async with connection._running(protocol):
                task_status.started()
                await connection.wait_closed()
        finally:
            self._ended()

    def _ended(self) -> None:
        """The connection is closed: end TCP for the web server too, wake receivers."""
        if self._taken is not None:
            self._taken.shutdown()
        self._closed_exc = closed_exception(self._connection)
        if self._connection is not None:
            self._connection.deliver()  # what came before the end, first
            self._connection.inbox.put(_CLOSED)
        self._done.set()

    def _wait_ended(self) -> None:
        """Before reporting a closure: let a closing handshake under way finish (at most
        close_timeout), so that a WSGI view that returns on ConnectionClosed finds TCP
        shut down, and its server's response can't land in the WebSocket stream."""
        if self._connection is not None:
            self._done.wait(self._options.close_timeout)

    async def _close(self, code: int, reason: str) -> None:
        assert self._connection is not None
        await self._connection.close(code, reason)
        if self._taken is not None:
            self._taken.shutdown()

    def _closed_exception(self) -> ConnectionClosed:
        exc = self._closed_exc
        if exc is None:
            return closed_exception(self._connection)
        fresh = type(exc)(exc.rcvd, exc.sent, exc.rcvd_then_sent)
        fresh.__cause__ = exc.__cause__
        return fresh

    # ------------------------------------------------------------------ the API

    def _running_connection(self) -> Connection | None:
        return self._connection

    def receive(self, timeout: float | None = None) -> Data | None:
        """Receive the next message: ``str`` for text, ``bytes`` for binary.

        Waits at most ``timeout`` seconds (None: no limit; 0: only what has already
        arrived) and returns None when nothing came in time. Messages that arrived
        before the connection closed are returned first; then it raises
        ``ConnectionClosed`` (``.reason`` is the close code, ``.message`` the text).
        """
        connection = self._connection
        assert connection is not None  # set before the constructor returns
        inbox = connection.inbox
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            deadline = None if timeout is None else time.monotonic() + timeout
            item = connection.next_message(deadline)
            if item is None:
                return None
        if item is _CLOSED:
            inbox.put(_CLOSED)  # for the next receive(), and other receiving threads
            raise self._closed_exception()
        connection.received = True
        if connection._queue_drained is not None:  # the reader is paused, or about to be
            connection.taken()
        return item  # type: ignore[no-any-return]

    def send(self, data: Data) -> None:
        """Send a message: bytes-like as binary, ``str`` (or anything else, as
        ``str(data)``) as text. Raises ``ConnectionClosed`` once the connection is
        closing or closed.

        Returns once the message is written to the socket or queued for it, unless
        ``write_limit`` bytes already wait to be sent: then it waits until there is room.
        """
        message = to_message(data)
        connection = self._connection
        assert connection is not None  # set before the constructor returns
        try:
            if connection._out_size > connection._write_high:
                # Too much is waiting to go out: wait in the trio thread until the
                # backlog is down to a quarter.
                _green.call(self._thread, connection._wait_for_room)
            connection.send_now(message)
            return
        except ConnectionClosed:
            pass
        self._wait_ended()
        raise self._closed_exception()

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        """Close the connection with code ``reason`` (default 1000) and text ``message``.

        Waits for the closing handshake, at most ``close_timeout`` seconds. Like
        simple-websocket, raises ``ConnectionClosed`` if the connection is already
        closed.
        """
        if not self.connected:
            raise self._closed_exception()
        _green.call(self._thread, self._close, reason or CloseCode.NORMAL_CLOSURE, message or "")

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.connected:
            self.close()

    def __iter__(self) -> Iterator[Data]:
        """Yield messages until the connection closes; a normal closure ends the loop."""
        while True:
            try:
                message = self.receive()
            except ConnectionClosedOK:
                return
            assert message is not None
            yield message


class Server(_SyncBase):
    """The server end of a WebSocket connection, taken over from a WSGI server.

    ``Server.accept(environ)`` (or ``Server(environ)``, as Flask-Sock calls it) in a
    WSGI view validates the upgrade request, writes the 101 on the connection's
    socket and returns the open connection; see the module for an example. The socket
    comes from ``environ["werkzeug.socket"]`` (Werkzeug, Flask's development server),
    ``environ["gunicorn.socket"]`` (Gunicorn, any worker), ``environ["eventlet.input"]``
    (eventlet.wsgi) or ``environ["wsgi.input"]`` (gevent.pywsgi); ``mode`` says which
    (``"werkzeug"``, ``"gunicorn"``, ``"eventlet"``, ``"gevent"``). Under Gunicorn, use
    threads (``--threads N``, the gthread worker) or greenlets (``-k gevent``, or
    ``-k eventlet`` before Gunicorn 26): a view holding a WebSocket keeps its thread
    or greenlet, and a sync worker busy longer than ``--timeout`` is killed. Under
    Eventlet and gevent, waiting views park their greenlets and let the others run
    (see the module). When the connection ends, TCP is
    shut down, so whatever the WSGI server writes afterwards (its own response to the
    view) goes nowhere.

    ``Server.accept(sock=conn, headers=request_headers)`` does the same on a
    connected socket whose upgrade request you read yourself (``mode`` is
    ``"custom"``); the socket stays yours to close once the connection is over.

    A request that isn't a valid upgrade raises ``InvalidHandshake`` (a
    ``ConnectionError`` whose ``status_code`` is 400, or 426 for a wrong version)
    before anything is written: the view can still answer it. Options as in
    ``Server.accept``.

    >>> Server({"REQUEST_METHOD": "GET"})
    Traceback (most recent call last):
    ...
    RuntimeError: Cannot obtain socket from WSGI environment.
    """

    def __init__(
        self,
        environ: Mapping[str, Any] | None = None,
        subprotocols: SubprotocolsArg = None,
        receive_bytes: int = 4096,
        ping_interval: float | None = None,
        max_message_size: int | None = None,
        thread_class: Any = None,
        event_class: Any = None,
        selector_class: Any = None,
        *,
        sock: Any = None,
        headers: Mapping[str, str] | None = None,
        close_timeout: float | None = 10,
        max_queue: int | None = 16,
        write_limit: int = 2**18,
        compression: ServerCompression = "deflate",
    ) -> None:
        super().__init__(
            receive_bytes=receive_bytes,
            ping_interval=ping_interval,
            max_message_size=max_message_size,
            close_timeout=close_timeout,
            open_timeout=None,
            max_queue=max_queue,
            write_limit=write_limit,
        )
        self.environ = environ if environ is not None else {}
        self.subprotocols = subprotocol_list(subprotocols)
        if sock is not None:
            self.mode = "custom"
            request_headers = dict(headers or {})
            upgrade = check_upgrade(
                "GET", "/", request_headers.items(), self.choose_subprotocol, compression
            )
        elif environ is None:
            raise TypeError("Server.accept() needs a WSGI environ, or sock= and headers=")
        else:
            sock, self.mode = _wsgi_socket(environ)
            version = str(environ.get("SERVER_PROTOCOL", "HTTP/1.1")).partition("/")[2]
            if self.mode == "eventlet":  # eventlet.wsgi says HTTP/1.0, whatever was asked
                version = "1.1"
            upgrade = check_upgrade(
                str(environ.get("REQUEST_METHOD", "GET")),
                _wsgi_target(environ),
                _wsgi_headers(environ),
                self.choose_subprotocol,
                compression,
                version or "1.1",
            )
        self.request, self.subprotocol = upgrade.request, upgrade.subprotocol
        taken = self._taken = take_over(sock)

        async def open_connection() -> tuple[Connection, Protocol]:
            return await start_server(taken, upgrade, self._options)

        self._start(open_connection)

    @classmethod
    def accept(
        cls,
        environ: Mapping[str, Any] | None = None,
        subprotocols: SubprotocolsArg = None,
        receive_bytes: int = 4096,
        ping_interval: float | None = None,
        max_message_size: int | None = None,
        thread_class: Any = None,
        event_class: Any = None,
        selector_class: Any = None,
        *,
        sock: Any = None,
        headers: Mapping[str, str] | None = None,
        close_timeout: float | None = 10,
        max_queue: int | None = 16,
        write_limit: int = 2**18,
        compression: ServerCompression = "deflate",
    ) -> Server:
        """Accept the WebSocket connection of a WSGI request (or, with ``sock=`` and
        ``headers=``, of a socket whose upgrade request you read yourself).

        ``subprotocols``: the ones the server supports (None: no negotiation).
        ``receive_bytes``: the socket read size (at least 64 KiB is read).
        ``ping_interval``: ping the client this often (seconds, None: never); a
        client that doesn't answer within one interval is dropped (close code 1011).
        ``max_message_size``: bytes (None: no limit, as in simple-websocket; set one
        for untrusted clients); a bigger message closes the connection with 1009.
        ``close_timeout``: how long ``close()`` waits for the client's close frame.
        ``max_queue``: messages buffered before the connection stops reading.
        ``write_limit``: bytes waiting to be sent beyond which ``send()`` waits (256 KiB:
        waiting costs a round trip to the trio thread, so the blocking face buffers
        more than the trio face's 32 KiB, to keep the wire busy meanwhile).
        ``compression``: ``"deflate"`` (the default, as simple-websocket) accepts
        permessage-deflate when the client offers it; None declines it; a
        ``trillium.core.deflate.ServerPerMessageDeflateFactory`` tunes it.

        >>> Server.accept({"werkzeug.socket": None, "REQUEST_METHOD": "POST"})
        Traceback (most recent call last):
        ...
        RuntimeError: Cannot obtain socket from WSGI environment.
        """
        return cls(
            environ,
            subprotocols=subprotocols,
            receive_bytes=receive_bytes,
            ping_interval=ping_interval,
            max_message_size=max_message_size,
            sock=sock,
            headers=headers,
            close_timeout=close_timeout,
            max_queue=max_queue,
            write_limit=write_limit,
            compression=compression,
        )


def _wsgi_socket(environ: Mapping[str, Any]) -> tuple[Any, str]:
    """The connection's socket, from where each WSGI server puts it."""
    if environ.get("werkzeug.socket") is not None:
        return environ["werkzeug.socket"], "werkzeug"
    if environ.get("gunicorn.socket") is not None:
        return environ["gunicorn.socket"], "gunicorn"
    if environ.get("eventlet.input") is not None:  # eventlet.wsgi
        return environ["eventlet.input"].get_socket(), "eventlet"
    if str(environ.get("SERVER_SOFTWARE", "")).startswith("gevent"):  # gevent.pywsgi
        stream: Any = environ.get("wsgi.input")
        if not hasattr(stream, "raw") and hasattr(stream, "rfile"):
            stream = stream.rfile
        sock = getattr(getattr(stream, "raw", None), "_sock", None)
        if sock is not None:
            return sock, "gevent"
    raise RuntimeError("Cannot obtain socket from WSGI environment.")


def _wsgi_headers(environ: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The request headers, from the environ's HTTP_* keys."""
    return [
        (key[5:].replace("_", "-").title(), str(value))
        for key, value in environ.items()
        if key.startswith("HTTP_")
    ]


def _wsgi_target(environ: Mapping[str, Any]) -> str:
    """The request target: the raw one when the server gives it, else rebuilt."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if isinstance(raw, str) and raw.startswith("/") and " " not in raw:
        return raw
    path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    path = quote(path.encode("latin-1", "replace")) or "/"
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


class Client(_SyncBase):
    """A blocking WebSocket client: ``ws = Client.connect(url)``.

    ``url`` is ``ws://``, ``wss://`` (``http://`` and ``https://`` work too); see
    ``connect()`` for the options and the module for an example. It is also a context
    manager that closes the connection on the way out::

        with trillium.Client.connect("ws://127.0.0.1:8765") as ws:
            ws.send("Hello")
            print(ws.receive())

    >>> Client("ws://127.0.0.1:1/", open_timeout=5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    OSError: ...
    """

    def __init__(
        self,
        url: str,
        subprotocols: SubprotocolsArg = None,
        headers: HeadersArg = None,
        receive_bytes: int = 4096,
        ping_interval: float | None = None,
        max_message_size: int | None = None,
        ssl_context: ssl_module.SSLContext | None = None,
        thread_class: Any = None,
        event_class: Any = None,
        *,
        open_timeout: float | None = 10,
        close_timeout: float | None = 10,
        max_queue: int | None = 16,
        write_limit: int = 2**18,
        compression: ClientCompression = None,
    ) -> None:
        super().__init__(
            receive_bytes=receive_bytes,
            ping_interval=ping_interval,
            max_message_size=max_message_size,
            close_timeout=close_timeout,
            open_timeout=open_timeout,
            max_queue=max_queue,
            write_limit=write_limit,
        )
        self.url = url
        self.subprotocols = subprotocol_list(subprotocols)
        self.extra_headers = headers
        self.ssl_context = ssl_context
        self.compression = compression

        async def open_connection() -> tuple[Connection, Protocol]:
            connection, protocol = await open_client(
                url,
                subprotocols=self.subprotocols,
                headers=headers,
                ssl_context=ssl_context,
                options=self._options,
                compression=compression,
            )
            self.subprotocol = connection.subprotocol
            return connection, protocol

        self._start(open_connection)

    @classmethod
    def connect(
        cls,
        url: str,
        subprotocols: SubprotocolsArg = None,
        headers: HeadersArg = None,
        receive_bytes: int = 4096,
        ping_interval: float | None = None,
        max_message_size: int | None = None,
        ssl_context: ssl_module.SSLContext | None = None,
        thread_class: Any = None,
        event_class: Any = None,
        *,
        open_timeout: float | None = 10,
        close_timeout: float | None = 10,
        max_queue: int | None = 16,
        write_limit: int = 2**18,
        compression: ClientCompression = None,
    ) -> Client:
        """Connect to ``url`` and return the open connection.

        ``subprotocols``: a name or a list in order of preference. ``headers``: a
        dict or list of (name, value) pairs added to the request. ``ssl_context``:
        for ``wss://`` (default: the system's trusted certificates, verified).
        ``open_timeout`` bounds the TCP connection and the handshake
        (``TimeoutError``); ``compression`` is None by default (simple-websocket's
        client doesn't compress either), ``"deflate"`` offers permessage-deflate; the
        other options are as in ``Server.accept``.

        A server that refuses the upgrade raises ``ConnectionError`` with its HTTP
        ``status_code`` (``trillium.InvalidStatus``, which also has the response).

        >>> try:
        ...     Client.connect("ws://127.0.0.1:1/", open_timeout=5)
        ... except OSError:
        ...     print("nothing listens there")
        nothing listens there
        """
        return cls(
            url,
            subprotocols=subprotocols,
            headers=headers,
            receive_bytes=receive_bytes,
            ping_interval=ping_interval,
            max_message_size=max_message_size,
            ssl_context=ssl_context,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            max_queue=max_queue,
            write_limit=write_limit,
            compression=compression,
        )
