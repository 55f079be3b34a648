"""The ASGI server: ``trillium.asgi.serve`` and ``trillium serve module:app``.

It hosts any ASGI 3 application (FastAPI, Starlette, Django, Quart, a bare
``async def app(scope, receive, send)``) on trio, or on asyncio through anyio::

    import trio
    from trillium.asgi import serve

    async def app(scope, receive, send):
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            while (event := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": event.get("text") or "?"})
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"Hello"})

    async def main():
        async with serve(app, "127.0.0.1", 8000) as server:
            await server.serve_forever()

    trio.run(main)

Each TCP (or Unix socket, or TLS) connection is read with h11. A plain request
becomes an ``http`` scope (``trillium.asgi.http``); a WebSocket upgrade is checked
by ``trillium.core``'s ``ServerHandshake`` and, once the application accepts, runs
on the same connection manager as ``trillium.serve`` (``trillium.asgi.bridge``). The
lifespan protocol runs around it all (``trillium.asgi.lifespan``).

Shutting down (``close()``, leaving the ``async with``, or SIGINT/SIGTERM under
``run()``): the server stops accepting, closes idle keep-alive connections, closes
every WebSocket with 1001, lets in-flight requests finish for
``timeout_graceful_shutdown`` seconds, cancels what is left, then runs the lifespan
shutdown. A second signal skips the wait.
"""

from __future__ import annotations

import os
import signal
import ssl as ssl_module
import stat
import sys
from collections.abc import Coroutine
from contextlib import AsyncExitStack, suppress
from types import TracebackType
from typing import Any, Literal, overload

import anyio
import anyio.abc
import h11
from anyio.streams.tls import TLSStream

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from ..connection import _STREAM_ERRORS, _only_contains, accept_forever
from ..core.handshake import ServerHandshake
from ..exceptions import InvalidHandshake
from .bridge import Address, WebSocketSession, build_ws_scope, serve_websocket
from .config import Config
from .http import HTTPCycle, build_http_scope, next_event, serve_http_request
from .lifespan import Lifespan
from .types import ASGIApp

__all__ = ["ASGIServer", "run", "serve"]


def _is_websocket_upgrade(request: h11.Request) -> bool:
    if request.method != b"GET":
        return False
    for name, value in request.headers:
        if name == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


def _head_size(request: h11.Request) -> int:
    return len(request.target) + sum(len(k) + len(v) + 4 for k, v in request.headers.raw_items())


def _raw_request(request: h11.Request) -> bytes:
    """The request head again, as bytes, for ``ServerHandshake`` to parse and check."""
    lines = [b"%s %s HTTP/%s" % (request.method, request.target, request.http_version)]
    lines.extend(name + b": " + value for name, value in request.headers.raw_items())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _address(value: Any) -> Address:
    if isinstance(value, tuple) and len(value) >= 2:
        return (str(value[0]), int(value[1]))
    return None


