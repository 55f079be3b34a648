"""End-to-end benchmark: trillium's servers against real peers, over TCP, in one run.

What runs. Every server is a separate process (``benchmarks/echo_servers.py``) on
127.0.0.1: trillium on trio (``trillium.serve``), the same trillium code on asyncio
(``anyio.run(..., backend="asyncio")``), trio-websocket, websockets
(``websockets.asyncio.server.serve``), aiohttp (``web.WebSocketResponse``), picows, and
two raw TCP echo servers (trio streams, an asyncio ``Protocol``) that show the floor
with no WebSocket framing at all. Every WebSocket server has compression off, keepalive
pings off and size limits lifted, and sends each message back as it arrived.

One load generator drives them all (``benchmarks/echo_load.py``, its own process): raw
non-blocking sockets, client frames masked and built once, replies counted by reading
frame headers only. It sends the same bytes whatever the server, and at 16 B and 1 KiB
does a fraction of any WebSocket server's work per message (at 64 KiB and up, both
sides are mostly the kernel copying bytes), so the servers are what is measured. With
two CPUs or more, every server is pinned to one CPU and the generator (and, in the
client section, each client) to another: left to the scheduler, whether the two
shared a core or not changed a one-in-flight round trip between about 45 and 120 µs
on a 2-CPU machine, which swamped what was measured. The raw TCP servers get the
same number of bytes per message, unframed.

What is measured:

* **Echo throughput**, binary messages of 16 B, 1 KiB, 64 KiB and 1 MiB, 64 messages
  in flight on one connection (pipelined), over a timed window after a warm-up; each
  cell is bounded in time (and in messages for the big sizes).
* **CPU per message**: the server's ``utime + stime`` (``/proc/<pid>/stat``) over the
  window divided by the messages echoed, and the generator's own
  (``time.process_time()``). Throughput depends on how the two processes share the
  machine; CPU per message barely does, so it is the steadiest figure here.
* **Latency**: one 16 B message in flight, round trip p50 and p99.
* **Handshakes per second**: new connections, 4 at a time, each doing the opening
  handshake then the closing handshake; also server CPU per handshake.
* **Memory per idle connection**: a fresh server (fan-out mode); its ``VmRSS``
  (``/proc/<pid>/status``) once settled, before and after the generator opens 1,000 then
  5,000 idle WebSocket connections, divided by their number. Both processes raise
  ``RLIMIT_NOFILE``.
* **Fan-out**: one 16 B message to 1,000 clients (those idle connections), triggered by
  a message on one more connection: ``trillium.broadcast`` and websockets'
  ``broadcast``; the others, which have no such helper, loop over their connections
  sending. The time is from the server's ``time.monotonic_ns()`` just before the
  broadcast (carried in the message) to the generator holding the last copy; the
  median of the rounds is reported, with the server's CPU per fan-out (10 ms clock
  ticks spread over the rounds: coarse). A third as many rounds again come first, not
  counted: every server's first fan-outs to fresh connections are slower, by up to
  half (measured for trillium and websockets alike, e.g. 15-20 ms falling to 11-14).
* **Client libraries** (``benchmarks/echo_clients.py``): the other way round, one fixed
  server (picows, the cheapest) and each library's client (``trillium.connect`` on trio
  and on asyncio, websockets, trio-websocket, aiohttp, picows) keeping 64 messages in
  flight; the figure is the client process's CPU per message. The load generator's own
  CPU per message (above) says how much work each server's output makes for its peer
  (how it batches writes), not what a client library costs, so the client targets are
  checked against both, labelled.

**The allocator.** At 64 KiB and 1 MiB, what a process pays per message swings with
glibc malloc's dynamic thresholds: once a freed block at the top of the heap exceeds
the trim threshold (128 KiB until a big ``mmap``-ed block is freed), the heap is given
back to the kernel, and the next messages fault its pages in again, in the kernel's
copy into a fresh receive buffer or in the copy of a payload. Which processes fall into
that depends on what they happened to free first: the same websockets client measured
0 to 11 page faults per 64 KiB message from one run to the next, and faults were half
of trillium's client CPU. So every process of the echo, latency, handshake and client
sections runs with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` at 32 MiB
(no faults per message for anyone), the same for every library; ``--malloc default``
measures with glibc's defaults instead. The memory section's servers always keep the
defaults, since a higher trim threshold would hold freed memory in their RSS.

An idle server should use no CPU: every echo cell also checks that the servers not
being measured stayed idle, and reports any that did not (under "Interference").

Each echo cell runs once per round; rounds interleave servers and sizes, so a noisy
neighbour or a CPU frequency change hits all servers alike, and the best round is
reported (highest throughput, lowest CPU per message: the least disturbed). Ratios
are trillium over websockets from this same run, two ways: best round over best
round, and round by round (the two cells of a round run seconds apart, so a
disturbance that lasts longer hits both) with the median of those ratios. On a
shared machine the first can pair one library's single quiet round with another's
ordinary one (the same 64 KiB server measured 25 to 53 µs per message across rounds
of one run); the targets report both, with a verdict for each. Before timing, every
server must echo three distinct random messages of each size byte for byte.

Usage: ``python benchmarks/echo.py [--quick] [--only NAME[,NAME...]]
[--sections echo,latency,handshakes,connections,clients] [--malloc fixed|default]``
(``nox -s bench`` runs it after ``core.py``). The full run takes about 9 minutes on 2
CPUs; ``--quick`` (short windows, one round, 200 connections) under one. Every
subprocess is stopped on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
SERVERS_PY = HERE / "echo_servers.py"
LOAD_PY = HERE / "echo_load.py"
CLIENTS_PY = HERE / "echo_clients.py"

TRILLIUM, TRILLIUM_ASYNCIO, WEBSOCKETS = "trillium", "trillium-asyncio", "websockets"
SERVERS = [
    TRILLIUM,
    TRILLIUM_ASYNCIO,
    "trio-websocket",
    WEBSOCKETS,
    "aiohttp",
    "picows",
    "raw-trio",
    "raw-asyncio",
]
RAW = {"raw-trio", "raw-asyncio"}
SECTIONS = ["echo", "latency", "handshakes", "connections", "clients"]
CLIENT_SERVER = "picows"  # the fixed server of the client-library section

CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB, MIB = 1024, 1 << 20
SIZES = [16, KIB, 64 * KIB, MIB]
MAX_MESSAGES = {16: 2_000_000, KIB: 1_000_000, 64 * KIB: 50_000, MIB: 2_000}
INFLIGHT = 64
HANDSHAKE_CONCURRENCY = 4
OPEN_CONCURRENCY = 50


@dataclass
class Settings:
    rounds: int
    warmup: float
    duration: float
    latency_duration: float
    handshake_duration: float
    connections: list[int]
    fanout_rounds: int


FULL = Settings(5, 0.3, 1.2, 1.0, 1.5, [1000, 5000], 30)
QUICK = Settings(1, 0.1, 0.3, 0.3, 0.4, [200], 5)


# --------------------------------------------------------------------- processes

#: glibc malloc settings for the processes of the throughput sections (see above).
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * MIB), "MALLOC_TRIM_THRESHOLD_": str(32 * MIB)}
MALLOC_ENV: dict[str, str] = {}  # FIXED_MALLOC unless --malloc default


def environment(malloc: bool) -> dict[str, str]:
    """The environment for a child process: ours, plus MALLOC_ENV when ``malloc``."""
    return {**os.environ, **MALLOC_ENV} if malloc else dict(os.environ)


_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def on_cpu(which: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` pinning a child process to this process's ``which``-th CPU
    (0: servers, 1: load generator and clients), or None with fewer than two CPUs.
    (``preexec_fn`` is unsafe only in a process running threads; this one runs none.)"""
    if len(_CPUS) < 2:
        return None
    cpu = _CPUS[which]
    return lambda: os.sched_setaffinity(0, {cpu})


