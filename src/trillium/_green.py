"""Eventlet and gevent: the blocking face in a monkey-patched process.

Both libraries replace threads with greenlets taking turns in one OS thread, and
patch ``threading``, ``queue``, ``socket``, ``select`` and more to match. The blocking
face needs two things that this breaks, and gets them back here:

- A trio thread that is a real OS thread running real trio. ``threading.Thread``
  would start a greenlet, gevent deletes ``select.epoll``, trio asserts that its
  ``run_sync_soon`` lock is a real one, and trio's socket methods are taken from
  ``socket.socket`` when trio is imported (eventlet's class even makes that import
  fail). So trio is imported with the standard socket class in place
  (``_import_trio``, which is why ``trillium/__init__.py`` imports this module
  first), and before the run starts, trio's and anyio's modules get the standard
  ``socket`` and ``select`` back, and real threads and locks (``prepare_trio``).
  The sockets trillium takes over from a WSGI server are standard ones too
  (``socket_class``). Nothing the application sees is changed.
- Waits that let the other greenlets run. A greenlet waiting for the trio thread
  (``receive()``, a handshake, ``close()``, a full send buffer) must not block its
  OS thread, which runs every greenlet; but the patched primitives aren't woken
  from another OS thread (eventlet's never are, gevent's only sometimes: a
  ``SimpleQueue.get(timeout=...)`` misses a ``put`` from another thread, and a wait
  with nothing else pending raises ``LoopExit``). ``event()`` and ``simple_queue()``
  are built on real locks instead, and park a waiting greenlet in its hub until
  the trio thread wakes it: through ``loop.run_callback_threadsafe`` on gevent, and
  through a pipe that a greenlet of the hub watches on eventlet (``_EventletWaker``).
  ``call()`` and ``start_task()`` stand in for the blocking portal's, whose futures
  wait on the patched primitives. A caller that reads the socket itself (while it
  keeps receiving, see ``sync._ThreadedConnection``) waits for it in its hub too
  (``poller``), so that a round trip involves no other thread. A parked greenlet
  holds no thread: thousands of idle connections cost no more than under
  simple-websocket.

With neither library active, every function here hands out the standard objects
and calls, so the plain blocking face pays nothing. gevent and eventlet are only
imported once ``sys.modules`` shows they are in use.
"""

from __future__ import annotations

import _socket
import importlib
import logging
import os
import select
import socket
import sys
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import suppress
from queue import Empty, SimpleQueue
from time import monotonic
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from anyio.from_thread import BlockingPortal

__all__ = [
    "call",
    "event",
    "library",
    "lock",
    "poller",
    "prepare_trio",
    "simple_queue",
    "socket_class",
    "start_task",
    "start_thread",
]

T = TypeVar("T")
Library = Literal["gevent", "eventlet"]


def library() -> Library | None:
    """The green library that patched this process's threads or sockets, if any."""
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and (
        gevent.is_module_patched("threading") or gevent.is_module_patched("socket")
    ):
        return "gevent"
    eventlet = sys.modules.get("eventlet.patcher")
    if eventlet is not None and (
        eventlet.is_monkey_patched("thread") or eventlet.is_monkey_patched("socket")
    ):
        return "eventlet"
    return None


def _real_module(name: str) -> ModuleType:
    """Standard library module ``name`` as it was before any monkey patching (the
    module itself when nothing patched it)."""
    module = importlib.import_module(name)
    green = library()
    if green == "eventlet":  # a fresh import of the original, which eventlet keeps
        return _green_module("eventlet.patcher").original(name)  # type: ignore[no-any-return]
    if green == "gevent":  # the module, with the originals gevent saved put back
        saved = _green_module("gevent.monkey").saved.get(name, {})
        key = (name, tuple(saved))
        real = _gevent_originals.get(key)
        if real is None:
            real = ModuleType(name, module.__doc__)
            real.__dict__.update(vars(module))
            real.__dict__.update(saved)  # deleted ones (select.epoll) included
            _gevent_originals[key] = real
        return real
    return module


