"""The README's examples run, and print what their comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_prints_what_its_comments_promise(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    expected = [m.group(1).strip() for m in re.finditer(r"^\s*print\(.*#\s*(.+)$", code, re.M)]
    assert expected, "every README example shows its output in a comment"
    assert result.stdout.split("\n")[: len(expected)] == expected


def test_readme_has_exactly_two_setup_commands() -> None:
    setup = README.read_text().split("## Set up a new machine")[1].split("\n## ")[0]
    commands = re.findall(r"```sh\n(.*?)```", setup, re.S)
    assert len(commands) == 2
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert commands[1].strip() in ci, ".ci/run must run the README's test command"
