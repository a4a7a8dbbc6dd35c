"""The SIP message layer (`connectors/sip/message.py`): headers, URIs, parsing, framing,
serialization and answers, plus property tests that feed it garbage and mutated messages."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from connectors.sip.answers import error_response_for, make_response, salvage_request
from connectors.sip.errors import LocalProtocolError, RemoteProtocolError
from connectors.sip.framing import (
    KeepAlive,
    MalformedMessage,
    StreamFramer,
    is_keepalive,
    parse_datagram,
)
from connectors.sip.grammar import CSeq, NameAddr, SipUri, Via, new_branch, split_list
from connectors.sip.headers import Headers
from connectors.sip.message import SipRequest, SipResponse, serialize

SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\ns=-\r\n"
    b"c=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)
RINGING = (
    b"SIP/2.0 180 Ringing\r\n"
    b"Via: SIP/2.0/UDP server10.biloxi.example.com;branch=z9hG4bK4b43c2ff8.1;"
    b"received=192.0.2.3\r\n"
    b"Via: SIP/2.0/UDP bigbox3.site3.atlanta.example.com;branch=z9hG4bK77ef4c2312983.1"
    b";received=192.0.2.2, SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds"
    b";received=192.0.2.1\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)
REGISTER = (
    b"REGISTER sip:registrar.biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"From: Bob <sip:bob@biloxi.example.com>;tag=456248\r\n"
    b"Call-ID: 843817637684230@998sdasdh09\r\n"
    b"CSeq: 1826 REGISTER\r\n"
    b"Contact: <sip:bob@192.0.2.4>;expires=7200, \"Bob, mobile\" <sip:bob@[2001:db8::4]:5070"
    b";transport=tcp>;q=0.5\r\n"
    b"Content-Length: 0\r\n\r\n"
)


# --- headers ------------------------------------------------------------------------------


def test_headers_are_case_insensitive_and_compact_forms_are_long_names() -> None:
    h = Headers([("v", "SIP/2.0/UDP a;branch=z9hG4bK1"), ("VIA", "SIP/2.0/UDP b"), ("i", "x@y")])
    assert h.get("via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert h.get_all("Via") == ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/UDP b"]
    assert h.get("Call-ID") == h.get("call-id") == h.get("i") == "x@y"
    assert [name for name, _ in h] == ["Via", "Via", "Call-ID"]
    assert "CALL-ID" in h and "Route" not in h
    assert h.get("Route", "none") == "none"


def test_headers_set_add_remove_keep_order() -> None:
    h = Headers([("Via", "v1"), ("To", "t"), ("Via", "v2"), ("From", "f")])
    h.set("via", "v0")
    assert h.items() == [("Via", "v0"), ("To", "t"), ("From", "f")]
    h.add("Via", "vtop", first=True)
    h.add("Record-Route", "<sip:p;lr>", first=True)  # none yet: goes to the top
    assert h.items()[:3] == [("Record-Route", "<sip:p;lr>"), ("Via", "vtop"), ("Via", "v0")]
    assert h.remove("via") == 2 and h.get("Via") is None
    h.set("X-Conversation-Id", "c-1")
    assert h.get("x-conversation-id") == "c-1"
    assert h == Headers([("record-route", "<sip:p;lr>"), ("t", "t"), ("f", "f"),
                         ("X-Conversation-ID", "c-1")])


def test_headers_pop_first_value_splits_a_comma_joined_via() -> None:
    h = Headers([("Via", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b"), ("Via", "SIP/2.0/UDP c")])
    assert h.pop_first_value("Via") == "SIP/2.0/UDP a;branch=z9hG4bK1"
    assert h.get_all("Via") == ["SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert h.pop_first_value("Via") == "SIP/2.0/UDP b"
    assert h.get_all("Via") == ["SIP/2.0/UDP c"]


@pytest.mark.parametrize("value", ["a\r\nInjected: yes", "a\nb", "a\rb"])
def test_header_values_cannot_smuggle_line_breaks(value: str) -> None:
    with pytest.raises(LocalProtocolError):
        Headers().add("Subject", value)
    with pytest.raises(LocalProtocolError):
        Headers().set("Subject", value)


def test_header_names_must_be_tokens() -> None:
    with pytest.raises(LocalProtocolError):
        Headers().add("Bad Name", "x")
    with pytest.raises(LocalProtocolError):
        Headers().add("Bad:Name", "x")


def test_split_list_respects_quotes_and_angle_brackets() -> None:
    value = '"Bob, mobile" <sip:bob@a.example;x=1,2>;q=0.5 ,<sip:b@c>, , sip:d@e'
    assert split_list(value) == [
        '"Bob, mobile" <sip:bob@a.example;x=1,2>;q=0.5', "<sip:b@c>", "sip:d@e",
    ]
    assert split_list('"a\\",b" <sip:x@y>') == ['"a\\",b" <sip:x@y>']


# --- URIs and structured values -----------------------------------------------------------


def test_sip_uri_components() -> None:
    uri = SipUri.parse("sips:alice:secret@Atlanta.example.com:5061;transport=TLS;lr?subject=hi&x=")
    assert (uri.scheme, uri.user, uri.password) == ("sips", "alice", "secret")
    assert (uri.host, uri.port) == ("Atlanta.example.com", 5061)
    assert uri.params == (("transport", "TLS"), ("lr", None))
    assert uri.transport == "tls" and uri.lr
    assert uri.headers == (("subject", "hi"), ("x", ""))
    assert SipUri.parse(str(uri)) == uri


def test_sip_uri_ipv6_hosts_keep_their_brackets() -> None:
    uri = SipUri.parse("sip:[2001:db8::10]:5070;maddr=[2001:db8::11]")
    assert (uri.host, uri.port, uri.host_port) == ("[2001:db8::10]", 5070, "[2001:db8::10]:5070")
    assert uri.param("maddr") == "[2001:db8::11]"
    assert SipUri.parse("SIP:[::1]").host == "[::1]"


@pytest.mark.parametrize(
    "text",
    [
        "sip:", "sip:@host", "sip:user@", "sip:host:99999", "sip:host:5x", "sip:[::1",
        "sip:[::1]x", "sip:a b@host", "sip:host;=x", "sip:host?noequals", "sip:user@a@b",
        "sip:host;p=%zz", "tel:+15551234", "http://example.com", "sip:-bad.host-",
    ],
)
def test_bad_sip_uris_raise_remote_protocol_error(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        SipUri.parse(text)


def test_via_parsing_and_rport() -> None:
    via = Via.parse("SIP/2.0/udp [2001:db8::1]:5060 ; branch=z9hG4bKabc ; rport")
    assert (via.transport, via.host, via.port, via.sent_by) == (
        "UDP", "[2001:db8::1]", 5060, "[2001:db8::1]:5060")
    assert via.branch == "z9hG4bKabc" and via.wants_rport and via.rport is None
    answered = via.with_param("received", "2001:db8::9").with_param("rport", "40123")
    assert answered.rport == 40123 and answered.received == "2001:db8::9"
    assert str(answered) == (
        "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKabc;rport=40123;received=2001:db8::9")
    assert Via.parse(str(answered)) == answered


@pytest.mark.parametrize(
    "text",
    ["SIP/2.0/UDP", "SIP/2.0 UDP host", "SIP/3.0/UDP host", "SIP/2.0/UDP host;;branch=x",
     "SIP/2.0/UDP host;branch=", "SIP/2.0/UDP host:70000", "SIP/2.0/UDP host junk",
     'SIP/2.0/UDP host;x="unterminated'],
)
def test_bad_vias_raise(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        Via.parse(text)


def test_name_addr_forms() -> None:
    a = NameAddr.parse('"Alice \\"A\\" Liddell" <sip:alice@example.com;transport=tcp>;tag=9fx')
    assert a.display == 'Alice "A" Liddell' and a.tag == "9fx"
    assert a.sip_uri().transport == "tcp"
    # addr-spec form: the parameters belong to the header, not to the URI
    b = NameAddr.parse("sip:bob@example.com;tag=1;expires=60")
    assert b.uri == "sip:bob@example.com" and b.param("expires") == "60" and b.display is None
    c = NameAddr.parse("Bob Smith <tel:+14155550100>")
    assert c.display == "Bob Smith" and c.uri == "tel:+14155550100"
    assert NameAddr.parse("*").uri == "*"
    tagged = NameAddr.parse("<sip:x@y>").with_tag("abc")
    assert str(tagged) == "<sip:x@y>;tag=abc" and NameAddr.parse(str(tagged)) == tagged
    d = NameAddr.parse('<sip:x@y>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"')
    assert d.param("+sip.instance") == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
    assert NameAddr.parse(str(d)) == d


@pytest.mark.parametrize(
    "text",
    ["", "<sip:x@y", '"open <sip:x@y>', "a, b <sip:x@y>", "< sip:x@y>", "<>", "<sip:x@y> junk",
     "sip:x@y?h=1", "nocolon", "<sip:x@y>;=", '"d" sip:x@y'],
)
def test_bad_name_addrs_raise(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        NameAddr.parse(text)


def test_cseq() -> None:
    assert CSeq.parse("  0101\tINVITE ") == CSeq(101, "INVITE")
    assert str(CSeq(4294967295, "BYE")) == "4294967295 BYE"
    for bad in ("", "1", "x INVITE", "4294967296 INVITE", "1 IN VITE", "-1 BYE", "１ BYE"):
        with pytest.raises(RemoteProtocolError):
            CSeq.parse(bad)


# --- parsing datagrams --------------------------------------------------------------------


def test_invite_parses_into_a_typed_request() -> None:
    m = parse_datagram(INVITE)
    assert isinstance(m, SipRequest)
    assert (m.method, m.uri) == ("INVITE", "sip:bob@biloxi.example.com")
    assert m.request_uri.user == "bob"
    assert m.top_via.branch == "z9hG4bK776asdhds" and m.top_via.port == 5060
    assert m.from_addr.tag == "1928301774" and m.to_addr.tag is None
    assert m.cseq == CSeq(314159, "INVITE")
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert m.max_forwards == 70 and m.body == SDP
    assert m.contacts[0].uri == "sip:alice@pc33.atlanta.example.com"


def test_response_with_comma_joined_vias() -> None:
    m = parse_datagram(RINGING)
    assert isinstance(m, SipResponse) and (m.status, m.reason) == (180, "Ringing")
    assert [v.received for v in m.vias] == ["192.0.2.3", "192.0.2.2", "192.0.2.1"]
    assert m.to_addr.tag == "a6c85cf"


def test_contact_list_with_quoted_commas_and_ipv6() -> None:
    contacts = parse_datagram(REGISTER).contacts
    assert [c.display for c in contacts] == [None, "Bob, mobile"]
    assert contacts[0].param("expires") == "7200"
    assert contacts[1].sip_uri().host == "[2001:db8::4]" and contacts[1].param("q") == "0.5"


def test_datagram_body_is_the_rest_without_content_length_and_cut_to_it_with() -> None:
    no_length = INVITE.replace(b"Content-Length: " + str(len(SDP)).encode() + b"\r\n", b"")
    assert parse_datagram(no_length).body == SDP
    short = INVITE.replace(b"Content-Length: " + str(len(SDP)).encode(), b"Content-Length: 5")
    assert parse_datagram(short).body == SDP[:5]
    with pytest.raises(RemoteProtocolError):
        parse_datagram(INVITE[:-1])  # one octet short of Content-Length


def test_leading_crlf_lf_line_ends_and_keepalives() -> None:
    assert parse_datagram(b"\r\n\r\n" + INVITE).method == "INVITE"  # type: ignore[union-attr]
    head, body = INVITE.split(b"\r\n\r\n", 1)
    m = parse_datagram(head.replace(b"\r\n", b"\n") + b"\n\n" + body)
    assert m.body == SDP
    assert m.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert is_keepalive(b"\r\n\r\n") and is_keepalive(b"\r\n") and not is_keepalive(INVITE)
    with pytest.raises(RemoteProtocolError):
        parse_datagram(b"\r\n\r\n")


@pytest.mark.parametrize(
    "data",
    [
        b"", b"INVITE", b"INVITE sip:a@b SIP/2.0\r\n", b"\x00\x01\x02\r\n\r\n",
        INVITE.replace(b"Call-ID", b"Call ID"),
        INVITE.replace(b"\r\nTo:", b"\r\nTo\r\n"),
        INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"),
        INVITE.replace(b"SIP/2.0\r\n", b"SIP/2.0 \r\n extra\r\n", 1),
        INVITE.replace(b"Max-Forwards", b" Max-Forwards", 1).replace(b"Via", b"\tVia", 1),
        INVITE.replace(b"a84b4c76", b"a84 b4c76"),
        INVITE.replace(b"\r\nTo", b"\rTo"),
        b"SIP/2.0 99 Too Low\r\n" + RINGING.split(b"\r\n", 1)[1],
        b"SIP/2.0 200\xff OK\r\n" + RINGING.split(b"\r\n", 1)[1],
        b"INV\xc3\xa9TE sip:a@b SIP/2.0\r\n" + INVITE.split(b"\r\n", 1)[1],
    ],
)
def test_malformed_datagrams_raise_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_datagram(data)


def test_non_utf8_octets_survive_a_round_trip() -> None:
    data = INVITE.replace(b"Bob <sip", b"\xe9\xff <sip")  # Latin-1 display name
    m = parse_datagram(data)
    assert m.to_bytes() == data


# --- serializing --------------------------------------------------------------------------


def test_serialize_writes_crlf_long_names_and_recomputes_content_length() -> None:
    m = parse_datagram(INVITE.replace(b"Max-Forwards", b"max-forwards").replace(b"Call-ID", b"i"))
    assert isinstance(m, SipRequest)
    out = SipRequest(m.method, m.uri, m.headers, b"v=0\r\n").to_bytes()
    head, body = out.split(b"\r\n\r\n", 1)
    assert body == b"v=0\r\n"
    assert b"\r\nContent-Length: 5" in head and b"\r\nCall-ID: a84b" in head
    assert b"\r\nMax-Forwards: 70" in head and b"\n\n" not in out.replace(b"\r\n", b"")


def test_serialize_adds_content_length_and_refuses_what_peers_would_choke_on() -> None:
    req = SipRequest("OPTIONS", "sip:gw@127.0.0.1", Headers([("Via", "SIP/2.0/UDP h")]))
    assert req.to_bytes().endswith(b"Content-Length: 0\r\n\r\n")
    with pytest.raises(LocalProtocolError):
        serialize(SipRequest("BAD METHOD", "sip:a@b"))
    with pytest.raises(LocalProtocolError):
        serialize(SipRequest("OPTIONS", "sip:a@b c"))
    with pytest.raises(LocalProtocolError):
        serialize(SipResponse(700, "Nope"))
    with pytest.raises(LocalProtocolError):
        serialize(SipResponse(200, "OK\r\nX: y"))


def test_an_outbound_invite_built_from_parts_parses_back() -> None:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={new_branch()};rport")
    headers.add("Max-Forwards", "70")
    headers.add("From", str(NameAddr(uri="sip:gateway@127.0.0.1", display="Gateway").with_tag("1")))
    headers.add("To", str(NameAddr(uri="sip:agent@127.0.0.1:5070")))
    headers.add("Call-ID", "c1@127.0.0.1")
    headers.add("CSeq", str(CSeq(1, "INVITE")))
    headers.add("Call-Info", "<http://127.0.0.1:8080/api/v1/contexts/tok>;purpose=info")
    headers.add("X-Conversation-Id", "conv-1")
    req = SipRequest("INVITE", "sip:agent@127.0.0.1:5070", headers, SDP)
    again = parse_datagram(req.to_bytes())
    assert again.to_bytes() == req.to_bytes()
    assert again.headers.get("Content-Length") == str(len(SDP))  # added when sent
    call_info = "<http://127.0.0.1:8080/api/v1/contexts/tok>;purpose=info"
    assert again.headers.get("call-info") == call_info


# --- answering ----------------------------------------------------------------------------


def test_make_response_copies_the_rfc_3261_8_2_6_headers() -> None:
    req = parse_datagram(RINGING.replace(b"SIP/2.0 180 Ringing", b"BYE sip:bob@192.0.2.4 SIP/2.0")
                         .replace(b"CSeq: 314159 INVITE", b"CSeq: 314160 BYE"))
    assert isinstance(req, SipRequest)
    resp = make_response(req, 200, extra_headers=[("Server", "continuity-gateway")])
    assert (resp.status, resp.reason) == (200, "OK")
    assert resp.headers.get_all("Via") == req.headers.get_all("Via")
    assert resp.headers.get("From") == req.headers.get("From")
    assert resp.to_addr.tag == "a6c85cf"  # an existing To tag is kept
    assert (resp.call_id, resp.cseq) == (req.call_id, req.cseq)
    assert resp.headers.get("Server") == "continuity-gateway"
    assert parse_datagram(resp.to_bytes()).to_bytes() == resp.to_bytes()


def test_make_response_adds_a_to_tag_except_on_100_trying() -> None:
    req = parse_datagram(INVITE.replace(b"CSeq: 314159", b"Timestamp: 54\r\nCSeq: 314159"))
    assert isinstance(req, SipRequest)
    trying = make_response(req, 100)
    assert trying.to_addr.tag is None and trying.headers.get("Timestamp") == "54"
    ringing = make_response(req, 180, to_tag="local1")
    assert ringing.to_addr.tag == "local1" and ringing.headers.get("Timestamp") is None
    assert ringing.headers.get("To") == "Bob <sip:bob@biloxi.example.com>;tag=local1"
    busy = make_response(req, 486)
    assert busy.reason == "Busy Here" and busy.to_addr.tag
    assert make_response(req, 299).reason == "OK"  # unknown code: reason of its class


def test_salvage_answers_only_what_can_be_routed() -> None:
    broken = INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 INVITE\r\nCSeq: 2 INVITE")
    with pytest.raises(RemoteProtocolError) as caught:
        parse_datagram(broken)
    answer = error_response_for(broken, caught.value)
    assert answer is not None and answer.status == 400
    assert answer.top_via.branch == "z9hG4bK776asdhds" and answer.cseq.number == 314159
    assert salvage_request(RINGING) is None  # responses are never answered
    assert salvage_request(broken.replace(b"INVITE sip", b"ACK sip", 1)) is None
    assert salvage_request(broken.replace(b"\r\nVia: ", b"\r\nVia: junk ")) is None
    assert salvage_request(b"\x16\x03\x01garbage") is None


# --- stream framing -----------------------------------------------------------------------


def test_framer_cuts_messages_and_keepalives_out_of_a_stream() -> None:
    framer = StreamFramer()
    framer.feed(b"\r\n\r\n" + INVITE + REGISTER[:50])
    events = list(framer)
    assert isinstance(events[0], KeepAlive) and events[1] == parse_datagram(INVITE)
    assert len(events) == 2
    framer.feed(REGISTER[50:] + b"\r\n" + RINGING)  # a stray CRLF (a pong) between messages
    assert list(framer) == [parse_datagram(REGISTER), parse_datagram(RINGING)]
    assert framer.buffered == 0 and framer.next_event() is None


def test_framer_waits_for_the_whole_body() -> None:
    framer = StreamFramer()
    framer.feed(INVITE[:-10])
    assert framer.next_event() is None
    framer.feed(INVITE[-10:])
    assert framer.next_event() == parse_datagram(INVITE)


def test_framer_needs_content_length_and_breaks_on_bad_framing() -> None:
    framer = StreamFramer()
    framer.feed(INVITE.replace(b"Content-Length: " + str(len(SDP)).encode() + b"\r\n", b""))
    with pytest.raises(RemoteProtocolError):
        framer.next_event()
    assert framer.broken
    framer.feed(INVITE)
    with pytest.raises(RemoteProtocolError):
        framer.next_event()


def test_framer_limits_head_and_body_sizes() -> None:
    framer = StreamFramer(max_head=200)
    framer.feed(b"INVITE sip:a@b SIP/2.0\r\nX-Pad: " + b"a" * 300)
    with pytest.raises(RemoteProtocolError) as caught:
        framer.next_event()
    assert caught.value.status_hint == 513
    framer = StreamFramer(max_body=10)
    framer.feed(INVITE)
    with pytest.raises(RemoteProtocolError):
        framer.next_event()


def test_framer_skips_a_malformed_but_framed_message_and_carries_on() -> None:
    bad = INVITE.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE")
    framer = StreamFramer()
    framer.feed(bad + REGISTER)
    first, second = list(framer)
    assert isinstance(first, MalformedMessage) and first.raw == bad
    assert error_response_for(first.raw, first.error) is not None
    assert second == parse_datagram(REGISTER) and not framer.broken


# --- properties ---------------------------------------------------------------------------

CORPUS = [INVITE, RINGING, REGISTER]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def touch_everything(message: SipRequest | SipResponse) -> None:
    """Read every typed view; each may raise RemoteProtocolError and nothing else."""
    for read in (
        lambda: message.vias, lambda: message.top_via, lambda: message.cseq,
        lambda: message.from_addr, lambda: message.to_addr, lambda: message.contacts,
        lambda: message.routes, lambda: message.record_routes, lambda: message.max_forwards,
        lambda: message.call_id, lambda: [str(c) for c in message.contacts],
        lambda: [c.sip_uri() for c in message.contacts],
        lambda: [v.rport for v in message.vias],
        lambda: str(message.to_addr.with_tag("t")),
        lambda: make_response(message, 400) if isinstance(message, SipRequest) else None,
        lambda: message.request_uri if isinstance(message, SipRequest) else None,
    ):
        try:
            read()
        except RemoteProtocolError:
            pass


def check_only_remote_errors(data: bytes) -> None:
    try:
        message = parse_datagram(data)
    except RemoteProtocolError as exc:
        answer = error_response_for(data, exc)
        if answer is not None and answer.status != 505:  # a 505 copies a SIP/x.y Via
            parse_datagram(answer.to_bytes())  # our own answers always parse
        return
    touch_everything(message)
    check_round_trip(message)


def check_round_trip(message: SipRequest | SipResponse) -> None:
    wire = message.to_bytes()
    again = parse_datagram(wire)
    assert again.to_bytes() == wire
    assert again == parse_datagram(again.to_bytes())
    assert again.body == message.body
    strip = [(n, v) for n, v in message.headers if n != "Content-Length"]
    assert [(n, v) for n, v in again.headers if n != "Content-Length"] == strip


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_only_ever_raise_remote_protocol_error(data: bytes) -> None:
    check_only_remote_errors(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "splice"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(
                st.sampled_from([b" ", b"\t", b"\r\n", b"\r\n ", b",", b";", b":", b'"', b"<",
                                 b">", b"\\", b"%", b"\x00", b"\xff", b"=", b"@", b"[", b"]"])
                | st.binary(max_size=8)
            )
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 12))]
        elif op == "duplicate":
            end = data.find(b"\r\n", pos)
            if end > 0:
                data[end:end] = data[pos:end + 2]
        elif op == "splice":
            other = draw(st.sampled_from(CORPUS))
            cut = draw(st.integers(0, len(other)))
            data[pos:] = other[cut:]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_messages_only_ever_raise_remote_protocol_error(data: bytes) -> None:
    check_only_remote_errors(data)


header_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40
)


@FUZZ
@given(
    st.sampled_from(["Via", "From", "To", "Contact", "CSeq", "Route", "Max-Forwards", "X-Y"]),
    header_text,
)
def test_any_header_text_reads_or_raises_remote_protocol_error(name: str, value: str) -> None:
    headers = parse_datagram(INVITE).headers.copy()
    headers.set(name, value)
    message = SipRequest("INVITE", "sip:bob@example.com", headers)
    touch_everything(message)
    try:
        again = parse_datagram(message.to_bytes())
    except RemoteProtocolError:
        return
    check_round_trip(again)


@FUZZ
@given(header_text)
def test_uri_via_and_address_parsers_only_raise_remote_protocol_error(text: str) -> None:
    for parse in (SipUri.parse, Via.parse, NameAddr.parse, CSeq.parse):
        try:
            value = parse(text)
        except RemoteProtocolError:
            continue
        assert parse(str(value)) == value  # what we print, we read back the same


@FUZZ
@given(st.lists(st.sampled_from(CORPUS + [b"\r\n\r\n"]), min_size=1, max_size=6), st.data())
def test_framer_gives_the_same_events_however_the_stream_is_cut(
    pieces: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(pieces)
    whole = StreamFramer()
    whole.feed(stream)
    expected = list(whole)
    assert len(expected) == len(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    framer = StreamFramer()
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        framer.feed(stream[start:end])
        got.extend(framer)
    assert got == expected
    assert framer.buffered == 0


@FUZZ
@given(st.binary(max_size=400), st.data())
def test_framer_on_garbage_only_raises_remote_protocol_error(
    garbage: bytes, data: st.DataObject
) -> None:
    framer = StreamFramer(max_head=300)
    stream = garbage + INVITE
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    try:
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            framer.feed(stream[start:end])
            for event in framer:
                assume(event is not None)
    except RemoteProtocolError:
        assert framer.broken


def test_a_header_change_drops_only_the_values_parsed_from_that_header() -> None:
    request = parse_datagram(INVITE)
    assert isinstance(request, SipRequest)
    cseq, to = request.cseq, request.to_addr
    assert request.top_via.host == "pc33.atlanta.example.com"
    request.headers.set("To", "<sip:carol@chicago.example.com>;tag=9")
    assert request.to_addr.uri == "sip:carol@chicago.example.com"
    assert request.to_addr.tag == "9"
    assert request.cseq is cseq and to.tag is None
    request.headers.add("Via", "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp1", first=True)
    assert request.top_via.host == "proxy.example.com"
    assert [v.host for v in request.vias] == ["proxy.example.com", "pc33.atlanta.example.com"]
    request.headers.pop_first_value("Via")
    assert request.top_via.host == "pc33.atlanta.example.com"
    request.headers.set("Call-ID", "other-call")
    assert request.call_id == "other-call"


def test_a_copy_changes_apart_and_the_added_top_via_is_kept_parsed() -> None:
    request = parse_datagram(INVITE)
    assert isinstance(request, SipRequest)
    via = request.top_via
    copy = request.headers.copy()
    copy.add_top_via(Via(transport="UDP", host="proxy.example.com", port=5070,
                         params=(("branch", "z9hG4bKp2"), ("rport", None))))
    onward = SipRequest("INVITE", request.uri, copy, request.body)
    assert copy.get("Via") == "SIP/2.0/UDP proxy.example.com:5070;branch=z9hG4bKp2;rport"
    assert onward.top_via == Via.parse(copy.get("Via") or "")
    assert onward.cseq == request.cseq
    assert request.top_via is via
    assert len(onward.vias) == 2 and len(request.vias) == 1


def test_remove_all_drops_a_set_of_headers_in_one_pass_and_their_parsed_values() -> None:
    message = parse_datagram(INVITE)
    assert isinstance(message, SipRequest)
    headers = message.headers.copy()
    headers.add("X-Context", "t0ken")
    headers.add("x-CONTEXT", "again")
    headers.add("Route", "<sip:proxy.example.com;lr>")
    request = SipRequest("INVITE", message.uri, headers)
    assert len(request.routes) == 1
    before = len(headers)
    headers.remove_all(frozenset({"x-context", "route", "call-info"}))
    assert len(headers) == before - 3 and "X-Context" not in headers
    assert request.routes == ()  # the parsed Route went with its header
    headers.remove_all(frozenset({"x-context"}))  # nothing left to drop: unchanged
    assert len(headers) == before - 3