_gevent_originals: dict[tuple[str, tuple[str, ...]], ModuleType] = {}


def _green_module(name: str) -> Any:
    """A module of gevent or eventlet (untyped), once ``library()`` said it's in use."""
    return sys.modules.get(name) or importlib.import_module(name)


def _original(module: str, name: str) -> Any:
    """``module.name`` as it was before any monkey patching."""
    return getattr(_real_module(module), name)


def socket_class() -> type[socket.socket]:
    """The standard ``socket.socket``: trio's and anyio's sockets are real ones, used
    from the trio thread (see ``prepare_trio``)."""
    if library() is None:
        return socket.socket
    return _original("socket", "socket")  # type: ignore[no-any-return]


def _import_trio() -> None:
    """Import trio with the standard ``socket.socket`` in place.

    trio's socket methods call ``socket.socket``'s, as they were when trio was
    imported: under eventlet, whose ``GreenSocket`` has no ``sendmsg``, the import
    fails; under gevent, they would be gevent's, which wait in a gevent hub when a
    socket isn't ready. With the standard class, trio runs on standard sockets
    (``prepare_trio`` makes it create and accept those).
    """
    if "trio" in sys.modules or library() is None:
        return
    green = socket.socket
    socket.socket = socket_class()  # type: ignore[misc]
    try:
        import trio  # noqa: F401
    finally:
        socket.socket = green  # type: ignore[misc]


_import_trio()  # trillium/__init__.py imports this module first, for this

import trio  # noqa: E402


def lock() -> Any:
    """A real lock, for state that the trio thread shares with the callers' threads.

    Whoever holds it never waits for anything (no greenlet switch can happen under
    it), so a real lock is right in a greenlet too; a patched one would put the trio
    thread to sleep in a hub that nothing wakes.
    """
    if library() is None:
        return threading.Lock()
    return _original("_thread", "allocate_lock")()


# ---------------------------------------------------------------------- the trio thread


class _RealThread:
    """The part of ``threading.Thread`` the trio thread needs, on a real OS thread
    (``threading.Thread`` would start a greenlet once threads are patched)."""

    def __init__(self, target: Callable[[], object], name: str) -> None:
        self.name = name
        self._target = target
        self._running = lock()
        self._running.acquire()
        self._started = False

    def start(self) -> None:
        self._started = True
        _original("_thread", "start_new_thread")(self._run, ())

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self._running.release()

    def is_alive(self) -> bool:
        return self._started and self._running.locked()

    def join(self, timeout: float | None = None) -> None:
        if self._running.acquire(timeout=-1 if timeout is None else timeout):
            self._running.release()


class _Thread(Protocol):
    name: str

    def start(self) -> None: ...
    def is_alive(self) -> bool: ...
    def join(self, timeout: float | None = None) -> None: ...


def start_thread(target: Callable[[], object], name: str) -> _Thread:
    """Start ``target`` in a new OS thread that the interpreter doesn't wait for at
    exit (a daemon thread; a real one even where threads are patched)."""
    thread: _Thread
    if library() is None:
        thread = threading.Thread(target=target, name=name, daemon=True)
    else:
        thread = _RealThread(target, name)
    thread.start()
    return thread


class _RealLocks(trio.abc.Instrument):
    """Gives the run's ``run_sync_soon`` queue a real lock, before any task runs.

    trio creates it with ``threading.RLock``, patched if trio was imported after the
    monkey patching, and its queue task asserts the lock is ``_thread``'s.
    """

    def before_run(self) -> None:
        token = trio.lowlevel.current_trio_token()
        token._reentry_queue.lock = _original("_thread", "RLock")()


