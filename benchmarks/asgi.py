"""ASGI servers benchmark: one Starlette WebSocket echo app under each server, in one run.

What runs. The same application (``benchmarks/asgi_app.py``: Starlette, a route that
sends each message back) is served, each in its own process on 127.0.0.1, by:

* ``trillium serve`` on trio (the default) and on asyncio (``--backend asyncio``);
* uvicorn with its ``websockets`` and ``wsproto`` WebSocket backends (and
  ``websockets-sansio``, its newest), with its defaults otherwise: uvloop and
  httptools when they are installed (``nox -s bench`` installs them, as
  ``uvicorn[standard]`` does), asyncio and h11 if not; the report says which;
* hypercorn with its trio worker, in process (``--workers 0``).

Every server has compression off, keepalive pings off (or an hour apart, for those
that can't turn them off), access logs off, lifespan off and the message size limit
raised. The load generator is ``benchmarks/echo_load.py``, the one ``echo.py``
uses, in its own process: raw sockets, masked frames built once, replies counted by
their headers. It does the same work whatever the server, so the servers are what is
measured.

What is measured, for binary messages of 16 B and 1 KiB:

* **echo throughput**: 64 messages in flight on one connection, over a timed
  window after a warm-up;
* **CPU per message**: the server process's ``utime + stime`` over the window divided
  by the messages echoed (the steadiest figure: it hardly depends on how the two
  processes share the machine);
* **latency**: one 16 B message in flight, round trip p50 and p99.

Rounds interleave the servers, so a noisy neighbour hits them all alike; the best
round is reported. Before timing, every server must echo three random messages of
each size byte for byte. Ratios compare trillium (on trio) with each other server:
``x1.50`` in a throughput column means trillium echoes 1.5 times as many messages,
in a CPU column that the other server spends 1.5 times as much CPU per message.

Usage: ``python benchmarks/asgi.py [--quick] [--only NAME[,NAME...]]``. About a minute
in full; ``--quick`` (one short round) about 20 seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
LOAD_PY = HERE / "echo_load.py"
APP = "asgi_app:app"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIZES = [16, 1024]
INFLIGHT = 64
MAX_SIZE = 1 << 26
TRILLIUM = "trillium"


def _trillium(*extra: str) -> list[str]:
    return [
        *("-m", "trillium", "serve", APP, "--app-dir", str(HERE)),
        *("--host", "127.0.0.1", "--port", "{port}", "--no-access-log"),
        *("--log-level", "warning", "--lifespan", "off", "--ws-no-compression"),
        *("--ws-ping-interval", "0", "--ws-max-size", str(MAX_SIZE), *extra),
    ]


def _uvicorn(ws: str) -> list[str]:
    return [
        *("-m", "uvicorn", APP, "--app-dir", str(HERE), "--ws", ws),
        *("--host", "127.0.0.1", "--port", "{port}", "--no-access-log"),
        *("--log-level", "warning", "--lifespan", "off", "--ws-per-message-deflate", "False"),
        *("--ws-ping-interval", "3600", "--ws-max-size", str(MAX_SIZE)),
    ]


def _hypercorn() -> list[str]:
    # --workers 0: serve in this process (not a spawned worker), so that its CPU
    # time is the process's.
    return [
        *("-m", "hypercorn", "--worker-class", "trio", "--workers", "0"),
        *("--bind", "127.0.0.1:{port}", "--log-level", "warning", APP),
    ]


#: name -> command line (after the interpreter), with ``{port}`` to fill in.
SERVERS: dict[str, list[str]] = {
    TRILLIUM: _trillium(),
    "trillium-asyncio": _trillium("--backend", "asyncio"),
    "uvicorn-websockets": _uvicorn("websockets"),
    "uvicorn-wsproto": _uvicorn("wsproto"),
    "uvicorn-websockets-sansio": _uvicorn("websockets-sansio"),
    "hypercorn-trio": _hypercorn(),
}


@dataclass
class Settings:
    rounds: int
    warmup: float
    duration: float
    latency_duration: float


FULL = Settings(3, 0.3, 1.0, 1.0)
QUICK = Settings(1, 0.1, 0.3, 0.3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One server subprocess, its output in a temporary file."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.port = free_port()
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115  (closed in stop)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [sys.executable, *(arg.format(port=self.port) for arg in argv)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=HERE,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        output = self.output()
        self.stop()
        raise RuntimeError(f"{name} did not start: {output[-2000:]}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        """CPU seconds so far (utime + stime); 0 once the process is gone."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except FileNotFoundError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class LoadGenerator:
    """``echo_load.py`` in its own process, one JSON command per line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(LOAD_PY)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def __call__(self, cmd: str, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator died (exit status {self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def settle(servers: list[Server], timeout: float = 10.0) -> None:
    """Wait until no server uses CPU (all done importing and starting up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = [server.cpu() for server in servers]
        time.sleep(0.3)
        if all(s.cpu() - b <= 0.01 for s, b in zip(servers, before, strict=True)):
            return


def fmt_size(size: int) -> str:
    return f"{size} B" if size < 1024 else f"{size // 1024} KiB"


def fmt_rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate / 1000:,.1f} k/s"


