"""Benchmark trillium's blocking face under gevent and eventlet against simple-websocket.

What runs. For each green library, two echo servers in their own processes,
monkey-patched first: a plain WSGI view (``Server.accept(environ)``, then
``send(receive())`` until the connection closes), served by gevent.pywsgi or
eventlet.wsgi, once with ``trillium.Server`` and once with simple-websocket's.
The client is ``websockets.sync.client`` in this (unpatched) process, compression
off; rounds alternate between the servers.

What is measured, for each server:

* **1 connection**: round trips per second, one 16 B text message in flight;
* **10 connections**: round trips per second in total, ten connections in ten
  client threads doing the same at once (the view's greenlets take turns).

Every echoed message is checked. Each cell is the best of the rounds (the least
disturbed), and the ratio is trillium's over simple-websocket's (> 1: trillium is
faster).

Usage: ``python benchmarks/green.py [--quick]`` (``nox -s bench`` runs it).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version

MESSAGE = "x" * 16
IMPLS = ("trillium", "simple_websocket")


def serve(library: str, impl: str, port: int) -> None:
    """The echo server (run in a subprocess, patched first)."""
    if library == "gevent":
        from gevent import monkey

        monkey.patch_all()
    else:
        import eventlet

        eventlet.monkey_patch()
    import importlib

    ws_lib = importlib.import_module(impl)

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        ws = ws_lib.Server.accept(environ)
        try:
            while True:
                ws.send(ws.receive())
        except ws_lib.ConnectionClosed:
            pass
        if library == "eventlet":  # no HTTP response after the WebSocket
            from eventlet.wsgi import WSGI_LOCAL

            WSGI_LOCAL.already_handled = True
        return []

    if library == "gevent":
        from gevent.pywsgi import WSGIServer

        WSGIServer(("127.0.0.1", port), app, log=None).serve_forever()
    else:
        import eventlet
        import eventlet.wsgi

        eventlet.wsgi.server(eventlet.listen(("127.0.0.1", port)), app, log_output=False)


def start(library: str, impl: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", library, impl, str(port)],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"ws://127.0.0.1:{port}/"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{library} {impl} server didn't start") from None
            time.sleep(0.05)


def round_trips(url: str, count: int) -> float:
    """Round trips per second on one connection."""
    from websockets.sync.client import connect

    with connect(url, compression=None, open_timeout=10) as ws:
        for _ in range(50):  # warm up
            ws.send(MESSAGE)
            ws.recv(timeout=10)
        started = time.perf_counter()
        for _ in range(count):
            ws.send(MESSAGE)
            if ws.recv(timeout=10) != MESSAGE:
                raise AssertionError("wrong echo")
        return count / (time.perf_counter() - started)


def concurrent_round_trips(url: str, count: int, connections: int = 10) -> float:
    """Round trips per second, in total, on ``connections`` connections at once."""
    errors: list[BaseException] = []

    def client() -> None:
        try:
            round_trips(url, count)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]
    return connections * count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    parser.add_argument("--serve", nargs=3, metavar=("LIBRARY", "IMPL", "PORT"), help="(internal)")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]))
        return
    rounds, count = (1, 300) if args.quick else (5, 3000)
    print(
        f"Python {platform.python_version()}, gevent {version('gevent')}, eventlet "
        f"{version('eventlet')}, simple-websocket {version('simple-websocket')}, "
        f"{os.cpu_count()} CPUs; best of {rounds} rounds, round trips per second"
    )
    print(f"{'server':30} {'1 connection':>14} {'10 connections':>16}")
    for library in ("gevent", "eventlet"):
        servers = {impl: start(library, impl) for impl in IMPLS}
        try:
            best = {impl: [0.0, 0.0] for impl in IMPLS}
            for _ in range(rounds):
                for impl, (_, url) in servers.items():
                    one = round_trips(url, count)
                    ten = concurrent_round_trips(url, count // 5)
                    best[impl] = [max(best[impl][0], one), max(best[impl][1], ten)]
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(10)
        server = "gevent.pywsgi" if library == "gevent" else "eventlet.wsgi"
        for impl in IMPLS:
            one, ten = best[impl]
            print(f"{server + ', ' + impl.replace('_', '-'):30} {one:14,.0f} {ten:16,.0f}")
        ratios = [t / s for t, s in zip(best["trillium"], best["simple_websocket"], strict=True)]
        print(f"{'  trillium / simple-websocket':30} {ratios[0]:13.2f}x {ratios[1]:15.2f}x")


if __name__ == "__main__":
    main()
