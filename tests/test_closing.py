"""Closing while the peer is still sending: the close handshake is not held up by a full queue."""

from __future__ import annotations

import trio

import trillium

from ._support import TEST_TIMEOUT, port_of


async def test_close_completes_promptly_when_the_peer_floods_and_nobody_reads() -> None:
    """A handler that stops reading and returns still closes cleanly and fast, not after
    close_timeout: the reader keeps reading once our close frame is out."""
    closed_codes: list[int | None] = []

    async def ignore_then_leave(ws: trillium.ServerConnection) -> None:
        await trio.sleep(0.3)  # the queue fills up (max_queue=2) and reading pauses
        # returning closes the connection with 1000

    with trio.fail_after(TEST_TIMEOUT):
        async with (
            trillium.serve(
                ignore_then_leave, "127.0.0.1", 0, max_queue=2, close_timeout=5
            ) as server,
            trillium.connect(f"ws://127.0.0.1:{port_of(server)}/") as ws,
        ):

            async def flood() -> None:
                try:
                    while True:
                        await ws.send(b"x" * 10_000)
                except trillium.ConnectionClosed:
                    pass

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                await ws.wait_closed()
            elapsed = trio.current_time() - started
            closed_codes.append(ws.close_code)
    assert closed_codes == [1000]
    assert elapsed < 3, f"close took {elapsed:.1f}s: it waited for close_timeout"
