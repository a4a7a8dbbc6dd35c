"""Inbound mail, from bytes to what the transcript needs: a pure parser.

`parse_mail(raw, config)` reads one RFC 5322 message with the standard `email` package
(`policy.default`): sender, recipients, subject and names (RFC 2047 and RFC 2231 decoded, raw
8-bit legacy headers repaired), the text body (text/plain preferred; HTML reduced to text with
inscriptis), quoted history and signature trimmed for the transcript, attachments as
references (name, type, size), thread anchors (Message-ID, In-Reply-To, References, newest
first) and our own thread token, robot/bounce classification, and the receiving server's
Authentication-Results. Attachments (and the raw message, when asked to keep it) are returned
as blobs to store by reference. The body's own parts (the HTML original, the untrimmed text)
are named by their IMAP section (`text_section`, `html_section`) and never copied: the mail
stays in the mailbox, and the only body text the gateway stores is the transcript's, which
passes through the core. The parsed result itself stays small. It never raises: a mail it
cannot use comes back as `Rejected` with the reason, for the caller to log and skip.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.headerregistry import Address as HeaderAddress
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from typing import Any, Final

from inscriptis import get_text as html_to_text

from connectors.email import ids
from connectors.email.authres import AuthResults, parse_authentication_results
from connectors.email.blobs import sha256_of
from connectors.email.classify import Bounce, Classification, Headers, Kind, classify, headers_of
from connectors.email.trim import trim_reply, trim_signature

MAX_TEXT: Final = 100_000  # characters of body text a transcript entry may hold
MAX_PARTS: Final = 200  # attachments recorded per mail; more are counted, not kept
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u2028\u2029]")
_SURROGATES = re.compile(r"[\udc80-\udcff]")
_REPLY_SUBJECT = re.compile(r"^\s*(re|aw|sv|vs|antw|odp|r|res|rif|ynt|fwd?|wg)\s*(\[\d+\])?\s*:",
                            re.I)
_QUOTE_SIGNS = re.compile(r"^\s*>|-{5}|_{5}", re.M)  # a quote, a forward, Outlook's rule
_TRAILING_ANGLE_ADDR = re.compile(r"<\s*([^<>\s@]+@[^<>\s@]+)\s*>\s*$")
_RECIPIENT_HEADERS: Final = ("to", "cc", "delivered-to", "x-original-to", "envelope-to",
                             "x-delivered-to")


class _MemoPolicy(EmailPolicy):
    """policy.default, with parsed header values memoised.

    Measured: the feed parser and `get_content_type()` parse the same Content-Type header a
    dozen times per message (each parse a full RFC 5322 grammar walk), so policy.default reads
    ~200 small mails a second; memoising the (name, value) -> header object step, which is a
    pure function of the policy, gives ~1,100. Header objects are immutable.
    """

    def header_fetch_parse(self, name: str, value: Any) -> Any:
        if hasattr(value, "name") or len(value) > 4000:
            return super().header_fetch_parse(name, value)
        return _parse_header(self, name, value)


@functools.lru_cache(maxsize=512)  # repeats are within a message: a small memo suffices
def _parse_header(policy: _MemoPolicy, name: str, value: str) -> Any:
    return EmailPolicy.header_fetch_parse(policy, name, value)


class _Registry(HeaderRegistry):
    """policy.default's header registry, making each header class once.

    Measured: `HeaderRegistry.__getitem__` builds a new class (`type(...)`) for every header
    object it makes, ~30 us of each header parse the memo misses (a multipart's Content-Type,
    a non-ASCII From). Made once per registered type, the classes are the same (name, bases,
    no state of their own): only their identity is now shared.
    """

    def __getitem__(self, name: str) -> Any:
        return _header_class(self.registry.get(name.lower(), self.default_class),
                             self.base_class)


@functools.lru_cache(maxsize=64)
def _header_class(cls: type, base: type) -> type:
    return type("_" + cls.__name__, (cls, base), {})


POLICY: Final = _MemoPolicy(header_factory=_Registry())


@dataclass(frozen=True, slots=True)
class ParseConfig:
    our_address: str  # GATEWAY_EMAIL_ADDRESS: whose plus-addresses and Message-IDs are ours
    languages: tuple[str, ...] = ("en",)  # for finding quoted history
    keep_raw: bool = False  # store the raw message too (else its IMAP URL names it)


@dataclass(frozen=True, slots=True)
class PartRef:
    """A stored part, by reference: never the bytes themselves."""

    role: str  # "attachment" | "inline" | "raw"
    sha256: str
    size: int
    content_type: str
    name: str | None = None

    @property
    def url(self) -> str:
        return "blob:sha256:" + self.sha256


@dataclass(frozen=True, slots=True)
class ParsedMail:
    message_id: str  # canonical (no brackets); synthetic when the mail had none
    synthetic_id: bool
    sender: str  # addr-spec from From (or Sender): identifies, never verifies
    sender_name: str | None
    to: str  # the To and Cc headers as text: who else is on the thread
    cc: str
    subject: str
    date: datetime | None
    thread_refs: tuple[str, ...]  # In-Reply-To then References, newest first
    thread_root: str  # the first Message-ID of the thread as far as this mail knows: one leg
    thread_token: str | None  # our token, from a plus-address or our own Message-ID
    kind: Kind
    kind_reason: str | None
    bounce: Bounce | None
    auth: AuthResults | None
    text: str  # for the transcript: the newest part, no quote, no signature
    text_trimmed: bool  # the full body differs (it is the part at `text_section`)
    parts: tuple[PartRef, ...]  # raw and attachments, by reference
    # IMAP sections (RFC 3501 6.4.5) of the body's parts in the mailbox: the text shown
    # (untrimmed there), and the HTML original when the text was reduced from it.
    text_section: str | None = None
    html_section: str | None = None
    dropped_parts: int = 0
    defects: tuple[str, ...] = ()

    @property
    def attachments(self) -> tuple[PartRef, ...]:
        return tuple(p for p in self.parts if p.role in ("attachment", "inline"))

    def part(self, role: str) -> PartRef | None:
        return next((p for p in self.parts if p.role == role), None)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A mail that cannot be used (no sender, not a message at all); logged and skipped."""

    reason: str
    message_id: str | None = None


