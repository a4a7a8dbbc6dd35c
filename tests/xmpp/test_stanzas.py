"""Reading inbound <message/> stanzas: what each is, and odd input never raising."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from connectors.xmpp.stanzas import (
    ArchiveResult,
    Bounce,
    Chat,
    ChatState,
    Receipt,
    Unusable,
    classify,
    unwrap_archived,
)

OWN = "gw@example.org"


def read(xml: str):
    return classify(ET.fromstring(xml), OWN)


def test_a_chat_message_with_ids_delay_and_attachments():
    chat = read("""<message xmlns='jabber:client' from='Ann@Example.org/Phone' type='chat' id='m1'>
      <body>hello</body><origin-id xmlns='urn:xmpp:sid:0' id='o1'/>
      <stanza-id xmlns='urn:xmpp:sid:0' by='gw@example.org' id='arch-1'/>
      <stanza-id xmlns='urn:xmpp:sid:0' by='mallory@example.org' id='forged'/>
      <delay xmlns='urn:xmpp:delay' stamp='2026-12-01T20:16:48Z'/>
      <request xmlns='urn:xmpp:receipts'/>
      <x xmlns='jabber:x:oob'><url>https://files.example.org/a.jpg</url></x>
      <x xmlns='jabber:x:oob'><url>javascript:alert(1)</url></x>
      <nick xmlns='http://jabber.org/protocol/nick'>Ann</nick></message>""")
    assert isinstance(chat, Chat)
    assert (chat.sender.full, chat.sender.bare) == ("ann@example.org/Phone", "ann@example.org")
    assert (chat.body, chat.message_id, chat.origin_id, chat.archive_id) == \
        ("hello", "m1", "o1", "arch-1")
    assert chat.stamp is not None and chat.stamp.year == 2026
    assert chat.wants_receipt and chat.urls == ("https://files.example.org/a.jpg",)
    assert chat.nick == "Ann"


def test_the_body_in_the_stanza_language_wins():
    chat = read("<message xmlns='jabber:client' from='a@b/c' xml:lang='de'>"
                "<body xml:lang='en'>hello</body><body>hallo</body></message>")
    assert isinstance(chat, Chat) and chat.body == "hallo"


def test_receipts_markers_states_and_bounces():
    assert read("<message xmlns='jabber:client' from='a@b/c'><received "
                "xmlns='urn:xmpp:receipts' id='x'/></message>") == \
        Receipt(read("<message xmlns='jabber:client' from='a@b/c'><body>q</body></message>")
                .sender, "x", "delivered")
    marker = read("<message xmlns='jabber:client' from='a@b/c'><displayed "
                  "xmlns='urn:xmpp:chat-markers:0' id='x'/></message>")
    assert isinstance(marker, Receipt) and marker.status == "read"
    state = read("<message xmlns='jabber:client' from='a@b/c' type='chat'><paused "
                 "xmlns='http://jabber.org/protocol/chatstates'/></message>")
    assert isinstance(state, ChatState) and state.state == "paused"
    bounce = read("<message xmlns='jabber:client' from='a@b' type='error' id='gw1.x.y'>"
                  "<error type='cancel'><service-unavailable "
                  "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text "
                  "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>gone</text></error></message>")
    assert bounce == Bounce(bounce.sender, "gw1.x.y", "service-unavailable", "gone")


def test_what_the_gateway_does_not_use_is_unusable_with_a_reason():
    for xml, reason in [
        ("<message xmlns='jabber:client' from='a@b/c' type='groupchat'><body>x</body></message>",
         "groupchat"),
        ("<message xmlns='jabber:client' from='a@b/c' type='headline'><body>x</body></message>",
         "headline"),
        ("<message xmlns='jabber:client' from='a@b/c'><received xmlns='urn:xmpp:carbons:2'>"
         "<forwarded xmlns='urn:xmpp:forward:0'/></received></message>", "carbon"),
        ("<message xmlns='jabber:client' from='@@@'><body>x</body></message>", "from"),
        ("<message xmlns='jabber:client' from='a@b/c'><x xmlns='urn:odd'/></message>",
         "without a body"),
        ("<presence xmlns='jabber:client'/>", "not a message"),
    ]:
        result = read(xml)
        assert isinstance(result, Unusable) and reason in result.reason, (xml, result)


def test_archive_results_count_only_from_our_own_account():
    inner = ("<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='urn:xmpp:delay' "
             "stamp='2026-12-01T20:00:00Z'/><message xmlns='jabber:client' from='ann@b/p' "
             "to='gw@example.org' id='m'><body>archived</body><stanza-id xmlns='urn:xmpp:sid:0'"
             " by='gw@example.org' id='inner-forged'/></message></forwarded>")
    ours = read(f"<message xmlns='jabber:client' from='gw@example.org'><result "
                f"xmlns='urn:xmpp:mam:2' queryid='q1' id='A9'>{inner}</result></message>")
    assert isinstance(ours, ArchiveResult) and (ours.queryid, ours.archive_id) == ("q1", "A9")
    chat = unwrap_archived(ours, OWN)
    assert isinstance(chat, Chat) and chat.archive_id == "A9"  # the archive's id, not the copy's
    assert chat.body == "archived" and chat.stamp is not None and chat.stamp.hour == 20
    forged = read(f"<message xmlns='jabber:client' from='mallory@example.org'><result "
                  f"xmlns='urn:xmpp:mam:2' queryid='q1' id='A9'>{inner}</result></message>")
    assert isinstance(forged, Unusable)


_NAMESPACES = ["jabber:client", "urn:xmpp:receipts", "urn:xmpp:sid:0", "urn:xmpp:mam:2",
               "urn:xmpp:forward:0", "urn:xmpp:delay", "urn:xmpp:carbons:2",
               "http://jabber.org/protocol/chatstates", "urn:xmpp:chat-markers:0", "urn:odd"]
_NAMES = ["message", "body", "result", "forwarded", "received", "request", "stanza-id",
          "origin-id", "delay", "error", "composing", "displayed", "x", "url", "nick"]
_ATTRS = st.dictionaries(st.sampled_from(["id", "from", "type", "by", "stamp", "queryid"]),
                         st.text(max_size=30), max_size=4)


def _element():
    leaf = st.builds(lambda ns, name, attrs, text: (ns, name, attrs, text, []),
                     st.sampled_from(_NAMESPACES), st.sampled_from(_NAMES), _ATTRS,
                     st.none() | st.text(max_size=30))
    return st.recursive(leaf, lambda children: st.builds(
        lambda ns, name, attrs, text, kids: (ns, name, attrs, text, kids),
        st.sampled_from(_NAMESPACES), st.sampled_from(_NAMES), _ATTRS,
        st.none() | st.text(max_size=30), st.lists(children, max_size=4)), max_leaves=20)


def _build(spec) -> ET.Element:
    ns, name, attrs, text, kids = spec
    element = ET.Element(f"{{{ns}}}{name}", {k: v for k, v in attrs.items()})
    element.text = text
    for kid in kids:
        element.append(_build(kid))
    return element


@given(_element(), st.sampled_from(["chat", "normal", "error", "groupchat", "", "x"]))
def test_odd_stanzas_never_raise(spec, kind):
    root = _build(("jabber:client", "message", {"type": kind, "from": "ann@b/c"}, None,
                   [spec]))
    result = classify(root, OWN)
    assert isinstance(result, (Chat, Receipt, ChatState, Bounce, ArchiveResult, Unusable))
    if isinstance(result, ArchiveResult):
        raise AssertionError("an archive result from someone else was accepted")
    if isinstance(result, Chat):
        assert result.archive_id is None or isinstance(result.archive_id, str)
