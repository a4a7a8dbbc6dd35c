"""Twilio Voice through real HTTP on loopback: the PIN prompt, routing to an agent with
`<Dial><Sip>` and context headers, callbacks placed through a Twilio stand-in, and call
progress in any order.

Webhooks are signed with twilio's own algorithm for GATEWAY_PUBLIC_URL (a proxy's public
address) and sent to the gateway's loopback port, as a reverse proxy would forward them. The
TwiML answers are parsed with xml.etree and the URLs in them are followed, as Twilio would.
"""

from __future__ import annotations

import random
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from yarl import URL

from connectors.twilio_voice import TwilioVoice
from gateway.agents import AgentDirectory, AgentTarget, Contact
from gateway.channels import CallbackRequest, SendError
from gateway.clock import FrozenClock
from config.settings import AgentConfig
from tests.conftest import RunningGateway
from tests.helpers import code_from, wait_until, whatsapp
from tests.standins import (  # noqa: F401  (fixture)
    TwilioStandin,
    new_twilio_sid,
    twilio_sign,
    twilio_standin,
    twilio_voice_form,
    twilio_webhook_request,
)
from webhooks.twilio_voice import (
    MAX_SIP_URI,
    RouteError,
    VoiceRouting,
    agent_sip_uri,
    with_context,
)

PUBLIC_URL = "https://gw.example.com"
VOICE = f"{PUBLIC_URL}/webhooks/twilio/voice"
VOICE_STATUS = f"{PUBLIC_URL}/webhooks/twilio/voice/status"
VOICE_NUMBER = "+15005550006"  # the number customers dial in to
NUMBER = "+14155550100"  # the customer's mobile, verified on WhatsApp
LANDLINE = "+14155550199"  # another phone of the same customer: only a PIN ties it
SIP_DOMAIN = "sip.gw.example.com"
ALICE = {"id": "12", "sip_user": "alice", "sip_password": "pw"}
ALICE_PHONE = "sip:alice@127.0.0.1:5070"


