"""Issue 7's SIP findings as attacks over real sockets against a running gateway.

Each test performs the attack (from SIPp scenarios in tests/sipp/, or from `RawSip`, a socket
that writes SIP text by hand and reads answers with its own regular expressions, never the
gateway's parser), asserts that it fails, and runs the legitimate path beside it. Attackers
use other loopback addresses (127.0.0.2, 127.0.0.3) so that limits per source can be seen
to spare the honest peer on 127.0.0.1. A third party that must receive nothing is a SIPp UAS.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connectors.sip.digest import Challenge, authorize
from connectors.sip.message import SipRequest, SipResponse
from gateway.events import IncomingCall
from tests.peers import SippUas, run_sipp_uac
from tests.sip_client import SDP, RawSip, SipTestClient
from tests.test_sip_edge import ALICE, BOB, Sip, call_in, start_sip, upstream_leg

SIPP = Path(__file__).parent / "sipp"
ATTACKER = "127.0.0.2"
ELSEWHERE = "127.0.0.3"


def counter(sip: Sip, kind: str) -> float:
    return sip.gw.gw.metrics.sip_messages.labels(kind)._value.get()


async def never(condition: Callable[[], bool], seconds: float = 0.5) -> None:
    """Assert that `condition` stays false while the gateway has time to act on what it got
    (the "nothing else happened" check: it polls, and fails as soon as it turns true)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        assert not condition()
        await asyncio.sleep(0.02)
    assert not condition()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


def reached(uas: SippUas) -> bool:
    """Whether the third-party SIPp UAS received anything at all."""
    return "message received" in uas.messages()


class RecordingSink:
    """The core, with every IncomingCall the SIP edge hands it kept for the test to read."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.calls: list[IncomingCall] = []

    def open_call(self, incoming: IncomingCall) -> Any:
        self.calls.append(incoming)
        return self.sink.open_call(incoming)

    def offer_call(self, route: Any, tried: Any = (), **kwargs: Any) -> Any:
        return self.sink.offer_call(route, tried, **kwargs)

    def call_event(self, event: Any) -> Any:
        return self.sink.call_event(event)


def recording(sip: Sip) -> RecordingSink:
    recorder = RecordingSink(sip.edge.proxy.sink)
    sip.edge.proxy.sink = recorder
    return recorder


@dataclass
class Dialog:
    """An answered call: caller -> gateway -> agent's phone, ACKed through the gateway."""

    sip: Sip
    caller: SipTestClient
    phone: SipTestClient
    invite: SipRequest
    got: SipRequest  # the INVITE as the phone received it
    ok: SipResponse  # the 200 as the caller received it
    record_route: str

    def from_caller(self, method: str, cseq: int, *, uri: str | None = None,
                    headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
                    routes: tuple[str, ...] = ()) -> SipRequest:
        return self.caller.request(
            method, uri or self.got.uri, cseq=cseq, from_=self.invite.headers.get("From"),
            to=self.ok.headers.get("To"), call_id=self.invite.call_id, body=body,
            headers=(("Route", self.record_route), *(("Route", r) for r in routes), *headers))

    def from_agent(self, method: str, cseq: int, *,
                   headers: tuple[tuple[str, str], ...] = ()) -> SipRequest:
        return self.phone.request(
            method, f"sip:caller@{self.caller.host}:{self.caller.port}", cseq=cseq,
            from_=self.ok.headers.get("To"), to=self.invite.headers.get("From"),
            call_id=self.invite.call_id, headers=(("Route", self.record_route), *headers))


async def answered(sip: Sip, caller: SipTestClient, phone: SipTestClient,
                   user: str = "support", **kwargs: Any) -> Dialog:
    invite, got = await call_in(sip, caller, phone, user, **kwargs)
    phone.send(phone.answer(got, 200, to_tag=f"agent{secrets.token_hex(2)}", body=SDP),
               sip.port)
    ok = await caller.expect(200)
    assert isinstance(ok, SipResponse)
    record_route = ok.headers.get("Record-Route") or ""
    dialog = Dialog(sip, caller, phone, invite, got, ok, record_route)
    caller.send(dialog.from_caller("ACK", 1), sip.port)
    await phone.expect("ACK")
    return dialog


