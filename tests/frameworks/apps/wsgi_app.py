"""A Flask app using trillium's blocking face two ways, served by Werkzeug or Gunicorn.

- ``/ws``: ``trillium.Server.accept(request.environ)`` in a plain Flask view;
- ``/sock``: Flask-Sock's echo example, with trillium installed as simple_websocket.

``EVENTS`` records what the views saw (for in-process servers; Gunicorn runs it in
another process, where ``/events`` reports them).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import trillium

sys.modules["simple_websocket"] = trillium  # what Flask-Sock imports Server from
from flask import Flask, request  # noqa: E402
from flask_sock import Sock  # noqa: E402

EVENTS: list[Any] = []

app = Flask(__name__)
app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25}
sock = Sock(app)


@app.route("/ws", websocket=True)  # Werkzeug routes upgrade requests to websocket rules only
def plain() -> str:
    timeout = float(request.args.get("timeout", 30))
    ws = trillium.Server.accept(
        request.environ,
        subprotocols=["chat"],
        max_message_size=1000,
        ping_interval=float(request.args.get("ping", 0)) or None,
    )
    EVENTS.append(["accepted", ws.mode, ws.subprotocol])
    try:
        while True:
            message = ws.receive(timeout=timeout)
            if message is None:
                EVENTS.append(["receive timed out"])
                ws.send("anyone there?")
            elif message == "close please":
                ws.close(4000, "as asked")
                break
            else:
                ws.send(message)
    except trillium.ConnectionClosed as exc:
        tag = request.args.get("tag")
        EVENTS.append(["closed", exc.reason] + ([tag] if tag else []))
    return ""


@sock.route("/sock")
def echo(ws: Any) -> None:
    # Flask-Sock's README example, as is.
    while True:
        data = ws.receive()
        ws.send(data)


@app.route("/events")
def events() -> str:
    return json.dumps(EVENTS)