@dataclass
class Voice:
    """A gateway with Twilio Voice on, and the Twilio stand-in it calls."""

    gw: RunningGateway
    twilio: TwilioStandin

    @property
    def core(self) -> Any:
        return self.gw.gw.core

    def register(self, agent_id: str = "12", contact: str = ALICE_PHONE) -> None:
        """What the SIP registrar does when the agent's phone REGISTERs."""
        directory = self.gw.gw.agents
        agent = directory.get(agent_id)
        assert agent is not None
        directory.register(agent, contact, 3600)

    async def post(self, url: str, form: dict[str, str], *, signature: str | None = None,
                   token: str | None = None, signed_url: str | None = None
                   ) -> tuple[int, str]:
        """POST `form` to the public `url` as Twilio would, through the loopback port."""
        assert url.startswith(PUBLIC_URL), url
        body, headers = twilio_webhook_request(self.twilio.auth_token, signed_url or url, form)
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        if token is not None:
            headers["I-Twilio-Idempotency-Token"] = token
        if signature == "":
            del headers["X-Twilio-Signature"]
        # encoded=True: the request target goes out byte for byte as signed, as Twilio sends it.
        target = URL(self.gw.url + url.removeprefix(PUBLIC_URL), encoded=True)
        async with self.gw.http.post(target, data=body, headers=headers) as resp:
            return resp.status, await resp.text()

    async def twiml(self, url: str, form: dict[str, str], **kwargs: Any) -> ET.Element:
        status, text = await self.post(url, form, **kwargs)
        assert status == 200, text
        root = ET.fromstring(text)
        assert root.tag == "Response"
        return root

    def call_form(self, from_: str, call_sid: str | None = None, **kwargs: Any
                  ) -> dict[str, str]:
        return twilio_voice_form(account_sid=self.twilio.account_sid, from_=from_,
                                 to=VOICE_NUMBER, call_sid=call_sid, **kwargs)

    async def dial_in(self, from_: str, pin: str | None, call_sid: str | None = None
                      ) -> tuple[str, ET.Element]:
        """An inbound call that answers the PIN prompt (with `pin`, or `#` for none)."""
        form = self.call_form(from_, call_sid)
        gather = (await self.twiml(VOICE, form)).find("Gather")
        assert gather is not None
        answered = {**form, "CallStatus": "in-progress", "Digits": pin or "",
                    "FinishedOnKey": "" if pin else "#"}
        return form["CallSid"], await self.twiml(gather.attrib["action"], answered)

    async def bundle(self, context_url: str) -> dict[str, Any]:
        """What the agent's phone fetches: no bearer token, the URL is the capability."""
        assert context_url.startswith(PUBLIC_URL), context_url
        async with self.gw.http.get(self.gw.url + context_url.removeprefix(PUBLIC_URL)) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def texts(self, containing: str, timeout: float = 5.0) -> str:
        """The newest text the customer's phone got that contains `containing`.

        WhatsApp goes out through Twilio when Meta's API is not configured; the in-memory
        channel is looked at too so the test does not depend on which sender carries it.
        """
        def sent() -> list[str]:
            assert self.gw.memory is not None
            texts = [getattr(m, "text", None) or "" for m in self.gw.memory.sent]
            return texts + [m.get("Body", "") for m in self.twilio.messages]

        await wait_until(lambda: any(containing in t for t in sent()), timeout=timeout,
                         what=f"a text with {containing!r}")
        return [t for t in sent() if containing in t][-1]

    async def verify_on_whatsapp(self, number: str = NUMBER) -> str:
        """The customer proves their number with a code on WhatsApp; the conversation id."""
        first = await self.core.ingest(whatsapp(number, "My card was stolen, please block it"))
        await self.core.start_verification(first.conversation_id, None)
        code = code_from(await self.texts("verification code is"))
        passed = await self.core.ingest(whatsapp(number, code))
        assert passed.otp == "passed"
        return first.conversation_id

    async def escalate(self, conversation_id: str, mode: str) -> dict[str, Any]:
        status, body = await self.gw.api("POST",
                                         f"/api/v1/conversations/{conversation_id}/escalations",
                                         json={"channel": "voice", "mode": mode})
        assert status == 201 or status == 200, body
        return body

    async def outbox_row(self, message_id: str, ready: Callable[[dict[str, Any]], Any],
                         timeout: float = 5.0) -> dict[str, Any]:
        """The outbox row, once `ready` says so (the worker records a send after it returns)."""
        return await self.gw.wait_outbox(message_id, ready, timeout)

    async def transcript_of(self, address: str) -> list[str]:
        status, customer = await self.gw.api("GET", "/api/v1/customers",
                                             params={"address": address})
        assert status == 200, customer
        status, conv = await self.gw.api(
            "GET", f"/api/v1/conversations/{customer['conversations'][0]['id']}")
        assert status == 200, conv
        return [e["text"] for e in conv["transcript"]]


async def start_voice(start_gateway: Any, twilio: TwilioStandin, *, register: bool = True,
                      **overrides: Any) -> Voice:
    overrides.setdefault("agents", [ALICE])
    gw = await start_gateway(
        public_url=PUBLIC_URL, twilio_account_sid=twilio.account_sid,
        twilio_auth_token=twilio.auth_token, twilio_api_url=twilio.base_url,
        twilio_voice_number=VOICE_NUMBER, sip_domain=SIP_DOMAIN, sip_port=0, **overrides,
    )
    voice = Voice(gw, twilio)
    if register:
        voice.register()
    return voice


@pytest.fixture
async def voice(start_gateway: Any, twilio_standin: TwilioStandin) -> Voice:
    return await start_voice(start_gateway, twilio_standin)


def sip_target(root: ET.Element) -> tuple[str, dict[str, str], ET.Element, ET.Element]:
    """(URI without headers, its x- headers, <Dial>, <Sip>) of a `<Dial><Sip>` answer."""
    dial = root.find("Dial")
    assert dial is not None, ET.tostring(root)
    sip = dial.find("Sip")
    assert sip is not None and sip.text
    base, _, query = sip.text.partition("?")
    headers = {k: v[0] for k, v in parse_qs(query).items()}
    return base, headers, dial, sip


