"""Coverage-guided fuzzing of the sans-I/O core with atheris (libFuzzer for Python).

::

    python fuzz/fuzz_protocol.py --seconds 300          # what ``nox -s fuzz`` runs
    python fuzz/fuzz_protocol.py --seconds 60 --coverage  # then line coverage of the core

The target (``target.check``) plays a peer's bytes into ``Protocol.receive_data`` for
the server and client roles, with and without permessage-deflate, and fails on any
undocumented exception, allocation past its bound, or reply a correct peer would
refuse; libFuzzer's ``-timeout`` catches an input that doesn't terminate. The corpus
starts from ``target.seeds()`` and grows in ``--corpus`` (``.fuzz/corpus`` by default,
kept between runs); a failing input is written to ``--artifacts`` (``.fuzz/crashes``)
and should become a regression test in ``tests/core/test_fuzz.py``.

Other arguments go to libFuzzer as they are (``-max_len=16384``, ``-jobs=2``, ...).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=300, help="total fuzzing time")
    parser.add_argument("--corpus", type=Path, default=ROOT / ".fuzz" / "corpus")
    parser.add_argument("--artifacts", type=Path, default=ROOT / ".fuzz" / "crashes")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per input (a hang)")
    parser.add_argument(
        "--no-tracemalloc", action="store_true", help="skip the allocation check (2x faster)"
    )
    parser.add_argument(
        "--coverage", action="store_true", help="afterwards, report the corpus's line coverage"
    )
    return parser.parse_known_args(argv)


def write_seeds(corpus: Path) -> None:
    import target

    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(target.seeds()):
        path = corpus / f"seed-{i:04d}"
        if not path.exists():
            path.write_bytes(seed)


def fuzz(args: argparse.Namespace, libfuzzer_args: list[str]) -> None:
    import atheris

    # Instrument trillium (for coverage feedback) before anything imports it.
    assert "trillium" not in sys.modules, "trillium must be imported under instrumentation"
    with atheris.instrument_imports(include=["trillium", "target"]):
        import target

    write_seeds(args.corpus)
    if not args.no_tracemalloc:
        tracemalloc.start()
    args.artifacts.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.argv[0],
        str(args.corpus),
        f"-max_total_time={args.seconds}",
        f"-timeout={args.timeout}",
        f"-artifact_prefix={args.artifacts}{os.sep}",
        "-rss_limit_mb=2048",
        "-max_len=8192",
        "-print_final_stats=1",
        *libfuzzer_args,
    ]
    atheris.Setup(argv, target.check)
    atheris.Fuzz()  # never returns: libFuzzer exits the process


def report_coverage(corpus: Path) -> None:
    """Replay the corpus under coverage.py and print the core's line and branch coverage."""
    core = ROOT / "src" / "trillium" / "core"
    names = ("protocol.py", "frames.py", "deflate.py", "utf8.py", "close.py", "mask.py")
    include = ",".join(str(core / name) for name in names)
    env = {**os.environ, "COVERAGE_FILE": str(ROOT / ".fuzz" / ".coverage")}
    coverage = [sys.executable, "-m", "coverage"]
    replay = [str(HERE / "replay.py"), str(corpus)]
    subprocess.run(
        [*coverage, "run", "--branch", f"--include={include}", *replay], check=True, env=env
    )
    subprocess.run([*coverage, "report", "--show-missing"], check=True, env=env)


def main() -> None:
    args, libfuzzer_args = parse_args(sys.argv[1:])
    sys.path.insert(0, str(HERE))
    if args.coverage:
        # libFuzzer exits the process when it is done: fuzz in a child, then measure.
        child = [sys.executable, __file__, *(a for a in sys.argv[1:] if a != "--coverage")]
        code = subprocess.run(child).returncode
        report_coverage(args.corpus)
        sys.exit(code)
    fuzz(args, libfuzzer_args)


if __name__ == "__main__":
    main()
