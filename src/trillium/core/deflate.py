"""permessage-deflate (RFC 7692): compressed messages, negotiated in the handshake.

A compressed message has RSV1 set on its first frame; its payload, all fragments
joined, is a raw DEFLATE stream ended by a sync flush, whose last four bytes
(``00 00 ff ff``) are left off on the wire and put back by the receiver (§7.2).
Control frames are never compressed. Each side keeps its LZ77 window from one
message to the next ("context takeover") unless the handshake said not to.

The handshake agrees on four parameters (§7.1): ``server_no_context_takeover``,
``client_no_context_takeover``, ``server_max_window_bits`` and
``client_max_window_bits``. The client offers (``ClientPerMessageDeflateFactory``),
the server picks the first offer it can accept, or none
(``ServerPerMessageDeflateFactory``), and the client checks the answer::

    >>> client = ClientPerMessageDeflateFactory()
    >>> server = ServerPerMessageDeflateFactory()
    >>> answer, server_ext = server.negotiate([client.offer()])
    >>> answer
    ('permessage-deflate', [('server_max_window_bits', '12'), ('client_max_window_bits', '12')])
    >>> client_ext = client.accept(answer[1])
    >>> frame = client_ext.encode(Frame(Opcode.TEXT, b"hello " * 100))
    >>> frame.rsv == RSV1, len(frame.payload) < 20
    (True, True)
    >>> server_ext.decode(frame, max_size=None).payload == b"hello " * 100
    True

Decompression is bounded: ``decode`` never produces more than ``max_size`` bytes
(plus one, to notice the excess), so a small frame that would inflate to gigabytes
fails with 1009 after at most ``max_size`` bytes of output.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from ..exceptions import NegotiationError, PayloadTooBig, ProtocolError
from .extensions import Extension
from .frames import RSV1, Frame, Opcode
from .headers import ExtensionHeader

__all__ = [
    "ClientPerMessageDeflateFactory",
    "PerMessageDeflate",
    "ServerPerMessageDeflateFactory",
]

NAME = "permessage-deflate"
_EMPTY_BLOCK = b"\x00\x00\xff\xff"
_WINDOW_BITS = frozenset(str(n) for n in range(8, 16))  # "8" .. "15", no leading zeros
#: zlib can't compress with an 8-bit (256-byte) window; it is asked for 9 then. That
#: still keeps the promise: zlib never refers further back than the window minus its
#: 262-byte lookahead, which for 9 bits (512 bytes) is 250 bytes, within 256.
_ZLIB_MIN_WINDOW_BITS = 9


class PerMessageDeflate(Extension):
    """The negotiated permessage-deflate state of one connection.

    ``remote_*`` parameters describe how the peer compresses (what we decompress),
    ``local_*`` how we compress. Messages shorter than ``threshold`` bytes are sent
    uncompressed (compressing a few bytes costs more than it saves). zlib objects
    are created on first use, so an idle connection pays nothing for them.
    """

    name = NAME
    rsv_bits = RSV1

    def __init__(
        self,
        *,
        remote_no_context_takeover: bool = False,
        local_no_context_takeover: bool = False,
        remote_max_window_bits: int = 15,
        local_max_window_bits: int = 15,
        level: int = 6,
        mem_level: int = 5,
        threshold: int = 128,
    ) -> None:
        if not 8 <= remote_max_window_bits <= 15:
            raise ValueError("remote_max_window_bits must be between 8 and 15")
        if not 8 <= local_max_window_bits <= 15:
            raise ValueError("local_max_window_bits must be between 8 and 15")
        self.remote_no_context_takeover = remote_no_context_takeover
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_max_window_bits = remote_max_window_bits
        self.local_max_window_bits = local_max_window_bits
        self.level = level
        self.mem_level = mem_level
        self.threshold = threshold
        self._decoder: zlib._Decompress | None = None
        self._encoder: zlib._Compress | None = None
        self._decoding = False  # the message being received is compressed
        self._encoding = False  # the message being sent is compressed

    def __repr__(self) -> str:
        return (
            f"PerMessageDeflate(remote_no_context_takeover={self.remote_no_context_takeover}, "
            f"local_no_context_takeover={self.local_no_context_takeover}, "
            f"remote_max_window_bits={self.remote_max_window_bits}, "
            f"local_max_window_bits={self.local_max_window_bits})"
        )

    def decode(self, frame: Frame, *, max_size: int | None) -> Frame:
        """Decompress a received data frame, producing at most ``max_size`` bytes."""
        if frame.opcode is Opcode.CONTINUATION:
            if frame.rsv & RSV1:
                raise ProtocolError("RSV1 set on a continuation frame (RFC 7692 §6.1)")
            if not self._decoding:
                return frame
        else:
            if not frame.rsv & RSV1:
                return frame  # an uncompressed message
            self._decoding = True
        data = frame.payload + _EMPTY_BLOCK if frame.fin else frame.payload
        if self._decoder is None:
            self._decoder = zlib.decompressobj(wbits=-self.remote_max_window_bits)
        # Ask for one byte more than allowed: getting it means the message is too big.
        limit = 0 if max_size is None else max_size + 1
        try:
            payload = self._decoder.decompress(data, limit)
        except zlib.error as exc:
            raise ProtocolError(f"invalid compressed data: {exc}") from None
        if max_size is not None and (len(payload) > max_size or self._decoder.unconsumed_tail):
            raise PayloadTooBig(f"message exceeds the limit of {max_size} bytes once decompressed")
        ended = self._decoder.eof
        if ended:
            # The peer ended its DEFLATE stream with a BFINAL block (§7.2.3.4): zlib
            # ignores what follows, so it must be padding or empty blocks, not data.
            trailer = self._decoder.unused_data
            if trailer.replace(_EMPTY_BLOCK, b"").strip(b"\x00"):
                raise ProtocolError("compressed data after the end of the DEFLATE stream")
        if frame.fin:
            self._decoding = False
            # After a BFINAL block zlib decodes nothing more: the next message needs a
            # new decompressor (else it would silently come out empty).
            if self.remote_no_context_takeover or ended:
                self._decoder = None
        return Frame(frame.opcode, payload, frame.fin, frame.rsv & ~RSV1)

    def encode(self, frame: Frame) -> Frame:
        """Compress a data frame about to be sent (whole messages under threshold aren't)."""
        if frame.opcode is Opcode.CONTINUATION:
            if not self._encoding:
                return frame
            rsv = frame.rsv
        else:
            # Decided on the first frame: a fragmented message's size isn't known yet.
            self._encoding = not frame.fin or len(frame.payload) >= self.threshold
            if not self._encoding:
                return frame
            rsv = frame.rsv | RSV1
        if self._encoder is None:
            bits = max(self.local_max_window_bits, _ZLIB_MIN_WINDOW_BITS)
            self._encoder = zlib.compressobj(self.level, zlib.DEFLATED, -bits, self.mem_level)
        payload = self._encoder.compress(frame.payload) + self._encoder.flush(zlib.Z_SYNC_FLUSH)
        if frame.fin:
            if payload.endswith(_EMPTY_BLOCK):
                payload = payload[:-4]
            self._encoding = False
            if self.local_no_context_takeover:
                self._encoder = None
        return Frame(frame.opcode, payload, frame.fin, rsv)


@dataclass(frozen=True)
class _Params:
    """The parameters of one offer or answer, checked for duplicates and syntax."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | bool | None = None  # True: offered without a value

    @classmethod
    def parse(cls, params: Sequence[tuple[str, str | None]], *, answer: bool) -> _Params:
        """Raise ValueError for unknown, duplicate or malformed parameters (§7.1)."""
        seen: dict[str, str | None] = {}
        for name, value in params:
            if name in seen:
                raise ValueError(f"duplicate parameter {name}")
            seen[name] = value
        values: dict[str, object] = {}
        for name, value in seen.items():
            if name in ("server_no_context_takeover", "client_no_context_takeover"):
                if value is not None:
                    raise ValueError(f"{name} takes no value")
                values[name] = True
            elif name == "server_max_window_bits":
                if value not in _WINDOW_BITS:
                    raise ValueError(f"invalid server_max_window_bits {value!r}")
                values[name] = int(value)
            elif name == "client_max_window_bits":
                if value is None and not answer:
                    values[name] = True  # "I can use a smaller window if you ask"
                elif value not in _WINDOW_BITS:
                    raise ValueError(f"invalid client_max_window_bits {value!r}")
                else:
                    values[name] = int(value)
            else:
                raise ValueError(f"unknown parameter {name}")
        return cls(**values)  # type: ignore[arg-type]


def _check_bits(name: str, bits: int | None) -> None:
    if bits is not None and not 8 <= bits <= 15:
        raise ValueError(f"{name} must be between 8 and 15")


class ServerPerMessageDeflateFactory:
    """The server's permessage-deflate settings, and its choice among the client's offers.

    - ``server_no_context_takeover``: reset our compressor after every message
      (less memory per connection, less compression).
    - ``client_no_context_takeover``: ask the client to do the same.
    - ``server_max_window_bits``: the largest window we compress with (8-15; default
      12, a 4 KiB window, as websockets does, to keep memory per connection low).
    - ``client_max_window_bits``: ask the client for at most this window, when it
      offers the parameter (default 12); ``require_client_max_window_bits`` declines
      offers that don't let us ask.
    - ``level`` and ``mem_level``: zlib's compression level and memory level.
    - ``threshold``: messages shorter than this many bytes are sent uncompressed.

    ::

        trillium.serve(handler, host, port,
                       compression=ServerPerMessageDeflateFactory(level=1, threshold=1024))
    """

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int | None = 12,
        client_max_window_bits: int | None = 12,
        require_client_max_window_bits: bool = False,
        level: int = 6,
        mem_level: int = 5,
        threshold: int = 128,
    ) -> None:
        _check_bits("server_max_window_bits", server_max_window_bits)
        if client_max_window_bits is not None and not 8 <= client_max_window_bits <= 15:
            raise ValueError("client_max_window_bits must be between 8 and 15")
        if require_client_max_window_bits and client_max_window_bits is None:
            raise ValueError("require_client_max_window_bits needs client_max_window_bits")
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.require_client_max_window_bits = require_client_max_window_bits
        self.level = level
        self.mem_level = mem_level
        self.threshold = threshold

    @classmethod
    def from_compression(
        cls, compression: str | ServerPerMessageDeflateFactory | None
    ) -> ServerPerMessageDeflateFactory | None:
        """What a ``compression=`` argument means: "deflate" (defaults), a factory, or None."""
        if compression is None or isinstance(compression, cls):
            return compression
        if compression == "deflate":
            return cls()
        raise ValueError(f"unsupported compression: {compression!r}")

    def negotiate(
        self, offers: Sequence[ExtensionHeader]
    ) -> tuple[ExtensionHeader, PerMessageDeflate] | None:
        """Accept the first acceptable permessage-deflate offer (§5), or None to decline all."""
        for name, params in offers:
            if name != NAME:
                continue
            try:
                offer = _Params.parse(params, answer=False)
            except ValueError:
                continue  # a malformed offer is declined, not fatal (§7.1)
            accepted = self._accept(offer)
            if accepted is not None:
                return accepted
        return None

    def _accept(self, offer: _Params) -> tuple[ExtensionHeader, PerMessageDeflate] | None:
        answer: list[tuple[str, str | None]] = []
        server_no_context_takeover = offer.server_no_context_takeover or (
            self.server_no_context_takeover
        )
        if server_no_context_takeover:
            answer.append(("server_no_context_takeover", None))
        client_no_context_takeover = offer.client_no_context_takeover or (
            self.client_no_context_takeover
        )
        if client_no_context_takeover:
            answer.append(("client_no_context_takeover", None))

        server_bits = self.server_max_window_bits
        if offer.server_max_window_bits is not None:
            server_bits = min(offer.server_max_window_bits, server_bits or 15)
        if server_bits is not None:
            answer.append(("server_max_window_bits", str(server_bits)))

        client_bits: int | None = None
        if offer.client_max_window_bits is None:
            if self.require_client_max_window_bits:
                return None  # we may not ask for a window the client didn't offer to limit
        elif self.client_max_window_bits is not None:
            client_bits = self.client_max_window_bits
            if offer.client_max_window_bits is not True:
                client_bits = min(client_bits, offer.client_max_window_bits)
            answer.append(("client_max_window_bits", str(client_bits)))
        elif offer.client_max_window_bits is not True:
            client_bits = offer.client_max_window_bits

        extension = PerMessageDeflate(
            remote_no_context_takeover=client_no_context_takeover,
            local_no_context_takeover=server_no_context_takeover,
            remote_max_window_bits=client_bits or 15,
            local_max_window_bits=server_bits or 15,
            level=self.level,
            mem_level=self.mem_level,
            threshold=self.threshold,
        )
        return (NAME, answer), extension


class ClientPerMessageDeflateFactory:
    """The client's permessage-deflate offer, and its check of the server's answer.

    The parameters mean what they mean for ``ServerPerMessageDeflateFactory``; here
    ``client_max_window_bits=True`` (the default) offers the parameter without a
    value: "ask me for a smaller window if you like". ``server_max_window_bits``
    asks the server for at most that window (8-15).
    """

    def __init__(
        self,
        *,
        server_no_context_takeover: bool = False,
        client_no_context_takeover: bool = False,
        server_max_window_bits: int | None = None,
        client_max_window_bits: int | bool | None = True,
        level: int = 6,
        mem_level: int = 5,
        threshold: int = 128,
    ) -> None:
        if server_max_window_bits is not None and not 8 <= server_max_window_bits <= 15:
            raise ValueError("server_max_window_bits must be between 8 and 15")
        if client_max_window_bits is False:
            client_max_window_bits = None
        if type(client_max_window_bits) is int:
            _check_bits("client_max_window_bits", client_max_window_bits)
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.level = level
        self.mem_level = mem_level
        self.threshold = threshold

    @classmethod
    def from_compression(
        cls, compression: str | ClientPerMessageDeflateFactory | None
    ) -> ClientPerMessageDeflateFactory | None:
        """What a ``compression=`` argument means: "deflate" (defaults), a factory, or None."""
        if compression is None or isinstance(compression, cls):
            return compression
        if compression == "deflate":
            return cls()
        raise ValueError(f"unsupported compression: {compression!r}")

    def offer(self) -> ExtensionHeader:
        """The offer for the Sec-WebSocket-Extensions header of the request."""
        params: list[tuple[str, str | None]] = []
        if self.server_no_context_takeover:
            params.append(("server_no_context_takeover", None))
        if self.client_no_context_takeover:
            params.append(("client_no_context_takeover", None))
        if self.server_max_window_bits is not None:
            params.append(("server_max_window_bits", str(self.server_max_window_bits)))
        if self.client_max_window_bits is True:
            params.append(("client_max_window_bits", None))
        elif self.client_max_window_bits is not None:
            params.append(("client_max_window_bits", str(self.client_max_window_bits)))
        return (NAME, params)

    def accept(self, params: Sequence[tuple[str, str | None]]) -> PerMessageDeflate:
        """Check the server's answer to our offer; raise NegotiationError if we can't accept it.

        A client that can't accept the answer must fail the connection (§5).
        """
        try:
            answer = _Params.parse(params, answer=True)
        except ValueError as exc:
            raise NegotiationError(f"invalid permessage-deflate answer: {exc}") from None
        if self.server_no_context_takeover and not answer.server_no_context_takeover:
            raise NegotiationError("server didn't accept server_no_context_takeover")
        server_bits = answer.server_max_window_bits
        if self.server_max_window_bits is not None:
            if server_bits is None:
                raise NegotiationError("server didn't accept server_max_window_bits")
            if server_bits > self.server_max_window_bits:
                raise NegotiationError(
                    f"server_max_window_bits={server_bits} exceeds the "
                    f"{self.server_max_window_bits} offered"
                )
        client_bits = answer.client_max_window_bits
        offered_client_bits = self.client_max_window_bits
        if client_bits is not None:
            assert isinstance(client_bits, int)
            if offered_client_bits is None:
                raise NegotiationError("server sent client_max_window_bits, which wasn't offered")
            if offered_client_bits is not True and client_bits > offered_client_bits:
                raise NegotiationError(
                    f"client_max_window_bits={client_bits} exceeds the "
                    f"{offered_client_bits} offered"
                )
        elif type(offered_client_bits) is int:
            client_bits = offered_client_bits  # we said we'd use at most this
        return PerMessageDeflate(
            remote_no_context_takeover=answer.server_no_context_takeover,
            local_no_context_takeover=(
                answer.client_no_context_takeover or self.client_no_context_takeover
            ),
            remote_max_window_bits=server_bits or 15,
            local_max_window_bits=client_bits if type(client_bits) is int else 15,
            level=self.level,
            mem_level=self.mem_level,
            threshold=self.threshold,
        )
