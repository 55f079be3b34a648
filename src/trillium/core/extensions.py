"""The interface a negotiated extension (such as permessage-deflate) implements.

An extension sees every data frame on its way in (after parsing, before message
assembly) and on its way out (before serialization). It claims RSV bits: frames with
other RSV bits set fail the connection. Control frames never pass through extensions.
"""

from __future__ import annotations

import abc

from .frames import Frame

__all__ = ["Extension"]


class Extension(abc.ABC):
    """A negotiated WebSocket extension, active for the life of one connection."""

    #: The extension's registered name, as it appears in Sec-WebSocket-Extensions.
    name: str
    #: The RSV bits (as they sit in the frame's first byte) this extension may set.
    rsv_bits: int = 0

    @abc.abstractmethod
    def decode(self, frame: Frame, *, max_size: int | None) -> Frame:
        """Transform a received data frame; never produce more than ``max_size`` bytes."""

    @abc.abstractmethod
    def encode(self, frame: Frame) -> Frame:
        """Transform a data frame about to be sent."""