async def hang_up(dialog: Dialog, cseq: int = 9) -> None:
    """The caller's BYE, through the gateway to the phone and its 200 back: the legitimate
    in-dialog path still works."""
    dialog.caller.send(dialog.from_caller("BYE", cseq), dialog.sip.port)
    bye = await dialog.phone.expect("BYE")
    dialog.phone.send(dialog.phone.answer(bye, 200), dialog.sip.port)
    done = await dialog.caller.expect(lambda m: isinstance(m, SipResponse)
                                      and m.cseq.method == "BYE")
    assert done.status == 200


@pytest.fixture
async def sip(start_gateway: Any) -> Sip:
    return await start_sip(start_gateway)


# ---- finding 2: no open relay ---------------------------------------------------------------


async def test_sipp_relay_attempts_are_refused_and_reach_no_third_party(sip: Sip) -> None:
    async with SippUas("uas") as third, await sip.phone(ALICE) as phone, \
            await sip.client() as caller:
        target = f"127.0.0.1:{sip.port}"
        invite = await run_sipp_uac(
            target, scenario_xml=(SIPP / "relay_invite.xml").read_text(),
            extra_args=["-key", "third_party", third.address], timeout=20)
        assert invite.ok, invite.describe()
        for method in ("MESSAGE", "OPTIONS", "INFO", "BYE", "NOTIFY"):
            scenario = (SIPP / "relay_request.xml").read_text().replace("METHOD", method)
            result = await run_sipp_uac(target, scenario_xml=scenario, timeout=20,
                                        extra_args=["-key", "third_party", third.address])
            assert result.ok, (method, result.describe())
        # Beside it, a real call goes through and hangs up through the gateway.
        await hang_up(await answered(sip, caller, phone))
        await never(lambda: reached(third))
    assert counter(sip, "relay-refused") >= 6


async def test_raw_relay_attempts_with_maddr_names_and_forged_routes_reach_nobody(
    sip: Sip,
) -> None:
    async with SippUas("uas") as third, await RawSip(ATTACKER).open() as mallory:
        uas = third.address
        me = f"127.0.0.1:{sip.port}"
        attempts: list[tuple[str, str, dict[str, Any]]] = []
        for method in ("INVITE", "MESSAGE", "OPTIONS", "BYE", "INFO", "SUBSCRIBE"):
            attempts += [
                # a To tag and nothing else: "in a dialog", so relay it to the Request-URI?
                (method, f"sip:victim@{uas}", {"to": f"<sip:victim@{uas}>;tag=x1"}),
                # the third party hidden in maddr of an address that looks harmless
                (method, f"sip:victim@192.0.2.1:{third.port};maddr=127.0.0.1",
                 {"to": "<sip:victim@192.0.2.1>;tag=x2"}),
                # a host name for the gateway to resolve
                (method, f"sip:victim@localhost:{third.port}",
                 {"to": "<sip:victim@localhost>;tag=x3"}),
                # our own (old-style) Route on top, the third party next
                (method, f"sip:victim@{uas}", {"to": f"<sip:victim@{uas}>;tag=x4", "headers": [
                    f"Route: <sip:{me};lr>", f"Route: <sip:{uas};lr>"]}),
                # a Route that claims to be ours, with a made-up dialog id
                (method, f"sip:victim@{uas}", {"to": f"<sip:victim@{uas}>;tag=x5", "headers": [
                    f"Route: <sip:{me};lr;dlg=0123456789abcdef.0123456789abcdef>",
                    f"Route: <sip:{uas};lr>"]}),
                # no To tag at all, a Route to the third party
                (method, f"sip:victim@{uas}", {"headers": [f"Route: <sip:{uas};lr>"]}),
            ]
        attempts.append(("MESSAGE", "tel:+15550100", {"to": "<tel:+15550100>;tag=x6"}))
        sent = []
        for method, uri, kwargs in attempts:
            if method == "INVITE" and "to" not in kwargs:
                continue  # an initial INVITE is a call for us (404 here): tested elsewhere
            call_id, text = mallory.request(method, uri, **kwargs)
            mallory.send(text, sip.port)
            sent.append((method, uri, call_id))
        for method, uri, call_id in sent:
            status = await mallory.final(call_id)
            assert status in (403, 404, 416), (method, uri, mallory.response_lines(call_id))
        await never(lambda: reached(third))
    # and the gateway still serves its own users
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        await hang_up(await answered(sip, caller, phone))


