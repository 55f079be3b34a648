"""permessage-deflate (RFC 7692): negotiation, framing, context takeover, limits.

The negotiation tests drive ``ServerPerMessageDeflateFactory.negotiate`` and
``ClientPerMessageDeflateFactory.accept`` with offers and answers as the header
parser produces them: ``(name, [(param, value or None), ...])``. The framing tests run
a CLIENT and a SERVER ``Protocol`` built with the negotiated extensions and look at
the frames on the wire; the known answers come from the examples of RFC 7692 §7.2.3.
"""

from __future__ import annotations

import gc
import itertools
import random
import tracemalloc
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trillium.core.deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from trillium.core.frames import RSV1, RSV2, RSV3, Frame, FrameParser, Opcode
from trillium.core.headers import ExtensionHeader, parse_extensions
from trillium.core.protocol import CLIENT, SERVER, Message, Ping, Protocol, Role
from trillium.exceptions import InvalidUTF8, NegotiationError, PayloadTooBig, ProtocolError

from ._helpers import assert_fails, peer_frame

PMD = "permessage-deflate"
TAIL = b"\x00\x00\xff\xff"
MiB = 2**20

Params = list[tuple[str, str | None]]


def offer(*params: tuple[str, str | None]) -> ExtensionHeader:
    return (PMD, list(params))


def negotiate(
    offers: Sequence[ExtensionHeader], **server_kwargs: object
) -> tuple[ExtensionHeader, PerMessageDeflate] | None:
    return ServerPerMessageDeflateFactory(**server_kwargs).negotiate(offers)  # type: ignore[arg-type]


def agree(
    client: ClientPerMessageDeflateFactory, server: ServerPerMessageDeflateFactory
) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """The whole negotiation: the client's offer, the server's answer, the client's check."""
    negotiated = server.negotiate([client.offer()])
    assert negotiated is not None, "the server declined the client's offer"
    (name, params), server_ext = negotiated
    assert name == PMD
    return client.accept(params), server_ext


def protocols(
    client: ClientPerMessageDeflateFactory | None = None,
    server: ServerPerMessageDeflateFactory | None = None,
    *,
    max_size: int | None = MiB,
) -> tuple[Protocol, Protocol]:
    """A CLIENT and a SERVER Protocol with the extensions negotiated between the factories."""
    client_ext, server_ext = agree(
        client or ClientPerMessageDeflateFactory(), server or ServerPerMessageDeflateFactory()
    )
    return (
        Protocol(CLIENT, max_size=max_size, extensions=[client_ext]),
        Protocol(SERVER, max_size=max_size, extensions=[server_ext]),
    )


def wire_frames(protocol: Protocol, data: bytes | None = None) -> list[Frame]:
    """The frames in bytes ``protocol`` sent (default: its ``data_to_send()``), RSV bits kept."""
    if data is None:
        data = protocol.data_to_send()
    parser = FrameParser(expect_masked=protocol.role is CLIENT, allowed_rsv=RSV1 | RSV2 | RSV3)
    parser.feed(data)
    frames = []
    while (frame := parser.next_frame()) is not None:
        frames.append(frame)
    assert parser.buffered == 0, "trailing bytes after the last frame"
    return frames


def deflate(data: bytes, wbits: int = 15, *, compressor: zlib._Compress | None = None) -> bytes:
    """``data`` compressed as RFC 7692 §7.2.1 says: sync flush, tail removed."""
    c = compressor or zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def compressible(n: int, seed: int = 0) -> bytes:
    """n bytes of text-like data that deflate shrinks several times over."""
    rng = random.Random(seed)
    words = [
        bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(60)
    ]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


# ================================================================ negotiation: the server


def test_default_factories_agree_on_the_documented_parameters() -> None:
    """RFC 7692 §7.1: the default offer and answer, and what each side then uses."""
    client, server = ClientPerMessageDeflateFactory(), ServerPerMessageDeflateFactory()
    assert client.offer() == offer(("client_max_window_bits", None))
    answer = server.negotiate([client.offer()])
    assert answer is not None
    assert answer[0] == offer(("server_max_window_bits", "12"), ("client_max_window_bits", "12"))
    client_ext, server_ext = agree(client, server)
    assert (client_ext.local_max_window_bits, client_ext.remote_max_window_bits) == (12, 12)
    assert (server_ext.local_max_window_bits, server_ext.remote_max_window_bits) == (12, 12)
    for ext in (client_ext, server_ext):
        assert not ext.local_no_context_takeover and not ext.remote_no_context_takeover


@pytest.mark.parametrize(
    ("params", "answer", "server_attrs"),
    [
        # No parameters: the server may still announce the window it compresses with.
        ([], [("server_max_window_bits", "12")], {"local_max_window_bits": 12}),
        # server_no_context_takeover (§7.1.1.1): accepted by echoing it; we then reset.
        (
            [("server_no_context_takeover", None)],
            [("server_no_context_takeover", None), ("server_max_window_bits", "12")],
            {"local_no_context_takeover": True, "remote_no_context_takeover": False},
        ),
        # client_no_context_takeover (§7.1.1.2): echoed; the client resets, so may we.
        (
            [("client_no_context_takeover", None)],
            [("client_no_context_takeover", None), ("server_max_window_bits", "12")],
            {"remote_no_context_takeover": True, "local_no_context_takeover": False},
        ),
        # server_max_window_bits (§7.1.2.1): the same or a smaller value in the answer.
        ([("server_max_window_bits", "9")], [("server_max_window_bits", "9")], {}),
        ([("server_max_window_bits", "10")], [("server_max_window_bits", "10")], {}),
        ([("server_max_window_bits", "12")], [("server_max_window_bits", "12")], {}),
        ([("server_max_window_bits", "15")], [("server_max_window_bits", "12")], {}),
        # client_max_window_bits (§7.1.2.2): without a value, we may name one...
        (
            [("client_max_window_bits", None)],
            [("server_max_window_bits", "12"), ("client_max_window_bits", "12")],
            {"remote_max_window_bits": 12},
        ),
        # ... with a value, ours only if it's not larger.
        (
            [("client_max_window_bits", "8")],
            [("server_max_window_bits", "12"), ("client_max_window_bits", "8")],
            {"remote_max_window_bits": 8},
        ),
        (
            [("client_max_window_bits", "10")],
            [("server_max_window_bits", "12"), ("client_max_window_bits", "10")],
            {"remote_max_window_bits": 10},
        ),
        (
            [("client_max_window_bits", "15")],
            [("server_max_window_bits", "12"), ("client_max_window_bits", "12")],
            {"remote_max_window_bits": 12},
        ),
        # All four at once, in the order the client happened to write them.
        (
            [
                ("client_max_window_bits", "11"),
                ("server_max_window_bits", "10"),
                ("client_no_context_takeover", None),
                ("server_no_context_takeover", None),
            ],
            [
                ("server_no_context_takeover", None),
                ("client_no_context_takeover", None),
                ("server_max_window_bits", "10"),
                ("client_max_window_bits", "11"),
            ],
            {
                "local_no_context_takeover": True,
                "remote_no_context_takeover": True,
                "local_max_window_bits": 10,
                "remote_max_window_bits": 11,
            },
        ),
    ],
)
def test_server_accepts_each_parameter(
    params: Params, answer: Params, server_attrs: dict[str, object]
) -> None:
    """RFC 7692 §7.1: each parameter, offered with and without a value, and the answer."""
    negotiated = negotiate([offer(*params)])
    assert negotiated is not None
    header, ext = negotiated
    assert header == (PMD, answer)
    for name, value in server_attrs.items():
        assert getattr(ext, name) == value, name