@dataclass(slots=True)
class Parsed:
    """`parse_mail`'s answer: the mail, and the blobs it references (sha256 -> bytes)."""

    mail: ParsedMail
    blobs: dict[str, bytes] = field(default_factory=dict)


def parse_mail(raw: bytes, config: ParseConfig) -> Parsed | Rejected:
    """Parse one message. Never raises; see the module docstring."""
    try:
        return _parse(raw, config)
    except Exception as exc:  # the email package has many rare paths; none may crash us
        return Rejected(f"unparseable mail ({type(exc).__name__}: {str(exc)[:200]})")


def _parse(raw: bytes, config: ParseConfig) -> Parsed | Rejected:
    msg = _read(raw)
    if not isinstance(msg, EmailMessage):
        return Rejected("no headers: not a mail message")
    # Every header's raw values, read once (name lowered): the lookups below, and classify's,
    # each walked the whole header list before (~25 walks a mail, ~25 us measured).
    heads = headers_of(msg)
    if not heads:
        return Rejected("no headers: not a mail message")
    blobs: dict[str, bytes] = {}
    parts: list[PartRef] = []
    if config.keep_raw:
        raw_sha = sha256_of(raw)
        blobs[raw_sha] = raw
        parts.append(PartRef("raw", raw_sha, len(raw), "message/rfc822"))

    message_id = ids.canonical_id(_first(heads, "message-id"))  # ids are ASCII: no decoding
    synthetic = message_id is None
    if message_id is None:
        message_id = ids.synthetic_id(sha256_of(raw))

    sender, sender_name = _sender(msg, heads)
    if sender is None:
        return Rejected("no usable From or Sender address", message_id)
    to, cc = clean_text(_first(heads, "to"))[:500], clean_text(_first(heads, "cc"))[:500]
    subject = _subject(msg, heads)
    in_reply_to = ids.ids_in(_first(heads, "in-reply-to"))
    references = ids.ids_in(_first(heads, "references"))
    refs = tuple(r for r in ids.thread_refs(in_reply_to, references) if r != message_id)
    token = _token_in_recipients(heads, config.our_address) or next(
        (t for t in (ids.token_in_message_id(r, config.our_address) for r in refs) if t), None)
    found: Classification = classify(msg, sender, subject, heads)
    if found.bounce is not None and found.bounce.original_message_id:
        # A bounce answers the mail it returns: that id leads to the thread (and the outbox).
        original = found.bounce.original_message_id
        refs = (original, *[r for r in refs if r != original])[: ids.MAX_REFS]
        token = token or ids.token_in_message_id(original, config.our_address)

    plain_part = msg.get_body(preferencelist=("plain",))
    # A single text/plain part has no HTML body to look for.
    html_part = (None if plain_part is msg else msg.get_body(preferencelist=("html",)))
    text_section = html_section = None
    if plain_part is not None:
        full_text = _decoded(plain_part)
        text_section = section_of(msg, plain_part)
    elif html_part is not None:
        # Reduced to text for the transcript; the original is named by its IMAP section.
        full_text = html_to_text(_decoded(html_part))
        text_section = html_section = section_of(msg, html_part)
    else:
        full_text = ""
    full_text = full_text.replace("\r\n", "\n").strip()
    text = full_text
    if found.kind == "message":
        reply_like = bool(in_reply_to or references or _REPLY_SUBJECT.match(subject)
                          or "thread-index" in heads or _QUOTE_SIGNS.search(full_text))
        text = (trim_reply(full_text, config.languages) if reply_like
                else trim_signature(full_text))
    text = text[:MAX_TEXT]
    trimmed = text != full_text
    attachments, dropped = _attachments(msg, blobs, {id(plain_part), id(html_part)})
    parts.extend(attachments)
    if not text and attachments:
        names = ", ".join(a.name or a.content_type for a in attachments[:5])
        more = f" and {len(attachments) - 5} more" if len(attachments) > 5 else ""
        text = f"[{len(attachments)} attachment{'s' if len(attachments) > 1 else ''}: {names}{more}]"

    mail = ParsedMail(
        message_id=message_id, synthetic_id=synthetic, sender=sender, sender_name=sender_name,
        to=to, cc=cc, subject=subject, date=_date(heads), thread_refs=refs,
        thread_root=(references or in_reply_to or [message_id])[0],
        thread_token=token, kind=found.kind, kind_reason=found.reason, bounce=found.bounce,
        auth=parse_authentication_results(clean_text(_first(heads, "authentication-results"))),
        text=text, text_trimmed=trimmed, parts=tuple(parts), dropped_parts=dropped,
        text_section=text_section, html_section=html_section,
        defects=tuple(sorted({type(d).__name__ for d in msg.defects}))[:10],
    )
    return Parsed(mail, blobs)


