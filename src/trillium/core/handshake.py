"""The opening handshake (RFC 6455 §4): an HTTP/1.1 Upgrade, sans I/O.

The client sends a GET with a random key; the server proves it speaks WebSocket by
hashing that key with a fixed GUID and answering 101 Switching Protocols::

    >>> accept_key("dGhlIHNhbXBsZSBub25jZQ==")   # the example of RFC 6455 §1.3
    's3pPLMBiTxaQ9kYGzzhZRbK+xOo='

``ClientHandshake`` builds the request and checks the response; ``ServerHandshake``
parses and checks the request and builds the response (101, or any rejection).
HTTP/1.1 parsing is h11's; every WebSocket rule is checked here. Bytes that follow
the handshake in the same read are kept in ``trailing_data`` for the frame parser.

    >>> client = ClientHandshake("example.com", "/chat", subprotocols=["chat"])
    >>> server = ServerHandshake()
    >>> request = server.receive_data(client.data_to_send())
    >>> request.path, request.subprotocols
    ('/chat', ['chat'])
    >>> response = client.receive_data(server.accept(request, subprotocol="chat"))
    >>> response.status_code, client.subprotocol
    (101, 'chat')
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import h11

from ..exceptions import (
    InvalidHandshake,
    InvalidHeader,
    InvalidStatus,
    InvalidUpgrade,
    NegotiationError,
)
from .headers import (
    ExtensionHeader,
    Headers,
    HeadersLike,
    parse_extensions,
    parse_list,
    parse_tokens,
    serialize_extensions,
)

__all__ = [
    "GUID",
    "ClientHandshake",
    "Headers",
    "HeadersLike",
    "Request",
    "Response",
    "ServerHandshake",
    "accept_key",
    "generate_key",
    "parse_request_head",
    "select_subprotocol",
    "serialize_response",
]

#: The fixed GUID of RFC 6455 §1.3, appended to the client's key before hashing.
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Default limit on the size of the request or response head (status line + headers).
MAX_HEADER_SIZE = 16 * 1024
#: Default limit on the body of a rejection response the client reads.
MAX_BODY_SIZE = 2**20


def generate_key() -> str:
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64-encoded (§4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a key: base64(SHA-1(key + GUID)) (§4.2.2)."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return binascii.b2a_base64(digest, newline=False).decode("ascii")


@dataclass
class Request:
    """An opening handshake request, as sent by a client or received by a server."""

    path: str
    headers: Headers
    method: str = "GET"
    http_version: str = "1.1"

    @property
    def host(self) -> str | None:
        return self.headers.get("Host")

    @property
    def origin(self) -> str | None:
        return self.headers.get("Origin")

    @property
    def key(self) -> str | None:
        return self.headers.get("Sec-WebSocket-Key")

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the client offers, in its order of preference."""
        return parse_list(self.headers.get_all("Sec-WebSocket-Protocol"))

    @property
    def extensions(self) -> list[ExtensionHeader]:
        """The extensions the client offers (raises InvalidHeader if malformed)."""
        return _extensions(self.headers)


@dataclass
class Response:
    """A handshake response: 101 when accepted, anything else when rejected."""

    status_code: int
    reason_phrase: str = ""
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def extensions(self) -> list[ExtensionHeader]:
        """The extensions the server accepted (raises InvalidHeader if malformed)."""
        return _extensions(self.headers)


def _extensions(headers: Headers) -> list[ExtensionHeader]:
    values = headers.get_all("Sec-WebSocket-Extensions")
    try:
        return parse_extensions(values)
    except ValueError as exc:
        raise InvalidHeader("Sec-WebSocket-Extensions", ", ".join(values), str(exc)) from None


def _h11_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    return Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)


def _encode_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.raw_items()]


# RFC 9110/9112 grammar, strict: a token method, a target without spaces or controls,
# and header fields "name: value" with no obsolete line folding.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e\x80-\xff]+) HTTP/(\d\.\d)")
_FIELD = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[ \t\x21-\x7e\x80-\xff]*"
    rb"[\x21-\x7e\x80-\xff])?)?)[ \t]*"
)


# The names and values most requests carry, as the shared str objects they decode to:
# a server keeps every connection's request for the connection's life, and a shared
# str costs nothing per connection (a lookup is also cheaper than decoding).
_COMMON = {
    text.encode("latin-1"): text
    for text in (
        "GET",
        "1.1",
        "/",
        "Host",
        "Upgrade",
        "upgrade",
        "websocket",
        "Connection",
        "keep-alive, Upgrade",
        "Sec-WebSocket-Key",
        "Sec-WebSocket-Version",
        "13",
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits",
        "Sec-WebSocket-Protocol",
        "Origin",
        "User-Agent",
        "Accept-Encoding",
        "gzip, deflate, br, zstd",
        "Accept-Language",
        "Cache-Control",
        "no-cache",
        "Pragma",
        "Cookie",
        "Authorization",
    )
}