def context_url(headers: dict[str, str]) -> str:
    return f"{PUBLIC_URL}/api/v1/contexts/{headers['x-context']}"


# ---- the inbound call ------------------------------------------------------------------------


async def test_signed_inbound_call_is_asked_for_an_escalation_pin(voice: Voice) -> None:
    root = await voice.twiml(VOICE, voice.call_form(LANDLINE))
    gather = root.find("Gather")
    assert gather is not None
    assert gather.attrib["input"] == "dtmf"
    assert gather.attrib["numDigits"] == "6"
    assert gather.attrib["action"] == f"{VOICE}?step=pin"
    assert int(gather.attrib["timeout"]) > 0
    say = gather.find("Say")
    assert say is not None and "PIN" in (say.text or "") and "pound" in (say.text or "")
    # Nothing typed: Twilio falls through to the Redirect and the call routes without a PIN.
    redirect = root.find("Redirect")
    assert redirect is not None and redirect.text == f"{VOICE}?step=route"
    assert [child.tag for child in root] == ["Gather", "Redirect"]


async def test_whatsapp_customer_dials_in_with_pin_and_agent_gets_verified_transcript(
    start_gateway: Any, twilio_standin: TwilioStandin, database_url: str
) -> None:
    voice = await start_voice(start_gateway, twilio_standin, database_url=database_url)
    conversation_id = await voice.verify_on_whatsapp()
    escalation = await voice.escalate(conversation_id, "dial-in")
    assert escalation["carries_verification"] is True
    pin = code_from(await voice.texts("PIN"))

    # They call from their landline: caller ID is no proof, the PIN is.
    call_sid, root = await voice.dial_in(LANDLINE, pin)
    base, headers, dial, sip = sip_target(root)
    assert base == f"sip:alice@{SIP_DOMAIN}"  # through the gateway's SIP edge
    assert set(headers) == {"x-context", "x-conversation-id"}
    assert headers["x-conversation-id"] == conversation_id
    assert len(headers["x-context"]) == 32
    assert len(sip.text or "") < MAX_SIP_URI
    assert NUMBER[2:] not in (sip.text or "") and LANDLINE[2:] not in (sip.text or "")
    assert dial.attrib["answerOnBridge"] == "true"
    assert dial.attrib["action"] == f"{VOICE}?step=dial-status&agent=12&tried=12"
    assert sip.attrib["statusCallback"] == f"{VOICE_STATUS}?agent=12"
    assert sip.attrib["statusCallbackEvent"] == "initiated ringing answered completed"

    bundle = await voice.bundle(context_url(headers))
    assert bundle["conversation_id"] == conversation_id
    assert bundle["verification_reason"] == "verified-via-escalation"
    assert bundle["verification"]["address"] == f"whatsapp:{NUMBER}"
    whatsapp_texts = [e["text"] for e in bundle["transcript"] if e["channel"] == "whatsapp"]
    assert "My card was stolen, please block it" in whatsapp_texts
    assert any(e["channel"] == "voice" and LANDLINE in e["text"] for e in bundle["transcript"])
    assert not any(pin in (e["text"] or "") for e in bundle["transcript"])
    assert voice.gw.gw.agents.get("12").active_calls == 1  # type: ignore[union-attr]

    # The PIN works once: a second caller with it gets no verification.
    _, again = await voice.dial_in(LANDLINE, pin)
    _, headers2, _, _ = sip_target(again)
    assert (await voice.bundle(context_url(headers2)))["verification_reason"] == (
        "escalation-invalid")


async def test_verified_number_calling_without_pin_is_identified_not_verified(
    voice: Voice
) -> None:
    conversation_id = await voice.verify_on_whatsapp()
    _, root = await voice.dial_in(NUMBER, pin=None)  # pressed # at the prompt
    _, headers, _, _ = sip_target(root)
    bundle = await voice.bundle(context_url(headers))
    assert bundle["conversation_id"] == conversation_id  # same customer, by caller ID
    assert bundle["verification_reason"] == "caller-id-only"
    assert bundle["verification"] is None