# ---- the parse -----------------------------------------------------------------------------

# A top-level `Content-Type: multipart/…; boundary=…` (folded or not) with a plain boundary:
# quoted bchars, or an unquoted token, and no ":" (so no boundary line is a header line).
_TOP_CONTENT_TYPE = re.compile(rb"^content-type:[ \t]*(multipart/[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)",
                               re.I | re.M)
_BOUNDARY_PARAM = re.compile(rb"""(;[ \t\r\n]*boundary=)(?:"([A-Za-z0-9'()+_,./=?-]{1,70})"|"""
                             rb"""([A-Za-z0-9_.+-]{1,70}))(?=[ \t]*(?:;|\r|\n|$))""", re.I)
_BOUNDARY_TAIL = re.compile(rb"(?:--)?[ \t]*(?:\r|\n|\Z)")  # the feed parser's, after "--" + b
# Stand-ins for a mail's own top-level boundary, one not in the mail is used. Each ends in an
# alphanumeric, so no line the parser reads as "--" + stand-in (+ "--") can be another
# boundary's delimiter unless that boundary starts with the stand-in (an encoded one could:
# checked after parsing, though the top-level delimiter is matched first anyway).
_STAND_INS: Final = tuple(b"gw-parse-boundary-%d" % n for n in range(4))


