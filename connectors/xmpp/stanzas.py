"""What an inbound <message/> is, decided once from its XML: chat, receipt, chat state, bounce,
archive result, or nothing we use (and why).

Pure over ElementTree elements (what slixmpp hands us as `stanza.xml`), so odd stanzas are
fuzzed here without a server. The channel acts on the result; nothing here trusts a value a
sender controls beyond its shape: ids are strings of bounded use, a stanza-id counts only when
our own server wrote it (`by` our bare JID), archive results are accepted only from our own
account, and forwarded copies (carbons) are never unwrapped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from gateway.addresses import AddressError, normalise_jid

__all__ = [
    "ArchiveResult", "Bounce", "Chat", "ChatState", "Inbound", "Receipt", "Unusable",
    "classify", "unwrap_archived",
]

CLIENT: Final = "jabber:client"
RECEIPTS: Final = "urn:xmpp:receipts"
MARKERS: Final = "urn:xmpp:chat-markers:0"
CHATSTATES: Final = "http://jabber.org/protocol/chatstates"
SID: Final = "urn:xmpp:sid:0"
DELAY: Final = "urn:xmpp:delay"
MAM: Final = "urn:xmpp:mam:2"
FORWARD: Final = "urn:xmpp:forward:0"
CARBONS: Final = "urn:xmpp:carbons:2"
OOB: Final = "jabber:x:oob"
NICK: Final = "http://jabber.org/protocol/nick"
STANZAS: Final = "urn:ietf:params:xml:ns:xmpp-stanzas"
_LANG: Final = "{http://www.w3.org/XML/1998/namespace}lang"
CHAT_STATES: Final = frozenset({"active", "composing", "paused", "inactive", "gone"})
_MAX_ID: Final = 256  # longer ids are not ids we keep (they are hashed in keys anyway)
_MAX_URLS: Final = 5


@dataclass(frozen=True, slots=True)
class Sender:
    full: str  # bare/resource as sent (resource case kept)
    bare: str  # normalised: lower-cased node and domain


@dataclass(frozen=True, slots=True)
class Chat:
    """A message with a body (possibly empty or only whitespace: the channel decides)."""

    sender: Sender
    body: str
    stanza_type: str  # chat | normal
    message_id: str | None
    origin_id: str | None
    archive_id: str | None  # our server's stanza-id: the archive position
    stamp: datetime | None  # <delay/>: when the server first got it (offline, archive)
    wants_receipt: bool
    markable: bool
    urls: tuple[str, ...] = ()
    nick: str | None = None
    chat_state: str | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """A receipt (XEP-0184) or chat marker (XEP-0333) for a message we sent."""

    sender: Sender
    ref_id: str
    status: str  # delivered | read


@dataclass(frozen=True, slots=True)
class ChatState:
    sender: Sender
    state: str


@dataclass(frozen=True, slots=True)
class Bounce:
    """type="error": a message of ours could not be delivered (or a stranger says so)."""

    sender: Sender
    ref_id: str | None
    condition: str
    text: str | None


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    """One message of a MAM query's answer, still wrapped."""

    queryid: str
    archive_id: str
    stamp: datetime | None
    inner: ET.Element | None


@dataclass(frozen=True, slots=True)
class Unusable:
    reason: str
    sender: Sender | None = None


Inbound = Chat | Receipt | ChatState | Bounce | ArchiveResult | Unusable