async def test_a_caller_in_a_real_dialog_cannot_route_onward_to_a_third_party(sip: Sip) -> None:
    async with SippUas("uas") as third, await sip.phone(ALICE) as phone, \
            await sip.client() as caller:
        dialog = await answered(sip, caller, phone)
        # The caller holds our genuine Record-Route and adds the third party after it, or
        # puts the third party in the Request-URI: the request still goes to the agent only.
        for cseq, (uri, routes) in enumerate([
            (f"sip:victim@{third.address}", (f"<sip:{third.address};lr>",)),
            (f"sip:victim@{third.address}", ()),
        ], start=2):
            caller.send(dialog.from_caller("MESSAGE", cseq, uri=uri, routes=routes,
                                           body=b"hello"), sip.port)
            got = await phone.expect("MESSAGE")
            phone.send(phone.answer(got, 200), sip.port)
            assert (await caller.expect(200)).cseq.number == cseq
        await hang_up(dialog)
        await never(lambda: reached(third))


# ---- finding 3: context headers stripped from every request -------------------------------

FORGED = (
    ("Call-Info", "<https://evil.example/ctx>;purpose=info"),
    ("X-Conversation-Id", "conv_forged"),
    ("X-Context", "F" * 32),
    ("X-Escalation-Pin", "123456"),
    ("x-context", "lowercase-too"),
)
_FORGED_RAW = re.compile(rb"(?im)^(call-info|x-conversation-id|x-context|x-escalation-pin)\s*:")


async def test_forged_context_headers_are_stripped_from_in_dialog_requests_both_ways(
    sip: Sip,
) -> None:
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        dialog = await answered(sip, caller, phone)
        phone.raw.clear()
        caller.raw.clear()
        # caller -> agent: re-INVITE and INFO
        caller.send(dialog.from_caller("INVITE", 2, headers=FORGED, body=SDP), sip.port)
        reinvite = await phone.expect("INVITE")
        phone.send(phone.answer(reinvite, 200, body=SDP), sip.port)
        await caller.expect(200)
        caller.send(dialog.from_caller("ACK", 2, headers=FORGED), sip.port)
        await phone.expect("ACK")
        caller.send(dialog.from_caller("INFO", 3, headers=FORGED), sip.port)
        info = await phone.expect("INFO")
        phone.send(phone.answer(info, 200), sip.port)
        await caller.expect(200)
        # agent -> caller: INFO
        phone.send(dialog.from_agent("INFO", 5, headers=FORGED), sip.port)
        back = await caller.expect("INFO")
        caller.send(caller.answer(back, 200), sip.port)
        await phone.expect(200)
        # and the BYE
        caller.send(dialog.from_caller("BYE", 4, headers=FORGED), sip.port)
        bye = await phone.expect("BYE")
        phone.send(phone.answer(bye, 200), sip.port)
        await caller.expect(200)
        requests_to_phone = [d for d in phone.raw if not d.startswith(b"SIP/2.0")]
        requests_to_caller = [d for d in caller.raw if not d.startswith(b"SIP/2.0")]
    assert len(requests_to_phone) == 4 and len(requests_to_caller) == 1
    for data in requests_to_phone + requests_to_caller:
        assert _FORGED_RAW.search(data) is None, data.decode(errors="replace")


# ---- finding 4: X-Context and attestation only from trusted peers ---------------------------


async def test_a_strangers_x_context_is_not_honoured(sip: Sip) -> None:
    upstream = await upstream_leg(sip)
    async with await sip.phone(ALICE) as phone, await sip.client() as stranger:
        # A stranger who learnt the token (it travels in cleartext SIP) is just a caller.
        _, got = await call_in(sip, stranger, phone, "alice",
                               headers=(("X-Context", upstream.context_token),))
        assert got.headers.get("Call-Info") != f"<{upstream.context_url}>;purpose=info"
        assert got.headers.get("X-Context") is None
        bundle = await sip.bundle(got.headers.get("Call-Info") or "")
    assert bundle["leg"]["binding"] == "caller-id"
    assert bundle["leg"]["id"] != upstream.leg_id


