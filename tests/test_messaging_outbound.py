"""Outbound SMS and WhatsApp through the durable outbox to the provider stand-ins over real
HTTP: what each provider receives, retries after 5xx/429/timeouts (sent once), permanent
4xx failures that stay visible, OTP over SMS, and restarts with messages in the outbox."""

from __future__ import annotations

import base64
import re

import pytest

from connectors.twilio import TwilioMessaging
from connectors.whatsapp import WhatsAppCloud
from gateway.channels import SendError, TextMessage
from gateway.clock import FrozenClock
from tests.conftest import (
    BUSINESS_SMS,
    BUSINESS_WHATSAPP,
    PUBLIC_URL,
    Gateways,
    RunningGateway,
)
from tests.helpers import wait_until
from tests.standins import (  # noqa: F401  (fixtures)
    MetaGraphStandin,
    TwilioStandin,
    meta_graph_standin,
    meta_message_payload,
    twilio_sms_form,
    twilio_standin,
)

NUMBER = "+14155550100"
MESSAGING = "/webhooks/twilio/messaging"


async def customer_writes_sms(gw: RunningGateway, standin: TwilioStandin, text: str,
                              from_: str = NUMBER, to: str = BUSINESS_SMS) -> str:
    """The customer texts us; returns the conversation id."""
    form = twilio_sms_form(account_sid=standin.account_sid, from_=from_, to=to, body=text)
    status, _, _ = await gw.twilio(MESSAGING, form, standin.auth_token)
    assert status == 200
    channel = "whatsapp" if from_.startswith("whatsapp:") else "sms"
    number = from_.removeprefix("whatsapp:")
    return (await gw.customer(f"{channel}:{number}"))["conversations"][0]["id"]


async def reply(gw: RunningGateway, conversation: str, text: str) -> str:
    status, body = await gw.api("POST", f"/api/v1/conversations/{conversation}/messages",
                                json={"text": text, "agent": "alice"})
    assert status == 202, body
    return body["id"]


async def retry_now(gw: RunningGateway, clock: FrozenClock, seconds: float = 600) -> None:
    """Let the back-off elapse (the clock is the tests') and wake the worker."""
    clock.advance(seconds=seconds)
    gw.gw.outbox.wake()


# ---- what the providers receive ------------------------------------------------------------


async def test_sms_reply_reaches_twilio_as_twilio_requires(
    start_gateway: Gateways, twilio_standin: TwilioStandin
) -> None:
    gw = await start_gateway(twilio=twilio_standin)
    conversation = await customer_writes_sms(gw, twilio_standin, "Hello?")
    message_id = await reply(gw, conversation, "Hi, Alice here. Ça va? 😀")
    [sent] = await twilio_standin.wait_for_messages(1)
    assert (sent["To"], sent["From"], sent["Body"]) == (NUMBER, BUSINESS_SMS,
                                                         "Hi, Alice here. Ça va? 😀")
    assert sent["StatusCallback"] == f"{PUBLIC_URL}/webhooks/twilio/status"
    request = twilio_standin.requests[-1]
    assert request.path == f"/2010-04-01/Accounts/{twilio_standin.account_sid}/Messages.json"
    auth = base64.b64decode(request.headers["Authorization"].removeprefix("Basic ")).decode()
    assert auth == f"{twilio_standin.account_sid}:{twilio_standin.auth_token}"
    row = await gw.wait_outbox(message_id, lambda r: r["provider_id"] is not None)
    assert (row["status"], row["provider_id"], row["attempts"]) == ("queued", sent["Sid"], 1)


async def test_whatsapp_reply_through_twilio_gets_the_whatsapp_prefix(
    start_gateway: Gateways, twilio_standin: TwilioStandin
) -> None:
    gw = await start_gateway(twilio=twilio_standin)
    conversation = await customer_writes_sms(gw, twilio_standin, "hola",
                                             from_=f"whatsapp:{NUMBER}", to=BUSINESS_WHATSAPP)
    await reply(gw, conversation, "¡Hola! 👋")
    [sent] = await twilio_standin.wait_for_messages(1)
    assert (sent["To"], sent["From"]) == (f"whatsapp:{NUMBER}", BUSINESS_WHATSAPP)


