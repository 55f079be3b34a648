"""Soak test: thousands of concurrent connections exchanging messages for minutes.

::

    python benchmarks/soak.py                      # 5,000 connections, 180 s
    python benchmarks/soak.py --quick              # 5,000 connections, 30 s
    python benchmarks/soak.py --duration 60 --json .benchmarks/soak.json

A trillium server (``trillium.serve``, its defaults: permessage-deflate, keepalive,
``max_queue``, ``write_limit``) runs in a child process; this process holds the
clients (``trillium.connect``), all on 127.0.0.1. Each client sends numbered
messages at ``--rate`` per second; the server checks that they arrive in order and
echoes each; the client checks that the echoes come back once each, in order. The
server also broadcasts a numbered tick to everyone every ``--tick`` seconds
(``trillium.broadcast``), which each client checks for gaps. Then every client waits
for its last echo and closes (1000), the server's memory is measured again (after
``gc.collect()`` and ``malloc_trim``), and SIGTERM shuts the server down.

It fails (exit status 1) unless every message sent was received exactly once and in
order both ways, every connection closed with the expected code, and the server's
memory came back to within ``--memory-slack`` of its baseline. It is bounded: in
connections (``--connections``), in time (``--duration`` plus at most
``--connect-timeout`` and ``--drain-timeout``, and a hard deadline), and to loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

import trillium

HOST = "127.0.0.1"
MARK = "SOAK "  # the server's report lines on stdout start with this


# ------------------------------------------------------------------ both processes


def raise_fd_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; fail early if it can't fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < needed:
        sys.exit(f"soak: needs {needed} file descriptors, RLIMIT_NOFILE allows {soft}")
    return soft


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def heap_in_use() -> int:
    """Bytes the process's heap really holds: pymalloc's allocated blocks (small Python
    objects) plus glibc malloc's in-use bytes (big objects, zlib's buffers).

    Unlike RSS, this doesn't count memory the allocators keep for reuse (pymalloc
    arenas pinned by one live object, malloc free lists): it is what a leak grows.
    """
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)  # _debugmallocstats writes to the C stderr
        try:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        text = f.read().decode()
    match = re.search(r"# bytes in allocated blocks\s*=\s*([\d,]+)", text)
    pymalloc = int(match.group(1).replace(",", "")) if match else 0
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return pymalloc + info.uordblks + info.hblkhd


def trim_memory() -> None:
    """Give freed memory back to the OS, so that RSS shows what is really in use."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# ------------------------------------------------------------------ the server process


async def serve(args: argparse.Namespace) -> None:
    """The server: echo with order checks, a ticker, and reports on signals.

    SIGUSR1: report memory. SIGUSR2: start or stop ticking, report the tick count.
    SIGTERM: close (1001 for whoever is still connected) and report the totals.
    """
    raise_fd_limit(args.connections + 100)
    stats: Counter[str] = Counter()
    close_codes: Counter[str] = Counter()
    ticking = False  # SIGUSR2 turns it on and off

    def report(kind: str, **values: Any) -> None:
        print(MARK + json.dumps({"kind": kind, **values}), flush=True)

    async def handler(ws: trillium.ServerConnection) -> None:
        expected = received = errors = 0
        try:
            async for message in ws:
                assert isinstance(message, str)
                seq = int(message[2 : message.index(":", 2)])
                if seq != expected:
                    errors += 1
                expected = seq + 1
                received += 1
                await ws.send(message)
        except trillium.ConnectionClosed:
            pass
        finally:
            stats["received"] += received
            stats["order_errors"] += errors
            close_codes[str(ws.close_code)] += 1

    async def ticker(server: trillium.WebSocketServer) -> None:
        while True:
            await trio.sleep(args.tick)
            if ticking and server.connections:
                n = stats["ticks"]
                stats["tick_skips"] += trillium.broadcast(server.connections, f"t:{n}:")
                stats["ticks"] = n + 1
                stats["tick_recipients"] += len(server.connections)

    async def exit_with_parent() -> None:
        # Never outlive the soak process, whatever happens to it.
        parent = os.getppid()
        while os.getppid() == parent:
            await trio.sleep(1)
        os._exit(3)

    compression = None if args.no_compression else "deflate"
    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM) as signals:
        async with (
            trillium.serve(handler, HOST, 0, compression=compression) as server,
            trio.open_nursery() as nursery,
        ):
            trim_memory()
            report("listening", port=server.sockets[0].getsockname()[1], **proc_status())
            nursery.start_soon(ticker, server)
            nursery.start_soon(exit_with_parent)
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    trim_memory()
                    report(
                        "memory",
                        heap=heap_in_use(),
                        blocks=sys.getallocatedblocks(),
                        connections=len(server.connections),
                        **proc_status(),
                    )
                elif signum == signal.SIGUSR2:
                    ticking = not ticking
                    report("ticks", ticks=stats["ticks"], ticking=ticking)
                else:
                    open_at_sigterm = len(server.connections)
                    await server.close()
                    nursery.cancel_scope.cancel()
                    break
    report(
        "done",
        open_at_sigterm=open_at_sigterm,
        close_codes=dict(close_codes),
        **stats,
        **proc_status(),
    )


