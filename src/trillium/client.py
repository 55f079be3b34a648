"""The trio-native client: ``trillium.connect``, ``trillium.unix_connect`` and
``trillium.run_client`` (reconnection with backoff).

``connect`` is an async context manager: the connection's reader, writer and
keepalive tasks live in a nursery inside the ``async with`` block, and the block's
end closes the connection::

    async with trillium.connect("ws://127.0.0.1:8765") as ws:
        await ws.send("Hello")
        print(await ws.recv())

Reconnection obeys trio's rule against yielding inside a nursery: instead of an
``async for ws in connect(...)`` generator, ``run_client`` calls your handler with
each new connection, inside the nursery it owns.
"""

from __future__ import annotations

import base64
import logging
import random
import socket
import ssl as ssl_module
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from . import __version__
from .connection import _STREAM_ERRORS, Connection, WaterMarks, read_handshake
from .core.deflate import ClientPerMessageDeflateFactory, PerMessageDeflate
from .core.handshake import ClientHandshake, HeadersLike
from .core.protocol import CLIENT, Protocol
from .exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    NegotiationError,
)
from .uri import WebSocketURI, parse_uri

__all__ = ["ClientConnection", "connect", "run_client", "unix_connect"]

logger = logging.getLogger("trillium")

USER_AGENT = f"Python trillium/{__version__}"
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class ClientConnection(Connection):
    """A connection opened by ``connect``."""


async def _open_stream(
    uri: WebSocketURI,
    *,
    ssl: ssl_module.SSLContext | bool | None,
    server_hostname: str | None,
    sock: socket.socket | None,
    unix_path: str | None,
) -> anyio.abc.ByteStream:
    stream: anyio.abc.ByteStream
    if sock is not None:
        stream = await anyio.abc.SocketStream.from_socket(sock)
    elif unix_path is not None:
        stream = await anyio.connect_unix(unix_path)
    else:
        stream = await anyio.connect_tcp(uri.host, uri.port)
    if uri.secure:
        from anyio.streams.tls import TLSStream

        context = ssl if isinstance(ssl, ssl_module.SSLContext) else None
        if context is None:
            context = ssl_module.create_default_context()
        try:
            stream = await TLSStream.wrap(
                stream,
                hostname=server_hostname or uri.host,
                ssl_context=context,
                standard_compatible=False,
            )
        except BaseException:
            # A failed TLS handshake (a certificate that doesn't verify, a timeout)
            # must close the TCP connection now: left to the garbage collector, and
            # the exception's traceback keeps it alive, it holds a file descriptor,
            # and the server waits out its open_timeout for a client that is gone.
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
    return stream


async def _handshake(
    connection: ClientConnection,
    uri: WebSocketURI,
    *,
    origin: str | None,
    subprotocols: Sequence[str] | None,
    additional_headers: HeadersLike | None,
    user_agent_header: str | None,
    max_size: int | None,
    deflate: ClientPerMessageDeflateFactory | None,
) -> Protocol:
    headers: list[tuple[str, str]] = []
    if uri.user_info is not None:
        credentials = ":".join(uri.user_info).encode("utf-8")
        headers.append(("Authorization", "Basic " + base64.b64encode(credentials).decode()))
    if additional_headers is not None:
        items = (
            additional_headers.items()
            if hasattr(additional_headers, "items")
            else additional_headers
        )
        headers.extend(items)
    handshake = ClientHandshake(
        uri.host_header,
        uri.resource_name,
        origin=origin,
        subprotocols=subprotocols or (),
        headers=headers,
        user_agent=user_agent_header,
        extensions=[deflate.offer()] if deflate is not None else (),
    )
    connection.request = handshake.request
    stream = connection.stream
    await stream.send(handshake.data_to_send())
    try:
        await read_handshake(stream, handshake.receive_data)
    finally:
        connection.response = handshake.response
    connection.subprotocol = handshake.subprotocol
    connection.initial_data = handshake.trailing_data
    extensions: list[PerMessageDeflate] = []
    for name, params in handshake.extensions:
        # ClientHandshake already refused extensions we didn't offer.
        if extensions:
            raise NegotiationError(f"server accepted {name} twice")
        assert deflate is not None
        extensions.append(deflate.accept(params))
    return Protocol(CLIENT, max_size=max_size, streaming=True, extensions=extensions)


