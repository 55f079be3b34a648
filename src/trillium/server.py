"""The trio-native server: ``trillium.serve`` and ``trillium.unix_serve``.

The names and behaviour are those of the ``websockets`` asyncio server, with
structured concurrency: the server lives in a nursery, either one it opens itself
(``async with serve(...)``) or the caller's (``await nursery.start(serve, ...)``)::

    import trio, trillium

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with trillium.serve(echo, "127.0.0.1", 8765) as server:
            await server.serve_forever()

    trio.run(main)

Every connection gets its own task group (reader, writer, keepalive and the
handler). A handler that raises closes its connection with 1011 and is logged; it
never disturbs the server or the other connections.
"""

from __future__ import annotations

import http
import inspect
import logging
import ssl as ssl_module
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, suppress
from types import TracebackType
from typing import Any, overload

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from . import __version__
from ._backend import current_backend
from .connection import (
    _STREAM_ERRORS,
    Connection,
    WaterMarks,
    _only_contains,
    _water_marks,
    accept_forever,
    by_deadline,
    read_handshake,
    send_all,
)
from .core.close import CloseCode
from .core.deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from .core.handshake import Headers, Request, Response, ServerHandshake, serialize_response
from .core.headers import ExtensionHeader
from .core.protocol import SERVER, Protocol
from .exceptions import ConnectionClosed, InvalidHandshake

__all__ = ["ServerConnection", "WebSocketServer", "serve", "unix_serve"]

logger = logging.getLogger("trillium")

Handler = Callable[["ServerConnection"], Awaitable[None]]
ProcessRequest = Callable[
    ["ServerConnection", Request], "Response | Awaitable[Response | None] | None"
]
ProcessResponse = Callable[
    ["ServerConnection", Request, Response], "Response | Awaitable[Response | None] | None"
]
SelectSubprotocol = Callable[["ServerConnection", Sequence[str]], "str | None"]
Origin = str | None

SERVER_HEADER = f"Python trillium/{__version__}"


class ServerConnection(Connection):
    """A connection accepted by ``serve``: ``Connection`` plus ``respond()``."""

    __slots__ = ("extension",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The negotiated permessage-deflate, if any.
        self.extension: PerMessageDeflate | None = None

    def respond(self, status: int, text: str) -> Response:
        """A plain-text response, to return from ``process_request`` to reject a client.

        ::

            def process_request(connection, request):
                if request.headers.get("Authorization") != "Bearer secret":
                    return connection.respond(401, "Unauthorized\\n")
        """
        body = text.encode("utf-8")
        headers = Headers(
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ]
        )
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        return Response(status, phrase, headers, body)


