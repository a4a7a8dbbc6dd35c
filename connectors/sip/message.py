"""SIP message syntax (RFC 3261 sections 7, 18.3, 19, 20, 25): bytes in, typed messages out.

Sits under the SIP edge: the UDP/TCP transports hand it datagrams or stream bytes, the
transaction layer and the UA core read its typed objects and hand them back for sending.
Pure and socket-free, so it is fuzzed, benchmarked and reused by tests as it is.

Design notes:
- Parsing checks what every message needs: the start line, Content-Length, that Via, From,
  To, Call-ID and CSeq are there (once), the CSeq and the top Via. Every other value stays
  text until read (`msg.to_addr`, `msg.contacts`, `msg.request_uri`, ...); a typed read is
  parsed once and kept with the headers, and raises RemoteProtocolError when malformed.
- Text is decoded as UTF-8 with `surrogateescape`, so any octet survives a parse/serialize
  round trip unchanged; header values never contain CR or LF (folding is undone at parse).
- Malformed input raises `RemoteProtocolError` and nothing else; building something that
  cannot be serialized raises `LocalProtocolError`.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeAlias, TypeVar
from urllib.parse import unquote

from connectors.sip.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CSeq",
    "Headers",
    "KeepAlive",
    "MAGIC_COOKIE",
    "MalformedMessage",
    "NameAddr",
    "Params",
    "SipMessage",
    "SipRequest",
    "SipResponse",
    "SipUri",
    "StreamEvent",
    "StreamFramer",
    "Via",
    "error_response_for",
    "is_keepalive",
    "make_response",
    "new_branch",
    "new_tag",
    "parse_datagram",
    "reason_phrase",
    "salvage_request",
    "serialize",
    "split_list",
    "unescape",
]

MAGIC_COOKIE: Final = "z9hG4bK"
"""RFC 3261 8.1.1.7: a branch starting with this was built by an RFC 3261 element."""

Params: TypeAlias = tuple[tuple[str, str | None], ...]
"""`;name=value` parameters in order as written; value None for `;lr`, quoted values keep quotes."""

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_BODY_BYTES: Final = 1024 * 1024
_MAX_CSEQ: Final = 2**32 - 1  # RFC 3261 8.1.1.5: a 32-bit unsigned integer

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

_REASONS: Final = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated", 200: "OK", 202: "Accepted",
    204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 412: "Conditional Request Failed",
    413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    428: "Use Identity Header", 429: "Provide Referrer Identity", 433: "Anonymity Disallowed",
    436: "Bad Identity-Info", 437: "Unsupported Certificate", 438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event",
    491: "Request Pending", 493: "Undecipherable", 494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 580: "Precondition Failure", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
    607: "Unwanted", 608: "Rejected",
}


def reason_phrase(status: int) -> str:
    """The RFC's reason phrase for `status`, or a generic one for its class."""
    return _REASONS.get(status) or _REASONS.get(status // 100 * 100, "Unknown")


# --- lexical helpers ----------------------------------------------------------------------

_TOKEN_CHARS: Final = r"A-Za-z0-9\-.!%*_+`'~"
_is_token = re.compile(rf"[{_TOKEN_CHARS}]+").fullmatch
# gen-value = token / host / quoted-string. The bare-IPv6 branch (received=2001:db8::1) comes
# first and needs a colon, so an unanchored findall cannot stop a value at its first colon.
_PLAIN_VALUE: Final = rf"[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*|\[[0-9A-Fa-f:.]+\]|[{_TOKEN_CHARS}]+"
_is_pvalue = re.compile(_PLAIN_VALUE).fullmatch
_QUOTED: Final = re.compile(r'"((?:[^"\\]|\\[\s\S])*)"')
_PARAM: Final = re.compile(
    rf'[ \t]*;[ \t]*([{_TOKEN_CHARS}]+)'
    rf'(?:[ \t]*=[ \t]*({_PLAIN_VALUE}|"(?:[^"\\]|\\[\s\S])*"))?[ \t]*'
)
_are_plain_params = re.compile(
    rf"(?:[ \t]*;[ \t]*[{_TOKEN_CHARS}]+(?:[ \t]*=[ \t]*(?:{_PLAIN_VALUE}))?)*[ \t]*"
).fullmatch
_plain_param_items = re.compile(
    rf";[ \t]*([{_TOKEN_CHARS}]+)(?:[ \t]*=[ \t]*({_PLAIN_VALUE}))?"
).findall
_is_scheme_uri = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:[^\s<>\"]+").fullmatch
# unquoted display-name: tokens separated by LWS; non-ASCII allowed as a liberal extension
_is_display_words = re.compile(
    rf"[{_TOKEN_CHARS}\x80-\U0010ffff]+(?:[ \t]+[{_TOKEN_CHARS}\x80-\U0010ffff]+)*"
).fullmatch
_UNPAIR: Final = re.compile(r"\\([\s\S])")
_NEEDS_PAIR: Final = re.compile(r'[\\"\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')


def _bad(message: str, status_hint: int = 400) -> RemoteProtocolError:
    return RemoteProtocolError(message, status_hint)


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _ascii_int(text: str, max_digits: int, what: str) -> int:
    # str.isdigit() accepts non-ASCII digits and int() would take them: check both. Leading
    # zeros are fine (RFC 4475 wsinv); the length limit keeps int() cheap.
    if not (text.isascii() and text.isdigit()):
        raise _bad(f"{what} is not a number: {_short(text)}")
    digits = text.lstrip("0") or "0"
    if len(digits) > max_digits:
        raise _bad(f"{what} is too large: {_short(text)}")
    return int(digits)


def unescape(text: str) -> str:
    """Undo %HH escapes once (RFC 3261 19.1.2, never recursively: %2541 is "%41")."""
    return unquote(text, errors="surrogateescape") if "%" in text else text


def _quote(text: str) -> str:
    if "\r" in text or "\n" in text:
        raise LocalProtocolError(f"a quoted string cannot hold CR or LF: {_short(text)}")
    return '"' + _NEEDS_PAIR.sub(r"\\\g<0>", text) + '"'


def _unquote_pairs(text: str) -> str:
    return _UNPAIR.sub(r"\1", text) if "\\" in text else text


def _parse_params(text: str, what: str) -> Params:
    """Parse `;a=b;c` (with SWS anywhere RFC 3261 allows it) into Params."""
    if not text or text.isspace():
        return ()
    if '"' not in text:
        if not _are_plain_params(text):
            raise _bad(f"bad parameters {_short(text)} in {what}")
        return tuple([(n, v or None) for n, v in _plain_param_items(text)])
    out: list[tuple[str, str | None]] = []
    pos, end = 0, len(text)
    while pos < end:
        m = _PARAM.match(text, pos)
        if m is None or m.end() == pos:
            raise _bad(f"bad parameters {_short(text[pos:])} in {what}")
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    return tuple(out)


def _render_params(params: Params) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def _find_param(params: Params, name: str) -> tuple[bool, str | None]:
    lname = name.lower()
    for n, v in params:
        if n.lower() == lname:
            return True, v
    return False, None


def _param_value(params: Params, name: str) -> str | None:
    """Value of the first `name` parameter, unquoted; None when absent or valueless."""
    _, v = _find_param(params, name)
    if v is not None and v[:1] == '"':
        return _unquote_pairs(v[1:-1])
    return v


def _with_param(params: Params, name: str, value: str | None) -> Params:
    lname = name.lower()
    if value is not None and not _is_pvalue(value):
        value = _quote(value)
    out = [(n, v) for n, v in params if n.lower() != lname]
    if len(out) == len(params):
        return (*params, (name, value))
    # keep the position of the first occurrence
    idx = next(i for i, (n, _) in enumerate(params) if n.lower() == lname)
    out.insert(idx, (name, value))
    return tuple(out)


def _raw_split(value: str) -> list[str]:
    """Split at commas outside quotes and <...>; keeps empty elements (stripped)."""
    if "," not in value:
        return [value.strip(" \t")]
    if '"' not in value and "<" not in value:
        return [p.strip(" \t") for p in value.split(",")]
    out: list[str] = []
    start = i = 0
    n = len(value)
    in_quote = in_angle = False
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            out.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    out.append(value[start:].strip(" \t"))
    return out


def split_list(value: str) -> list[str]:
    """Elements of a comma-separated header value (Via, Contact, Route, Allow, ...).

    Commas inside quoted strings and <...> do not split; empty elements are dropped.
    """
    return [p for p in _raw_split(value) if p]


def new_tag() -> str:
    """A fresh From/To tag (RFC 3261 19.3: at least 32 bits of randomness)."""
    return secrets.token_hex(6)


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 64 random bits."""
    return MAGIC_COOKIE + secrets.token_hex(8)


# --- URIs ---------------------------------------------------------------------------------

_UNRESERVED: Final = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED: Final = r"%[0-9A-Fa-f]{2}"
_is_uri_user = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED})+").fullmatch
_is_uri_password = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*").fullmatch
_is_host = re.compile(
    r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-_.]*[A-Za-z0-9\-_])?\.?"
).fullmatch
_is_uri_pchars = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+").fullmatch
_is_uri_hchars = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})*").fullmatch


def _parse_port(text: str, what: str) -> int:
    port = _ascii_int(text, 5, f"port of {what}")
    if port > 65535:
        raise _bad(f"port {port} of {what} is out of range")
    return port


@dataclass(frozen=True, slots=True, kw_only=True)
class SipUri:
    """A sip: or sips: URI (RFC 3261 19.1). Components are kept escaped, as written."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str
    port: int | None = None
    params: Params = ()
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> SipUri:
        scheme, colon, rest = text.partition(":")
        lscheme = scheme.lower()
        if not colon or lscheme not in ("sip", "sips"):
            raise _bad(f"not a sip: or sips: URI: {_short(text)}", 416)
        user = password = None
        at = rest.find("@")
        if at >= 0:
            userinfo, hostpart = rest[:at], rest[at + 1 :]
            user, colon, pw = userinfo.partition(":")
            if not _is_uri_user(user):
                raise _bad(f"bad user part in URI {_short(text)}")
            if colon:
                if not _is_uri_password(pw):
                    raise _bad(f"bad password in URI {_short(text)}")
                password = pw
        else:
            hostpart = rest
        headers: tuple[tuple[str, str], ...] = ()
        q = hostpart.find("?")
        if q >= 0:
            headers = _parse_uri_headers(hostpart[q + 1 :], text)
            hostpart = hostpart[:q]
        params: Params = ()
        semi = hostpart.find(";")
        if semi >= 0:
            params = _parse_uri_params(hostpart[semi + 1 :], text)
            hostpart = hostpart[:semi]
        port: int | None = None
        if hostpart[:1] == "[":
            close = hostpart.find("]")
            host, after = hostpart[: close + 1], hostpart[close + 1 :]
            if close < 0 or (after and after[:1] != ":"):
                raise _bad(f"bad IPv6 host in URI {_short(text)}")
            if after:
                port = _parse_port(after[1:], "URI")
        else:
            host, colon, port_text = hostpart.partition(":")
            if colon:
                port = _parse_port(port_text, "URI")
        if not _is_host(host):
            raise _bad(f"bad host in URI {_short(text)}")
        return cls(
            scheme=lscheme, user=user, password=password, host=host, port=port,
            params=params, headers=headers,
        )

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += (":", self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(_render_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{n}={v}" for n, v in self.headers))
        return "".join(out)

    def param(self, name: str) -> str | None:
        return _param_value(self.params, name)

    def has_param(self, name: str) -> bool:
        return _find_param(self.params, name)[0]

    @property
    def transport(self) -> str | None:
        t = self.param("transport")
        return t.lower() if t else None

    @property
    def lr(self) -> bool:
        return self.has_param("lr")

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def _parse_uri_params(text: str, uri: str) -> Params:
    out: list[tuple[str, str | None]] = []
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if not _is_uri_pchars(name) or (eq and not _is_uri_pchars(value)):
            raise _bad(f"bad parameter {_short(part)} in URI {_short(uri)}")
        out.append((name, value if eq else None))
    return tuple(out)


def _parse_uri_headers(text: str, uri: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in text.split("&"):
        name, eq, value = part.partition("=")
        if not eq or not name or not _is_uri_hchars(name) or not _is_uri_hchars(value):
            raise _bad(f"bad header {_short(part)} in URI {_short(uri)}")
        out.append((name, value))
    return tuple(out)


# --- structured header values -------------------------------------------------------------

_VIA_HEAD: Final = re.compile(
    rf"[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)"
    r"[ \t]+(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-_.]+)(?:[ \t]*:[ \t]*([0-9]+))?"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Via:
    """One Via value (RFC 3261 20.42, RFC 3581 rport): sent-protocol, sent-by and params."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()

    @classmethod
    def parse(cls, value: str) -> Via:
        return _parse_via(value, strict=True)

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{_render_params(self.params)}"

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def param(self, name: str) -> str | None:
        return _param_value(self.params, name)

    def has_param(self, name: str) -> bool:
        return _find_param(self.params, name)[0]

    def with_param(self, name: str, value: str | None = None) -> Via:
        """A copy with `name` set (replacing an existing one in place), e.g. received/rport."""
        return Via(
            transport=self.transport, host=self.host, port=self.port,
            params=_with_param(self.params, name, value),
        )

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def rport(self) -> int | None:
        """The port filled in by the server (RFC 3581); None when absent or still empty."""
        v = self.param("rport")
        if v is None:
            return None
        return _parse_port(v, "Via rport")

    @property
    def wants_rport(self) -> bool:
        """True when the client asked for rport (RFC 3581 section 4), with or without a value."""
        return self.has_param("rport")


def _parse_via(value: str, *, strict: bool) -> Via:
    m = _VIA_HEAD.match(value)
    if m is None:
        raise _bad(f"bad Via {_short(value)}")
    name, version, transport, host, port = m.groups()
    if name.upper() != "SIP" or (
        version != "2.0" if strict else not _SIP_VERSION.fullmatch("SIP/" + version)
    ):
        raise _bad(f"unsupported protocol {name}/{version} in Via")
    if not _is_host(host):
        raise _bad(f"bad sent-by host in Via {_short(value)}")
    return Via(
        transport=transport.upper(),
        host=host,
        port=None if port is None else _parse_port(port, "Via"),
        params=_parse_params(value[m.end() :], "Via"),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class NameAddr:
    """A From/To/Contact/Route value: optional display name, URI text and header params.

    `uri` is kept as text because it may use any scheme (tel:, urn:, ...); `sip_uri()` parses
    it when it is sip:/sips:. The Contact wildcard `*` is a NameAddr with uri "*".
    """

    uri: str
    display: str | None = None
    params: Params = ()

    @classmethod
    def parse(cls, value: str) -> NameAddr:
        v = value.strip(" \t")
        if not v:
            raise _bad("empty address")
        if v == "*":
            return cls(uri="*")
        display: str | None = None
        first = v[0]
        if first == '"':
            m = _QUOTED.match(v)
            if m is None:
                raise _bad(f"unterminated quoted display name in {_short(v)}")
            display = _unquote_pairs(m.group(1))
            rest = v[m.end() :].lstrip(" \t")
            if rest[:1] != "<":
                raise _bad(f"a quoted display name must be followed by <URI>: {_short(v)}")
            uri, params_text = _angle_uri(rest, v)
        elif first == "<":
            uri, params_text = _angle_uri(v, v)
        else:
            lt = v.find("<")
            semi = v.find(";")
            if lt > 0 and (semi < 0 or lt < semi):
                display = v[:lt].rstrip(" \t")
                if not _is_display_words(display):
                    raise _bad(f"display name needs quotes: {_short(display)}")
                uri, params_text = _angle_uri(v[lt:], v)
            else:
                # addr-spec: RFC 3261 20.10 -- a URI with ; , or ? must be in <>, so the first
                # semicolon starts the header parameters.
                if semi >= 0:
                    uri, params_text = v[:semi].rstrip(" \t"), v[semi:]
                else:
                    uri, params_text = v, ""
                if "?" in uri or "," in uri or not _is_scheme_uri(uri):
                    raise _bad(f"bad address {_short(v)} (URIs with ? or , need <>)")
        return cls(uri=uri, display=display, params=_parse_params(params_text, "address"))

    def __str__(self) -> str:
        if self.uri == "*":
            return "*"
        head = f"<{self.uri}>" if self.display is None else f"{_quote(self.display)} <{self.uri}>"
        return head + _render_params(self.params)

    def param(self, name: str) -> str | None:
        return _param_value(self.params, name)

    def has_param(self, name: str) -> bool:
        return _find_param(self.params, name)[0]

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        return NameAddr(
            uri=self.uri, display=self.display, params=_with_param(self.params, name, value)
        )

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_tag(self, tag: str) -> NameAddr:
        return self.with_param("tag", tag)

    def sip_uri(self) -> SipUri:
        return SipUri.parse(self.uri)


def _angle_uri(text: str, whole: str) -> tuple[str, str]:
    gt = text.find(">")
    if gt < 0:
        raise _bad(f"missing > in {_short(whole)}")
    uri = text[1:gt]
    if not _is_scheme_uri(uri):
        raise _bad(f"bad URI <{_short(uri)}> (no spaces allowed inside <>)")
    return uri, text[gt + 1 :]


@dataclass(frozen=True, slots=True)
class CSeq:
    """CSeq (RFC 3261 20.16): a 32-bit sequence number and the request method."""

    number: int
    method: str

    @classmethod
    def parse(cls, value: str) -> CSeq:
        parts = value.split()
        if len(parts) != 2:
            raise _bad(f"bad CSeq {_short(value)}")
        number = _ascii_int(parts[0], 10, "CSeq number")
        if number > _MAX_CSEQ or not _is_token(parts[1]):
            raise _bad(f"bad CSeq {_short(value)}")
        return cls(number, parts[1])

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


@functools.lru_cache(maxsize=1024)
def _name_addr(value: str) -> NameAddr:
    """NameAddr.parse, remembered for the last texts seen: a call's From, To and Route come
    back unchanged in each of its messages. A NameAddr is immutable, so sharing is safe; a
    malformed value raises every time (exceptions are not cached)."""
    return NameAddr.parse(value)


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
_SIP_VERSION: Final = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)


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


# --- answering ----------------------------------------------------------------------------


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipResponse:
    """A response to `request` per RFC 3261 8.2.6: Via (all, in order), From, To, Call-ID and
    CSeq copied; a To tag added when the request's To has none (`to_tag`, or a fresh one;
    a 100 Trying gets no tag unless given). Record-Route and Contact are the caller's
    business (`extra_headers`)."""
    h = request.headers
    to = h.get("To")
    if to is None:
        raise LocalProtocolError("cannot answer a request without To")
    if status > 100 or to_tag is not None:
        try:
            has_tag = _name_addr(to).has_param("tag")
        except RemoteProtocolError:
            has_tag = True  # unparseable: copy it untouched rather than make it worse
        if not has_tag:
            # appending keeps the peer's text; valid for both name-addr and addr-spec forms
            to = f"{to};tag={to_tag or new_tag()}"
    entries = [e for e in h._entries if e[0] == "via"]
    for key, name in (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq")):
        value = to if key == "to" else h.get(name)
        if value is not None:
            entries.append((key, name, value))
    if status == 100 and (ts := h.get("Timestamp")) is not None:
        entries.append(("timestamp", "Timestamp", ts))  # RFC 3261 8.2.6.1
    response = SipResponse(
        status, reason if reason is not None else reason_phrase(status), Headers._trusted(entries),
        body,
    )
    for name, value in extra_headers:
        response.headers.add(name, value)
    return response


def salvage_request(data: bytes) -> SipRequest | None:
    """From a request that failed to parse, the part needed to answer it, or None.

    Answering needs a request line that is not ACK, a parseable top Via (where the answer
    goes), a parseable CSeq (what it matches), and From, To and Call-ID to copy; otherwise
    the transport should drop the message (and never answer a response).
    """
    try:
        data = bytes(data).lstrip(b"\r\n")
        end, _ = _head_end(data)
        head = data if end < 0 else data[:end]
        text = head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        if "\n " in text or "\n\t" in text:
            lines = _unfold(lines)
        parts = lines[0].split()
        if len(parts) < 2 or not _is_token(parts[0]) or parts[0] == "ACK":
            return None
        values: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            key = _key(name.strip(" \t"))
            if sep and key in _TRACKED:
                values.setdefault(key, []).append(value.strip(" \t"))
        for name in _REQUIRED:
            if not values.get(name) or not values[name][0]:
                return None
        if " " in values["call-id"][0] or "\t" in values["call-id"][0]:
            return None
        # a SIP/7.0 request has a SIP/7.0 Via; it still gets its 505
        other_version = len(parts) > 2 and parts[-1].upper() != "SIP/2.0"
        _parse_via(_raw_split(values["via"][0])[0], strict=not other_version)
        CSeq.parse(values["cseq"][0])
    except RemoteProtocolError:
        return None
    entries = [("via", "Via", v) for v in values["via"]]
    entries += [(k, _CANON[k][1], values[k][0]) for k in ("from", "to", "call-id", "cseq")]
    uri = parts[1] if _is_scheme_uri(parts[1]) else "sip:invalid"
    return SipRequest(parts[0], uri, Headers._trusted(entries))


def error_response_for(data: bytes, error: RemoteProtocolError) -> SipResponse | None:
    """The stateless answer to a malformed datagram (`error.status_hint`), or None to drop."""
    request = salvage_request(data)
    if request is None:
        return None
    return make_response(request, error.status_hint)