async def test_gather_timeout_redirect_routes_without_a_pin(voice: Voice) -> None:
    form = voice.call_form(NUMBER)
    root = await voice.twiml(VOICE, form)
    redirect = root.find("Redirect")
    assert redirect is not None and redirect.text
    routed = await voice.twiml(redirect.text, {**form, "CallStatus": "in-progress"})
    _, headers, _, _ = sip_target(routed)
    bundle = await voice.bundle(context_url(headers))
    assert bundle["verification_reason"] == "no-verification"  # a stranger, never verified
    assert f"voice:{NUMBER}" in [a["address"] for a in bundle["customer"]["addresses"]]


async def test_wrong_pin_routes_with_escalation_invalid(voice: Voice) -> None:
    conversation_id = await voice.verify_on_whatsapp()
    await voice.escalate(conversation_id, "dial-in")
    pin = code_from(await voice.texts("PIN"))
    wrong = f"{(int(pin) + 1) % 1_000_000:06d}"
    _, root = await voice.dial_in(NUMBER, wrong)
    _, headers, _, _ = sip_target(root)
    bundle = await voice.bundle(context_url(headers))
    assert bundle["verification_reason"] == "escalation-invalid"
    assert bundle["verification"] is None


async def test_forged_or_missing_signature_is_refused_and_stores_nothing(voice: Voice) -> None:
    conversation_id = await voice.verify_on_whatsapp()
    await voice.escalate(conversation_id, "dial-in")
    pin = code_from(await voice.texts("PIN"))
    form = {**voice.call_form(LANDLINE), "Digits": pin}
    pin_url = f"{VOICE}?step=pin"
    forged = twilio_sign("not-the-auth-token", pin_url, form)
    assert (await voice.post(pin_url, form, signature=forged))[0] == 403
    assert (await voice.post(pin_url, form, signature=""))[0] == 403
    # Signed for the first webhook, replayed against the PIN step.
    assert (await voice.post(pin_url, form, signed_url=VOICE))[0] == 403
    # A real signature over other Digits.
    genuine = twilio_sign(voice.twilio.auth_token, pin_url, form)
    assert (await voice.post(pin_url, {**form, "Digits": "123456"}, signature=genuine))[0] == 403
    # A forged callback: an escalation token in the URL only counts when Twilio signed it.
    status, _ = await voice.post(f"{VOICE}?escalation=guess", form, signature=forged)
    assert status == 403
    forged_status = {"CallSid": form["CallSid"], "CallStatus": "completed"}
    assert (await voice.post(VOICE_STATUS, forged_status, signature=forged))[0] == 403

    status, _ = await voice.gw.api("GET", "/api/v1/customers",
                                   params={"address": f"voice:{LANDLINE}"})
    assert status == 404  # no leg, no customer link
    assert voice.gw.gw.agents.get("12").active_calls == 0  # type: ignore[union-attr]
    # The PIN was not spent by the forgeries.
    _, root = await voice.dial_in(LANDLINE, pin, call_sid=form["CallSid"])
    _, headers, _, _ = sip_target(root)
    assert (await voice.bundle(context_url(headers)))["verification_reason"] == (
        "verified-via-escalation")


async def test_no_agent_available_says_sorry_and_hangs_up(
    start_gateway: Any, twilio_standin: TwilioStandin
) -> None:
    voice = await start_voice(start_gateway, twilio_standin, register=False)  # phone offline
    _, root = await voice.dial_in(NUMBER, pin=None)
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert "sorry" in (root.find("Say").text or "").lower()  # type: ignore[union-attr]
    assert "call failed (no agent available)" in await voice.transcript_of(f"voice:{NUMBER}")


async def test_anonymous_caller_is_routed_without_an_identity(voice: Voice) -> None:
    _, root = await voice.dial_in("+266696687", pin=None)  # Twilio's "anonymous"
    _, headers, _, _ = sip_target(root)
    bundle = await voice.bundle(context_url(headers))
    assert bundle["verification"] is None
    assert not any(a["address"].startswith("voice:")
                   for a in bundle["customer"]["addresses"])


# ---- the callback ----------------------------------------------------------------------------


