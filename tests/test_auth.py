"""Behaviour of ``trillium.basic_auth``: HTTP Basic credentials in the opening handshake."""

from __future__ import annotations

import base64

import pytest
import trio

import trillium
from trillium import InvalidStatus, ServerConnection

from ._support import TEST_TIMEOUT, port_of, serving


async def report_username(ws: ServerConnection) -> None:
    await ws.send(getattr(ws, "username", "<none>"))
    await ws.wait_closed()


def basic(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def refusal(uri: str, **kwargs: object) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as exc_info:
        async with trillium.connect(uri, **kwargs):  # type: ignore[arg-type]
            pass  # pragma: no cover
    return exc_info.value


async def test_basic_auth_without_credentials_gets_401_with_a_challenge() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        auth = trillium.basic_auth(realm="chat", credentials=("alice", "s3cret"))
        async with serving(report_username, process_request=auth) as (_, uri):
            exc = await refusal(uri)
        assert exc.status_code == 401
        challenge = exc.response.headers["WWW-Authenticate"]
        assert challenge.startswith("Basic ")
        assert 'realm="chat"' in challenge
        assert b"Missing credentials" in exc.response.body


async def test_basic_auth_with_wrong_credentials_gets_401() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        auth = trillium.basic_auth(realm="chat", credentials=("alice", "s3cret"))
        async with serving(report_username, process_request=auth) as (server, uri):
            port = port_of(server)
            wrong_password = await refusal(f"ws://alice:nope@127.0.0.1:{port}/")
            unknown_user = await refusal(f"ws://mallory:s3cret@127.0.0.1:{port}/")
            other_scheme = await refusal(uri, additional_headers={"Authorization": "Bearer x"})
            garbage = await refusal(uri, additional_headers={"Authorization": "Basic !!!"})
            no_colon = await refusal(
                uri,
                additional_headers={"Authorization": "Basic " + base64.b64encode(b"x").decode()},
            )
        for exc in (wrong_password, unknown_user, other_scheme, garbage, no_colon):
            assert exc.status_code == 401
            assert "WWW-Authenticate" in exc.response.headers
        assert b"Invalid credentials" in wrong_password.response.body


async def test_basic_auth_with_right_credentials_connects_and_sets_username() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        auth = trillium.basic_auth(credentials=("alice", "s3cret"))
        async with serving(report_username, process_request=auth) as (server, uri):
            port = port_of(server)
            async with trillium.connect(f"ws://alice:s3cret@127.0.0.1:{port}/") as ws:
                assert await ws.recv() == "alice"
                assert ws.request is not None
                assert (
                    ws.request.headers["Authorization"] == basic("alice", "s3cret")["Authorization"]
                )
            async with trillium.connect(uri, additional_headers=basic("alice", "s3cret")) as ws:
                assert await ws.recv() == "alice"


async def test_basic_auth_accepts_any_of_several_credentials() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        auth = trillium.basic_auth(credentials=[("alice", "a"), ("bob", "b:with:colons")])
        async with serving(report_username, process_request=auth) as (_, uri):
            for user, password in [("alice", "a"), ("bob", "b:with:colons")]:
                headers = basic(user, password)
                async with trillium.connect(uri, additional_headers=headers) as ws:
                    assert await ws.recv() == user
            exc = await refusal(uri, additional_headers=basic("alice", "b:with:colons"))
            assert exc.status_code == 401


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_basic_auth_check_credentials_decides(asynchronous: bool) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        checked: list[tuple[str, str]] = []

        def check(username: str, password: str) -> bool:
            checked.append((username, password))
            return password == username[::-1]

        async def check_async(username: str, password: str) -> bool:
            await trio.sleep(0)
            return check(username, password)

        auth = trillium.basic_auth(check_credentials=check_async if asynchronous else check)
        async with serving(report_username, process_request=auth) as (_, uri):
            async with trillium.connect(uri, additional_headers=basic("anna", "anna")) as ws:
                assert await ws.recv() == "anna"
            async with trillium.connect(uri, additional_headers=basic("carol", "lorac")) as ws:
                assert await ws.recv() == "carol"
            exc = await refusal(uri, additional_headers=basic("carol", "carol"))
            assert exc.status_code == 401
            exc = await refusal(uri)
            assert exc.status_code == 401
        assert checked == [("anna", "anna"), ("carol", "lorac"), ("carol", "carol")]


def test_basic_auth_needs_exactly_one_of_credentials_or_check_credentials() -> None:
    with pytest.raises(ValueError):
        trillium.basic_auth()
    with pytest.raises(ValueError):
        trillium.basic_auth(credentials=("a", "b"), check_credentials=lambda u, p: True)
    with pytest.raises(TypeError):
        trillium.basic_auth(credentials=[("a", "b"), ("only-one",)])  # type: ignore[list-item]
