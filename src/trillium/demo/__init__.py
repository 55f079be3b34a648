"""The chat room of ``python -m trillium demo``: one port, one page, every tab a member.

trillium serves both halves on the same port: plain HTTP GETs for the page (``/``,
``/chat.js``, ``/chat.css``) are answered by ``process_request``, and ``/chat`` is
the WebSocket. Each open tab joins the room, sees who is online, and every message
is sent to all members with ``trillium.broadcast`` (encoded once, never waiting for a
slow tab)::

    python -m trillium demo --host 127.0.0.1 --port 8000

The conversation is JSON text messages. The browser sends
``{"type": "message", "text": ...}`` or ``{"type": "rename", "name": ...}``; the
server sends ``welcome`` (your name, who is online, the recent history) once, then
``join``, ``leave``, ``rename`` and ``message`` events, each with the ``online`` list.

The same room runs in your own trio program (``ChatRoom.serve`` takes ``serve``'s
keywords)::

    >>> import trio, trillium, json
    >>> from trillium.demo import ChatRoom
    >>> async def main():
    ...     room = ChatRoom()
    ...     async with room.serve("127.0.0.1", 0) as server:
    ...         port = server.sockets[0].getsockname()[1]
    ...         async with trillium.connect(f"ws://127.0.0.1:{port}/chat?name=ada") as ws:
    ...             welcome = json.loads(await ws.recv())
    ...             await ws.send(json.dumps({"type": "message", "text": "hi"}))
    ...             message = json.loads(await ws.recv())
    ...     return welcome["you"], welcome["online"], message["from"], message["text"]
    >>> trio.run(main)
    ('ada', ['ada'], 'ada', 'hi')
"""

from __future__ import annotations

import json
import signal
import time
import unicodedata
from collections import deque
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from ..broadcast import broadcast
from ..core.handshake import Headers, Request, Response
from ..core.headers import parse_tokens
from ..server import ServerConnection, WebSocketServer, serve

__all__ = ["ChatRoom", "run"]

#: Longest name, in characters; longer ones are cut.
MAX_NAME = 24
#: Longest chat message, in characters; longer ones are cut.
MAX_TEXT = 1000
#: Messages a newcomer is shown on joining.
HISTORY = 50
#: Largest WebSocket message the room accepts, in bytes (JSON of MAX_TEXT characters
#: fits easily); a tab sending more is disconnected with 1009.
MAX_SIZE = 16 * 1024

_STATIC = {
    "/": ("chat.html", "text/html; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/chat.css": ("chat.css", "text/css; charset=utf-8"),
}

# The page loads only its own script and style, and talks only to its own server.
_SECURITY_HEADERS = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "frame-ancestors 'none'",
    ),
]


def _clean(text: Any, limit: int) -> str:
    """``text`` without control characters, its runs of spaces joined, at most ``limit``."""
    if not isinstance(text, str):
        return ""
    kept = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in text)
    return " ".join(kept.split())[:limit]


