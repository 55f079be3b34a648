"""Benchmark trillium's sans-I/O framing core against wsproto and websockets, in one run.

What it measures, for three implementations fed the SAME bytes in the SAME process:

* **Parsing** (what a server does with every read): a buffer of client-masked binary
  frames (16 B and 1 KiB payloads) is built once, cut into 64 KiB chunks as a socket
  read would deliver them (so frames straddle chunk boundaries), and fed to a fresh
  server-side protocol object (created inside the timed pass; its cost is noise next
  to thousands of frames). The figure is messages delivered per second.
* **Serializing**: one call per message, 16 B and 1 KiB payloads, on the client side
  (masked, with a fresh random key per frame: the common client case) and on the
  server side (unmasked). The figure is frames produced per second.
* **Masking**: XOR of a 1 MiB payload with a 4-byte key, in MB/s (10**6 bytes/s):
  trillium's accelerated ``apply_mask`` and its pure-Python fallback
  ``py_apply_mask``, websockets' C helper (``websockets.speedups.apply_mask``) and its
  pure-Python one, and wsproto's ``XorMaskerSimple`` (wsproto has no C code). The
  input and output stay in the CPU cache from one call to the next, so this is the
  speed of the loops themselves, not of main memory.
* **Parsing one 1 MiB masked frame end to end**, fed in 64 KiB chunks, in MB/s.

Why in one run: figures measured on different days, machines or Python builds can't be
compared, so every implementation runs here, interleaved round by round (so a noisy
neighbour or a CPU frequency change hits all of them alike), and the best round is
reported (the least disturbed one; the median is printed too). Why the same inputs:
every implementation's output is checked against a reference built in this file (same
number of messages, same payloads, serialized frames that decode back to the input)
before any figure is believed; a fast parser that drops a frame is not fast, it is
broken.

The implementations are driven the way their own I/O layers drive them:

* trillium: ``Protocol(SERVER).receive_data(chunk)`` returns events;
  ``Protocol(CLIENT).send_binary(payload)`` returns bytes.
* wsproto: ``Connection(ConnectionType.SERVER)``, ``receive_data(chunk)`` then iterate
  ``events()`` (wsproto hands out partial messages at chunk boundaries, so they are
  joined, as an application must); ``Connection(ConnectionType.CLIENT).send(
  BytesMessage(payload))`` returns bytes.
* websockets: ``ServerProtocol``/``ClientProtocol`` constructed in the OPEN state,
  ``receive_data(chunk)`` then ``events_received()``; ``send_binary(payload)`` then
  ``data_to_send()``.

Binary messages are used throughout because websockets' sans-I/O layer does not decode
text (its I/O layer does); trillium and wsproto would pay for UTF-8 decoding that
websockets skips. Size limits are disabled everywhere (``max_size=None``).

Usage: ``python benchmarks/core.py [--quick]`` (``nox -s bench`` runs it). The full run
takes well under two minutes; ``--quick`` takes a few seconds and is for smoke tests.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import struct
import sys
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

import websockets
import websockets.frames
import websockets.speedups
import websockets.utils
import wsproto.frame_protocol
from websockets.client import ClientProtocol
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol
from websockets.uri import parse_uri
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage

import trillium
from trillium.core import CLIENT, SERVER, Protocol, mask

CHUNK = 64 * 1024  # one socket read's worth of bytes
MIB = 1 << 20

TRILLIUM, WSPROTO, WEBSOCKETS = "trillium", "wsproto", "websockets"

# --------------------------------------------------------------------- inputs


def reference_frame(payload: bytes, *, key: bytes | None) -> bytes:
    """One FIN binary frame, built here (not by any implementation under test)."""
    n = len(payload)
    mask_bit = 0x80 if key is not None else 0
    if n < 126:
        header = struct.pack("!BB", 0x82, mask_bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x82, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", 0x82, mask_bit | 127, n)
    if key is None:
        return header + payload
    return header + key + slow_mask(payload, key)


def slow_mask(data: bytes, key: bytes) -> bytes:
    """The obvious byte-by-byte XOR: slow, but plainly right. Used only to check."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def reference_parse(data: bytes, *, masked: bool) -> list[bytes]:
    """Decode a stream of FIN binary frames; used to check what the serializers wrote."""
    payloads = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert b0 == 0x82, f"expected a FIN binary frame, got first byte 0x{b0:02x}"
        assert bool(b1 & 0x80) == masked, "wrong mask bit"
        n = b1 & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        if masked:
            key = data[pos : pos + 4]
            pos += 4
            payloads.append(slow_mask(data[pos : pos + n], key))
        else:
            payloads.append(data[pos : pos + n])
        pos += n
    return payloads


