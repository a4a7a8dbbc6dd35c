"""Outbound mail, built only through `email.message.EmailMessage` with `policy.SMTP`.

Pure. Every header we write comes from a value that went through `header_text` (control
characters, CR, LF and NUL become spaces; nothing a customer wrote, decoded or not, can start a
new header line) and through the policy's own folding and RFC 2047 encoding. Addresses are
`headerregistry.Address` objects made from a checked addr-spec, so a display name is only ever
a display name. The envelope (MAIL FROM, RCPT TO) is returned beside the message and never
derived from its headers: a header trick cannot add a recipient.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import SMTP, default
from email.utils import format_datetime
from typing import Final

from connectors.email import ids

MAX_REFERENCES: Final = 20  # keep the root and the newest ids (RFC 5322 3.6.4 allows trimming)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")
_RE_PREFIX = re.compile(r"^\s*(?:(?:re|aw|sv|vs|antw|ref|odp|r|res|rif|ynt)\s*(?:\[\d+\])?\s*:\s*)+",
                        re.I)
_ADDR_SPEC = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,255}$")


class ComposeError(ValueError):
    """The mail cannot be built as asked (e.g. the recipient is not one plain address)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str  # MAIL FROM
    recipients: tuple[str, ...]  # RCPT TO: exactly the addresses given, never from headers


@dataclass(frozen=True, slots=True)
class OutboundMail:
    message: EmailMessage
    envelope: Envelope
    message_id: str  # canonical (no brackets): the provider id the outbox records


def _one_line(value: str) -> str:
    return " ".join(_CONTROL.sub(" ", value).split())


def header_text(value: str | None, limit: int = 300) -> str:
    """One line of text, safe to put in a header: no control characters, bounded length.

    The email package decodes RFC 2047 words in a value *as it is assigned* and then writes
    the decoded characters out raw: `=?utf-8?q?x=0D=0ABcc:_evil@x.org?=` given as a subject
    or a display name becomes a real `Bcc:` line (measured on CPython 3.11). So the value is
    decoded here the way the policy would decode it, until nothing changes, and only then are
    control characters removed; what is left decodes to itself."""
    text = _one_line(value or "")[:limit]
    for _ in range(5):
        decoded = _one_line(str(SMTP.header_factory("subject", text)))[:limit]
        if decoded == text:
            return text
        text = decoded
    return text.replace("=?", "= ?")  # still changing: break the encoded-word syntax itself


def checked_address(value: str) -> str:
    """A single plain addr-spec (`ann@example.org`), or ComposeError.

    Deliberately stricter than RFC 5322 (no quoted local parts, no comments, ASCII only):
    what reaches RCPT TO and To must be exactly one mailbox."""
    text = value.strip().removeprefix("email:")
    domain = text.rpartition("@")[2]
    if not _ADDR_SPEC.match(text) or ".." in text or "." not in domain or domain.endswith("."):
        raise ComposeError(f"{value!r} is not one plain email address")
    return text


def reply_subject(subject: str | None, fallback: str = "Your message") -> str:
    """The thread's subject with exactly one `Re:` (AW:, SV:, … folded in)."""
    text = header_text(subject, 250)
    text = _RE_PREFIX.sub("", text).strip()
    return f"Re: {text or fallback}"


def _address(spec: str, name: str | None) -> Address:
    local, _, domain = checked_address(spec).rpartition("@")
    return Address(display_name=header_text(name, 120), username=local, domain=domain)


def _angle(message_id: str) -> str:
    value = ids.canonical_id(f"<{message_id}>")
    if value is None or value.startswith("sha256:"):
        raise ComposeError(f"{message_id!r} is not a Message-ID we can write")
    return f"<{value}>"


def compose(
    *,
    our_address: str,
    to: str,
    text: str,
    message_id: str,
    date: datetime,
    subject: str | None = None,
    is_reply: bool = True,
    from_name: str | None = None,
    to_name: str | None = None,
    reply_to: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    auto_submitted: bool = False,
    html_alternative: bool = False,
) -> OutboundMail:
    """One outbound mail and its envelope. `references` oldest first, as the thread grew."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(our_address, from_name)
    msg["To"] = _address(to, to_name)
    if reply_to:
        msg["Reply-To"] = _address(reply_to, from_name)
    msg["Subject"] = reply_subject(subject) if is_reply else header_text(subject, 250) or "Message"
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = _angle(message_id)
    refs: list[str] = []
    for ref in references:
        try:
            angled = _angle(ref)
        except ComposeError:
            continue  # an id we only know by its hash cannot be written back
        if angled not in refs:
            refs.append(angled)
    parent = _angle(in_reply_to) if in_reply_to else None
    if parent and parent not in refs:
        refs.append(parent)
    if len(refs) > MAX_REFERENCES:
        refs = [refs[0], *refs[-(MAX_REFERENCES - 1):]]
    if parent:
        msg["In-Reply-To"] = parent
    if refs:
        msg["References"] = " ".join(refs)
    # RFC 3834: a mail the gateway wrote by itself (a code, a notice) says so, so that other
    # robots (out-of-office, list servers) do not answer it; a person's reply says "no".
    msg["Auto-Submitted"] = "auto-replied" if auto_submitted else "no"
    if auto_submitted:
        msg["X-Auto-Response-Suppress"] = "All"  # Exchange's own loop guard
    body = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    msg.set_content(body if body.endswith("\n") else body + "\n")
    if html_alternative:
        paragraphs = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>"
                             for p in body.split("\n\n") if p.strip())
        msg.add_alternative(f"<!doctype html><html><body>{paragraphs}</body></html>\n",
                            subtype="html")
    envelope = Envelope(sender=checked_address(our_address), recipients=(checked_address(to),))
    _check_written(msg, envelope)
    return OutboundMail(msg, envelope, _angle(message_id)[1:-1])


def _check_written(msg: EmailMessage, envelope: Envelope) -> None:
    """Read back what would go on the wire: the same headers, one recipient, no surprises.
    A defence in depth against the next parser trick; it costs one parse per send."""
    written = BytesParser(policy=default).parsebytes(msg.as_bytes())
    if sorted(k.lower() for k in written.keys()) != sorted(k.lower() for k in msg.keys()):
        raise ComposeError("refusing to send: the written headers differ from those set")
    to = getattr(written["To"], "addresses", ())
    if len(to) != 1 or to[0].addr_spec.lower() != envelope.recipients[0].lower():
        raise ComposeError("refusing to send: the written To is not the one recipient")