async def test_x_context_is_honoured_from_a_trusted_peer(start_gateway: Any) -> None:
    sip = await start_sip(start_gateway, sip_trusted_peers=[f"{ATTACKER}/32"])
    upstream = await upstream_leg(sip)
    headers = (("X-Context", upstream.context_token),)
    async with await sip.phone(ALICE) as phone, await sip.client() as stranger, \
            await SipTestClient(host=ATTACKER, user="edge").open() as trusted:
        _, got = await call_in(sip, stranger, phone, "alice", headers=headers)
        assert got.headers.get("Call-Info") != f"<{upstream.context_url}>;purpose=info"
        _, got = await call_in(sip, trusted, phone, "alice", headers=headers)
        assert got.headers.get("Call-Info") == f"<{upstream.context_url}>;purpose=info"
        bundle = await sip.bundle(got.headers.get("Call-Info") or "")
    assert bundle["leg"]["id"] == upstream.leg_id


PAI_A = ("P-Asserted-Identity",
         "<sip:+14155550100;verstat=TN-Validation-Passed-A@trunk.example;user=phone>")


async def test_a_strangers_attestation_is_ignored_and_every_call_names_its_source(
    sip: Sip,
) -> None:
    recorder = recording(sip)
    async with await sip.phone(ALICE) as phone, await sip.client() as stranger:
        await call_in(sip, stranger, phone, headers=(PAI_A,))
    (incoming,) = recorder.calls
    assert (incoming.attestation, incoming.source) == (None, "127.0.0.1")
    assert not incoming.caller_authenticated


async def test_attestation_is_taken_from_a_trusted_trunk(start_gateway: Any) -> None:
    sip = await start_sip(start_gateway, sip_trusted_peers=[ATTACKER])
    recorder = recording(sip)
    async with await sip.phone(ALICE) as phone, await sip.client() as stranger, \
            await SipTestClient(host=ATTACKER, user="trunk").open() as trunk:
        await call_in(sip, stranger, phone, headers=(PAI_A,))
        await call_in(sip, trunk, phone, headers=(PAI_A,))
        await call_in(sip, trunk, phone, from_number="+14155550100;verstat=No-TN-Validation")
    stranger_call, trunk_call, unvalidated = recorder.calls
    assert (stranger_call.attestation, stranger_call.source) == (None, "127.0.0.1")
    assert (trunk_call.attestation, trunk_call.source) == ("A", ATTACKER)
    assert unvalidated.attestation == "No-TN-Validation"
    assert not trunk_call.caller_authenticated  # evidence, never a verification


# ---- finding 6: the registrar under replay and guessing ------------------------------------


async def _register_by_hand(sip: Sip, phone: SipTestClient, *, nc: int = 1,
                            uri: str | None = None, challenge: Challenge | None = None,
                            password: str = "alice-secret") -> tuple[int, str, Challenge]:
    """REGISTER alice from `phone`, answering a fresh challenge (or `challenge` again with
    count `nc`); returns (status, the Authorization header sent, the challenge)."""
    target = f"sip:127.0.0.1:{sip.port}"
    common = dict(to=f"<sip:alice@127.0.0.1:{sip.port}>",
                  from_=f"<sip:alice@127.0.0.1:{sip.port}>;tag={secrets.token_hex(3)}",
                  call_id=f"{secrets.token_hex(6)}@127.0.0.1")
    if challenge is None:
        phone.send(phone.request("REGISTER", target, headers=[("Expires", "60")], **common),
                   sip.port)
        answer = await phone.expect(401)
        challenge = Challenge.parse(answer.headers.get_all("WWW-Authenticate")[0])
    credentials = authorize(challenge, username="alice", password=password,
                            method="REGISTER", uri=uri or target, nc=nc)
    header = credentials.to_header()
    phone.send(phone.request("REGISTER", target, headers=[
        ("Expires", "60"), ("Authorization", header)], **common), sip.port)
    final = await phone.expect(lambda m: isinstance(m, SipResponse) and m.status >= 200)
    return final.status, header, challenge