def make_payloads(count: int, size: int, rng: random.Random) -> list[bytes]:
    """Distinct random payloads, so a dropped, repeated or reordered frame shows."""
    return [rng.randbytes(size) for _ in range(count)]


def make_stream(payloads: Sequence[bytes], rng: random.Random) -> list[bytes]:
    """Client-masked frames for ``payloads``, concatenated, then cut into 64 KiB reads."""
    stream = b"".join(reference_frame(p, key=rng.randbytes(4)) for p in payloads)
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


# --------------------------------------------------------------------- parsing


def parse_trillium(chunks: Sequence[bytes]) -> list[Any]:
    proto = Protocol(SERVER, max_size=None)
    received = []
    for chunk in chunks:
        for event in proto.receive_data(chunk):
            received.append(event.data)  # type: ignore[union-attr]  # only messages here
    return received


def parse_wsproto(chunks: Sequence[bytes]) -> list[Any]:
    conn = Connection(ConnectionType.SERVER)
    received = []
    parts: list[bytes] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        for event in conn.events():
            # wsproto delivers what it has at the end of each chunk: a message cut by a
            # chunk boundary arrives in pieces that the application must join.
            if event.message_finished and not parts:
                received.append(event.data)
            else:
                parts.append(event.data)
                if event.message_finished:
                    received.append(b"".join(parts))
                    parts = []
    return received


def parse_websockets(chunks: Sequence[bytes]) -> list[Any]:
    proto = ServerProtocol(state=WsState.OPEN, max_size=None)
    received = []
    for chunk in chunks:
        proto.receive_data(chunk)
        for frame in proto.events_received():
            received.append(frame.data)  # every frame is a whole message (FIN) here
    return received


PARSERS: dict[str, Callable[[Sequence[bytes]], list[Any]]] = {
    TRILLIUM: parse_trillium,
    WSPROTO: parse_wsproto,
    WEBSOCKETS: parse_websockets,
}

# --------------------------------------------------------------------- serializing


def serializers(client: bool) -> dict[str, Callable[[Sequence[bytes]], list[bytes]]]:
    """Functions that encode each payload as one binary message, one call per message."""

    def trillium_(payloads: Sequence[bytes]) -> list[bytes]:
        send = Protocol(CLIENT if client else SERVER).send_binary
        return [send(p) for p in payloads]

    def wsproto_(payloads: Sequence[bytes]) -> list[bytes]:
        send = Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER).send
        return [send(BytesMessage(data=p)) for p in payloads]

    def websockets_(payloads: Sequence[bytes]) -> list[bytes]:
        if client:
            proto: Any = ClientProtocol(parse_uri("ws://localhost/"), state=WsState.OPEN)
        else:
            proto = ServerProtocol(state=WsState.OPEN)
        send, data_to_send = proto.send_binary, proto.data_to_send
        out: list[bytes] = []
        for p in payloads:
            send(p)
            out += data_to_send()  # what its I/O layer writes after each send
        return out

    return {TRILLIUM: trillium_, WSPROTO: wsproto_, WEBSOCKETS: websockets_}


# --------------------------------------------------------------------- masking


def wsproto_mask(data: bytes, key: bytes) -> bytes:
    # wsproto's frame decoder builds one XorMaskerSimple per frame and runs its payload
    # through process(); it returns a bytearray.
    return bytes(wsproto.frame_protocol.XorMaskerSimple(key).process(data))  # type: ignore[arg-type]


# --------------------------------------------------------------------- timing