#: A Sec-WebSocket-Key: 16 bytes in base64 (§4.1), exactly what
#: ``len(base64.b64decode(key, validate=True)) == 16`` accepts, in one regex match.
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")


def parse_request_head(head: bytes) -> Request:
    """Parse an HTTP/1.1 request head (without its final empty line) into a Request.

    Raises InvalidHandshake (400) for anything that isn't well-formed HTTP/1.1:
    this is the one place the server reads a client's bytes before the upgrade.

        >>> parse_request_head(b"GET /chat HTTP/1.1\\r\\nHost: example.com").headers["host"]
        'example.com'
    """
    lines = head.split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise InvalidHandshake(f"malformed request line: {lines[0][:100]!r}", 400)
    method, target, version = match.groups()
    common = _COMMON.get
    fields: list[str] = []
    for line in lines[1:]:
        field = _FIELD.fullmatch(line)
        if field is None:
            raise InvalidHandshake(f"malformed header line: {line[:100]!r}", 400)
        name, value = field.groups()
        fields += (common(name) or name.decode("ascii"), common(value) or value.decode("latin-1"))
    return Request(
        common(target) or target.decode("latin-1"),
        Headers._from_fields(fields),
        common(method) or method.decode("ascii"),
        common(version) or version.decode("ascii"),
    )


def select_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The first subprotocol in the client's list that the server supports, or None."""
    for subprotocol in offered:
        if subprotocol in supported:
            return subprotocol
    return None


class ClientHandshake:
    """The client's half of the opening handshake (RFC 6455 §4.1).

    ``data_to_send()`` gives the request; feed the server's bytes to
    ``receive_data()`` until it returns the Response (None means "more bytes
    needed", ``b""`` means the server closed the connection). It raises
    InvalidStatus (with the response, body included) when the server answers with
    anything but 101, and InvalidHandshake when a 101 breaks the rules.
    """

    def __init__(
        self,
        host: str,
        path: str = "/",
        *,
        origin: str | None = None,
        subprotocols: Sequence[str] = (),
        extensions: Sequence[ExtensionHeader] = (),
        headers: HeadersLike | None = None,
        user_agent: str | None = None,
        max_header_size: int = MAX_HEADER_SIZE,
        max_body_size: int = MAX_BODY_SIZE,
    ) -> None:
        self.key = generate_key()
        self.subprotocols = list(subprotocols)
        self.offered_extensions = list(extensions)
        self.max_body_size = max_body_size
        request_headers = Headers([("Host", host)])
        request_headers["Upgrade"] = "websocket"
        request_headers["Connection"] = "Upgrade"
        request_headers["Sec-WebSocket-Key"] = self.key
        request_headers["Sec-WebSocket-Version"] = "13"
        if origin is not None:
            request_headers["Origin"] = origin
        if self.subprotocols:
            request_headers["Sec-WebSocket-Protocol"] = ", ".join(self.subprotocols)
        if self.offered_extensions:
            request_headers["Sec-WebSocket-Extensions"] = serialize_extensions(
                self.offered_extensions
            )
        if user_agent is not None:
            request_headers["User-Agent"] = user_agent
        if headers is not None:
            request_headers.update(headers)
        self.request = Request(path, request_headers)
        #: The server's response once received, the accepted subprotocol and extensions.
        self.response: Response | None = None
        self.subprotocol: str | None = None
        self.extensions: list[ExtensionHeader] = []
        #: Bytes received after the response head: the first frames, for the protocol.
        self.trailing_data = b""
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_size)
        self._pending: Response | None = None
        self._body: list[bytes] = []
        self._body_size = 0

    def data_to_send(self) -> bytes:
        """The request bytes to write to the server."""
        request = h11.Request(
            method="GET",
            target=self.request.path.encode("ascii"),
            headers=_encode_headers(self.request.headers),
        )
        return self._h11.send(request) + (self._h11.send(h11.EndOfMessage()) or b"")

    def receive_data(self, data: bytes) -> Response | None:
        """Feed the server's bytes; return the validated Response once complete."""
        conn = self._h11
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    if not data and self._pending is None:
                        raise InvalidHandshake("connection closed during the opening handshake")
                    return None
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code != 101:
                        continue  # 100 Continue and other 1xx are not for us
                    response = self._response(event, b"")
                    self.trailing_data, _ = conn.trailing_data
                    self._check_accepted(response)
                    self.response = response
                    return response
                if isinstance(event, h11.Response):
                    self._pending = self._response(event, b"")
                elif isinstance(event, h11.Data):
                    self._body_size += len(event.data)
                    if self._body_size > self.max_body_size:
                        raise InvalidHandshake(
                            f"rejection response body exceeds {self.max_body_size} bytes"
                        )
                    self._body.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    assert self._pending is not None
                    self._pending.body = b"".join(self._body)
                    self.response = self._pending
                    raise InvalidStatus(self._pending)
        except h11.RemoteProtocolError as exc:
            raise InvalidHandshake(f"malformed HTTP response: {exc}") from None

    @staticmethod
    def _response(event: h11.InformationalResponse | h11.Response, body: bytes) -> Response:
        return Response(
            event.status_code,
            event.reason.decode("latin-1"),
            _h11_headers(event.headers),
            body,
        )

    def _check_accepted(self, response: Response) -> None:
        headers = response.headers
        if "websocket" not in parse_tokens(headers.get_all("Upgrade")):
            raise InvalidUpgrade(f"response Upgrade header is {headers.get('Upgrade')!r}")
        if "upgrade" not in parse_tokens(headers.get_all("Connection")):
            raise InvalidUpgrade(f"response Connection header is {headers.get('Connection')!r}")
        accepts = headers.get_all("Sec-WebSocket-Accept")
        if len(accepts) != 1:
            raise InvalidHeader("Sec-WebSocket-Accept", ", ".join(accepts) or None)
        if accepts[0] != accept_key(self.key):
            raise InvalidHeader("Sec-WebSocket-Accept", accepts[0], "Sec-WebSocket-Accept mismatch")
        protocols = parse_list(headers.get_all("Sec-WebSocket-Protocol"))
        if protocols:
            if len(protocols) > 1:
                raise NegotiationError(f"server selected several subprotocols: {protocols}")
            if protocols[0] not in self.subprotocols:
                raise NegotiationError(f"server selected unoffered subprotocol {protocols[0]!r}")
            self.subprotocol = protocols[0]
        accepted = response.extensions
        offered = {name for name, _ in self.offered_extensions}
        for name, _ in accepted:
            if name not in offered:
                raise NegotiationError(f"server accepted unoffered extension {name!r}")
        self.extensions = accepted