class ServerProcess:
    """One server subprocess; its stderr goes to a temporary file, shown if it fails."""

    def __init__(self, name: str, mode: str) -> None:
        self.name = name
        self.mode = mode
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVERS_PY), name, mode],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            stdin=subprocess.DEVNULL,
            preexec_fn=on_cpu(0),
            env=environment(mode != "fanout"),  # fan-out servers: RSS is measured
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("PORT "):
            self.proc.kill()
            self.proc.wait()
            error = self.error_output()
            self.stop()
            raise RuntimeError(f"{name} server did not start: {error}")
        self.port = int(line.split()[1])

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

    def rss(self) -> int:
        """Resident memory in bytes."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def settled_rss(self) -> int:
        """VmRSS once it stops moving (at most 5 s)."""
        previous = self.rss()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.25)
            current = self.rss()
            if abs(current - previous) <= 64 * 1024:
                return current
            previous = current
        return previous

    def error_output(self) -> str:
        if self.stderr.closed:
            return "(stopped)"
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace").strip()
        status = self.proc.poll()
        where = f"exit status {status}" if status is not None else "still running"
        return f"({where}) {text[-2000:]}" if text else f"({where}, nothing on stderr)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()


class LoadGenerator:
    """The load generator subprocess, driven one JSON command per line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(LOAD_PY)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            preexec_fn=on_cpu(1),
            env=environment(True),
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


