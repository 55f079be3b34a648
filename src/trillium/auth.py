"""HTTP Basic Authentication for the opening handshake (RFC 7617), as ``process_request``.

::

    async with trillium.serve(
        handler, "127.0.0.1", 8765,
        process_request=trillium.basic_auth(realm="chat", credentials=("alice", "s3cret")),
    ):
        ...

A request without valid credentials gets 401 with a ``WWW-Authenticate`` challenge;
the authenticated user name is stored as ``connection.username``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .core.handshake import Request, Response
from .server import ServerConnection

__all__ = ["basic_auth"]

Credentials = tuple[str, str]
CheckCredentials = Callable[[str, str], "bool | Awaitable[bool]"]


def basic_auth(
    realm: str = "",
    credentials: Credentials | Iterable[Credentials] | None = None,
    check_credentials: CheckCredentials | None = None,
) -> Callable[[ServerConnection, Request], Awaitable[Response | None]]:
    """A ``process_request`` that demands HTTP Basic credentials.

    Give either ``credentials`` (a (username, password) pair or a list of them) or
    ``check_credentials(username, password)`` returning a bool (or an awaitable of
    one). Passwords are compared in constant time.
    """
    if (credentials is None) == (check_credentials is None):
        raise ValueError("provide either credentials or check_credentials")
    if credentials is not None:
        pairs = [credentials] if _is_pair(credentials) else list(credentials)
        table: dict[str, str] = {}
        for pair in pairs:
            if not _is_pair(pair):
                raise TypeError(f"invalid credentials argument: {pair!r}")
            table[pair[0]] = pair[1]  # type: ignore[index]

        def check_table(username: str, password: str) -> bool:
            expected = table.get(username)
            if expected is None:
                return False
            return hmac.compare_digest(expected.encode(), password.encode())

        check: CheckCredentials = check_table
    else:
        assert check_credentials is not None
        check = check_credentials

    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        header = request.headers.get("Authorization")
        if header is None:
            return _unauthorized(connection, realm, "Missing credentials\n")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return _unauthorized(connection, realm, "Unsupported credentials\n")
        try:
            decoded = base64.b64decode(token.strip().encode("ascii"), validate=True).decode()
            username, sep, password = decoded.partition(":")
        except (binascii.Error, UnicodeError):
            sep = ""
        if not sep:
            return _unauthorized(connection, realm, "Unsupported credentials\n")
        ok = check(username, password)
        if inspect.isawaitable(ok):
            ok = await ok
        if not ok:
            return _unauthorized(connection, realm, "Invalid credentials\n")
        connection.username = username
        return None

    return process_request


def _is_pair(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(x, str) for x in value)
    )


def _unauthorized(connection: ServerConnection, realm: str, text: str) -> Response:
    response = connection.respond(401, text)
    response.headers["WWW-Authenticate"] = f'Basic realm="{realm}", charset="UTF-8"'
    return response
