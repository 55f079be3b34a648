"""``trillium serve module:app``: the ASGI server's command line.

::

    trillium serve myproject.main:app --host 0.0.0.0 --port 8000
    python -m trillium serve myproject.main:app --uds /run/app.sock --root-path /api
    trillium serve myproject.main:create_app --factory --backend asyncio

``module:attribute`` names the application (``attribute`` may be dotted);
``--factory`` calls it to get the application. The current directory (or
``--app-dir``) is put first on ``sys.path``. See ``python -m trillium serve --help``
for every option; they map to ``trillium.asgi.serve``'s.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

from .types import ASGIApp

__all__ = ["add_arguments", "import_app", "run_from_args"]


def import_app(target: str, *, factory: bool = False, app_dir: str | None = ".") -> ASGIApp:
    """The application named by ``module:attribute`` (calling it if ``factory``).

    >>> app = import_app("json:dumps")
    >>> app([1])
    '[1]'
    """
    if app_dir is not None and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"application must be given as 'module:attribute', not {target!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if factory:
        obj = obj()
    if not callable(obj):
        raise ValueError(f"{target!r} is not an ASGI application (not callable)")
    app: ASGIApp = obj
    return app


def _optional_float(value: str) -> float | None:
    """A number of seconds; 0 or "none" turns the feature off."""
    if value.lower() in ("none", "off", "0"):
        return None
    return float(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's arguments."""
    parser.add_argument("app", help="the ASGI application, as module:attribute")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind, 0 for any (8000)")
    parser.add_argument("--uds", help="listen on this Unix socket path instead")
    parser.add_argument("--ssl-certfile", help="TLS certificate (PEM): serve https and wss")
    parser.add_argument("--ssl-keyfile", help="TLS private key (PEM)")
    parser.add_argument("--ssl-keyfile-password", help="password of the private key")
    parser.add_argument("--root-path", default="", help="path prefix the app is mounted at")
    parser.add_argument(
        "--lifespan", choices=["auto", "on", "off"], default="auto", help="lifespan protocol"
    )
    parser.add_argument("--no-access-log", action="store_true", help="no line per request")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    parser.add_argument("--factory", action="store_true", help="call app to get the application")
    parser.add_argument("--app-dir", default=".", help="directory put first on sys.path (.)")
    ws = parser.add_argument_group("WebSocket limits and timeouts (those of trillium.serve)")
    ws.add_argument(
        "--ws-no-compression", action="store_true", help="never negotiate permessage-deflate"
    )
    ws.add_argument("--ws-max-size", type=int, default=2**20, help="largest message (bytes)")
    ws.add_argument("--ws-max-queue", type=int, default=16, help="messages buffered unread")
    ws.add_argument("--ws-write-limit", type=int, default=2**15, help="bytes buffered unsent")
    ws.add_argument("--ws-ping-interval", type=_optional_float, default=20.0, help="0: no pings")
    ws.add_argument("--ws-ping-timeout", type=_optional_float, default=20.0)
    ws.add_argument("--ws-close-timeout", type=_optional_float, default=10.0)
    ht = parser.add_argument_group("HTTP and shutdown")
    ht.add_argument("--timeout-keep-alive", type=float, default=5.0, help="idle keep-alive (s)")
    ht.add_argument("--open-timeout", type=_optional_float, default=10.0, help="TLS + 1st request")
    ht.add_argument(
        "--timeout-graceful-shutdown",
        type=_optional_float,
        default=10.0,
        help="seconds in-flight requests get on shutdown",
    )
    ht.add_argument("--max-header-size", type=int, default=16 * 1024)


def run_from_args(args: argparse.Namespace) -> int:
    """Run the server as the parsed arguments say; the process's exit status."""
    from .lifespan import LifespanFailure
    from .server import run

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(levelname)s: %(message)s",
    )
    try:
        app = import_app(args.app, factory=args.factory, app_dir=args.app_dir)
    except (ImportError, ValueError) as exc:
        print(f"trillium serve: cannot load {args.app!r}: {exc}", file=sys.stderr)
        return 1
    try:
        run(
            app,
            args.host,
            args.port,
            backend=args.backend,
            uds=args.uds,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
            ssl_keyfile_password=args.ssl_keyfile_password,
            root_path=args.root_path,
            lifespan=args.lifespan,
            access_log=not args.no_access_log,
            compression=None if args.ws_no_compression else "deflate",
            max_size=args.ws_max_size,
            max_queue=args.ws_max_queue,
            write_limit=args.ws_write_limit,
            ping_interval=args.ws_ping_interval,
            ping_timeout=args.ws_ping_timeout,
            close_timeout=args.ws_close_timeout,
            open_timeout=args.open_timeout,
            timeout_keep_alive=args.timeout_keep_alive,
            timeout_graceful_shutdown=args.timeout_graceful_shutdown,
            max_header_size=args.max_header_size,
        )
    except LifespanFailure as exc:
        print(f"trillium serve: application startup failed: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:
        print(f"trillium serve: {exc}", file=sys.stderr)
        return 1
    return 0
