"""Replay inputs (files, or every file in directories) through the fuzz target, without
atheris: to reproduce a crash, or to measure a corpus's coverage under coverage.py.

::

    python fuzz/replay.py .fuzz/crashes/crash-1234abcd
    python -m coverage run --branch fuzz/replay.py .fuzz/corpus
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import target


def main(paths: list[str]) -> int:
    tracemalloc.start()
    count = 0
    for arg in paths:
        path = Path(arg)
        for file in sorted(path.iterdir()) if path.is_dir() else [path]:
            target.check(file.read_bytes())
            count += 1
    print(f"replayed {count} inputs: no finding")
    print("largest allocation in one receive_data call, beyond its input and frame terms:")
    for max_size, (size, data) in sorted(target.worst_allocation.items()):
        print(f"  max_size={max_size:6}: {size:8} bytes = {size / max_size:6.2f} x max_size")
        print(f"    input: {data[:32]!r}{'...' if len(data) > 32 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