# --------------------------------------------------------------------- results


@dataclass
class Results:
    # metric -> server -> values over rounds
    values: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: list[str] = field(default_factory=list)

    def add(self, metric: str, server: str, value: float) -> None:
        self.values[metric][server].append(value)

    def best(self, metric: str, server: str, higher: bool) -> float | None:
        got = self.values.get(metric, {}).get(server)
        if not got:
            return None
        return max(got) if higher else min(got)

    def median(self, metric: str, server: str) -> float | None:
        got = self.values.get(metric, {}).get(server)
        return statistics.median(got) if got else None

    def paired(self, metric: str, server: str, other: str) -> list[float] | None:
        """``server`` over ``other`` round by round (cells of one round run seconds
        apart), when both have a value for every round; else None."""
        a = self.values.get(metric, {}).get(server)
        b = self.values.get(metric, {}).get(other)
        if not a or not b or len(a) != len(b) or 0 in b:
            return None
        return [x / y for x, y in zip(a, b, strict=True)]


class Bench:
    def __init__(self, settings: Settings, names: list[str], load: LoadGenerator) -> None:
        self.s = settings
        self.names = names
        self.load = load
        self.results = Results()
        self.dead: set[str] = set()
        self.processes: list[ServerProcess] = []
        self.started = time.perf_counter()

    def progress(self, what: str) -> None:
        print(f"[{time.perf_counter() - self.started:5.0f} s] {what}", flush=True)

    def start(self, name: str, mode: str) -> ServerProcess | None:
        try:
            server = ServerProcess(name, mode)
        except RuntimeError as exc:
            self.fail(name, str(exc))
            return None
        self.processes.append(server)
        return server

    def fail(self, name: str, message: str, server: ServerProcess | None = None) -> None:
        if server is not None and not server.alive():
            message += f"; the server process died: {server.error_output()}"
            self.dead.add(name)
        self.results.failures[name].append(message)
        print(f"  ! {name}: {message}", flush=True)

    def call(self, server: ServerProcess, what: str, cmd: str, **kwargs: Any) -> dict[str, Any]:
        """A generator command against ``server``; failures are recorded, not raised."""
        result = self.load(cmd, port=server.port, pid=server.pid, **kwargs)
        if "error" in result:
            self.fail(server.name, f"{what}: {result['error']}", server)
        elif not server.alive():
            self.fail(server.name, f"{what}: server exited", server)
            return {"error": "server exited"}
        return result

    # ------------------------------------------------------------- echo servers

    def run_echo_sections(self, sections: Sequence[str]) -> None:
        servers: dict[str, ServerProcess] = {}
        for name in self.names:
            server = self.start(name, "echo")
            if server is not None:
                servers[name] = server
        s = self.s
        if "echo" in sections:
            for size in SIZES:
                for name, server in servers.items():
                    result = self.call(
                        server, f"verify {size} B", "verify", size=size, framed=name not in RAW
                    )
                    if "error" in result:
                        self.dead.add(name)
            for rnd in range(s.rounds):
                self.progress(f"echo, round {rnd + 1}/{s.rounds}")
                for size in SIZES:
                    for name, server in servers.items():
                        if name in self.dead:
                            continue
                        others = [o for o in servers.values() if o is not server and o.alive()]
                        self.echo_cell(name, server, size, others)
        if "latency" in sections:
            self.progress("latency")
            for _ in range(s.rounds):
                for name, server in servers.items():
                    if name in self.dead:
                        continue
                    r = self.call(
                        server,
                        "latency",
                        "latency",
                        size=16,
                        framed=name not in RAW,
                        samples=100_000,
                        duration=s.latency_duration,
                    )
                    if "error" not in r:
                        self.results.add("p50", name, r["p50"])
                        self.results.add("p99", name, r["p99"])
        if "handshakes" in sections:
            self.progress("handshakes")
            for _ in range(s.rounds):
                for name, server in servers.items():
                    if name in self.dead or name in RAW:
                        continue
                    r = self.call(
                        server,
                        "handshakes",
                        "handshakes",
                        concurrency=HANDSHAKE_CONCURRENCY,
                        warmup=s.warmup,
                        duration=s.handshake_duration,
                    )
                    if "error" in r:
                        continue
                    if r["error_count"]:
                        self.fail(name, f"{r['error_count']} handshakes failed: {r['errors']}")
                    n = r["handshakes"]
                    self.results.add("handshakes/s", name, n / r["elapsed"])
                    self.results.add("handshake server cpu", name, r["server_cpu"] / n * 1e6)
                    self.results.add("handshake client cpu", name, r["client_cpu"] / n * 1e6)
        for server in servers.values():
            if not server.alive() and server.name not in self.dead:
                self.fail(server.name, "echo server exited", server)
            server.stop()

    def echo_cell(
        self, name: str, server: ServerProcess, size: int, others: Sequence[ServerProcess]
    ) -> None:
        s = self.s
        idle_before = [other.cpu() for other in others]
        r = self.call(
            server,
            f"echo {fmt_size(size)}",
            "echo",
            size=size,
            framed=name not in RAW,
            inflight=INFLIGHT,
            warmup=s.warmup,
            duration=s.duration,
            max_messages=MAX_MESSAGES[size],
        )
        for other, before in zip(others, idle_before, strict=True):
            # An idle server should use no CPU: one that does (spinning after a client
            # left, say) steals a core from the server being measured.
            used = other.cpu() - before
            if used > 0.05 + 0.05 * s.duration:
                note = (
                    f"{other.name} (idle) used {used * 1000:.0f} ms of CPU during "
                    f"{name}'s {fmt_size(size)} echo cell"
                )
                self.results.notes.append(note)
                print(f"  ! {note}", flush=True)
        if "error" in r:
            self.dead.add(name)  # whatever state it is in now, later figures would mislead
            return
        n = r["messages"]
        if not n:
            self.fail(name, f"echo {fmt_size(size)}: no message echoed in the window")
            return
        self.results.add(f"rate {size}", name, n / r["elapsed"])
        self.results.add(f"server cpu {size}", name, r["server_cpu"] / n * 1e6)
        self.results.add(f"client cpu {size}", name, r["client_cpu"] / n * 1e6)

    # ------------------------------------------------------------- client libraries

    def run_clients(self) -> None:
        """Each client library against the same (picows) echo server."""
        names = [n for n in self.names if n not in RAW]
        server = self.start(CLIENT_SERVER, "echo")
        if server is None:
            return
        s = self.s
        try:
            for rnd in range(s.rounds):
                self.progress(f"clients, round {rnd + 1}/{s.rounds}")
                for size in SIZES:
                    for name in names:
                        if f"client:{name}" in self.dead:
                            continue
                        self.client_cell(name, size, server)
                        if not server.alive():
                            self.fail(CLIENT_SERVER, "echo server for the clients died", server)
                            return
        finally:
            server.stop()

    def client_cell(self, name: str, size: int, server: ServerProcess) -> None:
        s = self.s
        args = [name, server.port, size, INFLIGHT, s.warmup, s.duration, MAX_MESSAGES[size]]
        try:
            done = subprocess.run(
                [sys.executable, str(CLIENTS_PY), *map(str, args)],
                capture_output=True,
                text=True,
                timeout=s.warmup + s.duration + 60,
                check=False,
                preexec_fn=on_cpu(1),
                env=environment(True),
            )
        except subprocess.TimeoutExpired:
            self.fail(f"client:{name}", f"{fmt_size(size)} echo timed out")
            self.dead.add(f"client:{name}")
            return
        try:
            r = json.loads(done.stdout.strip().splitlines()[-1])
            n = r["messages"]
        except (IndexError, ValueError, KeyError):
            self.fail(
                f"client:{name}",
                f"{fmt_size(size)} echo failed (exit status {done.returncode}): "
                f"{done.stderr.strip()[-1500:]}",
            )
            self.dead.add(f"client:{name}")
            return
        self.results.add(f"lib rate {size}", name, n / r["elapsed"])
        self.results.add(f"lib cpu {size}", name, r["cpu"] / n * 1e6)

    # ------------------------------------------------------------- connections

    def run_connections(self) -> None:
        s = self.s
        for name in self.names:
            if name in RAW:
                continue
            self.progress(f"connections: {name}")
            server = self.start(name, "fanout")
            if server is None:
                continue
            try:
                self.connections_for(name, server)
            finally:
                self.load("release")
                server.stop()
        del s

    def connections_for(self, name: str, server: ServerProcess) -> None:
        s = self.s
        # Warm up: the first handshakes import and cache things no later one pays for.
        r = self.call(server, "warm-up", "handshakes", concurrency=4, warmup=0, duration=0.3)
        if "error" in r:
            return
        if "error" in self.call(server, "control connection", "control"):
            return
        base = server.settled_rss()
        held = 0
        for target in s.connections:
            r = self.call(
                server,
                f"open {target} connections",
                "open",
                count=target - held,
                concurrency=OPEN_CONCURRENCY,
            )
            if "error" in r:
                return
            if r["error_count"]:
                self.fail(name, f"{r['error_count']} connections failed to open: {r['errors']}")
            held = r["held"]
            rss = server.settled_rss()
            alive = self.load("alive")["alive"]
            if alive != held:
                self.fail(name, f"{held - alive} of {held} idle connections were closed")
            self.results.add(f"memory {target}", name, (rss - base) / held)
            self.results.add(f"rss {target}", name, rss)
            if target == s.connections[0]:
                r = self.call(
                    server,
                    f"fan-out to {held}",
                    "fanout",
                    clients=held,
                    rounds=s.fanout_rounds,
                    warmup=s.fanout_rounds // 3,
                )
                if "error" not in r:
                    self.results.add("fanout", name, r["median_ms"])
                    self.results.add("fanout min", name, r["min_ms"])
                    self.results.add("fanout cpu", name, r["server_cpu_ms"])
        self.results.add("rss base", name, base)


