"""The SIP edge over real sockets on loopback, driven by a tiny test endpoint.

Registrar (digest with SHA-256 and MD5, expiry, wildcard, 423), OPTIONS, routing with the
context headers, 100 Trying at once, 404/480/483, agent-to-agent calls with 407, PINs in
the Request-URI or a header, CANCEL, BYE from either side, ring timeout, retransmissions,
TCP; and the call's story in the transcript. Pure helpers (PIN forms, caller ID, scanner
buckets) are tested first. Real peers (SIPp, baresip, pyVoIP) are in test_sip_peers.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from connectors.sip.framing import parse_datagram
from connectors.sip.message import SipRequest, SipResponse
from connectors.sip.ratelimit import ScannerLimiter
from connectors.sip.routing import (
    ServiceUsers,
    TrustedPeers,
    attestation,
    caller_address,
    dialled,
)
from gateway.clock import FrozenClock
from tests.conftest import RunningGateway
from tests.helpers import call, code_from, whatsapp
from tests.sip_client import SDP, SipTestClient

PUBLIC_URL = "https://gw.example"
CALLER = "+14155550100"
ALICE = {"id": "12", "name": "Alice", "sip_user": "alice", "sip_password": "alice-secret"}
BOB = {"id": "13", "name": "Bob", "sip_user": "bob", "sip_password": "bob-secret"}


# ---- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "expected"), [
    ("support", ("support", None)),
    ("support*123456", ("support", "123456")),
    ("+18005550000*987654", ("+18005550000", "987654")),
    ("pin-123456", ("", "123456")),
    ("PIN-0042", ("", "0042")),
    ("support*12", ("support*12", None)),  # too short to be a PIN: part of the user
    ("a*b", ("a*b", None)),
])
def test_dialled_user_yields_the_pin_forms(user: str, expected: tuple[str, str | None]) -> None:
    got = dialled(user)
    assert (got.user, got.pin) == expected


def test_service_users_match_names_and_numbers_with_or_without_plus() -> None:
    users = ServiceUsers(["support", "+18005550000"])
    assert "Support" in users and "18005550000" in users and "+1 800 555 0000" in users
    assert "sales" not in users and "18005550001" not in users
    assert "anything" in ServiceUsers(["*"])


def _invite_from(from_: str, *extra: str) -> SipRequest:
    head = "\r\n".join([
        "INVITE sip:support@127.0.0.1 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKabc",
        f"From: {from_};tag=1", "To: <sip:support@127.0.0.1>", "Call-ID: c1",
        "CSeq: 1 INVITE", *extra, "Content-Length: 0",
    ])
    message = parse_datagram((head + "\r\n\r\n").encode())
    assert isinstance(message, SipRequest)
    return message


@pytest.mark.parametrize(("from_", "extra", "expected"), [
    ("<sip:+14155550100@trunk.example>", (), "voice:+14155550100"),
    ("<sip:14155550100@trunk.example;user=phone>", (), "voice:+14155550100"),
    ("<tel:+14155550100>", (), "voice:+14155550100"),
    ("\"Bob\" <sip:bob@Example.ORG:5070>", (), "sip:bob@example.org"),
    ("<sip:1000@pbx.example>", (), "sip:1000@pbx.example"),  # an extension, not E.164
    ("\"Anonymous\" <sip:anonymous@anonymous.invalid>", (), None),
    ("<sip:anonymous@anonymous.invalid>",
     ("P-Asserted-Identity: <sip:+442071838750@trunk.example>",), "voice:+442071838750"),
])
def test_caller_is_p_asserted_identity_then_from(
    from_: str, extra: tuple[str, ...], expected: str | None
) -> None:
    address = caller_address(_invite_from(from_, *extra))
    assert (str(address) if address else None) == expected


def test_scanner_bucket_lets_a_burst_through_then_the_rate() -> None:
    now = [0.0]
    limiter = ScannerLimiter(rate=1.0, burst=3, clock=lambda: now[0])
    assert limiter.is_scanner("friendly-scanner") and limiter.is_scanner("SIPVicious 0.3")
    assert limiter.is_scanner("sipcli/v1.8") and not limiter.is_scanner("baresip v1.0")
    assert [limiter.allow("192.0.2.9") for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow("192.0.2.10")  # another source has its own bucket
    now[0] = 1.0
    assert limiter.allow("192.0.2.9") and not limiter.allow("192.0.2.9")
    assert limiter.dropped == 3
    assert limiter.should_log("192.0.2.9") and not limiter.should_log("192.0.2.9")


def test_trusted_peers_are_addresses_and_networks() -> None:
    peers = TrustedPeers(["192.0.2.0/24", "2001:db8::1", "127.0.0.2"])
    assert "192.0.2.77" in peers and "127.0.0.2" in peers and "[2001:db8::1]" in peers
    assert "127.0.0.1" not in peers and "trunk.example" not in peers and None not in peers
    assert "127.0.0.1" not in TrustedPeers([]) and not TrustedPeers([])


def test_a_bad_trusted_peer_fails_start_naming_the_key() -> None:
    from config.settings import ConfigError, load_settings

    assert load_settings(sip_trusted_peers=[" 10.0.0.0/8", "::1"]).sip_trusted_peers == [
        "10.0.0.0/8", "::1"]
    with pytest.raises(ConfigError, match="GATEWAY_SIP_TRUSTED_PEERS"):
        load_settings(sip_trusted_peers=["trunk.example"])


@pytest.mark.parametrize(("extra", "from_", "expected"), [
    (("P-Asserted-Identity: <sip:+14155550100;verstat=TN-Validation-Passed-A@t.example;"
      "user=phone>",), "<sip:+14155550100@t.example>", "A"),
    (("P-Asserted-Identity: <tel:+14155550100;verstat=TN-Validation-Passed-c>",),
     "<sip:+14155550100@t.example>", "C"),
    ((), "<sip:+14155550100@t.example;verstat=TN-Validation-Failed>", "TN-Validation-Failed"),
    ((), "<sip:+14155550100@t.example>", None),
])
def test_verstat_attestation_is_read_from_pai_then_from(
    extra: tuple[str, ...], from_: str, expected: str | None
) -> None:
    assert attestation(_invite_from(from_, *extra)) == expected


# ---- a gateway with its SIP edge --------------------------------------------------------------


class Sip:
    """A running gateway and what the tests ask of it."""

    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw
        self.edge = gw.gw.channels["sip"].edge
        self.port: int = self.edge.port

    @property
    def core(self) -> Any:
        return self.gw.gw.core

    def uri(self, user: str) -> str:
        return f"sip:{user}@127.0.0.1:{self.port}"

    async def client(self, user: str = "caller", transport: str = "UDP") -> SipTestClient:
        return await SipTestClient(transport, user).open(self.port)

    async def phone(self, agent: dict[str, str], **kwargs: Any) -> SipTestClient:
        """An agent's phone, registered."""
        phone = await self.client(agent["sip_user"])
        answer = await phone.register(self.port, agent["sip_user"], agent["sip_password"],
                                      **kwargs)
        assert answer.status == 200, answer
        return phone

    async def bundle(self, call_info: str) -> dict[str, Any]:
        url = re.fullmatch(r"<([^>]+)>;purpose=info", call_info)
        assert url, call_info
        assert url.group(1).startswith(PUBLIC_URL + "/api/v1/contexts/")
        path = url.group(1).removeprefix(PUBLIC_URL)
        async with self.gw.http.get(self.gw.url + path) as resp:  # no bearer: a capability
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def transcript(self, conversation_id: str, *, until: str | None = None,
                         timeout: float = 5.0) -> list[str]:
        """The conversation's transcript texts, once one contains `until` (events are
        recorded in the background, after the SIP message that caused them)."""
        return await self.gw.conversation_texts(conversation_id, until, timeout)

    async def conversation(self, conversation_id: str) -> dict[str, Any]:
        status, conv = await self.gw.api("GET", f"/api/v1/conversations/{conversation_id}")
        assert status == 200, conv
        return conv