@pytest.mark.parametrize("bits", range(9, 16))
def test_server_answers_server_max_window_bits_9_to_15_with_the_smaller_value(bits: int) -> None:
    """RFC 7692 §7.1.2.1: the answer's value is the same as the offer's, or smaller."""
    for ours in (9, 12, 15):
        negotiated = negotiate(
            [offer(("server_max_window_bits", str(bits)))], server_max_window_bits=ours
        )
        assert negotiated is not None
        (_, answer), ext = negotiated
        assert answer == [("server_max_window_bits", str(min(bits, ours)))]
        assert ext.local_max_window_bits == min(bits, ours)


@pytest.mark.parametrize("bits", range(8, 16))
def test_server_answers_client_max_window_bits_8_to_15(bits: int) -> None:
    """RFC 7692 §7.1.2.2: a value in the offer is a limit the answer may lower, not raise."""
    for ours in (8, 12, 15):
        negotiated = negotiate(
            [offer(("client_max_window_bits", str(bits)))], client_max_window_bits=ours
        )
        assert negotiated is not None
        (_, answer), ext = negotiated
        assert ("client_max_window_bits", str(min(bits, ours))) in answer
        assert ext.remote_max_window_bits == min(bits, ours)


def test_server_accepts_server_max_window_bits_8() -> None:
    """RFC 7692 §7.1.2.1: any window from 8 to 15 bits may be asked for; zlib
    can't compress with 8, but its streams with 9 never reach back further."""
    negotiated = negotiate([offer(("server_max_window_bits", "8"))])
    assert negotiated is not None
    assert negotiated[0] == offer(("server_max_window_bits", "8"))
    assert negotiated[1].local_max_window_bits == 8


@settings(max_examples=50, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=600),
            st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=40), st.integers(1, 60)),
        ),
        min_size=1,
        max_size=12,
    ),
    takeover=st.booleans(),
)
def test_what_we_compress_for_an_8_bit_window_decompresses_with_one(
    chunks: list[bytes], takeover: bool
) -> None:
    """A peer that allowed us only 256 bytes of window decodes every message with
    exactly that window. zlib's decoder refuses a reference further back than its
    window ("invalid distance too far back") once it must look there: taking the
    output 16 bytes at a time makes it, as a 15-bit stream would show."""
    ours = PerMessageDeflate(
        local_max_window_bits=8, local_no_context_takeover=not takeover, threshold=0
    )
    theirs = zlib.decompressobj(wbits=-8)
    for chunk in chunks:
        frame = ours.encode(Frame(Opcode.BINARY, chunk, True, 0))
        if not takeover:
            theirs = zlib.decompressobj(wbits=-8)
        out, data = [], frame.payload + TAIL
        while data:
            out.append(theirs.decompress(data, 16))
            data = theirs.unconsumed_tail
        assert b"".join(out) == chunk


def test_server_settings_are_imposed_without_being_asked() -> None:
    """RFC 7692 §7.1.1.1, §7.1.2.1: the server may add its own no-takeover and window."""
    negotiated = negotiate([offer()], server_no_context_takeover=True, server_max_window_bits=10)
    assert negotiated is not None
    (_, answer), ext = negotiated
    assert answer == [("server_no_context_takeover", None), ("server_max_window_bits", "10")]
    assert ext.local_no_context_takeover and ext.local_max_window_bits == 10
    # And it may ask the client to reset its context (§7.1.1.2).
    negotiated = negotiate([offer()], client_no_context_takeover=True)
    assert negotiated is not None
    assert ("client_no_context_takeover", None) in negotiated[0][1]
    assert negotiated[1].remote_no_context_takeover


def test_server_cannot_ask_for_client_max_window_bits_the_client_did_not_offer() -> None:
    """RFC 7692 §7.1.2.2: without the parameter in the offer, the answer must not have it."""
    negotiated = negotiate([offer()], client_max_window_bits=9)
    assert negotiated is not None
    assert all(name != "client_max_window_bits" for name, _ in negotiated[0][1])
    assert negotiated[1].remote_max_window_bits == 15  # the client may use a full window
    # Unless it insists, in which case such offers are declined.
    assert (
        negotiate([offer()], client_max_window_bits=9, require_client_max_window_bits=True) is None
    )
    negotiated = negotiate(
        [offer(), offer(("client_max_window_bits", None))],
        client_max_window_bits=9,
        require_client_max_window_bits=True,
    )
    assert negotiated is not None
    assert ("client_max_window_bits", "9") in negotiated[0][1]


def test_server_without_window_preferences_answers_only_what_was_offered() -> None:
    """A server with no window settings of its own answers the client's values as they are."""
    kwargs: dict[str, object] = {"server_max_window_bits": None, "client_max_window_bits": None}
    negotiated = negotiate([offer()], **kwargs)
    assert negotiated is not None and negotiated[0] == (PMD, [])
    assert (negotiated[1].local_max_window_bits, negotiated[1].remote_max_window_bits) == (15, 15)
    negotiated = negotiate([offer(("client_max_window_bits", None))], **kwargs)
    assert negotiated is not None and negotiated[0] == (PMD, [])
    assert negotiated[1].remote_max_window_bits == 15
    negotiated = negotiate([offer(("client_max_window_bits", "10"))], **kwargs)
    assert negotiated is not None and negotiated[0] == (PMD, [])
    assert negotiated[1].remote_max_window_bits == 10  # the client said it uses at most 10
    negotiated = negotiate([offer(("server_max_window_bits", "11"))], **kwargs)
    assert negotiated is not None
    assert negotiated[0] == offer(("server_max_window_bits", "11"))
    assert negotiated[1].local_max_window_bits == 11


INVALID_PARAMS = [
    pytest.param([("server_max_window_bits", "7")], id="server_bits=7"),
    pytest.param([("server_max_window_bits", "16")], id="server_bits=16"),
    pytest.param([("server_max_window_bits", "08")], id="server_bits=08"),
    pytest.param([("server_max_window_bits", "010")], id="server_bits=010"),
    pytest.param([("server_max_window_bits", "abc")], id="server_bits=abc"),
    pytest.param([("server_max_window_bits", "-9")], id="server_bits=-9"),
    pytest.param([("server_max_window_bits", "")], id="server_bits=empty"),
    pytest.param([("server_max_window_bits", None)], id="server_bits-without-value"),
    pytest.param([("client_max_window_bits", "7")], id="client_bits=7"),
    pytest.param([("client_max_window_bits", "16")], id="client_bits=16"),
    pytest.param([("client_max_window_bits", "08")], id="client_bits=08"),
    pytest.param([("client_max_window_bits", "abc")], id="client_bits=abc"),
    pytest.param([("client_max_window_bits", "9.5")], id="client_bits=9.5"),
    pytest.param([("server_no_context_takeover", "1")], id="server_nct=1"),
    pytest.param([("client_no_context_takeover", "true")], id="client_nct=true"),
    pytest.param([("client_no_context_takeover", "")], id="client_nct=empty"),
    pytest.param([("server_no_context_takeover", None)] * 2, id="dup-server_nct"),
    pytest.param([("client_no_context_takeover", None)] * 2, id="dup-client_nct"),
    pytest.param(
        [("server_max_window_bits", "10"), ("server_max_window_bits", "10")], id="dup-server_bits"
    ),
    pytest.param(
        [("client_max_window_bits", "10"), ("client_max_window_bits", "11")], id="dup-client_bits"
    ),
    pytest.param(
        [("client_max_window_bits", None), ("client_max_window_bits", "11")],
        id="dup-client_bits-mixed",
    ),
    pytest.param([("x_unknown", None)], id="unknown"),
    pytest.param([("server_max_window_bit", "10")], id="misspelt"),
    pytest.param([("Server_No_Context_Takeover", None)], id="wrong-case"),
]