async def test_with_meta_configured_whatsapp_goes_via_meta_and_sms_via_twilio(
    start_gateway: Gateways, twilio_standin: TwilioStandin, meta_graph_standin: MetaGraphStandin
) -> None:
    gw = await start_gateway(twilio=twilio_standin, meta=meta_graph_standin)
    status, _, _ = await gw.meta(meta_message_payload(
        meta_graph_standin.phone_number_id, "15550783881", NUMBER.lstrip("+"), "via meta"))
    assert status == 200
    conversation = (await gw.customer(f"whatsapp:{NUMBER}"))["conversations"][0]["id"]
    await reply(gw, conversation, "answer on WhatsApp")
    [wa] = await meta_graph_standin.wait_for_messages(1)
    assert wa["to"] == NUMBER and wa["type"] == "text"
    request = meta_graph_standin.requests[-1]
    assert request.path == f"/v21.0/{meta_graph_standin.phone_number_id}/messages"
    assert request.headers["Authorization"] == f"Bearer {meta_graph_standin.access_token}"
    # The same person texts by SMS: that leg is answered by Twilio.
    await customer_writes_sms(gw, twilio_standin, "and by SMS")
    await reply(gw, conversation, "answer by SMS")
    [sms] = await twilio_standin.wait_for_messages(1)
    assert (sms["To"], sms["Body"]) == (NUMBER, "answer by SMS")
    assert len(meta_graph_standin.messages) == 1


# ---- provider trouble ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_twilio_transient_error_then_success_is_sent_once(
    start_gateway: Gateways, twilio_standin: TwilioStandin, status: int
) -> None:
    clock = FrozenClock()
    gw = await start_gateway(twilio=twilio_standin, clock=clock)
    conversation = await customer_writes_sms(gw, twilio_standin, "help")
    twilio_standin.fail_next(1, status)
    message_id = await reply(gw, conversation, "on it")
    row = await gw.wait_outbox(message_id, lambda r: r["attempts"] == 1 and r["last_error"])
    assert row["status"] == "pending" and str(status) in row["last_error"]
    await retry_now(gw, clock)
    [sent] = await twilio_standin.wait_for_messages(1)
    row = await gw.wait_outbox(message_id, lambda r: r["status"] == "queued")
    assert (row["status"], row["attempts"], row["provider_id"]) == ("queued", 2, sent["Sid"])
    await gw.settle()
    assert len(twilio_standin.messages) == 1
    assert len([r for r in twilio_standin.requests if r.path.endswith("Messages.json")]) == 2


async def test_twilio_permanent_error_fails_visibly_without_retry(
    start_gateway: Gateways, twilio_standin: TwilioStandin
) -> None:
    clock = FrozenClock()
    gw = await start_gateway(twilio=twilio_standin, clock=clock)
    conversation = await customer_writes_sms(gw, twilio_standin, "help")
    twilio_standin.fail_next(1, 400, code=21610,
                             message="Attempt to send to unsubscribed recipient")
    message_id = await reply(gw, conversation, "on it")
    row = await gw.wait_outbox(message_id, lambda r: r["status"] == "failed")
    assert row["status"] == "failed"
    assert "21610" in row["last_error"] and "unsubscribed" in row["last_error"]
    await retry_now(gw, clock)
    await gw.settle()
    assert len(twilio_standin.requests) == 1 and twilio_standin.messages == []


async def test_twilio_body_too_long_is_refused_by_twilio_and_shown(
    start_gateway: Gateways, twilio_standin: TwilioStandin
) -> None:
    gw = await start_gateway(twilio=twilio_standin)
    conversation = await customer_writes_sms(gw, twilio_standin, "help")
    message_id = await reply(gw, conversation, "x" * 2000)
    row = await gw.wait_outbox(message_id, lambda r: r["status"] == "failed")
    assert "21617" in row["last_error"]


async def test_twilio_timeout_is_transient(twilio_standin: TwilioStandin) -> None:
    connector = TwilioMessaging(twilio_standin.account_sid, twilio_standin.auth_token,
                                api_url=twilio_standin.base_url, public_url=PUBLIC_URL,
                                from_number=BUSINESS_SMS, timeout=0.3)
    await connector.start()
    try:
        twilio_standin.delay_next(2.0)
        message = TextMessage(id="out_1", channel="sms",
                              to=f"sms:{NUMBER}", from_=None, text="slow")
        with pytest.raises(SendError) as caught:
            await connector.send(message)
        assert caught.value.permanent is False
        assert "no answer from Twilio" in str(caught.value)
    finally:
        await connector.aclose()


async def test_twilio_unreachable_is_transient() -> None:
    connector = TwilioMessaging("AC" + "0" * 32, "token", api_url="http://127.0.0.1:9",
                                public_url=PUBLIC_URL, from_number=BUSINESS_SMS, timeout=2)
    await connector.start()
    try:
        with pytest.raises(SendError) as caught:
            await connector.send(TextMessage(id="out_1", channel="sms",
                                             to=f"sms:{NUMBER}", from_=None, text="x"))
        assert caught.value.permanent is False
    finally:
        await connector.aclose()