# ------------------------------------------------------------------ the clients


@dataclass(slots=True)
class ClientState:
    sent: int = 0
    echoed: int = 0
    echo_errors: int = 0
    first_tick: int | None = None
    last_tick: int | None = None
    tick_errors: int = 0
    close_code: int | None = None
    error: str | None = None
    all_echoed: trio.Event = field(default_factory=trio.Event)


@dataclass
class Phases:
    steady: trio.Event = field(default_factory=trio.Event)  # everyone connected
    stop: trio.Event = field(default_factory=trio.Event)  # stop sending, drain


FILLER = " ".join(
    random.Random(0).choice(("lorem", "ipsum", "dolor", "sit", "amet", "consectetur"))
    for _ in range(4096)
)


def payload(index: int, seq: int, size: int) -> str:
    """Message ``seq`` of client ``index``: its number, then text that compresses a bit
    and differs from message to message (so a mix-up can't go unnoticed)."""
    head = f"m:{seq}:{index}:"
    start = (index * 7919 + seq * 31) % 8192
    return head + FILLER[start : start + max(0, size - len(head))]


async def client(
    index: int,
    uri: str,
    args: argparse.Namespace,
    phases: Phases,
    state: ClientState,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    compression = None if args.no_compression else "deflate"
    started = False
    try:
        async with trillium.connect(uri, open_timeout=60, compression=compression) as ws:
            task_status.started()
            started = True

            async def receive() -> None:
                async for message in ws:
                    assert isinstance(message, str)
                    kind, _, rest = message.partition(":")
                    number = int(rest[: rest.index(":")])
                    if kind == "m":
                        if message != payload(index, state.echoed, args.size):
                            state.echo_errors += 1
                        state.echoed = number + 1
                        if phases.stop.is_set() and state.echoed >= state.sent:
                            state.all_echoed.set()
                    else:
                        if state.last_tick is not None and number != state.last_tick + 1:
                            state.tick_errors += 1
                        if state.first_tick is None:
                            state.first_tick = number
                        state.last_tick = number

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                await phases.steady.wait()
                interval = 1 / args.rate
                await trio.sleep(random.uniform(0, interval))
                next_at = trio.current_time()
                while not phases.stop.is_set():
                    await ws.send(payload(index, state.sent, args.size))
                    state.sent += 1
                    next_at += interval
                    await trio.sleep_until(next_at + random.uniform(-0.1, 0.1) * interval)
                if state.echoed >= state.sent:
                    state.all_echoed.set()
                with trio.move_on_after(args.drain_timeout):
                    await state.all_echoed.wait()
                nursery.cancel_scope.cancel()  # cancelling recv() loses nothing
        state.close_code = ws.close_code
    except Exception as exc:  # reported, not raised: one failure doesn't hide the others
        state.error = repr(exc)
        if not started:
            task_status.started()


async def read_reports(stream: trio.abc.ReceiveStream, send: trio.MemorySendChannel[Any]) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            text = line.decode()
            if text.startswith(MARK):
                await send.send(json.loads(text[len(MARK) :]))
            else:
                print(f"  server: {text}", file=sys.stderr)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit(args.connections + 100)
    results: dict[str, Any] = {
        "connections": args.connections,
        "duration": args.duration,
        "rate": args.rate,
        "size": args.size,
        "compression": not args.no_compression,
    }
    command = [sys.executable, __file__, "--serve", *sys.argv[1:]]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    # The hard bound on the whole run, whatever goes wrong.
    deadline = args.connect_timeout + args.duration + args.drain_timeout + 180
    try:
        with trio.fail_after(deadline):
            await run_soak(args, process, results)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return results


async def run_soak(
    args: argparse.Namespace, process: trio.Process, results: dict[str, Any]
) -> None:
    async with trio.open_nursery() as nursery:
        send, reports = trio.open_memory_channel[Any](16)
        assert process.stdout is not None
        nursery.start_soon(read_reports, process.stdout, send)

        async def ask(signum: int, kind: str) -> Any:
            if signum:
                process.send_signal(signum)
            with trio.fail_after(60):
                report = await reports.receive()
            assert report["kind"] == kind, report
            return report

        async def memory_once_closed() -> Any:
            with trio.fail_after(30):
                while (await ask(signal.SIGUSR1, "memory"))["connections"]:
                    await trio.sleep(0.5)
            await trio.sleep(1)
            return await ask(signal.SIGUSR1, "memory")

        listening = await ask(0, "listening")
        await trio.sleep(1)
        baseline = await ask(signal.SIGUSR1, "memory")
        uri = f"ws://{HOST}:{listening['port']}/"
        print(f"soak: server pid {process.pid} on {uri}; baseline RSS {mib(baseline['VmRSS'])}")

        rounds = []
        for number, duration in enumerate([args.duration, args.second_round][: args.rounds]):
            states, summary = await one_round(args, uri, process.pid, ask, number + 1, duration)
            summary["after"] = await memory_once_closed()
            rounds.append((states, summary))
        done = await ask(signal.SIGTERM, "done")
        nursery.cancel_scope.cancel()
    with trio.fail_after(30):
        returncode = await process.wait()

    every = [s for states, _ in rounds for s in states]
    errors = [s.error for s in every if s.error]
    first = rounds[0][1]
    results.update(
        rounds=len(rounds),
        round_seconds=[summary["duration"] for _, summary in rounds],
        connect_seconds=first["connect_seconds"],
        wall_seconds=first["wall_seconds"],
        server_exit_status=returncode,
        sent=sum(s.sent for s in every),
        echoed=sum(s.echoed for s in every),
        server_received=done.get("received", 0),
        server_order_errors=done.get("order_errors", 0),
        echo_errors=sum(s.echo_errors for s in every),
        unechoed=sum(s.sent - s.echoed for s in every),
        ticks=done.get("ticks", 0),
        tick_errors=sum(s.tick_errors for s in every),
        ticks_missing_at_end=sum(summary["ticks_missing_at_end"] for _, summary in rounds),
        tick_messages=done.get("tick_recipients", 0),
        tick_skips=done.get("tick_skips", 0),
        client_close_codes=dict(Counter(str(s.close_code) for s in every)),
        server_close_codes=done["close_codes"],
        open_at_sigterm=done["open_at_sigterm"],
        client_errors=len(errors),
        first_errors=errors[:5],
        server_rss_baseline=baseline["VmRSS"],
        server_rss_peak=done["VmHWM"],
        server_rss_after_close=[summary["after"]["VmRSS"] for _, summary in rounds],
        server_heap_baseline=baseline["heap"],
        server_heap_all_open=[summary["all_open"]["heap"] for _, summary in rounds],
        server_heap_after_close=[summary["after"]["heap"] for _, summary in rounds],
        server_blocks_baseline=baseline["blocks"],
        server_blocks_after_close=[summary["after"]["blocks"] for _, summary in rounds],
        client_rss_peak=proc_status()["VmHWM"],
    )


async def one_round(
    args: argparse.Namespace, uri: str, pid: int, ask: Any, number: int, duration: float
) -> tuple[list[ClientState], dict[str, Any]]:
    """Connect every client, exchange messages for ``duration`` seconds, drain, close."""
    summary: dict[str, Any] = {"duration": duration}
    phases = Phases()
    states = [ClientState() for _ in range(args.connections)]
    started = time.monotonic()
    async with trio.open_nursery() as clients:
        # Connect in parallel, a bounded number of handshakes at a time.
        async def launcher(indexes: range) -> None:
            for i in indexes:
                await clients.start(client, i, uri, args, phases, states[i])

        with trio.fail_after(args.connect_timeout):
            async with trio.open_nursery() as launchers:
                step = args.connections // args.parallel + 1
                for start in range(0, args.connections, step):
                    stop = min(start + step, args.connections)
                    launchers.start_soon(launcher, range(start, stop))
        connected = sum(s.error is None for s in states)
        summary["connect_seconds"] = round(time.monotonic() - started, 1)
        print(f"round {number}: {connected} connected in {summary['connect_seconds']} s")

        phases.steady.set()
        await ask(signal.SIGUSR2, "ticks")  # the server starts broadcasting
        steady_start = time.monotonic()
        while (left := duration - (time.monotonic() - steady_start)) > 0:
            await trio.sleep(min(10, left))
            elapsed = time.monotonic() - steady_start
            memory = proc_status(pid)
            sent = sum(s.sent for s in states)
            echoed = sum(s.echoed for s in states)
            print(
                f"  {elapsed:5.0f} s: {sent} sent, {echoed} echoed, server RSS "
                f"{mib(memory['VmRSS'])}, clients RSS {mib(proc_status()['VmRSS'])}"
            )
        summary["all_open"] = await ask(signal.SIGUSR1, "memory")  # mid-traffic
        ticks = (await ask(signal.SIGUSR2, "ticks"))["ticks"]  # the server stops them
        phases.stop.set()  # each client drains its echoes, then closes with 1000
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    # Every client connected before the first tick of the round, and was still
    # there for its last: each must have the last one.
    summary["ticks_missing_at_end"] = sum(s.last_tick != ticks - 1 for s in states)
    return states, summary


def check(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What must hold; each broken rule is a line of the failure report."""
    n = args.connections * results["rounds"]
    failures = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)

    expect(results["client_errors"] == 0, f"client errors: {results['first_errors']}")
    expect(results["server_exit_status"] == 0, "the server didn't exit cleanly")
    expect(results["sent"] > 0, "nothing was sent")
    expect(results["server_received"] == results["sent"], "server received != sent")
    expect(results["server_order_errors"] == 0, "messages out of order at the server")
    expect(results["echoed"] == results["sent"], "echoes != messages sent")
    expect(results["unechoed"] == 0 and results["echo_errors"] == 0, "echo lost or reordered")
    expect(results["tick_errors"] == 0 and results["tick_skips"] == 0, "ticks lost or skipped")
    expect(results["ticks_missing_at_end"] == 0, "a client missed the last tick")
    expect(results["client_close_codes"] == {"1000": n}, "clients didn't all close with 1000")
    expect(results["server_close_codes"] == {"1000": n}, "server saw other close codes")
    expect(results["open_at_sigterm"] == 0, "connections still open at SIGTERM")
    # Memory: the heap comes back to its baseline, give or take the containers that
    # keep the size they grew to (sets and dicts of connections, trio's tables of
    # tasks and file descriptors); and a second round leaves it where the first did.
    baseline, after = results["server_heap_baseline"], results["server_heap_after_close"]
    slack = args.memory_slack * 2**20
    expect(
        after[0] <= baseline + slack,
        f"the server's heap didn't come back within {args.memory_slack} MiB of its baseline",
    )
    if len(after) > 1:
        expect(after[-1] <= after[0] + 2**20, "the heap grew from one round to the next")
    return failures


def print_report(results: dict[str, Any], failures: list[str]) -> None:
    r = results
    rounds = " + ".join(f"{s:g} s" for s in r["round_seconds"])
    print(
        f"\nsoak: {r['connections']} connections, {rounds} at {r['rate']:g} message/s "
        f"each, {r['size']} bytes, compression {'on' if r['compression'] else 'off'}"
    )
    print(f"  connected in {r['connect_seconds']} s; first round {r['wall_seconds']} s")
    print(
        f"  messages: {r['sent']:,} sent by clients, {r['server_received']:,} received in "
        f"order by the server, {r['echoed']:,} echoes received in order "
        f"({r['sent'] + r['echoed'] + r['tick_messages']:,} in all with the broadcasts)"
    )
    print(
        f"  broadcast: {r['ticks']} ticks, {r['tick_messages']:,} messages, "
        f"{r['tick_skips']} skipped, {r['tick_errors']} gaps"
    )
    print(f"  close codes: clients saw {r['client_close_codes']}, server {r['server_close_codes']}")
    heap_open = ", ".join(mib(h) for h in r["server_heap_all_open"])
    heap_after = ", ".join(mib(h) for h in r["server_heap_after_close"])
    blocks = ", ".join(f"{b:,}" for b in r["server_blocks_after_close"])
    rss_after = ", ".join(mib(h) for h in r["server_rss_after_close"])
    print(
        f"  server heap in use: baseline {mib(r['server_heap_baseline'])}; all open "
        f"{heap_open}; after close {heap_after} (allocated blocks "
        f"{r['server_blocks_baseline']:,} -> {blocks})"
    )
    print(
        f"  server RSS: baseline {mib(r['server_rss_baseline'])}, peak "
        f"{mib(r['server_rss_peak'])}, after close {rss_after} (the allocators keep "
        "pages for reuse)"
    )
    print(f"  clients' process peak RSS: {mib(r['client_rss_peak'])}")
    print("  OK" if not failures else "  FAILED:\n    " + "\n    ".join(failures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=180, help="seconds of traffic")
    parser.add_argument("--quick", action="store_true", help="30 s of traffic")
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per connection")
    parser.add_argument("--size", type=int, default=256, help="bytes per message")
    parser.add_argument("--tick", type=float, default=5.0, help="seconds between broadcasts")
    parser.add_argument(
        "--rounds", type=int, choices=(1, 2), default=2, help="2: reconnect everyone once more"
    )
    parser.add_argument(
        "--second-round", type=float, default=15, help="seconds of traffic in round 2"
    )
    parser.add_argument("--no-compression", action="store_true")
    parser.add_argument("--parallel", type=int, default=50, help="handshakes at a time")
    parser.add_argument("--connect-timeout", type=float, default=120)
    parser.add_argument("--drain-timeout", type=float, default=60)
    parser.add_argument(
        "--memory-slack", type=float, default=8, help="MiB of heap allowed over baseline"
    )
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.duration = 30
    if args.serve:
        trio.run(serve, args)
        return
    results = trio.run(soak, args)
    failures = check(results, args)
    results["failures"] = failures
    print_report(results, failures)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