@pytest.mark.parametrize("params", INVALID_PARAMS)
def test_server_declines_malformed_offer_and_picks_the_next(params: Params) -> None:
    """RFC 7692 §5, §7.1: an offer with an unknown, duplicate or invalid parameter is
    declined; the server goes on to the next offer, or declines them all."""
    assert negotiate([offer(*params)]) is None
    fallback = offer(("client_no_context_takeover", None))
    negotiated = negotiate([offer(*params), fallback])
    assert negotiated is not None
    (_, answer), ext = negotiated
    assert answer == [("client_no_context_takeover", None), ("server_max_window_bits", "12")]
    assert ext.remote_no_context_takeover
    # Nor does the malformed offer become acceptable when other, valid parameters join it.
    assert negotiate([offer(("server_no_context_takeover", None), *params)]) is None


def test_server_picks_the_first_acceptable_offer_among_several() -> None:
    """RFC 7692 §5: offers come in order of preference; the first acceptable one wins."""
    offers = [
        ("x-webkit-deflate-frame", []),  # another extension: not ours to judge
        offer(("mystery", "1")),  # declined (unknown parameter)
        offer(("server_max_window_bits", "7")),  # declined (no such window)
        offer(("server_max_window_bits", "10"), ("client_max_window_bits", None)),  # chosen
        offer(("server_no_context_takeover", None)),  # acceptable, but later
        offer(),
    ]
    negotiated = negotiate(offers)
    assert negotiated is not None
    assert negotiated[0] == offer(
        ("server_max_window_bits", "10"), ("client_max_window_bits", "12")
    )
    assert not negotiated[1].local_no_context_takeover
    # Only other extensions, or nothing at all: nothing to accept.
    assert negotiate([("x-webkit-deflate-frame", [])]) is None
    assert negotiate([]) is None


def test_offers_as_parsed_from_the_header() -> None:
    """RFC 7692 §7.1 with RFC 6455 §9.1 syntax: quoted values count once unquoted."""
    header = (
        'permessage-deflate; client_max_window_bits="08", '
        "permessage-deflate; server_max_window_bits=16, "
        'permessage-deflate; client_max_window_bits="10"; server_no_context_takeover, '
        "permessage-deflate"
    )
    negotiated = negotiate(parse_extensions([header]))
    assert negotiated is not None
    (_, answer), ext = negotiated
    assert answer == [
        ("server_no_context_takeover", None),
        ("server_max_window_bits", "12"),
        ("client_max_window_bits", "10"),
    ]
    assert ext.remote_max_window_bits == 10 and ext.local_no_context_takeover


# ================================================================ negotiation: the client


@pytest.mark.parametrize(
    ("client_kwargs", "answer", "attrs"),
    [
        ({}, [], {"local_max_window_bits": 15, "remote_max_window_bits": 15}),
        # The server may add server_max_window_bits and either no-takeover on its own.
        ({}, [("server_max_window_bits", "8")], {"remote_max_window_bits": 8}),
        ({}, [("server_max_window_bits", "15")], {"remote_max_window_bits": 15}),
        ({}, [("server_no_context_takeover", None)], {"remote_no_context_takeover": True}),
        ({}, [("client_no_context_takeover", None)], {"local_no_context_takeover": True}),
        # client_max_window_bits offered without a value: any value 9..15 is honoured.
        ({}, [("client_max_window_bits", "9")], {"local_max_window_bits": 9}),
        ({}, [("client_max_window_bits", "15")], {"local_max_window_bits": 15}),
        # Offered with a value: the answer may lower it; without it, we still keep it.
        ({"client_max_window_bits": 10}, [], {"local_max_window_bits": 10}),
        (
            {"client_max_window_bits": 10},
            [("client_max_window_bits", "9")],
            {"local_max_window_bits": 9},
        ),
        (
            {"client_max_window_bits": 10},
            [("client_max_window_bits", "10")],
            {"local_max_window_bits": 10},
        ),
        # server_max_window_bits offered: the same or a smaller value comes back.
        (
            {"server_max_window_bits": 10},
            [("server_max_window_bits", "10")],
            {"remote_max_window_bits": 10},
        ),
        (
            {"server_max_window_bits": 10},
            [("server_max_window_bits", "8")],
            {"remote_max_window_bits": 8},
        ),
        (
            {"server_max_window_bits": 8},
            [("server_max_window_bits", "8")],
            {"remote_max_window_bits": 8},
        ),
        # Our own no-takeover holds whether or not the server echoes it.
        ({"client_no_context_takeover": True}, [], {"local_no_context_takeover": True}),
        (
            {"server_no_context_takeover": True},
            [("server_no_context_takeover", None)],
            {"remote_no_context_takeover": True},
        ),
    ],
)
def test_client_accepts_valid_answers(
    client_kwargs: dict[str, object], answer: Params, attrs: dict[str, object]
) -> None:
    """RFC 7692 §7.1: answers a client must accept, and the parameters it then uses."""
    ext = ClientPerMessageDeflateFactory(**client_kwargs).accept(answer)  # type: ignore[arg-type]
    for name, value in attrs.items():
        assert getattr(ext, name) == value, name


