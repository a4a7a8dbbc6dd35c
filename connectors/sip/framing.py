"""SIP framing (RFC 3261 section 18.3): datagrams and byte streams in, typed messages out.

The SIP transports hand this module what they received: `parse_datagram` for UDP, a
`StreamFramer` per TCP connection, which cuts the stream by Content-Length. Parsing checks
what every message needs (start line, Content-Length, Via, From, To, Call-ID and CSeq once,
the CSeq and the top Via) and leaves every other value as text for `message.py` to read.
Malformed input raises `RemoteProtocolError` and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple, TypeAlias

from connectors.sip.errors import RemoteProtocolError
from connectors.sip.grammar import (
    _SIP_VERSION,
    CSeq,
    SipUri,
    _ascii_int,
    _bad,
    _is_scheme_uri,
    _is_token,
    _parse_via,
    _raw_split,
    _short,
)
from connectors.sip.headers import _CANON, _CANON_EXACT, _REQUIRED, _TRACKED, Headers
from connectors.sip.message import SipMessage, SipRequest, SipResponse

__all__ = [
    "KeepAlive",
    "MAX_BODY_BYTES",
    "MAX_HEAD_BYTES",
    "MalformedMessage",
    "StreamEvent",
    "StreamFramer",
    "is_keepalive",
    "parse_datagram",
]

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_BODY_BYTES: Final = 1024 * 1024


# --- parsing ------------------------------------------------------------------------------


class _Head(NamedTuple):
    start: str
    entries: list[tuple[str, str, str]]
    firsts: dict[str, str]
    content_length: int | None
    error: RemoteProtocolError | None


def _unfold(lines: list[str]) -> list[str]:
    # RFC 3261 7.3.1: a line starting with SP/HT continues the previous one; the folding
    # is equivalent to one SP.
    out: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t"):
            if len(out) < 2:
                raise _bad("continuation line before the first header")
            out[-1] = out[-1].rstrip(" \t") + " " + line.strip(" \t")
        else:
            out.append(line)
    return out


def _split_head(head: bytes) -> _Head:
    """Split the start line and header lines; find Content-Length.

    Raises only for what breaks framing (a bad or repeated Content-Length, a bare CR, a
    continuation line before any header); other faults are kept in `error` so that a stream
    can skip the message and carry on.
    """
    text = head.decode("utf-8", "surrogateescape")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        if text[-1:] == "\r":  # "\r\n\n" ended the head
            text = text[:-1]
        if "\r" in text:
            raise _bad("bare CR in the message head")
    lines = text.split("\n")
    if "\n " in text or "\n\t" in text:
        lines = _unfold(lines)
    entries: list[tuple[str, str, str]] = []
    append = entries.append
    firsts: dict[str, str] = {}
    error: RemoteProtocolError | None = None
    canon_get = _CANON.get
    tracked = _TRACKED
    lines_iter = iter(lines)
    start = next(lines_iter)
    exact_get = _CANON_EXACT.get
    for line in lines_iter:
        name, sep, value = line.partition(":")
        if not sep:
            error = error or _bad(f"header line without a colon: {_short(line)}")
            continue
        found = exact_get(name) or canon_get(name.lower())
        if found is None:
            name = name.rstrip(" \t")
            found = canon_get(name.lower())
            if found is None:
                if not _is_token(name):
                    error = error or _bad(f"bad header name {_short(name)}")
                    continue
                found = (name.lower(), name)
        key = found[0]
        value = value.strip(" \t")
        if key in tracked:
            if key not in firsts:
                firsts[key] = value
            elif key == "content-length":
                raise _bad("more than one Content-Length")
            elif key != "via":
                error = error or _bad(f"more than one {found[1]} header")
        append((key, found[1], value))
    content_length = None
    cl = firsts.get("content-length")
    if cl is not None:
        content_length = _ascii_int(cl, 9, "Content-Length")
        normal = str(content_length)
        if normal != cl:  # keep one spelling so a round trip is stable
            entries = [(k, n, normal if k == "content-length" else v) for k, n, v in entries]
    return _Head(start, entries, firsts, content_length, error)


def _check_request_uri(uri: str) -> None:
    if not _is_scheme_uri(uri):
        raise _bad(f"bad Request-URI {_short(uri)}")
    if "?" in uri and uri[:4].lower() in ("sip:", "sips"):
        # RFC 3261 19.1.1 table 1: no URI headers in a Request-URI (RFC 4475 escruri); a ?
        # may also sit in the user part, so only a full parse can tell.
        if SipUri.parse(uri).headers:
            raise _bad("the Request-URI carries URI headers")


_SPACES: Final = re.compile(r"[ \t]+")


def _check_version(version: str) -> None:
    if version != "SIP/2.0" and version.upper() != "SIP/2.0":
        if _SIP_VERSION.fullmatch(version):
            raise _bad(f"unsupported version {_short(version)}", 505)
        raise _bad(f"bad SIP version {_short(version)}")


def _build(h: _Head, body: bytes) -> SipMessage:
    start = h.start
    message: SipMessage
    if start[:4].upper() == "SIP/":
        version, _, rest = start.partition(" ")
        _check_version(version)
        code, _, reason = rest.partition(" ")
        status = _ascii_int(code, 3, "status code")
        if len(code) != 3 or not 100 <= status <= 699:  # RFC 4475 bigcode
            raise _bad(f"bad status code {_short(code)}")
        method = None
        message = SipResponse(status, reason.strip(" \t"), Headers._trusted(h.entries), body)
    else:
        parts = start.split(" ")
        if len(parts) != 3:
            # Liberal about extra SP/HT between and after the elements (RFC 4475 lwsstart,
            # trws); serialization writes single spaces again.
            parts = _SPACES.split(start.strip(" \t"))
            if len(parts) != 3:
                raise _bad(f"bad request line {_short(start)}")
        method, uri, version = parts
        if not _is_token(method):
            raise _bad(f"bad method {_short(method)}")
        _check_version(version)
        _check_request_uri(uri)
        message = SipRequest(method, uri, Headers._trusted(h.entries), body)
    if h.error is not None:
        raise h.error
    firsts = h.firsts
    for name in _REQUIRED:
        if not firsts.get(name):
            raise _bad(f"missing {_CANON[name][1]} header")
    # What the transaction layer needs is checked now and kept; From, To, Contact, the
    # Request-URI's details, ... are parsed when first read.
    cseq = CSeq.parse(firsts["cseq"])
    if method is not None and cseq.method != method:
        raise _bad(f"CSeq method {cseq.method} does not match the request method {method}")
    memo = message.headers._memo
    memo["cseq"] = cseq
    memo["top_via"] = _parse_via(_raw_split(firsts["via"])[0], strict=True)
    call_id = firsts["call-id"]
    if " " in call_id or "\t" in call_id:
        raise _bad(f"bad Call-ID {_short(call_id)}")
    memo["call_id"] = call_id
    return message


def _head_end(data: bytes | bytearray, start: int = 0) -> tuple[int, int]:
    """(index, length) of the blank line ending the head, or (-1, 0)."""
    crlf = data.find(b"\r\n\r\n", start)
    lf = data.find(b"\n\n", start, crlf if crlf >= 0 else len(data))
    if lf >= 0:
        return lf, 2
    if crlf >= 0:
        return crlf, 4
    return -1, 0


def is_keepalive(data: bytes) -> bool:
    """True for a datagram holding only CR/LF (RFC 5626 keep-alives, stray CRLFs)."""
    return not data.strip(b"\r\n")


def parse_datagram(data: bytes) -> SipMessage:
    """Parse one message received as a datagram (RFC 3261 18.3).

    Without Content-Length the body is the rest of the datagram; with it the body is cut to
    that length (extra octets are ignored, RFC 4475 dblreq) and a longer one is an error.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if data[:1] in (b"\r", b"\n"):
        data = data.lstrip(b"\r\n")  # RFC 3261 7.5: ignore CRLFs before the start line
    if not data:
        raise _bad("empty message")
    end, sep = _head_end(data)
    if end < 0:
        raise _bad("message head is not terminated by an empty line")
    h = _split_head(data[:end])
    rest = data[end + sep :]
    if h.content_length is None:
        body = rest
    elif h.content_length > len(rest):
        raise _bad(f"Content-Length {h.content_length} exceeds the {len(rest)} body octets")
    else:
        body = rest[: h.content_length]
    return _build(h, body)


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A double-CRLF ping on a stream (RFC 5626 3.5.1); answer it with one CRLF."""


@dataclass(frozen=True, slots=True)
class MalformedMessage:
    """A message a stream could frame but not parse; the stream itself is still usable."""

    raw: bytes
    error: RemoteProtocolError


StreamEvent: TypeAlias = SipRequest | SipResponse | KeepAlive | MalformedMessage


class StreamFramer:
    """Cuts a byte stream (TCP, TLS) into messages by Content-Length (RFC 3261 18.3).

    `feed()` bytes as they arrive, then iterate (or call `next_event()`) for the complete
    messages. A framing error (no or bad Content-Length, head or body over the limits) raises
    `RemoteProtocolError` and leaves the framer broken: the caller closes the connection.
    """

    __slots__ = ("_buf", "_scanned", "_head", "_head_len", "_broken", "max_head", "max_body")

    def __init__(
        self, *, max_head: int = MAX_HEAD_BYTES, max_body: int = MAX_BODY_BYTES
    ) -> None:
        self._buf = bytearray()
        self._scanned = 0
        self._head: _Head | None = None
        self._head_len = 0
        self._broken: str | None = None
        self.max_head = max_head
        self.max_body = max_body

    @property
    def broken(self) -> bool:
        return self._broken is not None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __iter__(self) -> Iterator[StreamEvent]:
        while (event := self.next_event()) is not None:
            yield event

    def _fail(self, error: RemoteProtocolError) -> RemoteProtocolError:
        self._broken = str(error)
        self._buf.clear()
        return error

    def next_event(self) -> StreamEvent | None:
        """The next complete message (or keep-alive), or None until more bytes arrive."""
        if self._broken is not None:
            raise _bad(f"stream is broken: {self._broken}")
        buf = self._buf
        while self._head is None:
            if buf[:1] in (b"\r", b"\n"):
                if buf[:4] == b"\r\n\r\n":
                    del buf[:4]
                    return KeepAlive()
                if b"\r\n\r\n".startswith(bytes(buf[:4])):
                    return None  # a ping may still be arriving
                del buf[: 2 if buf[:2] == b"\r\n" else 1]  # a pong or stray line end
                continue
            end, sep = _head_end(buf, max(0, self._scanned - 3))
            if end < 0:
                self._scanned = len(buf)
                if len(buf) > self.max_head:
                    raise self._fail(_bad("message head is too large", 513))
                return None
            if end > self.max_head:
                raise self._fail(_bad("message head is too large", 513))
            try:
                head = _split_head(bytes(buf[:end]))
            except RemoteProtocolError as exc:
                raise self._fail(exc) from None
            if head.content_length is None:
                raise self._fail(_bad("Content-Length is required on a stream"))
            if head.content_length > self.max_body:
                raise self._fail(_bad("message body is too large", 513))
            self._head, self._head_len = head, end + sep
            self._scanned = 0
        total = self._head_len + self._head.content_length
        if len(buf) < total:
            return None
        head, self._head = self._head, None
        raw = bytes(buf[:total])
        body = raw[self._head_len :]
        del buf[:total]
        try:
            return _build(head, body)
        except RemoteProtocolError as exc:
            return MalformedMessage(raw, exc)


