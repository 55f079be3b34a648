"""Interop with a real browser: headless Chromium's WebSocket against a trillium server.

A tiny HTTP server of our own (in a thread, on 127.0.0.1) serves ``browser/echo.html``;
Chromium loads it, the page talks to two trillium echo servers, tells the first one
``RESULT ok`` over the WebSocket itself, and POSTs what it saw (close codes included)
back to ``/report``. Both sides' views are asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

from trillium.core.deflate import ServerPerMessageDeflateFactory
from trillium.exceptions import ConnectionClosedError

from ._helpers import (
    BIG,
    BINARY,
    BROWSER_DIR,
    JSON_TEXT,
    TEXT,
    ZEBRA,
    Recorder,
    kill_process_group,
    skip_or_fail_in_ci,
)
from ._helpers import trillium_echo_server as echo_server

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary (Debian's ``chromium``; tests/interop/setup.sh installs it)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        skip_or_fail_in_ci(
            "Chromium is not installed (run tests/interop/setup.sh, or apt-get chromium)"
        )
    return path


class PageServer(ThreadingHTTPServer):
    """Serves the files of ``browser/`` and collects the JSON the page POSTs to /report."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _PageHandler)
        self.reports: list[Any] = []
        self.requests: list[str] = []

    @property
    def port(self) -> int:
        return self.server_address[1]


class _PageHandler(BaseHTTPRequestHandler):
    server: PageServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        name = self.path.split("?", 1)[0].lstrip("/")
        path = BROWSER_DIR / name
        if not name or "/" in name or not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.requests.append(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path != "/report":
            self.send_error(404)
            return
        self.server.reports.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output quiet


@contextmanager
def page_server() -> Iterator[PageServer]:
    server = PageServer()
    thread = threading.Thread(target=server.serve_forever, name="page server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@asynccontextmanager
async def run_chromium(chromium: str, url: str, log: Path) -> AsyncIterator[trio.Process]:
    """Chromium showing ``url``, in a session of its own; it and its children die at the end."""
    with tempfile.TemporaryDirectory(prefix="trillium-chromium-") as profile:
        with log.open("wb") as stderr:
            process = await trio.lowlevel.open_process(
                [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                env={**os.environ, "HOME": profile},
            )
        try:
            yield process
        finally:
            with trio.CancelScope(shield=True):
                kill_process_group(process)
                with trio.move_on_after(5):
                    await process.wait()


async def load_page(chromium: str, http: PageServer, url: str, log: Path) -> None:
    """Run Chromium on ``url`` until the page has POSTed its report."""
    async with run_chromium(chromium, url, log) as browser:
        while not http.reports:
            if browser.poll() is not None:
                pytest.fail(
                    f"Chromium exited with {browser.returncode} before the page "
                    f"reported; HTTP requests {http.requests}; stderr:\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            await trio.sleep(0.05)


async def test_browser_exchange_and_close_codes(chromium: str, tmp_path: Path) -> None:
    exchange, server_close = Recorder(), Recorder()
    log = tmp_path / "chromium.log"
    with trio.fail_after(30), page_server() as http:
        async with (
            echo_server(exchange, subprotocols=["chat.v1"]) as (_s1, port),
            echo_server(server_close) as (_s2, close_port),
        ):
            url = f"http://127.0.0.1:{http.port}/echo.html?port={port}&closeport={close_port}"
            await load_page(chromium, http, url, log)
            await exchange.wait(5)
            await server_close.wait(5)

    [report] = http.reports
    assert "error" not in report, report
    # The page's view: every check passed, and the close codes it saw.
    assert report["exchange"] == {
        "result": "ok",
        "close": {"code": 4000, "reason": "done", "wasClean": True},
    }
    assert report["serverClose"] == {
        "close": {"code": 4002, "reason": "server-bye", "wasClean": True},
        "protocol": "",
    }
    # trillium's view of the exchange, then of the browser's close.
    assert exchange.subprotocol == "chat.v1"
    assert exchange.received == [
        TEXT,
        BINARY,
        BIG,
        "cmd:fragments",
        "cmd:binfragments",
        "cmd:ping",
        "RESULT ok",
    ]
    assert exchange.latency is not None and exchange.latency < 10
    assert isinstance(exchange.exception, ConnectionClosedError)
    assert (exchange.exception.code, exchange.exception.message) == (4000, "done")
    assert (exchange.close_code, exchange.close_reason) == (4000, "done")
    # The server-initiated close: the browser echoed the code back.
    assert server_close.received == ["cmd:close 4002 server-bye"]
    assert server_close.close_code == 4002
    assert server_close.exception is None


async def test_browser_negotiates_permessage_deflate(chromium: str, tmp_path: Path) -> None:
    """Chromium offers permessage-deflate on its own: against a default trillium server and
    one with no context takeover and 10-bit windows, the page's socket reports the
    extension (``ws.extensions``) and large compressible messages go compressed both ways."""
    default, strict = Recorder(), Recorder()
    strict_factory = ServerPerMessageDeflateFactory(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=10,
        client_max_window_bits=10,
    )
    log = tmp_path / "chromium.log"
    with trio.fail_after(30), page_server() as http:
        async with (
            echo_server(default) as (_s1, port1),
            echo_server(strict, compression=strict_factory) as (_s2, port2),
        ):
            url = f"http://127.0.0.1:{http.port}/echo.html?deflateports={port1},{port2}"
            await load_page(chromium, http, url, log)
            await default.wait(5)
            await strict.wait(5)

    [report] = http.reports
    assert "error" not in report, report
    answers = [
        "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=10; client_max_window_bits=10",
    ]
    assert report["deflate"] == [
        {
            "extensions": answer,
            "result": "ok",
            "close": {"code": 1000, "reason": "done", "wasClean": True},
        }
        for answer in answers
    ]
    for recorder in (default, strict):
        assert recorder.received == [
            JSON_TEXT,
            ZEBRA,
            JSON_TEXT,
            ZEBRA,
            "cmd:fragments",
            "cmd:binfragments",
            "RESULT ok",
        ]
        assert recorder.connection is not None and recorder.connection.request is not None
        offer = recorder.connection.request.headers["Sec-WebSocket-Extensions"]
        assert offer.startswith("permessage-deflate")
        assert recorder.close_code == 1000
        watch = recorder.deflate
        assert watch is not None and watch.extension is not None
        # Chromium compressed what it sent, trillium what it echoed; both shrank.
        assert watch.compressed_in >= 4 and watch.compressed_out >= 4
        assert watch.bytes_in * 5 < watch.inflated_in
        assert watch.bytes_out * 5 < watch.deflated_out
    ext = strict.deflate.extension  # type: ignore[union-attr]
    assert ext is not None
    assert ext.local_no_context_takeover and ext.remote_no_context_takeover
    assert ext.local_max_window_bits == ext.remote_max_window_bits == 10