@pytest.mark.parametrize(
    ("client_kwargs", "answer"),
    [
        # client_max_window_bits in the answer that we didn't offer (§7.1.2.2).
        pytest.param(
            {"client_max_window_bits": None},
            [("client_max_window_bits", "10")],
            id="unoffered-client_bits",
        ),
        # ... larger than the value we offered.
        pytest.param(
            {"client_max_window_bits": 10},
            [("client_max_window_bits", "11")],
            id="client_bits-larger-than-offered",
        ),
        # ... without a value: only an offer may omit it.
        pytest.param({}, [("client_max_window_bits", None)], id="client_bits-without-value"),
        # ... below 8.
        pytest.param({}, [("client_max_window_bits", "7")], id="client_bits=7"),
        # server_max_window_bits larger than offered, or missing when offered (§7.1.2.1).
        pytest.param(
            {"server_max_window_bits": 10},
            [("server_max_window_bits", "11")],
            id="server_bits-larger-than-offered",
        ),
        pytest.param({"server_max_window_bits": 10}, [], id="server_bits-missing"),
        # server_no_context_takeover offered but not in the answer (§7.1.1.1).
        pytest.param({"server_no_context_takeover": True}, [], id="server_nct-missing"),
        # Malformed answers.
        pytest.param({}, [("server_max_window_bits", "7")], id="server_bits=7"),
        pytest.param({}, [("server_max_window_bits", "16")], id="server_bits=16"),
        pytest.param({}, [("server_max_window_bits", "08")], id="server_bits=08"),
        pytest.param({}, [("server_max_window_bits", "abc")], id="server_bits=abc"),
        pytest.param({}, [("server_max_window_bits", None)], id="server_bits-without-value"),
        pytest.param({}, [("client_max_window_bits", "16")], id="client_bits=16"),
        pytest.param({}, [("client_max_window_bits", "abc")], id="client_bits=abc"),
        pytest.param({}, [("server_no_context_takeover", "1")], id="server_nct=1"),
        pytest.param({}, [("client_no_context_takeover", "x")], id="client_nct=x"),
        pytest.param({}, [("server_no_context_takeover", None)] * 2, id="dup-server_nct"),
        pytest.param({}, [("server_max_window_bits", "10")] * 2, id="dup-server_bits"),
        pytest.param({}, [("client_max_window_bits", "10")] * 2, id="dup-client_bits"),
        pytest.param({}, [("unknown", None)], id="unknown"),
    ],
)
def test_client_fails_on_unacceptable_answers(
    client_kwargs: dict[str, object], answer: Params
) -> None:
    """RFC 7692 §5, §7.1: a client that can't accept the answer fails the connection."""
    with pytest.raises(NegotiationError):
        ClientPerMessageDeflateFactory(**client_kwargs).accept(answer)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [("client_max_window_bits", None)]),
        ({"client_max_window_bits": None}, []),
        ({"client_max_window_bits": False}, []),
        ({"client_max_window_bits": 9}, [("client_max_window_bits", "9")]),
        (
            {"server_max_window_bits": 8},
            [("server_max_window_bits", "8"), ("client_max_window_bits", None)],
        ),
        (
            {
                "server_no_context_takeover": True,
                "client_no_context_takeover": True,
                "server_max_window_bits": 15,
                "client_max_window_bits": 15,
            },
            [
                ("server_no_context_takeover", None),
                ("client_no_context_takeover", None),
                ("server_max_window_bits", "15"),
                ("client_max_window_bits", "15"),
            ],
        ),
    ],
)
def test_client_offers(kwargs: dict[str, object], expected: Params) -> None:
    """RFC 7692 §7.1: the offer carries every parameter the factory was given."""
    assert ClientPerMessageDeflateFactory(**kwargs).offer() == (PMD, expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("factory", "kwargs"),
    [
        (ClientPerMessageDeflateFactory, {"server_max_window_bits": 7}),
        (ClientPerMessageDeflateFactory, {"server_max_window_bits": 16}),
        (ClientPerMessageDeflateFactory, {"client_max_window_bits": 7}),
        (ClientPerMessageDeflateFactory, {"client_max_window_bits": 16}),
        (ServerPerMessageDeflateFactory, {"server_max_window_bits": 7}),
        (ServerPerMessageDeflateFactory, {"server_max_window_bits": 16}),
        (ServerPerMessageDeflateFactory, {"client_max_window_bits": 7}),
        (ServerPerMessageDeflateFactory, {"client_max_window_bits": 16}),
        (
            ServerPerMessageDeflateFactory,
            {"client_max_window_bits": None, "require_client_max_window_bits": True},
        ),
    ],
)
def test_factories_reject_impossible_settings(factory: type, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        factory(**kwargs)


# ================================================================ framing


def test_rsv1_marks_the_first_fragment_only() -> None:
    """RFC 7692 §6.1: RSV1 on the first frame of a compressed message, never on the rest."""
    client, server = protocols()
    data = [compressible(3000, seed) for seed in range(3)]
    wire = b"".join(
        [
            client.send_binary(data[0], fin=False),
            client.send_binary(data[1], fin=False),
            client.send_binary(data[2]),
        ]
    )
    frames = wire_frames(client, wire)
    assert [(f.opcode, f.rsv, f.fin) for f in frames] == [
        (Opcode.BINARY, RSV1, False),
        (Opcode.CONTINUATION, 0, False),
        (Opcode.CONTINUATION, 0, True),
    ]
    assert sum(len(f.payload) for f in frames) < 9000 // 2  # compressed indeed
    assert server.receive_data(wire) == [Message(b"".join(data))]


def test_control_frames_are_never_compressed() -> None:
    """RFC 7692 §6.1: control frames carry no RSV bits and a plain payload, even inside
    a compressed fragmented message, which goes on undisturbed."""
    client, server = protocols()
    ping = b"p" * 125
    wire = [
        client.send_text("x" * 1000, fin=False),
        client.send_ping(ping),
        client.send_pong(ping),
        client.send_text("y" * 1000),
        client.send_close(1000, "z" * 100),
    ]
    frames = [wire_frames(client, part)[0] for part in wire]
    assert frames[0].rsv == RSV1
    for frame in frames[1:]:
        assert frame.rsv == 0
    assert [(f.opcode, f.payload) for f in frames[1:3]] == [
        (Opcode.PING, ping),
        (Opcode.PONG, ping),
    ]
    assert frames[4].payload == b"\x03\xe8" + b"z" * 100
    events = server.receive_data(b"".join(wire))
    assert events[0] == Ping(ping)
    assert events[2] == Message("x" * 1000 + "y" * 1000)
    assert events[3].code == 1000  # type: ignore[union-attr]


@pytest.mark.parametrize("role", [CLIENT, SERVER])
@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_rsv1_on_a_control_frame_fails_with_1002(role: Role, opcode: Opcode) -> None:
    """RFC 7692 §6.1: permessage-deflate gives RSV1 a meaning on data frames only."""
    protocol = Protocol(role, extensions=[PerMessageDeflate()])
    payload = b"\x03\xe8" if opcode is Opcode.CLOSE else b"ping"
    assert_fails(protocol, peer_frame(protocol, opcode, payload, rsv=RSV1), ProtocolError, 1002)


@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_rsv1_on_a_continuation_frame_fails_with_1002(role: Role) -> None:
    """RFC 7692 §6.1: a continuation frame with RSV1 set is a protocol error."""
    protocol = Protocol(role, extensions=[PerMessageDeflate()])
    compressed = deflate(b"hello world " * 10)
    first = peer_frame(protocol, Opcode.TEXT, compressed[:5], fin=False, rsv=RSV1)
    assert protocol.receive_data(first) == []
    cont = peer_frame(protocol, Opcode.CONTINUATION, compressed[5:], rsv=RSV1)
    assert_fails(protocol, cont, ProtocolError, 1002)


@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_rsv1_on_a_continuation_of_an_uncompressed_message_fails_with_1002(role: Role) -> None:
    protocol = Protocol(role, extensions=[PerMessageDeflate()])
    assert protocol.receive_data(peer_frame(protocol, Opcode.BINARY, b"raw", fin=False)) == []
    cont = peer_frame(protocol, Opcode.CONTINUATION, deflate(b"x" * 50), rsv=RSV1)
    assert_fails(protocol, cont, ProtocolError, 1002)


@pytest.mark.parametrize("role", [CLIENT, SERVER])
@pytest.mark.parametrize("rsv", [RSV1, RSV2, RSV3])
def test_rsv_bits_without_a_negotiated_extension_fail_with_1002(role: Role, rsv: int) -> None:
    """RFC 6455 §5.2: RSV1 is only allowed once permessage-deflate is negotiated."""
    protocol = Protocol(role)
    frame = peer_frame(protocol, Opcode.TEXT, deflate(b"hello"), rsv=rsv)
    assert_fails(protocol, frame, ProtocolError, 1002)


@pytest.mark.parametrize("rsv", [RSV2, RSV3, RSV1 | RSV2])
def test_rsv2_and_rsv3_stay_forbidden_with_deflate(rsv: int) -> None:
    """RFC 7692 §6: permessage-deflate claims RSV1 and nothing else."""
    server = Protocol(SERVER, extensions=[PerMessageDeflate()])
    frame = peer_frame(server, Opcode.TEXT, deflate(b"hello"), rsv=rsv)
    assert_fails(server, frame, ProtocolError, 1002)


# ---------------------------------------------------------------- the RFC's examples


def test_rfc_7692_examples_are_decoded() -> None:
    """RFC 7692 §7.2.3.1-§7.2.3.5: every example payload decodes to "Hello"."""
    client = Protocol(CLIENT, extensions=[PerMessageDeflate()])
    examples = [
        # §7.2.3.1: a message compressed as one frame, then as two fragments.
        bytes.fromhex("c107f248cdc9c90700"),
        bytes.fromhex("4103f248cd") + bytes.fromhex("8004c9c90700"),
        # §7.2.3.2: the same message again, sharing the LZ77 window: 5 bytes only.
        bytes.fromhex("c105f200110000"),
        # §7.2.3.3: a DEFLATE block with no compression.
        bytes.fromhex("c10b000500faff48656c6c6f00"),
        # §7.2.3.5: two DEFLATE blocks in one message.
        bytes.fromhex("c10df24805000000ffffcac9c90700"),
    ]
    for example in examples:
        assert client.receive_data(example) == [Message("Hello")], example.hex()


def test_rfc_7692_bfinal_example_and_the_message_after_it() -> None:
    """RFC 7692 §7.2.3.4: a message may end with a BFINAL block; the next one, compressed
    from scratch, must still decode (zlib stops at BFINAL: a new decompressor is needed)."""
    client = Protocol(CLIENT, extensions=[PerMessageDeflate()])
    assert client.receive_data(bytes.fromhex("c108f348cdc9c9070000")) == [Message("Hello")]
    fresh = zlib.compressobj(6, zlib.DEFLATED, -15)
    second = fresh.compress(b"and again") + fresh.flush(zlib.Z_FINISH)
    assert client.receive_data(peer_frame(client, Opcode.TEXT, second, rsv=RSV1)) == [
        Message("and again")
    ]
    assert client.receive_data(bytes.fromhex("c107f248cdc9c90700")) == [Message("Hello")]


def test_data_after_a_bfinal_block_fails_with_1002() -> None:
    """Bytes after the end of the DEFLATE stream would be dropped silently: fail instead."""
    client = Protocol(CLIENT, extensions=[PerMessageDeflate()])
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = c.compress(b"Hello") + c.flush(zlib.Z_FINISH) + deflate(b" world")
    assert_fails(client, peer_frame(client, Opcode.TEXT, payload, rsv=RSV1), ProtocolError, 1002)


def test_encoder_output_matches_the_rfc_examples() -> None:
    """RFC 7692 §7.2.1, §7.2.3.1-2: "Hello" compresses to the RFC's bytes, tail removed;
    sent again, it shrinks to the 5 bytes of a back-reference."""
    server = Protocol(SERVER, extensions=[PerMessageDeflate(threshold=0)])
    assert server.send_text("Hello") == bytes.fromhex("c107f248cdc9c90700")
    assert server.send_text("Hello") == bytes.fromhex("c105f200110000")


@pytest.mark.parametrize("bits", [9, 12, 15])
def test_trailing_empty_block_is_stripped_on_send(bits: int) -> None:
    """RFC 7692 §7.2.1: the sync flush's 00 00 ff ff is removed from the payload."""
    ext = PerMessageDeflate(local_max_window_bits=bits, level=6, mem_level=5)
    client = Protocol(CLIENT, extensions=[ext])
    reference = zlib.compressobj(6, zlib.DEFLATED, -bits, 5)
    for data in (compressible(5000), compressible(5000, seed=1), bytes(300)):
        (frame,) = wire_frames(client, client.send_binary(data))
        expected = reference.compress(data) + reference.flush(zlib.Z_SYNC_FLUSH)
        assert expected.endswith(TAIL)
        assert frame.payload == expected[:-4]
        assert not frame.payload.endswith(TAIL)


def test_trailing_empty_block_is_stripped_from_the_last_fragment_only() -> None:
    """RFC 7692 §7.2.1: the tail comes off the message, i.e. its last frame."""
    client = Protocol(CLIENT, extensions=[PerMessageDeflate()])
    first, last = wire_frames(
        client, client.send_text("a" * 500, fin=False) + client.send_text("b" * 500)
    )
    assert first.payload.endswith(TAIL)  # a sync flush, left as is mid-message
    assert not last.payload.endswith(TAIL)
    # An empty last fragment (as Connection.send of an iterable ends it) costs one byte:
    # the header of the empty stored block, whose other four bytes are the tail.
    client.send_text("c" * 500, fin=False)
    (end,) = wire_frames(client, client.send_text(""))
    assert (end.opcode, end.payload, end.rsv) == (Opcode.CONTINUATION, b"\x00", 0)


def test_trailing_empty_block_is_restored_on_receive() -> None:
    """RFC 7692 §7.2.2: the receiver appends 00 00 ff ff before inflating.

    Without it the decoder would stop inside the empty stored block the sender cut off,
    and read the next message's first bytes as that block's length: with context
    takeover, every message after the first would be garbage.
    """
    server = Protocol(SERVER, extensions=[PerMessageDeflate()])
    data = [compressible(4000, seed) for seed in range(3)]
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    wire = []
    for i, message in enumerate(data):
        stripped = deflate(message, compressor=c)
        if i == 1:  # the payload cut anywhere into fragments
            wire.append(
                peer_frame(server, Opcode.BINARY, stripped[:7], fin=False, rsv=RSV1)
                + peer_frame(server, Opcode.CONTINUATION, stripped[7:-1], fin=False)
                + peer_frame(server, Opcode.CONTINUATION, stripped[-1:])
            )
        else:
            wire.append(peer_frame(server, Opcode.BINARY, stripped, rsv=RSV1))
    assert server.receive_data(b"".join(wire)) == [Message(m) for m in data]
    # Compare: inflating the same stream without restoring the tail goes wrong.
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    d = zlib.decompressobj(wbits=-15)
    first, second = deflate(data[0], compressor=c), deflate(data[1], compressor=c)
    assert d.decompress(first) == data[0]
    with pytest.raises(zlib.error):
        d.decompress(second)
    # A sender that left the tail on is still understood (two empty blocks in a row).
    frame = peer_frame(server, Opcode.BINARY, deflate(data[0]) + TAIL, rsv=RSV1)
    server = Protocol(SERVER, extensions=[PerMessageDeflate()])
    assert server.receive_data(frame) == [Message(data[0])]


@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_uncompressed_messages_are_allowed_with_deflate(role: Role) -> None:
    """RFC 7692 §6: RSV1 clear means not compressed, between compressed messages too."""
    protocol = Protocol(role, extensions=[PerMessageDeflate()])
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = [compressible(1000, seed) for seed in range(3)]
    wire = (
        peer_frame(protocol, Opcode.BINARY, deflate(data[0], compressor=compressor), rsv=RSV1)
        + peer_frame(protocol, Opcode.BINARY, b"plain \x00\x00\xff\xff")
        + peer_frame(protocol, Opcode.TEXT, b"pl", fin=False)
        + peer_frame(protocol, Opcode.CONTINUATION, b"ain")
        + peer_frame(protocol, Opcode.BINARY, deflate(data[1], compressor=compressor), rsv=RSV1)
    )
    assert protocol.receive_data(wire) == [
        Message(data[0]),
        Message(b"plain \x00\x00\xff\xff"),
        Message("plain"),
        Message(data[1]),
    ]


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff\xff\xff\xff", id="reserved-block-type"),
        pytest.param(b"\x00\x05\x00\x00\x00hello", id="bad-stored-length"),
        pytest.param(deflate(b"hello world")[:-1] + b"\xff" * 8, id="corrupt-tail"),
        pytest.param(bytes.fromhex("f200110000"), id="reference-before-start"),
    ],
)
@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_corrupt_compressed_data_fails_with_1002(role: Role, payload: bytes) -> None:
    """RFC 7692 §8.2.3.5 (Autobahn 12/13): invalid DEFLATE data fails the connection."""
    protocol = Protocol(role, extensions=[PerMessageDeflate()])
    exc = assert_fails(
        protocol, peer_frame(protocol, Opcode.BINARY, payload, rsv=RSV1), ProtocolError, 1002
    )
    assert "compressed" in str(exc)