class ChatRoom:
    """The room: its members (connection to name), the recent history, the page.

    ``process_request`` serves the page and guards the WebSocket endpoint;
    ``handler`` is the WebSocket handler; ``serve(host, port)`` runs both with
    ``trillium.serve``.
    """

    def __init__(self) -> None:
        self.members: dict[ServerConnection, str] = {}
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._guests = 0
        package = resources.files(__name__)
        self._pages = {
            path: (package.joinpath(name).read_bytes(), content_type)
            for path, (name, content_type) in _STATIC.items()
        }

    # ------------------------------------------------------------------ HTTP

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """The page for plain GETs, 404 elsewhere; ``/chat`` upgrades from this page only."""
        path = urlsplit(request.path).path
        upgrade = "websocket" in parse_tokens(request.headers.get_all("Upgrade"))
        if path == "/chat":
            if upgrade and not self._same_origin(request):
                # A page on another site may open WebSockets to us with the user's
                # cookies (cross-site WebSocket hijacking): only our own page may.
                return connection.respond(403, "Cross-origin WebSocket refused.\n")
            return None  # the upgrade goes on (a GET without Upgrade gets 400)
        if upgrade or request.method != "GET" or path not in self._pages:
            return connection.respond(404, "Not found. The chat room is at /.\n")
        body, content_type = self._pages[path]
        return Response(
            200, "OK", Headers([("Content-Type", content_type), *_SECURITY_HEADERS]), body
        )

    @staticmethod
    def _same_origin(request: Request) -> bool:
        origin = request.origin
        if origin is None:
            return True  # not a browser: no ambient credentials to abuse
        return urlsplit(origin).netloc.lower() == (request.host or "").lower()

    # ------------------------------------------------------------------ WebSocket

    def online(self) -> list[str]:
        """The names of the members, sorted."""
        return sorted(self.members.values(), key=str.lower)

    def _unique(self, wanted: str, ws: ServerConnection | None = None) -> str:
        taken = {name.lower() for conn, name in self.members.items() if conn is not ws}
        if not wanted:
            self._guests += 1
            wanted = f"guest-{self._guests}"
        name, n = wanted, 1
        while name.lower() in taken:
            n += 1
            name = f"{wanted[: MAX_NAME - len(str(n)) - 1]}-{n}"
        return name

    def tell_all(self, event: dict[str, Any], exclude: ServerConnection | None = None) -> None:
        """Send ``event`` (with the ``online`` list) to every member but ``exclude``."""
        event["online"] = self.online()
        broadcast([c for c in self.members if c is not exclude], json.dumps(event))

    async def handler(self, ws: ServerConnection) -> None:
        """A member's life: welcome, join notice, messages, leave notice."""
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        name = self._unique(_clean(query.get("name", [""])[0], MAX_NAME))
        self.members[ws] = name
        try:
            self.tell_all({"type": "join", "name": name}, exclude=ws)
            welcome = {"type": "welcome", "you": name, "history": list(self.history)}
            welcome["online"] = self.online()
            await ws.send(json.dumps(welcome))
            async for data in ws:
                self._receive(ws, data)
        finally:
            name = self.members.pop(ws)
            self.tell_all({"type": "leave", "name": name})

    def _receive(self, ws: ServerConnection, data: str | bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            return  # not JSON: ignored, as anything else the room doesn't know
        if not isinstance(event, dict):
            return
        if event.get("type") == "message":
            text = _clean(event.get("text"), MAX_TEXT)
            if text:
                message: dict[str, Any] = {"type": "message", "from": self.members[ws]}
                message.update(text=text, at=round(time.time(), 3))
                self.history.append(dict(message))
                self.tell_all(message)
        elif event.get("type") == "rename":
            wanted = _clean(event.get("name"), MAX_NAME)
            old = self.members[ws]
            if wanted and wanted != old:
                self.members[ws] = new = self._unique(wanted, ws)
                self.tell_all({"type": "rename", "old": old, "name": new})

    def serve(
        self, host: str | None = "127.0.0.1", port: int = 8000, **kwargs: Any
    ) -> WebSocketServer:
        """``trillium.serve`` with this room's handler and ``process_request``."""
        kwargs.setdefault("max_size", MAX_SIZE)
        server: WebSocketServer = serve(
            self.handler, host, port, process_request=self.process_request, **kwargs
        )
        return server


async def _main(host: str, port: int) -> None:
    room = ChatRoom()
    # Ctrl-C (or SIGTERM) ends serve_forever's wait; leaving the block closes every
    # connection with 1001 (going away), and the tabs say they were disconnected.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with room.serve(host, port) as server:
            bound = server.sockets[0].getsockname()[1]
            shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
            shown = f"[{shown}]" if ":" in shown else shown
            print(f"trillium chat demo on http://{shown}:{bound}", flush=True)
            print(
                "Open it in two browser tabs (or on two machines) and chat; "
                "every tab joins the room. Ctrl-C stops.",
                flush=True,
            )
            async for _ in signals:
                break
            print("Stopping.", flush=True)


def run(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the chat room until Ctrl-C (``python -m trillium demo``)."""
    trio.run(_main, host, port)