async def start_sip(start_gateway: Any, **overrides: Any) -> Sip:
    overrides.setdefault("agents", [ALICE, BOB])
    overrides.setdefault("sip_service_users", ["support", "+18005550000"])
    overrides.setdefault("sip_timer_t1_ms", 100)  # retransmissions within a test's patience
    gw = await start_gateway(public_url=PUBLIC_URL, sip_port=0, **overrides)
    return Sip(gw)


async def upstream_leg(sip: Sip) -> Any:
    """A leg an upstream edge (Twilio Voice) opened after the caller's PIN, as `X-Context`
    would name it: the core's answer, with its `context_token`."""
    chat = await sip.core.ingest(whatsapp(CALLER, "please call me"))
    status, body = await sip.gw.api(
        "POST", f"/api/v1/conversations/{chat.conversation_id}/escalations",
        json={"channel": "voice", "mode": "dial-in"})
    assert status == 201, body
    sent = await sip.gw.memory.wait_for(1)
    pin = code_from(next(m.text for m in sent if m.text and "PIN" in m.text))
    return await sip.core.open_call(call(CALLER, pin=pin, call_ref="CAupstream"))


@pytest.fixture
async def sip(start_gateway: Any) -> Sip:
    return await start_sip(start_gateway)


async def call_in(sip: Sip, caller: SipTestClient, agent_phone: SipTestClient,
                  user: str = "support", *, from_number: str = CALLER,
                  headers: tuple[tuple[str, str], ...] = ()) -> tuple[SipRequest, SipRequest]:
    """The caller INVITEs `user`; returns (what the caller sent, what the agent got)."""
    invite = caller.request(
        "INVITE", sip.uri(user), from_=f"<sip:{from_number}@127.0.0.1>;tag=c{caller.port}",
        headers=headers, body=SDP,
    )
    caller.send(invite, sip.port)
    trying = await caller.expect(100)
    assert isinstance(trying, SipResponse)
    got = await agent_phone.expect("INVITE")
    assert isinstance(got, SipRequest)
    return invite, got