@asynccontextmanager
async def connect(
    uri: str,
    *,
    origin: str | None = None,
    subprotocols: Sequence[str] | None = None,
    additional_headers: HeadersLike | None = None,
    user_agent_header: str | None = USER_AGENT,
    compression: str | ClientPerMessageDeflateFactory | None = "deflate",
    open_timeout: float | None = 10,
    ping_interval: float | None = 20,
    ping_timeout: float | None = 20,
    close_timeout: float | None = 10,
    max_size: int | None = 2**20,
    max_queue: WaterMarks = 16,
    write_limit: WaterMarks = 2**15,
    ssl: ssl_module.SSLContext | bool | None = None,
    server_hostname: str | None = None,
    sock: socket.socket | None = None,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    unix_path: str | None = None,
) -> AsyncIterator[ClientConnection]:
    """Open a WebSocket connection to ``uri`` for the body of an ``async with`` block.

    ::

        async with trillium.connect("wss://example.com/chat", subprotocols=["chat"]) as ws:
            await ws.send("hi")

    Certificates are verified by default for wss://. Up to 10 redirects are
    followed; a refusal raises ``InvalidStatus`` (with the response's status, headers
    and body), a bad URI ``InvalidURI``, a slow handshake ``TimeoutError`` after
    ``open_timeout``. The other options mirror ``serve``.
    """
    deflate = ClientPerMessageDeflateFactory.from_compression(compression)
    parsed = parse_uri(uri)
    if parsed.secure is False and isinstance(ssl, ssl_module.SSLContext):
        raise ValueError("ssl is only for wss:// URIs")
    connection: ClientConnection | None = None
    protocol: Protocol | None = None
    with anyio.fail_after(open_timeout if open_timeout is not None else float("inf")):
        for _ in range(MAX_REDIRECTS + 1):
            stream = await _open_stream(
                parsed, ssl=ssl, server_hostname=server_hostname, sock=sock, unix_path=unix_path
            )
            connection = ClientConnection(
                stream,
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                close_timeout=close_timeout,
                max_queue=max_queue,
                write_limit=write_limit,
                logger=logger,
            )
            try:
                protocol = await _handshake(
                    connection,
                    parsed,
                    origin=origin,
                    subprotocols=subprotocols,
                    additional_headers=additional_headers,
                    user_agent_header=user_agent_header,
                    max_size=max_size,
                    deflate=deflate,
                )
            except InvalidStatus as exc:
                await connection._abort()
                location = exc.response.headers.get("Location")
                if exc.response.status_code not in _REDIRECTS or location is None:
                    raise
                if sock is not None or unix_path is not None:
                    raise  # can't follow a redirect with a socket we were handed
                parsed = _redirect(parsed, uri, location)
                uri = _unparse(parsed)
                continue
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await connection._abort()
                raise
            break
        else:
            raise InvalidHandshake(f"more than {MAX_REDIRECTS} redirects")
    assert connection is not None and protocol is not None
    async with connection._running(protocol):
        yield connection


def _unparse(uri: WebSocketURI) -> str:
    return f"{'wss' if uri.secure else 'ws'}://{uri.host_header}{uri.resource_name}"


def _redirect(current: WebSocketURI, current_uri: str, location: str) -> WebSocketURI:
    """Resolve a Location header against the current URI (http(s) maps to ws(s))."""
    base = _unparse(current).replace("wss://", "https://", 1).replace("ws://", "http://", 1)
    target = urllib.parse.urljoin(base, location)
    if target.startswith("https://"):
        target = "wss://" + target[len("https://") :]
    elif target.startswith("http://"):
        target = "ws://" + target[len("http://") :]
    new = parse_uri(target)
    if current.secure and not new.secure:
        raise InvalidURI(target, "redirect from wss:// to ws:// is not allowed")
    return new


def unix_connect(path: str, uri: str = "ws://localhost/", **kwargs: Any) -> Any:
    """Like ``connect``, over the Unix socket at ``path``."""
    return connect(uri, unix_path=path, **kwargs)


#: Close codes after which ``run_client`` reconnects: the server hit a problem
#: (1011), is restarting (1012) or is overloaded (1013), or the network failed (1006).
RETRY_CLOSE_CODES = frozenset({1006, 1011, 1012, 1013})


async def run_client(
    uri: str,
    handler: Callable[[ClientConnection], Awaitable[None]],
    *,
    backoff_min: float = 1.0,
    backoff_max: float = 60.0,
    backoff_factor: float = 1.618,
    max_attempts: int | None = None,
    **connect_kwargs: Any,
) -> None:
    """Connect to ``uri`` and run ``handler(connection)``, reconnecting on failures.

    Reconnects with exponential backoff and full jitter after network errors, open
    timeouts, 5xx refusals, and closures with 1006/1011/1012/1013; a refused
    handshake (4xx, bad URI) is raised at once. Returns when the handler returns.
    Cancel the surrounding scope to stop it, even during a backoff sleep::

        async def handler(ws):
            async for message in ws:
                print(message)

        await trillium.run_client("ws://127.0.0.1:8765", handler)
    """
    delay = backoff_min
    attempts = 0
    while True:
        attempts += 1
        error: BaseException
        try:
            async with connect(uri, **connect_kwargs) as connection:
                delay = backoff_min  # a successful handshake resets the backoff
                await handler(connection)
                return
        except ConnectionClosed as exc:
            if exc.code not in RETRY_CLOSE_CODES:
                raise
            error = exc
            logger.info("connection to %s closed (%s); reconnecting", uri, exc)
        except InvalidStatus as exc:
            if exc.response.status_code < 500:
                raise
            error = exc
            logger.info("server %s refused with HTTP %d; retrying", uri, exc.status_code)
        except (OSError, TimeoutError, *_STREAM_ERRORS) as exc:
            error = exc
            logger.info("could not connect to %s (%r); retrying", uri, exc)
        if max_attempts is not None and attempts >= max_attempts:
            raise error
        await anyio.sleep(random.uniform(0, delay))
        delay = min(delay * backoff_factor, backoff_max)
