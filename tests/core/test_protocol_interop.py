"""Framing interoperability with wsproto, an independent RFC 6455 implementation."""

from __future__ import annotations

from wsproto import events as ws
from wsproto.connection import Connection, ConnectionType

from trillium.core.close import Close
from trillium.core.protocol import CLIENT, SERVER, Message, Ping, Pong, Protocol, State


def test_wsproto_server_reads_our_client_frames() -> None:
    """RFC 6455 §5: masked, fragmented and large frames from our client parse elsewhere."""
    client = Protocol(CLIENT)
    peer = Connection(ConnectionType.SERVER)
    big = bytes(range(256)) * 300  # 76800 bytes: 64-bit length
    peer.receive_data(
        client.send_text("héllo ", fin=False)
        + client.send_ping(b"p")
        + client.send_text("wörld")
        + client.send_binary(big)
    )
    events = list(peer.events())
    assert isinstance(events[0], ws.TextMessage)
    assert (events[0].data, events[0].message_finished) == ("héllo ", False)
    assert isinstance(events[1], ws.Ping)
    assert isinstance(events[2], ws.TextMessage)
    assert (events[2].data, events[2].message_finished) == ("wörld", True)
    assert isinstance(events[3], ws.BytesMessage)
    assert events[3].data == big
    # wsproto's pong and messages come back to us intact.
    reply = peer.send(events[1].response()) + peer.send(ws.Message(data="srv"))
    assert client.receive_data(reply) == [Pong(b"p"), Message("srv")]


def test_closing_handshake_with_wsproto_server() -> None:
    """RFC 6455 §7: our close is echoed by wsproto and completes the handshake."""
    client = Protocol(CLIENT)
    peer = Connection(ConnectionType.SERVER)
    peer.receive_data(client.send_close(1001, "going"))
    (event,) = peer.events()
    assert isinstance(event, ws.CloseConnection)
    assert (event.code, event.reason) == (1001, "going")
    assert client.receive_data(peer.send(event.response())) == [Close(1001, "going")]
    assert client.state is State.CLOSED
    assert client.close_exception().code == 1001


def test_our_server_reads_wsproto_client_frames_and_answers() -> None:
    """RFC 6455 §5: wsproto's masked frames parse here; our pong and close parse there."""
    server = Protocol(SERVER)
    peer = Connection(ConnectionType.CLIENT)
    data = (
        peer.send(ws.Message(data="fragment ", message_finished=False))
        + peer.send(ws.Message(data="done"))
        + peer.send(ws.Message(data=b"\x00" * 70000))
        + peer.send(ws.Ping(payload=b"hb"))
    )
    assert server.receive_data(data) == [
        Message("fragment done"),
        Message(b"\x00" * 70000),
        Ping(b"hb"),
    ]
    peer.receive_data(server.data_to_send() + server.send_close(4000, "app"))
    events = list(peer.events())
    assert len(events) == 2
    assert isinstance(events[0], ws.Pong)
    assert events[0].payload == b"hb"
    assert isinstance(events[1], ws.CloseConnection)
    assert (events[1].code, events[1].reason) == (4000, "app")
    assert server.receive_data(peer.send(events[1].response())) == [Close(4000, "app")]
    assert server.state is State.CLOSED