async def test_callback_is_placed_once_and_answered_call_routes_verified_via_callback(
    start_gateway: Any, twilio_standin: TwilioStandin, database_url: str
) -> None:
    voice = await start_voice(start_gateway, twilio_standin, database_url=database_url)
    conversation_id = await voice.verify_on_whatsapp()
    escalation = await voice.escalate(conversation_id, "callback")
    [placed] = await voice.twilio.wait_for_calls(1)
    assert placed["To"] == NUMBER
    assert placed["From"] == VOICE_NUMBER
    assert placed["Url"].startswith(f"{VOICE}?escalation=")
    assert placed["StatusCallback"] == VOICE_STATUS
    row = await voice.outbox_row(escalation["outbox_id"], lambda r: r["provider_id"])
    assert (row["provider_id"], row["status"]) == (placed["Sid"], "queued")

    # The customer picks up: Twilio asks the Url what to do, on the call we placed.
    answered = twilio_voice_form(account_sid=voice.twilio.account_sid, from_=VOICE_NUMBER,
                                 to=NUMBER, call_sid=placed["Sid"], call_status="in-progress",
                                 direction="outbound-api")
    root = await voice.twiml(placed["Url"], answered)
    assert root.find("Gather") is None  # no PIN: the call itself is the binding
    _, headers, _, _ = sip_target(root)
    bundle = await voice.bundle(context_url(headers))
    assert bundle["conversation_id"] == conversation_id
    assert bundle["verification_reason"] == "verified-via-callback"
    assert bundle["verification"]["address"] == f"whatsapp:{NUMBER}"
    # Our own number, the From of the call we placed, is never linked to the customer.
    assert not any(VOICE_NUMBER in a["address"] for a in bundle["customer"]["addresses"])

    done = {**answered, "CallStatus": "completed", "CallDuration": "75"}
    assert (await voice.post(VOICE_STATUS, done))[0] == 200
    row = await voice.outbox_row(escalation["outbox_id"], lambda r: True)
    assert row["status"] == "delivered"
    await voice.gw.settle()
    assert len(voice.twilio.calls) == 1  # sent once, never again


async def test_unanswered_callback_marks_its_outbox_row_failed(voice: Voice) -> None:
    conversation_id = await voice.verify_on_whatsapp()
    escalation = await voice.escalate(conversation_id, "callback")
    [placed] = await voice.twilio.wait_for_calls(1)
    await voice.outbox_row(escalation["outbox_id"], lambda r: r["provider_id"])
    status_form = twilio_voice_form(account_sid=voice.twilio.account_sid, from_=VOICE_NUMBER,
                                    to=NUMBER, call_sid=placed["Sid"], call_status="no-answer",
                                    direction="outbound-api")
    assert (await voice.post(VOICE_STATUS, status_form))[0] == 200  # no leg: still a 200
    row = await voice.outbox_row(escalation["outbox_id"], lambda r: True)
    assert row["status"] == "failed"
    assert "not answered (no-answer)" in row["last_error"]


def voice_message(twilio: TwilioStandin, **kwargs: Any) -> CallbackRequest:
    defaults: dict[str, Any] = dict(id="out_1", channel="voice", to=f"voice:{NUMBER}",
                                    from_=None, escalation_token="t" * 32,
                                    escalation_id="esc_1")
    return CallbackRequest(**{**defaults, **kwargs})


