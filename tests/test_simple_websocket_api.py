"""``import trillium as simple_websocket`` is a drop-in: the names simple-websocket
exports exist, and every method its users call takes the same positional parameters,
in the same order, with the same defaults (trillium's extra options are keyword-only).
The reference is simple-websocket itself, installed with the test dependencies."""

from __future__ import annotations

import inspect

import pytest
import simple_websocket

import trillium

NAMES = ["Server", "Client", "AioServer", "AioClient", "ConnectionError", "ConnectionClosed"]
METHODS = ["__init__", "accept", "connect", "send", "receive", "close", "choose_subprotocol"]


def test_every_name_simple_websocket_exports_exists() -> None:
    exported = {name for name in dir(simple_websocket) if not name.startswith("_")}
    classes = {name for name in exported if inspect.isclass(getattr(simple_websocket, name))}
    assert classes == set(NAMES)
    for name in NAMES:
        assert hasattr(trillium, name)


def _positional(function: object) -> list[tuple[str, object]]:
    return [
        (p.name, p.default)
        for p in inspect.signature(function).parameters.values()  # type: ignore[arg-type]
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


# (class, method) pairs simple-websocket users call; AioServer.connect is internal.
CALLS = [
    (cls, method)
    for cls in ("Server", "Client", "AioServer", "AioClient")
    for method in METHODS
    if hasattr(getattr(simple_websocket, cls), method) and (cls, method) != ("AioServer", "connect")
]


@pytest.mark.parametrize(("cls", "method"), CALLS, ids=[f"{c}.{m}" for c, m in CALLS])
def test_same_positional_parameters_and_defaults(cls: str, method: str) -> None:
    # Same names in the same order, same defaults; where simple-websocket has no
    # default we may have one (Server.accept(sock=..., headers=...) needs no environ):
    # every call that works with simple-websocket works the same with trillium.
    theirs = getattr(getattr(simple_websocket, cls), method)
    ours = getattr(getattr(trillium, cls), method)
    empty = inspect.Parameter.empty
    assert [name for name, _ in _positional(ours)] == [name for name, _ in _positional(theirs)]
    for (name, default), (_, their_default) in zip(
        _positional(ours), _positional(theirs), strict=True
    ):
        assert default == their_default or their_default is empty, name
    extra = set(inspect.signature(ours).parameters) - set(inspect.signature(theirs).parameters)
    for name in extra:
        assert inspect.signature(ours).parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_exceptions_carry_simple_websocket_attributes() -> None:
    from trillium.core.close import Close

    closed = trillium.ConnectionClosedOK(Close(1000, "bye"), Close(1000, "bye"))
    assert isinstance(closed, trillium.ConnectionClosed)
    assert (closed.reason, closed.message) == (1000, "bye")
    assert trillium.ConnectionError(400).status_code == 400
    assert issubclass(trillium.InvalidStatus, trillium.ConnectionError)


def test_connection_closed_takes_simple_websockets_code_and_message() -> None:
    """simple-websocket code raises ConnectionClosed(reason=code, message=text) itself."""
    exc = trillium.ConnectionClosed(1001, "going away")
    assert (exc.reason, exc.message, exc.code) == (1001, "going away", 1001)
    assert trillium.ConnectionClosed().reason == 1006  # no close frame: abnormal closure
