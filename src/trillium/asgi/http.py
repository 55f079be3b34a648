"""Plain HTTP/1.1 requests for the ASGI server: one ``http`` scope per request, over h11.

h11 does the HTTP/1.1 parsing and framing (keep-alive, pipelining, chunked and
Content-Length bodies, ``Expect: 100-continue``); this module turns each request
into an ASGI ``http`` scope and its ``receive``/``send`` callables
(https://asgi.readthedocs.io/en/latest/specs/www.html#http):

- ``receive()`` returns the body as ``http.request`` events (``body``,
  ``more_body``), read from the socket only as the application asks for them, then
  ``http.disconnect`` once the response is complete or the client is gone;
- ``send()`` takes ``http.response.start`` then one or more
  ``http.response.body``; a body sent in one piece gets a Content-Length, a
  streamed one is sent chunked (h11's choice) and each piece is written as it
  comes, waiting for the socket. Sending to a client that went away raises
  ``ClientDisconnected`` (an ``OSError``).

An application that fails before it started its response gets a 500 sent for it;
after, the connection is closed (the client sees a truncated response).
"""

from __future__ import annotations

import email.utils
import http
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.abc
import anyio.lowlevel
import h11

from ..connection import _STREAM_ERRORS
from .bridge import ASGI_VERSION, Address, split_target
from .config import Config
from .types import ASGIApp, ClientDisconnected, Message, Scope

__all__ = ["HTTPCycle", "build_http_scope", "next_event", "serve_http_request"]

access_logger = logging.getLogger("trillium.access")

#: Bytes of a pipelined next request read while waiting for a disconnect, at most.
MAX_PIPELINED = 65536
#: Unread request body drained after the response so that the connection can be reused.
MAX_DRAIN = 65536
READ_SIZE = 65536
_DISCONNECT: Message = {"type": "http.disconnect"}


def build_http_scope(
    request: h11.Request,
    config: Config,
    client: Address,
    server: Address,
    *,
    state: dict[str, Any] | None = None,
) -> Scope:
    """The ASGI ``http`` scope of a request parsed by h11.

    >>> request = h11.Request(
    ...     method="POST", target="/items/a%20b?x=1", headers=[("Host", "example.com")]
    ... )
    >>> scope = build_http_scope(request, Config(), ("10.0.0.7", 52100), ("10.0.0.1", 80))
    >>> scope["method"], scope["path"], scope["raw_path"], scope["query_string"]
    ('POST', '/items/a b', b'/items/a%20b', b'x=1')
    """
    raw_path, query = split_target(request.target.decode("latin-1"))
    root_path = config.root_path
    return {
        "type": "http",
        "asgi": dict(ASGI_VERSION),
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": config.scheme("http"),
        "server": server,
        "client": client,
        "root_path": root_path,
        "path": root_path + unquote(raw_path),
        "raw_path": (root_path + raw_path).encode("latin-1"),
        "query_string": query.encode("latin-1"),
        "headers": list(request.headers),
        "state": dict(state) if state is not None else {},
    }