def test_invalid_utf8_inside_compressed_text_fails_with_1007() -> None:
    """RFC 6455 §8.1: UTF-8 is checked on the decompressed text."""
    server = Protocol(SERVER, extensions=[PerMessageDeflate()])
    frame = peer_frame(server, Opcode.TEXT, deflate(b"caf\xc3" + b"\x28" * 200), rsv=RSV1)
    assert_fails(server, frame, InvalidUTF8, 1007)


# ================================================================ context takeover


@pytest.mark.parametrize("side", ["client", "server"])
def test_context_takeover_makes_a_repeated_message_smaller(side: str) -> None:
    """RFC 7692 §7.1.1: by default the window carries over; a repeat is a back-reference."""
    client, server = protocols()
    sender, receiver = (client, server) if side == "client" else (server, client)
    data = random.Random(1).randbytes(1000)  # incompressible on its own
    wire = [sender.send_binary(data) for _ in range(3)]
    sizes = [len(wire_frames(sender, w)[0].payload) for w in wire]
    assert sizes[0] > 1000
    assert sizes[1] < 20 and sizes[2] < 20
    assert receiver.receive_data(b"".join(wire)) == [Message(data)] * 3


@pytest.mark.parametrize(
    ("client_kwargs", "server_kwargs", "side"),
    [
        # Each side's own reset: offered by the client, or imposed by the server.
        ({"client_no_context_takeover": True}, {}, "client"),
        ({}, {"client_no_context_takeover": True}, "client"),
        ({"server_no_context_takeover": True}, {}, "server"),
        ({}, {"server_no_context_takeover": True}, "server"),
    ],
)
def test_no_context_takeover_compresses_each_message_alone(
    client_kwargs: dict[str, bool], server_kwargs: dict[str, bool], side: str
) -> None:
    """RFC 7692 §7.1.1.1-2: with no_context_takeover, a repeat costs as much as the first."""
    client, server = protocols(
        ClientPerMessageDeflateFactory(**client_kwargs),  # type: ignore[arg-type]
        ServerPerMessageDeflateFactory(**server_kwargs),  # type: ignore[arg-type]
    )
    sender, receiver = (client, server) if side == "client" else (server, client)
    data = compressible(2000)
    wire = [sender.send_binary(data) for _ in range(3)]
    payloads = [wire_frames(sender, w)[0].payload for w in wire]
    assert payloads[0] == payloads[1] == payloads[2]
    assert len(payloads[0]) < 1000
    assert receiver.receive_data(b"".join(wire)) == [Message(data)] * 3
    # The other direction keeps its context.
    wire = [receiver.send_binary(data) for _ in range(2)]
    sizes = [len(wire_frames(receiver, w)[0].payload) for w in wire]
    assert sizes[1] < sizes[0] // 4
    assert sender.receive_data(b"".join(wire)) == [Message(data)] * 2