def prepare_trio() -> list[trio.abc.Instrument]:
    """Before ``trio.run`` in a real thread of a patched process: point trio (and
    anyio's socket checks) back at the standard library; returns instruments for
    the run.

    - the standard ``socket`` module, for the sockets trio creates (TCP, its wake-up
      pair) and the ones it accepts: those ``_import_trio`` expects;
    - the standard ``select``, whose ``epoll`` gevent deletes, for the I/O manager;
    - real threads and locks for ``trio.to_thread`` (host name lookups run there);
    - a real lock for ``run_sync_soon`` (``_RealLocks``).

    Only the references held by trio's and anyio's modules are replaced, nothing
    that the application sees; no greenlet could run trio anyway, with ``epoll``
    gone. Raises RuntimeError if trio was imported after the patching, before
    trillium: its sockets would then be the green kind, which the trio thread can't
    use.
    """
    if library() is None:
        return []
    import anyio.abc._sockets
    import trio._core._io_epoll
    import trio._core._thread_cache
    import trio._core._wakeup_socketpair
    import trio._socket

    real_socket = _real_module("socket")
    wrapped = getattr(trio._socket._SocketType.send, "__wrapped__", socket.socket.send)
    if getattr(wrapped, "__objclass__", None) is not _socket.socket:
        raise RuntimeError(
            f"trio was imported after {library()} monkey-patched the standard library, "
            "before trillium: import trillium first (or before patching)"
        )
    trio._socket._stdlib_socket = real_socket  # type: ignore[attr-defined]
    trio._core._wakeup_socketpair.socket = real_socket  # type: ignore[attr-defined]
    trio._core._io_epoll.select = _real_module("select")  # type: ignore[attr-defined]
    trio._core._thread_cache.Thread = _WorkerThread  # type: ignore[attr-defined,assignment]
    trio._core._thread_cache.Lock = _original("_thread", "allocate_lock")  # type: ignore[attr-defined]
    anyio.abc._sockets.socket = real_socket  # type: ignore[attr-defined]
    return [_RealLocks()]


class _WorkerThread(_RealThread):
    """``threading.Thread`` as trio's thread cache calls it."""

    def __init__(
        self, target: Callable[[], object], name: str, daemon: bool = True, **_: object
    ) -> None:
        super().__init__(target, name)
        self.ident: int | None = None

    def _run(self) -> None:
        self.ident = _original("_thread", "get_ident")()
        super()._run()


# ---------------------------------------------------------------------- parking


class _Parking(Protocol):
    """One greenlet waiting for another thread: ``wake()`` from any thread,
    ``block(timeout)`` in the greenlet (True if woken; spurious wakes are allowed)."""

    def wake(self) -> None: ...
    def block(self, timeout: float | None) -> bool: ...


class _GeventParking:
    __slots__ = ("_event", "_loop")

    def __init__(self) -> None:
        self._loop = _green_module("gevent").get_hub().loop
        self._event = _green_module("gevent.event").Event()

    def wake(self) -> None:
        # The one call gevent documents for use from any thread.
        self._loop.run_callback_threadsafe(self._event.set)

    def block(self, timeout: float | None) -> bool:
        # A timer keeps the hub from raising LoopExit when nothing else is going
        # on: the wake-up comes from outside, which the hub can't know.
        return bool(self._event.wait(timeout if timeout is not None else 86400.0))


