"""The asyncio face: simple-websocket's ``AioServer`` and ``AioClient``.

The same connection manager that runs trillium on trio runs here on asyncio, through
anyio: no thread, no second implementation. simple-websocket's API is not
structured (``connect()`` returns an object that stays open until ``close()``), so
each connection's task group lives in a background asyncio task for the
connection's lifetime; ``receive()``, ``send()`` and ``close()`` talk to the
connection directly from your task.

>>> import asyncio, subprocess, sys, trillium
>>> echo = subprocess.Popen([sys.executable, "-m", "trillium", "echo", "--port", "0"],
...                         stdout=subprocess.PIPE, text=True)
>>> url = echo.stdout.readline().split()[-1]
>>> async def main():
...     ws = await trillium.AioClient.connect(url)
...     await ws.send("Hello")
...     print(await ws.receive())
...     print(await ws.receive(timeout=0.1))  # None: nothing came within the timeout
...     await ws.close()
>>> asyncio.run(main())
Hello
None
>>> echo.terminate(); echo.wait()  # SIGTERM: every client gets 1001, then exit 0
0

On the server side, ``AioServer.accept()`` takes over a request from aiohttp
(``aiohttp=request``), from any ASGI server (``asgi=(scope, receive, send)``: FastAPI,
Starlette, ...) or a bare socket whose request you read yourself (``sock=``,
``headers=``)::

    async def handler(request):                      # an aiohttp view
        ws = await trillium.AioServer.accept(aiohttp=request)
        try:
            while True:
                await ws.send(await ws.receive())
        except trillium.ConnectionClosed:
            pass
        return web.Response()

Differences from simple-websocket, all on the side of caution: ``close()`` waits for
the closing handshake (at most ``close_timeout``); the connection answers pings and
sends pongs on its own, and with ``ping_interval`` set a pong must come back within
one interval or the connection fails (1011); ``max_message_size`` closes with 1009 as
soon as a message grows past it. Objects are also async context managers and async
iterables. Close connections before the event loop ends: ``asyncio.run`` cancels
every task left at its end, the connections' too, and those are then dropped without
a close frame (quietly; the peer sees 1006).

``AioServer.accept(asgi=...)`` returns an ``AioServer`` (simple-websocket returns its
``WebSocketASGI``, with the same calls), whose ``receive(timeout)`` also works.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import suppress
from types import TracebackType
from typing import Any, TypeVar

import anyio
import sniffio

from ._simple import (
    ClientCompression,
    HeadersArg,
    ServerCompression,
    SimpleConnection,
    SubprotocolsArg,
    TakenOver,
    check_upgrade,
    closed_exception,
    message_ready,
    open_client,
    start_server,
    subprotocol_list,
    take_over,
    to_message,
)
from .connection import Connection
from .core.close import Close, CloseCode
from .core.handshake import Headers, Request
from .core.protocol import Protocol, State
from .exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

__all__ = ["AioClient", "AioServer"]

logger = logging.getLogger("trillium")

Data = str | bytes
ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_Self = TypeVar("_Self", bound="_AioBase")

# asyncio keeps only weak references to tasks: the connections' tasks live here.
_TASKS: set[asyncio.Task[None]] = set()


def _require_asyncio() -> None:
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = None
    if library != "asyncio":
        raise RuntimeError(
            "trillium.AioServer and AioClient run on asyncio; on trio, use "
            "trillium.serve and trillium.connect"
        )


class _AioBase(SimpleConnection):
    """What AioServer and AioClient share: receive, send, close on a running connection."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._connection: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._asgi: _ASGIChannel | None = None

    def _running_connection(self) -> Connection | None:
        return self._connection

    # ------------------------------------------------------------------ running

    async def _run(self, connection: Connection, protocol: Protocol) -> None:
        """Run the connection's task group in a background task until it closes."""
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        async def hold() -> None:
            try:
                async with connection._running(protocol):
                    started.set_result(None)
                    await connection.wait_closed()
            except BaseException as exc:
                if not started.done():
                    started.set_exception(exc)
                    return
                if not isinstance(exc, Exception):
                    raise
                logger.debug("connection %s ended with %r", connection.id, exc)
            finally:
                self._ended()

        self._connection = connection
        task = loop.create_task(hold(), name=f"trillium connection {connection.id}")
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)
        self._task = task
        try:
            await started
        except BaseException:
            task.cancel()  # we were cancelled while it started: don't leave it running
            raise

    async def _settle(self, connection: Connection) -> None:
        """Before reporting a closure: let a closing handshake under way finish (at most
        close_timeout), so that a view that returns on ConnectionClosed finds TCP shut
        down, and its server's response can't land in the WebSocket stream."""
        timeout = self._options.close_timeout
        with anyio.move_on_after(timeout if timeout is not None else float("inf")):
            await connection.wait_closed()
        self._ended()

    def _ended(self) -> None:
        """The connection is closed: end TCP for the web server we took it from too."""
        if self._taken is not None:
            self._taken.shutdown()

    # ------------------------------------------------------------------ the API

    @property
    def connected(self) -> bool:
        """True while the connection is open (before any close frame went either way)."""
        if self._asgi is not None:
            return self._asgi.open
        return super().connected

    def _close_rcvd(self) -> Close | None:
        if self._asgi is not None:
            closed = self._asgi.closed
            return closed.rcvd if closed is not None else None
        return super()._close_rcvd()

    async def receive(self, timeout: float | None = None) -> Data | None:
        """Receive the next message: ``str`` for text, ``bytes`` for binary.

        Waits at most ``timeout`` seconds (None: no limit; 0: only what has already
        arrived) and returns None when nothing came in time. Messages that arrived
        before the connection closed are returned first; then it raises
        ``ConnectionClosed`` (``.reason`` is the close code, ``.message`` the text).
        """
        if self._asgi is not None:
            return await self._asgi.receive(timeout)
        connection = self._connection
        if connection is None:
            raise closed_exception(None)
        try:
            if timeout is None:
                return await connection.recv()
            if timeout <= 0:
                if message_ready(connection) or connection.state is State.CLOSED:
                    return await connection.recv()
                return None
            with anyio.move_on_after(timeout):
                return await connection.recv()
            return None
        except ConnectionClosed:
            self._ended()
            raise

    async def send(self, data: Data) -> None:
        """Send a message: ``bytes`` as binary, ``str`` (or anything else, as
        ``str(data)``) as text. Raises ``ConnectionClosed`` once the connection is
        closing or closed."""
        message = to_message(data)
        if self._asgi is not None:
            await self._asgi.send(message)
            return
        connection = self._connection
        if connection is None:
            raise closed_exception(None)
        try:
            await connection.send(message)
        except ConnectionClosed:
            await self._settle(connection)
            raise

    async def close(self, reason: int | None = None, message: str | None = None) -> None:
        """Close the connection with code ``reason`` (default 1000) and text ``message``.

        Waits for the closing handshake, at most ``close_timeout`` seconds. Like
        simple-websocket, raises ``ConnectionClosed`` if the connection is already
        closed.
        """
        code = reason or CloseCode.NORMAL_CLOSURE
        if self._asgi is not None:
            await self._asgi.close(code, message or "")
            return
        connection = self._connection
        if connection is None or not self.connected:
            raise closed_exception(connection)
        await connection.close(code, message or "")
        self._ended()
        if self._task is not None:
            await asyncio.wait({self._task})  # never cancels it, even if we are cancelled

    async def __aenter__(self: _Self) -> _Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.connected:
            await self.close()

    def __aiter__(self) -> AsyncIterator[Data]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Data]:
        """Yield messages until the connection closes; a normal closure ends the loop."""
        while True:
            try:
                message = await self.receive()
            except ConnectionClosedOK:
                return
            assert message is not None
            yield message


