"""A griffe extension for the API reference: trillium's docstrings, as Markdown.

The docstrings are written to be read in a terminal and run as doctests: a
paragraph ending in ``::`` introduces an indented example (reStructuredText's
literal block), and ``>>>`` lines are doctests. mkdocstrings renders docstrings as
Markdown, where neither means anything (``>>>`` even becomes a quote), so this turns
both into fenced code blocks before rendering. Nothing else changes.
"""

from __future__ import annotations

from typing import Any

import griffe


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rest_to_markdown(text: str) -> str:
    """Fence reST literal blocks (after ``::``) and doctest blocks (``>>>``)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            base = _indent(line)
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][base:] if _indent(lines[i]) >= base else lines[i].strip())
                i += 1
            out += ["", "```pycon", *block, "```", ""]
            continue
        if line.rstrip().endswith("::"):
            text_part = line.rstrip()[:-2]
            if text_part.strip():
                out.append(text_part + ("" if text_part.endswith(" ") else ":"))
            i += 1
            start = i
            while i < len(lines) and not lines[i].strip():
                i += 1
            if i == len(lines) or _indent(lines[i]) <= _indent(line):
                i = start  # no indented block follows after all
                continue
            base = _indent(lines[i])
            block = []
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) >= base):
                block.append(lines[i][base:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            first = block[0].lstrip()
            language = "python"
            if first.startswith(">>>"):
                language = "pycon"
            elif first[:1] in "+|":
                language = "text"  # a diagram
            out += ["", f"```{language}", *block, "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RestDocstrings(griffe.Extension):
    """Rewrite every docstring griffe loads (see ``rest_to_markdown``)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rest_to_markdown(obj.docstring.value)