def ratio(mine: float | None, theirs: float | None) -> str:
    if not mine or not theirs:
        return ""
    return f"x{mine / theirs:.2f}"


def run(settings: Settings, names: list[str]) -> int:
    load = LoadGenerator()
    servers: dict[str, Server] = {}
    failures: dict[str, str] = {}
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    started = time.perf_counter()

    def progress(what: str) -> None:
        print(f"[{time.perf_counter() - started:4.0f} s] {what}", flush=True)

    def call(server: Server, cmd: str, **kwargs: Any) -> dict[str, Any] | None:
        if server.name in failures:
            return None
        result = load(cmd, port=server.port, pid=server.pid, framed=True, **kwargs)
        if "error" in result or not server.alive():
            error = result.get("error", "server exited")
            failures[server.name] = f"{cmd}: {error}; output: {server.output()[-500:]}"
            print(f"  ! {server.name}: {failures[server.name]}", flush=True)
            return None
        return result

    try:
        for name in names:
            try:
                servers[name] = Server(name, SERVERS[name])
            except RuntimeError as exc:
                failures[name] = str(exc)
                print(f"  ! {exc}", flush=True)
        settle(list(servers.values()))
        for server in servers.values():
            for size in SIZES:
                call(server, "verify", size=size)
        for rnd in range(settings.rounds):
            progress(f"echo, round {rnd + 1}/{settings.rounds}")
            for size in SIZES:
                for name, server in servers.items():
                    r = call(
                        server,
                        "echo",
                        size=size,
                        inflight=INFLIGHT,
                        warmup=settings.warmup,
                        duration=settings.duration,
                        max_messages=2_000_000,
                    )
                    if r and r["messages"]:
                        n = r["messages"]
                        values[f"rate {size}"][name].append(n / r["elapsed"])
                        values[f"cpu {size}"][name].append(r["server_cpu"] / n * 1e6)
            progress(f"latency, round {rnd + 1}/{settings.rounds}")
            for name, server in servers.items():
                r = call(
                    server, "latency", size=16, samples=100_000, duration=settings.latency_duration
                )
                if r:
                    values["p50"][name].append(r["p50"])
                    values["p99"][name].append(r["p99"])
        for server in servers.values():
            if not server.alive() and server.name not in failures:
                failures[server.name] = f"exited: {server.output()[-500:]}"
    finally:
        for server in servers.values():
            server.stop()
        load.stop()

    def best(metric: str, name: str, higher: bool) -> float | None:
        got = values[metric].get(name)
        if not got:
            return None
        return max(got) if higher else min(got)

    print()
    print(report(names, best, failures, settings))
    return 1 if TRILLIUM in failures else 0


def report(names: list[str], best: Any, failures: dict[str, str], settings: Settings) -> str:
    lines = [
        "## ASGI servers: WebSocket echo of a Starlette app",
        "",
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        + ", ".join(
            f"{pkg} {version(pkg)}"
            for pkg in ("trillium", "starlette", "uvicorn", "hypercorn", "websockets", "wsproto")
        )
        + (f", uvloop {version('uvloop')}" if importlib.util.find_spec("uvloop") else ", no uvloop")
        + (f", httptools {version('httptools')}" if importlib.util.find_spec("httptools") else "")
        + f". Best of {settings.rounds} round(s); {INFLIGHT} messages in flight.",
        "",
    ]
    header = "| server |"
    rule = "|---|"
    for size in SIZES:
        header += f" echo {fmt_size(size)} | trillium x | CPU/msg {fmt_size(size)} | trillium x |"
        rule += "---:|---:|---:|---:|"
    header += " latency p50 / p99 (16 B) |"
    rule += "---:|"
    lines += [header, rule]
    for name in names:
        row = f"| {name} |"
        for size in SIZES:
            rate = best(f"rate {size}", name, True)
            cpu = best(f"cpu {size}", name, False)
            mine_rate = best(f"rate {size}", TRILLIUM, True)
            mine_cpu = best(f"cpu {size}", TRILLIUM, False)
            row += f" {fmt_rate(rate)} | {'' if name == TRILLIUM else ratio(mine_rate, rate)} |"
            row += f" {f'{cpu:.1f} µs' if cpu else '-'} |"
            row += f" {'' if name == TRILLIUM else ratio(cpu, mine_cpu)} |"
        p50, p99 = best("p50", name, False), best("p99", name, False)
        row += f" {f'{p50:.0f} / {p99:.0f} µs' if p50 else '-'} |"
        lines.append(row)
    lines += [
        "",
        "trillium x: how many times more messages per second trillium (on trio) echoes, "
        "and how many times more CPU per message the other server spends.",
    ]
    for name, error in failures.items():
        lines.append(f"- {name} failed: {error}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--only", help="comma-separated server names (trillium is always run)")
    args, _ = parser.parse_known_args()  # nox passes echo.py's options too
    names = list(SERVERS)
    if args.only:
        wanted = {TRILLIUM, *args.only.split(",")}
        names = [name for name in names if name in wanted]
    return run(QUICK if args.quick else FULL, names)


if __name__ == "__main__":
    sys.exit(main())