class _EventletWaker:
    """Runs callbacks in one eventlet hub, queued from any thread.

    eventlet has no thread-safe way into a hub; a pipe that one greenlet of the hub
    waits on is the way its own ``tpool`` takes: a byte written from the other
    thread wakes the hub, and the greenlet runs what was queued.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._calls: deque[Callable[[], object]] = deque()
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._os_read = _original("os", "read")
        self._os_write = _original("os", "write")
        _green_module("eventlet").spawn_n(self._run)

    def call_soon(self, callback: Callable[[], object]) -> None:
        self._calls.append(callback)
        with suppress(BlockingIOError):  # the pipe is full: a wake-up is pending anyway
            self._os_write(self._write, b"\0")

    def _run(self) -> None:
        trampoline = _green_module("eventlet.hubs").trampoline
        calls = self._calls
        while True:
            trampoline(self._read, read=True)
            try:
                while self._os_read(self._read, 4096):
                    pass
            except BlockingIOError:
                pass
            while calls:
                calls.popleft()()


_wakers: weakref.WeakKeyDictionary[Any, _EventletWaker] = weakref.WeakKeyDictionary()


class _EventletParking:
    __slots__ = ("_event", "_waker")

    def __init__(self) -> None:
        hub = _green_module("eventlet.hubs").get_hub()
        waker = _wakers.get(hub)
        if waker is None or waker._pid != os.getpid():
            waker = _wakers[hub] = _EventletWaker()
        self._waker = waker
        self._event = _green_module("eventlet.event").Event()

    def wake(self) -> None:
        self._waker.call_soon(self._send)

    def _send(self) -> None:
        if not self._event.ready():
            self._event.send(True)

    def block(self, timeout: float | None) -> bool:
        return bool(self._event.wait(timeout))


def _park() -> _Parking:
    if library() == "gevent":
        return _GeventParking()
    return _EventletParking()


class _Waiters:
    """Greenlets parked until some state changes, and the real lock guarding it."""

    __slots__ = ("_lock", "_parked")

    def __init__(self) -> None:
        self._lock = lock()
        self._parked: list[_Parking] = []

    def wake_all(self) -> None:
        if self._parked:  # a waiter publishes itself before its last check
            with self._lock:
                parked, self._parked = self._parked, []
            for parking in parked:
                parking.wake()

    def wait(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Park until ``ready()`` (checked after each wake-up); False on timeout."""
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            parking = _park()
            with self._lock:
                self._parked.append(parking)
            try:
                if ready():
                    return True
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                parking.block(remaining)
                if ready():  # the usual case: no need to park again to check it
                    return True
            finally:
                with self._lock:
                    if parking in self._parked:
                        self._parked.remove(parking)


class _CrossEvent:
    """``threading.Event`` for a patched process: set from any thread, waited for by
    greenlets without holding up the others."""

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters = _Waiters()

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        self._waiters.wake_all()

    def wait(self, timeout: float | None = None) -> bool:
        return self._flag or self._waiters.wait(self.is_set, timeout)


class _CrossQueue(Generic[T]):
    """``queue.SimpleQueue`` for a patched process: a real one, whose blocking ``get``
    parks the greenlet instead of the thread."""

    __slots__ = ("_queue", "_waiters")

    def __init__(self) -> None:
        self._queue: SimpleQueue[T] = _original("queue", "SimpleQueue")()
        self._waiters = _Waiters()

    def put(self, item: T) -> None:
        self._queue.put(item)
        self._waiters.wake_all()

    def get_nowait(self) -> T:
        return self._queue.get_nowait()

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        queue = self._queue
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            try:
                return queue.get_nowait()
            except Empty:
                remaining = None if deadline is None else deadline - monotonic()
                if not block or not self._waiters.wait(lambda: not queue.empty(), remaining):
                    raise
            # Woken with an item there: take it, unless another greenlet was first.

    def qsize(self) -> int:
        return self._queue.qsize()

    def empty(self) -> bool:
        return self._queue.empty()


def event() -> threading.Event:
    """A ``threading.Event`` that the trio thread sets (one whose ``wait`` lets the
    other greenlets run, under eventlet or gevent)."""
    if library() is None:
        return threading.Event()
    return _CrossEvent()  # type: ignore[return-value]


def simple_queue() -> SimpleQueue[Any]:
    """A ``queue.SimpleQueue`` that the trio thread fills (one whose ``get`` lets the
    other greenlets run, under eventlet or gevent)."""
    if library() is None:
        return SimpleQueue()
    return _CrossQueue()  # type: ignore[return-value]


