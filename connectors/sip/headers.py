"""SIP header fields: names (compact forms, canonical spelling) and `Headers`, the ordered
multi-dict every message carries, with the memo of values parsed from it.

Between the grammar (`grammar.py`: what a value means) and the messages (`message.py`: typed
reads such as `msg.top_via`). A value parsed from a header is kept in `Headers._memo` and is
dropped when that header changes, so a proxy that rewrites one header re-parses only that one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Final

from connectors.sip.errors import LocalProtocolError
from connectors.sip.grammar import _is_token, _short, split_list

if TYPE_CHECKING:
    from connectors.sip.grammar import Via

__all__ = ["Headers"]

# --- names --------------------------------------------------------------------------------

_LONG_NAMES: Final = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity",
    "Identity-Info", "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE",
    "Organization", "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority",
    "Privacy", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
    "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Replaces", "Reply-To",
    "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Server",
    "Service-Route", "Session-Expires", "Subject", "Subscription-State", "Supported",
    "Timestamp", "To", "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
)
# RFC 3261 7.3.3 and the extensions that registered a compact form (IANA "Header Fields").
_COMPACT: Final = {
    "a": "Accept-Contact", "b": "Referred-By", "c": "Content-Type", "d": "Request-Disposition",
    "e": "Content-Encoding", "f": "From", "i": "Call-ID", "j": "Reject-Contact", "k": "Supported",
    "l": "Content-Length", "m": "Contact", "n": "Identity-Info", "o": "Event", "r": "Refer-To",
    "s": "Subject", "t": "To", "u": "Allow-Events", "v": "Via", "x": "Session-Expires",
    "y": "Identity",
}
# lower-case name as written -> (lookup key, canonical long name)
_CANON: Final[dict[str, tuple[str, str]]] = {n.lower(): (n.lower(), n) for n in _LONG_NAMES}
_CANON.update({c: (n.lower(), n) for c, n in _COMPACT.items()})
# the same, keyed by the names exactly as most peers write them: saves a lower() per line
_CANON_EXACT: Final = {n: (n.lower(), n) for n in _LONG_NAMES}

_REQUIRED: Final = ("via", "from", "to", "call-id", "cseq")  # RFC 3261 8.1.1
_SINGLE: Final = frozenset({"from", "to", "call-id", "cseq", "content-length", "max-forwards"})
_TRACKED: Final = _SINGLE | {"via"}


# --- headers ------------------------------------------------------------------------------


def _key_and_name(name: str) -> tuple[str, str]:
    found = _CANON.get(name.lower())
    if found is not None:
        return found
    if not _is_token(name):
        raise LocalProtocolError(f"header name is not a token: {_short(name)}")
    return name.lower(), name


def _key(name: str) -> str:
    found = _CANON_EXACT.get(name) or _CANON.get(name.lower())
    return found[0] if found is not None else name.lower()


# Every entry of Headers._memo, by the header it is parsed from: a change to that header
# drops them. _Message._memo takes no other key.
_MEMO_SOURCE: Final = {
    "cseq": "cseq", "top_via": "via", "vias": "via", "from": "from", "to": "to",
    "call_id": "call-id", "Contact": "contact", "Route": "route", "Record-Route": "record-route",
}
_MEMO_OF: Final = {
    source: tuple(m for m, s in _MEMO_SOURCE.items() if s == source)
    for source in _MEMO_SOURCE.values()
}


def _clean_value(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise LocalProtocolError(f"header value holds CR or LF: {_short(value)}")
    return value.strip(" \t")


class Headers:
    """Ordered multi-dict of header fields; names are case-insensitive, compact forms map to
    the long ones (`v` is `Via`). Values are text as received, without folding."""

    __slots__ = ("_entries", "_memo")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._entries: list[tuple[str, str, str]] = []
        # Parsed values (top Via, CSeq, From, ...) computed once per text; a change to a
        # header drops the values parsed from it (each is parsed from one header only).
        self._memo: dict[str, object] = {}
        for name, value in items:
            self.add(name, value)

    @classmethod
    def _trusted(cls, entries: list[tuple[str, str, str]]) -> Headers:
        h = cls.__new__(cls)
        h._entries = entries
        h._memo = {}
        return h

    def _changed(self, key: str) -> None:
        memo = self._memo
        if memo:
            for stale in _MEMO_OF.get(key, ()):
                memo.pop(stale, None)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default`."""
        key = _key(name)
        for k, _, v in self._entries:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`, one per header line, in order."""
        key = _key(name)
        return [v for k, _, v in self._entries if k == key]

    def get_list(self, name: str) -> list[str]:
        """Every comma-separated element of every `name` line (see `split_list`)."""
        return [e for v in self.get_all(name) for e in split_list(v)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def set(self, name: str, value: str) -> None:
        """Replace every `name` line by one, kept where the first one was."""
        key, canon = _key_and_name(name)
        entry = (key, canon, _clean_value(value))
        out: list[tuple[str, str, str]] = []
        placed = False
        for e in self._entries:
            if e[0] == key:
                if not placed:
                    out.append(entry)
                    placed = True
            else:
                out.append(e)
        if not placed:
            out.append(entry)
        self._entries = out
        self._changed(key)

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Append a `name` line; with first=True put it above the existing ones (a proxy's
        Via or Record-Route), or at the top when there are none."""
        key, canon = _key_and_name(name)
        entry = (key, canon, _clean_value(value))
        if first:
            idx = next((i for i, e in enumerate(self._entries) if e[0] == key), 0)
            self._entries.insert(idx, entry)
        else:
            self._entries.append(entry)
        self._changed(key)

    def remove(self, name: str) -> int:
        """Drop every `name` line; returns how many were dropped."""
        key = _key(name)
        before = len(self._entries)
        self._entries = [e for e in self._entries if e[0] != key]
        self._changed(key)
        return before - len(self._entries)

    def remove_all(self, keys: frozenset[str]) -> None:
        """Drop every line whose lower-case name is in `keys`, in one pass (a proxy's list of
        headers it never forwards)."""
        entries = self._entries
        kept = [e for e in entries if e[0] not in keys]
        if len(kept) != len(entries):
            for key in {e[0] for e in entries if e[0] in keys}:
                self._changed(key)
            self._entries = kept

    def add_top_via(self, via: Via) -> None:
        """Put `via` above the other Via lines (a proxy's own, RFC 3261 16.6 step 8) and
        keep it as the parsed top Via, which it is: no need to parse our own text again."""
        self.add("Via", str(via), first=True)
        self._memo["top_via"] = via

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first comma-separated element of `name` (the top Via a
        proxy strips from a response), rewriting a line that held several."""
        key = _key(name)
        for i, (k, n, v) in enumerate(self._entries):
            if k == key:
                self._changed(key)
                elements = split_list(v)
                if len(elements) <= 1:
                    del self._entries[i]
                    return elements[0] if elements else None
                self._entries[i] = (k, n, ", ".join(elements[1:]))
                return elements[0]
        return None

    def items(self) -> list[tuple[str, str]]:
        return [(n, v) for _, n, v in self._entries]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._entries] == [(k, v) for k, _, v in other._entries]

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> Headers:
        # Without the parsed values: a copy is mostly forwarded, and the next hop's message
        # reads none of them but the top Via, which the proxy replaces (add_top_via). Keeping
        # them cost ~0.5 KB per live call for nothing.
        return Headers._trusted(list(self._entries))

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"