def _primed_compressor(history: bytes, wbits: int = 15) -> zlib._Compress:
    """A compressor whose window already holds ``history``: what context takeover means."""
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    c.compress(history)
    c.flush(zlib.Z_SYNC_FLUSH)
    return c


@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_decoder_keeps_its_window_between_messages_by_default(role: Role) -> None:
    """RFC 7692 §7.2.2: without no_context_takeover, a message may refer to the last one."""
    protocol = Protocol(role, extensions=[PerMessageDeflate()])
    first = compressible(3000)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    wire = peer_frame(protocol, Opcode.BINARY, deflate(first, compressor=c), rsv=RSV1)
    second = peer_frame(protocol, Opcode.BINARY, deflate(first, compressor=c), rsv=RSV1)
    assert len(second) < len(wire) // 4
    assert protocol.receive_data(wire + second) == [Message(first), Message(first)]


@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_decoder_starts_fresh_with_remote_no_context_takeover(role: Role) -> None:
    """RFC 7692 §7.1.1: with the peer's no_context_takeover, each message is decoded with
    an empty window: messages from a fresh compressor work, references to the previous
    message don't (they point before the start of the window)."""
    protocol = Protocol(role, extensions=[PerMessageDeflate(remote_no_context_takeover=True)])
    messages = [compressible(2000, seed) for seed in range(4)]
    wire = b"".join(peer_frame(protocol, Opcode.BINARY, deflate(m), rsv=RSV1) for m in messages)
    assert protocol.receive_data(wire) == [Message(m) for m in messages]
    # A message that refers back into the previous one can't be decoded any more.
    dependent = deflate(messages[-1], compressor=_primed_compressor(messages[-1]))
    frame = peer_frame(protocol, Opcode.BINARY, dependent, rsv=RSV1)
    assert_fails(protocol, frame, ProtocolError, 1002)


def test_decoder_reset_after_a_fragmented_message() -> None:
    """RFC 7692 §7.1.1: the reset happens at the end of the message, not of each frame."""
    server = Protocol(SERVER, extensions=[PerMessageDeflate(remote_no_context_takeover=True)])
    data = compressible(3000)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    part1 = c.compress(data[:1500]) + c.flush(zlib.Z_SYNC_FLUSH)
    part2 = deflate(data[1500:], compressor=c)  # refers back into part 1: same message
    wire = peer_frame(server, Opcode.BINARY, part1, fin=False, rsv=RSV1) + peer_frame(
        server, Opcode.CONTINUATION, part2
    )
    assert server.receive_data(wire + wire) == [Message(data), Message(data)]