# ---- registrar and OPTIONS ----------------------------------------------------------------


async def test_options_is_answered_over_udp_and_tcp(sip: Sip) -> None:
    for transport in ("UDP", "TCP"):
        async with await sip.client(transport=transport) as probe:
            probe.send(probe.request("OPTIONS", sip.uri("support")), sip.port)
            answer = await probe.expect(200)
            assert "INVITE" in (answer.headers.get("Allow") or "")


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
async def test_agent_registers_with_digest_and_gets_its_binding_back(
    sip: Sip, algorithm: str
) -> None:
    async with await sip.client("alice") as phone:
        answer = await phone.register(sip.port, "alice", "alice-secret", expires=120,
                                      algorithm=algorithm)
        assert answer.status == 200
        assert answer.headers.get("Contact") == (
            f"<sip:alice@127.0.0.1:{phone.port}>;expires=120")
    agent = sip.gw.gw.agents.by_sip_user("alice")
    assert agent is not None and len(agent.registrations) == 1


async def test_first_register_is_challenged_with_sha256_before_md5(sip: Sip) -> None:
    async with await sip.client("alice") as phone:
        phone.send(phone.request("REGISTER", f"sip:127.0.0.1:{sip.port}",
                                 to=f"<sip:alice@127.0.0.1:{sip.port}>"), sip.port)
        challenge = await phone.expect(401)
        offered = challenge.headers.get_all("WWW-Authenticate")
        assert [re.search(r"algorithm=([\w-]+)", c).group(1) for c in offered] == [  # type: ignore[union-attr]
            "SHA-256", "MD5"]
        assert all('realm="gateway"' in c and 'qop="auth"' in c for c in offered)


async def test_wrong_password_or_someone_elses_user_is_forbidden(sip: Sip) -> None:
    async with await sip.client("alice") as phone:
        answer = await phone.register(sip.port, "alice", "guess")
        assert answer.status == 403
        stranger = await phone.register(sip.port, "mallory", "whatever")
        assert stranger.status == 403
    assert not sip.gw.gw.agents.by_sip_user("alice").registrations  # type: ignore[union-attr]


