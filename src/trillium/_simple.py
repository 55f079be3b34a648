"""What the asyncio and blocking faces share: both offer simple-websocket's API.

Neither face imports the other; both build on this module, which builds on the
connection manager and the sans-I/O core, so the connection logic still exists once:

- ``SimpleConnection``: the base of both faces' classes: simple-websocket's knobs
  (``ping_interval``, ``max_message_size``, ``receive_bytes``) plus trillium's own
  limits as ``Options``, which become a ``Connection``; ``connected``,
  ``close_reason``, ``close_message``; ``choose_subprotocol``;
- ``to_message``: simple-websocket's rule for what is text and what is binary;
- ``open_client``: TCP (and TLS) to a ``ws://``, ``wss://``, ``http://`` or
  ``https://`` URL and the opening handshake, giving a connection ready to run;
- ``check_upgrade``: an upgrade request that another web server already parsed (a
  WSGI environ, an aiohttp request), validated by the core, the subprotocol and
  permessage-deflate negotiated, and the 101 accepting it;
- ``take_over``: the socket of that request, duplicated so that trillium owns its own
  file descriptor, plus a second duplicate kept to shut TCP down at the end (the
  web server still holds the original and would otherwise keep the connection open).
"""

from __future__ import annotations

import base64
import os
import socket
import ssl as ssl_module
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

import anyio
import anyio.abc

from . import __version__, _green
from .connection import _STREAM_ERRORS, Connection, Data, WaterMarks, read_handshake
from .core.close import Close, CloseCode
from .core.deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from .core.extensions import Extension
from .core.handshake import ClientHandshake, Request, ServerHandshake
from .core.protocol import CLIENT, SERVER, Protocol, State
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    InvalidHandshake,
    NegotiationError,
)
from .uri import WebSocketURI, parse_uri

__all__ = [
    "ClientCompression",
    "HeadersArg",
    "Options",
    "ServerCompression",
    "SimpleConnection",
    "SubprotocolsArg",
    "TakenOver",
    "Upgrade",
    "check_upgrade",
    "closed_exception",
    "message_ready",
    "open_client",
    "start_server",
    "subprotocol_list",
    "take_over",
    "to_message",
    "ws_uri",
]

SubprotocolsArg = str | Sequence[str] | None
HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]] | None
#: ``"deflate"`` (permessage-deflate with trillium's defaults), a factory, or None.
ServerCompression = str | ServerPerMessageDeflateFactory | None
ClientCompression = str | ClientPerMessageDeflateFactory | None

USER_AGENT = f"Python trillium/{__version__}"

#: Reads are never smaller than this, whatever ``receive_bytes`` says: a read returns
#: what is there, so a bigger buffer costs nothing for small messages, while
#: simple-websocket's 4096 would take 256 reads for each 1 MiB message.
MIN_READ_SIZE = 65536


@dataclass(frozen=True)
class Options:
    """The connection settings of one simple-websocket style connection."""

    ping_interval: float | None = None
    max_message_size: int | None = None
    receive_bytes: int = 4096
    close_timeout: float | None = 10
    open_timeout: float | None = 10
    max_queue: int | None = 16
    write_limit: int = 2**16
    #: The blocking face's connections hand messages across threads: a subclass.
    connection_class: type[Connection] = Connection

    def connection(self, stream: anyio.abc.ByteStream) -> Connection:
        """A ``Connection`` over ``stream``; pings, when on, must be answered within
        one ``ping_interval`` (simple-websocket's rule)."""
        max_queue: WaterMarks = self.max_queue
        return self.connection_class(
            stream,
            ping_interval=self.ping_interval or None,
            ping_timeout=self.ping_interval or None,
            close_timeout=self.close_timeout,
            max_queue=max_queue,
            write_limit=self.write_limit,
            read_size=max(self.receive_bytes, MIN_READ_SIZE),
        )

    def protocol(self, role: Any, extensions: Sequence[Extension] = ()) -> Protocol:
        return Protocol(role, max_size=self.max_message_size, streaming=True, extensions=extensions)


