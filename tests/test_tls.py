"""wss://: TLS on both sides, with certificates verified by default (trustme's test CA)."""

from __future__ import annotations

import ssl

import pytest
import trio
import trustme

import trillium

from ._support import TEST_TIMEOUT, port_of


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def echo(ws: trillium.ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def test_wss_exchanges_messages_over_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trillium.serve(echo, "127.0.0.1", 0, ssl=server_context) as server:
            uri = f"wss://localhost:{port_of(server)}/"
            async with trillium.connect(uri, ssl=client_context) as ws:
                await ws.send("over TLS")
                assert await ws.recv() == "over TLS"
                await ws.send(b"\x00" * 200_000)
                assert await ws.recv() == b"\x00" * 200_000
            assert ws.close_code == 1000


async def test_wss_verifies_the_server_certificate_by_default(
    server_context: ssl.SSLContext,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trillium.serve(echo, "127.0.0.1", 0, ssl=server_context) as server:
            uri = f"wss://localhost:{port_of(server)}/"
            with pytest.raises(ssl.SSLCertVerificationError):
                async with trillium.connect(uri):
                    pass


async def test_server_hostname_overrides_the_name_checked_in_the_certificate(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trillium.serve(echo, "127.0.0.1", 0, ssl=server_context) as server:
            port = port_of(server)
            # The certificate names localhost and 127.0.0.1, not example.com ...
            with pytest.raises(ssl.SSLCertVerificationError):
                async with trillium.connect(
                    f"wss://127.0.0.1:{port}/", ssl=client_context, server_hostname="example.com"
                ):
                    pass
            # ... and server_hostname="localhost" makes 127.0.0.1 acceptable by name.
            async with trillium.connect(
                f"wss://127.0.0.1:{port}/", ssl=client_context, server_hostname="localhost"
            ) as ws:
                await ws.send("named")
                assert await ws.recv() == "named"


async def test_plain_client_against_a_tls_server_fails_within_open_timeout(
    server_context: ssl.SSLContext,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trillium.serve(
            echo, "127.0.0.1", 0, ssl=server_context, open_timeout=0.5
        ) as server:
            with pytest.raises((trillium.InvalidHandshake, OSError, TimeoutError)):
                async with trillium.connect(f"ws://127.0.0.1:{port_of(server)}/", open_timeout=2):
                    pass