async def test_wrong_twilio_credentials_fail_permanently(twilio_standin: TwilioStandin) -> None:
    connector = TwilioMessaging(twilio_standin.account_sid, "wrong-token",
                                api_url=twilio_standin.base_url, public_url=PUBLIC_URL,
                                from_number=BUSINESS_SMS)
    await connector.start()
    try:
        with pytest.raises(SendError) as caught:
            await connector.send(TextMessage(id="out_1", channel="sms",
                                             to=f"sms:{NUMBER}", from_=None, text="x"))
        assert caught.value.permanent is True and "401" in str(caught.value)
    finally:
        await connector.aclose()


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_meta_transient_error_then_success_is_sent_once(
    start_gateway: Gateways, meta_graph_standin: MetaGraphStandin, status: int
) -> None:
    clock = FrozenClock()
    gw = await start_gateway(meta=meta_graph_standin, clock=clock)
    await gw.meta(meta_message_payload(meta_graph_standin.phone_number_id, "15550783881",
                                       NUMBER.lstrip("+"), "hi"))
    conversation = (await gw.customer(f"whatsapp:{NUMBER}"))["conversations"][0]["id"]
    meta_graph_standin.fail_next(1, status)
    message_id = await reply(gw, conversation, "hello")
    row = await gw.wait_outbox(message_id, lambda r: r["attempts"] == 1 and r["last_error"])
    assert row["status"] == "pending"
    await retry_now(gw, clock)
    await meta_graph_standin.wait_for_messages(1)
    row = await gw.wait_outbox(message_id, lambda r: r["status"] == "accepted")
    assert (row["attempts"], row["provider_id"]) == (2, meta_graph_standin.message_ids[0])
    assert len(meta_graph_standin.messages) == 1


@pytest.mark.parametrize(("status", "code", "shown"), [
    (400, 131047, "24 hours"),
    (401, 190, "GATEWAY_WHATSAPP_ACCESS_TOKEN"),
    (400, 100, "Invalid parameter"),
])
async def test_meta_permanent_errors_fail_visibly(
    start_gateway: Gateways, meta_graph_standin: MetaGraphStandin, status: int, code: int, shown: str
) -> None:
    gw = await start_gateway(meta=meta_graph_standin)
    await gw.meta(meta_message_payload(meta_graph_standin.phone_number_id, "15550783881",
                                       NUMBER.lstrip("+"), "hi"))
    conversation = (await gw.customer(f"whatsapp:{NUMBER}"))["conversations"][0]["id"]
    meta_graph_standin.fail_next(1, status, code=code)
    message_id = await reply(gw, conversation, "hello")
    row = await gw.wait_outbox(message_id, lambda r: r["status"] == "failed")
    assert row["status"] == "failed"
    assert shown in row["last_error"] and str(code) in row["last_error"]
    assert len(meta_graph_standin.requests) == 1


async def test_meta_rate_limit_code_with_400_is_retried(
    meta_graph_standin: MetaGraphStandin,
) -> None:
    connector = WhatsAppCloud(api_url=meta_graph_standin.base_url + "/v21.0",
                              access_token=meta_graph_standin.access_token,
                              phone_number_id=meta_graph_standin.phone_number_id)
    await connector.start()
    try:
        meta_graph_standin.fail_next(1, 400, code=131056, message="(#131056) Pair rate limit hit")
        message = TextMessage(id="out_1", channel="whatsapp",
                              to=f"whatsapp:{NUMBER}", from_=None, text="x")
        with pytest.raises(SendError) as caught:
            await connector.send(message)
        assert caught.value.permanent is False
        receipt = await connector.send(message)
        assert receipt.provider_id == meta_graph_standin.message_ids[0]
    finally:
        await connector.aclose()


async def test_meta_timeout_is_transient(meta_graph_standin: MetaGraphStandin) -> None:
    connector = WhatsAppCloud(api_url=meta_graph_standin.base_url + "/v21.0",
                              access_token=meta_graph_standin.access_token,
                              phone_number_id=meta_graph_standin.phone_number_id, timeout=0.3)
    await connector.start()
    try:
        meta_graph_standin.delay_next(2.0)
        with pytest.raises(SendError) as caught:
            await connector.send(TextMessage(id="out_1", channel="whatsapp",
                                             to=f"whatsapp:{NUMBER}", from_=None, text="x"))
        assert caught.value.permanent is False and "no answer" in str(caught.value)
    finally:
        await connector.aclose()

# ---- OTP over SMS ---------------------------------------------------------------------------


def code_in(text: str) -> str:
    match = re.search(r"code is (\d{6})", text)
    assert match, text
    return match.group(1)