def _read(raw: bytes) -> EmailMessage:
    """`BytesParser(policy=POLICY).parsebytes(raw)`, the same tree, cheaper for a multipart.

    Measured on the bench's mails (half multipart/alternative): the feed parser compiles a
    regex for each multipart's boundary (`re.compile` of `(?P<sep>--boundary)…`, ~190 us) and
    policy.default parses its Content-Type header (~100-250 us), both new for every mail as
    every boundary is unique, so a multipart cost ~830 us to parse against ~60 us for a plain
    mail. The top-level boundary is therefore swapped, in the header and on every line the
    feed parser reads as a delimiter of it (`--boundary`, optional `--`, blanks, end of
    line), for a fixed stand-in absent from the mail: the regex and the header come from the
    caches, and the tree is the one the mail's own boundary gives (no part's content holds a
    delimiter line). Only the boundary itself differs, and nothing we return reads it; the
    raw bytes (hash, stored copy) are the mail's own. Anything unusual parses the mail as is.
    """
    swapped = _swap_boundary(raw)
    if swapped is not None:
        text, stand_in = swapped
        msg = BytesParser(policy=POLICY).parsebytes(text)
        content_type = next((v for k, v in msg.raw_items() if k.lower() == "content-type"), "")
        if _boundary_in(content_type) == stand_in and not any(
                (part.get_boundary() or "").startswith(stand_in) for part in msg.walk()
                if part is not msg and part.get_content_maintype() == "multipart"):
            return msg  # type: ignore[return-value]
    return BytesParser(policy=POLICY).parsebytes(raw)  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def _boundary_in(content_type: str) -> str | None:
    """`get_boundary()` of a message whose Content-Type is `content_type` (the stand-ins' few
    headers: no parameter parse per mail)."""
    probe = EmailMessage(policy=POLICY)
    probe.set_raw("Content-Type", content_type)
    return probe.get_boundary()


def _swap_boundary(raw: bytes) -> tuple[bytes, str] | None:
    """The mail with its top-level boundary swapped for a stand-in (see `_read`), and the
    stand-in; None when the header or the boundary is not of the plain kind handled here."""
    ends = [n for n in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if n >= 0]
    if not ends:
        return None
    header = _TOP_CONTENT_TYPE.search(raw, 0, min(ends))
    if header is None or header.group(1).lower().count(b"boundary") != 1:
        return None
    param = _BOUNDARY_PARAM.search(header.group(1))
    if param is None:
        return None
    boundary = param.group(2) or param.group(3)
    stand_in = next((s for s in _STAND_INS if s not in raw), None)
    if stand_in is None:
        return None
    start = header.start(1)
    pieces = [raw[:start + param.start(2 if param.group(2) else 3)], stand_in]
    at = start + param.end(2 if param.group(2) else 3)
    delimiter = b"--" + boundary
    found = raw.find(delimiter, at)
    while found >= 0:
        if raw[found - 1:found] in (b"\r", b"\n") and _BOUNDARY_TAIL.match(
                raw, found + len(delimiter)):
            pieces += [raw[at:found], b"--", stand_in]
            at = found + len(delimiter)
        found = raw.find(delimiter, found + len(delimiter))
    pieces.append(raw[at:])
    return b"".join(pieces), stand_in.decode()


# ---- headers ---------------------------------------------------------------------------------


def _repair(value: str) -> str:
    """Raw 8-bit bytes in a header (no RFC 2047, common from old clients) arrive as
    surrogate escapes: read them as UTF-8, else Windows-1252."""
    if not _SURROGATES.search(value):
        return value
    data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def clean_text(value: str) -> str:
    """A header value fit to show and to reuse: raw 8-bit bytes repaired, and every control
    character (CR, LF, NUL, …) made a space, so a decoded RFC 2047 word can never smuggle a
    line break into a header we write later."""
    return " ".join(_CONTROL.sub(" ", _repair(value)).split())


