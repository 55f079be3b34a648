"""WebSocket URIs (RFC 6455 §3): ``ws://host[:port]/path?query`` and ``wss://...``.

>>> uri = parse_uri("wss://example.com/chat?room=1")
>>> uri.secure, uri.host, uri.port, uri.resource_name
(True, 'example.com', 443, '/chat?room=1')
>>> parse_uri("http://example.com")
Traceback (most recent call last):
...
trillium.exceptions.InvalidURI: http://example.com isn't a valid URI: scheme isn't ws or wss
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from .exceptions import InvalidURI

__all__ = ["WebSocketURI", "parse_uri"]


@dataclass(frozen=True)
class WebSocketURI:
    """The parts of a WebSocket URI that the client needs."""

    secure: bool
    host: str
    port: int
    resource_name: str
    user_info: tuple[str, str] | None = None

    @property
    def host_header(self) -> str:
        """The Host header: the port is left out when it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == (443 if self.secure else 80):
            return host
        return f"{host}:{self.port}"


def parse_uri(uri: str) -> WebSocketURI:
    """Split a ws:// or wss:// URI; raise InvalidURI when it is not one (§3)."""
    try:
        parsed = urllib.parse.urlsplit(uri)
        port = parsed.port
    except ValueError as exc:
        raise InvalidURI(uri, str(exc)) from None
    if parsed.scheme not in ("ws", "wss"):
        raise InvalidURI(uri, "scheme isn't ws or wss")
    if not parsed.hostname:
        raise InvalidURI(uri, "hostname is missing")
    if parsed.fragment:
        raise InvalidURI(uri, "fragment identifiers are not allowed in WebSocket URIs")
    secure = parsed.scheme == "wss"
    path = parsed.path or "/"
    if parsed.query:
        path = f"{path}?{parsed.query}"
    user_info = None
    if parsed.username is not None:
        user_info = (
            urllib.parse.unquote(parsed.username),
            urllib.parse.unquote(parsed.password or ""),
        )
    # Non-ASCII in the path or host must be percent-encoded / IDNA-encoded on the wire.
    path = urllib.parse.quote(path, safe="/:@!$&'()*+,;=?%~-._")
    host = parsed.hostname
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        host = host.encode("idna").decode("ascii")
    return WebSocketURI(secure, host, port or (443 if secure else 80), path, user_info)
