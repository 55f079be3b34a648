"""The few event-loop primitives on the hot paths, looked up once per event loop.

anyio runs the same code on trio and asyncio, but each of its calls first looks up
the running backend (through sniffio) and wraps trio's objects in its own, which
costs about as much as the call itself. The connection manager calls a checkpoint
and sets an event for every message, and opens a task group and several cancel
scopes for every connection, so it takes these from the backend directly: trio's
own on trio, anyio's on asyncio, and an ``Event`` of trillium's own on both.
Streams, listeners and ``fail_after`` (whose exception differs between the two) go
through anyio. The two sets behave the same for what trillium uses of them.

There are two sets in all, built once and shared by every connection: a server
holds thousands of connections, and each one's copy would be a few hundred bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import sniffio

__all__ = ["Backend", "current_backend"]


@dataclass(frozen=True)
class Backend:
    checkpoint: Callable[[], Awaitable[None]]
    checkpoint_if_cancelled: Callable[[], Awaitable[None]]
    Event: Callable[[], Any]
    CancelScope: Callable[..., Any]
    move_on_after: Callable[[float], Any]
    open_task_group: Callable[[], Any]


_backends: dict[str, Backend] = {}


def current_backend() -> Backend:
    """The primitives of the event loop running this task."""
    library = sniffio.current_async_library()
    backend = _backends.get(library)
    if backend is None:
        backend = _backends[library] = _trio_backend() if library == "trio" else _anyio_backend()
    return backend


def _trio_backend() -> Backend:
    import trio

    return Backend(
        trio.lowlevel.checkpoint,
        trio.lowlevel.checkpoint_if_cancelled,
        _trio_event_class(),
        trio.CancelScope,
        trio.move_on_after,
        trio.open_nursery,
    )


def _anyio_backend() -> Backend:
    return Backend(
        anyio.lowlevel.checkpoint,
        anyio.lowlevel.checkpoint_if_cancelled,
        _asyncio_event_class(),
        anyio.CancelScope,
        anyio.move_on_after,
        anyio.create_task_group,
    )


def _trio_event_class() -> type:
    """``trio.Event``'s behaviour (``set``, ``is_set``, ``wait``), in less memory.

    Every ``trio.Event`` allocates a ``set`` for its waiters up front (about 220
    bytes), and each waiting task holds a closure to leave it if cancelled (another
    220). A connection keeps a few events for its whole life (closed, message
    arrived, ...), and most of them never get a waiter, or get exactly one (recv(),
    the reader, the writer each wait on their own): this one keeps the first waiter
    in a slot, leaving through a bound method, and only further waiters in a list.
    Built on trio's documented low-level API (``wait_task_rescheduled``,
    ``reschedule``), as ``trio.Event`` is.
    """
    import trio
    from trio.lowlevel import (
        Abort,
        checkpoint,
        current_task,
        enable_ki_protection,
        reschedule,
        wait_task_rescheduled,
    )

    class Event:
        __slots__ = ("_first", "_flag", "_more")

        def __init__(self) -> None:
            self._flag = False
            self._first: trio.lowlevel.Task | None = None  # usually the only waiter
            self._more: list[trio.lowlevel.Task] | None = None

        def is_set(self) -> bool:
            return self._flag

        @enable_ki_protection
        def set(self) -> None:
            if not self._flag:
                self._flag = True
                first, more = self._first, self._more
                self._first = self._more = None
                if first is not None:
                    reschedule(first)
                for task in more or ():
                    reschedule(task)

        def wait(self) -> Awaitable[None]:
            # A plain method that returns what to await, rather than a coroutine
            # function: a task waiting on the event holds one frame fewer (about
            # 270 bytes). Callers await it at once, as ``await event.wait()``.
            if self._flag:
                return checkpoint()
            task = current_task()
            if self._first is None:
                self._first = task
                return wait_task_rescheduled(self._forget_first)
            if self._more is None:
                self._more = []
            more = self._more
            more.append(task)

            def abort(_: Any) -> Abort:
                more.remove(task)
                return Abort.SUCCEEDED

            return wait_task_rescheduled(abort)

        def _forget_first(self, _: Any) -> Abort:
            """The first waiter was cancelled: it no longer waits."""
            self._first = None
            return Abort.SUCCEEDED

    return Event


def _asyncio_event_class() -> type:
    """``anyio.Event``'s behaviour on asyncio, made without a lookup.

    Making an ``anyio.Event`` first asks sniffio which event loop runs, then makes
    the asyncio backend's own class, which wraps an ``asyncio.Event``; ``recv()``
    makes one every time it waits. This makes the same wrapper directly (an echo
    server's CPU per round trip: 73 µs instead of 76). As anyio's, ``wait()`` on a
    set event is still a checkpoint, and a cancelled waiter leaves the
    ``asyncio.Event`` (anyio's cancel scopes cancel the task, which
    ``asyncio.Event.wait`` handles).
    """
    import asyncio

    class Event:
        __slots__ = ("_event",)

        def __init__(self) -> None:
            self._event = asyncio.Event()

        def is_set(self) -> bool:
            return self._event.is_set()

        def set(self) -> None:
            self._event.set()

        def wait(self) -> Awaitable[Any]:
            # A plain method returning what to await, as the trio class's.
            if self._event.is_set():
                return anyio.lowlevel.checkpoint()
            return self._event.wait()

    return Event
