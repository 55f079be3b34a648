"""Shared by the Python peer scripts (each run as ``python peers/NAME.py server|client ...``).

They talk to the test on stdout, one JSON object a line; see ``tests/interop/_helpers.py``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

TEXT = "héllo wörld ✓ 🎉"
BINARY = bytes(range(256))
BIG = bytes(range(256)) * 4096  # 1 MiB
MAX_SIZE = 4 * 2**20
# Compressible payloads for the permessage-deflate scenarios (the same in every peer):
# JSON-like text of about 230 kB, and 256 KiB of binary, half zeros.
JSON_TEXT = (
    "["
    + ", ".join(
        f'{{"id": {i}, "name": "user{i % 97}", "ok": {str(i % 3 == 0).lower()}}}'
        for i in range(5000)
    )
    + "]"
)
ZEBRA = (bytes(range(256)) + bytes(256)) * 512


def report(**fields: Any) -> None:
    """Print one JSON line for the test and flush it at once."""
    print(json.dumps(fields), flush=True)


def check(condition: bool, what: str) -> None:
    """Fail the peer (exit 1, reason on stderr and stdout) unless ``condition`` holds."""
    if not condition:
        report(event="failed", what=what)
        print(f"check failed: {what}", file=sys.stderr, flush=True)
        sys.exit(1)


def summary(data: object) -> str:
    if isinstance(data, (str, bytes)) and len(data) > 64:
        return f"<{type(data).__name__} of {len(data)}: {data[:32]!r}...>"
    return repr(data)


def parse_close_command(message: object) -> tuple[int, str] | None:
    """``cmd:close CODE REASON`` -> (code, reason); None for any other message."""
    if isinstance(message, str) and message.startswith("cmd:close "):
        _, code, reason = message.split(" ", 2)
        return int(code), reason
    return None