class Timer:
    """Best-of-N timing, implementations interleaved round by round."""

    def __init__(self, *, repeats: int, min_time: float) -> None:
        self.repeats = repeats
        self.min_time = min_time  # each timed round lasts at least this long

    def _loops(self, fn: Callable[[Any], Any], arg: Any) -> int:
        """How many calls make one round last ``min_time`` (timeit's autorange, in short)."""
        loops = 1
        while True:
            start = time.perf_counter()
            for _ in range(loops):
                fn(arg)
            elapsed = time.perf_counter() - start
            if elapsed >= self.min_time:
                return loops
            loops = max(loops * 2, int(loops * self.min_time / max(elapsed, 1e-9) * 1.1))

    def run(self, fns: dict[str, Callable[[Any], Any]], arg: Any) -> dict[str, tuple[float, float]]:
        """Seconds per call of each function: (best round, median round)."""
        gc.collect()
        gc.disable()  # as timeit does: a collection would land on whoever is unlucky
        try:
            loops = {name: self._loops(fn, arg) for name, fn in fns.items()}
            rounds: dict[str, list[float]] = {name: [] for name in fns}
            for _ in range(self.repeats):
                for name, fn in fns.items():
                    n = loops[name]
                    start = time.perf_counter()
                    for _ in range(n):
                        fn(arg)
                    rounds[name].append((time.perf_counter() - start) / n)
                gc.collect()
        finally:
            gc.enable()
        return {name: (min(t), statistics.median(t)) for name, t in rounds.items()}


# --------------------------------------------------------------------- checks


def check_equal(what: str, results: dict[str, list[Any]], expected: Sequence[bytes]) -> None:
    """Every implementation must have delivered exactly ``expected``, in order."""
    for name, got in results.items():
        if len(got) != len(expected):
            sys.exit(f"FAIL {what}: {name} delivered {len(got)} messages, not {len(expected)}")
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            if bytes(g) != e:
                sys.exit(f"FAIL {what}: {name}'s message {i} differs from what was sent")


# --------------------------------------------------------------------- report