# --------------------------------------------------------------------- report


def fmt_size(size: int) -> str:
    if size >= MIB:
        return f"{size // MIB} MiB"
    return f"{size // KIB} KiB" if size >= KIB else f"{size} B"


def fmt_num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100_000:
        return f"{value / 1000:,.0f} k"
    if value >= 10_000:
        return f"{value / 1000:,.1f} k"
    return f"{value:,.0f}"


def fmt_cpu(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table, first column left-aligned, the others right-aligned."""
    cells = [list(head), *(list(r) for r in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = []
    for row in cells:
        figures = zip(row[1:], widths[1:], strict=True)
        padded = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in figures]
        lines.append("| " + " | ".join(padded) + " |")
    rule = ["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]
    lines.insert(1, "|" + "|".join(rule) + "|")
    return "\n".join(lines)


class Report:
    def __init__(self, results: Results, names: list[str]) -> None:
        self.r = results
        self.names = names
        self.ratio_cols = [n for n in (TRILLIUM, TRILLIUM_ASYNCIO) if n in names]
        self.has_ws = WEBSOCKETS in names

    def table(
        self,
        title: str,
        rows: Sequence[tuple[str, str]],
        fmt: Callable[[float | None], str],
        *,
        higher: bool,
        names: Sequence[str] | None = None,
        median: bool = False,
    ) -> None:
        """rows: (label, metric); columns: servers, then trillium(s)/websockets."""
        names = [n for n in (names or self.names)]
        head = ["", *names]
        if self.has_ws:
            head += [f"{n}/websockets" for n in self.ratio_cols]
        lines = []
        for label, metric in rows:

            def get(name: str, metric: str = metric) -> float | None:
                if median:
                    return self.r.median(metric, name)
                return self.r.best(metric, name, higher)

            line = [label, *(fmt(get(n)) for n in names)]
            if self.has_ws:
                line += [fmt_ratio(ratio(get(n), get(WEBSOCKETS))) for n in self.ratio_cols]
            lines.append(line)
        if not any(self.r.values.get(m) for _, m in rows):
            return
        print(f"\n### {title}\n")
        print(render(head, lines))

    def print(self, sections: Sequence[str], settings: Settings) -> None:
        sizes = [(fmt_size(z), z) for z in SIZES]
        ws_names = [n for n in self.names if n not in RAW]
        if "echo" in sections:
            self.table(
                f"Echo throughput, messages/s ({INFLIGHT} in flight, one connection; best round)",
                [(label, f"rate {z}") for label, z in sizes],
                fmt_rate,
                higher=True,
            )
            self.table(
                "Server CPU per message, µs (utime+stime / messages echoed; best round)",
                [(label, f"server cpu {z}") for label, z in sizes],
                fmt_cpu,
                higher=False,
            )
            self.table(
                "Load generator (client) CPU per message, µs (best round)",
                [(label, f"client cpu {z}") for label, z in sizes],
                fmt_cpu,
                higher=False,
            )
            if settings.rounds > 1:
                self.table(
                    "Median rounds, for a sense of the noise: server CPU per message, µs",
                    [(label, f"server cpu {z}") for label, z in sizes],
                    fmt_cpu,
                    higher=False,
                    median=True,
                )
                self.table(
                    "Median rounds: throughput, messages/s",
                    [(label, f"rate {z}") for label, z in sizes],
                    fmt_rate,
                    higher=True,
                    median=True,
                )
        if "latency" in sections:
            self.table(
                "Latency, one 16 B message in flight, µs (best round)",
                [("p50", "p50"), ("p99", "p99")],
                lambda v: fmt_num(v, 1),
                higher=False,
            )
        if "handshakes" in sections:
            self.table(
                f"Opening + closing handshakes ({HANDSHAKE_CONCURRENCY} connections at a time)",
                [("handshakes/s", "handshakes/s")],
                fmt_num,
                higher=True,
                names=ws_names,
            )
            self.table(
                "CPU per handshake, µs",
                [
                    ("server", "handshake server cpu"),
                    ("load generator", "handshake client cpu"),
                ],
                fmt_cpu,
                higher=False,
                names=ws_names,
            )
        if "connections" in sections:
            rows = [(f"KiB per connection at {n:,}", f"memory {n}") for n in settings.connections]
            self.table(
                "Server memory per idle connection (VmRSS growth / connections)",
                rows,
                lambda v: fmt_num(None if v is None else v / 1024, 1),
                higher=False,
                names=ws_names,
            )
            n = settings.connections[0]
            self.table(
                f"Fan-out of one 16 B message to {n:,} clients, ms "
                f"(median of {settings.fanout_rounds} rounds)",
                [
                    ("median of rounds", "fanout"),
                    ("fastest round", "fanout min"),
                    ("server CPU per fan-out", "fanout cpu"),
                ],
                lambda v: fmt_num(v, 2),
                higher=False,
                names=ws_names,
            )
        if "clients" in sections:
            self.table(
                f"Client libraries against the {CLIENT_SERVER} server: echo throughput, "
                f"messages/s ({INFLIGHT} in flight; best round)",
                [(label, f"lib rate {z}") for label, z in sizes],
                fmt_rate,
                higher=True,
                names=ws_names,
            )
            self.table(
                "Client libraries: client process CPU per message, µs (best round)",
                [(label, f"lib cpu {z}") for label, z in sizes],
                fmt_cpu,
                higher=False,
                names=ws_names,
            )

    def targets(self, sections: Sequence[str], settings: Settings) -> None:
        r = self.r
        print("\n### Targets (trillium on trio against websockets, this run)\n")
        if not self.has_ws or TRILLIUM not in self.names:
            print("(needs both trillium and websockets in --only)")
            return

        def line(
            text: str,
            value: float | None,
            ok: Callable[[float], bool],
            rounds: list[float] | None = None,
        ) -> None:
            if value is None:
                print(f"- {text}: not measured")
                return
            verdict = f"{value:.2f}x {'PASS' if ok(value) else 'MISS'}"
            if rounds is None or len(rounds) < 3:
                print(f"- {text}: {verdict}")
                return
            median = statistics.median(rounds)
            each = " ".join(f"{v:.2f}" for v in rounds)
            print(
                f"- {text}: best rounds {verdict}; round by round {each}, "
                f"median {median:.2f}x {'PASS' if ok(median) else 'MISS'}"
            )

        def cmp(metric: str, higher: bool, name: str = TRILLIUM) -> float | None:
            return ratio(r.best(metric, name, higher), r.best(metric, WEBSOCKETS, higher))

        def rounds(metric: str, name: str = TRILLIUM) -> list[float] | None:
            return r.paired(metric, name, WEBSOCKETS)

        kinds = []
        if "echo" in sections:
            kinds.append(("server cpu", "server CPU per message"))
        if "clients" in sections:
            kinds.append(("lib cpu", "client CPU per message (trillium.connect vs websockets)"))
        if "echo" in sections:
            kinds.append(("client cpu", "load generator CPU per message against the server"))
        for metric, label in kinds:
            for size in SIZES:
                limit = 0.5 if size <= KIB else 0.7
                line(
                    f"{label} at {fmt_size(size)} <= {limit}x",
                    cmp(f"{metric} {size}", False),
                    functools.partial(operator.ge, limit),  # v <= limit
                    rounds(f"{metric} {size}"),
                )
        if "connections" in sections:
            for n in settings.connections:
                line(
                    f"memory per idle connection at {n:,} <= 0.65x",
                    cmp(f"memory {n}", False),
                    lambda v: v <= 0.65,
                )
        if "handshakes" in sections:
            line(
                "handshakes per second >= 1.2x",
                cmp("handshakes/s", True),
                lambda v: v >= 1.2,
                rounds("handshakes/s"),
            )
        if "connections" in sections:
            n = settings.connections[0]
            line(f"fan-out to {n:,} clients <= 0.8x time", cmp("fanout", False), lambda v: v <= 0.8)
        if TRILLIUM_ASYNCIO in self.names:
            if "echo" in sections:
                for size in SIZES:
                    line(
                        f"trillium on asyncio no slower than websockets, {fmt_size(size)} "
                        "throughput >= 1.0x",
                        cmp(f"rate {size}", True, TRILLIUM_ASYNCIO),
                        lambda v: v >= 1.0,
                        rounds(f"rate {size}", TRILLIUM_ASYNCIO),
                    )
            if "latency" in sections:
                line(
                    "trillium on asyncio latency p50 <= 1.0x websockets",
                    cmp("p50", False, TRILLIUM_ASYNCIO),
                    lambda v: v <= 1.0,
                    rounds("p50", TRILLIUM_ASYNCIO),
                )

    def failures(self) -> None:
        if self.r.failures:
            print("\n### Failures\n")
            for name, messages in self.r.failures.items():
                for message in messages:
                    print(f"- {name}: {message}")
        if self.r.notes:
            print("\n### Interference\n")
            for note in self.r.notes:
                print(f"- {note}")


# --------------------------------------------------------------------- main


def source_revision() -> str:
    """The commit the servers import trillium from, and whether src/ is modified."""
    import trillium

    src = Path(trillium.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return str(src)
    return f"{head[:80]}{' (with uncommitted changes)' if dirty else ''}"


def write_json(path: Path, results: Results, settings: Settings, *, quick: bool) -> None:
    """Every value measured, per metric and server (one per round), with the run's context.

    Metrics are named as in the report: ``rate 16`` (messages per second, 16 B
    messages), ``server cpu 1024`` (µs per message), ``p50`` (s), and so on.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": "benchmarks/echo.py",
        "quick": quick,
        "rounds": settings.rounds,
        "sizes": SIZES,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "trillium_source": source_revision(),
        "malloc": MALLOC_ENV,
        "values": {metric: dict(servers) for metric, servers in results.values.items()},
    }
    path.write_text(json.dumps(data, indent=1) + "\n")


def csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    assert __doc__ is not None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, 200 connections")
    parser.add_argument("--only", type=csv, default=SERVERS, help="servers, comma-separated")
    parser.add_argument("--sections", type=csv, default=SECTIONS, help="comma-separated")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="also write every measurement here (notebooks/07_performance.ipynb plots it)",
    )
    parser.add_argument(
        "--malloc",
        choices=["fixed", "default"],
        default="fixed",
        help="glibc malloc thresholds for the throughput sections (see above)",
    )
    args = parser.parse_args(argv)
    MALLOC_ENV.clear()
    if args.malloc == "fixed":
        MALLOC_ENV.update(FIXED_MALLOC)
    for name in args.only:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
    for section in args.sections:
        if section not in SECTIONS:
            parser.error(f"unknown section {section!r}; choose from {', '.join(SECTIONS)}")
    names = [n for n in SERVERS if n in args.only]
    settings = QUICK if args.quick else FULL
    started = time.perf_counter()

    print(f"# trillium end-to-end echo benchmark{' (--quick)' if args.quick else ''}\n")
    print(f"- Python {platform.python_version()}, {platform.machine()}, ", end="")
    print(f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs")
    libs = ["trillium", "websockets", "trio-websocket", "aiohttp", "picows", "trio", "anyio"]
    print("- " + ", ".join(f"{lib} {version(lib)}" for lib in libs))
    print(f"- trillium source: {source_revision()}")
    malloc = " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()) or "glibc's defaults"
    print(f"- malloc, except for the memory section's servers: {malloc}")
    print(
        f"- {settings.rounds} round(s); echo windows {settings.duration} s after "
        f"{settings.warmup} s of warm-up; idle connections: "
        f"{', '.join(f'{n:,}' for n in settings.connections)}\n",
        flush=True,
    )

    # SIGTERM (a CI timeout, say) unwinds like Ctrl-C, through the finally below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    load = LoadGenerator()
    bench = Bench(settings, names, load)
    try:
        if {"echo", "latency", "handshakes"} & set(args.sections):
            bench.run_echo_sections(args.sections)
        if "connections" in args.sections:
            bench.run_connections()
        if "clients" in args.sections:
            bench.run_clients()
    finally:
        for server in bench.processes:
            server.stop()
        load.stop()

    report = Report(bench.results, names)
    if args.json:
        write_json(Path(args.json), bench.results, settings, quick=args.quick)
    report.print(args.sections, settings)
    report.targets(args.sections, settings)
    report.failures()
    print(f"\n(total time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