class _GreenPoller:
    """``select.poll`` for one socket and ``POLLIN``, waiting in the greenlet's hub."""

    __slots__ = ("_fd",)

    def __init__(self, sock: socket.socket) -> None:
        self._fd = sock.fileno()

    def poll(self, timeout_ms: float | None = None) -> list[tuple[int, int]]:
        timeout = None if timeout_ms is None else timeout_ms / 1000
        try:
            if library() == "gevent":
                _green_module("gevent.socket").wait_read(self._fd, timeout, _Timeout)
            else:
                _green_module("eventlet.hubs").trampoline(
                    self._fd, read=True, timeout=timeout, timeout_exc=_Timeout
                )
        except _Timeout:
            return []
        return [(self._fd, select.POLLIN)]


class _Timeout(Exception):
    pass


def poller(sock: socket.socket) -> select.poll:
    """A ``select.poll`` with ``sock`` registered for reading, for a caller to wait
    for the socket in (one whose ``poll`` lets the other greenlets run, under
    eventlet or gevent: eventlet has no ``select.poll``, gevent's is its own)."""
    if library() is None:
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        return poll
    return _GreenPoller(sock)  # type: ignore[return-value]


# ---------------------------------------------------------------------- portal calls


class _TrioThreadLike(Protocol):
    portal: BlockingPortal
    token: trio.lowlevel.TrioToken


class _Outcome(Generic[T]):
    """The result of a call into the trio thread, and the event announcing it."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = _CrossEvent()
        self.value: T | None = None
        self.error: BaseException | None = None

    def unwrap(self) -> T:
        self.done.wait()
        if self.error is not None:
            try:
                raise self.error
            finally:
                self.error = None
        return self.value  # type: ignore[return-value]


def _spawn(
    thread: _TrioThreadLike,
    outcome: _Outcome[Any],
    task: Callable[[], Awaitable[None]],
    name: str = "trillium call",
) -> None:
    """Run ``task`` as a trio system task (one outlives its caller's call; the
    thread's shutdown cancels it); a failure to start lands in ``outcome``."""

    def spawn() -> None:
        try:
            trio.lowlevel.spawn_system_task(task, name=name)
        except BaseException as exc:  # the run is ending: never raise in a callback
            outcome.error = exc
            outcome.done.set()

    thread.token.run_sync_soon(spawn)


def call(thread: _TrioThreadLike, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``thread.portal.call(fn, *args)``, whose wait lets other greenlets run."""
    if library() is None:
        return thread.portal.call(fn, *args)
    outcome: _Outcome[T] = _Outcome()

    async def task() -> None:
        try:
            outcome.value = await fn(*args)
        except Exception as exc:
            outcome.error = exc
        except BaseException:
            outcome.error = RuntimeError("the trio thread is stopping")
            raise
        finally:
            outcome.done.set()

    _spawn(thread, outcome, task)
    return outcome.unwrap()


class _TaskStatus:
    __slots__ = ("_outcome",)

    def __init__(self, outcome: _Outcome[None]) -> None:
        self._outcome = outcome

    def started(self, value: object = None) -> None:
        self._outcome.done.set()


def start_task(
    thread: _TrioThreadLike, fn: Callable[..., Awaitable[object]], *args: Any, name: str
) -> None:
    """``thread.portal.start_task(fn, *args, name=name)``: returns once ``fn`` called
    ``task_status.started()`` (and raises what it raised before that), leaving it
    running in the trio thread; its wait lets other greenlets run."""
    if library() is None:
        thread.portal.start_task(fn, *args, name=name)
        return
    outcome: _Outcome[None] = _Outcome()

    async def task() -> None:
        try:
            await fn(*args, task_status=_TaskStatus(outcome))
        except Exception as exc:
            if outcome.done.is_set():  # after started(): nobody to tell but the log
                logging.getLogger("trillium").exception("%s failed", name)
            else:
                outcome.error = exc
        except BaseException:
            if not outcome.done.is_set():
                outcome.error = RuntimeError("the trio thread is stopping")
            raise
        finally:
            outcome.done.set()

    _spawn(thread, outcome, task, name)
    outcome.unwrap()
