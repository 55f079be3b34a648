"""WebSocket wrappers over an ASGI ``(scope, receive, send)`` triple, for any ASGI server.

Two flavours, for the two APIs people already know:

- ``WebSocketASGI``: simple-websocket's ASGI class (``import trillium as
  simple_websocket`` keeps such code working)::

      ws = await WebSocketASGI.accept(scope, receive, send, subprotocols=["chat"])
      while True:
          await ws.send(await ws.receive())   # ConnectionClosed when the client leaves

- ``WebSocket`` with ``WebSocketState``: a Starlette-style wrapper with typed
  receive and send (``receive_text`` refuses bytes, ``receive_bytes`` refuses
  text), JSON, iterators, an idempotent ``close``, and the request's ``headers``,
  ``query_params``, ``url`` and a per-connection ``state``::

      ws = WebSocket(scope, receive, send)
      await ws.accept()
      async for text in ws.iter_text():
          await ws.send_text(text.upper())

Both only speak ASGI messages: they run under uvicorn, hypercorn, daphne or
trillium's own server (``trillium.asgi.serve``) alike.
"""

from __future__ import annotations

import enum
import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from ..core.close import Close, CloseCode
from ..core.headers import Headers
from ..exceptions import ConnectionClosed, WebSocketException
from .types import Message, Receive, Scope, Send

__all__ = [
    "URL",
    "QueryParams",
    "State",
    "WebSocket",
    "WebSocketASGI",
    "WebSocketDisconnect",
    "WebSocketState",
]


# --------------------------------------------------------------------- simple-websocket


