"""The WebSocket bridge: an ASGI application on one side, trillium's own core on the other.

The ASGI server hands every WebSocket upgrade here. The opening handshake is
checked by ``trillium.core``'s ``ServerHandshake``; once the application accepts,
the conversation runs on the connection manager (``trillium.connection``), exactly
as for ``trillium.serve``: the same framing, limits, keepalive and closing
handshake. What this module adds is the translation to and from ASGI events
(https://asgi.readthedocs.io/en/latest/specs/www.html#websocket):

1. the application receives ``websocket.connect``;
2. it sends ``websocket.accept`` (with a ``subprotocol`` and ``headers``), or
   ``websocket.close`` to refuse (HTTP 403), or a whole HTTP response through the
   denial response extension (``websocket.http.response.start`` then
   ``websocket.http.response.body``);
3. it receives ``websocket.receive`` (``text`` or ``bytes``) and sends
   ``websocket.send``;
4. either side closes: the application sends ``websocket.close`` (``code``,
   ``reason``) or receives ``websocket.disconnect`` (``code``, ``reason``).

``build_ws_scope`` makes the scope, ``create_ws_receive`` and ``create_ws_send`` the
two callables, and ``serve_websocket`` runs an application over a
``WebSocketSession`` from upgrade to close. Backpressure is the connection
manager's: ``receive()`` takes from a queue of at most ``max_queue`` messages (the
socket is not read while it is full), ``send()`` waits while more than
``write_limit`` bytes are buffered, and a message over ``max_size`` closes the
connection with 1009.
"""

from __future__ import annotations

import enum
import http
import logging
from collections.abc import Iterable
from contextlib import suppress
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import anyio.abc

from ..connection import _STREAM_ERRORS, Connection
from ..core.close import Close, CloseCode
from ..core.deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from ..core.handshake import Headers, Request, ServerHandshake, serialize_response
from ..core.headers import ExtensionHeader
from ..core.protocol import SERVER, Protocol
from ..exceptions import ConnectionClosed
from .config import Config
from .types import ASGIApp, ClientDisconnected, Message, Receive, Scope, Send

__all__ = [
    "WebSocketSession",
    "build_ws_scope",
    "create_ws_receive",
    "create_ws_send",
    "serve_websocket",
]

access_logger = logging.getLogger("trillium.access")

#: The ASGI version and the HTTP/WebSocket spec version this server implements.
ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}
#: Extensions advertised in every WebSocket scope.
WS_EXTENSIONS: dict[str, dict[str, Any]] = {"websocket.http.response": {}}

Address = tuple[str, int] | tuple[str, None] | None


def split_target(target: str) -> tuple[str, str]:
    """The raw path and the query string of a request target.

    >>> split_target("/chat/room%201?user=ann&x=1")
    ('/chat/room%201', 'user=ann&x=1')
    >>> split_target("http://example.com/a?b")
    ('/a', 'b')
    """
    if not target.startswith("/") and "://" in target:  # absolute-form (RFC 9112 §3.2.2)
        parts = urlsplit(target)
        return parts.path or "/", parts.query
    path, _, query = target.partition("?")
    return path, query


def build_ws_scope(
    request: Request,
    config: Config,
    client: Address,
    server: Address,
    *,
    state: dict[str, Any] | None = None,
) -> Scope:
    """The ASGI ``websocket`` scope of an upgrade request.

    ``client`` and ``server`` are (host, port) pairs (``server`` is (path, None) on
    a Unix socket, ``client`` then None). ``state`` is the lifespan state; the
    scope gets a shallow copy of it, as the ASGI specification asks.

    >>> from trillium.core import Headers, Request
    >>> request = Request(
    ...     "/chat/room%201?user=ann",
    ...     Headers([("Host", "example.com"), ("Sec-WebSocket-Protocol", "v2, v1")]),
    ... )
    >>> scope = build_ws_scope(
    ...     request, Config(root_path="/api"), ("10.0.0.7", 52100), ("10.0.0.1", 8000)
    ... )
    >>> scope["type"], scope["scheme"], scope["path"], scope["query_string"]
    ('websocket', 'ws', '/api/chat/room 1', b'user=ann')
    >>> scope["subprotocols"], scope["headers"][0]
    (['v2', 'v1'], (b'host', b'example.com'))
    """
    raw_path, query = split_target(request.path)
    root_path = config.root_path
    return {
        "type": "websocket",
        "asgi": dict(ASGI_VERSION),
        "http_version": request.http_version,
        "scheme": config.scheme("websocket"),
        "server": server,
        "client": client,
        "root_path": root_path,
        "path": root_path + unquote(raw_path),
        "raw_path": (root_path + raw_path).encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "headers": [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers.raw_items()
        ],
        "subprotocols": request.subprotocols,
        "extensions": {name: dict(value) for name, value in WS_EXTENSIONS.items()},
        "state": dict(state) if state is not None else {},
    }


