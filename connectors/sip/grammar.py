"""SIP grammar (RFC 3261 sections 19, 20, 25): URIs, Via, name-addr, CSeq and parameters.

The lowest layer of the SIP message code, after h11's `_abnf.py`: text in, frozen values out.
`headers.py` keeps these values in its memo, `framing.py` checks what every message needs
with them, `message.py` reads them on demand. Pure: malformed text raises
`RemoteProtocolError`, building something unserializable raises `LocalProtocolError`.
"""

from __future__ import annotations

import functools
import re
import secrets
from dataclasses import dataclass
from typing import Final, TypeAlias
from urllib.parse import unquote

from connectors.sip.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "CSeq",
    "MAGIC_COOKIE",
    "NameAddr",
    "Params",
    "SipUri",
    "Via",
    "new_branch",
    "new_tag",
    "split_list",
    "unescape",
]

MAGIC_COOKIE: Final = "z9hG4bK"
"""RFC 3261 8.1.1.7: a branch starting with this was built by an RFC 3261 element."""

Params: TypeAlias = tuple[tuple[str, str | None], ...]
"""`;name=value` parameters in order as written; value None for `;lr`, quoted values keep quotes."""

_MAX_CSEQ: Final = 2**32 - 1  # RFC 3261 8.1.1.5: a 32-bit unsigned integer

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


_SIP_VERSION: Final = re.compile(r"SIP/[0-9]+\.[0-9]+", re.IGNORECASE)