def _replay(mallory: RawSip, sip: Sip, authorization: str, contact: str,
            *extra: str) -> str:
    call_id, text = mallory.request(
        "REGISTER", f"sip:127.0.0.1:{sip.port}",
        from_=f"<sip:alice@127.0.0.1:{sip.port}>", to=f"<sip:alice@127.0.0.1:{sip.port}>",
        headers=[f"Authorization: {authorization}", *extra])
    text = re.sub(r"(?m)^Contact: .*$", f"Contact: {contact}", text)
    mallory.send(text, sip.port)
    return call_id


async def test_replayed_register_cannot_move_or_delete_the_agents_binding(sip: Sip) -> None:
    alice = sip.gw.gw.agents.by_sip_user("alice")
    assert alice is not None
    async with await sip.client("alice") as phone, await RawSip(ATTACKER).open() as mallory:
        status, captured, challenge = await _register_by_hand(sip, phone)
        assert status == 200
        bindings = dict(alice.registrations)
        moved = _replay(mallory, sip, captured, f"<sip:alice@{ATTACKER}:{mallory.port}>",
                        "Expires: 3600")
        deleted = _replay(mallory, sip, captured, "*", "Expires: 0")
        assert await mallory.final(moved) == 401  # a fresh challenge, nothing changed
        assert await mallory.final(deleted) == 401
        assert any("stale=true" in d.decode(errors="replace") for d in mallory.datagrams)
        assert alice.registrations == bindings
        # The phone itself goes on: the same nonce with the next count, or a new one.
        assert (await _register_by_hand(sip, phone, challenge=challenge, nc=2))[0] == 200
        assert (await phone.register(sip.port, "alice", "alice-secret")).status == 200


async def test_a_digest_computed_for_another_uri_is_refused(sip: Sip) -> None:
    async with await sip.client("alice") as phone:
        status, _, _ = await _register_by_hand(sip, phone, uri="sip:127.0.0.1:9")
        assert status == 400
        assert not sip.gw.gw.agents.by_sip_user("alice").registrations  # type: ignore[union-attr]
        assert (await _register_by_hand(sip, phone))[0] == 200


async def test_password_guessing_is_limited_per_source_and_per_user(sip: Sip) -> None:
    async with await sip.phone(ALICE) as phone, await RawSip(ATTACKER).open() as mallory:
        call_id, text = mallory.request(
            "REGISTER", f"sip:127.0.0.1:{sip.port}", from_=f"<sip:alice@127.0.0.1:{sip.port}>",
            to=f"<sip:alice@127.0.0.1:{sip.port}>")
        mallory.send(text, sip.port)
        assert await mallory.final(call_id) == 401
        offered = [Challenge.parse(m.group(1).decode()) for d in mallory.datagrams
                   for m in re.finditer(rb"(?m)^WWW-Authenticate: (.*)\r$", d)]
        challenge = offered[0]
        guesses = []
        for i in range(25):  # a dictionary attack, as fast as the socket goes
            credentials = authorize(challenge, username="alice", password=f"guess{i}",
                                    method="REGISTER", uri=f"sip:127.0.0.1:{sip.port}", nc=i + 1)
            guess_id, text = mallory.request(
                "REGISTER", f"sip:127.0.0.1:{sip.port}",
                from_=f"<sip:alice@127.0.0.1:{sip.port}>", to=f"<sip:alice@127.0.0.1:{sip.port}>",
                headers=[f"Authorization: {credentials.to_header()}"])
            mallory.send(text, sip.port)
            guesses.append(guess_id)
        lines = [(await mallory.final(g), mallory.response_lines(g)[-1]) for g in guesses]
        checked = [line for status, line in lines if line == "SIP/2.0 403 Forbidden"]
        limited = [line for status, line in lines if "Too Many Failed Attempts" in line]
        assert len(checked) <= 10 and len(checked) + len(limited) == 25, lines
        # Now even the right password from that source is not looked at...
        assert (await RawSipRegister(mallory, sip, challenge, "alice-secret")).endswith(
            "403 Too Many Failed Attempts")
        # ...nor from a source alice never used (the user is limited too)...
        async with await RawSip(ELSEWHERE).open() as elsewhere:
            assert (await RawSipRegister(elsewhere, sip, challenge, "alice-secret")).endswith(
                "403 Too Many Failed Attempts")
        # ...but alice's own phone, which authenticated from its address before, goes on.
        assert (await phone.register(sip.port, "alice", "alice-secret")).status == 200
    assert counter(sip, "auth-limited") >= 15


