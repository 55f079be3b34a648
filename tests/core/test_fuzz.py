"""The fuzz target of ``fuzz/`` in the test suite: the CI slice of ``nox -s fuzz``.

The seeds and every input the fuzzer ever flagged are replayed in-process (with
tracemalloc on and a timer against loops), then atheris fuzzes for a short while
from the seeds. ``nox -s fuzz`` runs the same target for minutes.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from trillium.core.frames import Opcode
from trillium.core.protocol import CLIENT, SERVER

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
#: Seconds of coverage-guided fuzzing in the test run (``nox -s fuzz``: 300).
SMOKE_SECONDS = 15
#: Longest any single input may take (a loop that doesn't end is a finding).
PER_INPUT_SECONDS = 5


def load_target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trillium_fuzz_target", FUZZ / "target.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


target = load_target()
Config = target.Config


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError in the test if the block runs longer than ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"input ran longer than {seconds} s: it may never terminate")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def tracing() -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


def run(data: bytes) -> None:
    with tracing(), time_limit(PER_INPUT_SECONDS):
        target.check(data)


def frame(opcode: int, payload: bytes = b"", *, masked: bool, fin: bool = True) -> bytes:
    return target.frame_bytes(opcode, payload, masked=masked, fin=fin)


def test_every_seed_passes_the_target() -> None:
    seeds = list(target.seeds())
    assert len(seeds) > 100
    for seed in seeds:
        run(seed)


#: Inputs the fuzzer flagged, replayed for ever. Each found a wrong assumption; the
#: comment says whose (the core's, and the fix, or the target's oracle).
REGRESSIONS = {
    # The fuzzer's first finding, in its first second: a close frame and more bytes in
    # the same read. The core echoes the close, becomes CLOSED and raises 1002 for the
    # bytes after it; the target's oracle expected the failure's own close frame
    # (state CLOSING) and was corrected: a failure queues no close once one was echoed.
    "close-then-bytes-in-one-read": bytes.fromhex("2e0006158880000001000000"),
    # Found by the fuzzer within 2 minutes once the target checked that streamed
    # fragments carry data (a bug in the core): an empty non-final text frame became
    # an empty Message event. Endless empty continuation frames count nothing against
    # max_size, so they grew the list of parts, or the connection's queue of streamed
    # fragments, without bound. Fixed in Protocol._continue_message: a fragment that
    # adds nothing is not kept.
    "empty-non-final-fragment": bytes.fromhex("ffffed5b0100158800"),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_fuzzer_findings_stay_fixed(name: str) -> None:
    run(REGRESSIONS[name])


@pytest.mark.parametrize("role", [SERVER, CLIENT])
@pytest.mark.parametrize("deflate", [False, True])
def test_hostile_inputs_stay_within_the_allocation_bound(role: object, deflate: bool) -> None:
    """The cases the bound is about, built by hand rather than found: a header that
    announces 2**63-1 bytes, a deflate bomb, and thousands of tiny frames in one read."""
    masked = role is SERVER
    head = Config.encode(role=role, deflate=deflate, max_size=4096, eof=True)
    huge = bytes((0x82, (0x80 if masked else 0) | 127)) + (2**63 - 1).to_bytes(8, "big")
    run(head + huge + b"\x00" * 4)
    run(head + frame(Opcode.PING, masked=masked) * 2000)
    run(head + frame(Opcode.TEXT, masked=masked, fin=False) + frame(0, masked=masked) * 2000)
    if deflate:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -12)
        bomb = compressor.compress(b"\x00" * 2**21) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert len(bomb) < 4096  # 2 MiB in under 4 KiB: a frame max_size lets through
        wire = target.frame_bytes(Opcode.BINARY, bomb[:-4], masked=masked, rsv=0x40)
        run(head + wire)


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="needs atheris")
def test_coverage_guided_fuzzing_finds_nothing(tmp_path: Path) -> None:
    """A short atheris run from the seeds (``nox -s fuzz`` runs it for 300 s)."""
    command = [
        sys.executable,
        str(FUZZ / "fuzz_protocol.py"),
        "--seconds",
        str(SMOKE_SECONDS),
        "--corpus",
        str(tmp_path / "corpus"),
        "--artifacts",
        str(tmp_path / "crashes"),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=SMOKE_SECONDS + 60, check=False
    )
    output = result.stdout + result.stderr
    crashes = list((tmp_path / "crashes").iterdir())
    assert result.returncode == 0 and not crashes, output[-4000:]
    assert "Done " in output, output[-4000:]
    assert "cov: " in output, "atheris saw no coverage: is trillium instrumented?"
