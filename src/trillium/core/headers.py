"""HTTP header fields: a case-insensitive, multi-valued mapping, and the header
grammars the WebSocket handshake uses (RFC 6455 §4.3, §9.1).

    >>> h = Headers([("Connection", "keep-alive"), ("connection", "Upgrade")])
    >>> h["CONNECTION"]
    'keep-alive, Upgrade'
    >>> h.get_all("connection")
    ['keep-alive', 'Upgrade']
    >>> parse_tokens(h.get_all("connection"))
    ['keep-alive', 'upgrade']
    >>> parse_extensions(["permessage-deflate; client_max_window_bits, x-foo; a=\\"1\\""])
    [('permessage-deflate', [('client_max_window_bits', None)]), ('x-foo', [('a', '1')])]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping

__all__ = [
    "ExtensionHeader",
    "Headers",
    "parse_extensions",
    "parse_tokens",
    "serialize_extensions",
]

HeadersLike = Mapping[str, str] | Iterable[tuple[str, str]]
ExtensionHeader = tuple[str, list[tuple[str, str | None]]]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_SPACE = re.compile(r"[ \t]*")


class Headers(MutableMapping[str, str]):
    """Header fields in the order received, looked up without regard to case.

    ``h[name]`` joins repeated fields with ", " (RFC 9110 §5.3); ``get_all`` keeps them
    apart; ``h[name] = value`` appends a field, as HTTP allows repeats.

    A server keeps every connection's request and response headers for as long as
    the connection lives, so they are stored compactly: the fields in one flat list
    (name, value, name, value, ...) rather than a tuple each, and the index by
    lowercased name that makes lookups cheap is only built by the first lookup. The
    server drops it (``_drop_index``) once the handshake no longer needs it; a later
    lookup builds it again.
    """

    __slots__ = ("_fields", "_index")

    def __init__(self, items: HeadersLike | None = None) -> None:
        self._fields: list[str] = []
        # lowercased name -> its values in order, or None until a lookup needs it.
        self._index: dict[str, list[str]] | None = None
        if items is not None:
            self.update(items)

    def update(self, items: HeadersLike | None = None, /, **kwargs: str) -> None:  # type: ignore[override]
        """Append every field of ``items`` (a mapping or (name, value) pairs)."""
        if type(items) is list and self._index is None and not kwargs:
            # The common case, a list of pairs (the handshake's own responses), without
            # the Headers and Mapping checks (ABC isinstance calls) or a call per field.
            fields = self._fields
            for name, value in items:
                fields += (name, value)
            return
        if isinstance(items, Headers):
            pairs: Iterable[tuple[str, str]] = items.raw_items()  # keep the original case
        elif isinstance(items, Mapping):
            pairs = items.items()
        else:
            pairs = items or ()
        for name, value in pairs:
            self[name] = value
        for name, value in kwargs.items():
            self[name] = value

    @classmethod
    def _from_fields(cls, fields: list[str]) -> Headers:
        """Headers over ``fields`` (name, value, name, value, ...), taken as they are."""
        headers = cls()
        headers._fields = fields
        return headers

    def _lookup(self) -> dict[str, list[str]]:
        """The index by lowercased name, built now if it isn't yet."""
        index = self._index
        if index is None:
            index = {}
            fields = self._fields
            for i in range(0, len(fields), 2):
                name = fields[i].lower()
                values = index.get(name)
                if values is None:
                    index[name] = [fields[i + 1]]
                else:
                    values.append(fields[i + 1])
            self._index = index
        return index

    def _drop_index(self) -> None:
        """Forget the lookup index, to hold less memory while nobody looks fields up
        (and trim the list of fields to its length: appending over-allocates)."""
        self._index = None
        self._fields = self._fields[:]

    def __getitem__(self, name: str) -> str:
        values = self._lookup().get(name.lower())
        if not values:
            raise KeyError(name)
        return values[0] if len(values) == 1 else ", ".join(values)

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """``h[name]``, or ``default`` when absent (without raising KeyError first)."""
        values = self._lookup().get(name.lower())
        if not values:
            return default
        return values[0] if len(values) == 1 else ", ".join(values)

    def __setitem__(self, name: str, value: str) -> None:
        self._fields += (name, value)
        if self._index is not None:
            self._index.setdefault(name.lower(), []).append(value)

    def __delitem__(self, name: str) -> None:
        lower = name.lower()
        index = self._lookup()
        if lower not in index:
            raise KeyError(name)
        del index[lower]
        fields = self._fields
        self._fields = [
            item
            for i in range(0, len(fields), 2)
            if fields[i].lower() != lower
            for item in (fields[i], fields[i + 1])
        ]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lookup()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._lookup()))

    def __len__(self) -> int:
        return len(self._lookup())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return [(k.lower(), v) for k, v in self.raw_items()] == [
                (k.lower(), v) for k, v in other.raw_items()
            ]
        return NotImplemented

    def __repr__(self) -> str:
        return f"Headers({self.raw_items()!r})"

    def get_all(self, name: str) -> list[str]:
        """Every value of the field ``name``, in order (empty list if absent)."""
        return list(self._lookup().get(name.lower(), ()))

    def raw_items(self) -> list[tuple[str, str]]:
        """The fields as received or added, with their original case and order."""
        fields = self._fields
        return list(zip(fields[::2], fields[1::2], strict=True))

    def copy(self) -> Headers:
        return Headers(self.raw_items())


