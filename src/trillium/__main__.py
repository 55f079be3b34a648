"""The command line: ``python -m trillium [demo]``.

``demo`` (the default) walks through the framing core: a client and a server
perform the opening handshake and exchange frames entirely in memory, and every byte
that would cross the wire is printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .core import CLIENT, SERVER, ClientHandshake, Protocol, ServerHandshake, accept_key
from .core.frames import FrameParser


def _show(direction: str, data: bytes, limit: int = 48) -> None:
    shown = data[:limit].hex(" ")
    more = f" ... ({len(data)} bytes)" if len(data) > limit else f"  ({len(data)} bytes)"
    print(f"  {direction} {shown}{more}")


def core_demo() -> None:
    """A handshake and a few frames, built and parsed by trillium.core, no sockets."""
    print("trillium core demo: a WebSocket conversation held entirely in memory\n")
    client_hs = ClientHandshake("localhost:8000", "/chat", subprotocols=["chat.v1"])
    server_hs = ServerHandshake()

    request_bytes = client_hs.data_to_send()
    print("1. The client's opening handshake request:\n")
    print("   " + request_bytes.decode().replace("\r\n", "\n   "))
    request = server_hs.receive_data(request_bytes)
    assert request is not None and request.key is not None
    print(f"2. The server hashes the key {request.key!r} with the RFC 6455 GUID:")
    print(f"   Sec-WebSocket-Accept = base64(SHA-1(key + GUID)) = {accept_key(request.key)}\n")
    response_bytes = server_hs.accept(request, subprotocol="chat.v1")
    print("3. The server's response:\n")
    print("   " + response_bytes.decode().replace("\r\n", "\n   "))
    client_hs.receive_data(response_bytes)
    print(f"   The client checked it: subprotocol {client_hs.subprotocol!r}\n")

    client = Protocol(CLIENT)
    server = Protocol(SERVER)
    print("4. Frames (client frames are masked with a fresh random key):")
    for label, data in [
        ("client sends text 'Hello, trillium!'", client.send_text("Hello, trillium!")),
        ("client sends 300 bytes of binary", client.send_binary(bytes(range(256)) + bytes(44))),
        ("client sends a ping", client.send_ping(b"are you there?")),
    ]:
        print(f"\n  {label}:")
        _show("->", data)
        parser = FrameParser(expect_masked=True)
        parser.feed(data)
        frame = parser.next_frame()
        assert frame is not None
        print(f"     parsed: opcode={frame.opcode.name} fin={frame.fin} length={len(frame.payload)}")
        for event in server.receive_data(data):
            shown = repr(event)
            print(f"     server event: {shown[:70]}{'...' if len(shown) > 70 else ''}")
        reply = server.data_to_send()
        if reply:
            _show("<-", reply)
            print(f"     client event: {client.receive_data(reply)}")

    print("\n5. The closing handshake:")
    data = client.send_close(1000, "goodbye")
    _show("->", data)
    print(f"     server event: {server.receive_data(data)}  server state: {server.state.name}")
    echo = server.data_to_send()
    _show("<-", echo)
    print(f"     client event: {client.receive_data(echo)}  client state: {client.state.name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trillium", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="show the framing core at work (the default)")
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        core_demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
