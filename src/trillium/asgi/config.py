"""The ASGI server's settings, in one place: ``Config``.

``trillium.asgi.serve(app, host, port, **options)`` and ``trillium serve module:app``
both build one; the bridge reads it when it builds a scope.

    >>> config = Config(port=0, root_path="/api")
    >>> config.scheme("http"), config.scheme("websocket")
    ('http', 'ws')
    >>> Config(ssl_certfile="cert.pem").scheme("websocket")
    'wss'
"""

from __future__ import annotations

import logging
import ssl as ssl_module
from dataclasses import dataclass, field
from typing import Any, Literal

from ..connection import WaterMarks, _water_marks
from ..core.deflate import ServerPerMessageDeflateFactory

__all__ = ["Config"]


@dataclass
class Config:
    """Everything ``trillium.asgi.serve`` can be told.

    Where to listen: ``host`` and ``port`` (port 0 picks a free one), or ``uds`` (a
    Unix socket path), or ``sock`` (a bound socket). TLS: ``ssl_certfile`` and
    ``ssl_keyfile``, or a ready ``ssl`` context. ``root_path`` is the prefix the
    application is mounted under (behind a proxy). ``lifespan`` is "auto" (run the
    lifespan protocol; an application that doesn't support it is fine), "on"
    (its failure stops the server) or "off".

    WebSocket connections take the options of ``trillium.serve``, with the same
    defaults: ``compression`` ("deflate": permessage-deflate when the client offers
    it; None: never; or a ``ServerPerMessageDeflateFactory``), ``max_size``
    (largest message, bytes; 1009 beyond), ``max_queue`` (messages buffered before
    reading stops), ``write_limit`` (bytes buffered before ``send`` waits),
    ``ping_interval``, ``ping_timeout``, ``close_timeout``.

    HTTP: ``open_timeout`` bounds the TLS handshake and the first request head;
    ``timeout_keep_alive`` how long an idle keep-alive connection is kept;
    ``max_header_size`` the request head. ``timeout_graceful_shutdown`` is how long
    in-flight requests and WebSocket handlers get to finish on shutdown before they
    are cancelled. ``access_log`` logs one line per request on the
    ``trillium.access`` logger.

    >>> config = Config(uds="/run/app.sock", max_size=2**24, ping_interval=None)
    >>> config.uds, config.max_size, config.ping_interval, config.timeout_keep_alive
    ('/run/app.sock', 16777216, None, 5)
    """

    host: str | None = "127.0.0.1"
    port: int = 8000
    uds: str | None = None
    sock: Any = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl: ssl_module.SSLContext | None = None
    root_path: str = ""
    lifespan: Literal["auto", "on", "off"] = "auto"
    access_log: bool = True
    server_header: str | None = "trillium"
    # WebSocket connections: the compression, limits and timeouts of trillium.serve.
    compression: str | ServerPerMessageDeflateFactory | None = "deflate"
    max_size: int | None = 2**20
    max_queue: WaterMarks = 16
    write_limit: WaterMarks = 2**15
    ping_interval: float | None = 20
    ping_timeout: float | None = 20
    close_timeout: float | None = 10
    # HTTP/1.1.
    open_timeout: float | None = 10
    timeout_keep_alive: float = 5
    timeout_graceful_shutdown: float | None = 10
    max_header_size: int = 16 * 1024
    logger: logging.Logger | logging.LoggerAdapter[Any] = field(
        default_factory=lambda: logging.getLogger("trillium.asgi")
    )

    def __post_init__(self) -> None:
        if self.lifespan not in ("auto", "on", "off"):
            raise ValueError(f"lifespan must be 'auto', 'on' or 'off', not {self.lifespan!r}")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        if self.root_path.endswith("/"):
            self.root_path = self.root_path.rstrip("/")
        _water_marks(self.max_queue), _water_marks(self.write_limit)  # fail early
        self.compression = ServerPerMessageDeflateFactory.from_compression(self.compression)

    @property
    def is_secure(self) -> bool:
        """Whether connections are served over TLS."""
        return self.ssl is not None or self.ssl_certfile is not None

    def scheme(self, scope_type: str) -> str:
        """The scope's ``scheme``: http/https for HTTP, ws/wss for WebSocket."""
        if scope_type == "websocket":
            return "wss" if self.is_secure else "ws"
        return "https" if self.is_secure else "http"

    def ssl_context(self) -> ssl_module.SSLContext | None:
        """The server's TLS context: ``ssl`` if given, else one loaded from the files."""
        if self.ssl is not None:
            return self.ssl
        if self.ssl_certfile is None:
            return None
        context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, self.ssl_keyfile_password)
        context.set_alpn_protocols(["http/1.1"])
        self.ssl = context
        return context
