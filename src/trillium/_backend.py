"""The few event-loop primitives on the hot paths, bound once per connection.

anyio runs the same code on trio and asyncio, but each of its calls first looks up
the running backend (through sniffio) and wraps trio's objects in its own, which
costs about as much as the call itself. The connection manager calls a checkpoint
and sets an event for every message, and opens a task group and several cancel
scopes for every connection, so it takes these from the backend directly, once,
when a connection is made: trio's own on trio, anyio's elsewhere. Streams,
listeners and ``fail_after`` (whose exception differs between the two) go through
anyio. The two sets behave the same for what trillium uses of them.
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


def current_backend() -> Backend:
    """The primitives of the event loop running this task."""
    if sniffio.current_async_library() == "trio":
        import trio

        return Backend(
            trio.lowlevel.checkpoint,
            trio.lowlevel.checkpoint_if_cancelled,
            trio.Event,
            trio.CancelScope,
            trio.move_on_after,
            trio.open_nursery,
        )
    return Backend(
        anyio.lowlevel.checkpoint,
        anyio.lowlevel.checkpoint_if_cancelled,
        anyio.Event,
        anyio.CancelScope,
        anyio.move_on_after,
        anyio.create_task_group,
    )
