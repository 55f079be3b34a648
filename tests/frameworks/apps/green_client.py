"""trillium.Client in greenlets of a monkey-patched process, against wsgi_app.py's
app: ``python green_client.py {gevent,eventlet} HOST:PORT``.

Three greenlets each connect (two by host name, resolved in trio's worker thread),
echo text and binary through Flask-Sock's route, wait 0.3 s in ``receive(timeout)``
for nothing, and close; one more asks the plain route to close with 4000, and a
last one is left open for trillium to close (1001) at exit. A ticker greenlet counts
its turns meanwhile. Prints one JSON object with what they saw.
"""

import sys

library, server = sys.argv[1], sys.argv[2]
if library == "gevent":
    from gevent import monkey

    monkey.patch_all()
    import gevent

    spawn, sleep = gevent.spawn, gevent.sleep
else:
    import eventlet

    eventlet.monkey_patch()
    spawn, sleep = eventlet.spawn, eventlet.sleep

import json  # noqa: E402

import trillium  # noqa: E402

port = server.rpartition(":")[2]
ticks = 0
results: dict[str, object] = {}


def ticker() -> None:
    global ticks
    while True:
        ticks += 1
        sleep(0.01)


def echo(name: str, host: str) -> None:
    with trillium.Client.connect(f"ws://{host}:{port}/sock", open_timeout=10) as ws:
        echoed = []
        for message in (f"text from {name}", b"\x00\x01 binary from " + name.encode()):
            ws.send(message)
            echoed.append(ws.receive(timeout=10) == message)
        before = ticks
        nothing = ws.receive(timeout=0.3)
        ticked = ticks - before
        ws.close(1000, "bye")
    results[name] = {
        "echoed": echoed,
        "nothing": nothing,
        "ticked_while_waiting": ticked,
        "close_reason": ws.close_reason,
    }


def closed_by_server() -> None:
    ws = trillium.Client.connect(f"ws://127.0.0.1:{port}/ws", subprotocols=["chat"])
    ws.send("close please")
    try:
        ws.receive(timeout=10)
    except trillium.ConnectionClosed as exc:
        results["closed_by_server"] = [exc.reason, exc.message]


def left_open() -> None:
    # Still open when the script ends: trillium closes it with 1001 at exit.
    ws = trillium.Client.connect(f"ws://127.0.0.1:{port}/ws?tag=left-open-{library}")
    ws.send("still here")
    results["left_open"] = ws.receive(timeout=10)


spawn(ticker)
greenlets = [
    spawn(echo, "a", "127.0.0.1"),
    spawn(echo, "b", "localhost"),
    spawn(echo, "c", "localhost"),
    spawn(closed_by_server),
    spawn(left_open),
]
for greenlet in greenlets:
    greenlet.wait() if library == "eventlet" else greenlet.join(30)
print(json.dumps(results), flush=True)