async def test_callback_connector_retries_only_what_may_succeed(
    twilio_standin: TwilioStandin
) -> None:
    connector = TwilioVoice(twilio_standin.account_sid, twilio_standin.auth_token,
                            api_url=twilio_standin.base_url, public_url=PUBLIC_URL,
                            from_number=VOICE_NUMBER, timeout=0.5)
    await connector.start()
    try:
        outcomes = []
        for status in (400, 404, 429, 500, 503):
            twilio_standin.fail_next(1, status)
            with pytest.raises(SendError) as failed:
                await connector.send(voice_message(twilio_standin))
            outcomes.append((status, failed.value.permanent))
        assert outcomes == [(400, True), (404, True), (429, False), (500, False), (503, False)]
        twilio_standin.delay_next(2.0)
        with pytest.raises(SendError) as slow:
            await connector.send(voice_message(twilio_standin))
        assert not slow.value.permanent and "no answer" in str(slow.value)
        with pytest.raises(SendError) as bad:
            await connector.send(voice_message(twilio_standin, to="email:ann@example.org"))
        assert bad.value.permanent
        assert twilio_standin.calls == []
        receipt = await connector.send(voice_message(twilio_standin))
        assert receipt.provider_id == twilio_standin.calls[0]["Sid"]
        assert twilio_standin.calls[0]["Url"] == f"{VOICE}?escalation={'t' * 32}"
    finally:
        await connector.aclose()
    nowhere = TwilioVoice(twilio_standin.account_sid, twilio_standin.auth_token,
                          api_url=twilio_standin.base_url, public_url=PUBLIC_URL,
                          from_number=None)
    await nowhere.start()
    try:
        with pytest.raises(SendError, match="GATEWAY_TWILIO_VOICE_NUMBER") as unset:
            await nowhere.send(voice_message(twilio_standin))
        assert unset.value.permanent
    finally:
        await nowhere.aclose()


# ---- call progress ---------------------------------------------------------------------------


def progress_events(voice: Voice, form: dict[str, str], dial: ET.Element
                    ) -> list[tuple[str, dict[str, str]]]:
    """What Twilio reports about one answered, 42-second call to agent 12: (url, form)."""
    parent = form["CallSid"]
    child = new_twilio_sid("CA")
    sip = dial.find("Sip")
    assert sip is not None
    leg = {"AccountSid": voice.twilio.account_sid, "CallSid": child, "ParentCallSid": parent,
           "Direction": "outbound-dial", "From": form["From"], "To": sip.text or "",
           "ApiVersion": "2010-04-01", "CallbackSource": "call-progress-events"}
    status_url = sip.attrib["statusCallback"]
    return [
        (status_url, {**leg, "CallStatus": "ringing", "SequenceNumber": "1"}),
        (status_url, {**leg, "CallStatus": "in-progress", "SequenceNumber": "2"}),
        (status_url, {**leg, "CallStatus": "completed", "CallDuration": "42",
                      "SequenceNumber": "3"}),
        (dial.attrib["action"], {**form, "CallStatus": "in-progress",
                                 "DialCallStatus": "completed", "DialCallSid": child,
                                 "DialCallDuration": "42"}),
        (VOICE_STATUS, {**form, "CallStatus": "completed", "CallDuration": "60"}),
    ]


@pytest.mark.parametrize("order", ["as-sent", "reversed", "shuffled-1", "shuffled-2"])
async def test_status_callbacks_in_any_order_record_answer_and_end_once(
    voice: Voice, order: str
) -> None:
    number = f"+1415555{random.Random(order).randrange(2000, 9999)}"
    call_sid, root = await voice.dial_in(number, pin=None)
    _, _, dial, _ = sip_target(root)
    agent = voice.gw.gw.agents.get("12")
    assert agent is not None and agent.active_calls == 1
    events = progress_events(voice, voice.call_form(number, call_sid), dial)
    if order == "reversed":
        events.reverse()
    elif order.startswith("shuffled"):
        random.Random(order).shuffle(events)
    for url, form in events:
        token = secrets.token_hex(16)
        assert (await voice.post(url, form, token=token))[0] == 200
        # Twilio retries with the same idempotency token; an answer may also be reported
        # again under a new one: neither is stored twice.
        assert (await voice.post(url, form, token=token))[0] == 200
        assert (await voice.post(url, form))[0] == 200
    texts = await voice.transcript_of(f"voice:{number}")
    assert texts.count("answered by agent 12") == 1
    ended = [t for t in texts if t.startswith("call ended after")]
    assert len(ended) == 1 and ended[0].endswith("with agent 12"), texts
    assert texts.count("call ringing (agent 12)") == 1
    assert agent.active_calls == 0


