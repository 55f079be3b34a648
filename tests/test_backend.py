"""The event-loop primitives the connection manager takes from ``_backend``.

``Event`` is trillium's own on both event loops: on trio smaller than ``trio.Event``,
on asyncio made without anyio's lookup of the running loop. It must behave like
``anyio.Event`` for everything trillium does with it, whatever the number of
waiters and whichever of them are cancelled. Each test runs on trio and on asyncio
(plain functions calling ``anyio.run``: pytest runs ``async def`` tests on trio).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from trillium._backend import current_backend

from ._support import TEST_TIMEOUT

on_both_loops = pytest.mark.parametrize("loop", ["trio", "asyncio"])


def run(loop: str, test: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with anyio.fail_after(TEST_TIMEOUT):
            await test()

    anyio.run(bounded, backend=loop)


@on_both_loops
def test_backend_is_made_once_per_event_loop_library(loop: str) -> None:
    async def test() -> None:
        assert current_backend() is current_backend()

    run(loop, test)


@on_both_loops
def test_set_before_wait_returns_at_once_and_set_is_idempotent(loop: str) -> None:
    async def test() -> None:
        event = current_backend().Event()
        assert not event.is_set()
        event.set()
        event.set()
        assert event.is_set()
        await event.wait()  # a checkpoint, then returns

    run(loop, test)


@on_both_loops
def test_wait_on_a_set_event_is_still_a_checkpoint(loop: str) -> None:
    async def test() -> None:
        event = current_backend().Event()
        event.set()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await event.wait()
        assert scope.cancelled_caught

    run(loop, test)


@on_both_loops
def test_set_wakes_every_waiter(loop: str) -> None:
    async def test() -> None:
        event = current_backend().Event()
        woken: list[int] = []

        async def waiter(i: int) -> None:
            await event.wait()
            woken.append(i)

        async with anyio.create_task_group() as group:
            for i in range(4):
                group.start_soon(waiter, i)
            await anyio.wait_all_tasks_blocked()
            assert woken == []
            event.set()
        assert sorted(woken) == [0, 1, 2, 3]

    run(loop, test)


@on_both_loops
def test_cancelled_waiters_leave_and_the_others_are_still_woken(loop: str) -> None:
    """The first waiter and one of the later ones are cancelled, then a new first
    waiter arrives: set() wakes exactly the ones still waiting."""

    async def test() -> None:
        event = current_backend().Event()
        woken: list[str] = []

        async def waiter(name: str, scope: anyio.CancelScope) -> None:
            with scope:
                await event.wait()
                woken.append(name)

        scopes = {name: anyio.CancelScope() for name in "abcd"}
        async with anyio.create_task_group() as group:
            for name in "abc":
                group.start_soon(waiter, name, scopes[name])
                await anyio.wait_all_tasks_blocked()
            scopes["a"].cancel()  # the first waiter
            scopes["c"].cancel()  # a later one
            await anyio.wait_all_tasks_blocked()
            group.start_soon(waiter, "d", scopes["d"])  # takes the first place again
            await anyio.wait_all_tasks_blocked()
            event.set()
        assert sorted(woken) == ["b", "d"]
        assert not any(scopes[name].cancelled_caught for name in "bd")
        assert all(scopes[name].cancelled_caught for name in "ac")

    run(loop, test)


@on_both_loops
def test_event_is_the_backends_own_class(loop: str) -> None:
    """The tests above check trillium's class, not anyio's or trio's."""

    async def test() -> None:
        event = current_backend().Event()
        assert type(event).__module__ == "trillium._backend"

    run(loop, test)
