"""Sessions: tests, lint, typecheck, bench. ``nox -s tests lint typecheck`` is CI's job."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, doctests included, with the compiled accelerator built."""
    session.install("-e", ".[test]")
    # The peers that don't come from PyPI: Chromium (apt) and Node's ws (npm).
    session.run("bash", "tests/interop/setup.sh", external=True)
    session.run("pytest", *(session.posargs or ["tests", "src/trillium"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: style, imports and common bugs."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py", "setup.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py", "setup.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".", "mypy", "exceptiongroup")  # the 3.10 backport, for mypy
    session.run("mypy", "--strict", "src/trillium")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite: trillium against real peers, measured in the same run."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/core.py", *session.posargs)