class _Phase(enum.Enum):
    CONNECTING = "connecting"  # the application hasn't answered the upgrade yet
    RESPONDING = "responding"  # it started a denial response
    ACCEPTED = "accepted"  # the 101 is out; the connection manager is starting
    OPEN = "open"  # messages flow
    CLOSING = "closing"  # the application sent websocket.close
    CLOSED = "closed"  # rejected, or the connection is over


_OPEN = _Phase.OPEN
_CLOSING = _Phase.CLOSING


def _disconnect(rcvd: Close | None, sent: Close | None) -> Message:
    """The ``websocket.disconnect`` event of a closed connection.

    The code is the client's (1005 if its close frame had none); when no close
    frame came, the one we sent (1009 for a message over ``max_size``, 1011 for a
    keepalive timeout, ...), else 1006.
    """
    close = rcvd if rcvd is not None else sent
    if close is None:
        return {"type": "websocket.disconnect", "code": CloseCode.ABNORMAL_CLOSURE, "reason": ""}
    return {"type": "websocket.disconnect", "code": close.code, "reason": close.reason}


def _decode_headers(raw: Iterable[Any]) -> Headers:
    headers = Headers()
    for name, value in raw:
        headers[_latin1(name)] = _latin1(value)
    return headers


def _latin1(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


class WebSocketSession:
    """One WebSocket upgrade on its way through an ASGI application.

    It holds the stream, the handshake (request parsed and checked by
    ``ServerHandshake``), the scope and the ``Connection`` that carries the
    conversation once the application accepts. ``serve_websocket`` drives it; the
    server only makes it and, on shutdown, calls ``shutdown()``.

    ``status_code`` is the HTTP status of the answer (101 once accepted, 403, the
    denial response's, 500), None until the application answers. A server makes
    one per upgrade request::

        handshake = ServerHandshake()
        request = handshake.receive_data(request_bytes)    # checked by trillium.core
        scope = build_ws_scope(request, config, client, server)
        session = WebSocketSession(stream, handshake, request, scope, config)
        await serve_websocket(app, session)
    """

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        handshake: ServerHandshake,
        request: Request,
        scope: Scope,
        config: Config,
        *,
        initial_data: bytes = b"",
    ) -> None:
        self.stream = stream
        self.handshake = handshake
        self.request = request
        self.scope = scope
        self.config = config
        self.logger = config.logger
        self.connection = Connection(
            stream,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=config.close_timeout,
            max_queue=config.max_queue,
            write_limit=config.write_limit,
            logger=config.logger,
        )
        self.connection.request = request
        #: Frames the client sent right behind its request, for the reader.
        self.connection.initial_data = initial_data
        self.phase = _Phase.CONNECTING
        self.status_code: int | None = None
        #: The permessage-deflate negotiated on accept, if any.
        self.extension: PerMessageDeflate | None = None
        self._connect_delivered = False
        self._decided = anyio.Event()  # accepted, refused, or the application is done
        self._running = anyio.Event()  # the connection manager runs (or never will)
        self._app_done = anyio.Event()
        self._app_failed = False
        self._response_status = 0
        self._response_headers = Headers()
        self._response_body: list[bytes] = []
        self._task_group: anyio.abc.TaskGroup | None = None

    # ------------------------------------------------------------- receiving

    async def _receive_other(self, receive: Receive) -> Message:
        """Every ``receive()`` outside the open connection's fast path."""
        if not self._connect_delivered:
            self._connect_delivered = True
            return {"type": "websocket.connect"}
        if self.phase is _Phase.CONNECTING or self.phase is _Phase.RESPONDING:
            await self._decided.wait()  # nothing to receive before the answer
        if self.phase is _Phase.ACCEPTED:
            await self._running.wait()
        if self.phase is _OPEN or self.phase is _CLOSING:
            return await receive()
        protocol = self.connection.protocol
        if protocol is None:  # never accepted
            return _disconnect(None, None)
        return _disconnect(protocol.close_rcvd, protocol.close_sent)

    # ------------------------------------------------------------- sending

    async def _send_other(self, message: Message) -> None:
        """Every ``send()`` but a ``websocket.send`` on an open connection."""
        kind = message["type"]
        phase = self.phase
        if phase is _Phase.CONNECTING:
            if kind == "websocket.accept":
                await self._accept(message)
            elif kind == "websocket.close":
                # Before accept, a close refuses the connection with 403 (ASGI spec).
                await self._reject(403, Headers(), b"")
            elif kind == "websocket.http.response.start":
                status = int(message["status"])
                if not 100 <= status < 600 or status == 101:
                    raise RuntimeError(f"invalid HTTP status {status} for a denial response")
                self._response_status = status
                self._response_headers = _decode_headers(message.get("headers") or ())
                self.phase = _Phase.RESPONDING
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start' but got {kind!r}."
                )
        elif phase is _Phase.RESPONDING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(
                    f"Expected ASGI message 'websocket.http.response.body' but got {kind!r}."
                )
            body = message.get("body", b"")
            if body:
                self._response_body.append(bytes(body))
            if not message.get("more_body", False):
                await self._reject(
                    self._response_status, self._response_headers, b"".join(self._response_body)
                )
        elif phase is _Phase.ACCEPTED:
            await self._running.wait()  # another task of the app raced the accept
            if self.phase is _OPEN and kind == "websocket.send":
                await self._send_data(message)
            else:
                await self._send_other(message)
        elif phase is _OPEN:
            if kind == "websocket.close":
                await self._close(message)
            elif kind == "websocket.send":
                await self._send_data(message)
            else:
                raise RuntimeError(
                    f"Expected ASGI message 'websocket.send' or 'websocket.close' but got {kind!r}."
                )
        elif kind == "websocket.close":
            return  # already closing or closed: nothing left to do
        elif kind == "websocket.send":
            raise ClientDisconnected("cannot send: the WebSocket connection is closed")
        else:
            raise RuntimeError(
                f"Unexpected ASGI message {kind!r}: the WebSocket connection is "
                f"{'closing' if phase is _CLOSING else 'closed'}."
            )

    async def _send_data(self, message: Message) -> None:
        text = message.get("text")
        data = text if text is not None else message.get("bytes")
        if data is None:
            raise ValueError("websocket.send needs 'text' or 'bytes'")
        try:
            await self.connection.send(data)
        except ConnectionClosed as exc:
            raise ClientDisconnected(f"cannot send: the connection is closed ({exc})") from exc

    async def _accept(self, message: Message) -> None:
        subprotocol = message.get("subprotocol")
        headers = _decode_headers(message.get("headers") or ())
        if "Sec-WebSocket-Protocol" in headers:
            if subprotocol is not None:
                raise RuntimeError(
                    "websocket.accept: give the subprotocol in 'subprotocol' or in "
                    "'headers', not both"
                )
            subprotocol = headers["Sec-WebSocket-Protocol"]
            del headers["Sec-WebSocket-Protocol"]
        extensions: list[ExtensionHeader] = []
        deflate = self.config.compression
        if isinstance(deflate, ServerPerMessageDeflateFactory):
            negotiated = deflate.negotiate(self.request.extensions)
            if negotiated is not None:
                answer, self.extension = negotiated
                extensions.append(answer)
        # Raises NegotiationError when the client didn't offer this subprotocol.
        response = self.handshake.accept_response(
            self.request, subprotocol=subprotocol, extensions=extensions, headers=headers
        )
        if self.config.server_header is not None and "Server" not in response.headers:
            response.headers["Server"] = self.config.server_header
        connection = self.connection
        connection.response = response
        connection.subprotocol = subprotocol
        self.status_code = 101
        self.phase = _Phase.ACCEPTED
        try:
            await self.stream.send(serialize_response(response))
        except _STREAM_ERRORS as exc:
            self.phase = _Phase.CLOSED
            self._decided.set()
            raise ClientDisconnected("the client left before the handshake completed") from exc
        self._log_access("[accepted]")
        self._decided.set()
        await self._running.wait()

    async def _reject(self, status: int, headers: Headers, body: bytes) -> None:
        """Answer the upgrade with an HTTP response instead of 101, and hang up."""
        for name in ("Transfer-Encoding",):
            if name in headers:
                del headers[name]
        response = self.handshake.reject_response(status, headers, body)
        if self.config.server_header is not None and "Server" not in response.headers:
            response.headers["Server"] = self.config.server_header
        self.connection.response = response
        self.status_code = status
        self.phase = _Phase.CLOSED
        self._decided.set()
        self._running.set()
        self._log_access(str(status))
        with anyio.CancelScope(shield=True):
            with suppress(*_STREAM_ERRORS):
                await self.stream.send(serialize_response(response))
            with suppress(*_STREAM_ERRORS):
                await self.stream.aclose()

    async def _close(self, message: Message) -> None:
        code = message.get("code")
        code = CloseCode.NORMAL_CLOSURE if code is None else int(code)
        reason = message.get("reason") or ""
        Close(code, reason).serialize()  # ValueError now, in the app, for a bad code
        self.phase = _CLOSING
        assert self._task_group is not None
        # The closing handshake runs in a task of its own: the app's send() returns
        # once the close frame is queued, and a later receive() gets
        # websocket.disconnect when the handshake is done.
        await self._task_group.start(self._closing_handshake, code, reason)

    async def _closing_handshake(
        self, code: int, reason: str, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        task_status.started()
        # close() queues the frame before it first waits, so before start() returns.
        await self.connection.close(code, reason)

    def _log_access(self, outcome: str) -> None:
        if not self.config.access_log:
            return
        client = self.scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        path = self.scope["path"]
        if self.scope["query_string"]:
            path += "?" + self.scope["query_string"].decode("latin-1")
        access_logger.info('%s - "WebSocket %s" %s', where, path, outcome)

    # ------------------------------------------------------------- lifecycle

    async def _run_app(self, app: ASGIApp, receive: Receive, send: Send) -> None:
        try:
            await app(self.scope, receive, send)
        except ClientDisconnected:
            self.logger.debug("ASGI application stopped: the client disconnected")
        except Exception:
            self.logger.error("Exception in ASGI application", exc_info=True)
            self._app_failed = True
            if self.phase is _Phase.CONNECTING or self.phase is _Phase.RESPONDING:
                await self._reject_500()
        else:
            if self.phase is _Phase.CONNECTING or self.phase is _Phase.RESPONDING:
                self.logger.error(
                    "ASGI application returned without accepting or refusing the WebSocket"
                )
                await self._reject_500()
        finally:
            self._app_done.set()
            self._decided.set()

    async def _reject_500(self) -> None:
        headers = Headers([("Content-Type", "text/plain; charset=utf-8")])
        await self._reject(500, headers, http.HTTPStatus(500).phrase.encode())

    async def shutdown(self, code: int = CloseCode.GOING_AWAY) -> None:
        """Close an open connection (1001 by default), as the server does on shutdown."""
        if self.phase is _OPEN or self.phase is _Phase.ACCEPTED:
            await self._running.wait()
            await self.connection.close(code, "server shutting down")


def create_ws_receive(session: WebSocketSession) -> Receive:
    """The ASGI ``receive`` callable of a WebSocket session.

    The first call returns ``websocket.connect``. Once the application accepted,
    each call returns the next message as ``{"type": "websocket.receive", "text":
    ...}`` or ``{... "bytes": ...}``, then ``{"type": "websocket.disconnect", "code":
    ..., "reason": ...}`` when the connection is over (1005 when the client's close
    frame had no code, 1006 when there was no close frame; every later call returns
    it again). Waiting here is what lets the connection manager read more: at most
    ``max_queue`` messages wait unread. ``serve_websocket`` makes it and hands it to
    the application with ``create_ws_send``'s callable::

        await app(session.scope, create_ws_receive(session), create_ws_send(session))
    """
    recv = session.connection.recv

    async def receive() -> Message:
        phase = session.phase
        if phase is _OPEN or phase is _CLOSING:
            try:
                data = await recv()
            except ConnectionClosed as exc:
                return _disconnect(exc.rcvd, exc.sent)
            if type(data) is str:
                return {"type": "websocket.receive", "text": data}
            return {"type": "websocket.receive", "bytes": data}
        return await session._receive_other(receive)

    return receive


def create_ws_send(session: WebSocketSession) -> Send:
    """The ASGI ``send`` callable of a WebSocket session.

    Before accepting: ``websocket.accept`` (``subprotocol``, ``headers``) sends the
    101 response; ``websocket.close`` refuses with 403; ``websocket.http.response.start``
    and ``...body`` send any HTTP response instead. After: ``websocket.send`` (``text``
    or ``bytes``) waits while more than ``write_limit`` bytes are queued;
    ``websocket.close`` (``code``, ``reason``) starts the closing handshake and
    returns. Sending a message on a closed connection raises ``ClientDisconnected``
    (an ``OSError``); a second ``websocket.close`` does nothing; a message that
    makes no sense in the current state raises ``RuntimeError``. What an
    application does with it::

        await send({"type": "websocket.accept", "subprotocol": "chat"})
        await send({"type": "websocket.send", "text": "hello"})
        await send({"type": "websocket.close", "code": 4000, "reason": "done"})
    """
    connection_send = session.connection.send

    async def send(message: Message) -> None:
        if session.phase is _OPEN and message["type"] == "websocket.send":
            text = message.get("text")
            try:
                if text is not None:
                    await connection_send(text)
                    return
                data = message.get("bytes")
                if data is None:
                    raise ValueError("websocket.send needs 'text' or 'bytes'")
                await connection_send(data)
            except ConnectionClosed as exc:
                raise ClientDisconnected(f"cannot send: the connection is closed ({exc})") from exc
            return
        await session._send_other(message)

    return send


async def serve_websocket(app: ASGIApp, session: WebSocketSession) -> None:
    """Run ``app`` over ``session``, from ``websocket.connect`` to the closed connection.

    The application runs in a task of its own, next to the connection manager's
    tasks once it accepts. When it returns the connection is closed (1000); when it
    raises, with 1011 (or HTTP 500 if it had not answered the upgrade yet). A server
    calls this with the session it made from an upgrade request::

        session = WebSocketSession(stream, handshake, request, scope, config)
        await serve_websocket(app, session)
    """
    receive = create_ws_receive(session)
    send = create_ws_send(session)
    connection = session.connection
    try:
        async with anyio.create_task_group() as tg:
            session._task_group = tg
            tg.start_soon(session._run_app, app, receive, send)
            await session._decided.wait()
            if session.phase is _Phase.ACCEPTED:
                extensions = [session.extension] if session.extension is not None else []
                protocol = Protocol(SERVER, max_size=session.config.max_size, extensions=extensions)
                async with connection._running(protocol):
                    session.phase = _OPEN
                    session._running.set()
                    await session._app_done.wait()
                    if session._app_failed:
                        await connection.close(CloseCode.INTERNAL_ERROR, "")
                session.phase = _Phase.CLOSED
    finally:
        session.phase = _Phase.CLOSED
        session._running.set()
        session._decided.set()
        with anyio.CancelScope(shield=True), suppress(*_STREAM_ERRORS):
            await session.stream.aclose()