@pytest.mark.parametrize("bits", range(9, 16))
def test_window_bits_bound_how_far_back_the_encoder_looks(bits: int) -> None:
    """RFC 7692 §7.1.2: the encoder stays within the negotiated window, so a decoder with
    exactly that window decodes everything, and context takeover works up to it."""
    ext = PerMessageDeflate(local_max_window_bits=bits, threshold=0)
    window = 1 << bits
    data = random.Random(bits).randbytes(window // 4)
    d = zlib.decompressobj(wbits=-bits)
    sizes = []
    for _ in range(3):
        payload = ext.encode(Frame(Opcode.BINARY, data)).payload
        sizes.append(len(payload))
        assert d.decompress(payload + TAIL) == data
    assert sizes[1] < len(data) // 4  # the repeat fits in the window: a back-reference
    # A message larger than the window can't refer to its previous copy.
    big = random.Random(bits).randbytes(2 * window)
    sizes = [len(ext.encode(Frame(Opcode.BINARY, big)).payload) for _ in range(2)]
    assert sizes[1] > len(big)


# ================================================================ threshold


@pytest.mark.parametrize("threshold", [0, 1, 100, 4096])
def test_threshold_sends_short_messages_uncompressed(threshold: int) -> None:
    """Messages shorter than ``threshold`` go out plain (RSV1 clear), the others compressed."""
    client, server = protocols(
        ClientPerMessageDeflateFactory(threshold=threshold),
        ServerPerMessageDeflateFactory(threshold=threshold),
    )
    below, at = b"a" * max(threshold - 1, 0), b"a" * threshold
    for sender, receiver in ((client, server), (server, client)):
        if threshold > 0:
            wire = sender.send_binary(below)
            (frame,) = wire_frames(sender, wire)
            assert (frame.rsv, frame.payload) == (0, below)
            assert receiver.receive_data(wire) == [Message(below)]
        wire = sender.send_binary(at)
        (frame,) = wire_frames(sender, wire)
        assert frame.rsv == RSV1
        assert frame.payload != at or not at
        assert receiver.receive_data(wire) == [Message(at)]


def test_default_threshold_and_fragmented_messages() -> None:
    """The default threshold is 128 bytes; a fragmented message is decided on its first
    frame (its size isn't known yet) and is always compressed."""
    client, server = protocols()
    assert wire_frames(client, client.send_text("x" * 127))[0].rsv == 0
    assert wire_frames(client, client.send_text("x" * 128))[0].rsv == RSV1
    wire = client.send_text("tiny", fin=False) + client.send_text("!")
    assert wire_frames(client, wire)[0].rsv == RSV1
    assert server.receive_data(wire) == [Message("tiny!")]


def test_factory_settings_reach_the_extension() -> None:
    """level, mem_level and threshold go from each factory to its side's extension."""
    client_ext, server_ext = agree(
        ClientPerMessageDeflateFactory(level=1, mem_level=9, threshold=10),
        ServerPerMessageDeflateFactory(level=9, mem_level=1, threshold=20),
    )
    assert (client_ext.level, client_ext.mem_level, client_ext.threshold) == (1, 9, 10)
    assert (server_ext.level, server_ext.mem_level, server_ext.threshold) == (9, 1, 20)
    # And the level is really used: level 0 only stores.
    stored = PerMessageDeflate(level=0, threshold=0)
    data = b"a" * 1000
    assert len(stored.encode(Frame(Opcode.BINARY, data)).payload) > 1000


# ================================================================ limits and bombs


@pytest.mark.parametrize("role", [CLIENT, SERVER])
def test_max_size_applies_to_the_decompressed_size(role: Role) -> None:
    """RFC 6455 §10.4 with RFC 7692: a message at the limit once inflated passes, one byte
    more fails with 1009, however small the compressed frame."""
    protocol = Protocol(role, max_size=10_000, extensions=[PerMessageDeflate()])
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    exact = peer_frame(protocol, Opcode.BINARY, deflate(bytes(10_000), compressor=c), rsv=RSV1)
    assert len(exact) < 100
    assert protocol.receive_data(exact) == [Message(bytes(10_000))]
    over = peer_frame(protocol, Opcode.BINARY, deflate(bytes(10_001), compressor=c), rsv=RSV1)
    assert_fails(protocol, over, PayloadTooBig, 1009)


def test_max_size_applies_to_a_fragmented_compressed_message() -> None:
    """The limit is on the whole message: each fragment may only use what is left."""
    server = Protocol(SERVER, max_size=10_000, extensions=[PerMessageDeflate()])
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    part = c.compress(bytes(4000)) + c.flush(zlib.Z_SYNC_FLUSH)
    first = peer_frame(server, Opcode.BINARY, part, fin=False, rsv=RSV1)
    assert server.receive_data(first) == []
    part = c.compress(bytes(4000)) + c.flush(zlib.Z_SYNC_FLUSH)
    assert server.receive_data(peer_frame(server, Opcode.CONTINUATION, part, fin=False)) == []
    last = peer_frame(server, Opcode.CONTINUATION, deflate(bytes(2001), compressor=c))
    assert_fails(server, last, PayloadTooBig, 1009)


def test_extension_decode_is_bounded_by_max_size() -> None:
    """The extension itself bounds its output: no frame inflates past the limit."""
    bomb = Frame(Opcode.BINARY, deflate(bytes(10 * MiB)), True, RSV1)
    with pytest.raises(PayloadTooBig):
        PerMessageDeflate().decode(bomb, max_size=1000)
    exact = Frame(Opcode.BINARY, deflate(b"a" * 1000), True, RSV1)
    assert PerMessageDeflate().decode(exact, max_size=1000).payload == b"a" * 1000
    with pytest.raises(PayloadTooBig):
        PerMessageDeflate().decode(exact, max_size=999)
    assert PerMessageDeflate().decode(bomb, max_size=None).payload == bytes(10 * MiB)


def deflated_zeros(total: int, chunk: int = MiB) -> bytes:
    """``total`` zero bytes deflated, built chunk by chunk: the test never holds them."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    parts = [c.compress(zeros) for _ in range(total // chunk)]
    parts.append(c.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    assert data.endswith(TAIL)
    return data[:-4]


BOMB = 100 * MiB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """100 MiB of zeros, deflated to about 100 KB."""
    data = deflated_zeros(BOMB)
    assert len(data) < 200_000
    return data


@pytest.mark.parametrize("fragments", [1, 4])
def test_decompression_bomb_fails_with_1009_in_bounded_memory(bomb: bytes, fragments: int) -> None:
    """100 MiB of zeros in ~100 KB: rejected with 1009 after at most max_size bytes of
    output, without ever allocating anywhere near 100 MiB."""
    server = Protocol(SERVER, max_size=MiB, extensions=[PerMessageDeflate()])
    step = -(-len(bomb) // fragments)
    parts = [bomb[i : i + step] for i in range(0, len(bomb), step)]
    wire = peer_frame(server, Opcode.BINARY, parts[0], fin=len(parts) == 1, rsv=RSV1) + b"".join(
        peer_frame(server, Opcode.CONTINUATION, part, fin=i == len(parts) - 1)
        for i, part in enumerate(parts[1:], 1)
    )
    gc.collect()
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooBig) as info:
            server.receive_data(wire)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == 1009
    assert peak < 20 * MiB, f"peak {peak / MiB:.1f} MiB while rejecting the bomb"
    (close,) = wire_frames(server)
    assert close.opcode is Opcode.CLOSE and close.payload[:2] == b"\x03\xf1"


def test_the_bomb_really_inflates_and_tracemalloc_sees_it() -> None:
    """The control for the bomb test: with max_size=None a (smaller, 32 MiB) bomb does
    inflate, and tracemalloc counts zlib's output, so a bounded peak means something."""
    server = Protocol(SERVER, max_size=None, extensions=[PerMessageDeflate()])
    frame = peer_frame(server, Opcode.BINARY, deflated_zeros(32 * MiB), rsv=RSV1)
    gc.collect()
    tracemalloc.start()
    try:
        [message] = server.receive_data(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message == Message(bytes(32 * MiB))
    assert peak >= 32 * MiB


# ================================================================ the round-trip property


def test_every_parameter_combination_round_trips() -> None:
    """All 392 combinations of no_context_takeover (each side) x server and client window
    bits (9..15) x level (1, 9): the agreed parameters are the offered ones, messages
    (fragmented, repeated, empty) come back intact both ways, and a repeat shrinks
    exactly when the sender keeps its context."""
    text = compressible(3000).decode()
    small = compressible(200, seed=7).decode()  # a repeat fits even in a 9-bit window
    binary = random.Random(5).randbytes(1500)
    server_factory = ServerPerMessageDeflateFactory(
        server_max_window_bits=None, client_max_window_bits=None
    )
    for server_nct, client_nct, server_bits, client_bits, level in itertools.product(
        (False, True), (False, True), range(9, 16), range(9, 16), (1, 9)
    ):
        combo = f"{server_nct=} {client_nct=} {server_bits=} {client_bits=} {level=}"
        client_ext, server_ext = agree(
            ClientPerMessageDeflateFactory(
                server_no_context_takeover=server_nct,
                client_no_context_takeover=client_nct,
                server_max_window_bits=server_bits,
                client_max_window_bits=client_bits,
                level=level,
            ),
            server_factory,
        )
        assert (server_ext.local_no_context_takeover, server_ext.remote_no_context_takeover) == (
            server_nct,
            client_nct,
        ), combo
        assert (client_ext.local_no_context_takeover, client_ext.remote_no_context_takeover) == (
            client_nct,
            server_nct,
        ), combo
        assert (server_ext.local_max_window_bits, server_ext.remote_max_window_bits) == (
            server_bits,
            client_bits,
        ), combo
        assert (client_ext.local_max_window_bits, client_ext.remote_max_window_bits) == (
            client_bits,
            server_bits,
        ), combo
        client = Protocol(CLIENT, extensions=[client_ext])
        server = Protocol(SERVER, extensions=[server_ext])
        for sender, receiver, nct in ((client, server, client_nct), (server, client, server_nct)):
            first = sender.send_text(text)
            fragmented = b"".join(
                [sender.send_binary(binary[:500], fin=False), sender.send_binary(binary[500:])]
            )
            once, twice = sender.send_text(small), sender.send_text(small)
            empty = sender.send_text("")
            events = receiver.receive_data(first + fragmented + once + twice + empty)
            assert events == [
                Message(text),
                Message(binary),
                Message(small),
                Message(small),
                Message(""),
            ], combo
            sizes = [len(wire_frames(sender, w)[0].payload) for w in (once, twice)]
            if nct:
                assert sizes[1] == sizes[0], combo
            else:
                assert sizes[1] < sizes[0] // 2, combo


@st.composite
def deflate_settings(
    draw: st.DrawFn,
) -> tuple[ClientPerMessageDeflateFactory, ServerPerMessageDeflateFactory]:
    bits = st.integers(9, 15)
    client = ClientPerMessageDeflateFactory(
        server_no_context_takeover=draw(st.booleans()),
        client_no_context_takeover=draw(st.booleans()),
        server_max_window_bits=draw(st.none() | bits),
        client_max_window_bits=draw(st.none() | st.just(True) | bits),
        level=draw(st.integers(0, 9)),
        mem_level=draw(st.integers(1, 9)),
        threshold=draw(st.sampled_from([0, 1, 16, 128])),
    )
    server = ServerPerMessageDeflateFactory(
        server_no_context_takeover=draw(st.booleans()),
        client_no_context_takeover=draw(st.booleans()),
        server_max_window_bits=draw(st.none() | bits),
        client_max_window_bits=draw(st.none() | bits),
        level=draw(st.integers(0, 9)),
        mem_level=draw(st.integers(1, 9)),
        threshold=draw(st.sampled_from([0, 1, 16, 128])),
    )
    return client, server


def _repeat(unit: bytes, n: int) -> bytes:
    return (unit * n)[:70_000]


payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(_repeat, st.binary(min_size=1, max_size=40), st.integers(1, 3000)),
    st.builds(
        lambda n, seed: random.Random(seed).randbytes(n),
        st.integers(0, 20_000),
        st.integers(0, 2**32),
    ),
)
texts = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda s, n: (s * n)[:20_000], st.text(min_size=1, max_size=20), st.integers(1, 2000)
    ),
)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str | bytes, list[int], bool]:
    """A message, where to cut it into fragments, and whether to ping between fragments."""
    data: str | bytes = draw(st.one_of(payloads, texts))
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=5))
    return data, sorted(set(cuts)), draw(st.booleans())


