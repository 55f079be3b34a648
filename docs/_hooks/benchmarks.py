"""An MkDocs hook: the benchmark tables of ``benchmarks.md``, from a results file.

``<!-- benchmark-tables -->`` in a page is replaced by tables built from
``docs/benchmarks/echo.json``, written by ``python benchmarks/echo.py --json PATH``
(``nox -s bench`` writes ``.benchmarks/echo.json``; copy it there to publish a new
run). No number in them is typed by hand.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "<!-- benchmark-tables -->"
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "echo.json"
ORDER = ["trillium", "trillium-asyncio", "websockets", "trio-websocket", "aiohttp", "picows"]
#: The unframed TCP echo servers: the floor, with no WebSocket at all.
LABELS = {"raw-trio": "raw-trio (plain TCP)", "raw-asyncio": "raw-asyncio (plain TCP)"}


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n // 1024} KiB" if n < 2**20 else f"{n >> 20} MiB"


def _best(values: dict[str, Any], metric: str, server: str, higher: bool) -> float | None:
    got = values.get(metric, {}).get(server)
    if not got:
        return None
    return max(got) if higher else min(got)


def _table(
    values: dict[str, Any],
    servers: list[str],
    columns: list[tuple[str, str]],
    higher: bool,
    fmt: str,
) -> str:
    lines = ["| server | " + " | ".join(label for label, _ in columns) + " |"]
    lines.append("|---|" + "---:|" * len(columns))
    for server in servers:
        cells = []
        for _, metric in columns:
            value = _best(values, metric, server, higher)
            cells.append("" if value is None else format(value, fmt))
        if any(cells):
            lines.append(f"| {LABELS.get(server, server)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _relative(
    values: dict[str, Any],
    servers: list[str],
    sizes: list[int],
    metric: str,
    higher: bool,
    ratio: Callable[[list[float], list[float]], float | None],
) -> str:
    """A table of ``metric`` at every size relative to websockets, each cell
    ``ratio(server's values, websockets' values)`` (None leaves it empty); the raw
    TCP servers, which frame nothing, are left out."""
    relative: dict[str, dict[str, list[float]]] = {}
    for z in sizes:
        by_server = values.get(f"{metric} {z}", {})
        reference = by_server.get("websockets")
        if not reference:
            continue
        relative[f"{metric} {z}"] = {
            server: [value]
            for server, got in by_server.items()
            if not server.startswith("raw-") and (value := ratio(got, reference)) is not None
        }
    return _table(relative, servers, [(_size(z), f"{metric} {z}") for z in sizes], higher, ".2f")


def _paired_median(values: list[float], reference: list[float]) -> float | None:
    """The median of ``values[i] / reference[i]`` over the rounds, when both lists
    have a value for every round (a server that failed a round has fewer)."""
    if len(values) != len(reference) or 0 in reference:
        return None
    return statistics.median(v / r for v, r in zip(values, reference, strict=True))


def _malloc(settings: dict[str, str] | None) -> str:
    if settings is None:
        return "glibc malloc's default settings."
    if not settings:
        return "glibc malloc's default settings (`--malloc default`)."
    fixed = ", ".join(f"`{k}={v}`" for k, v in settings.items())
    return f"Every process but the memory section's servers ran with {fixed}."


def tables(data: dict[str, Any]) -> str:
    values = data["values"]
    seen = {server for metric in values.values() for server in metric}
    servers = [s for s in ORDER if s in seen] + sorted(seen - set(ORDER))
    sizes = data["sizes"]
    parts = [
        f"Run: `{data['benchmark']}{' --quick' if data['quick'] else ''}`, best of "
        f"{data['rounds']} round(s), Python {data['python']}, {data['cpus']} CPUs, "
        f"trillium source {data['trillium_source']}. " + _malloc(data.get("malloc")),
        "### Echo throughput (messages per second, 64 in flight, higher is better)",
        _table(values, servers, [(_size(z), f"rate {z}") for z in sizes], True, ",.0f"),
        "### Echo throughput relative to websockets, same run (higher is better)",
        _relative(values, servers, sizes, "rate", True, lambda got, ref: max(got) / max(ref)),
        "### Server CPU per message (µs, lower is better)",
        _table(values, servers, [(_size(z), f"server cpu {z}") for z in sizes], False, ",.1f"),
        "### Server CPU per message relative to websockets, median of the rounds' ratios "
        "(each round measures both seconds apart; lower is better)",
        _relative(values, servers, sizes, "server cpu", False, _paired_median),
    ]
    if "p50" in values:
        parts += [
            "### Latency (one 16 B message in flight, µs, lower is better)",
            _table(values, servers, [("p50", "p50"), ("p99", "p99")], False, ",.1f"),
        ]
    if "handshakes/s" in values:
        parts += [
            "### Opening and closing handshakes per second (higher is better)",
            _table(values, servers, [("handshakes/s", "handshakes/s")], True, ",.0f"),
        ]
    memory = sorted(m for m in values if m.startswith("memory "))
    if memory:
        parts += [
            "### Server memory per idle connection (KiB, lower is better)",
            _table(
                {m: {s: [v / 1024 for v in vs] for s, vs in values[m].items()} for m in memory},
                servers,
                [(f"{int(m.split()[1]):,} connections", m) for m in memory],
                False,
                ",.1f",
            ),
        ]
    if "fanout" in values:
        parts += [
            "### Fan-out: one 16 B message to every idle client (ms, lower is better)",
            _table(values, servers, [("median", "fanout")], False, ",.2f"),
        ]
    return "\n\n".join(parts)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    if MARKER not in markdown:
        return markdown
    if not RESULTS.exists():
        raise FileNotFoundError(f"{RESULTS} is missing: run benchmarks/echo.py --json {RESULTS}")
    return markdown.replace(MARKER, tables(json.loads(RESULTS.read_text())))
