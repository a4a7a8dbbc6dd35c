"""Who is speaking in a mail: the customer, a robot answering for them, or a mail server.

Auto-replies (RFC 3834 `Auto-Submitted`, `X-Autoreply`, `Precedence: bulk/junk/list/
auto_reply`, mailing lists, read receipts, out-of-office subjects) and bounces (RFC 3464
`multipart/report; report-type=delivery-status`, and the common non-standard ones) are recorded
as such, never as the customer speaking, and never answered: that is what makes mail loops
impossible. A bounce names the Message-ID of the mail it returns, so the outbound message can
be marked failed. Pure functions over a parsed `EmailMessage`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, HeaderParser
from email.policy import default as default_policy
from typing import Literal

from connectors.email.ids import canonical_id

Kind = Literal["message", "auto-reply", "bounce"]
Headers = Mapping[str, Sequence[str]]  # lower-cased name -> its raw values, in order

_OOO_SUBJECT = re.compile(
    r"^\s*(?:auto(?:matic|matische?)?[ _-]?(?:reply|response|antwort|answer)\b"
    r"|out of (?:the )?office\b|ooo\b|abwesenheit|automatische antwort"
    r"|r[ée]ponse automatique|absence|respuesta autom[áa]tica|fuera de la oficina"
    r"|risposta automatica|fuori sede|automatisch antwoord|afwezig|autosvar"
    r"|automaattinen vastaus|odpowied[źz] automatyczna|resposta autom[áa]tica)",
    re.I,
)
_BOUNCE_SUBJECT = re.compile(
    r"(undeliver(?:ed|able)|delivery (?:status notification|failure|has failed)"
    r"|returned (?:mail|to sender)|mail delivery (?:failed|failure|subsystem)"
    r"|failure notice|nicht zustellbar|unzustellbar|non remis|no se puede entregar)",
    re.I,
)
_DAEMONS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon")
_MESSAGE_ID_LINE = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]+>)", re.I | re.M)
_STATUS = re.compile(r"^\s*([245])\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True, slots=True)
class Bounce:
    """What a delivery report says about the mail it returns."""

    original_message_id: str | None
    action: str | None = None  # failed | delayed | delivered | relayed | expanded
    status: str | None = None  # e.g. 5.1.1
    recipient: str | None = None
    diagnostic: str | None = None

    @property
    def failed(self) -> bool:
        """A final failure (not a delay warning): the outbound message did not arrive."""
        if self.action:
            return self.action == "failed"
        return self.status is None or self.status.startswith("5")


@dataclass(frozen=True, slots=True)
class Classification:
    kind: Kind
    reason: str | None = None
    bounce: Bounce | None = None


def _header(msg: Message, name: str) -> str:
    """The raw value: these headers are ASCII tokens (no decoding, no header-object cost)."""
    wanted = name.lower()
    for key, value in msg.raw_items():
        if key.lower() == wanted:
            return " ".join(str(value).split())
    return ""


def headers_of(msg: Message) -> dict[str, list[str]]:
    """Every header's raw values by lower-cased name, read in one pass over the message."""
    out: dict[str, list[str]] = {}
    for key, value in msg.raw_items():
        out.setdefault(key.lower(), []).append(str(value))
    return out


def _value(heads: Headers, name: str) -> str:
    values = heads.get(name)
    return " ".join(values[0].split()) if values else ""


def classify(msg: EmailMessage, sender: str | None, subject: str,
             headers: Headers | None = None) -> Classification:
    """Bounce first (it also carries robot headers), then auto-reply signs, else a message.
    `subject` is the decoded subject; `headers` is `headers_of(msg)` when the caller has it
    (each lookup in the message walks all its headers)."""
    heads = headers_of(msg) if headers is None else headers
    ctype = msg.get_content_type()
    report = ""
    if ctype == "multipart/report":  # only a report's report-type matters (a param parse)
        found = (msg.get_param("report-type", header="content-type") or "")
        report = str(found).lower() if not isinstance(found, tuple) else ""
    if ctype == "multipart/report" and report == "delivery-status":
        return Classification("bounce", "delivery status report", _dsn(msg))
    local = (sender or "").rpartition("@")[0].lower()
    null_sender = "return-path" in heads and _value(heads, "return-path").replace(" ", "") == "<>"
    if (local in _DAEMONS or null_sender) and _BOUNCE_SUBJECT.search(subject):
        return Classification("bounce", "non-standard bounce", _loose_bounce(msg))
    if ctype == "multipart/report":
        return Classification("auto-reply", f"report ({report or 'unknown type'})")
    auto = _value(heads, "auto-submitted").split(";")[0].strip().lower()
    if auto and auto != "no":
        return Classification("auto-reply", f"Auto-Submitted: {auto[:40]}")
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if name.lower() in heads:
            return Classification("auto-reply", name)
    precedence = _value(heads, "precedence").lower()
    if precedence in ("bulk", "junk", "list", "auto_reply", "auto-reply"):
        return Classification("auto-reply", f"Precedence: {precedence}")
    if "list-id" in heads:
        return Classification("auto-reply", "mailing list")
    if null_sender:
        return Classification("auto-reply", "null sender (Return-Path <>)")
    if local in _DAEMONS:
        return Classification("auto-reply", f"sent by {local}")
    if _OOO_SUBJECT.search(subject):
        return Classification("auto-reply", "out-of-office subject")
    return Classification("message")


def _dsn(msg: EmailMessage) -> Bounce:
    fields: list[Message] = []
    original: str | None = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            fields.extend(_status_blocks(part))
        elif ctype in ("message/rfc822", "message/global") and original is None:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                original = canonical_id(_header(inner[0], "Message-ID") or "")
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers") and original is None:
            original = _id_in_headers(part)
    if original is None:
        original = _id_in_text(msg)
    chosen = next((f for f in fields[1:] if _header(f, "Action").lower() == "failed"), None)
    chosen = chosen or (fields[1] if len(fields) > 1 else (fields[0] if fields else None))
    if chosen is None:
        return Bounce(original)
    status = _header(chosen, "Status")
    return Bounce(
        original_message_id=original,
        action=_header(chosen, "Action").lower() or None,
        status=(_STATUS.match(status).group(0).strip() if _STATUS.match(status) else None),
        recipient=_type_value(_header(chosen, "Final-Recipient")) or None,
        diagnostic=_type_value(_header(chosen, "Diagnostic-Code"))[:500] or None,
    )


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    # Some parsers leave the report as text: split it into header blocks ourselves.
    text = payload if isinstance(payload, str) else ""
    parser = HeaderParser(policy=default_policy)
    return [parser.parsestr(block.strip() + "\n") for block in re.split(r"\n\s*\n", text)
            if block.strip()]


def _id_in_headers(part: Message) -> str | None:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    headers = BytesHeaderParser(policy=default_policy).parsebytes(payload)
    return canonical_id(_header(headers, "Message-ID") or "")


def _id_in_text(msg: EmailMessage) -> str | None:
    for part in msg.walk():
        if part.get_content_maintype() != "text":
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            match = _MESSAGE_ID_LINE.search(payload.decode("latin-1"))
            if match:
                return canonical_id(match.group(1))
    return None


def _loose_bounce(msg: EmailMessage) -> Bounce:
    bounce = _dsn(msg)
    return bounce if bounce.action or bounce.status else Bounce(bounce.original_message_id,
                                                                action="failed")


def _type_value(value: str) -> str:
    """`rfc822; ann@example.org` -> `ann@example.org`."""
    return value.partition(";")[2].strip() if ";" in value else value.strip()
