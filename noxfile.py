"""Sessions: tests, notebooks, docs, lint, typecheck, bench, fuzz, soak.

``nox -s tests lint typecheck`` is CI's job (the tests build the docs and run the notebooks).
"""

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
    # Gunicorn 26 dropped its eventlet worker: an older one, on the side, for
    # `gunicorn -k eventlet` in tests/frameworks/test_green.py.
    session.run(
        "python", "-m", "pip", "install", "--quiet", "--no-deps",
        "--target", ".nox/gunicorn-eventlet", "gunicorn>=22,<26",
    )  # fmt: skip
    session.run("pytest", *(session.posargs or ["tests", "src/trillium"]))


@nox.session
def notebooks(session: nox.Session) -> None:
    """Execute the notebooks in a real Jupyter kernel and check their outputs."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/test_notebooks.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs site (mkdocs-material) with warnings as errors, into site/.

    ``tests/test_docs.py`` builds it too, and runs every Python example in it.
    ``nox -s docs -- serve`` previews it at http://127.0.0.1:8000 instead.
    """
    session.install("-e", ".[test]")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:], env={"NO_MKDOCS_2_WARNING": "1"})
    else:
        session.run(
            "mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"}
        )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: style, imports and common bugs."""
    session.install("ruff")
    paths = ["src", "tests", "benchmarks", "fuzz", "docs/_hooks", "noxfile.py", "setup.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".", "mypy", "exceptiongroup")  # the 3.10 backport, for mypy
    session.run("mypy", "--strict", "src/trillium")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite: trillium against real peers, measured in the same run.

    ``core.py`` (the framing core, in-process), then ``echo.py`` (servers and clients
    over TCP, each in its own process).
    """
    session.install("-e", ".[test]", "picows")
    # ``nox -s bench -- --quick`` shortens both; echo.py's other options
    # (``--only``, ``--sections``) go to it alone.
    quick = ["--quick"] if "--quick" in session.posargs else []
    session.run("python", "benchmarks/core.py", *quick)
    # The numbers also go to .benchmarks/echo.json, which notebooks/07_performance plots.
    session.run("python", "benchmarks/echo.py", "--json", ".benchmarks/echo.json", *session.posargs)
    # The blocking and asyncio faces against simple-websocket's and websockets' clients.
    session.run(
        "python", "benchmarks/faces.py", *(["--quick"] if "--quick" in session.posargs else [])
    )
    # ASGI servers: `trillium serve` against uvicorn (with uvloop and httptools, as
    # uvicorn[standard] has them) and hypercorn (trio worker), on one Starlette app.
    session.install("uvloop", "httptools")
    session.run(
        "python", "benchmarks/asgi.py", *(["--quick"] if "--quick" in session.posargs else [])
    )
    # Compressed echo (permessage-deflate) against websockets, both compressing.
    session.run("python", "benchmarks/compression.py", *quick)
    # The blocking face under gevent and eventlet, against simple-websocket there.
    session.run("python", "benchmarks/green.py", *quick)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing of the framing core (atheris), for a bounded time.

    ``nox -s fuzz`` fuzzes for 300 s, then prints the corpus's line and branch
    coverage of ``trillium.core``; ``nox -s fuzz -- --seconds 3600`` for longer (other
    options: ``python fuzz/fuzz_protocol.py --help``). The corpus grows in
    ``.fuzz/corpus`` from run to run; a finding is written to ``.fuzz/crashes`` and
    replayed with ``python fuzz/replay.py FILE``. The test suite runs a 15 s slice.
    """
    session.install("-e", ".", "atheris", "coverage")
    session.run(
        "python", "fuzz/fuzz_protocol.py", "--coverage", *(session.posargs or ["--seconds", "300"])
    )


@nox.session
def soak(session: nox.Session) -> None:
    """5,000 concurrent connections on loopback exchanging messages for 180 s.

    Every message is checked to arrive exactly once and in order, both ways; the
    server's peak RSS, the message count and the close codes are reported, and its
    memory must come back to its baseline once the clients close. ``nox -s soak --
    --quick`` runs 30 s; other options: ``python benchmarks/soak.py --help``.
    """
    session.install("-e", ".")
    session.run("python", "benchmarks/soak.py", *session.posargs)
