"""What a new user reads in the log (issue 11, "Trying it as a new user"): one line per inbound
message and per call, with its conversation id; a signature failure names the URL it was
checked against and GATEWAY_PUBLIC_URL; outbox failures are warnings."""

from __future__ import annotations

import logging
from urllib.parse import urlencode

import pytest

from gateway.channels import SendError
from tests.conftest import BUSINESS_SMS, PUBLIC_URL, Gateways
from tests.helpers import wait_until
from tests.sip_client import SDP, SipTestClient
from tests.standins import (
    TwilioStandin,
    twilio_sign,
    twilio_sms_form,
    twilio_standin,  # noqa: F401  (fixture)
    twilio_status_form,
    twilio_voice_form,
)

CUSTOMER = "+14155550161"


def lines(caplog: pytest.LogCaptureFixture, text: str, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if text in r.getMessage() and (level is None or r.levelno == level)]


async def test_each_inbound_message_logs_one_line_with_its_conversation(
    start_gateway: Gateways, twilio_standin: TwilioStandin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gw = await start_gateway(twilio=twilio_standin, sip=False)
    for body in ("first", "second"):
        form = twilio_sms_form(account_sid=twilio_standin.account_sid, from_=CUSTOMER,
                               to=BUSINESS_SMS, body=body)
        assert (await gw.twilio("/webhooks/twilio/messaging", form,
                                twilio_standin.auth_token))[0] == 200
        # Twilio retries a delivery it had no answer for: stored once, logged once.
        assert (await gw.twilio("/webhooks/twilio/messaging", form,
                                twilio_standin.auth_token))[0] == 200
    conversation_id = (await gw.customer(f"sms:{CUSTOMER}"))["conversations"][0]["id"]
    logged = lines(caplog, conversation_id)
    assert len(logged) == 2, logged
    assert logged[0].startswith(f"inbound sms message from sms:{CUSTOMER}: conversation "
                                f"{conversation_id}, leg ") and logged[0].endswith("(new leg)")
    assert "(new leg)" not in logged[1]
    assert all(r.levelno == logging.INFO for r in caplog.records if conversation_id in r.message)


async def test_each_call_logs_one_line_with_its_conversation(
    start_gateway: Gateways, twilio_standin: TwilioStandin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with SipTestClient(user="alice") as phone, SipTestClient() as caller:
        await phone.open()
        gw = await start_gateway(
            twilio=twilio_standin, public_url=PUBLIC_URL, sip_service_users=["support"],
            twilio_voice_number=BUSINESS_SMS,
            agents=[{"id": "alice", "contact": f"sip:alice@127.0.0.1:{phone.port}"}])
        # A call through Twilio Voice: the caller has no PIN and is routed on.
        form = twilio_voice_form(account_sid=twilio_standin.account_sid, from_=CUSTOMER,
                                 to=BUSINESS_SMS)
        assert (await gw.twilio("/webhooks/twilio/voice?step=route", form,
                                twilio_standin.auth_token))[0] == 200
        # A SIP call to the service user: the agent's phone gets the INVITE.
        port = gw.gw.channels["sip"].edge.port  # type: ignore[attr-defined]
        await caller.open(port)
        caller.send(caller.request("INVITE", f"sip:support@127.0.0.1:{port}", body=SDP,
                                   from_=f"<sip:{CUSTOMER}@127.0.0.1>;tag=c1"), port)
        invite = await phone.expect("INVITE")
    conversation_id = invite.headers.get("X-Conversation-Id")
    assert conversation_id
    logged = lines(caplog, conversation_id)
    assert len(logged) == 2, logged
    twilio_line, sip_line = logged
    assert twilio_line.startswith(f"call {form['CallSid']} from voice:{CUSTOMER} (twilio, "
                                  "caller-id)")
    assert sip_line.startswith(f"call {invite.call_id} from voice:{CUSTOMER} (sip, caller-id)")
    assert sip_line.endswith(f"conversation {conversation_id}, leg "
                             + sip_line.rsplit("leg ", 1)[1])


async def test_a_signature_for_another_url_names_the_url_checked_and_the_setting(
    start_gateway: Gateways, twilio_standin: TwilioStandin, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(twilio=twilio_standin, sip=False)
    form = twilio_sms_form(account_sid=twilio_standin.account_sid, from_=CUSTOMER,
                           to=BUSINESS_SMS, body="via a tunnel")
    path = "/webhooks/twilio/messaging"
    # Twilio was pointed at a tunnel whose URL is not GATEWAY_PUBLIC_URL: it signs that one.
    signed = twilio_sign(twilio_standin.auth_token, "https://tunnel.example.net" + path, form)
    status, _, _ = await gw.post(path, urlencode(form).encode(), {
        "Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signed})
    assert status == 403
    [line] = lines(caplog, "X-Twilio-Signature", logging.WARNING)
    assert f"Checked against {PUBLIC_URL}{path}" in line and "GATEWAY_PUBLIC_URL" in line
    assert "nothing stored" in line


async def test_outbox_failures_are_warnings(
    start_gateway: Gateways, twilio_standin: TwilioStandin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gw = await start_gateway(sip=False)
    assert gw.memory is not None
    first = await gw.memory.receive("whatsapp:+14155550162", "hi", channel="whatsapp")
    # One failure at a time: the retry of "one" must not meet the failure meant for "two".
    gw.memory.fail_next = [SendError("provider answered 503", permanent=False)]
    retried = await gw.gw.core.reply(first.conversation_id, "one", None)
    row = await gw.wait_outbox(retried.id, lambda row: row["status"] == "sent")
    assert row["status"] == "sent", row
    gw.memory.fail_next = [SendError("21211: invalid 'To' number", permanent=True)]
    failed = await gw.gw.core.reply(first.conversation_id, "two", None)
    row = await gw.wait_outbox(failed.id, lambda row: row["status"] == "failed")
    assert row["status"] == "failed", row
    sent = await gw.gw.core.reply(first.conversation_id, "three", None)
    await gw.settle()
    assert (await gw.outbox(sent.id))["status"] == "sent"
    assert lines(caplog, f"{retried.id} to", logging.WARNING)[0].endswith(
        ": pending (provider answered 503)")
    assert lines(caplog, f"{failed.id} to", logging.WARNING)[0].endswith(
        ": failed (21211: invalid 'To' number)")
    assert lines(caplog, f"{sent.id} to", logging.INFO)[0].endswith(": sent")
    assert not lines(caplog, f"{sent.id} to", logging.WARNING)


async def test_a_message_the_provider_could_not_deliver_is_a_warning(
    start_gateway: Gateways, twilio_standin: TwilioStandin, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await start_gateway(twilio=twilio_standin, sip=False)
    form = twilio_sms_form(account_sid=twilio_standin.account_sid, from_=CUSTOMER,
                           to=BUSINESS_SMS, body="hello")
    assert (await gw.twilio("/webhooks/twilio/messaging", form,
                            twilio_standin.auth_token))[0] == 200
    conversation_id = (await gw.customer(f"sms:{CUSTOMER}"))["conversations"][0]["id"]
    reply = await gw.gw.core.reply(conversation_id, "we tried", None)
    row = await gw.wait_outbox(reply.id, lambda r: r["provider_id"])
    status = twilio_status_form(account_sid=twilio_standin.account_sid,
                                message_sid=row["provider_id"], from_=BUSINESS_SMS,
                                to=CUSTOMER, status="undelivered", error_code=30003)
    assert (await gw.twilio("/webhooks/twilio/status", status,
                            twilio_standin.auth_token))[0] == 200

    def warned() -> list[str]:
        return lines(caplog, f"outbox: {reply.id} undelivered by the provider", logging.WARNING)

    await wait_until(warned)
    assert "Twilio error 30003" in warned()[0] and conversation_id in warned()[0]