async def test_behind_a_trusted_relay_guessing_is_limited_by_the_phones_address_not_the_relays(
    start_gateway: Any,
) -> None:
    """Kamailio in front (docs/scale-out.md): every REGISTER comes from its address. Listed in
    GATEWAY_SIP_TRUSTED_PEERS, the limit falls on the address it received each one from (the
    next Via's received), so one guesser does not lock every phone behind it out."""
    relay_host = "127.0.0.5"
    sip = await start_sip(start_gateway, sip_trusted_peers=[relay_host])
    uri = f"sip:127.0.0.1:{sip.port}"
    async with await RawSip(relay_host).open() as relay:

        async def register(user: str, phone: str, authorization: str | None = None) -> str:
            headers = [f"Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK{secrets.token_hex(6)}"
                       f";received={phone}"]
            if authorization:
                headers.append(f"Authorization: {authorization}")
            call_id, text = relay.request("REGISTER", uri, from_=f"<sip:{user}@127.0.0.1>",
                                          to=f"<sip:{user}@127.0.0.1>", headers=headers)
            relay.send(text, sip.port)
            await relay.final(call_id)
            return relay.response_lines(call_id)[-1]

        assert (await register("alice", "198.51.100.66")).startswith("SIP/2.0 401")
        challenge = next(Challenge.parse(m.group(1).decode()) for d in relay.datagrams
                         for m in re.finditer(rb"(?m)^WWW-Authenticate: (.*)\r$", d))

        def digest(user: str, password: str, nc: int) -> str:
            return authorize(challenge, username=user, password=password, method="REGISTER",
                             uri=uri, nc=nc).to_header()

        for i in range(25):  # one phone behind the relay guesses alice's password
            await register("alice", "198.51.100.66", digest("alice", f"guess{i}", i + 1))
        assert (await register("alice", "198.51.100.66", digest("alice", "alice-secret", 50))
                ) == "SIP/2.0 403 Too Many Failed Attempts"
        # Bob's phone behind the same relay registers as usual.
        assert (await register("bob", "198.51.100.77", digest("bob", "bob-secret", 60))
                ) == "SIP/2.0 200 OK"


async def RawSipRegister(raw: RawSip, sip: Sip, challenge: Challenge, password: str) -> str:  # noqa: N802
    """One REGISTER for alice from `raw` with a fresh nonce count; its final status line."""
    credentials = authorize(challenge, username="alice", password=password, method="REGISTER",
                            uri=f"sip:127.0.0.1:{sip.port}", nc=1000 + len(raw.datagrams))
    call_id, text = raw.request(
        "REGISTER", f"sip:127.0.0.1:{sip.port}", from_=f"<sip:alice@127.0.0.1:{sip.port}>",
        to=f"<sip:alice@127.0.0.1:{sip.port}>",
        headers=[f"Authorization: {credentials.to_header()}"])
    raw.send(text, sip.port)
    await raw.final(call_id)
    return raw.response_lines(call_id)[-1]