async def test_too_short_an_interval_gets_423_with_min_expires(sip: Sip) -> None:
    async with await sip.client("alice") as phone:
        answer = await phone.register(sip.port, "alice", "alice-secret", expires=10)
        assert answer.status == 423
        assert answer.headers.get("Min-Expires") == "60"


async def test_registration_expires_and_wildcard_removes_it(start_gateway: Any) -> None:
    clock = FrozenClock()
    sip = await start_sip(start_gateway, clock=clock, agents=[ALICE])
    async with await sip.phone(ALICE, expires=60) as phone, await sip.client() as caller:
        clock.advance(seconds=61)  # the binding has lapsed: nobody to take the call
        caller.send(caller.request("INVITE", sip.uri("support"), body=SDP), sip.port)
        unavailable = await caller.expect(480)
        assert unavailable.headers.get("Retry-After") == "30"

        answer = await phone.register(sip.port, "alice", "alice-secret", expires=60)
        assert answer.status == 200
        removed = await phone.register(sip.port, "alice", "alice-secret", expires=0,
                                       contact="*")
        assert removed.status == 200 and removed.headers.get("Contact") is None
        caller.send(caller.request("INVITE", sip.uri("alice"), body=SDP), sip.port)
        assert (await caller.expect(480)).status == 480


# ---- routing -------------------------------------------------------------------------------------


async def test_unknown_user_is_404_and_no_free_agent_is_480_with_retry_after(sip: Sip) -> None:
    async with await sip.client() as caller:
        caller.send(caller.request("INVITE", sip.uri("sales"), body=SDP), sip.port)
        assert (await caller.expect(100)).status == 100
        assert (await caller.expect(404)).status == 404
        caller.send(caller.request("INVITE", sip.uri("support"), body=SDP), sip.port)
        unavailable = await caller.expect(480)
        assert unavailable.headers.get("Retry-After") == "30"


async def test_max_forwards_zero_is_483(sip: Sip) -> None:
    async with await sip.phone(ALICE), await sip.client() as caller:
        invite = caller.request("INVITE", sip.uri("support"), body=SDP)
        invite.headers.set("Max-Forwards", "0")
        caller.send(invite, sip.port)
        assert (await caller.expect(483)).status == 483


async def test_invite_that_already_passed_us_is_a_loop(sip: Sip) -> None:
    async with await sip.phone(ALICE), await sip.client() as caller:
        invite = caller.request("INVITE", sip.uri("support"), body=SDP)
        invite.headers.add("Via", f"SIP/2.0/UDP 127.0.0.1:{sip.port};branch=z9hG4bKloop")
        caller.send(invite, sip.port)
        assert (await caller.expect(482)).status == 482