async def test_otp_over_sms_is_answered_by_sms_and_completes_the_grant(
    start_gateway: Gateways, twilio_standin: TwilioStandin
) -> None:
    gw = await start_gateway(twilio=twilio_standin)
    conversation = await customer_writes_sms(gw, twilio_standin, "I need to change my address")
    status, started = await gw.api("POST", f"/api/v1/conversations/{conversation}/verifications",
                                   json={})
    assert status == 202, started
    [otp] = await twilio_standin.wait_for_messages(1)
    assert otp["To"] == NUMBER and "verification code" in otp["Body"]
    await customer_writes_sms(gw, twilio_standin, code_in(otp["Body"]))
    customer = await gw.customer(f"sms:{NUMBER}")
    grant = customer["latest_verification"]
    assert grant is not None and grant["address"] == f"sms:{NUMBER}"
    assert {a["address"]: a["evidence"] for a in customer["addresses"]}[f"sms:{NUMBER}"] == "proved"
    # The confirmation goes back by SMS; the code never enters the transcript.
    confirmation = await twilio_standin.wait_for_messages(2)
    assert "verified" in confirmation[1]["Body"]
    texts = [e["text"] for e in await gw.transcript(f"sms:{NUMBER}")]
    assert code_in(otp["Body"]) not in " ".join(texts)


async def test_code_sent_by_sms_and_typed_in_whatsapp_chat_completes_the_grant(
    start_gateway: Gateways, twilio_standin: TwilioStandin, meta_graph_standin: MetaGraphStandin
) -> None:
    gw = await start_gateway(twilio=twilio_standin, meta=meta_graph_standin)
    conversation = await customer_writes_sms(gw, twilio_standin, "hello by SMS")
    await gw.meta(meta_message_payload(meta_graph_standin.phone_number_id, "15550783881",
                                       NUMBER.lstrip("+"), "and now on WhatsApp"))
    status, _ = await gw.api("POST", f"/api/v1/conversations/{conversation}/verifications",
                             json={"address": f"sms:{NUMBER}"})
    assert status == 202
    [otp] = await twilio_standin.wait_for_messages(1)
    await gw.meta(meta_message_payload(meta_graph_standin.phone_number_id, "15550783881",
                                       NUMBER.lstrip("+"), f"it is {code_in(otp['Body'])}"))
    grant = (await gw.customer(f"whatsapp:{NUMBER}"))["latest_verification"]
    assert grant is not None and grant["address"] == f"sms:{NUMBER}"
    [thanks] = await meta_graph_standin.wait_for_messages(1)  # answered where they typed it
    assert "verified" in thanks["text"]["body"]


# ---- restarts -------------------------------------------------------------------------------


async def test_restart_with_a_message_in_the_outbox_sends_it_exactly_once(
    start_gateway: Gateways, database_url: str, twilio_standin: TwilioStandin
) -> None:
    clock = FrozenClock()
    first = await start_gateway(database_url=database_url, twilio=twilio_standin, clock=clock)
    conversation = await customer_writes_sms(first, twilio_standin, "help")
    twilio_standin.fail_next(1, 503)
    message_id = await reply(first, conversation, "survives the restart")
    await first.wait_outbox(message_id, lambda r: r["attempts"] == 1 and r["last_error"])
    await first.stop()  # pending, due in the future: the old process never sent it
    assert twilio_standin.messages == []

    clock.advance(seconds=60)
    second = await start_gateway(database_url=database_url, twilio=twilio_standin, clock=clock)
    [sent] = await twilio_standin.wait_for_messages(1)
    assert sent["Body"] == "survives the restart"
    row = await second.wait_outbox(message_id, lambda r: r["status"] == "queued")
    assert (row["status"], row["provider_id"]) == ("queued", sent["Sid"])
    await second.stop()
    # And again: nothing new.
    third = await start_gateway(database_url=database_url, twilio=twilio_standin, clock=clock)
    await third.settle()
    assert len(twilio_standin.messages) == 1


async def test_message_in_flight_when_the_process_died_is_marked_unknown_not_resent(
    start_gateway: Gateways, database_url: str, twilio_standin: TwilioStandin
) -> None:
    """The old process dies mid-send; the new one must not send again."""
    first = await start_gateway(database_url=database_url, twilio=twilio_standin)
    conversation = await customer_writes_sms(first, twilio_standin, "help")
    twilio_standin.delay_next(1.5)
    message_id = await reply(first, conversation, "in doubt")
    await first.wait_outbox(message_id, lambda r: r["status"] == "sending")
    await wait_until(lambda: any(r.path.endswith("/Messages.json")
                                 for r in twilio_standin.requests), what="the send at Twilio")
    await first.gw.outbox.abandon()  # as SIGKILL: the request is on the wire, no outcome

    # Recovery runs at start.
    second = await start_gateway(database_url=database_url, twilio=twilio_standin)
    row = await second.outbox(message_id)
    assert row["status"] == "unknown" and "not resent" in row["last_error"]
    await second.gw.outbox.drain()
    # The old request lands at Twilio (it may well have): one message, never two.
    await twilio_standin.wait_for_messages(1, timeout=5)
    await second.settle()
    assert len(twilio_standin.messages) == 1
    assert (await second.outbox(message_id))["status"] == "unknown"