def _send(sender: Protocol, data: str | bytes, cuts: list[int], ping: bool) -> bytes:
    bounds = [0, *cuts, len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    out = []
    for i, piece in enumerate(pieces):
        fin = i == len(pieces) - 1
        out.append(
            sender.send_text(piece, fin)
            if isinstance(piece, str)
            else sender.send_binary(piece, fin)
        )
        if ping and not fin:
            out.append(sender.send_ping(b"mid"))
    return b"".join(out)


@settings(max_examples=300, deadline=None)
@given(
    settings_=deflate_settings(),
    client_messages=st.lists(messages(), min_size=1, max_size=5),
    server_messages=st.lists(messages(), max_size=5),
    chunk=st.integers(1, 70_000),
)
def test_compress_then_decompress_is_the_identity(
    settings_: tuple[ClientPerMessageDeflateFactory, ServerPerMessageDeflateFactory],
    client_messages: list[tuple[str | bytes, list[int], bool]],
    server_messages: list[tuple[str | bytes, list[int], bool]],
    chunk: int,
) -> None:
    """RFC 7692: whatever the negotiated parameters, the fragmentation and the way the
    bytes are cut on the wire, the receiver gets exactly the messages sent, in order,
    several in a row (so context takeover, or its absence, is exercised)."""
    client_factory, server_factory = settings_
    negotiated = server_factory.negotiate([client_factory.offer()])
    if negotiated is None:
        # The only offers a server declines are those asking it for an 8-bit window,
        # which this client never makes, or lacking a window it insists on.
        raise AssertionError(f"declined {client_factory.offer()}")
    (_, answer), server_ext = negotiated
    client_ext = client_factory.accept(answer)
    # Both sides agree on each direction's parameters.
    assert client_ext.local_max_window_bits <= server_ext.remote_max_window_bits
    assert server_ext.local_max_window_bits <= client_ext.remote_max_window_bits
    assert client_ext.local_no_context_takeover >= server_ext.remote_no_context_takeover
    assert server_ext.local_no_context_takeover == client_ext.remote_no_context_takeover
    if client_factory.server_max_window_bits is not None:
        assert server_ext.local_max_window_bits <= client_factory.server_max_window_bits

    client = Protocol(CLIENT, max_size=None, extensions=[client_ext])
    server = Protocol(SERVER, max_size=None, extensions=[server_ext])
    for sender, receiver, batch in (
        (client, server, client_messages),
        (server, client, server_messages),
        (client, server, client_messages[::-1]),
    ):
        wire = b"".join(_send(sender, *m) for m in batch)
        events = []
        for i in range(0, len(wire), chunk):
            events.extend(receiver.receive_data(wire[i : i + chunk]))
        received = [e.data for e in events if isinstance(e, Message)]
        assert received == [m[0] for m in batch]
        assert all(e.final for e in events if isinstance(e, Message))
        assert [e for e in events if isinstance(e, Ping)] == [
            Ping(b"mid") for data, cuts, ping in batch if ping for _ in cuts_used(data, cuts)
        ]
        receiver.data_to_send()  # the pongs


def cuts_used(data: str | bytes, cuts: list[int]) -> list[int]:
    """The cuts that start a new fragment (one ping after each fragment but the last)."""
    bounds = [0, *cuts, len(data)]
    return list(range(len(bounds) - 2))


def test_client_accepts_an_answer_asking_it_for_an_8_bit_window() -> None:
    """RFC 7692 §7.1.2.2: the server may ask the client for any window from 8 bits."""
    extension = ClientPerMessageDeflateFactory().accept([("client_max_window_bits", "8")])
    assert extension.local_max_window_bits == 8