def parse_tokens(values: Iterable[str]) -> list[str]:
    """Split comma-separated token lists (e.g. Connection, Upgrade), lowercased."""
    tokens = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item:
                tokens.append(item.lower())
    return tokens


def parse_list(values: Iterable[str]) -> list[str]:
    """Split comma-separated lists keeping case (e.g. Sec-WebSocket-Protocol)."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def parse_extensions(values: Iterable[str]) -> list[ExtensionHeader]:
    """Parse Sec-WebSocket-Extensions values (RFC 6455 §9.1) into (name, params).

    Raises ValueError on a malformed header. Quoted parameter values are unquoted.
    """
    result: list[ExtensionHeader] = []
    for value in values:
        pos = 0
        n = len(value)
        while True:
            pos = _SPACE.match(value, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                break
            if value[pos] == ",":
                pos += 1
                continue
            match = _TOKEN.match(value, pos)
            if match is None:
                raise ValueError(f"expected an extension name at {pos} in {value!r}")
            name = match.group()
            pos = _SPACE.match(value, match.end()).end()  # type: ignore[union-attr]
            params: list[tuple[str, str | None]] = []
            while pos < n and value[pos] == ";":
                pos = _SPACE.match(value, pos + 1).end()  # type: ignore[union-attr]
                match = _TOKEN.match(value, pos)
                if match is None:
                    raise ValueError(f"expected a parameter name at {pos} in {value!r}")
                pname = match.group()
                pvalue: str | None = None
                pos = _SPACE.match(value, match.end()).end()  # type: ignore[union-attr]
                if pos < n and value[pos] == "=":
                    pos = _SPACE.match(value, pos + 1).end()  # type: ignore[union-attr]
                    match = _TOKEN.match(value, pos)
                    if match is not None:
                        pvalue = match.group()
                    else:
                        quoted = _QUOTED.match(value, pos)
                        if quoted is None:
                            raise ValueError(f"expected a parameter value at {pos} in {value!r}")
                        pvalue = re.sub(r"\\(.)", r"\1", quoted.group(1))
                        # RFC 6455 §9.1: a quoted value must still be a token once unquoted.
                        if _TOKEN.fullmatch(pvalue) is None:
                            raise ValueError(f"quoted value {pvalue!r} is not a token")
                        match = quoted
                    pos = _SPACE.match(value, match.end()).end()  # type: ignore[union-attr]
                params.append((pname, pvalue))
            result.append((name, params))
            if pos < n and value[pos] != ",":
                raise ValueError(f"unexpected {value[pos]!r} at {pos} in {value!r}")
    return result


def serialize_extensions(extensions: Iterable[ExtensionHeader]) -> str:
    """The inverse of parse_extensions, for one Sec-WebSocket-Extensions header."""
    parts = []
    for name, params in extensions:
        items = [name] + [k if v is None else f"{k}={v}" for k, v in params]
        parts.append("; ".join(items))
    return ", ".join(parts)