class WebSocketServer:
    """A running server: its ``connections``, its listening ``sockets``, ``close()``.

    Made by ``serve`` / ``unix_serve``; use it as an async context manager, or start
    it in a nursery with ``await nursery.start(trillium.serve, handler, host, port)``.
    """

    def __init__(
        self,
        handler: Handler,
        make_listeners: Callable[[], Awaitable[list[anyio.abc.SocketListener]]],
        *,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        compression: str | ServerPerMessageDeflateFactory | None = "deflate",
        origins: Sequence[Origin] | None = None,
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: SelectSubprotocol | None = None,
        process_request: ProcessRequest | None = None,
        process_response: ProcessResponse | None = None,
        server_header: str | None = SERVER_HEADER,
        open_timeout: float | None = 10,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float | None = 10,
        max_size: int | None = 2**20,
        max_queue: WaterMarks = 16,
        write_limit: WaterMarks = 2**15,
        max_header_size: int = 16 * 1024,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.deflate = ServerPerMessageDeflateFactory.from_compression(compression)
        _water_marks(max_queue), _water_marks(write_limit)  # fail now, not at 1st connection
        self.handler = handler
        self._make_listeners = make_listeners
        self.logger = logger if logger is not None else globals()["logger"]
        self.origins = origins
        self.subprotocols = list(subprotocols) if subprotocols is not None else None
        self.select_subprotocol = select_subprotocol
        self.process_request = process_request
        self.process_response = process_response
        self.server_header = server_header
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.max_size = max_size
        self.max_queue = max_queue
        self.write_limit = write_limit
        self.max_header_size = max_header_size
        self.ssl = ssl
        #: The open connections (handshake complete, handler running).
        self.connections: set[ServerConnection] = set()
        self.listeners: list[anyio.abc.SocketListener] = []
        self._stack: AsyncExitStack | None = None
        self._task_group: Any = None  # a trio nursery or an anyio task group
        self._accepting = anyio.CancelScope()
        self._closed = anyio.Event()
        self._closing = False

    @property
    def sockets(self) -> list[Any]:
        """The listening sockets (``socket.socket`` objects)."""
        return [lst.extra(anyio.abc.SocketAttribute.raw_socket) for lst in self.listeners]

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> WebSocketServer:
        # Listen first, outside the task group, so that a failure to bind raises
        # the OSError itself rather than an exception group.
        self.listeners = await self._make_listeners()
        async with AsyncExitStack() as stack:
            for listener in self.listeners:
                stack.push_async_callback(listener.aclose)
            backend = current_backend()
            self._task_group = await stack.enter_async_context(backend.open_task_group())
            for listener in self.listeners:
                self._task_group.start_soon(self._accept_loop, listener)
            for sock in self.sockets:
                self.logger.info("server listening on %s", _format_address(sock.getsockname()))
            self._stack = stack.pop_all()
        return self

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
                return False  # the body's own exception propagates, unwrapped
            raise

    async def run(self, *, task_status: anyio.abc.TaskStatus[WebSocketServer]) -> None:
        """Serve until cancelled, reporting ``self`` to ``nursery.start`` once listening."""
        async with self:
            task_status.started(self)
            await self.serve_forever()

    async def serve_forever(self) -> None:
        """Wait until the server is closed (by ``close()`` or by cancellation)."""
        await self._closed.wait()

    async def close(self, close_connections: bool = True) -> None:
        """Stop accepting, close every connection with 1001 and wait for their handlers.

        Handlers still running ``close_timeout`` seconds after their connection
        closed are cancelled.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._accepting.cancel()
        for listener in self.listeners:
            with suppress(*_STREAM_ERRORS):
                await listener.aclose()
        if close_connections and self.connections:
            async with anyio.create_task_group() as tg:
                for connection in list(self.connections):
                    tg.start_soon(connection.close, CloseCode.GOING_AWAY, "server shutting down")
        grace = self.close_timeout if self.close_timeout is not None else 10
        with anyio.move_on_after(grace):
            while self.connections:
                await anyio.sleep(0.01)
        for connection in list(self.connections):
            if connection._task_group is not None:  # the block that shields the handler
                connection._task_group.cancel_scope.cancel()
        self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until ``close()`` has finished."""
        await self._closed.wait()

    # ---------------------------------------------------------------- connections

    async def _accept_loop(self, listener: anyio.abc.SocketListener) -> None:
        assert self._task_group is not None
        with self._accepting:
            await accept_forever(listener, self._task_group, self._handle_stream, self.logger)

    async def _handle_stream(self, stream: anyio.abc.ByteStream) -> None:
        connection = ServerConnection(
            stream,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            max_queue=self.max_queue,
            write_limit=self.write_limit,
            logger=self.logger,
        )
        try:
            protocol = await self._handshake(connection)
        except Exception as exc:
            self.logger.info("opening handshake failed: %s", exc)
            protocol = None
        if protocol is None:
            with connection._backend.CancelScope(shield=True):
                await connection._abort()
            return
        self.connections.add(connection)
        try:
            # Shielded: when the server is cancelled, close() still closes this
            # connection with 1001 and gives the handler close_timeout to finish, then
            # cancels it through the task group's scope, which shields the block.
            async with connection._running(protocol, shield=True):
                try:
                    await self.handler(connection)
                except ConnectionClosed as exc:
                    # The peer went away while the handler used the connection:
                    # the normal end of a handler that doesn't catch it.
                    self.logger.debug("connection %s closed: %s", connection.id, exc)
                except Exception:
                    self.logger.error("connection handler failed", exc_info=True)
                    await connection.close(CloseCode.INTERNAL_ERROR, "")
        except Exception:
            # One of the connection's own tasks failed: a bug in trillium, not in the
            # handler (whose errors are handled above). Its stream is closed by now
            # and the handler cancelled; the server and the other connections go on.
            self.logger.error("connection %s failed", connection.id, exc_info=True)
        finally:
            self.connections.discard(connection)

    async def _handshake(self, connection: ServerConnection) -> Protocol | None:
        """Run the opening handshake within ``open_timeout``; None if it was refused.

        ``open_timeout`` is a deadline that each step that waits (TLS, reading the
        request, an async ``process_request`` or ``process_response``, sending the
        response) is given what is left of, raising TimeoutError when it runs out,
        rather than a cancel scope around the whole handshake: a request already in
        the socket and a response the kernel takes at once need no scope at all,
        and a scope costs as much as a tenth of a handshake.
        """
        timeout = self.open_timeout if self.open_timeout is not None else float("inf")
        deadline = time.monotonic() + timeout
        if self.ssl is not None:
            connection.stream = await by_deadline(
                deadline,
                TLSStream.wrap(
                    connection.stream,
                    server_side=True,
                    ssl_context=self.ssl,
                    standard_compatible=False,
                ),
            )
        stream = connection.stream
        handshake = ServerHandshake(max_header_size=self.max_header_size)
        try:
            request = await read_handshake(
                stream, handshake.receive_data, sent=True, deadline=deadline
            )
        except InvalidHandshake as exc:
            # A well-formed HTTP request that isn't an upgrade (a health check, a
            # page) still goes to process_request, which may answer it, as in
            # websockets; otherwise it gets the 400, 426 or 431 it deserves.
            answer = None
            if handshake.request is not None:
                connection.request = handshake.request
                answer = await self._process_request(connection, handshake, deadline)
            if answer is None:
                self.logger.info("invalid opening handshake: %s", exc)
                await _send_quietly(stream, handshake.reject_invalid(exc), deadline)
                return None
            assert handshake.request is not None
            request, response = handshake.request, answer
        else:
            connection.request = request
            response = await self._respond(connection, handshake, request, deadline)
        if self.server_header is not None and "Server" not in response.headers:
            response.headers["Server"] = self.server_header
        if self.process_response is not None:
            replaced = await _maybe_await(
                self.process_response(connection, request, response), deadline
            )
            if replaced is not None:
                response = replaced
        connection.response = response
        await send_all(stream, serialize_response(response), deadline=deadline)
        if response.status_code != 101:
            self.logger.info("rejected connection: HTTP %d", response.status_code)
            return None
        connection.subprotocol = response.headers.get("Sec-WebSocket-Protocol")
        # The handshake is done looking headers up: without their indexes, the
        # request and response that the connection keeps take half the memory.
        request.headers._drop_index()
        response.headers._drop_index()
        extensions = [connection.extension] if connection.extension is not None else []
        protocol = Protocol(SERVER, max_size=self.max_size, streaming=True, extensions=extensions)
        # Frames the client sent right behind its request go to the reader first.
        connection.initial_data = handshake.trailing_data
        return protocol

    async def _process_request(
        self, connection: ServerConnection, handshake: ServerHandshake, deadline: float
    ) -> Response | None:
        """The Response ``process_request`` answers with (completed), or None to go on."""
        if self.process_request is None:
            return None
        assert connection.request is not None
        response = await _maybe_await(
            self.process_request(connection, connection.request), deadline
        )
        if response is None:
            return None
        return handshake.reject_response(
            response.status_code,
            response.headers,
            response.body,
            response.reason_phrase or None,
        )

    async def _respond(
        self,
        connection: ServerConnection,
        handshake: ServerHandshake,
        request: Request,
        deadline: float,
    ) -> Response:
        """Decide: origins, process_request, subprotocol; the 101 or a rejection."""
        if self.origins is not None and request.origin not in self.origins:
            return handshake.reject_response(
                403, body=b"Failed to open a WebSocket connection: origin not allowed.\n"
            )
        if self.process_request is not None:
            rejection = await self._process_request(connection, handshake, deadline)
            if rejection is not None:
                return rejection
        subprotocol: str | None = None
        if self.select_subprotocol is not None:
            offered = request.subprotocols
            subprotocol = self.select_subprotocol(connection, offered)
            if subprotocol is not None and subprotocol not in offered:
                raise InvalidHandshake(f"select_subprotocol chose unoffered {subprotocol!r}")
        elif self.subprotocols and (offered := request.subprotocols):
            for candidate in offered:
                if candidate in self.subprotocols:
                    subprotocol = candidate
                    break
            else:
                body = (
                    "Failed to open a WebSocket connection: no supported subprotocol "
                    f"(offered {', '.join(offered)}; supported {', '.join(self.subprotocols)}).\n"
                )
                return handshake.reject_response(400, body=body.encode())
        extensions: list[ExtensionHeader] = []
        if self.deflate is not None:
            negotiated = self.deflate.negotiate(request.extensions)
            if negotiated is not None:
                answer, connection.extension = negotiated
                extensions.append(answer)
        return handshake.accept_response(request, subprotocol=subprotocol, extensions=extensions)


async def _send_quietly(stream: anyio.abc.ByteStream, data: bytes, deadline: float) -> None:
    with suppress(*_STREAM_ERRORS):
        await by_deadline(deadline, stream.send(data))


async def _maybe_await(value: Any, deadline: float) -> Any:
    """What a callback returned, awaited by ``deadline`` if it is awaitable."""
    if inspect.isawaitable(value):
        return await by_deadline(deadline, value)
    return value


def _format_address(address: Any) -> str:
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


@overload
def serve(
    handler: Handler,
    host: str | Sequence[str] | None = None,
    port: int | None = None,
    *,
    task_status: anyio.abc.TaskStatus[WebSocketServer],
    **kwargs: Any,
) -> Coroutine[Any, Any, None]: ...


@overload
def serve(
    handler: Handler,
    host: str | Sequence[str] | None = None,
    port: int | None = None,
    *,
    sock: Any = None,
    reuse_port: bool = False,
    **kwargs: Any,
) -> WebSocketServer: ...


def serve(
    handler: Handler,
    host: str | Sequence[str] | None = None,
    port: int | None = None,
    *,
    sock: Any = None,
    reuse_port: bool = False,
    task_status: anyio.abc.TaskStatus[WebSocketServer] | None = None,
    **kwargs: Any,
) -> WebSocketServer | Coroutine[Any, Any, None]:
    """Serve WebSocket connections on ``host``:``port``, calling ``handler(connection)``.

    Use it as an async context manager, or start it in a nursery (it returns once
    listening, with the server)::

        async with trillium.serve(handler, "127.0.0.1", 8765) as server:
            await server.serve_forever()

        server = await nursery.start(trillium.serve, handler, "127.0.0.1", 8765)

    Options (keywords, as in websockets): ``origins``, ``subprotocols``,
    ``select_subprotocol``, ``process_request``, ``process_response``,
    ``server_header``, ``compression`` ("deflate", the default, negotiates
    permessage-deflate; None turns it off; a ``ServerPerMessageDeflateFactory`` sets
    its parameters), ``open_timeout=10``, ``ping_interval=20``,
    ``ping_timeout=20``, ``close_timeout=10``, ``max_size=2**20``, ``max_queue=16``,
    ``write_limit=2**15``, ``max_header_size``, ``ssl`` (an ``SSLContext`` for wss),
    ``sock`` (an already bound, listening socket), ``reuse_port``, ``logger``.
    """

    async def make_listeners() -> list[anyio.abc.SocketListener]:
        if sock is not None:
            return [await anyio.abc.SocketListener.from_socket(sock)]
        multi = await anyio.create_tcp_listener(
            local_host=host,  # type: ignore[arg-type]
            local_port=port or 0,
            reuse_port=reuse_port,
        )
        return list(multi.listeners)  # type: ignore[arg-type]

    server = WebSocketServer(handler, make_listeners, **kwargs)
    if task_status is not None:
        return server.run(task_status=task_status)
    return server


@overload
def unix_serve(
    handler: Handler,
    path: str | None = None,
    *,
    task_status: anyio.abc.TaskStatus[WebSocketServer],
    **kwargs: Any,
) -> Coroutine[Any, Any, None]: ...


@overload
def unix_serve(
    handler: Handler, path: str | None = None, *, sock: Any = None, **kwargs: Any
) -> WebSocketServer: ...


def unix_serve(
    handler: Handler,
    path: str | None = None,
    *,
    sock: Any = None,
    task_status: anyio.abc.TaskStatus[WebSocketServer] | None = None,
    **kwargs: Any,
) -> WebSocketServer | Coroutine[Any, Any, None]:
    """Like ``serve``, on a Unix socket at ``path`` (or an already bound ``sock``)."""

    async def make_listeners() -> list[anyio.abc.SocketListener]:
        if sock is not None:
            return [await anyio.abc.SocketListener.from_socket(sock)]
        assert path is not None, "unix_serve needs a path or a sock"
        return [await anyio.create_unix_listener(path)]

    server = WebSocketServer(handler, make_listeners, **kwargs)
    if task_status is not None:
        return server.run(task_status=task_status)
    return server
