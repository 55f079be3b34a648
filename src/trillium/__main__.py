"""The command line: ``python -m trillium [demo | core-demo | echo | connect URI | serve APP]``.

- ``demo [--host 127.0.0.1] [--port 8000]`` (the default) runs a chat room
  (``trillium.demo``): open http://127.0.0.1:8000 in a few browser tabs; every tab
  joins the room, sees who is online and chats with the others. The page and the
  WebSocket are both served by trillium, on the same port.
- ``core-demo`` walks through the framing core: a client and a server perform the
  opening handshake and exchange frames entirely in memory, and every byte that
  would cross the wire is printed.
- ``echo --host 127.0.0.1 --port 9001 [--max-size BYTES] [--no-compression]`` runs
  an echo server: every message is sent back as received (text as text, binary as
  binary). Conformance tools drive it; pass ``--max-size 67108864`` for their
  largest messages. SIGINT or SIGTERM closes every connection with 1001 and exits.
- ``connect ws://...`` is an interactive client: lines typed are sent, messages
  received are printed.
- ``serve module:app [--host --port --uds --ssl-certfile --ssl-keyfile --root-path
  --no-access-log ...]`` serves an ASGI application (``trillium.asgi.cli``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

import trio

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
        print(
            f"     parsed: opcode={frame.opcode.name} fin={frame.fin} length={len(frame.payload)}"
        )
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


async def echo_server(host: str, port: int, max_size: int | None, compression: str | None) -> None:
    """Serve until SIGINT or SIGTERM, sending every message back as it came.

    On either signal the server shuts down gracefully: it stops accepting, closes every
    connection with 1001 (going away) after the messages already sent, and exits 0.
    """
    from .connection import Connection
    from .server import serve

    async def echo(ws: Connection) -> None:
        async for message in ws:
            await ws.send(message)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with serve(echo, host, port, max_size=max_size, compression=compression) as server:
            for sock in server.sockets:
                print(f"echo server listening on ws://{host}:{sock.getsockname()[1]}", flush=True)
            async for signum in signals:
                logging.getLogger("trillium").info(
                    "%s received: closing connections with 1001", signal.Signals(signum).name
                )
                break
            # Leaving the block closes the server (server.close()): 1001 for everyone.


async def interactive_client(uri: str) -> None:
    """Send typed lines, print received messages, until EOF on stdin or the server closes."""
    from .client import connect
    from .exceptions import ConnectionClosed

    async with connect(uri) as ws:
        print(f"Connected to {uri}. Type a message and press Enter; Ctrl-D to quit.", flush=True)

        async def printer() -> None:
            try:
                async for message in ws:
                    if isinstance(message, str):
                        print(f"< {message}", flush=True)
                    else:
                        print(f"< (binary) {message.hex(' ')}", flush=True)
            except ConnectionClosed:
                pass
            print(
                f"Connection closed: {ws.close_code} {ws.close_reason or ''}".rstrip(), flush=True
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(printer)
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                if not line:
                    break
                try:
                    await ws.send(line.rstrip("\n"))
                except ConnectionClosed:
                    break
            await ws.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trillium",
        description="trillium: a trio-native WebSocket library.",
    )
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser("demo", help="run the chat room demo (the default)")
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    sub.add_parser("core-demo", help="show the framing core at work, byte by byte")
    echo = sub.add_parser("echo", help="run an echo server")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=9001)
    echo.add_argument(
        "--max-size", type=int, default=2**20, help="largest message accepted (bytes)"
    )
    echo.add_argument("--no-compression", action="store_true", help="turn permessage-deflate off")
    connect = sub.add_parser("connect", help="interactive client")
    connect.add_argument("uri", help="ws:// or wss:// URI")
    from .asgi import cli as asgi_cli

    asgi_cli.add_arguments(sub.add_parser("serve", help="serve an ASGI application"))
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        from .demo import run

        run(getattr(args, "host", "127.0.0.1"), getattr(args, "port", 8000))
    elif args.command == "core-demo":
        core_demo()
    elif args.command == "echo":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(
                echo_server,
                args.host,
                args.port,
                args.max_size,
                None if args.no_compression else "deflate",
            )
    elif args.command == "serve":
        return asgi_cli.run_from_args(args)
    elif args.command == "connect":
        with contextlib.suppress(KeyboardInterrupt):
            trio.run(interactive_client, args.uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
