"""The ASGI lifespan protocol: startup before the first connection, shutdown after the last.

The server runs the application once with a ``lifespan`` scope for its whole life
(https://asgi.readthedocs.io/en/latest/specs/lifespan.html). It sends
``lifespan.startup`` and waits for ``lifespan.startup.complete`` (or
``.failed``) before it accepts connections, and ``lifespan.shutdown`` once they are
all closed. The scope's ``state`` dict is what the application stores there at
startup; every connection's scope gets a shallow copy of it.

In "auto" mode an application that raises before it completes startup (because it
doesn't speak lifespan) is served anyway, as uvicorn does; in "on" mode that stops
the server.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import anyio

from .config import Config
from .types import ASGIApp, Message

__all__ = ["Lifespan", "LifespanFailure"]


class LifespanFailure(RuntimeError):
    """The application's startup (or, in "on" mode, its lifespan support) failed."""


class Lifespan:
    """The lifespan conversation with one application.

    ``run()`` is the application's task; ``startup()`` and ``shutdown()`` are called
    by the server, which starts ``run()`` in its task group first::

        lifespan = Lifespan(app, config)
        task_group.start_soon(lifespan.run)
        await lifespan.startup()
        ...  # serve
        await lifespan.shutdown()
    """

    def __init__(self, app: ASGIApp, config: Config, state: dict[str, Any] | None = None) -> None:
        self.app = app
        self.config = config
        self.logger = config.logger
        #: What the application keeps in ``scope["state"]``; copied into every scope.
        self.state: dict[str, Any] = state if state is not None else {}
        #: False once the application showed it doesn't speak lifespan ("auto" mode).
        self.supported = True
        self.error: str | None = None
        self._send_events, self._events = anyio.create_memory_object_stream[Message](2)
        self._started = anyio.Event()
        self._startup_complete = False
        self._shut_down = anyio.Event()
        self._app_exited = False

    async def run(self) -> None:
        """Run the application with the lifespan scope until it returns."""
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except Exception as exc:
            if not self._startup_complete and self.config.lifespan == "auto":
                self.logger.info("ASGI 'lifespan' protocol appears unsupported.")
                self.supported = False
            else:
                self.logger.error("Exception in 'lifespan' protocol", exc_info=True)
                self.error = self.error or f"lifespan failed: {exc!r}"
        else:
            if not self._startup_complete:
                if self.config.lifespan == "auto":
                    self.logger.info("ASGI 'lifespan' protocol appears unsupported.")
                    self.supported = False
                else:
                    self.error = self.error or "the application returned during startup"
        finally:
            self._app_exited = True
            self._started.set()
            self._shut_down.set()
            self._send_events.close()
            self._events.close()

    async def _receive(self) -> Message:
        return await self._events.receive()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._startup_complete = True
            self._started.set()
        elif kind == "lifespan.startup.failed":
            self.error = message.get("message") or "lifespan startup failed"
            self._started.set()
        elif kind == "lifespan.shutdown.complete":
            self._shut_down.set()
        elif kind == "lifespan.shutdown.failed":
            self.error = message.get("message") or "lifespan shutdown failed"
            self._shut_down.set()
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")

    async def startup(self) -> None:
        """Send ``lifespan.startup``; raise LifespanFailure unless the app completes it."""
        self.logger.info("Waiting for application startup.")
        # If the application already returned, run() has recorded what happened.
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._send_events.send({"type": "lifespan.startup"})
        await self._started.wait()
        if self.error is not None:
            self.logger.error("Application startup failed: %s", self.error)
            raise LifespanFailure(self.error)
        if self._startup_complete:
            self.logger.info("Application startup complete.")

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the application to finish it."""
        if not self.supported or self._app_exited:
            return
        self.logger.info("Waiting for application shutdown.")
        try:
            await self._send_events.send({"type": "lifespan.shutdown"})
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return
        await self._shut_down.wait()
        if self.error is not None:
            self.logger.error("Application shutdown failed: %s", self.error)
        else:
            self.logger.info("Application shutdown complete.")
