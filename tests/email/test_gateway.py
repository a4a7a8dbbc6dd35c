"""Email through a whole running gateway: mail goes into a real Dovecot, the gateway reads it
over IMAP, agents answer through the HTTP API, and replies leave over SMTP to aiosmtpd.

Threads that hold (three replies; a client that rewrote In-Reply-To; ancestors we never
saw), robots recorded and never answered (an out-of-office, a bounce that fails our mail,
two gateways and an RFC 3834 responder that cannot loop), a code sent by mail and answered
on WhatsApp that proves the address, an email leg whose bundle shows the customer's
WhatsApp, SMS and call legs, and a stranger's name and subject that never become headers."""

from __future__ import annotations

import re
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from tests.conftest import BUSINESS_SMS, PUBLIC_URL, Gateways, RunningGateway
from tests.dovecot import Account, Dovecot
from tests.email.conftest import gateway_email_settings
from tests.email.support import OUR_ADDRESS, Received, SmtpBehaviour, SmtpServer, mail
from tests.email.test_parse import dsn
from tests.helpers import code_from, wait_until
from tests.standins import (  # noqa: F401  (fixtures)
    MetaGraphStandin,
    TwilioStandin,
    meta_graph_standin,
    meta_message_payload,
    twilio_sms_form,
    twilio_standin,
    twilio_voice_form,
)

pytestmark = pytest.mark.peers
ANN = "email:ann@example.org"
NUMBER = "+14155550100"
VOICE_NUMBER = "+15005550010"


async def customer_of(gw: RunningGateway, address: str, timeout: float = 15.0
                      ) -> dict[str, Any]:
    """The customer once the gateway has them (mail arrives asynchronously)."""
    found: dict[str, Any] = {}

    async def known() -> bool:
        status, body = await gw.api("GET", "/api/v1/customers", params={"address": address})
        found.update(body if status == 200 else {})
        return status == 200

    await wait_until(known, timeout=timeout, what=f"the customer {address}")
    return found


async def conversation(gw: RunningGateway, conversation_id: str) -> dict[str, Any]:
    status, body = await gw.api("GET", f"/api/v1/conversations/{conversation_id}")
    assert status == 200, body
    return body


async def entries_until(gw: RunningGateway, conversation_id: str,
                        done: Callable[[list[dict[str, Any]]], bool],
                        what: str, timeout: float = 15.0) -> list[dict[str, Any]]:
    """The transcript once `done(transcript)` holds."""
    transcript: list[dict[str, Any]] = []

    async def ready() -> bool:
        nonlocal transcript
        transcript = (await conversation(gw, conversation_id))["transcript"]
        return done(transcript)

    await wait_until(ready, timeout=timeout, what=what)
    return transcript