class SimpleConnection:
    """What every simple-websocket style connection has, whichever face runs it."""

    def __init__(
        self,
        *,
        receive_bytes: int,
        ping_interval: float | None,
        max_message_size: int | None,
        close_timeout: float | None,
        open_timeout: float | None,
        max_queue: int | None,
        write_limit: int,
        connection_class: type[Connection] = Connection,
    ) -> None:
        #: The subprotocol chosen during the handshake, or None.
        self.subprotocol: str | None = None
        #: The subprotocols a server supports (its ``choose_subprotocol`` picks one).
        self.subprotocols: list[str] = []
        self.receive_bytes = receive_bytes
        self.ping_interval = ping_interval
        self.max_message_size = max_message_size
        self._options = Options(
            ping_interval=ping_interval,
            max_message_size=max_message_size,
            receive_bytes=receive_bytes,
            close_timeout=close_timeout,
            open_timeout=open_timeout,
            max_queue=max_queue,
            write_limit=write_limit,
            connection_class=connection_class,
        )
        self._taken: TakenOver | None = None

    def _running_connection(self) -> Connection | None:
        raise NotImplementedError

    def _close_rcvd(self) -> Close | None:
        """The close frame the peer sent, if one came."""
        connection = self._running_connection()
        protocol = connection.protocol if connection is not None else None
        return protocol.close_rcvd if protocol is not None else None

    @property
    def connected(self) -> bool:
        """True while the connection is open (before any close frame went either way)."""
        connection = self._running_connection()
        return connection is not None and connection.state is State.OPEN

    @property
    def close_reason(self) -> int:
        """The close code the peer sent (1005 until one came), as simple-websocket."""
        close = self._close_rcvd()
        return close.code if close is not None else CloseCode.NO_STATUS_RCVD

    @property
    def close_message(self) -> str | None:
        """The close reason text the peer sent, or None."""
        close = self._close_rcvd()
        return close.reason if close is not None else None

    def choose_subprotocol(self, request: Request) -> str | None:
        """The first subprotocol the client offers that is in ``subprotocols``, or None
        (a client has none: it never chooses).

        Override it to negotiate differently; ``request.subprotocols`` lists the
        client's offers in its order of preference.

        >>> from trillium import AioServer
        >>> from trillium.core.handshake import Headers, Request
        >>> server = AioServer({}, subprotocols=["chat", "json"])
        >>> server.choose_subprotocol(Request("/", Headers({"Sec-WebSocket-Protocol": "json"})))
        'json'
        """
        for subprotocol in request.subprotocols:
            if subprotocol in self.subprotocols:
                return subprotocol
        return None


def to_message(data: Any) -> Data:
    """simple-websocket's rule: bytes-like are sent as binary, anything else as text
    (``str(data)``). Bytes-like objects are copied: the caller may reuse its buffer."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    return data if isinstance(data, str) else str(data)


def subprotocol_list(subprotocols: SubprotocolsArg) -> list[str]:
    """simple-websocket takes one name or a list of names."""
    if not subprotocols:
        return []
    if isinstance(subprotocols, str):
        return [subprotocols]
    return list(subprotocols)


def _header_list(headers: HeadersArg) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


def ws_uri(url: str) -> WebSocketURI:
    """Parse a WebSocket URL; like simple-websocket, http:// and https:// are accepted."""
    for http, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url[: len(http)].lower() == http:
            url = ws + url[len(http) :]
    return parse_uri(url)


async def open_client(
    url: str,
    *,
    subprotocols: SubprotocolsArg,
    headers: HeadersArg,
    ssl_context: ssl_module.SSLContext | None,
    options: Options,
    compression: ClientCompression = None,
) -> tuple[Connection, Protocol]:
    """Connect and run the opening handshake within ``open_timeout``.

    A refusal raises ``InvalidStatus``, which is simple-websocket's
    ``ConnectionError`` with the response's ``status_code``; network errors raise
    ``OSError``. Redirects are not followed (simple-websocket doesn't either).
    """
    uri = ws_uri(url)
    request_headers = []
    if uri.user_info is not None:
        credentials = ":".join(uri.user_info).encode("utf-8")
        request_headers.append(("Authorization", "Basic " + base64.b64encode(credentials).decode()))
    request_headers.extend(_header_list(headers))
    deflate = ClientPerMessageDeflateFactory.from_compression(compression)
    timeout = options.open_timeout if options.open_timeout is not None else float("inf")
    with anyio.fail_after(timeout):
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(uri.host, uri.port)
        try:
            if uri.secure:
                from anyio.streams.tls import TLSStream

                stream = await TLSStream.wrap(
                    stream,
                    hostname=uri.host,
                    ssl_context=ssl_context or ssl_module.create_default_context(),
                    standard_compatible=False,
                )
            handshake = ClientHandshake(
                uri.host_header,
                uri.resource_name,
                subprotocols=subprotocol_list(subprotocols),
                headers=request_headers,
                user_agent=USER_AGENT,
                extensions=[deflate.offer()] if deflate is not None else (),
            )
            await stream.send(handshake.data_to_send())
            await read_handshake(stream, handshake.receive_data)
            extensions: list[PerMessageDeflate] = []
            for name, params in handshake.extensions:  # only what we offered gets here
                if extensions or deflate is None:
                    raise NegotiationError(f"server accepted {name} twice")
                extensions.append(deflate.accept(params))
        except BaseException:
            with anyio.CancelScope(shield=True), suppress(*_STREAM_ERRORS):
                await anyio.aclose_forcefully(stream)
            raise
    connection = options.connection(stream)
    connection.request = handshake.request
    connection.response = handshake.response
    connection.subprotocol = handshake.subprotocol
    connection.initial_data = handshake.trailing_data
    return connection, options.protocol(CLIENT, extensions)