def _tag(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def _sender(raw: str | None, own_bare: str) -> Sender | None:
    if not raw:  # RFC 6120 8.1.2.1: no 'from' on c2s means our own account
        return Sender(own_bare, own_bare)
    try:
        bare = normalise_jid(raw)
    except AddressError:
        return None
    _, slash, resource = raw.strip().partition("/")
    return Sender(f"{bare}/{resource}" if slash and resource else bare, bare)


def _short(value: str | None) -> str | None:
    if not value or len(value) > _MAX_ID:
        return None
    return value


def _stamp(element: ET.Element | None) -> datetime | None:
    if element is None:
        return None
    raw = element.get("stamp") or ""
    try:
        at = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _body(xml: ET.Element) -> str | None:
    bodies = xml.findall(_tag(CLIENT, "body"))
    if not bodies:
        return None
    lang = xml.get(_LANG)
    chosen = next((b for b in bodies if b.get(_LANG) in (None, lang)), bodies[0])
    return "".join(chosen.itertext())


def _own_stanza_id(xml: ET.Element, own_bare: str) -> str | None:
    for sid in xml.findall(_tag(SID, "stanza-id")):
        by = sid.get("by") or ""
        try:
            mine = normalise_jid(by) == own_bare
        except AddressError:
            mine = False
        if mine:
            return _short(sid.get("id"))
    return None


def _chat_state(xml: ET.Element) -> str | None:
    for child in xml:
        if child.tag.startswith(f"{{{CHATSTATES}}}"):
            name = child.tag.rpartition("}")[2]
            if name in CHAT_STATES:
                return name
    return None


def _error(xml: ET.Element) -> tuple[str, str | None]:
    error = xml.find(_tag(CLIENT, "error"))
    if error is None:
        return "undefined-condition", None
    condition, text = "undefined-condition", None
    for child in error:
        if child.tag == _tag(STANZAS, "text"):
            text = (child.text or "").strip()[:300] or None
        elif child.tag.startswith(f"{{{STANZAS}}}"):
            condition = child.tag.rpartition("}")[2]
    return condition, text


def classify(xml: ET.Element, own_bare: str) -> Inbound:
    """What this <message/> is. Never raises on odd input: odd input is `Unusable`."""
    if xml.tag != _tag(CLIENT, "message"):
        return Unusable(f"not a message: {xml.tag[:80]}")
    sender = _sender(xml.get("from"), own_bare)
    if sender is None:
        return Unusable("unparsable from")
    stanza_type = xml.get("type") or "normal"

    result = xml.find(_tag(MAM, "result"))
    if result is not None:
        if sender.bare != own_bare:
            return Unusable("archive result not from our own account", sender)
        forwarded = result.find(_tag(FORWARD, "forwarded"))
        inner = forwarded.find(_tag(CLIENT, "message")) if forwarded is not None else None
        archive_id = _short(result.get("id"))
        if archive_id is None:
            return Unusable("archive result without an id", sender)
        return ArchiveResult(
            queryid=result.get("queryid") or "", archive_id=archive_id,
            stamp=_stamp(forwarded.find(_tag(DELAY, "delay")) if forwarded is not None
                         else None),
            inner=inner,
        )
    if any(child.tag.startswith(f"{{{CARBONS}}}") for child in xml):
        return Unusable("carbon copy (carbons are not enabled; never unwrapped)", sender)
    if stanza_type == "error":
        condition, text = _error(xml)
        return Bounce(sender, _short(xml.get("id")), condition, text)
    if stanza_type == "groupchat":
        return Unusable("groupchat message (the gateway joins no rooms)", sender)
    if stanza_type == "headline":
        return Unusable("headline message (notifications are not conversations)", sender)
    if stanza_type not in ("chat", "normal"):
        return Unusable(f"unknown message type {stanza_type[:20]!r}", sender)

    body = _body(xml)
    chat_state = _chat_state(xml)
    if body is None:
        received = xml.find(_tag(RECEIPTS, "received"))
        if received is not None and _short(received.get("id")):
            return Receipt(sender, received.get("id") or "", "delivered")
        for marker, status in (("displayed", "read"), ("acknowledged", "read"),
                               ("received", "delivered")):
            element = xml.find(_tag(MARKERS, marker))
            if element is not None and _short(element.get("id")):
                return Receipt(sender, element.get("id") or "", status)
        if chat_state is not None:
            return ChatState(sender, chat_state)
        return Unusable("message without a body, receipt or chat state", sender)

    origin = xml.find(_tag(SID, "origin-id"))
    urls = tuple(
        (x.findtext(_tag(OOB, "url")) or "").strip()
        for x in xml.findall(_tag(OOB, "x"))[:_MAX_URLS]
    )
    nick = (xml.findtext(_tag(NICK, "nick")) or "").strip()[:100] or None
    return Chat(
        sender=sender, body=body, stanza_type=stanza_type,
        message_id=_short(xml.get("id")),
        origin_id=_short(origin.get("id")) if origin is not None else None,
        archive_id=_own_stanza_id(xml, own_bare),
        stamp=_stamp(xml.find(_tag(DELAY, "delay"))),
        wants_receipt=xml.find(_tag(RECEIPTS, "request")) is not None,
        markable=xml.find(_tag(MARKERS, "markable")) is not None,
        urls=tuple(u for u in urls if u.startswith(("https://", "http://"))),
        nick=nick, chat_state=chat_state,
    )


def unwrap_archived(result: ArchiveResult, own_bare: str) -> Inbound:
    """The archived message inside a MAM result, positioned by the archive (its id and time),
    never by ids inside the copy."""
    if result.inner is None:
        return Unusable("archive result without a forwarded message")
    inner = classify(result.inner, own_bare)
    if isinstance(inner, Chat):
        return Chat(
            sender=inner.sender, body=inner.body, stanza_type=inner.stanza_type,
            message_id=inner.message_id, origin_id=inner.origin_id,
            archive_id=result.archive_id, stamp=result.stamp or inner.stamp,
            wants_receipt=inner.wants_receipt,  # answered if stored only now
            markable=False, urls=inner.urls, nick=inner.nick, chat_state=None,
        )
    if isinstance(inner, ArchiveResult):
        return Unusable("archive result inside an archive result")
    return inner