async def test_call_reaches_a_registered_agent_with_context_and_its_story_is_recorded(
    sip: Sip,
) -> None:
    chat = await sip.core.ingest(whatsapp(CALLER, "My card was stolen, please block it"))
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        invite, got = await call_in(sip, caller, phone, "+18005550000")
        # What the agent's phone gets: its contact as Request-URI, us in Record-Route and Via,
        # the context link and conversation id, nothing personal.
        assert got.uri == f"sip:alice@127.0.0.1:{phone.port}"
        record_route = got.headers.get("Record-Route") or ""
        # our address, loose routing, and the dialog id with its HMAC (no open relay)
        assert re.fullmatch(rf"<sip:127\.0\.0\.1:{sip.port};lr;dlg=[0-9a-f]{{16}}\.[0-9a-f]{{16}}>",
                            record_route), record_route
        assert got.top_via.sent_by == f"127.0.0.1:{sip.port}"
        assert got.headers.get("X-Conversation-Id") == chat.conversation_id
        assert got.headers.get("Max-Forwards") == "69"
        assert got.body == SDP and got.call_id == invite.call_id
        bundle = await sip.bundle(got.headers.get("Call-Info") or "")
        assert bundle["conversation_id"] == chat.conversation_id
        assert "My card was stolen" in " ".join(e["text"] or "" for e in bundle["transcript"])
        assert bundle["verification"] is None  # nothing verified yet; caller ID never would
        assert bundle["verification_reason"] == "no-verification"
        assert "stolen" not in got.to_bytes().decode()

        phone.send(phone.answer(got, 180, to_tag="agent1"), sip.port)
        ringing = await caller.expect(180)
        assert len(ringing.vias) == 1  # our Via is gone on the way back
        phone.send(phone.answer(got, 200, to_tag="agent1", body=SDP), sip.port)
        ok = await caller.expect(200)
        assert ok.headers.get("Record-Route") == record_route

        # The caller's ACK and the agent's BYE follow the Record-Route through us.
        route = [("Route", record_route)]
        dialog = dict(from_=invite.headers.get("From"), to=ok.headers.get("To"),
                      call_id=invite.call_id)
        caller.send(caller.request("ACK", got.uri, cseq=1, headers=route, **dialog), sip.port)
        ack = await phone.expect("ACK")
        assert ack.headers.get("Route") is None  # our own entry was consumed
        bye = phone.request("BYE", f"sip:caller@127.0.0.1:{caller.port}", headers=route,
                            from_=ok.headers.get("To"), to=invite.headers.get("From"),
                            call_id=invite.call_id)
        phone.send(bye, sip.port)
        got_bye = await caller.expect("BYE")
        caller.send(caller.answer(got_bye, 200), sip.port)
        assert (await phone.expect(200)).cseq.method == "BYE"

    texts = await sip.transcript(chat.conversation_id, until="call ended")
    call_texts = texts[texts.index(next(t for t in texts if t.startswith("incoming call"))):]
    assert call_texts[0] == f"incoming call from voice:{CALLER}"
    assert call_texts[1:] == ["call ringing", "answered by agent 12",
                              "call ended after 0 s with agent 12 (agent hung up)"]
    conv = await sip.conversation(chat.conversation_id)
    leg = next(leg for leg in conv["legs"] if leg["channel"] == "voice")
    assert leg["agent_id"] == "12" and leg["ended_at"] is not None
    assert sip.gw.gw.agents.get("12").active_calls == 0  # type: ignore[union-attr]


async def test_100_trying_comes_before_the_call_is_routed(sip: Sip) -> None:
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        caller.send(caller.request("INVITE", sip.uri("support"), body=SDP), sip.port)
        first = await caller.expect()
        assert isinstance(first, SipResponse) and first.status == 100
        assert first.to_addr.tag is None
        await phone.expect("INVITE")


async def test_call_to_an_agents_user_goes_to_that_agent(sip: Sip) -> None:
    async with await sip.phone(ALICE) as alice, await sip.phone(BOB) as bob, \
            await sip.client() as caller:
        for _ in range(2):  # pick() would alternate; a call to bob stays with bob
            await call_in(sip, caller, bob, "bob")
        await alice.silence("INVITE", 0.3)


async def test_retransmitted_invite_is_absorbed_and_answered_with_the_last_response(
    sip: Sip,
) -> None:
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        invite = caller.request("INVITE", sip.uri("support"), body=SDP)
        caller.send(invite, sip.port)
        got = await phone.expect("INVITE")
        phone.send(phone.answer(got, 180, to_tag="a"), sip.port)
        assert (await caller.expect(180)).status == 180
        caller.send(invite, sip.port)  # same branch: the transaction answers, not the proxy
        assert (await caller.expect(180)).status == 180
        await phone.silence("INVITE", 0.3)


async def test_agents_phone_gets_the_invite_again_when_it_missed_it(sip: Sip) -> None:
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        caller.send(caller.request("INVITE", sip.uri("support"), body=SDP), sip.port)
        first = await phone.expect("INVITE")
        again = await phone.expect("INVITE", timeout=1.0)  # Timer A: T1 = 100 ms here
        assert again.top_via.branch == first.top_via.branch
        phone.send(phone.answer(again, 200, to_tag="a", body=SDP), sip.port)
        assert (await caller.expect(200)).status == 200