def _first(heads: Headers, name: str) -> str:
    """The first undecoded value of header `name` (lower case), "" when absent (for ids, which
    are ASCII): no header-object parsing cost."""
    values = heads.get(name)
    return values[0] if values else ""


def _header(msg: Message, heads: Headers, name: str) -> Any:
    """The parsed header; when it carries raw 8-bit bytes, parsed from the repaired text
    (policy.default would turn each such byte into U+FFFD)."""
    raw = _first(heads, name.lower())
    if raw and _SURROGATES.search(raw):
        return POLICY.header_factory(name, " ".join(_repair(raw).splitlines()))
    return msg.get(name)


def _text_header(msg: Message, heads: Headers, name: str) -> str:
    try:
        value = _header(msg, heads, name)
    except Exception:
        return _first(heads, name.lower())
    return str(value) if value is not None else ""


def _subject(msg: Message, heads: Headers) -> str:
    raw = _first(heads, "subject")
    if raw.isascii() and "=?" not in raw:
        return clean_text(raw)[:500]  # nothing to decode: no header parse needed
    return clean_text(_text_header(msg, heads, "Subject"))[:500]


def _sender(msg: EmailMessage, heads: Headers) -> tuple[str | None, str | None]:
    raw_from = _first(heads, "from")
    if raw_from.isascii() and "=?" not in raw_from:
        # The common case, read by email.utils.parseaddr (strict): the full RFC 5322 grammar
        # walk of policy.default costs ~1 ms a mail here and gives the same answer.
        display, spec = _parseaddr(" ".join(raw_from.split()))
        if spec and _plain_address(spec):
            local, _, domain = spec.rpartition("@")
            return f"{local}@{domain.lower()}", clean_text(display)[:200] or None
    for name in ("From", "Sender"):
        header: Any = None
        addresses: Any = ()
        try:
            header = _header(msg, heads, name)
            addresses = getattr(header, "addresses", ()) if header is not None else ()
        except Exception:  # an address header the parser chokes on: read it loosely
            pass
        for address in addresses:
            spec = _addr_spec(address)
            if spec is not None:
                display = clean_text(address.display_name or "")[:200] or None
                return spec, display
        raw = _first(heads, name.lower())
        if raw and not addresses:
            found = _loose_sender(raw)
            if found[0] is not None:
                return found
    return None, None


# `Name Words <local@domain>` or `local@domain`, ASCII letters and digits (and . _ + - in the
# address): parseaddr's answer for these is the match itself (tests check it, fuzzed).
_SIMPLE_FROM = re.compile(r"(?:([A-Za-z0-9]+(?: [A-Za-z0-9]+)*) <)?"
                          r"([A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"
                          r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?(1)>)")


def _parseaddr(text: str) -> tuple[str, str]:
    """`email.utils.parseaddr(text)`; the plain shape most senders use is read by one regex
    (measured: parseaddr's tokenizer, ~13 us a call, was ~12% of parse_mail's profile)."""
    simple = _SIMPLE_FROM.fullmatch(text)
    if simple is not None:
        return simple.group(1) or "", simple.group(2)
    return parseaddr(text)


def _addr_spec(address: HeaderAddress) -> str | None:
    try:
        local, domain = address.username, address.domain
    except Exception:
        return None
    spec = f"{clean_text(local)}@{clean_text(domain).lower()}"
    return spec if local and domain and _plain_address(spec) else None


def _plain_address(spec: str) -> bool:
    return (spec.count("@") == 1 and len(spec) <= 320 and spec.isprintable()
            and not any(c in spec for c in " <>,;\"") and "." in spec.rpartition("@")[2])


def _loose_sender(raw: str) -> tuple[str | None, str | None]:
    """The sender when the strict parser refused the header (CPython refuses a display name
    that decodes to CR/LF): the trailing `<addr-spec>` is the address, the rest the name."""
    text = _repair(" ".join(raw.split()))
    angle = _TRAILING_ANGLE_ADDR.search(text)
    if angle is not None:
        local, _, domain = angle.group(1).rpartition("@")
        spec = f"{clean_text(local)}@{clean_text(domain).lower()}"
        if not _plain_address(spec):
            return None, None
        return spec, clean_text(_decode_words(text[: angle.start()]).strip().strip('"'))[
            :200] or None
    for _name, spec in getaddresses([clean_text(_decode_words(text))]):
        if spec and _plain_address(spec):
            local, _, domain = spec.rpartition("@")
            return f"{local}@{domain.lower()}", None
    return None, None