async def test_replayed_proxy_authorization_cannot_place_a_call_as_an_agent(sip: Sip) -> None:
    async with await sip.phone(ALICE) as alice, await sip.phone(BOB) as bob, \
            await RawSip(ATTACKER).open() as mallory:
        from_ = f"<sip:bob@127.0.0.1:{sip.port}>;tag=b1"
        invite = bob.request("INVITE", sip.uri("alice"), from_=from_, body=SDP)
        bob.send(invite, sip.port)
        challenge = await bob.expect(407)
        credentials = authorize(Challenge.parse(challenge.headers.get_all("Proxy-Authenticate")[0]),
                                username="bob", password="bob-secret", method="INVITE",
                                uri=invite.uri)
        again = bob.request("INVITE", sip.uri("alice"), from_=from_, call_id=invite.call_id,
                            cseq=2, body=SDP,
                            headers=[("Proxy-Authorization", credentials.to_header())])
        bob.send(again, sip.port)
        assert (await alice.expect("INVITE")).call_id == invite.call_id  # bob's own call
        # Mallory replays bob's header on a call of her own.
        call_id, text = mallory.request(
            "INVITE", sip.uri("alice"), from_=f"<sip:bob@127.0.0.1:{sip.port}>",
            headers=[f"Proxy-Authorization: {credentials.to_header()}"])
        mallory.send(text, sip.port)
        assert await mallory.final(call_id) == 407
        await alice.silence(lambda m: isinstance(m, SipRequest) and m.call_id == call_id, 0.3)


async def test_a_prober_without_a_scanner_user_agent_is_limited_by_behaviour(sip: Sip) -> None:
    async with await sip.phone(ALICE) as phone, await sip.client() as caller, \
            await RawSip(ATTACKER).open() as prober:
        probes = []
        for i in range(45):  # user enumeration: every answer is a 404
            call_id, text = prober.request("INVITE", f"sip:user{i}@127.0.0.1:{sip.port}",
                                           headers=["User-Agent: Linphone/5.2"])
            prober.send(text, sip.port)
            probes.append(call_id)
        answers = [(await prober.final(c), prober.response_lines(c)[-1]) for c in probes]
        assert sum(1 for status, _ in answers if status == 404) <= 31
        assert answers[-1] == (403, "SIP/2.0 403 Too Many Failed Requests")
        # Whatever it asks now, it is told the same; honest callers are not affected.
        call_id, text = prober.request("OPTIONS", f"sip:127.0.0.1:{sip.port}")
        prober.send(text, sip.port)
        assert await prober.final(call_id) == 403
        await hang_up(await answered(sip, caller, phone))
    assert counter(sip, "probe-limited") >= 14


# ---- finding 7: TCP slots ------------------------------------------------------------------


async def options_answered(sip: Sip, client: SipTestClient) -> None:
    client.send(client.request("OPTIONS", f"sip:127.0.0.1:{sip.port}"), sip.port)
    assert (await client.expect(200)).status == 200


async def _open_hogs(port: int, n: int) -> tuple[list[Any], list[bool], list[Any]]:
    loop = asyncio.get_running_loop()
    hogs = [await asyncio.open_connection("127.0.0.1", port, local_addr=(ATTACKER, 0))
            for _ in range(n)]
    closed = [False] * n

    async def watch(i: int, reader: asyncio.StreamReader) -> None:
        await reader.read()  # b"" at EOF: the gateway closed it
        closed[i] = True

    return hogs, closed, [loop.create_task(watch(i, r)) for i, (r, _) in enumerate(hogs)]


async def test_one_source_cannot_take_every_tcp_slot(sip: Sip) -> None:
    hogs, closed, watchers = await _open_hogs(sip.port, 40)  # the default cap is 32
    try:
        await until(lambda: sum(closed) >= 8, timeout=5)
        assert sum(closed) == 8
        async with await SipTestClient("TCP").open(sip.port) as honest:  # another source
            await options_answered(sip, honest)
    finally:
        for task in watchers:
            task.cancel()
        for _, writer in hogs:
            writer.close()
    assert counter(sip, "tcp-refused") >= 8


