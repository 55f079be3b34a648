"""Server subprocesses for the ASGI tests: ``trillium serve`` and uvicorn, on free ports.

Each server's output goes to a temporary file (never a pipe that could fill up and
block it); ``ServerProcess.output()`` shows it when a test fails. Servers are stopped
with SIGTERM, then killed if they linger: no test leaves a process behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 15.0
_LISTENING = re.compile(rb"serving ASGI application on (https?)://127\.0\.0\.1:(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server subprocess; ``port`` once it listens."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.port = 0

    def output(self) -> str:
        if self.log.closed:
            return "(closed)"
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def wait_for_output(self, pattern: re.Pattern[bytes], timeout: float) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.log.seek(0)
            match = pattern.search(self.log.read())
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"{self.argv} did not start:\n{self.output()}")

    def wait_for_port(self, port: int, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                time.sleep(0.02)
                continue
            self.port = port
            return
        self.stop()
        raise AssertionError(f"{self.argv} did not start:\n{self.output()}")

    def terminate(self) -> None:
        """Send SIGTERM (a graceful shutdown)."""
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.log.closed:
            self.log.close()


def start_trillium(
    app: str = "tests.asgi.apps:app",
    *args: str,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """``python -m trillium serve APP --port 0 ARGS``, once it listens."""
    server = ServerProcess(
        [sys.executable, "-m", "trillium", "serve", app, "--port", "0", *args], env
    )
    match = server.wait_for_output(_LISTENING, STARTUP_TIMEOUT)
    server.port = int(match.group(2))
    return server


def start_uvicorn(app: str = "tests.asgi.apps:app", *args: str) -> ServerProcess:
    """The same application under uvicorn, once it listens."""
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--log-level", "warning", *args]
    )
    server.wait_for_port(port)
    return server