class Table:
    """Throughputs (higher is better) per benchmark, rendered as a Markdown table."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[str, dict[str, float]]] = {}

    def add(self, label: str, unit: str, rates: dict[str, float]) -> None:
        self.rows[label] = (unit, rates)

    def ratio(self, label: str, peer: str) -> float | None:
        """trillium's throughput over ``peer``'s: above 1 means trillium is faster."""
        rates = self.rows[label][1]
        if TRILLIUM not in rates or peer not in rates:
            return None
        return rates[TRILLIUM] / rates[peer]

    def render(self) -> str:
        peers = (WSPROTO, WEBSOCKETS)
        head = ["benchmark", TRILLIUM, *peers, *(f"{TRILLIUM}/{peer}" for peer in peers)]
        cells = [head]
        for label, (unit, rates) in self.rows.items():
            row = [label, *(fmt(rates.get(name), unit) for name in (TRILLIUM, *peers))]
            for peer in peers:
                ratio = self.ratio(label, peer)
                row.append("-" if ratio is None else f"{ratio:.2f}x")
            cells.append(row)
        widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
        # The label column is left-aligned, the figures right-aligned (":" on the right).
        rule = ["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]
        lines = []
        for row in cells:
            padded = [row[0].ljust(widths[0])]
            padded += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            lines.append("| " + " | ".join(padded) + " |")
        lines.insert(1, "|" + "|".join(rule) + "|")
        return "\n".join(lines)


def record(
    tables: tuple[Table, Table],
    label: str,
    unit: str,
    work: float,
    times: dict[str, tuple[float, float]],
) -> None:
    """Turn seconds per call into ``work`` per second, in the best and the median table."""
    best, median = tables
    best.add(label, unit, {name: work / t for name, (t, _) in times.items()})
    median.add(label, unit, {name: work / t for name, (_, t) in times.items()})


def fmt(rate: float | None, unit: str) -> str:
    if rate is None:
        return "-"
    if unit == "MB/s":
        return f"{rate / 1e6:,.0f} MB/s"
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} M{unit}"
    return f"{rate / 1e3:.0f} k{unit}"


# --------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (smoke test)")
    args = parser.parse_args(argv)
    timer = Timer(repeats=3, min_time=0.01) if args.quick else Timer(repeats=9, min_time=0.1)
    rng = random.Random(6455)
    started = time.perf_counter()

    ws_accelerated = websockets.frames.apply_mask is websockets.speedups.apply_mask
    print(f"# trillium framing core benchmark{' (--quick)' if args.quick else ''}\n")
    print(f"- Python {platform.python_version()} ({platform.python_implementation()}), ", end="")
    print(f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs")
    print(f"- trillium {trillium.__version__}: C accelerator active: {mask.ACCELERATED}")
    print(f"- websockets {websockets.__version__}: C speedups active: {ws_accelerated}")
    print(f"- wsproto {version('wsproto')}: pure Python")
    print(f"- best of {timer.repeats} interleaved rounds of >= {timer.min_time * 1000:.0f} ms\n")
    if not ws_accelerated:
        print("WARNING: websockets.speedups is not in use; its figures are pure Python\n")

    table, medians = tables = Table(), Table()

    # Parsing: many small or medium frames, fed in 64 KiB reads.
    for size, count in ((16, 10_000), (1024, 1_000)):
        payloads = make_payloads(count, size, rng)
        chunks = make_stream(payloads, rng)
        check_equal(f"parse {size} B", {n: f(chunks) for n, f in PARSERS.items()}, payloads)
        times = timer.run(PARSERS, chunks)
        label = f"parse {fmt_size(size)} masked frames"
        record(tables, label, "frames/s", count, times)

    # Serializing, client (masked) then server (unmasked).
    for client in (True, False):
        for size, count in ((16, 10_000), (1024, 10_000)):
            payloads = make_payloads(count, size, rng)
            fns = serializers(client)
            results = {
                n: reference_parse(b"".join(f(payloads)), masked=client) for n, f in fns.items()
            }
            check_equal(f"serialize {size} B", results, payloads)
            times = timer.run(fns, payloads)
            side = "client, masked" if client else "server, unmasked"
            label = f"serialize {fmt_size(size)} ({side})"
            record(tables, label, "frames/s", count, times)

    # Masking 1 MiB: accelerated, then pure Python against pure Python.
    data, key = rng.randbytes(MIB), rng.randbytes(4)
    expected = (int.from_bytes(data, "big") ^ int.from_bytes(key * (MIB // 4), "big")).to_bytes(
        MIB, "big"
    )
    fast: dict[str, Callable[[bytes], bytes]] = {
        TRILLIUM: lambda d: mask.apply_mask(d, key),
        WSPROTO: lambda d: wsproto_mask(d, key),
        WEBSOCKETS: lambda d: websockets.speedups.apply_mask(d, key),
    }
    pure: dict[str, Callable[[bytes], bytes]] = {
        TRILLIUM: lambda d: mask.py_apply_mask(d, key),
        WEBSOCKETS: lambda d: websockets.utils.apply_mask(d, key),
    }
    check_equal("masking", {n: [f(data)] for n, f in (fast | pure).items()}, [expected])
    # wsproto runs once, in the first row: it has no C code, so that row is its only
    # figure, and the second row pits trillium's fallback against websockets' fallback.
    for label, fns in (
        ("mask 1 MiB (C where available)", fast),
        ("mask 1 MiB (pure Python)", pure),
    ):
        times = timer.run(fns, data)
        record(tables, label, "MB/s", MIB, times)

    # One 1 MiB masked frame, end to end, in 64 KiB reads.
    chunks = make_stream([data], rng)
    check_equal("parse 1 MiB", {n: f(chunks) for n, f in PARSERS.items()}, [data])
    times = timer.run(PARSERS, chunks)
    label = "parse one 1 MiB masked frame"
    record(tables, label, "MB/s", MIB, times)

    print("All implementations delivered the same messages and payloads.\n")
    print(table.render())
    print("\nMedian rounds, for a sense of the noise:\n")
    print(medians.render())
    print()
    report_targets(table)
    print(f"\n(total time {time.perf_counter() - started:.0f} s)")


def report_targets(table: Table) -> None:
    """The goals from the issue: >= 2x wsproto on small frames, masking on par with C."""
    small = table.ratio("parse 16 B masked frames", WSPROTO) or 0.0
    masking = table.ratio("mask 1 MiB (C where available)", WEBSOCKETS) or 0.0
    print("Targets:")
    print(f"- parse 16 B frames >= 2x wsproto: {small:.2f}x {verdict(small >= 2.0)}")
    print(
        f"- mask 1 MiB on par with websockets' C helper (>= 0.9x): {masking:.2f}x "
        f"{verdict(masking >= 0.9)}"
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt_size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


if __name__ == "__main__":
    main()