class WebSocketASGI:
    """simple-websocket's ASGI wrapper: ``accept``, ``receive``, ``send``, ``close``.

    Use the ``accept`` class method, which completes the handshake; ``subprotocols``
    lists those the application supports, and the first one the client offered
    (from the scope's ``subprotocols``, in the client's order) is chosen, else none.
    ``subprotocol`` is the one chosen and ``connected`` tells whether the connection
    is open.

    A runnable example, with hand-written ``receive`` and ``send`` standing in for a
    server::

        >>> import trio
        >>> events = [
        ...     {"type": "websocket.connect"},
        ...     {"type": "websocket.receive", "text": "hello"},
        ...     {"type": "websocket.disconnect", "code": 1000},
        ... ]
        >>> sent = []
        >>> async def receive():
        ...     return events.pop(0)
        >>> async def send(message):
        ...     sent.append(message)
        >>> async def app(scope, receive, send):
        ...     ws = await WebSocketASGI.accept(scope, receive, send, subprotocols=["v2"])
        ...     try:
        ...         while True:
        ...             await ws.send(f"{ws.subprotocol}: {await ws.receive()}")
        ...     except ConnectionClosed as exc:
        ...         return exc.reason   # simple-websocket's name for the close code
        >>> trio.run(app, {"type": "websocket", "subprotocols": ["v1", "v2"]}, receive, send)
        1000
        >>> [m.get("subprotocol", m.get("text")) for m in sent]
        ['v2', 'v2: hello']
    """

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        subprotocols: Sequence[str] | None = None,
    ) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        self.subprotocols = list(subprotocols or [])
        #: The subprotocol chosen during ``accept``, or None.
        self.subprotocol: str | None = None
        #: True from ``accept`` until ``close`` or the client's disconnection.
        self.connected = False

    @classmethod
    async def accept(
        cls,
        scope: Scope,
        receive: Receive,
        send: Send,
        subprotocols: Sequence[str] | None = None,
    ) -> WebSocketASGI:
        """Wait for ``websocket.connect``, accept the connection, return the wrapper."""
        ws = cls(scope, receive, send, subprotocols=subprotocols)
        await ws._accept()
        return ws

    async def _accept(self) -> None:
        connect = await self._receive()
        if connect["type"] != "websocket.connect":
            raise ValueError(f"Expected websocket.connect, got {connect['type']!r}")
        for subprotocol in self._scope.get("subprotocols") or ():
            if subprotocol in self.subprotocols:
                self.subprotocol = subprotocol
                break
        await self._send({"type": "websocket.accept", "subprotocol": self.subprotocol})
        self.connected = True

    async def receive(self) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises ``ConnectionClosed`` (``reason`` is the close code, ``message`` its
        text) when the client disconnects, ``OSError`` for any other ASGI event.
        """
        message = await self._receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            return text if text is not None else bytes(message.get("bytes") or b"")
        if kind == "websocket.disconnect":
            self.connected = False
            code = message.get("code")
            if code is None:
                code = CloseCode.NO_STATUS_RCVD
            raise ConnectionClosed(Close(code, message.get("reason") or ""))
        raise OSError(32, f"WebSocket message type not supported: {kind!r}")

    async def send(self, data: str | bytes) -> None:
        """Send ``data``: a text message for ``str``, a binary one for bytes.

        Raises ``ConnectionClosed`` when the server reports the client gone.
        """
        if isinstance(data, str):
            message: Message = {"type": "websocket.send", "text": data}
        else:
            message = {"type": "websocket.send", "bytes": bytes(data)}
        try:
            await self._send(message)
        except OSError as exc:
            self.connected = False
            raise ConnectionClosed(Close(CloseCode.ABNORMAL_CLOSURE)) from exc

    async def close(self, reason: int | None = None, message: str | None = None) -> None:
        """Close the connection (simple-websocket: ``reason`` is the code, default 1000).

        Does nothing if it is already closed; errors from a server whose client
        already left are ignored.
        """
        if self.connected:
            self.connected = False
            event: Message = {"type": "websocket.close"}
            if reason is not None:
                event["code"] = reason
            if message:
                event["reason"] = message
            with suppress(Exception):  # the connection is gone already: nothing to close
                await self._send(event)


# --------------------------------------------------------------------- Starlette-style


class WebSocketState(enum.IntEnum):
    """Where a ``WebSocket`` is in its life.

    >>> [state.name for state in WebSocketState]
    ['CONNECTING', 'CONNECTED', 'DISCONNECTED']
    """

    CONNECTING = 0  # before accept()
    CONNECTED = 1  # after accept(): messages flow
    DISCONNECTED = 2  # after close(), or once the client disconnected


class WebSocketDisconnect(WebSocketException):
    """The client disconnected; ``code`` is the close code, ``reason`` its text.

    >>> exc = WebSocketDisconnect(4001, "bye")
    >>> exc.code, exc.reason, str(exc)
    (4001, 'bye', 'WebSocket disconnected: 4001 bye')
    """

    def __init__(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"WebSocket disconnected: {code} {reason}".rstrip())


class QueryParams(Mapping[str, str]):
    """The query string's parameters: a read-only mapping that keeps repeated keys.

    ``params[key]`` is the last value of ``key``; ``getlist(key)`` all of them.

    >>> params = QueryParams("tag=a&tag=b&name=J%C3%BCrgen&empty=")
    >>> params["tag"], params.getlist("tag"), params["name"], params["empty"]
    ('b', ['a', 'b'], 'Jürgen', '')
    >>> str(params)
    'tag=a&tag=b&name=J%C3%BCrgen&empty='
    """

    __slots__ = ("_dict", "_items")

    def __init__(self, query: str | bytes | Iterable[tuple[str, str]] = "") -> None:
        if isinstance(query, bytes):
            query = query.decode("latin-1")
        self._items: list[tuple[str, str]] = (
            parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else list(query)
        )
        self._dict = dict(self._items)

    def __getitem__(self, key: str) -> str:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def getlist(self, key: str) -> list[str]:
        """Every value of ``key``, in order (empty if absent)."""
        return [value for name, value in self._items if name == key]

    get_all = getlist

    def multi_items(self) -> list[tuple[str, str]]:
        """All (key, value) pairs, repeated keys included, in order."""
        return list(self._items)

    def __str__(self) -> str:
        return urlencode(self._items)

    def __repr__(self) -> str:
        return f"QueryParams({str(self)!r})"


class URL:
    """A URL, with its parts: ``scheme``, ``netloc``, ``hostname``, ``port``, ``path``, ``query``.

    >>> url = URL("wss://example.com:8443/api/chat?room=1")
    >>> url.scheme, url.hostname, url.port, url.path, url.query
    ('wss', 'example.com', 8443, '/api/chat', 'room=1')
    >>> url == "wss://example.com:8443/api/chat?room=1"
    True
    """

    __slots__ = ("_parts", "_url")

    def __init__(self, url: str) -> None:
        self._url = url
        self._parts = urlsplit(url)

    @classmethod
    def from_scope(cls, scope: Scope) -> URL:
        """The URL of a request, from the scope's ``scheme``, ``server``, ``root_path``,
        ``path`` and ``query_string`` (the Host header stands in for a missing ``server``).

        >>> scope = {
        ...     "type": "websocket", "scheme": "ws", "server": ("10.0.0.1", 8000),
        ...     "root_path": "/api", "path": "/api/chat room", "query_string": b"x=1",
        ...     "headers": [],
        ... }
        >>> str(URL.from_scope(scope))
        'ws://10.0.0.1:8000/api/chat%20room?x=1'
        """
        scheme = scope.get("scheme") or "ws"
        root_path = scope.get("root_path") or ""
        path = scope.get("path") or "/"
        if root_path and not path.startswith(root_path):
            path = root_path + path  # servers that keep root_path out of path
        netloc = None
        server = scope.get("server")
        if server is not None and server[1] is not None:
            host, port = server
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(scheme)
            netloc = host if port == default else f"{host}:{port}"
        else:  # a Unix socket, or a server that doesn't say
            for name, value in scope.get("headers") or ():
                if name == b"host":
                    netloc = value.decode("latin-1")
                    break
        url = quote(path, safe="/:@!$&'()*+,;=-._~%")
        if netloc is not None:
            url = f"{scheme}://{netloc}{url}"
        query = scope.get("query_string") or b""
        if query:
            url += "?" + query.decode("latin-1")
        return cls(url)

    @property
    def scheme(self) -> str:
        return self._parts.scheme

    @property
    def netloc(self) -> str:
        return self._parts.netloc

    @property
    def hostname(self) -> str | None:
        return self._parts.hostname

    @property
    def port(self) -> int | None:
        return self._parts.port

    @property
    def path(self) -> str:
        return self._parts.path

    @property
    def query(self) -> str:
        return self._parts.query

    def __str__(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"URL({self._url!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (str, URL)):
            return self._url == str(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._url)


class State:
    """An attribute bag over a dict: ``state.user = ...``, ``state.user``.

    >>> state = State({"db": "pool"})
    >>> state.user = "ann"
    >>> state.db, state.user, state._state
    ('pool', 'ann', {'db': 'pool', 'user': 'ann'})
    """

    _state: dict[str, Any]

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "_state", state if state is not None else {})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._state[name]
        except KeyError:
            raise AttributeError(f"'State' object has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._state[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self._state[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"State({self._state!r})"


def _encode_header(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


class WebSocket:
    """A WebSocket connection of an ASGI application, with a Starlette-like API.

    ``WebSocket(scope, receive, send)`` → ``accept()`` → ``receive_*`` / ``send_*``
    → ``close()``. Receiving the client's disconnection raises
    ``WebSocketDisconnect`` (with its ``code``); sending before ``accept()`` or after
    ``close()`` raises ``RuntimeError``. A runnable example, with hand-written
    ``receive`` and ``send`` standing in for a server::

        >>> import trio
        >>> events = [
        ...     {"type": "websocket.connect"},
        ...     {"type": "websocket.receive", "text": '{"n": 41}'},
        ...     {"type": "websocket.disconnect", "code": 1001},
        ... ]
        >>> sent = []
        >>> async def receive():
        ...     return events.pop(0)
        >>> async def send(message):
        ...     sent.append(message)
        >>> async def app(scope, receive, send):
        ...     ws = WebSocket(scope, receive, send)
        ...     await ws.accept()
        ...     try:
        ...         while True:
        ...             data = await ws.receive_json()
        ...             await ws.send_json({"n": data["n"] + 1, "user": ws.query_params["user"]})
        ...     except WebSocketDisconnect as exc:
        ...         return ws.connection_state.name, exc.code
        >>> scope = {"type": "websocket", "path": "/", "query_string": b"user=ann", "headers": []}
        >>> trio.run(app, scope, receive, send)
        ('DISCONNECTED', 1001)
        >>> sent[1]
        {'type': 'websocket.send', 'text': '{"n":42,"user":"ann"}'}
    """

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "websocket":
            raise ValueError(
                f"WebSocket needs a 'websocket' scope, not {scope.get('type')!r}; "
                "check scope['type'] before wrapping"
            )
        self._scope = scope
        self._receive = receive
        self._send = send
        self._state = WebSocketState.CONNECTING
        self._headers: Headers | None = None
        self._query_params: QueryParams | None = None
        self._url: URL | None = None
        self._bag: State | None = None

    # ------------------------------------------------------------- properties

    @property
    def scope(self) -> Scope:
        """The raw ASGI scope dictionary."""
        return self._scope

    @property
    def connection_state(self) -> WebSocketState:
        """CONNECTING, CONNECTED or DISCONNECTED."""
        return self._state

    @property
    def asgi_receive(self) -> Receive:
        """The ASGI ``receive`` callable this wrapper reads from."""
        return self._receive

    @property
    def headers(self) -> Headers:
        """The request's headers: case-insensitive, repeated fields kept (``get_all``)."""
        if self._headers is None:
            self._headers = Headers(
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in self._scope.get("headers") or ()
            )
        return self._headers

    @property
    def query_params(self) -> QueryParams:
        """The query string's parameters."""
        if self._query_params is None:
            self._query_params = QueryParams(self._scope.get("query_string") or b"")
        return self._query_params

    @property
    def url(self) -> URL:
        """The full URL, from the scope's scheme, server, root path, path and query string."""
        if self._url is None:
            self._url = URL.from_scope(self._scope)
        return self._url

    @property
    def state(self) -> State:
        """A per-connection attribute bag over ``scope["state"]`` (the lifespan state's copy)."""
        if self._bag is None:
            self._bag = State(self._scope.setdefault("state", {}))
        return self._bag

    @property
    def client(self) -> tuple[str, int] | None:
        """The client's (host, port), if the server knows it."""
        client = self._scope.get("client")
        return (client[0], client[1]) if client else None

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the client offered, in its order of preference."""
        return list(self._scope.get("subprotocols") or ())

    # ------------------------------------------------------------- lifecycle

    async def accept(
        self,
        subprotocol: str | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] | None = None,
    ) -> None:
        """Accept the connection: wait for ``websocket.connect``, send ``websocket.accept``.

        ``subprotocol`` must be one the client offered (see ``subprotocols``);
        ``headers`` are added to the 101 response.
        """
        if self._state is not WebSocketState.CONNECTING:
            raise RuntimeError(
                "accept() was already called"
                if self._state is WebSocketState.CONNECTED
                else "cannot accept: the WebSocket is disconnected"
            )
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self._state = WebSocketState.DISCONNECTED
            raise WebSocketDisconnect(message.get("code", 1006), message.get("reason") or "")
        if message["type"] != "websocket.connect":
            raise RuntimeError(f"expected ASGI 'websocket.connect', got {message['type']!r}")
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        await self._send(
            {
                "type": "websocket.accept",
                "subprotocol": subprotocol,
                "headers": [(_encode_header(k), _encode_header(v)) for k, v in pairs],
            }
        )
        self._state = WebSocketState.CONNECTED

    async def reject(
        self,
        status_code: int = 403,
        body: bytes | str = b"",
        headers: Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]] | None = None,
    ) -> None:
        """Refuse the connection with an HTTP response instead of accepting it.

        With servers that support the WebSocket Denial Response extension
        (``websocket.http.response`` in the scope's extensions) the client gets
        ``status_code``, ``headers`` and ``body``; with others, a 403.
        """
        if self._state is not WebSocketState.CONNECTING:
            raise RuntimeError("cannot reject: the WebSocket was already accepted or closed")
        self._state = WebSocketState.DISCONNECTED
        if "websocket.http.response" not in (self._scope.get("extensions") or {}):
            await self._send({"type": "websocket.close"})
            return
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        await self._send(
            {
                "type": "websocket.http.response.start",
                "status": status_code,
                "headers": [(_encode_header(k), _encode_header(v)) for k, v in pairs],
            }
        )
        data = body.encode("utf-8") if isinstance(body, str) else body
        await self._send({"type": "websocket.http.response.body", "body": data})

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason``. Idempotent.

        Raises RuntimeError before ``accept()`` (use ``reject()`` to refuse a
        connection).
        """
        if self._state is WebSocketState.DISCONNECTED:
            return
        if self._state is WebSocketState.CONNECTING:
            raise RuntimeError(
                "cannot close: the WebSocket is not accepted yet; call "
                "`await websocket.accept()` first, or `await websocket.reject()` to refuse it"
            )
        self._state = WebSocketState.DISCONNECTED
        with suppress(OSError):  # the client is gone already: it is closed either way
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    # ------------------------------------------------------------- receiving

    async def _receive_message(self) -> Message:
        if self._state is not WebSocketState.CONNECTED:
            if self._state is WebSocketState.CONNECTING:
                raise RuntimeError(
                    "cannot receive: the WebSocket is not accepted yet; "
                    "call `await websocket.accept()` first"
                )
            raise RuntimeError("cannot receive: the WebSocket is disconnected")
        message = await self._receive()
        kind = message["type"]
        if kind == "websocket.receive":
            return message
        if kind == "websocket.disconnect":
            self._state = WebSocketState.DISCONNECTED
            raise WebSocketDisconnect(
                message.get("code", CloseCode.NO_STATUS_RCVD), message.get("reason") or ""
            )
        raise RuntimeError(f"unexpected ASGI message {kind!r}")

    async def receive_text(self) -> str:
        """The next message, which must be text (TypeError for binary)."""
        message = await self._receive_message()
        text = message.get("text")
        if text is None:
            raise TypeError("expected a text message, received binary data; use receive_bytes()")
        return str(text)

    async def receive_bytes(self) -> bytes:
        """The next message, which must be binary (TypeError for text)."""
        message = await self._receive_message()
        data = message.get("bytes")
        if data is None:
            raise TypeError("expected a binary message, received text; use receive_text()")
        return bytes(data)

    async def receive_json(self) -> Any:
        """The next message, a text message holding JSON, parsed."""
        return json.loads(await self.receive_text())

    async def iter_text(self) -> AsyncIterator[str]:
        """Yield text messages until the client disconnects (TypeError for binary)."""
        try:
            while True:
                yield await self.receive_text()
        except WebSocketDisconnect:
            pass

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """Yield binary messages until the client disconnects (TypeError for text)."""
        try:
            while True:
                yield await self.receive_bytes()
        except WebSocketDisconnect:
            pass

    # ------------------------------------------------------------- sending

    def _check_can_send(self) -> None:
        if self._state is WebSocketState.CONNECTED:
            return
        if self._state is WebSocketState.CONNECTING:
            raise RuntimeError(
                "cannot send: the WebSocket is not accepted yet; "
                "call `await websocket.accept()` first"
            )
        raise RuntimeError(
            "cannot send: the WebSocket is closed; stop sending once close() was "
            "called or WebSocketDisconnect was raised"
        )

    async def _send_message(self, message: Message) -> None:
        self._check_can_send()
        try:
            await self._send(message)
        except OSError as exc:  # the server says the client is gone
            self._state = WebSocketState.DISCONNECTED
            raise WebSocketDisconnect(CloseCode.ABNORMAL_CLOSURE) from exc

    async def send_text(self, data: str) -> None:
        """Send a text message."""
        if not isinstance(data, str):
            raise TypeError(f"send_text() needs str, not {type(data).__name__}")
        await self._send_message({"type": "websocket.send", "text": data})

    async def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        """Send a binary message."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_bytes() needs bytes, not {type(data).__name__}")
        await self._send_message({"type": "websocket.send", "bytes": bytes(data)})

    async def send_json(self, data: Any) -> None:
        """Serialize ``data`` to JSON (compact, UTF-8) and send it as a text message."""
        await self.send_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False))
