"""Issue 7's core findings as attacks over real sockets against a running gateway.

Each test performs the attack itself (SIP over UDP from `SipTestClient`s, some on other
loopback addresses so that limits per source can be seen to spare the honest caller on
127.0.0.1; Twilio webhooks signed as Twilio signs them; raw HTTP for the slow client),
asserts that it fails, and runs the legitimate path beside it. The victim proves her number
on WhatsApp first; what an agent sees is read from the context link the agent's phone gets,
as the phone would read it (no bearer token).
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import select

from gateway.bus import CallEnded, CallOffered
from gateway.models import OutboxMessage
from tests.helpers import code_from, wait_until, whatsapp
from connectors.sip.message import SipRequest
from tests.sip_client import SipTestClient
from tests.standins import TwilioStandin, twilio_sms_form, twilio_standin  # noqa: F401
from tests.test_sip_attacks import ATTACKER, ELSEWHERE, answered, hang_up, never
from tests.test_sip_edge import ALICE, CALLER, Sip, call_in, start_sip
from tests.test_twilio_voice import ALICE as TWILIO_ALICE
from tests.test_twilio_voice import PUBLIC_URL as TWILIO_PUBLIC_URL
from tests.test_twilio_voice import Voice, start_voice

STRANGER = "+14155550166"  # the attacker's own number
CARD = "4111 1111 1111 1111"  # passes Luhn
SECRET_REPLY = "Your new card ending 4242 ships to 12 Elm Street"  # what the agent disclosed


async def verified_on_whatsapp(sip: Sip, number: str = CALLER,
                               twilio: TwilioStandin | None = None) -> str:
    """The victim writes on WhatsApp, proves her number with a code, and an agent answers
    with something only she should hear. Returns the conversation id."""
    core = sip.core
    first = await core.ingest(whatsapp(number, "My card was stolen, please block it"))
    status, body = await sip.gw.api(
        "POST", f"/api/v1/conversations/{first.conversation_id}/verifications", json={})
    assert status == 202, body
    code = code_from(await sent_text(sip, "verification code is", twilio))
    assert (await core.ingest(whatsapp(number, code))).otp == "passed"
    status, body = await sip.gw.api(
        "POST", f"/api/v1/conversations/{first.conversation_id}/messages",
        json={"text": SECRET_REPLY})
    assert status == 202, body
    return first.conversation_id


async def sent_text(sip: Sip, containing: str, twilio: TwilioStandin | None = None,
                    seen: int = 0) -> str:
    """The newest text sent to the customer that contains `containing`, once more than
    `seen` such texts went out (through the in-memory channel, or through the Twilio
    stand-in when Twilio carries WhatsApp)."""
    def sent() -> list[str]:
        out = [m.text or "" for m in (sip.gw.memory.sent if sip.gw.memory else [])]
        out += [m.get("Body", "") for m in (twilio.messages if twilio else [])]
        return [t for t in out if containing in t]

    await wait_until(lambda: len(sent()) > seen, timeout=20,
                     what=f"a message with {containing!r}")
    return sent()[-1]


async def dial_in_pin(sip: Sip, conversation_id: str,
                      twilio: TwilioStandin | None = None) -> str:
    status, body = await sip.gw.api(
        "POST", f"/api/v1/conversations/{conversation_id}/escalations",
        json={"channel": "voice", "mode": "dial-in"})
    assert status == 201, body
    return code_from(await sent_text(sip, "enter PIN", twilio))


def texts(bundle: dict[str, Any]) -> list[str | None]:
    return [e["text"] for e in bundle["transcript"]]


class TwilioSip(Sip):
    """A gateway with Twilio Voice and SIP both on (one public URL for both)."""

    async def bundle(self, call_info: str) -> dict[str, Any]:
        url = call_info.removeprefix("<").removesuffix(">;purpose=info")
        assert url.startswith(TWILIO_PUBLIC_URL + "/api/v1/contexts/"), url
        async with self.gw.http.get(self.gw.url + url.removeprefix(TWILIO_PUBLIC_URL)) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())


async def twilio_and_sip(start_gateway: Any, twilio: TwilioStandin, **overrides: Any
                         ) -> tuple[TwilioSip, Voice]:
    voice = await start_voice(start_gateway, twilio, register=False,
                              sip_service_users=["support"], sip_timer_t1_ms=100,
                              **overrides)
    return TwilioSip(voice.gw), voice


@pytest.fixture
async def sip(start_gateway: Any) -> Sip:
    return await start_sip(start_gateway, pin_failure_burst=3, pin_failures_per_minute=0)


# ---- finding 1: nothing the caller chooses binds a call to an earlier leg --------------------


async def test_a_replayed_call_id_lands_on_no_earlier_leg_and_arrives_unverified(
    sip: Sip,
) -> None:
    conversation = await verified_on_whatsapp(sip)
    pin = await dial_in_pin(sip, conversation)
    async with await sip.phone(ALICE) as phone, await sip.client() as victim, \
            await SipTestClient(host=ATTACKER, user="mallory").open(sip.port) as mallory:
        # The victim dials in with her PIN: the agent sees her, verified, everything.
        invite, got = await call_in(sip, victim, phone, f"support*{pin}")
        hers = await sip.bundle(got.headers.get("Call-Info") or "")
        assert hers["verification"] is not None and hers["disclosure"] == "full"
        assert SECRET_REPLY in texts(hers)
        phone.send(phone.answer(got, 486), sip.port)
        await victim.expect(486)
        # The attacker replays her Call-ID, from his own number and from hers (caller ID
        # is his to write), with no PIN: each is a new call on no earlier leg.
        for number in (STRANGER, CALLER):
            replay = mallory.request(
                "INVITE", sip.uri("support"), call_id=invite.call_id,
                from_=f"<sip:{number}@127.0.0.1>;tag=m{number[-4:]}", body=invite.body)
            mallory.send(replay, sip.port)
            got = await phone.expect(lambda m, tag=f"tag=m{number[-4:]}": isinstance(
                m, SipRequest) and m.method == "INVITE" and tag in (m.headers.get("From") or ""))
            bundle = await sip.bundle(got.headers.get("Call-Info") or "")
            assert bundle["leg"]["id"] != hers["leg"]["id"]
            assert bundle["verification"] is None
            assert bundle["verification_reason"] != "verified-via-escalation"
            assert bundle["disclosure"] == "limited"
            assert SECRET_REPLY not in texts(bundle)
            phone.send(phone.answer(got, 486), sip.port)
            await mallory.expect(486)


async def test_a_sip_call_id_equal_to_a_twilio_callsid_binds_nothing(
    start_gateway: Any, twilio_standin: TwilioStandin,  # noqa: F811
) -> None:
    sip, voice = await twilio_and_sip(start_gateway, twilio_standin)
    conversation = await verified_on_whatsapp(sip, twilio=twilio_standin)
    pin = await dial_in_pin(sip, conversation, twilio_standin)
    async with await sip.phone(TWILIO_ALICE) as phone, \
            await SipTestClient(host=ATTACKER, user="mallory").open(sip.port) as mallory:
        # The victim calls the Twilio number with her PIN: Twilio dials the agent.
        call_sid, twiml = await voice.dial_in(CALLER, pin)
        assert twiml.find("Dial") is not None, ET.tostring(twiml)
        (route,) = [r for r in (await sip.conversation(conversation))["legs"]
                    if r["channel"] == "voice"]
        # The attacker sends a SIP INVITE whose Call-ID is her CallSid.
        replay = mallory.request("INVITE", sip.uri("support"), call_id=call_sid,
                                 from_=f"<sip:{STRANGER}@127.0.0.1>;tag=m1")
        mallory.send(replay, sip.port)
        got = await phone.expect("INVITE")
        bundle = await sip.bundle(got.headers.get("Call-Info") or "")
        assert bundle["leg"]["id"] != route["id"]
        assert bundle["conversation_id"] != conversation
        assert bundle["verification"] is None and bundle["disclosure"] == "limited"
        phone.send(phone.answer(got, 486), sip.port)
        await mallory.expect(486)


async def test_the_core_offers_a_sip_call_before_it_rings_and_says_when_it_ended(
    sip: Sip,
) -> None:
    subscription = sip.gw.gw.bus.subscribe(
        lambda e: isinstance(e, (CallOffered, CallEnded)))
    async with await sip.phone(ALICE) as phone, await sip.client() as caller:
        dialog = await answered(sip, caller, phone)
        offered = subscription._queue.get_nowait()  # there before the phone rang
        assert isinstance(offered.event, CallOffered) and offered.event.agent_id == "12"
        await hang_up(dialog)
        ended = await asyncio.wait_for(subscription._queue.get(), 5)
        assert isinstance(ended.event, CallEnded)
        assert ended.event.leg_id == offered.event.leg_id
        # A second call, cancelled before answer: offered, then ended too.
        invite, got = await call_in(sip, caller, phone)
        offered = await asyncio.wait_for(subscription._queue.get(), 5)
        assert isinstance(offered.event, CallOffered)
        phone.send(phone.answer(got, 180, to_tag="a"), sip.port)
        await caller.expect(180)
        cancel = caller.cancel_of(invite)
        caller.send(cancel, sip.port)
        cancelled = await phone.expect("CANCEL")
        phone.send(phone.answer(cancelled, 200), sip.port)
        phone.send(phone.answer(got, 487, to_tag="a"), sip.port)
        await caller.expect(487)
        ended = await asyncio.wait_for(subscription._queue.get(), 5)
        assert isinstance(ended.event, CallEnded)
        assert ended.event.leg_id == offered.event.leg_id


# ---- finding 5: escalation PINs cannot be guessed online ----------------------------------------


async def test_pin_guessing_over_sip_is_limited_per_source_and_rings_nobody(sip: Sip) -> None:
    conversation = await verified_on_whatsapp(sip)
    pin = await dial_in_pin(sip, conversation)
    wrong = [f"{(int(pin) + n) % 1_000_000:06d}" for n in range(1, 6)]
    async with await SipTestClient(host=ATTACKER, user="mallory").open(sip.port) as mallory:
        # No phone is registered yet: each guess is checked before "no agent is free".
        for guess in wrong[:3]:
            mallory.send(mallory.request("INVITE", sip.uri(f"support*{guess}")), sip.port)
            assert (await mallory.expect(lambda m: getattr(m, "status", 0) >= 300)).status \
                == 480
        # The fourth guess, and then even the right PIN, get a final 403 that says why.
        for guess in (wrong[3], pin):
            mallory.send(mallory.request("INVITE", sip.uri(f"support*{guess}")), sip.port)
            refused = await mallory.expect(lambda m: getattr(m, "status", 0) >= 300)
            assert (refused.status, refused.reason) == (403, "Too Many Wrong PINs")
    metrics = sip.gw.gw.metrics.pin_attempts
    assert metrics.labels("sip", "wrong")._value.get() == 3
    assert metrics.labels("sip", "limited-source")._value.get() == 2
    # The victim, from her own address, with her PIN: verified, and an agent rings.
    async with await sip.phone(ALICE) as phone, await sip.client() as victim, \
            await SipTestClient(host=ATTACKER, user="mallory").open(sip.port) as mallory:
        mallory.send(mallory.request("INVITE", sip.uri(f"support*{wrong[4]}")), sip.port)
        refused = await mallory.expect(lambda m: getattr(m, "status", 0) >= 300)
        assert refused.status == 403
        await never(lambda: any(getattr(m, "method", None) == "INVITE"
                                for m in phone.received()), 0.3)
        _, got = await call_in(sip, victim, phone, f"support*{pin}")
        bundle = await sip.bundle(got.headers.get("Call-Info") or "")
        assert bundle["verification"] is not None
        assert bundle["verification_reason"] == "verified-via-escalation"


async def test_pin_guessing_through_twilio_gather_is_limited_per_caller_and_for_everyone(
    start_gateway: Any, twilio_standin: TwilioStandin,  # noqa: F811
) -> None:
    sip, voice = await twilio_and_sip(
        start_gateway, twilio_standin, pin_failure_burst=2, pin_failures_per_minute=0,
        pin_global_failure_burst=4, pin_global_failures_per_minute=0)
    conversation = await verified_on_whatsapp(sip, twilio=twilio_standin)
    pin = await dial_in_pin(sip, conversation, twilio_standin)
    bad = f"{(int(pin) + 1) % 1_000_000:06d}"

    async def guess(number: str, digits: str) -> ET.Element:
        return (await voice.dial_in(number, digits))[1]

    # One caller: two wrong PINs are checked (no agent is free: told so), the third is not.
    for _ in range(2):
        assert (await guess(STRANGER, bad)).find("Dial") is None
    limited = await guess(STRANGER, pin)
    assert limited.find("Dial") is None and limited.find("Hangup") is not None
    assert "Too many wrong PINs" in (limited.findtext("Say") or "")
    # Many callers: after four failures in all, every PIN call is refused for now.
    for number in ("+14155550161", "+14155550162"):
        assert "Too many" not in ((await guess(number, bad)).findtext("Say") or "")
    paused = await guess("+14155550163", pin)
    assert paused.find("Hangup") is not None
    assert "cannot check PINs right now" in (paused.findtext("Say") or "")
    # Beside it, a call without a PIN still reaches an agent (unverified).
    async with await sip.phone(TWILIO_ALICE):
        _, twiml = await voice.dial_in("+14155550164", None)
        assert twiml.find("Dial") is not None


# ---- finding 8: the HTTP edges ------------------------------------------------------------------


async def test_a_client_that_trickles_headers_is_cut_off(start_gateway: Any) -> None:
    gw = await start_gateway(http_header_timeout_seconds=0.5, sip=False)
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /webhooks/twilio/messaging HTTP/1.1\r\nHost: gw\r\n")
    closed = False

    async def trickle() -> None:
        for n in range(200):  # a header every 50 ms: never a complete head
            writer.write(f"X-Slow-{n}: a\r\n".encode())
            await asyncio.sleep(0.05)

    trickling = asyncio.create_task(trickle())
    try:
        closed = await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        trickling.cancel()
        writer.close()
    assert closed
    # A client that sends its request at once is answered as ever.
    async with gw.http.get(gw.url + "/healthz") as resp:
        assert resp.status == 200


async def test_a_client_that_trickles_a_body_gets_408_and_is_cut_off(
    start_gateway: Any, caplog: Any
) -> None:
    from tests.conftest import AGENT_TOKEN

    gw = await start_gateway(http_body_timeout_seconds=0.5, sip=False)
    host, port = gw.url.removeprefix("http://").split(":")

    async def send(path: str, head: str, pieces: list[bytes], gap: float) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        length = sum(len(p) for p in pieces)
        writer.write(f"POST {path} HTTP/1.1\r\nHost: gw\r\n{head}"
                     f"Content-Length: {length}\r\n\r\n".encode())

        async def trickle() -> None:
            for piece in pieces:
                writer.write(piece)
                await asyncio.sleep(gap)

        trickling = asyncio.create_task(trickle())
        try:
            return await asyncio.wait_for(reader.read(), 10)  # until the gateway closes
        finally:
            trickling.cancel()
            writer.close()

    # A stranger's webhook body, 10 bytes every 50 ms of 1,000 (5 s): cut off at 0.5 s,
    # before any signature check, with 408 and the connection closed (read() saw EOF).
    answer = await send("/webhooks/twilio/messaging",
                        "Content-Type: application/x-www-form-urlencoded\r\n",
                        [b"x" * 10] * 100, 0.05)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert b"did not arrive within 0.5 seconds" in answer
    assert "the body did not arrive within 0.5 s" in caplog.text
    # A body in two pieces 50 ms apart arrives in time and gets its ordinary answer.
    answer = await send("/api/v1/conversations/nope/messages",
                        f"Authorization: Bearer {AGENT_TOKEN}\r\nConnection: close\r\n"
                        "Content-Type: application/json\r\n",
                        [b'{"text": ', b'"hello"}'], 0.05)
    assert answer.startswith(b"HTTP/1.1 404"), answer[:80]


async def test_a_made_up_shared_key_signature_is_refused_with_403_and_a_warning(
    start_gateway: Any, twilio_standin: TwilioStandin, caplog: Any,  # noqa: F811
) -> None:
    gw = await start_gateway(twilio=twilio_standin, sip=False)
    form = twilio_sms_form(account_sid=twilio_standin.account_sid, from_=CALLER,
                           to="+18005550000", body="hello")
    with caplog.at_level("WARNING"):
        status, _, _ = await gw.post("/webhooks/twilio/messaging", urlencode(form).encode(), {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl",
            "X-Twilio-Webhooks-Signature-Settings": "algorithm=HMAC_SHA256"})
    assert status == 403
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert any("SharedKey" in r.getMessage() for r in caplog.records)
    assert await gw.counts() == (0, 0)
    status, _, _ = await gw.twilio("/webhooks/twilio/messaging", form,
                                   twilio_standin.auth_token)
    assert status == 200


async def test_deeply_nested_json_gets_400_not_500(start_gateway: Any) -> None:
    from tests.conftest import APP_SECRET
    from tests.standins import meta_webhook_request

    gw = await start_gateway(whatsapp_app_secret=APP_SECRET, whatsapp_verify_token="v" * 20,
                             whatsapp_access_token="a" * 40, sip=False)
    nested = "[" * 200_000 + "]" * 200_000
    status, _ = await gw.api("POST", "/api/v1/conversations/x/messages",
                             data=nested, headers={"Content-Type": "application/json"})
    assert status == 400
    body, headers = meta_webhook_request(APP_SECRET, {})
    body = b'{"entry": ' + nested.encode() + b"}"
    _, headers = meta_webhook_request(APP_SECRET, {})
    import hashlib
    import hmac

    headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(
        APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    status, _, _ = await gw.post("/webhooks/whatsapp", body, headers)
    assert status == 400
    async with gw.http.get(gw.url + "/healthz") as resp:
        assert resp.status == 200


async def test_the_console_is_sent_with_security_headers(start_gateway: Any) -> None:
    gw = await start_gateway(sip=False)
    async with gw.http.get(gw.url + "/console") as resp:
        assert resp.status == 200
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


# ---- findings 9, 10 and the card rule: what is stored ------------------------------------------


async def test_codes_and_pins_leave_the_outbox_row_once_sent(sip: Sip) -> None:
    conversation = await verified_on_whatsapp(sip)
    pin = await dial_in_pin(sip, conversation)
    await sip.gw.settle()
    async with sip.core.engine.connect() as conn:
        payloads = [row[0] for row in (await conn.execute(select(OutboxMessage.payload)))]
    texts_sent = [p.get("text") or "" for p in payloads]
    assert any("enter PIN [redacted]" in t for t in texts_sent), texts_sent
    assert not any(pin in t for t in texts_sent)
    assert any("verification code is [redacted]" in t for t in texts_sent)
    assert any(SECRET_REPLY in t for t in texts_sent)  # an ordinary reply is kept


async def test_six_digits_in_a_message_are_kept_while_a_code_is_pending_and_cards_masked(
    start_gateway: Any, twilio_standin: TwilioStandin,  # noqa: F811
) -> None:
    gw = await start_gateway(twilio=twilio_standin, sip=False)

    async def sms(text: str) -> None:
        form = twilio_sms_form(account_sid=twilio_standin.account_sid, from_=CALLER,
                               to="+18005550000", body=text)
        status, _, _ = await gw.twilio("/webhooks/twilio/messaging", form,
                                       twilio_standin.auth_token)
        assert status == 200

    await sms("hello, I need help")
    customer = await gw.customer(f"sms:{CALLER}")
    conversation = customer["conversations"][0]["id"]
    status, body = await gw.api("POST", f"/api/v1/conversations/{conversation}/verifications",
                                json={})
    assert status == 202, body
    [otp] = await twilio_standin.wait_for_messages(1)
    code = re.search(r"code is (\d{6})", otp["Body"]).group(1)  # type: ignore[union-attr]
    await sms("my order 482913 is late")
    # The pending code inside a longer message is no attempt, yet never stored; the other
    # six digits beside it are.
    await sms(f"order 482913 again, and the code was {code[:3]} {code[3:]} I think")
    await sms("000000")  # a wrong code: an attempt, never stored
    await sms(f"my card is {CARD}, exp 12/29")
    stored = [e["text"] for e in await gw.transcript(f"sms:{CALLER}")]
    assert "my order 482913 is late" in stored
    assert "order 482913 again, and the code was [verification code] I think" in stored
    assert not any(code in (t or "").replace(" ", "") for t in stored)
    assert "[verification code]" in stored and "000000" not in stored
    assert "my card is **** **** **** 1111, exp 12/29" in stored
    assert not any(CARD in (t or "") for t in stored)


# ---- disclosure, step-up and attestation, end to end --------------------------------------------


async def test_an_unverified_sip_caller_sees_limited_context_until_a_code_is_read_back(
    start_gateway: Any,
) -> None:
    sip = await start_sip(start_gateway, sip_trusted_peers=[ELSEWHERE])
    conversation = await verified_on_whatsapp(sip)
    async with await sip.phone(ALICE) as phone, \
            await SipTestClient(host=ELSEWHERE, user="trunk").open(sip.port) as trunk:
        # The victim's number calls through the trunk, which attests it (A): evidence only.
        _, got = await call_in(sip, trunk, phone, from_number=f"{CALLER};verstat="
                               "TN-Validation-Passed-A")
        link = got.headers.get("Call-Info") or ""
        before = await sip.bundle(link)
        assert before["verification"] is None and before["disclosure"] == "limited"
        assert before["leg"]["attestation"] == "A"
        assert "attested A" in before["leg"]["attestation_summary"]
        withheld = [e for e in before["transcript"] if e.get("withheld")]
        assert withheld and all(e["text"] is None for e in withheld)
        assert "My card was stolen, please block it" in texts(before)  # her own words
        assert SECRET_REPLY not in texts(before)
        leg_id = before["leg"]["id"]
        # Step-up: a code to her proved WhatsApp; she reads it out, the agent types it.
        status, started = await sip.gw.api(
            "POST", f"/api/v1/conversations/{conversation}/verifications", json={})
        assert status == 202, started
        check = f"/api/v1/conversations/{conversation}/verifications/" \
                f"{started['challenge_id']}/check"
        code = code_from(await sent_text(sip, "verification code is", seen=1))
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        status, answer = await sip.gw.api("POST", check, json={"code": wrong, "leg_id": leg_id})
        assert status == 200 and answer["outcome"] == "wrong", answer
        assert (await sip.bundle(link))["disclosure"] == "limited"
        status, answer = await sip.gw.api("POST", check, json={"code": code, "leg_id": leg_id})
        assert status == 200 and answer["outcome"] == "passed", answer
        assert answer["verification"]["address"] == f"whatsapp:{CALLER}"
        after = await sip.bundle(link)
        assert after["disclosure"] == "full" and after["verification"] is not None
        assert SECRET_REPLY in texts(after)
        assert not any(code in (t or "") for t in texts(after))
        # The same code cannot be used twice.
        status, _ = await sip.gw.api("POST", check, json={"code": code, "leg_id": leg_id})
        assert status == 409


@pytest.mark.parametrize(("env", "named"), [
    ({"GATEWAY_AGENT_TOKEN": "change-me"}, "GATEWAY_AGENT_TOKEN"),
    ({"GATEWAY_AGENT_TOKEN": "x"}, "GATEWAY_AGENT_TOKEN"),
    ({"GATEWAY_TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
      "GATEWAY_TWILIO_AUTH_TOKEN": "your-auth-token"}, "GATEWAY_TWILIO_AUTH_TOKEN"),
    ({"GATEWAY_WHATSAPP_APP_SECRET": "app-secret"}, "GATEWAY_WHATSAPP_APP_SECRET"),
    ({"GATEWAY_AGENTS": '[{"id": "12", "sip_user": "alice", "sip_password": "…"}]'},
     "GATEWAY_AGENTS[0].sip_password"),
])
def test_serve_refuses_placeholder_secrets_naming_the_key(
    tmp_path: Any, env: dict[str, str], named: str,
) -> None:
    import subprocess
    import sys

    # Port 0 everywhere: should the refusal fail, the gateway must not take a real port.
    proc = subprocess.run([sys.executable, "-m", "gateway", "serve"],
                          env={**env, "PATH": "/usr/bin:/bin", "GATEWAY_HTTP_PORT": "0",
                               "GATEWAY_SIP_PORT": "0"},
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr
    for value in env.values():
        if len(value) < 40:
            assert f"{value!r}" not in proc.stderr  # a secret is never echoed
