"""The docs site builds with warnings as errors, and every Python example in it runs.

Every fenced ``python`` block of ``docs/**/*.md`` is a program: it runs in a fresh
interpreter, in a temporary directory, and must exit 0 within a minute; a line
``print(...)  # text`` promises that ``text`` is printed (the N-th such comment, the
N-th line of output), as in the README. A block with a title that names a Python file
(```` ```python title="app.py" ````) is a file the page's later blocks use: it is
written to that directory under that name instead of being run on its own.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .interop._helpers import kill_process_group, skip_or_fail_in_ci

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.M | re.S)
TITLE = re.compile(r'title="([^"]+)"')


def examples() -> list[tuple[str, Path, int, list[tuple[str, str]], str]]:
    """(id, page, index, files written before it, code) for each runnable block."""
    found = []
    for page in PAGES:
        files: list[tuple[str, str]] = []
        for match in FENCE.finditer(page.read_text()):
            info, code = match.group(1), match.group(2)
            title = TITLE.search(info)
            if title and title.group(1).endswith(".py"):
                files.append((title.group(1), code))
                continue
            line = page.read_text()[: match.start()].count("\n") + 1
            name = f"{page.relative_to(DOCS).with_suffix('')}:{line}"
            found.append((name, page, line, list(files), code))
    return found


EXAMPLES = examples()


def test_every_page_has_runnable_examples_or_is_reference() -> None:
    with_examples = {page for _, page, _, _, _ in EXAMPLES}
    for page in PAGES:
        if page.parent.name in ("reference",) or page.name == "benchmarks.md":
            continue
        assert page in with_examples, f"{page.relative_to(DOCS)} has no runnable example"


@pytest.mark.parametrize(
    ("page", "files", "code"),
    [pytest.param(page, files, code, id=name) for name, page, _, files, code in EXAMPLES],
)
def test_docs_example_runs_and_prints_what_its_comments_promise(
    page: Path, files: list[tuple[str, str]], code: str, tmp_path: Path
) -> None:
    for name, content in files:
        (tmp_path / name).write_text(content)
    # In a session of its own, so that the servers an example starts die with it.
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=60)
    finally:
        kill_process_group(process)  # type: ignore[arg-type]
        process.wait()
    assert process.returncode == 0, f"exit {process.returncode}\n{stdout}\n{stderr}"
    expected = [m.group(1).strip() for m in re.finditer(r"^\s*print\(.*#\s*(.+)$", code, re.M)]
    assert stdout.split("\n")[: len(expected)] == expected


def test_docs_build_with_warnings_as_errors(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        skip_or_fail_in_ci("mkdocs is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ["index.html", "limits/index.html", "reference/trio/index.html"]:
        assert (tmp_path / page).is_file(), page
    # The API reference is generated from the docstrings, not written by hand.
    reference = (tmp_path / "reference" / "trio" / "index.html").read_text()
    assert "Serve WebSocket connections on" in reference
    # The benchmark table comes from the results file at build time.
    assert "<table>" in (tmp_path / "benchmarks" / "index.html").read_text()