def has_text(text: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda transcript: any(e["text"] == text for e in transcript)


async def reply(gw: RunningGateway, conversation_id: str, text: str) -> str:
    status, body = await gw.api("POST", f"/api/v1/conversations/{conversation_id}/messages",
                                json={"text": text, "agent": "12"})
    assert status == 202, body
    assert body["channel"] == "email", body
    return str(body["id"])


def references(msg: EmailMessage) -> str:
    return " ".join(str(msg["References"]).split())  # as folded on the wire, unfolded


def reply_address(got: Received) -> str:
    return got.message["Reply-To"].addresses[0].addr_spec  # type: ignore[no-any-return]


# ---- threads -------------------------------------------------------------------------------


async def test_a_three_reply_thread_stays_one_conversation_in_both_clients(
        mail_gateway, dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer) -> None:
    gw = await mail_gateway()
    await dovecot.append(mailbox, [mail("Where is my order?", message_id="m1")])
    conv_id = (await customer_of(gw, ANN))["conversations"][0]["id"]
    refs = ["<m1@example.org>"]
    parent = "<m1@example.org>"
    for n in (1, 2, 3):
        await reply(gw, conv_id, f"Answer {n}")
        ours = (await smtp_server.wait(n))[-1]
        msg = ours.message
        assert ours.rcpt_tos == ["ann@example.org"]
        assert msg["Subject"] == "Re: Where is my order?"  # one Re:, the thread's subject
        assert msg["In-Reply-To"] == parent and references(msg) == " ".join(refs)
        assert msg["Auto-Submitted"] == "no"  # a person wrote it: robots may answer
        token = reply_address(ours).removeprefix("support+").removesuffix("@gw.test")
        assert re.fullmatch(r"[0-9a-f]{32}", token) and token in str(msg["Message-ID"])
        our_id = str(msg["Message-ID"]).strip()
        refs.append(our_id)
        # The customer's client answers our mail, to our Reply-To, as clients do.
        await dovecot.append(mailbox, [mail(
            "Re: Where is my order?", message_id=f"r{n}", to=reply_address(ours),
            headers={"In-Reply-To": our_id, "References": " ".join(refs)},
            body=f"Reply {n}")])
        await entries_until(gw, conv_id, has_text(f"Reply {n}"), f"reply {n}")
        refs.append(f"<r{n}@example.org>")
        parent = f"<r{n}@example.org>"
    conv = await conversation(gw, conv_id)
    assert [(e["direction"], e["text"]) for e in conv["transcript"]] == [
        ("in", "Hello, where is my order?"), ("out", "Answer 1"), ("in", "Reply 1"),
        ("out", "Answer 2"), ("in", "Reply 2"), ("out", "Answer 3"), ("in", "Reply 3")]
    [leg] = conv["legs"]
    assert (leg["channel"], leg["binding"]) == ("email", "attested")  # replies with our token
    customer = await customer_of(gw, ANN)
    assert [(a["address"], a["evidence"]) for a in customer["addresses"]] == [
        (ANN, "attested")]


async def test_a_reply_from_another_client_that_rewrote_the_headers_still_threads(
        mail_gateway, dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer) -> None:
    gw = await mail_gateway()
    await dovecot.append(mailbox, [mail("Invoice", message_id="m1")])
    conv_id = (await customer_of(gw, ANN))["conversations"][0]["id"]
    await reply(gw, conv_id, "Which invoice?")
    (ours,) = await smtp_server.wait(1)
    # Outlook on another machine: In-Reply-To names its own copy, References kept only the
    # first mail, our Reply-To (and so our token) unused.
    outlook = "AM0PR01MB1234.eurprd01.prod.outlook.com@example.org"  # mail() adds the domain
    await dovecot.append(mailbox, [mail(
        "RE: Invoice", message_id=outlook.removesuffix("@example.org"),
        body="The one from May.",
        headers={"In-Reply-To": "<AM0PR01MB9999.eurprd01.prod.outlook.com>",
                 "References": "<m1@example.org>", "Thread-Index": "AQHZ1234"})])
    await entries_until(gw, conv_id, has_text("The one from May."), "the Outlook reply")
    conv = await conversation(gw, conv_id)
    [leg] = conv["legs"]  # the same thread, the same leg
    assert leg["binding"] == "address"  # without our token the From is only a claim
    await reply(gw, conv_id, "Found it.")
    answer = (await smtp_server.wait(2))[-1].message
    assert answer["In-Reply-To"] == f"<{outlook}>"
    assert references(answer) == (  # its References and its In-Reply-To, then its id
        f"<m1@example.org> <AM0PR01MB9999.eurprd01.prod.outlook.com> <{outlook}>")
    assert ours.message["Message-ID"] != answer["Message-ID"]


async def test_ancestors_we_never_saw_in_references_still_thread(
        mail_gateway, dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer) -> None:
    gw = await mail_gateway()
    # Ann brings a thread she had with a colleague (x1, x2: never seen by us) to support.
    await dovecot.append(mailbox, [mail("Fwd: contract", message_id="m1", headers={
        "In-Reply-To": "<x2@corp.example>", "References": "<x1@corp.example> <x2@corp.example>"})])
    conv_id = (await customer_of(gw, ANN))["conversations"][0]["id"]
    await reply(gw, conv_id, "We will check the contract.")
    (ours,) = await smtp_server.wait(1)
    assert references(ours.message) == (
        "<x1@corp.example> <x2@corp.example> <m1@example.org>")  # her thread, then hers
    # Another thread of hers, then an answer to an older mail of the colleague thread:
    # only the foreign root x1 is in common with what we know.
    await dovecot.append(mailbox, [
        mail("Opening hours", message_id="h1", body="When do you open?"),
        mail("Re: contract", message_id="m7", body="Clause 4 too.", headers={
            "In-Reply-To": "<x5@corp.example>",
            "References": "<x1@corp.example> <x5@corp.example>"})])
    await entries_until(gw, conv_id, has_text("Clause 4 too."), "the later reply")
    conv = await conversation(gw, conv_id)
    legs = {e["text"]: e["leg_id"] for e in conv["transcript"]}
    assert legs["Clause 4 too."] == legs["Hello, where is my order?"]
    assert legs["When do you open?"] != legs["Clause 4 too."]


# ---- robots ----------------------------------------------------------------------------------


async def test_an_auto_reply_and_a_bounce_are_recorded_and_never_answered(
        mail_gateway, dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer) -> None:
    gw = await mail_gateway()
    await dovecot.append(mailbox, [mail("Order", message_id="m1")])
    conv_id = (await customer_of(gw, ANN))["conversations"][0]["id"]
    first = await reply(gw, conv_id, "It left today.")
    status, started = await gw.api("POST", f"/api/v1/conversations/{conv_id}/verifications")
    assert status == 202, started
    ours, code_mail = await smtp_server.wait(2)
    assert code_mail.message["Auto-Submitted"] == "auto-replied"
    our_id = ours.message["Message-ID"].strip("<>")
    ooo = mail("Automatic reply: Re: Order", message_id="ooo1", body="123 456",
               headers={"Auto-Submitted": "auto-replied", "In-Reply-To": f"<{our_id}>"})
    await dovecot.append(mailbox, [ooo, dsn(original_id=our_id)])
    transcript = await entries_until(
        gw, conv_id, lambda t: {"auto-reply", "bounce"} <= {e["kind"] for e in t},
        "the out-of-office and the bounce")
    robots = [e for e in transcript if e["kind"] in ("auto-reply", "bounce")]
    assert [(e["kind"], e["author"]) for e in robots] == [
        ("auto-reply", ANN), ("bounce", "email:MAILER-DAEMON@mx.example.org")]
    row = await gw.wait_outbox(first, lambda r: r["status"] == "failed")
    assert row["status"] == "failed" and "5.1.1" in row["last_error"]
    await gw.settle()
    assert len(smtp_server.received) == 2  # nothing answered a robot
    texts = [e["text"] for e in (await conversation(gw, conv_id))["transcript"]]
    assert not any("code" in t.lower() and "not right" in t.lower() for t in texts)
    customers = await customer_of(gw, ANN)
    assert len(customers["addresses"]) == 1  # the mail server is nobody's address


async def test_two_gateways_mailing_each_other_stop(
        start_gateway: Gateways, dovecot: Dovecot, mailbox: Account,
        smtp_server: SmtpServer, tmp_path: Path) -> None:
    """Each gateway is the other's customer, and each has sent the other a code, so each
    would answer a wrong code. One person's mail that looks like a code draws one automatic
    answer; that answer says it is automatic, so the other side records it and stops."""
    a_box, b_box = mailbox, dovecot.new_account()
    a_addr, b_addr = "support@gw-a.test", "support@gw-b.test"

    async def deliver(got: Received) -> None:  # the SMTP server is both sides' MX
        for rcpt in got.rcpt_tos:
            box = a_box if rcpt.endswith("@gw-a.test") else b_box
            await dovecot.append(box, [got.content])

    smtp_server.behaviour = SmtpBehaviour(on_message=deliver)
    a = await start_gateway(sip=False, **gateway_email_settings(
        dovecot, a_box, smtp_server, tmp_path / "a-mail", a_addr))
    b = await start_gateway(sip=False, database_url=f"sqlite+aiosqlite:///{tmp_path}/b.db",
                            **gateway_email_settings(dovecot, b_box, smtp_server,
                                                     tmp_path / "b-mail", b_addr))
    await dovecot.append(a_box, [mail("Hello A", sender=b_addr, to=a_addr, message_id="hb")])
    await dovecot.append(b_box, [mail("Hello B", sender=a_addr, to=b_addr, message_id="ha")])
    a_conv = (await customer_of(a, f"email:{b_addr}"))["conversations"][0]["id"]
    b_conv = (await customer_of(b, f"email:{a_addr}"))["conversations"][0]["id"]
    for gw, conv in ((a, a_conv), (b, b_conv)):
        status, body = await gw.api("POST", f"/api/v1/conversations/{conv}/verifications")
        assert status == 202, body
    await smtp_server.wait(2)
    await reply(a, a_conv, "123 456")  # a person's words that read as a code to B
    await smtp_server.wait(4)
    notice = await entries_until(a, a_conv, has_text("That code is not right; please try "
                                                      "again."), "B's automatic answer")
    assert [e["kind"] for e in notice if e["text"].startswith("That code")] == ["auto-reply"]
    for gw in (a, b):
        await gw.settle()
    await entries_until(b, b_conv, lambda t: sum(e["kind"] == "auto-reply" for e in t) == 1,
                        "A's code mail recorded at B")
    assert len(smtp_server.received) == 4  # 2 codes, A's reply, B's notice: then silence
    kinds = [m.message["Auto-Submitted"] for m in smtp_server.received]
    assert kinds.count("auto-replied") == 3 and kinds.count("no") == 1


async def test_an_rfc3834_responder_and_the_gateway_do_not_loop(
        mail_gateway, dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer) -> None:
    """The customer's mailbox answers every mail that is not itself automatic with an
    out-of-office note. An agent's reply draws one; the gateway's own code mail none."""
    answers: list[str] = []

    async def responder(got: Received) -> None:
        msg = got.message
        if str(msg.get("Auto-Submitted", "no")).lower() != "no":
            return
        answers.append(str(msg["Message-ID"]))
        await dovecot.append(mailbox, [mail(
            "Automatic reply: " + str(msg["Subject"]), message_id=f"ooo{len(answers)}",
            headers={"Auto-Submitted": "auto-replied", "In-Reply-To": str(msg["Message-ID"])},
            body="I am out of the office.")])

    smtp_server.behaviour = SmtpBehaviour(on_message=responder)
    gw = await mail_gateway()
    await dovecot.append(mailbox, [mail("Order", message_id="m1")])
    conv_id = (await customer_of(gw, ANN))["conversations"][0]["id"]
    await reply(gw, conv_id, "Your parcel left today.")
    status, _ = await gw.api("POST", f"/api/v1/conversations/{conv_id}/verifications")
    assert status == 202
    await smtp_server.wait(2)
    await entries_until(gw, conv_id, has_text("I am out of the office."), "the out-of-office")
    await gw.settle()
    assert len(answers) == 1 and len(smtp_server.received) == 2


# ---- identity and context across channels -----------------------------------------------------


async def test_a_code_sent_by_mail_and_answered_on_whatsapp_proves_the_address(
        mail_gateway, dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer,
        meta_graph_standin: MetaGraphStandin) -> None:
    gw = await mail_gateway(meta=meta_graph_standin)
    wa = NUMBER.removeprefix("+")
    status, _, _ = await gw.meta(meta_message_payload(
        meta_graph_standin.phone_number_id, "15550783881", wa, "My email is ann@example.org"))
    assert status == 200
    conv_id = (await customer_of(gw, f"whatsapp:{NUMBER}"))["conversations"][0]["id"]
    status, started = await gw.api("POST", f"/api/v1/conversations/{conv_id}/verifications",
                                   json={"address": ANN})
    assert status == 202 and started["address"] == ANN, started
    (code_mail,) = await smtp_server.wait(1)
    assert code_mail.rcpt_tos == ["ann@example.org"]
    assert code_mail.message["Subject"] == "Your verification code"
    code = code_from(code_mail.text)
    assert code not in str(await conversation(gw, conv_id))  # never in the transcript
    status, _, _ = await gw.meta(meta_message_payload(
        meta_graph_standin.phone_number_id, "15550783881", wa, code))
    assert status == 200
    await entries_until(gw, conv_id, has_text(f"verified {ANN} by email-otp"), "the proof")
    customer = await customer_of(gw, f"whatsapp:{NUMBER}")
    evidence = {a["address"]: a["evidence"] for a in customer["addresses"]}
    assert evidence == {f"whatsapp:{NUMBER}": "attested", ANN: "proved"}
    # She writes by mail from the proved address: the same customer, the same conversation.
    await dovecot.append(mailbox, [mail("Still waiting", message_id="e1",
                                        body="Any news about my order?")])
    transcript = await entries_until(gw, conv_id, has_text("Any news about my order?"),
                                     "her mail in the same conversation")
    assert {e["channel"] for e in transcript} == {"whatsapp", "email"}
    assert (await customer_of(gw, ANN))["id"] == customer["id"]


async def test_an_email_legs_bundle_shows_the_whatsapp_sms_and_call_legs_before_it(
        mail_gateway, dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer,
        meta_graph_standin: MetaGraphStandin, twilio_standin: TwilioStandin) -> None:
    gw = await mail_gateway(meta=meta_graph_standin, twilio=twilio_standin,
                            twilio_voice_number=VOICE_NUMBER)
    wa = NUMBER.removeprefix("+")
    await gw.meta(meta_message_payload(meta_graph_standin.phone_number_id, "15550783881", wa,
                                       "My parcel is late"))
    await gw.twilio("/webhooks/twilio/messaging", twilio_sms_form(
        account_sid=twilio_standin.account_sid, from_=NUMBER, to=BUSINESS_SMS,
        body="Texting too: order 4711"), twilio_standin.auth_token)
    await call_in(gw, twilio_standin, NUMBER)
    conv_id = (await customer_of(gw, f"whatsapp:{NUMBER}"))["conversations"][0]["id"]
    await gw.api("POST", f"/api/v1/conversations/{conv_id}/verifications",
                 json={"address": ANN})
    (code_mail,) = await smtp_server.wait(1)
    await gw.twilio("/webhooks/twilio/messaging", twilio_sms_form(
        account_sid=twilio_standin.account_sid, from_=NUMBER, to=BUSINESS_SMS,
        body=code_from(code_mail.text)), twilio_standin.auth_token)
    await entries_until(gw, conv_id, has_text(f"verified {ANN} by email-otp"), "the proof")
    await dovecot.append(mailbox, [mail("Order 4711", message_id="e1", body="Here by mail")])
    await entries_until(gw, conv_id, has_text("Here by mail"), "the mail")
    legs = (await conversation(gw, conv_id))["legs"]
    email_leg = next(leg for leg in legs if leg["channel"] == "email")
    link = await gw.gw.core.issue_context(email_leg["id"])  # what the agent's console opens
    async with gw.http.get(gw.url + URL(link.url).path) as resp:  # no bearer: a capability
        assert resp.status == 200
        bundle = await resp.json()
    assert [leg["channel"] for leg in bundle["legs"]] == ["whatsapp", "sms", "voice", "email"]
    assert bundle["leg"]["id"] == email_leg["id"]
    said = [e["text"] for e in bundle["transcript"]]
    assert "My parcel is late" in said and "Texting too: order 4711" in said
    # Disclosure (CONTRACT.md): a From header alone carries no verification, so the bundle
    # is limited: what was said after the verification (this mail too) is withheld.
    assert bundle["disclosure"] == "limited"
    assert bundle["transcript"][-1]["withheld"] and said[-1] is None
    # A From header alone never carries the verification (the trust rules).
    assert bundle["verification"] is None
    assert bundle["verification_reason"] == "address-not-attested"
    # The console's view of the conversation: every leg, and a reply goes out by mail.
    status, view = await gw.api("GET", f"/api/v1/conversations/{conv_id}/timeline")
    assert status == 200, view
    assert [leg["channel"] for leg in view["legs"]] == ["whatsapp", "sms", "voice", "email"]
    assert view["reply_leg_id"] == email_leg["id"]
    assert [i["text"] for i in view["timeline"] if i["type"] == "entry"][-1] == "Here by mail"


async def call_in(gw: RunningGateway, twilio: TwilioStandin, number: str) -> None:
    """An inbound call through Twilio Voice, answering the PIN prompt with # (no PIN)."""
    form = twilio_voice_form(account_sid=twilio.account_sid, from_=number, to=VOICE_NUMBER)
    status, body = await signed_post(gw, twilio, f"{PUBLIC_URL}/webhooks/twilio/voice", form)
    assert status == 200, body
    action = re.search(r'action="([^"]+)"', body)
    assert action is not None, body
    answered = {**form, "CallStatus": "in-progress", "Digits": "", "FinishedOnKey": "#"}
    status, body = await signed_post(gw, twilio, action.group(1).replace("&amp;", "&"),
                                     answered)
    assert status == 200, body


async def signed_post(gw: RunningGateway, twilio: TwilioStandin, url: str,
                      form: dict[str, str]) -> tuple[int, str]:
    from tests.standins import twilio_webhook_request

    body, headers = twilio_webhook_request(twilio.auth_token, url, form)
    target = URL(gw.url + url.removeprefix(PUBLIC_URL), encoded=True)
    async with gw.http.post(target, data=body, headers=headers) as resp:
        return resp.status, await resp.text()


# ---- what a stranger controls ----------------------------------------------------------------


async def test_a_strangers_name_and_subject_never_become_headers_or_recipients_of_our_reply(
        mail_gateway, dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer) -> None:
    # The attack arrives encoded, so it survives the inbound mail system intact …
    raw = ("From: =?utf-8?q?Ann=0D=0ABcc:_evil@attacker.test?= <ann@example.org>\r\n"
           "To: support@gw.test\r\n"
           "Subject: =?utf-8?b?T3JkZXINCkJjYzogZXZpbEBhdHRhY2tlci50ZXN0?=\r\n"
           "Message-ID: <evil@example.org>\r\n\r\nhello\r\n").encode()
    gw = await mail_gateway()
    await dovecot.append(mailbox, [raw])
    customer = await customer_of(gw, ANN)
    conv_id = customer["conversations"][0]["id"]
    # … and the agent answers: the gateway writes the stored name and subject back.
    await reply(gw, conv_id, "We are on it.\r\nBcc: evil@attacker.test")
    (got,) = await smtp_server.wait(1)
    assert got.rcpt_tos == ["ann@example.org"] and got.mail_from == OUR_ADDRESS
    msg: EmailMessage = got.message
    assert "Bcc" not in msg and "Cc" not in msg
    assert [a.addr_spec for a in msg["To"].addresses] == ["ann@example.org"]
    assert msg["To"].addresses[0].display_name == "Ann Bcc: evil@attacker.test"
    assert msg["Subject"] == "Re: Order Bcc: evil@attacker.test"