async def test_tcp_connections_that_send_no_complete_message_are_closed(
    start_gateway: Any,
) -> None:
    sip = await start_sip(start_gateway, sip_tcp_max_connections_per_source=4,
                          sip_tcp_message_timeout_seconds=0.5)
    loop = asyncio.get_running_loop()
    hogs, closed, watchers = await _open_hogs(sip.port, 10)
    try:
        await until(lambda: sum(closed) >= 6, timeout=3)  # beyond 4 at once: refused
        async with await SipTestClient("TCP").open(sip.port) as honest:
            await options_answered(sip, honest)
            await until(lambda: all(closed), timeout=5)  # idle: no message within 0.5 s
            # A trickle (a head that never ends) is closed too, however steadily it drips.
            reader, writer = await asyncio.open_connection("127.0.0.1", sip.port,
                                                           local_addr=(ATTACKER, 0))
            drip = loop.create_task(reader.read())
            for i in range(40):
                if drip.done():
                    break
                writer.write(b"OPTIONS sip:x SIP/2.0\r\nX-Pad: "[i % 8:i % 8 + 1])
                await asyncio.sleep(0.1)
            assert drip.done() and drip.result() == b""
            writer.close()
            await options_answered(sip, honest)  # it sent its message: it stays
    finally:
        for task in watchers:
            task.cancel()
        for _, writer in hogs:
            writer.close()
    assert counter(sip, "tcp-refused") >= 6 and counter(sip, "tcp-timeout") >= 5


# ---- findings 1 and 5 at the SIP level: retransmissions and reused Call-IDs ----------------


async def test_an_invite_retransmission_reaches_the_core_once(sip: Sip) -> None:
    recorder = recording(sip)
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        invite = caller.request("INVITE", sip.uri("support"), body=SDP)
        for _ in range(3):  # retransmitted before anything came back
            caller.send(invite, sip.port)
        got = await phone.expect("INVITE")
        phone.send(phone.answer(got, 180, to_tag="a"), sip.port)
        await caller.expect(180)
        caller.send(invite, sip.port)  # and after the 180
        await caller.expect(180)
        await phone.silence(lambda m: isinstance(m, SipRequest) and m.method == "INVITE"
                            and m.top_via.branch != got.top_via.branch, 0.3)
    assert len(recorder.calls) == 1


async def test_a_reused_call_id_from_another_source_is_a_new_call_that_cannot_touch_the_first(
    sip: Sip,
) -> None:
    recorder = recording(sip)
    async with await sip.phone(ALICE) as phone, await sip.client() as caller, \
            await RawSip(ATTACKER).open() as mallory:
        victim = await answered(sip, caller, phone)
        # Mallory knows the Call-ID and places her own call with it (new branch and tag).
        call_id, text = mallory.request("INVITE", sip.uri("support"),
                                        call_id=victim.invite.call_id, body=SDP.decode(),
                                        headers=["Content-Type: application/sdp"])
        mallory.send(text, sip.port)
        second = await phone.expect("INVITE")
        assert second.call_id == victim.invite.call_id
        assert second.top_via.branch != victim.got.top_via.branch  # its own transaction
        phone.send(phone.answer(second, 200, to_tag="agent2", body=SDP), sip.port)
        assert await mallory.final(call_id) == 200
        # The victim's BYE still ends the victim's call, at the agent, and only there.
        await hang_up(victim)
        await never(lambda: any(d.startswith(b"BYE ") for d in mallory.datagrams))
    assert len(recorder.calls) == 2
    assert [c.source for c in recorder.calls] == ["127.0.0.1", ATTACKER]


async def test_a_cancel_copied_from_another_source_does_not_end_the_call(sip: Sip) -> None:
    async with await sip.phone(ALICE) as phone, await sip.client() as caller, \
            await RawSip(ATTACKER).open() as mallory:
        invite, got = await call_in(sip, caller, phone)
        phone.send(phone.answer(got, 180, to_tag="a"), sip.port)
        await caller.expect(180)
        # Mallory copies the INVITE's Via (branch and sent-by), From, To, Call-ID and CSeq.
        h = invite.headers
        cancel = "\n".join([
            f"CANCEL {invite.uri} SIP/2.0", f"Via: {h.get('Via')}", "Max-Forwards: 70",
            f"From: {h.get('From')}", f"To: {h.get('To')}", f"Call-ID: {invite.call_id}",
            f"CSeq: {invite.cseq.number} CANCEL", "Content-Length: 0", "", ""])
        mallory.send(cancel, sip.port)
        await until(lambda: bool(mallory.datagrams) or caller.received() != [], timeout=3)
        await phone.silence("CANCEL", 0.3)
        phone.send(phone.answer(got, 200, to_tag="a", body=SDP), sip.port)
        assert (await caller.expect(200)).status == 200