async def test_cancel_before_answer_reaches_the_agent_and_the_caller_gets_487(
    sip: Sip,
) -> None:
    chat = await sip.core.ingest(whatsapp(CALLER, "hello"))
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        invite, got = await call_in(sip, caller, phone)
        phone.send(phone.answer(got, 180, to_tag="a"), sip.port)
        await caller.expect(180)
        cancel = caller.cancel_of(invite)
        caller.send(cancel, sip.port)
        assert (await caller.expect(lambda m: isinstance(m, SipResponse) and
                                    m.cseq.method == "CANCEL")).status == 200
        cancelled = await phone.expect("CANCEL")
        assert cancelled.top_via.branch == got.top_via.branch  # RFC 3261 9.1
        phone.send(phone.answer(cancelled, 200), sip.port)
        phone.send(phone.answer(got, 487, to_tag="a"), sip.port)
        terminated = await caller.expect(487)
        assert terminated.cseq.method == "INVITE"
        assert (await phone.expect("ACK")).cseq.method == "ACK"  # we ACK the agent's 487
    texts = await sip.transcript(chat.conversation_id, until="call ended")
    assert texts[-1].startswith("call ended after") and texts[-1].endswith(
        "(caller hung up before answer)")
    assert sip.gw.gw.agents.get("12").active_calls == 0  # type: ignore[union-attr]


async def test_cancel_of_unknown_transaction_is_481(sip: Sip) -> None:
    async with await sip.client() as caller:
        caller.send(caller.request("CANCEL", sip.uri("support")), sip.port)
        assert (await caller.expect(481)).status == 481


async def test_unanswered_call_is_cancelled_after_the_ring_timeout(start_gateway: Any) -> None:
    sip = await start_sip(start_gateway, sip_ring_timeout_seconds=0.3)
    chat = await sip.core.ingest(whatsapp(CALLER, "hello"))
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        _, got = await call_in(sip, caller, phone)
        phone.send(phone.answer(got, 180, to_tag="a"), sip.port)
        unavailable = await caller.expect(480)
        assert unavailable.headers.get("Retry-After") == "30"
        cancel = await phone.expect("CANCEL")
        phone.send(phone.answer(cancel, 200), sip.port)
        phone.send(phone.answer(got, 487, to_tag="a"), sip.port)
        await caller.silence(487, 0.3)  # the caller already has its answer
    texts = await sip.transcript(chat.conversation_id, until="call failed")
    assert texts[-1] == "call failed (no answer within 0.3 s)"


async def test_answer_after_the_ring_timeout_is_hung_up_on_the_agent(
    start_gateway: Any,
) -> None:
    sip = await start_sip(start_gateway, sip_ring_timeout_seconds=0.3)
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        _, got = await call_in(sip, caller, phone)
        phone.send(phone.answer(got, 180, to_tag="late"), sip.port)
        assert (await caller.expect(480)).status == 480
        await phone.expect("CANCEL")
        # The phone picks up anyway (its 200 crossed our CANCEL): nobody is there any more.
        phone.send(phone.answer(got, 200, to_tag="late", body=SDP), sip.port)
        ack = await phone.expect("ACK")
        bye = await phone.expect("BYE")
        assert ack.to_addr.tag == bye.to_addr.tag == "late"
        assert bye.uri == f"sip:alice@127.0.0.1:{phone.port}"  # its Contact
        await caller.silence(200, 0.2)
    assert sip.gw.gw.agents.get("12").active_calls == 0  # type: ignore[union-attr]


async def test_agent_that_never_answers_gives_480(start_gateway: Any) -> None:
    sip = await start_sip(start_gateway, sip_timer_t1_ms=10)  # Timer B = 64 * T1 = 0.64 s
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        await phone.close()  # registered, then gone
        caller.send(caller.request("INVITE", sip.uri("support"), body=SDP), sip.port)
        assert (await caller.expect(480, timeout=5)).status == 480


async def test_busy_agent_answer_is_relayed_and_recorded_as_failed(sip: Sip) -> None:
    chat = await sip.core.ingest(whatsapp(CALLER, "hello"))
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        _, got = await call_in(sip, caller, phone)
        phone.send(phone.answer(got, 486, to_tag="a"), sip.port)
        assert (await caller.expect(486)).status == 486
        await phone.expect("ACK")
    texts = await sip.transcript(chat.conversation_id, until="call failed")
    assert texts[-1] == "call failed (agent's phone answered 486 Busy Here)"