class ServerHandshake:
    """The server's half of the opening handshake (RFC 6455 §4.2).

    Feed the client's bytes to ``receive_data()`` until it returns the Request. A
    request that is not a valid upgrade raises InvalidHandshake whose
    ``status_code`` is 400 (or 426 for an unsupported version); send
    ``reject_invalid(exc)`` in answer. Then ``accept()`` gives the 101 response, or
    ``reject()`` any other.
    """

    def __init__(self, *, max_header_size: int = MAX_HEADER_SIZE) -> None:
        self.max_header_size = max_header_size
        self._buffer = b""
        self.request: Request | None = None
        self.response: Response | None = None
        #: Bytes received after the request head: the first frames, for the protocol.
        self.trailing_data = b""

    def receive_data(self, data: bytes) -> Request | None:
        """Feed the client's bytes; return the validated Request once it is complete.

        ``b""`` means the client closed the connection. A head longer than
        ``max_header_size`` is refused with 431.
        """
        if self.request is not None:
            raise InvalidHandshake("the request was already received", 400)
        if not data:
            raise InvalidHandshake("connection closed during the opening handshake", 400)
        buffer = self._buffer + data if self._buffer else bytes(data)
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > self.max_header_size:
                raise InvalidHandshake("request head too large", 431)
            self._buffer = buffer
            return None
        if end + 4 > self.max_header_size:
            raise InvalidHandshake("request head too large", 431)
        self._buffer = b""
        request = parse_request_head(buffer[:end])
        self.request = request
        self._check_request(request)
        if request.headers.get("Content-Length", "0") != "0" or (
            "Transfer-Encoding" in request.headers
        ):
            raise InvalidHandshake("an upgrade request has no body", 400)
        self.trailing_data = buffer[end + 4 :]
        return request

    @staticmethod
    def _check_request(request: Request) -> None:
        headers = request.headers
        if request.method != "GET":
            raise InvalidHandshake(f"WebSocket upgrade needs GET, not {request.method}", 400)
        if request.http_version != "1.1":
            raise InvalidHandshake(
                f"WebSocket upgrade needs HTTP/1.1, not {request.http_version}", 400
            )
        # Straight from the index by lowercased name: no lowercasing and no copy per
        # lookup, on every handshake.
        fields = headers._lookup().get
        if len(fields("host", ())) != 1:
            raise _bad_header("Host", headers)
        if "websocket" not in parse_tokens(fields("upgrade", ())):
            raise _bad_header("Upgrade", headers)
        if "upgrade" not in parse_tokens(fields("connection", ())):
            raise _bad_header("Connection", headers)
        if fields("sec-websocket-version") != ["13"]:
            exc = _bad_header("Sec-WebSocket-Version", headers)
            exc.status_code = 426
            raise exc
        keys = fields("sec-websocket-key", ())
        if len(keys) != 1 or _KEY.fullmatch(keys[0]) is None:
            raise _bad_header("Sec-WebSocket-Key", headers)
        try:
            request.extensions  # noqa: B018 - parse now so a malformed header fails here
        except InvalidHeader as exc:
            exc.status_code = 400
            raise

    def accept(
        self,
        request: Request,
        *,
        subprotocol: str | None = None,
        extensions: Sequence[ExtensionHeader] = (),
        headers: HeadersLike | None = None,
    ) -> bytes:
        """The 101 response bytes accepting ``request`` (see ``accept_response``)."""
        return serialize_response(
            self.accept_response(
                request, subprotocol=subprotocol, extensions=extensions, headers=headers
            )
        )

    def accept_response(
        self,
        request: Request,
        *,
        subprotocol: str | None = None,
        extensions: Sequence[ExtensionHeader] = (),
        headers: HeadersLike | None = None,
    ) -> Response:
        """The 101 Response accepting ``request``, for the caller to adjust and serialize.

        ``subprotocol`` must be one the client offered (see ``select_subprotocol``),
        ``extensions`` the accepted extensions with their response parameters.
        """
        if subprotocol is not None and subprotocol not in request.subprotocols:
            raise NegotiationError(f"subprotocol {subprotocol!r} was not offered by the client")
        key = request.key
        assert key is not None
        response_headers = Headers(
            [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", accept_key(key)),
            ]
        )
        if subprotocol is not None:
            response_headers["Sec-WebSocket-Protocol"] = subprotocol
        if extensions:
            response_headers["Sec-WebSocket-Extensions"] = serialize_extensions(extensions)
        if headers is not None:
            response_headers.update(headers)
        self.response = Response(101, "Switching Protocols", response_headers)
        return self.response

    def reject(
        self,
        status_code: int,
        headers: HeadersLike | None = None,
        body: bytes = b"",
        reason_phrase: str | None = None,
    ) -> bytes:
        """The bytes of any non-101 response (see ``reject_response``)."""
        return serialize_response(self.reject_response(status_code, headers, body, reason_phrase))

    def reject_response(
        self,
        status_code: int,
        headers: HeadersLike | None = None,
        body: bytes = b"",
        reason_phrase: str | None = None,
    ) -> Response:
        """A non-101 Response, completed with Content-Length and Connection: close."""
        response_headers = Headers(headers)
        if "Content-Length" not in response_headers:
            response_headers["Content-Length"] = str(len(body))
        if "Connection" not in response_headers:
            response_headers["Connection"] = "close"
        if "Content-Type" not in response_headers and body:
            response_headers["Content-Type"] = "text/plain; charset=utf-8"
        if reason_phrase is None:
            reason_phrase = REASON_PHRASES.get(status_code, "")
        self.response = Response(status_code, reason_phrase, response_headers, body)
        return self.response

    def reject_invalid(self, exc: InvalidHandshake) -> bytes:
        """The response to an invalid upgrade: 426 for the version, 400 otherwise."""
        body = f"Failed to open a WebSocket connection: {exc}.\n".encode()
        if exc.status_code == 426:
            return self.reject(426, [("Sec-WebSocket-Version", "13")], body)
        return self.reject(exc.status_code or 400, None, body)


def _bad_header(name: str, headers: Headers) -> InvalidHeader:
    values = headers.get_all(name)
    exc = InvalidHeader(name, ", ".join(values) if values else None)
    exc.status_code = 400
    return exc


_FORBIDDEN = re.compile("[\r\n\0]")


def serialize_response(response: Response) -> bytes:
    """Serialize a complete response head and body (any status code, any headers)."""
    items = response.headers.raw_items()
    # One search over every name and value at once; the loop only runs to say which.
    if _FORBIDDEN.search("".join([text for item in items for text in item])) or not all(
        name for name, _ in items
    ):
        for name, value in items:
            if _FORBIDDEN.search(name + value) or not name:
                raise ValueError(f"invalid header field {name!r}: {value!r}")
    lines = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}".rstrip()]
    lines += [f"{name}: {value}" for name, value in items]
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + response.body


REASON_PHRASES = {
    200: "OK",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