def _decode_words(text: str) -> str:
    try:
        return str(make_header(decode_header(text)))
    except (LookupError, UnicodeError, ValueError, HeaderParseError):
        return text


def _token_in_recipients(heads: Headers, ours: str) -> str | None:
    """Our token in a `local+TOKEN@our.domain` recipient. To and Cc first: they are what the
    customer's client wrote from our Reply-To, case intact; delivery headers come after
    (a mail server may have folded their case)."""
    pattern = _plus_pattern(ours)
    for name in _RECIPIENT_HEADERS:
        for text in heads.get(name, ()):
            if "=?" in text:
                text = _decode_words(text)  # an encoded display name may hide the address
            found = pattern.search(text)
            if found is not None:
                return found.group(1)
    return None


@functools.lru_cache(maxsize=8)
def _plus_pattern(ours: str) -> re.Pattern[str]:
    local, domain = ids.split_address(ours)
    return re.compile(rf"(?<![\w.+-]){re.escape(local)}\+([A-Za-z0-9_-]{{16,64}})"
                      rf"@{re.escape(domain)}(?![\w.-])", re.I)


def _date(heads: Headers) -> datetime | None:
    raw = _first(heads, "date").strip()
    if not raw:
        return None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# ---- bodies and attachments ------------------------------------------------------------------


def section_of(msg: Message, wanted: Message) -> str | None:
    """The IMAP section number of `wanted` in `msg` (RFC 3501 6.4.5: a single-part message's
    body is "1"; the parts of a multipart are 1, 2, …, nested as "2.1"). Bodies are never
    inside an attached message/rfc822, so those are not descended into."""
    if wanted is msg:
        return "1"
    stack: list[tuple[Message, str]] = [(msg, "")]
    while stack:
        part, prefix = stack.pop()
        if not part.is_multipart() or part.get_content_maintype() == "message":
            continue
        for number, child in enumerate(part.get_payload(), 1):  # type: ignore[arg-type]
            path = f"{prefix}.{number}" if prefix else str(number)
            if child is wanted:
                return path
            stack.append((child, path))
    return None


def _decoded(part: Message) -> str:
    """A text part's content; a missing, unknown or lying charset does not stop us."""
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except (LookupError, UnicodeError, ValueError, KeyError, AttributeError, TypeError,
            AssertionError):
        pass
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    for candidate in (charset, "utf-8", "cp1252"):
        try:
            return payload.decode(candidate)
        except (LookupError, UnicodeDecodeError):
            continue
    return payload.decode("latin-1")


def _attachments(msg: EmailMessage, blobs: dict[str, bytes],
                 bodies: set[int]) -> tuple[list[PartRef], int]:
    out: list[PartRef] = []
    dropped = 0
    for part in msg.walk():
        if part.is_multipart() or id(part) in bodies or part is msg and not _is_file(part):
            continue
        data = _part_bytes(part)
        if data is None:
            continue
        if len(out) >= MAX_PARTS:
            dropped += 1
            continue
        sha = sha256_of(data)
        blobs.setdefault(sha, data)
        try:
            name = part.get_filename()
        except Exception:
            name = None
        disposition = part.get_content_disposition()
        out.append(PartRef(
            role="inline" if disposition == "inline" else "attachment", sha256=sha,
            size=len(data), content_type=part.get_content_type(),
            name=clean_text(name)[:255] or None if name else None,
        ))
    return out, dropped


def _is_file(part: Message) -> bool:
    return part.get_content_maintype() not in ("text", "multipart")


def _part_bytes(part: Message) -> bytes | None:
    if part.get_content_maintype() == "message":
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else payload
        if isinstance(inner, Message):
            try:
                return inner.as_bytes()
            except Exception:
                return None
        return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else None
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else None