async def test_caller_bye_ends_the_call_and_records_duration(sip: Sip) -> None:
    chat = await sip.core.ingest(whatsapp(CALLER, "hello"))
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        invite, got = await call_in(sip, caller, phone)
        phone.send(phone.answer(got, 200, to_tag="a", body=SDP), sip.port)
        ok = await caller.expect(200)
        dialog = dict(from_=invite.headers.get("From"), to=ok.headers.get("To"),
                      call_id=invite.call_id, headers=[("Route", f"<sip:127.0.0.1:{sip.port};lr>")])
        caller.send(caller.request("ACK", got.uri, cseq=1, **dialog), sip.port)
        await phone.expect("ACK")
        caller.send(caller.request("BYE", got.uri, cseq=2, **dialog), sip.port)
        bye = await phone.expect("BYE")
        phone.send(phone.answer(bye, 200), sip.port)
        assert (await caller.expect(lambda m: isinstance(m, SipResponse)
                                    and m.cseq.method == "BYE")).status == 200
    texts = await sip.transcript(chat.conversation_id, until="call ended")
    assert texts[-1] == "call ended after 0 s with agent 12 (caller hung up)"
    conv = await sip.conversation(chat.conversation_id)
    ended = [e for e in conv["transcript"] if e["text"].startswith("call ended")]
    assert ended[0]["author"] == "agent:12"


async def test_in_dialog_request_without_a_dialog_or_route_is_403(sip: Sip) -> None:
    async with await sip.client() as caller:
        bye = caller.request("BYE", sip.uri("support"), to=f"<{sip.uri('support')}>;tag=x")
        caller.send(bye, sip.port)
        assert (await caller.expect(403)).status == 403  # CONTRACT.md: 403, reaches nobody


async def test_call_over_tcp_reaches_a_udp_phone(sip: Sip) -> None:
    async with await sip.phone(ALICE) as phone, await sip.client(transport="TCP") as caller:
        invite, got = await call_in(sip, caller, phone)
        assert invite.top_via.transport == "TCP"
        assert got.top_via.transport == "UDP"
        phone.send(phone.answer(got, 200, to_tag="a", body=SDP), sip.port)
        assert (await caller.expect(200)).status == 200


async def test_agent_registered_over_tcp_gets_calls_on_its_own_connection(sip: Sip) -> None:
    async with await sip.client("alice", transport="TCP") as phone, \
            await sip.client() as caller:
        answer = await phone.register(sip.port, "alice", "alice-secret")
        assert answer.status == 200
        _, got = await call_in(sip, caller, phone)
        assert got.top_via.transport == "TCP"
        phone.send(phone.answer(got, 200, to_tag="a", body=SDP), sip.port)
        assert (await caller.expect(200)).status == 200


# ---- PINs and authenticated agents -------------------------------------------------------------


@pytest.mark.parametrize("form", ["uri", "pin-user", "header"])
async def test_escalation_pin_binds_the_call_to_the_chat(sip: Sip, form: str) -> None:
    chat = await sip.core.ingest(whatsapp(CALLER, "I need to talk to someone"))
    status, body = await sip.gw.api(
        "POST", f"/api/v1/conversations/{chat.conversation_id}/escalations",
        json={"channel": "voice", "mode": "dial-in"})
    assert status in (200, 201), body
    sent = await sip.gw.memory.wait_for(1)
    pin = code_from(next(m.text for m in sent if m.text and "PIN" in m.text))
    user = {"uri": f"support*{pin}", "pin-user": f"pin-{pin}", "header": "support"}[form]
    headers = (("X-Escalation-Pin", pin),) if form == "header" else ()
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        # From a number the customer never used: only the PIN binds the call.
        _, got = await call_in(sip, caller, phone, user, from_number="+442071838750",
                               headers=headers)
        assert got.headers.get("X-Escalation-Pin") is None  # a secret is not passed on
        assert got.headers.get("X-Conversation-Id") == chat.conversation_id
        bundle = await sip.bundle(got.headers.get("Call-Info") or "")
    assert bundle["conversation_id"] == chat.conversation_id
    assert bundle["verification_reason"] != "caller-id-only"