async def next_event(conn: h11.Connection, stream: anyio.abc.ByteStream) -> Any:
    """The next h11 event, reading from ``stream`` as needed (end of stream included)."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        try:
            data = await stream.receive(READ_SIZE)
        except _STREAM_ERRORS:
            data = b""
        conn.receive_data(data)


def _phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class HTTPCycle:
    """One request and its response: the ``receive`` and ``send`` of an ``http`` scope."""

    def __init__(
        self,
        conn: h11.Connection,
        stream: anyio.abc.ByteStream,
        scope: Scope,
        config: Config,
        *,
        closing: Callable[[], bool] = lambda: False,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.scope = scope
        self.config = config
        self._closing = closing  # the server is shutting down: no keep-alive
        self.body_complete = False
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.status = 0
        self._head_sent = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._is_head = scope["method"] == "HEAD"
        self._pending: Any = None  # an h11 event read ahead
        self._listener: anyio.CancelScope | None = None  # a receive() awaiting disconnect

    # ------------------------------------------------------------- receive

    async def receive(self) -> Message:
        """The next ``http.request`` (body) event, or ``http.disconnect``."""
        if self.disconnected or self.response_complete:
            return _DISCONNECT
        if not self.body_complete:
            return await self._receive_body()
        await self._wait_for_disconnect()
        return _DISCONNECT

    async def _receive_body(self) -> Message:
        conn = self.conn
        if conn.they_are_waiting_for_100_continue:
            with suppress(ClientDisconnected):
                await self._write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        try:
            event = self._pending if self._pending is not None else None
            self._pending = None
            if event is None:
                event = await next_event(conn, self.stream)
            body = b""
            while type(event) is h11.Data:
                body += bytes(event.data)
                # Take what the same read brought, without waiting for more.
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return {"type": "http.request", "body": body, "more_body": True}
        except h11.RemoteProtocolError:
            self.disconnected = True  # a broken body: nothing more can be read
            return _DISCONNECT
        if type(event) is h11.EndOfMessage:
            self.body_complete = True
            return {"type": "http.request", "body": body, "more_body": False}
        self.disconnected = True  # h11.ConnectionClosed: the client went away
        return _DISCONNECT

    async def _wait_for_disconnect(self) -> None:
        """Wait until the client goes away or the response is complete.

        Reading the socket is the only way to see the client leave. Anything read
        meanwhile belongs to the next request: h11 keeps it for then (at most
        ``MAX_PIPELINED`` bytes, after which this just waits for the response).
        """
        read = 0
        with anyio.CancelScope() as self._listener:
            while not self.response_complete and not self.disconnected:
                if read > MAX_PIPELINED:
                    await anyio.sleep_forever()
                try:
                    data = await self.stream.receive(READ_SIZE)
                except _STREAM_ERRORS:
                    data = b""
                if not data:
                    self.disconnected = True
                    break
                read += len(data)
                self.conn.receive_data(data)
        self._listener = None

    # ------------------------------------------------------------- send

    async def send(self, message: Message) -> None:
        """Take ``http.response.start`` and ``http.response.body`` events."""
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start' but got {kind!r}.")
            self.response_started = True
            self.status = int(message["status"])
            self._headers = [(bytes(k), bytes(v)) for k, v in message.get("headers") or ()]
            return
        if self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message {kind!r}: the response is complete.")
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body' but got {kind!r}.")
        if self.disconnected:
            raise ClientDisconnected("cannot send: the client went away")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        conn = self.conn
        out = []
        if not self._head_sent:
            out.append(conn.send(self._response_head(body, more_body)))
            self._head_sent = True
        if body and not self._is_head:
            out.append(conn.send(h11.Data(data=body)))
        if not more_body:
            out.append(conn.send(h11.EndOfMessage()))
            self.response_complete = True
            if self._listener is not None:
                self._listener.cancel()
        await self._write(b"".join(out))

    def _response_head(self, body: bytes, more_body: bool) -> h11.Response:
        headers = self._headers
        names = {name.lower() for name, _ in headers}
        extra: list[tuple[bytes, bytes]] = []
        if self.config.server_header is not None and b"server" not in names:
            extra.append((b"server", self.config.server_header.encode("latin-1")))
        if b"date" not in names:
            extra.append((b"date", email.utils.formatdate(time.time(), usegmt=True).encode()))
        if (
            not more_body
            and not self._is_head
            and b"content-length" not in names
            and b"transfer-encoding" not in names
        ):
            extra.append((b"content-length", str(len(body)).encode()))
        if self._closing() and b"connection" not in names:
            extra.append((b"connection", b"close"))
        self._log_access()
        return h11.Response(
            status_code=self.status, headers=extra + headers, reason=_phrase(self.status)
        )

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.send(data)
        except _STREAM_ERRORS as exc:
            self.disconnected = True
            raise ClientDisconnected("cannot send: the client went away") from exc

    def _log_access(self) -> None:
        if not self.config.access_log:
            return
        scope = self.scope
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "-"
        path = scope["path"]
        if scope["query_string"]:
            path += "?" + scope["query_string"].decode("latin-1")
        access_logger.info(
            '%s - "%s %s HTTP/%s" %d',
            where,
            scope["method"],
            path,
            scope["http_version"],
            self.status,
        )

    async def send_500(self) -> None:
        """Answer 500 Internal Server Error (the application failed before responding)."""
        self.response_started = False
        await self.send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"connection", b"close"),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})


async def serve_http_request(app: ASGIApp, cycle: HTTPCycle) -> bool:
    """Run ``app`` for one request; True if the connection can carry another."""
    logger = cycle.config.logger
    try:
        await app(cycle.scope, cycle.receive, cycle.send)
    except ClientDisconnected:
        logger.debug("ASGI application stopped: the client disconnected")
    except Exception:
        logger.error("Exception in ASGI application", exc_info=True)
        if not cycle.response_complete:
            # A complete response stands (Starlette's error middleware sends its
            # 500, then raises) and the connection stays usable; otherwise answer
            # 500 if nothing went out yet, else cut the truncated response short.
            if not cycle._head_sent:
                with suppress(ClientDisconnected, h11.LocalProtocolError):
                    await cycle.send_500()
            return False
    else:
        if not cycle.response_started and not cycle.disconnected:
            logger.error("ASGI application returned without starting a response")
            with suppress(ClientDisconnected, h11.LocalProtocolError):
                await cycle.send_500()
            return False
        if not cycle.response_complete and not cycle.disconnected:
            logger.error("ASGI application returned without completing its response")
            return False
    if cycle._listener is not None:  # a receive() left waiting by a stray task
        cycle._listener.cancel()
        await anyio.lowlevel.checkpoint()
    conn = cycle.conn
    if cycle.disconnected or conn.our_state is not h11.DONE:
        return False
    if conn.their_state is h11.SEND_BODY:
        # The application didn't read the whole body: read the rest (a little of
        # it, quickly) so that the connection can carry the next request.
        drained = 0
        with anyio.move_on_after(1):
            while conn.their_state is h11.SEND_BODY and drained <= MAX_DRAIN:
                try:
                    event = await next_event(conn, cycle.stream)
                except h11.RemoteProtocolError:
                    return False
                if type(event) is h11.Data:
                    drained += len(event.data)
                elif type(event) is h11.ConnectionClosed:
                    return False
    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
        conn.start_next_cycle()
        return True
    return False