async def test_status_for_an_unknown_call_is_acknowledged(voice: Voice) -> None:
    form = {"AccountSid": voice.twilio.account_sid, "CallSid": new_twilio_sid("CA"),
            "CallStatus": "completed", "CallDuration": "3", "Direction": "inbound"}
    assert (await voice.post(VOICE_STATUS, form))[0] == 200
    child = {**form, "CallSid": new_twilio_sid("CA"), "ParentCallSid": form["CallSid"],
             "CallStatus": "in-progress"}
    assert (await voice.post(f"{VOICE_STATUS}?agent=12", child))[0] == 200


async def test_unanswered_agent_hands_the_call_to_the_next_then_lets_go(
    start_gateway: Any, twilio_standin: TwilioStandin
) -> None:
    agents = [{"id": "7", "contact": "sip:bob@10.0.0.7:5070;transport=tcp"},
              {"id": "8", "contact": "<sip:carol@10.0.0.8>"}]
    voice = await start_voice(start_gateway, twilio_standin, register=False, agents=agents)
    call_sid, root = await voice.dial_in(NUMBER, pin=None)
    first_uri, first_headers, dial, _ = sip_target(root)
    first = parse_qs(urlsplit(dial.attrib["action"]).query)["agent"][0]
    contacts = {"7": "sip:bob@10.0.0.7:5070;transport=tcp", "8": "sip:carol@10.0.0.8"}
    assert first_uri == contacts[first]  # a static contact is dialled as configured

    form = {**voice.call_form(NUMBER, call_sid), "CallStatus": "in-progress"}
    no_answer = {**form, "DialCallStatus": "no-answer", "DialCallSid": new_twilio_sid("CA")}
    again = await voice.twiml(dial.attrib["action"], no_answer)
    second_uri, second_headers, second_dial, _ = sip_target(again)
    second = "8" if first == "7" else "7"
    assert second_uri == contacts[second]
    assert second_headers["x-conversation-id"] == first_headers["x-conversation-id"]
    assert second_headers["x-context"] != first_headers["x-context"]
    directory = voice.gw.gw.agents
    busy = {a: directory.get(a).active_calls for a in (first, second)}  # type: ignore[union-attr]
    assert busy == {first: 0, second: 1}

    last = await voice.twiml(second_dial.attrib["action"], no_answer)
    assert [child.tag for child in last] == ["Say", "Hangup"]
    texts = await voice.transcript_of(f"voice:{NUMBER}")
    assert f"call transferred (agent {first} did not answer; trying agent {second})" in texts
    assert f"call failed (no agent answered; agent {second} did not answer)" in texts
    assert directory.get(second).active_calls == 0  # type: ignore[union-attr]


# ---- the SIP URI -----------------------------------------------------------------------------


def test_registered_agent_is_dialled_through_the_sip_edge_and_uris_stay_short() -> None:
    clock = FrozenClock()
    directory = AgentDirectory([AgentConfig(id="12", sip_user="alice", sip_password="pw")],
                               clock)
    agent = directory.get("12")
    assert agent is not None
    directory.register(agent, ALICE_PHONE, 60)
    target = directory.pick()
    assert target is not None
    routing = VoiceRouting(public_url=PUBLIC_URL, sip_host=SIP_DOMAIN, sip_port=5062)
    assert agent_sip_uri(target, directory, routing) == f"sip:alice@{SIP_DOMAIN}:5062"
    uri = with_context(agent_sip_uri(target, directory, routing), "a" * 32, "conv_1")
    assert uri == f"sip:alice@{SIP_DOMAIN}:5062?x-context={'a' * 32}&x-conversation-id=conv_1"
    static = AgentTarget("9", Contact("sip:bob@10.0.0.9?x-team=blue", None))
    assert with_context(agent_sip_uri(static, directory, routing), "b" * 32, "c").endswith(
        "?x-team=blue&x-context=" + "b" * 32 + "&x-conversation-id=c")
    huge = AgentTarget("9", Contact("sip:" + "b" * 1000 + "@10.0.0.9", None))
    with pytest.raises(RouteError, match="1024"):
        with_context(agent_sip_uri(huge, directory, routing), "c" * 32, "conv_1")
    assert with_context("sip:a@b", "t", "a b").endswith("x-conversation-id=a%20b")