async def test_a_caller_cannot_smuggle_its_own_context_headers(sip: Sip) -> None:
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        _, got = await call_in(sip, caller, phone, headers=(
            ("Call-Info", "<https://evil.example/fake>;purpose=info"),
            ("X-Conversation-Id", "conv_forged")))
        assert got.headers.get_all("Call-Info") != ["<https://evil.example/fake>;purpose=info"]
        assert len(got.headers.get_all("Call-Info")) == 1
        assert got.headers.get("X-Conversation-Id") != "conv_forged"


async def test_agent_calling_out_is_challenged_and_then_authenticated(sip: Sip) -> None:
    async with await sip.phone(ALICE) as alice, await sip.phone(BOB) as bob:
        from_ = f"<sip:bob@127.0.0.1:{sip.port}>;tag=b1"
        invite = bob.request("INVITE", sip.uri("alice"), from_=from_, body=SDP)
        bob.send(invite, sip.port)
        challenge = await bob.expect(407)
        offered = challenge.headers.get_all("Proxy-Authenticate")
        assert len(offered) == 2
        await alice.silence("INVITE", 0.2)
        bob.send(bob.request("ACK", invite.uri, cseq=invite.cseq.number,
                             branch=invite.top_via.branch, from_=from_,
                             to=challenge.headers.get("To"), call_id=invite.call_id), sip.port)

        from connectors.sip.digest import Challenge, authorize

        credentials = authorize(Challenge.parse(offered[0]), username="bob",
                                password="bob-secret", method="INVITE", uri=invite.uri)
        again = bob.request("INVITE", sip.uri("alice"), from_=from_, call_id=invite.call_id,
                            cseq=invite.cseq.number + 1, body=SDP,
                            headers=[("Proxy-Authorization", credentials.to_header())])
        bob.send(again, sip.port)
        got = await alice.expect("INVITE")
        assert got.headers.get("Proxy-Authorization") is None
    conv = await sip.conversation(got.headers.get("X-Conversation-Id") or "")
    leg = next(leg for leg in conv["legs"] if leg["channel"] == "voice")
    assert leg["binding"] == "attested"  # digest-authenticated: the gateway knows who calls
    assert leg["address"] == "sip:bob@127.0.0.1"


async def test_trunk_caller_id_is_never_authenticated(sip: Sip) -> None:
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        _, got = await call_in(sip, caller, phone)
    conv = await sip.conversation(got.headers.get("X-Conversation-Id") or "")
    leg = next(leg for leg in conv["legs"] if leg["channel"] == "voice")
    assert leg["binding"] == "caller-id"


async def test_twilio_dial_to_a_registered_agent_keeps_the_verified_leg(
    start_gateway: Any,
) -> None:
    # Twilio Voice routed the call (PIN checked there) and dials alice through this edge
    # with X-Context: the agent's Call-Info must be that leg's link, not a new caller-ID leg.
    # X-Context is believed from trusted peers only (here the upstream edge on loopback).
    sip = await start_sip(start_gateway, sip_trusted_peers=["127.0.0.1"])
    upstream = await upstream_leg(sip)
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        _, got = await call_in(sip, caller, phone, "alice",
                               headers=(("X-Context", upstream.context_token),))
        assert got.headers.get("Call-Info") == f"<{upstream.context_url}>;purpose=info"
        assert got.headers.get("X-Context") is None  # one link, ours
        bundle = await sip.bundle(got.headers.get("Call-Info") or "")
    assert bundle["leg"]["id"] == upstream.leg_id
    assert bundle["leg"]["binding"] == "escalation"  # bound by the PIN, not by caller ID


async def test_a_forged_x_context_is_ignored(sip: Sip) -> None:
    await sip.core.ingest(whatsapp(CALLER, "hello"))
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        _, got = await call_in(sip, caller, phone, headers=(("X-Context", "F" * 32),))
        assert "F" * 32 not in (got.headers.get("Call-Info") or "")
        assert got.headers.get("X-Context") is None
        bundle = await sip.bundle(got.headers.get("Call-Info") or "")
    assert bundle["leg"]["binding"] == "caller-id"  # routed as any call: a new leg