class ASGIServer:
    """A running ASGI server: its ``listeners`` and ``sockets``, ``state``, ``close()``.

    Made by ``serve``; use it as an async context manager, or start it in a nursery
    with ``await nursery.start(trillium.asgi.serve, app, host, port)``.
    ``websockets`` holds the WebSocket sessions in progress and ``state`` the
    lifespan state::

        async with trillium.asgi.serve(app, "127.0.0.1", 0) as server:
            print("listening on", server.urls)
            await trio.sleep(60)
            await server.close()   # graceful: 1001 to WebSockets, requests finish
    """

    def __init__(self, app: ASGIApp, config: Config) -> None:
        self.app = app
        self.config = config
        self.logger = config.logger
        self.listeners: list[anyio.abc.SocketListener] = []
        self.state: dict[str, Any] = {}
        self.lifespan = Lifespan(app, config, self.state) if config.lifespan != "off" else None
        #: WebSocket sessions in progress.
        self.websockets: set[WebSocketSession] = set()
        self._handlers: dict[int, anyio.CancelScope] = {}
        self._no_handlers: anyio.Event | None = None
        self._idle: set[anyio.CancelScope] = set()
        self._stack: AsyncExitStack | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._accepting = anyio.CancelScope()
        self._grace: anyio.CancelScope | None = None
        self._closing = False
        self._forced = False
        self._closed = anyio.Event()

    @property
    def sockets(self) -> list[Any]:
        """The listening sockets (``socket.socket`` objects)."""
        return [lst.extra(anyio.abc.SocketAttribute.raw_socket) for lst in self.listeners]

    @property
    def urls(self) -> list[str]:
        """Where the server listens, as URLs (``http://127.0.0.1:8000``, ``unix:/path``)."""
        scheme = self.config.scheme("http")
        urls = []
        for sock in self.sockets:
            name = sock.getsockname()
            if isinstance(name, tuple):
                host = f"[{name[0]}]" if ":" in name[0] else name[0]
                urls.append(f"{scheme}://{host}:{name[1]}")
            else:
                urls.append(f"{scheme}+unix:{name}")
        return urls

    # ---------------------------------------------------------------- lifecycle

    async def _make_listeners(self) -> list[anyio.abc.SocketListener]:
        config = self.config
        if config.sock is not None:
            return [await anyio.abc.SocketListener.from_socket(config.sock)]
        if config.uds is not None:
            with suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.stat(config.uds).st_mode):
                    os.unlink(config.uds)  # a stale socket from a previous run
            return [await anyio.create_unix_listener(config.uds)]
        multi = await anyio.create_tcp_listener(local_host=config.host, local_port=config.port)
        return list(multi.listeners)  # type: ignore[arg-type]

    async def __aenter__(self) -> ASGIServer:
        self.config.ssl_context()  # load certificates now: a bad file fails here
        try:
            await self._start()
        except BaseExceptionGroup as group:
            # A failed startup (lifespan, or a port in use) raises as itself.
            leaves = _leaves(group)
            if len(leaves) == 1:
                raise leaves[0] from None
            raise
        return self

    async def _start(self) -> None:
        async with AsyncExitStack() as stack:
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._task_group.cancel_scope.cancel)
            if self.lifespan is not None:
                self._task_group.start_soon(self.lifespan.run, name="trillium lifespan")
                await self.lifespan.startup()
            # Listen after startup, so that no connection arrives before the app is ready.
            self.listeners = await self._make_listeners()
            for listener in self.listeners:
                stack.push_async_callback(listener.aclose)
                self._task_group.start_soon(self._accept_loop, listener)
            for url in self.urls:
                self.logger.info("trillium: serving ASGI application on %s", url)
            self._stack = stack.pop_all()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        with anyio.CancelScope(shield=True):
            await self.close()
        assert self._stack is not None
        try:
            return await self._stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if exc is not None and _only_contains(group, exc):
                return False
            raise

    async def run(self, *, task_status: anyio.abc.TaskStatus[ASGIServer]) -> None:
        """Serve until cancelled, reporting ``self`` to ``nursery.start`` once listening."""
        async with self:
            task_status.started(self)
            await self.serve_forever()

    async def serve_forever(self) -> None:
        """Wait until the server is closed (by ``close()``, a signal or cancellation)."""
        await self._closed.wait()

    async def close(self) -> None:
        """Shut down gracefully (see the module's documentation); idempotent."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._accepting.cancel()
        for listener in self.listeners:
            with suppress(*_STREAM_ERRORS):
                await listener.aclose()
        if self.config.uds is not None:
            with suppress(OSError):
                os.unlink(self.config.uds)
        for scope in list(self._idle):
            scope.cancel()  # keep-alive connections waiting for a next request
        grace = self.config.timeout_graceful_shutdown
        with anyio.CancelScope() as self._grace:
            if self._forced:
                self._grace.cancel()
            async with anyio.create_task_group() as tg:
                # WebSockets get their 1001 while in-flight requests finish: both
                # within the same grace period.
                for session in list(self.websockets):
                    tg.start_soon(session.shutdown)
                if self._handlers:
                    self._no_handlers = anyio.Event()
                    with anyio.move_on_after(_timeout(grace)):
                        await self._no_handlers.wait()
                tg.cancel_scope.cancel()
        if self._handlers:
            self.logger.info("cancelling %d connection(s) still running", len(self._handlers))
            for scope in list(self._handlers.values()):
                scope.cancel()
            with anyio.move_on_after(5):
                while self._handlers:
                    await anyio.sleep(0.01)
        if self.lifespan is not None and not self._forced:
            await self.lifespan.shutdown()
        self._closed.set()

    def abort(self) -> None:
        """Skip the rest of a graceful shutdown: cancel every connection now."""
        self._forced = True
        if self._grace is not None:
            self._grace.cancel()
        for scope in list(self._handlers.values()):
            scope.cancel()

    # ---------------------------------------------------------------- connections

    async def _accept_loop(self, listener: anyio.abc.SocketListener) -> None:
        assert self._task_group is not None
        with self._accepting:
            await accept_forever(listener, self._task_group, self._handle_stream, self.logger)

    async def _handle_stream(self, stream: anyio.abc.ByteStream) -> None:
        # Shielded: on shutdown, close() decides when (and whether) to cancel it.
        scope = anyio.CancelScope(shield=True)
        key = id(scope)
        self._handlers[key] = scope
        try:
            with scope:
                await self._serve_connection(stream)
        except Exception:
            self.logger.exception("connection handler failed")
        finally:
            del self._handlers[key]
            if not self._handlers and self._no_handlers is not None:
                self._no_handlers.set()
            with anyio.CancelScope(shield=True), suppress(*_STREAM_ERRORS):
                await stream.aclose()

    async def _serve_connection(self, stream: anyio.abc.ByteStream) -> None:
        config = self.config
        context = config.ssl_context()
        if context is not None:
            with anyio.move_on_after(_timeout(config.open_timeout)):
                try:
                    stream = await TLSStream.wrap(
                        stream, server_side=True, ssl_context=context, standard_compatible=False
                    )
                except (ssl_module.SSLError, *_STREAM_ERRORS) as exc:
                    self.logger.debug("TLS handshake failed: %s", exc)
                    return
            if not isinstance(stream, TLSStream):
                return  # the TLS handshake timed out
        client = _address(stream.extra(anyio.abc.SocketAttribute.remote_address, None))
        server = _address(stream.extra(anyio.abc.SocketAttribute.local_address, None))
        if config.uds is not None:
            client, server = None, (config.uds, None)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_size)
        timeout = _timeout(config.open_timeout)
        while True:
            if self._closing:
                return
            idle = anyio.CancelScope(deadline=anyio.current_time() + timeout)
            self._idle.add(idle)
            try:
                with idle:
                    event = await next_event(conn, stream)
            except h11.RemoteProtocolError as exc:
                await self._bad_request(conn, stream, exc)
                return
            finally:
                self._idle.discard(idle)
            if idle.cancelled_caught or not isinstance(event, h11.Request):
                return  # idle too long, shutting down, or the client left
            if _head_size(event) > config.max_header_size:
                # h11 only bounds a head that arrives in pieces; this bounds them all.
                error = h11.RemoteProtocolError("request head too large", 431)
                await self._bad_request(conn, stream, error)
                return
            if _is_websocket_upgrade(event):
                await self._serve_websocket(event, conn, stream, client, server)
                return
            scope = build_http_scope(event, config, client, server, state=self.state)
            cycle = HTTPCycle(conn, stream, scope, config, closing=lambda: self._closing)
            if not await serve_http_request(self.app, cycle):
                return
            timeout = config.timeout_keep_alive

    async def _bad_request(
        self, conn: h11.Connection, stream: anyio.abc.ByteStream, exc: h11.RemoteProtocolError
    ) -> None:
        self.logger.debug("invalid HTTP request: %s", exc)
        status = exc.error_status_hint
        body = b"Invalid HTTP request received.\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            data = conn.send(h11.Response(status_code=status, headers=headers))
            data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            return
        with suppress(*_STREAM_ERRORS):
            await stream.send(data)

    async def _serve_websocket(
        self,
        event: h11.Request,
        conn: h11.Connection,
        stream: anyio.abc.ByteStream,
        client: Address,
        server: Address,
    ) -> None:
        handshake = ServerHandshake(max_header_size=self.config.max_header_size)
        try:
            request = handshake.receive_data(_raw_request(event))
        except InvalidHandshake as exc:
            self.logger.info("invalid WebSocket upgrade: %s", exc)
            with suppress(*_STREAM_ERRORS):
                await stream.send(handshake.reject_invalid(exc))
            return
        assert request is not None
        # Whatever followed the request head in the same reads: the first frames.
        initial_data = bytes(conn.trailing_data[0])
        scope = build_ws_scope(request, self.config, client, server, state=self.state)
        session = WebSocketSession(
            stream, handshake, request, scope, self.config, initial_data=initial_data
        )
        self.websockets.add(session)
        try:
            await serve_websocket(self.app, session)
        finally:
            self.websockets.discard(session)


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves.extend(_leaves(exc))
        else:
            leaves.append(exc)
    return leaves


def _timeout(value: float | None) -> float:
    return value if value is not None else float("inf")


@overload
def serve(
    app: ASGIApp,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    task_status: anyio.abc.TaskStatus[ASGIServer],
    **options: Any,
) -> Coroutine[Any, Any, None]: ...


@overload
def serve(
    app: ASGIApp, host: str | None = "127.0.0.1", port: int = 8000, **options: Any
) -> ASGIServer: ...


def serve(
    app: ASGIApp,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    task_status: anyio.abc.TaskStatus[ASGIServer] | None = None,
    **options: Any,
) -> ASGIServer | Coroutine[Any, Any, None]:
    """Serve the ASGI application ``app`` on ``host``:``port``.

    Use it as an async context manager, or start it in a nursery (it returns once
    listening, with the server)::

        async with trillium.asgi.serve(app, "127.0.0.1", 8000) as server:
            await server.serve_forever()

        server = await nursery.start(trillium.asgi.serve, app, "127.0.0.1", 0)

    ``options`` are the fields of ``Config``: ``uds``, ``sock``, ``ssl_certfile``,
    ``ssl_keyfile``, ``ssl``, ``root_path``, ``lifespan``, ``access_log``, the
    WebSocket limits and timeouts of ``trillium.serve`` (``max_size``,
    ``max_queue``, ``write_limit``, ``ping_interval``, ``ping_timeout``,
    ``close_timeout``), ``open_timeout``, ``timeout_keep_alive``,
    ``timeout_graceful_shutdown``, ``max_header_size``, ``server_header``,
    ``logger``. Startup failures (a port in use, a lifespan startup that fails)
    raise from ``async with``.

    A whole round trip, server and client in one program::

        >>> import trio, trillium
        >>> async def shout(scope, receive, send):
        ...     if scope["type"] == "websocket":
        ...         await receive()                                # websocket.connect
        ...         await send({"type": "websocket.accept"})
        ...         event = await receive()                        # websocket.receive
        ...         await send({"type": "websocket.send", "text": event["text"].upper()})
        >>> async def main():
        ...     async with serve(shout, "127.0.0.1", 0, lifespan="off") as server:
        ...         port = server.sockets[0].getsockname()[1]
        ...         async with trillium.connect(f"ws://127.0.0.1:{port}/") as ws:
        ...             await ws.send("hello")
        ...             return await ws.recv()
        >>> trio.run(main)
        'HELLO'
    """
    server = ASGIServer(app, Config(host=host, port=port, **options))
    if task_status is not None:
        return server.run(task_status=task_status)
    return server


async def _serve_until_signalled(app: ASGIApp, config: Config) -> None:
    async with ASGIServer(app, config) as server, anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if not server._closing:
                        name = signal.Signals(signum).name
                        server.logger.info("%s received: shutting down", name)
                        tg.start_soon(server.close)
                    else:
                        server.logger.info("second signal: not waiting any longer")
                        server.abort()

        tg.start_soon(watch_signals)
        await server.serve_forever()
        tg.cancel_scope.cancel()


def run(
    app: ASGIApp,
    host: str | None = "127.0.0.1",
    port: int = 8000,
    *,
    backend: Literal["trio", "asyncio"] = "trio",
    install_signal_handlers: bool = True,
    **options: Any,
) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then shut down gracefully (blocking).

    This is what ``trillium serve module:app`` calls. ``backend`` picks the event
    loop: trio (the default) or asyncio. ``options`` are those of ``serve``::

        from trillium.asgi import run
        from myproject import app

        run(app, "0.0.0.0", 8000, root_path="/api")
    """
    config = Config(host=host, port=port, **options)

    async def main() -> None:
        if install_signal_handlers:
            await _serve_until_signalled(app, config)
        else:
            async with ASGIServer(app, config) as server:
                await server.serve_forever()

    with suppress(KeyboardInterrupt):
        anyio.run(main, backend=backend)
