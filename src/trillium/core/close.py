"""Close codes and the close frame payload (RFC 6455 §5.5.1, §7.1.5, §7.4).

A close frame's payload is either empty or a 2-byte code in network order followed
by a UTF-8 reason. Only some codes may appear on the wire: 1005 ("no status
received"), 1006 ("abnormal closure") and 1015 ("TLS failure") are reserved for
reporting locally and are never sent.

    >>> Close(1000, "bye").serialize()
    b'\\x03\\xe8bye'
    >>> Close.parse(b"\\x03\\xe9")
    Close(code=1001, reason='')
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..exceptions import InvalidUTF8, ProtocolError

__all__ = ["Close", "CloseCode", "is_valid_wire_code"]


class CloseCode(enum.IntEnum):
    """Close codes registered by RFC 6455 §7.4.1 and in the IANA registry."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never on the wire
    ABNORMAL_CLOSURE = 1006  # never on the wire
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never on the wire


# Codes in 1000-2999 that an endpoint may put in a close frame. 1004 is reserved,
# 1005/1006/1015 are for local reporting only; 1016-2999 are unassigned.
_WIRE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

#: Longest reason that fits: control frame payloads are at most 125 bytes, minus the code.
MAX_REASON_BYTES = 123


def is_valid_wire_code(code: int) -> bool:
    """Whether ``code`` may be sent or received in a close frame.

    3000-3999 are registered with IANA for libraries and frameworks, 4000-4999 are for
    private use by applications; both are valid on the wire.
    """
    return code in _WIRE_CODES or 3000 <= code <= 4999


@dataclass(frozen=True, slots=True)
class Close:
    """The content of a close frame: a code and a (possibly empty) reason."""

    code: int
    reason: str = ""

    def __str__(self) -> str:
        try:
            label = CloseCode(self.code).name.lower().replace("_", " ")
        except ValueError:
            label = "private use" if 4000 <= self.code <= 4999 else "registered"
        text = f"{self.code} ({label})"
        return f"{text} {self.reason}" if self.reason else text

    @classmethod
    def parse(cls, payload: bytes) -> Close:
        """Read a close frame payload; raise ProtocolError (1002) or InvalidUTF8 (1007).

        An empty payload means the peer gave no code: it is reported as 1005.
        """
        if not payload:
            return cls(CloseCode.NO_STATUS_RCVD)
        if len(payload) == 1:
            raise ProtocolError("close frame payload of 1 byte: the code needs 2")
        code = int.from_bytes(payload[:2], "big")
        if not is_valid_wire_code(code):
            raise ProtocolError(f"invalid close code {code}")
        try:
            reason = bytes(payload[2:]).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidUTF8(f"close reason is not valid UTF-8: {exc.reason}") from None
        return cls(code, reason)

    def serialize(self) -> bytes:
        """The close frame payload; raise ValueError for codes or reasons that can't be sent.

        Code 1005 with no reason stands for "send a close frame with no payload".
        """
        if self.code == CloseCode.NO_STATUS_RCVD and not self.reason:
            return b""
        if not is_valid_wire_code(self.code):
            raise ValueError(f"close code {self.code} can't be sent in a close frame")
        reason = self.reason.encode("utf-8")
        if len(reason) > MAX_REASON_BYTES:
            raise ValueError(
                f"close reason is {len(reason)} bytes in UTF-8; at most {MAX_REASON_BYTES} fit"
            )
        return self.code.to_bytes(2, "big") + reason
