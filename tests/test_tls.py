"""wss://: TLS on both sides, with certificates verified by default (trustme's test CA)."""

from __future__ import annotations

import ssl

import pytest
import trio
import trustme

import trillium

from ._support import TEST_TIMEOUT, echo, port_of


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


async def test_a_failed_verification_says_why_and_leaves_the_server_serving(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    """The client's error names the reason (an untrusted issuer; a name the certificate
    doesn't hold); the server drops those handshakes and keeps nothing of them."""
    with trio.fail_after(TEST_TIMEOUT):
        async with trillium.serve(echo, "127.0.0.1", 0, ssl=server_context) as server:
            port = port_of(server)
            with pytest.raises(ssl.SSLCertVerificationError) as untrusted:
                async with trillium.connect(f"wss://localhost:{port}/"):
                    pass  # pragma: no cover
            assert "certificate verify failed" in str(untrusted.value)
            assert "unable to get local issuer certificate" in str(untrusted.value)
            with pytest.raises(ssl.SSLCertVerificationError) as mismatch:
                async with trillium.connect(
                    f"wss://127.0.0.1:{port}/", ssl=client_context, server_hostname="other.test"
                ):
                    pass  # pragma: no cover
            assert "Hostname mismatch" in str(mismatch.value)
            assert server.connections == set()
            async with trillium.connect(f"wss://localhost:{port}/", ssl=client_context) as ws:
                await ws.send("still serving")
                assert await ws.recv() == "still serving"


async def test_garbage_instead_of_a_tls_hello_is_dropped(server_context: ssl.SSLContext) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trillium.serve(
            echo, "127.0.0.1", 0, ssl=server_context, open_timeout=5
        ) as server:
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", port_of(server)))
            with sock:
                await sock.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
                start = trio.current_time()
                try:
                    while await sock.recv(65536):
                        pass
                except ConnectionResetError:
                    pass
                assert trio.current_time() - start < 2  # at once, not at open_timeout
            assert server.connections == set()
