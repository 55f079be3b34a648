"""The event-loop primitives the connection manager takes from ``_backend``.

On trio, ``Event`` is trillium's own (smaller than ``trio.Event``): it must behave
like ``trio.Event`` for everything trillium does with it, whatever the number of
waiters and whichever of them are cancelled.
"""

from __future__ import annotations

import trio
import trio.testing

from trillium._backend import current_backend

from ._support import TEST_TIMEOUT


async def test_backend_is_made_once_per_event_loop_library() -> None:
    assert current_backend() is current_backend()


async def test_set_before_wait_returns_at_once_and_set_is_idempotent() -> None:
    event = current_backend().Event()
    assert not event.is_set()
    event.set()
    event.set()
    assert event.is_set()
    with trio.fail_after(TEST_TIMEOUT):
        await event.wait()  # a checkpoint, then returns


async def test_wait_on_a_set_event_is_still_a_checkpoint() -> None:
    event = current_backend().Event()
    event.set()
    with trio.CancelScope() as scope:
        scope.cancel()
        await event.wait()
    assert scope.cancelled_caught


async def test_set_wakes_every_waiter() -> None:
    event = current_backend().Event()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await event.wait()
        woken.append(i)

    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(waiter, i)
            await trio.testing.wait_all_tasks_blocked()
            assert woken == []
            event.set()
    assert sorted(woken) == [0, 1, 2, 3]


async def test_cancelled_waiters_leave_and_the_others_are_still_woken() -> None:
    """The first waiter and one of the later ones are cancelled, then a new first
    waiter arrives: set() wakes exactly the ones still waiting."""
    event = current_backend().Event()
    woken: list[str] = []

    async def waiter(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await event.wait()
            woken.append(name)

    scopes = {name: trio.CancelScope() for name in "abcd"}
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for name in "abc":
                nursery.start_soon(waiter, name, scopes[name])
                await trio.testing.wait_all_tasks_blocked()
            scopes["a"].cancel()  # the first waiter
            scopes["c"].cancel()  # a later one
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter, "d", scopes["d"])  # takes the first place again
            await trio.testing.wait_all_tasks_blocked()
            event.set()
    assert sorted(woken) == ["b", "d"]
    assert not any(scopes[name].cancelled_caught for name in "bd")
    assert all(scopes[name].cancelled_caught for name in "ac")