class _Chooser(TypingProtocol):
    def __call__(self, request: Request) -> str | None: ...


@dataclass
class Upgrade:
    """An accepted upgrade: the request, the 101 to send, what was negotiated."""

    request: Request
    response: bytes
    subprotocol: str | None
    extensions: list[Extension]


def check_upgrade(
    method: str,
    path: str,
    headers: Iterable[tuple[str, str]],
    choose_subprotocol: _Chooser,
    compression: ServerCompression,
    http_version: str = "1.1",
) -> Upgrade:
    """Validate an upgrade request another server parsed; choose the subprotocol with
    ``choose_subprotocol(request)`` and negotiate permessage-deflate.

    Raises ``InvalidHandshake`` (a ``ConnectionError`` whose ``status_code`` is 400,
    or 426 for a WebSocket version other than 13) before any byte is written, so the
    web server can still answer with an ordinary HTTP error.
    """
    deflate = ServerPerMessageDeflateFactory.from_compression(compression)
    lines = [f"{method} {path or '/'} HTTP/{http_version}"]
    for name, value in headers:
        if any(c in name + value for c in "\r\n\0"):
            raise InvalidHandshake(f"invalid header field {name!r}", 400)
        lines.append(f"{name}: {value}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
    handshake = ServerHandshake()
    request = handshake.receive_data(head)
    if request is None:  # pragma: no cover - a complete head always parses or raises
        raise InvalidHandshake("incomplete upgrade request", 400)
    subprotocol = choose_subprotocol(request)
    answers = []
    extensions: list[Extension] = []
    if deflate is not None:
        negotiated = deflate.negotiate(request.extensions)
        if negotiated is not None:
            answers.append(negotiated[0])
            extensions.append(negotiated[1])
    response = handshake.accept(request, subprotocol=subprotocol, extensions=answers)
    return Upgrade(request, response, subprotocol, extensions)


@dataclass
class TakenOver:
    """A socket taken over from a web server: ours to run the connection on, and a
    duplicate to shut TCP down with when the connection ends."""

    sock: socket.socket
    keeper: socket.socket | None = None

    def shutdown(self) -> None:
        """End the TCP connection for every holder of it (idempotent, never raises).

        The web server still has the original descriptor: closing ours alone would
        leave the connection open, and whatever the server writes afterwards (its
        own HTTP response) fails instead of reaching the client.
        """
        keeper = self.keeper
        if keeper is None or keeper.fileno() == -1:
            return
        with suppress(OSError):
            keeper.shutdown(socket.SHUT_RDWR)
        keeper.close()


def take_over(sock: Any) -> TakenOver:
    """Duplicate a web server's connected socket (a ``socket.socket`` or asyncio's
    ``TransportSocket``) twice; the server keeps its own descriptor."""
    if isinstance(sock, ssl_module.SSLSocket):
        raise RuntimeError(
            "cannot take over a TLS socket from the web server (its TLS state stays "
            "with the server); terminate TLS in front of it, e.g. in a reverse proxy"
        )
    fd = sock.fileno()
    real = _green.socket_class()  # trillium's sockets stay standard under gevent, eventlet
    return TakenOver(real(fileno=os.dup(fd)), real(fileno=os.dup(fd)))


async def start_server(
    taken: TakenOver, upgrade: Upgrade, options: Options
) -> tuple[Connection, Protocol]:
    """Send the 101 on a taken-over socket; a connection ready to run on it."""
    try:
        stream = await anyio.abc.SocketStream.from_socket(taken.sock)
        connection = options.connection(stream)
        await stream.send(upgrade.response)
    except BaseException:
        taken.sock.close()
        taken.shutdown()
        raise
    connection.request = upgrade.request
    connection.subprotocol = upgrade.subprotocol
    return connection, options.protocol(SERVER, upgrade.extensions)


def message_ready(connection: Connection) -> bool:
    """Whether ``recv()`` would return at once (a complete message is queued).

    ``receive(timeout=0)`` needs this: a zero timeout would cancel even a ``recv()``
    that has a message waiting.
    """
    return connection._complete > 0


def closed_exception(connection: Connection | None) -> ConnectionClosed:
    """The exception describing how ``connection`` ended."""
    if connection is None:
        return ConnectionClosedError(None, None)
    return connection._closed_exception()
