"""SIP messages (RFC 3261 section 7): `SipRequest`, `SipResponse` and their serialization.

The typed objects the transaction layer, the registrar and the proxy read and build. Every
value beyond the start line stays header text until read (`msg.to_addr`, `msg.contacts`,
`msg.request_uri`, ...); a typed read is parsed once (`grammar.py`) and kept in the headers'
memo (`headers.py`). Bytes become messages in `framing.py`; answers are built in `answers.py`.
Text is UTF-8 with `surrogateescape`, so any octet survives a parse/serialize round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeAlias, TypeVar

from connectors.sip.errors import LocalProtocolError
from connectors.sip.grammar import (
    CSeq,
    NameAddr,
    SipUri,
    Via,
    _ascii_int,
    _bad,
    _is_scheme_uri,
    _is_token,
    _name_addr,
    _raw_split,
    _short,
)
from connectors.sip.headers import _MEMO_SOURCE, Headers

__all__ = ["SipMessage", "SipRequest", "SipResponse", "serialize"]

# --- messages -----------------------------------------------------------------------------


_T = TypeVar("_T")


class _Message:
    """Accessors shared by requests and responses. Each parses its header on first use and
    keeps the result with the headers (dropped when they change); malformed values raise
    RemoteProtocolError."""

    __slots__ = ()
    headers: Headers
    body: bytes

    def _memo(self, key: str, build: Callable[[], _T]) -> _T:
        memo = self.headers._memo
        try:
            return memo[key]  # type: ignore[return-value]
        except KeyError:
            if key not in _MEMO_SOURCE:  # it would outlive a change to its header
                raise LocalProtocolError(f"no header known for memo entry {key!r}") from None
            value = memo[key] = build()
            return value

    def _required(self, name: str) -> str:
        v = self.headers.get(name)
        if v is None:
            raise _bad(f"missing {name} header")
        return v

    @property
    def call_id(self) -> str:
        return self._memo("call_id", lambda: self._required("Call-ID"))

    @property
    def cseq(self) -> CSeq:
        return self._memo("cseq", lambda: CSeq.parse(self._required("CSeq")))

    @property
    def top_via(self) -> Via:
        return self._memo("top_via", lambda: Via.parse(_raw_split(self._required("Via"))[0]))

    @property
    def vias(self) -> tuple[Via, ...]:
        return self._memo("vias", self._parse_vias)

    def _parse_vias(self) -> tuple[Via, ...]:
        out = []
        for line in self.headers.get_all("Via"):
            for element in _raw_split(line):
                if not element:
                    raise _bad(f"empty element in Via {_short(line)}")
                out.append(Via.parse(element))
        if not out:
            raise _bad("missing Via header")
        return tuple(out)

    @property
    def from_addr(self) -> NameAddr:
        return self._memo("from", lambda: _name_addr(self._required("From")))

    @property
    def to_addr(self) -> NameAddr:
        return self._memo("to", lambda: _name_addr(self._required("To")))

    def _addresses(self, name: str) -> tuple[NameAddr, ...]:
        return self._memo(
            name, lambda: tuple(_name_addr(e) for e in self.headers.get_list(name))
        )

    @property
    def contacts(self) -> tuple[NameAddr, ...]:
        return self._addresses("Contact")

    @property
    def routes(self) -> tuple[NameAddr, ...]:
        return self._addresses("Route")

    @property
    def record_routes(self) -> tuple[NameAddr, ...]:
        return self._addresses("Record-Route")

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0-255), or None when absent (RFC 2543 peers omit it)."""
        v = self.headers.get("Max-Forwards")
        if v is None:
            return None
        n = _ascii_int(v, 3, "Max-Forwards")
        if n > 255:
            raise _bad(f"Max-Forwards {n} is above 255")
        return n

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    def to_bytes(self) -> bytes:
        return serialize(self)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SipRequest(_Message):
    """A request: method, Request-URI text, headers and body (RFC 3261 7.1)."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def request_uri(self) -> SipUri:
        """The Request-URI parsed; RemoteProtocolError (416) when it is not sip:/sips:."""
        return SipUri.parse(self.uri)


@dataclass(frozen=True, slots=True)
class SipResponse(_Message):
    """A response: status code, reason phrase, headers and body (RFC 3261 7.2)."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""


SipMessage: TypeAlias = SipRequest | SipResponse


# --- serialization ------------------------------------------------------------------------


def serialize(message: SipMessage) -> bytes:
    """Bytes for the wire: CRLF line ends, one header per line, Content-Length recomputed."""
    if isinstance(message, SipRequest):
        if not _is_token(message.method):
            raise LocalProtocolError(f"method is not a token: {_short(message.method)}")
        if not _is_scheme_uri(message.uri):
            raise LocalProtocolError(f"bad Request-URI {_short(message.uri)}")
        lines = [f"{message.method} {message.uri} SIP/2.0"]
    else:
        if not 100 <= message.status <= 699:
            raise LocalProtocolError(f"status {message.status} is outside 100-699")
        if "\r" in message.reason or "\n" in message.reason:
            raise LocalProtocolError("reason phrase holds CR or LF")
        lines = [f"SIP/2.0 {message.status} {message.reason}"]
    body = message.body
    length_written = False
    for key, name, value in message.headers._entries:
        if key == "content-length":
            if length_written:
                continue
            value = str(len(body))
            length_written = True
        lines.append(f"{name}: {value}")
    if not length_written:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("\r\n")
    try:
        return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"message text cannot be encoded: {exc}") from None