class AioServer(_AioBase):
    """The server end of a WebSocket connection, accepted from an asyncio web server.

    Use ``await AioServer.accept(...)`` with exactly one of:

    - ``aiohttp=request``: an aiohttp request (the socket is taken over from aiohttp;
      return any response from the view once done, aiohttp's write then goes nowhere);
    - ``asgi=(scope, receive, send)``: a WebSocket scope from any ASGI server
      (uvicorn, hypercorn, ...; in FastAPI and Starlette, ``websocket.scope``,
      ``websocket.receive``, ``websocket.send``). The ASGI server does the framing:
      ``receive_bytes`` and ``ping_interval`` are its business there;
    - ``sock=`` a connected socket and ``headers=`` the request headers you read
      from it (a dict with at least Host, Upgrade, Connection, Sec-WebSocket-Key and
      Sec-WebSocket-Version).

    An ASGI app, served by uvicorn for example::

        async def app(scope, receive, send):
            ws = await trillium.AioServer.accept(asgi=(scope, receive, send))
            async for message in ws:
                await ws.send(message)

    Attributes: ``mode`` (``"aiohttp"``, ``"asgi"`` or ``"custom"``), ``headers``
    (the request's), ``request`` (a ``trillium.Request``, None in ASGI mode),
    ``subprotocol``, ``connected``. Override ``choose_subprotocol(request)`` to pick a
    subprotocol from ``request.subprotocols`` another way than "the client's first
    one that is in ``subprotocols``".

    >>> AioServer.accept  # doctest: +ELLIPSIS
    <bound method AioServer.accept of <class 'trillium.aio.AioServer'>>
    """

    def __init__(
        self,
        request: dict[str, Any],
        subprotocols: SubprotocolsArg = None,
        receive_bytes: int = 4096,
        ping_interval: float | None = None,
        max_message_size: int | None = None,
        *,
        close_timeout: float | None = 10,
        max_queue: int | None = 16,
        write_limit: int = 2**16,
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
        #: What accept() was given: {"aiohttp": ..., "asgi": ..., "sock": ..., "headers": ...}.
        self.environ = request
        self.compression = compression
        self.subprotocols = subprotocol_list(subprotocols)
        self.headers: Any = {}
        self.request: Request | None = None
        self.mode = "unknown"

    @classmethod
    async def accept(
        cls,
        aiohttp: Any = None,
        asgi: tuple[ASGIScope, ASGIReceive, ASGISend] | None = None,
        sock: Any = None,
        headers: dict[str, str] | None = None,
        subprotocols: SubprotocolsArg = None,
        receive_bytes: int = 4096,
        ping_interval: float | None = None,
        max_message_size: int | None = None,
        *,
        close_timeout: float | None = 10,
        max_queue: int | None = 16,
        write_limit: int = 2**16,
        compression: ServerCompression = "deflate",
    ) -> AioServer:
        """Accept a WebSocket connection; see the class for the three sources.

        ``subprotocols``: the ones the server supports (None: no negotiation).
        ``receive_bytes``: the socket read size (at least 64 KiB is read).
        ``ping_interval``: ping the client this often (seconds, None: never); a
        client that doesn't answer within one interval is dropped (close code 1011).
        ``max_message_size``: bytes (None: no limit); a bigger message closes the
        connection with 1009. ``close_timeout``: how long ``close()`` waits for the
        client's close frame. ``max_queue``: messages buffered before reading stops.
        ``write_limit``: bytes waiting to be sent beyond which ``send()`` waits.
        ``compression``: ``"deflate"`` (the default, as simple-websocket) accepts
        permessage-deflate when the client offers it; None declines it; a
        ``trillium.core.deflate.ServerPerMessageDeflateFactory`` tunes it.

        An upgrade request that isn't valid raises ``InvalidHandshake`` (a
        ``ConnectionError`` with ``status_code`` 400 or 426) before anything is sent.
        """
        if aiohttp is not None and (asgi is not None or sock is not None):
            raise ValueError("aiohttp argument cannot be used with asgi or sock")
        if asgi is not None and sock is not None:
            raise ValueError("asgi argument cannot be used with aiohttp or sock")
        _require_asyncio()
        ws = cls(
            {"aiohttp": aiohttp, "asgi": asgi, "sock": sock, "headers": headers},
            subprotocols=subprotocols,
            receive_bytes=receive_bytes,
            ping_interval=ping_interval,
            max_message_size=max_message_size,
            close_timeout=close_timeout,
            max_queue=max_queue,
            write_limit=write_limit,
            compression=compression,
        )
        await ws._accept()
        return ws

    async def _accept(self) -> None:
        source = self.environ
        if source.get("asgi") is not None:
            scope, receive, send = source["asgi"]
            self.mode = "asgi"
            channel = _ASGIChannel(scope, receive, send, self.max_message_size)
            self.headers = channel.request.headers
            self.subprotocol = await channel.accept(self.choose_subprotocol)
            self._asgi = channel
            return
        if source.get("aiohttp") is not None:
            request = source["aiohttp"]
            transport = request.transport
            if transport is None:
                raise ConnectionClosedError(None, None)
            self.mode = "aiohttp"
            self.headers = request.headers
            version = f"{request.version.major}.{request.version.minor}"
            upgrade = check_upgrade(
                request.method,
                request.raw_path,
                request.headers.items(),
                self.choose_subprotocol,
                self.compression,
                version,
            )
            # aiohttp goes on reading an upgraded connection for its own WebSocket
            # support: stop it, or it would take frames meant for us.
            transport.pause_reading()
            self._taken = take_over(transport.get_extra_info("socket"))
        elif source.get("sock") is not None:
            self.mode = "custom"
            self.headers = source.get("headers") or {}
            upgrade = check_upgrade(
                "GET", "/", self.headers.items(), self.choose_subprotocol, self.compression
            )
            self._taken = TakenOver(source["sock"])
        else:
            raise ValueError("AioServer.accept() needs aiohttp=, asgi= or sock=")
        self.request, self.subprotocol = upgrade.request, upgrade.subprotocol
        connection, protocol = await start_server(self._taken, upgrade, self._options)
        await self._run(connection, protocol)


class AioClient(_AioBase):
    """A WebSocket client on asyncio: ``ws = await AioClient.connect(url)``.

    ``url`` is ``ws://``, ``wss://`` (``http://`` and ``https://`` work too); see
    ``connect()`` for the options and the module for an example. It is also an async
    context manager::

        async with await trillium.AioClient.connect("ws://127.0.0.1:8765") as ws:
            await ws.send("Hello")
            print(await ws.receive())

    >>> AioClient("ws://example.com/chat").url
    'ws://example.com/chat'
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
        *,
        open_timeout: float | None = 10,
        close_timeout: float | None = 10,
        max_queue: int | None = 16,
        write_limit: int = 2**16,
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

    @classmethod
    async def connect(
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
        write_limit: int = 2**16,
        compression: ClientCompression = None,
    ) -> AioClient:
        """Connect to ``url`` and return the open connection.

        ``subprotocols``: a name or a list in order of preference. ``headers``: a
        dict or list of (name, value) pairs added to the request. ``ssl_context``:
        for ``wss://`` (default: the system's trusted certificates, verified).
        ``ping_interval``, ``max_message_size``, ``receive_bytes``, ``close_timeout``,
        ``max_queue`` and ``write_limit`` as in ``AioServer.accept``; ``open_timeout``
        bounds the TCP connection and the handshake (``TimeoutError``); ``compression``
        is None by default (simple-websocket's client doesn't compress either);
        ``"deflate"`` offers permessage-deflate. ``thread_class`` and
        ``event_class`` are accepted for compatibility and unused.

        A server that refuses the upgrade raises ``ConnectionError`` with its HTTP
        ``status_code`` (``trillium.InvalidStatus``, which also has the response).
        """
        _require_asyncio()
        ws = cls(
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
        connection, protocol = await open_client(
            url,
            subprotocols=ws.subprotocols,
            headers=headers,
            ssl_context=ssl_context,
            options=ws._options,
            compression=compression,
        )
        ws.subprotocol = connection.subprotocol
        await ws._run(connection, protocol)
        return ws


def _is_disconnect(exc: Exception) -> bool:
    """Whether an ASGI send failed because the client is gone: the server raises an
    OSError (the ASGI spec's advice), which Starlette and FastAPI turn into their
    ``WebSocketDisconnect(code)``."""
    if isinstance(exc, OSError):
        return True
    return type(exc).__name__ == "WebSocketDisconnect" and isinstance(
        getattr(exc, "code", None), int
    )


class _ASGIChannel:
    """A WebSocket over an ASGI (scope, receive, send) triple: the ASGI server does
    the framing, this maps simple-websocket's calls onto ASGI messages.

    A ``receive()`` that times out leaves the ASGI receive running and picks it up on
    the next call, so a timeout never loses a message, whatever the server's
    receive does when cancelled.
    """

    def __init__(
        self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend, max_size: int | None
    ) -> None:
        if scope.get("type") != "websocket":
            raise ValueError(f"not a WebSocket scope: {scope.get('type')!r}")
        self._receive = receive
        self._send = send
        self.max_size = max_size
        headers = Headers(
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
            for k, v in scope.get("headers", ())
        )
        path = scope.get("raw_path") or scope.get("path", "/").encode("utf-8")
        query = scope.get("query_string") or b""
        target = bytes(path).decode("latin-1") + (
            "?" + bytes(query).decode("latin-1") if query else ""
        )
        self.request = Request(target, headers)
        self.open = False
        self.closed: ConnectionClosed | None = None
        self._pending: asyncio.Future[MutableMapping[str, Any]] | None = None

    async def accept(self, choose: Callable[[Request], str | None]) -> str | None:
        message = await self._receive()
        if message["type"] != "websocket.connect":
            raise ValueError(f"expected websocket.connect, got {message['type']!r}")
        subprotocol = choose(self.request)
        await self._send({"type": "websocket.accept", "subprotocol": subprotocol})
        self.open = True
        return subprotocol

    def _closed_exception(self) -> ConnectionClosed:
        closed = self.closed
        if closed is None:
            return ConnectionClosedError(None, None)
        return type(closed)(closed.rcvd, closed.sent, closed.rcvd_then_sent)

    async def receive(self, timeout: float | None) -> Data | None:
        if self.closed is not None:
            raise self._closed_exception()
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._receive())
        pending = self._pending
        # asyncio.wait never cancels what it waits for: a timeout keeps it pending.
        await asyncio.wait({pending}, timeout=None if timeout is None else max(timeout, 0))
        if not pending.done():
            return None
        self._pending = None
        message = pending.result()
        kind = message["type"]
        if kind == "websocket.receive":
            data: Data | None = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if self.max_size is not None and len(data) > self.max_size:
                await self.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                raise self._closed_exception()
            return data
        if kind == "websocket.disconnect":
            code = message.get("code") or CloseCode.NO_STATUS_RCVD
            self._disconnected(Close(code, message.get("reason") or ""))
            raise self._closed_exception()
        raise OSError(32, f"WebSocket message type not supported: {kind}")

    def _disconnected(self, rcvd: Close | None, sent: Close | None = None) -> None:
        self.open = False
        if self.closed is None:
            ok = (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD)
            if rcvd is not None and rcvd.code in ok and (sent is None or sent.code in ok):
                self.closed = ConnectionClosedOK(rcvd, sent, sent is None)
            else:
                self.closed = ConnectionClosedError(rcvd, sent, None)
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    async def send(self, data: Data) -> None:
        if not self.open:
            raise self._closed_exception()
        key = "text" if isinstance(data, str) else "bytes"
        try:
            await self._send({"type": "websocket.send", key: data})
        except Exception as exc:
            if not _is_disconnect(exc):
                raise
            code = getattr(exc, "code", None)
            self._disconnected(Close(code, "") if isinstance(code, int) else None)
            raise self._closed_exception() from None

    async def close(self, code: int, reason: str) -> None:
        if not self.open:
            raise self._closed_exception()
        sent = Close(code, reason)
        sent.serialize()  # ValueError for a code or reason that can't be sent
        self.open = False
        with suppress(OSError):  # the client is gone already
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        self._disconnected(None, sent)
