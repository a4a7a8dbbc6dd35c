"""Twilio Messaging webhooks through real HTTP on loopback: signatures (forged, mutated,
replayed, proxied), unicode, dedupe under a 10-way race, and status callbacks out of order.

Requests are signed with twilio's own algorithm for GATEWAY_PUBLIC_URL (a proxy's public
address) and sent to the gateway's loopback port, as a reverse proxy would forward them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from urllib.parse import urlencode

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.settings import ConfigError, load_settings
from tests.conftest import (
    BUSINESS_SMS,
    BUSINESS_WHATSAPP,
    PUBLIC_URL,
    Gateways,
    RunningGateway,
)
from tests.standins import (  # noqa: F401  (fixture)
    TwilioStandin,
    new_twilio_sid,
    twilio_sign,
    twilio_sms_form,
    twilio_standin,
    twilio_status_form,
)
from webhooks.signatures import parse_form
from webhooks.twilio_messaging import EMPTY_TWIML

CUSTOMER = "+14155550100"
MESSAGING = "/webhooks/twilio/messaging"
STATUS = "/webhooks/twilio/status"


@pytest.fixture
async def gw(start_gateway: Gateways, twilio_standin: TwilioStandin) -> RunningGateway:
    return await start_gateway(twilio=twilio_standin)


def sms_form(standin: TwilioStandin, body: str, **kwargs: object) -> dict[str, str]:
    return twilio_sms_form(  # type: ignore[arg-type]
        account_sid=standin.account_sid, from_=kwargs.pop("from_", CUSTOMER),
        to=kwargs.pop("to", BUSINESS_SMS), body=body, **kwargs)


async def test_signed_sms_is_stored_and_answered_with_empty_twiml(
    gw: RunningGateway, twilio_standin: TwilioStandin
) -> None:
    form = sms_form(twilio_standin, "My card was stolen")
    status, body, content_type = await gw.twilio(MESSAGING, form, twilio_standin.auth_token)
    assert status == 200
    assert body == EMPTY_TWIML == b'<?xml version="1.0" encoding="UTF-8"?><Response />'
    assert content_type.startswith("text/xml")
    customer = await gw.customer(f"sms:{CUSTOMER}")
    # An SMS sender id can be spoofed: the address is claimed, never attested.
    assert [(a["address"], a["evidence"]) for a in customer["addresses"]] == [
        (f"sms:{CUSTOMER}", "claimed")]
    [entry] = await gw.transcript(f"sms:{CUSTOMER}")
    assert (entry["channel"], entry["direction"], entry["text"]) == (
        "sms", "in", "My card was stolen")


async def test_whatsapp_through_twilio_keeps_media_profile_name_and_wa_id(
    gw: RunningGateway, twilio_standin: TwilioStandin
) -> None:
    media = [("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
              "image/jpeg"),
             ("https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME2",
              "application/pdf")]
    form = sms_form(twilio_standin, "photo of the receipt", from_=f"whatsapp:{CUSTOMER}",
                    to=BUSINESS_WHATSAPP, media=media, profile_name="Ann Example")
    status, _, _ = await gw.twilio(MESSAGING, form, twilio_standin.auth_token)
    assert status == 200
    customer = await gw.customer(f"whatsapp:{CUSTOMER}")
    assert customer["addresses"][0]["evidence"] == "attested"  # WhatsApp authenticates users
    [entry] = await gw.transcript(f"whatsapp:{CUSTOMER}")
    assert entry["channel"] == "whatsapp"
    assert entry["data"]["attachments"] == [
        {"url": media[0][0], "content_type": "image/jpeg", "name": None},
        {"url": media[1][0], "content_type": "application/pdf", "name": None},
    ]
    assert entry["data"]["extra"]["wa_id"] == CUSTOMER.lstrip("+")
    assert customer.get("display_name", "Ann Example") == "Ann Example"


@pytest.mark.parametrize("forgery", [
    "missing", "other-token", "mutated-body", "added-field", "removed-field",
    "loopback-url", "other-path", "garbage",
])
async def test_forged_or_mutated_signatures_get_403_and_store_nothing(
    gw: RunningGateway, twilio_standin: TwilioStandin, forgery: str
) -> None:
    form = sms_form(twilio_standin, "transfer all my money")
    signed_for, token = PUBLIC_URL + MESSAGING, twilio_standin.auth_token
    sent = dict(form)
    if forgery == "other-token":
        token = "0" * 32
    elif forgery == "mutated-body":
        sent["Body"] = "transfer all my money to Mallory"
    elif forgery == "added-field":
        sent["ForwardTo"] = "+15550000000"
    elif forgery == "removed-field":
        del sent["FromCity"]
    elif forgery == "loopback-url":
        signed_for = gw.url + MESSAGING  # the Host we were reached at is not the public URL
    elif forgery == "other-path":
        signed_for = PUBLIC_URL + STATUS
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if forgery == "garbage":
        headers["X-Twilio-Signature"] = "ünïcödé☃ and not base64"
    elif forgery != "missing":
        headers["X-Twilio-Signature"] = twilio_sign(token, signed_for, form)
    status, _, _ = await gw.post(MESSAGING, urlencode(sent).encode(), headers)
    assert status == 403
    assert await gw.counts() == (0, 0)
    status, _ = await gw.api("GET", "/api/v1/customers", params={"address": f"sms:{CUSTOMER}"})
    assert status == 404


async def test_replayed_request_is_stored_once_and_replayed_signature_fits_no_other_body(
    gw: RunningGateway, twilio_standin: TwilioStandin
) -> None:
    form = sms_form(twilio_standin, "first")
    signature = twilio_sign(twilio_standin.auth_token, PUBLIC_URL + MESSAGING, form)
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Twilio-Signature": signature}
    body = urlencode(form).encode()
    for _ in range(3):  # an attacker (or Twilio's retry) replays the exact request
        status, _, _ = await gw.post(MESSAGING, body, headers)
        assert status == 200
    assert await gw.counts() == (1, 1)
    # The captured signature on a new message (new MessageSid, new text) is refused.
    other = dict(form, MessageSid=new_twilio_sid("SM"), Body="second")
    status, _, _ = await gw.post(MESSAGING, urlencode(other).encode(), headers)
    assert status == 403
    assert await gw.counts() == (1, 1)


@pytest.mark.parametrize("text", [
    "Olá, não recebi o código 😀👍🏽",
    "Grüße aus Köln – ça va? Ñandú",
    "发票在哪里？ 🧾",
    "مرحبا، أحتاج مساعدة",
    "e\u0301 (combining) and e\u0301\u0301 and 🏳️‍🌈 zero-width joiner",
])
async def test_unicode_bodies_are_verified_and_stored_exactly(
    gw: RunningGateway, twilio_standin: TwilioStandin, text: str
) -> None:
    form = sms_form(twilio_standin, text, from_=f"whatsapp:{CUSTOMER}", to=BUSINESS_WHATSAPP,
                    profile_name="Zoë 🌸")
    status, _, _ = await gw.twilio(MESSAGING, form, twilio_standin.auth_token)
    assert status == 200
    [entry] = await gw.transcript(f"whatsapp:{CUSTOMER}")
    assert entry["text"] == text


async def test_same_message_sid_ten_times_concurrently_is_stored_once(
    start_gateway: Gateways, database_url: str, twilio_standin: TwilioStandin
) -> None:
    gw = await start_gateway(database_url=database_url, twilio=twilio_standin)
    form = sms_form(twilio_standin, "only once please")
    results = await asyncio.gather(*(
        gw.twilio(MESSAGING, form, twilio_standin.auth_token,
                  idempotency_token=f"retry-{i}") for i in range(10)))
    assert [r[0] for r in results] == [200] * 10
    assert all(r[1] == EMPTY_TWIML for r in results)
    assert await gw.counts() == (1, 1)
    assert len(await gw.transcript(f"sms:{CUSTOMER}")) == 1


async def test_parameters_twilio_adds_later_are_signed_and_accepted(
    gw: RunningGateway, twilio_standin: TwilioStandin
) -> None:
    form = sms_form(twilio_standin, "hello")
    form["SomeFieldTwilioAddedIn2027"] = "surprise"
    form["AnotherOne"] = ""
    status, _, _ = await gw.twilio(MESSAGING, form, twilio_standin.auth_token)
    assert status == 200
    assert await gw.counts() == (1, 1)


async def test_console_url_with_a_query_string_is_part_of_the_signature(
    gw: RunningGateway, twilio_standin: TwilioStandin
) -> None:
    path = MESSAGING + "?tenant=acme&note=a%20b"
    form = sms_form(twilio_standin, "hi from a tenant")
    status, _, _ = await gw.twilio(path, form, twilio_standin.auth_token)
    assert status == 200
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Twilio-Signature": twilio_sign(twilio_standin.auth_token,
                                                 PUBLIC_URL + MESSAGING, form)}
    status, _, _ = await gw.post(path, urlencode(form).encode(), headers)
    assert status == 403  # signed without the query: not the URL Twilio called


async def test_public_url_with_or_without_the_default_port_both_verify(
    gw: RunningGateway, twilio_standin: TwilioStandin
) -> None:
    # Twilio has signed https://host/... and https://host:443/... over the years.
    form = sms_form(twilio_standin, "port 443")
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Twilio-Signature": twilio_sign(
                   twilio_standin.auth_token, "https://gw.example.com:443" + MESSAGING, form)}
    status, _, _ = await gw.post(MESSAGING, urlencode(form).encode(), headers)
    assert status == 200


def _shared_key_signature(secret: str, url: str, form: dict[str, str]) -> str:
    data = url + "".join(k + form[k] for k in sorted(form))
    return base64.b64encode(hmac.new(secret.encode(), data.encode(), hashlib.sha256).digest()
                            ).decode()


async def test_webhook_rule_shared_key_signatures(
    start_gateway: Gateways, twilio_standin: TwilioStandin
) -> None:
    """A Twilio Webhook Rule signs with a SharedKey and names the algorithm in a header."""
    gw = await start_gateway(twilio=twilio_standin, twilio_webhook_shared_key="sk-secret")
    form = sms_form(twilio_standin, "signed with a shared key")
    sig = _shared_key_signature("sk-secret", PUBLIC_URL + MESSAGING, form)
    settings = {"X-Twilio-Webhooks-Signature-Settings": "key=KSabc,algorithm=HMAC_SHA256"}
    body = urlencode(form).encode()
    ok = await gw.post(MESSAGING, body, {"X-Twilio-Signature": sig, **settings,
                                         "Content-Type": "application/x-www-form-urlencoded"})
    assert ok[0] == 200
    # The same signature with the auth token's scheme, or an unknown algorithm: refused.
    wrong = await gw.post(MESSAGING, body, {"X-Twilio-Signature": sig})
    unknown = await gw.post(MESSAGING, body, {
        "X-Twilio-Signature": sig,
        "X-Twilio-Webhooks-Signature-Settings": "key=KSabc,algorithm=HMAC_MD5"})
    assert (wrong[0], unknown[0]) == (403, 403)
    assert await gw.counts() == (1, 1)


async def test_shared_key_signature_without_the_key_configured_stores_nothing(
    gw: RunningGateway, twilio_standin: TwilioStandin
) -> None:
    form = sms_form(twilio_standin, "who signed this?")
    sig = _shared_key_signature("sk-secret", PUBLIC_URL + MESSAGING, form)
    status, _, _ = await gw.post(MESSAGING, urlencode(form).encode(), {
        "X-Twilio-Signature": sig,
        "X-Twilio-Webhooks-Signature-Settings": "key=KSabc,algorithm=HMAC_SHA256"})
    # Anyone can send that header: a refusal with a warning, not a 500 (issue 7, finding 8).
    assert status == 403
    assert await gw.counts() == (0, 0)


async def test_signed_but_unreadable_message_is_refused_not_acknowledged(
    gw: RunningGateway, twilio_standin: TwilioStandin
) -> None:
    form = sms_form(twilio_standin, "hi", from_="messenger:1234567890")
    status, _, _ = await gw.twilio(MESSAGING, form, twilio_standin.auth_token)
    assert status == 400
    form = sms_form(twilio_standin, "hi")
    del form["MessageSid"], form["SmsMessageSid"], form["SmsSid"]
    status, _, _ = await gw.twilio(MESSAGING, form, twilio_standin.auth_token)
    assert status == 400
    assert await gw.counts() == (0, 0)


async def test_status_callbacks_out_of_order_never_move_a_message_backwards(
    start_gateway: Gateways, database_url: str, twilio_standin: TwilioStandin
) -> None:
    gw = await start_gateway(database_url=database_url, twilio=twilio_standin)
    await gw.twilio(MESSAGING, sms_form(twilio_standin, "hello"), twilio_standin.auth_token)
    conversation = (await gw.customer(f"sms:{CUSTOMER}"))["conversations"][0]["id"]
    status, reply = await gw.api("POST", f"/api/v1/conversations/{conversation}/messages",
                                 json={"text": "We are on it.", "agent": "alice"})
    assert status == 202
    [sent] = await twilio_standin.wait_for_messages(1)
    row = await gw.wait_outbox(reply["id"], lambda r: r["provider_id"] is not None)
    assert row["provider_id"] == sent["Sid"] and row["status"] == "queued"
    token = twilio_standin.auth_token

    async def callback(state: str, error_code: int | None = None) -> str:
        form = twilio_status_form(account_sid=twilio_standin.account_sid,
                                  message_sid=sent["Sid"], from_=BUSINESS_SMS, to=CUSTOMER,
                                  status=state, error_code=error_code)
        code, body, _ = await gw.twilio(STATUS, form, token,
                                        idempotency_token=f"{sent['Sid']}-{state}")
        assert code == 200, body
        return (await gw.outbox(reply["id"]))["status"]

    assert await callback("delivered") == "delivered"
    assert await callback("sent") == "delivered"  # late "sent": ignored
    assert await callback("queued") == "delivered"
    assert await callback("read") == "read"
    assert await callback("undelivered", 30003) == "read"
    assert await callback("delivered") == "read"


async def test_failed_status_callback_leaves_a_visible_error(
    gw: RunningGateway, twilio_standin: TwilioStandin
) -> None:
    await gw.twilio(MESSAGING, sms_form(twilio_standin, "hello"), twilio_standin.auth_token)
    conversation = (await gw.customer(f"sms:{CUSTOMER}"))["conversations"][0]["id"]
    _, reply = await gw.api("POST", f"/api/v1/conversations/{conversation}/messages",
                            json={"text": "reply"})
    [sent] = await twilio_standin.wait_for_messages(1)
    await gw.wait_outbox(reply["id"], lambda r: r["provider_id"] is not None)
    form = twilio_status_form(account_sid=twilio_standin.account_sid, message_sid=sent["Sid"],
                              from_=BUSINESS_SMS, to=CUSTOMER, status="undelivered",
                              error_code=30006)
    # Forged callbacks are refused like forged messages.
    forged = await gw.post(STATUS, urlencode(form).encode(), {"X-Twilio-Signature": "AAAA"})
    assert forged[0] == 403
    assert (await gw.outbox(reply["id"]))["status"] == "queued"
    status, _, _ = await gw.twilio(STATUS, form, twilio_standin.auth_token)
    assert status == 200
    row = await gw.outbox(reply["id"])
    assert row["status"] == "undelivered"
    assert "30006" in row["last_error"]


def test_a_twilio_account_without_an_auth_token_stops_start_up(settings_env: object) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_TWILIO_AUTH_TOKEN"):
        load_settings(twilio_account_sid="AC" + "0" * 32)
    with pytest.raises(ConfigError, match="GATEWAY_TWILIO_AUTH_TOKEN: must not be empty"):
        load_settings(twilio_account_sid="AC" + "0" * 32, twilio_auth_token="")


async def test_without_twilio_configured_the_webhook_is_not_served(start_gateway: Gateways) -> None:
    gw = await start_gateway()
    form = {"MessageSid": "SM" + "0" * 32, "From": CUSTOMER, "To": BUSINESS_SMS, "Body": "x"}
    status, _, _ = await gw.post(MESSAGING, urlencode(form).encode(), {
        "X-Twilio-Signature": twilio_sign("anything", PUBLIC_URL + MESSAGING, form)})
    assert status == 404
    assert await gw.counts() == (0, 0)


async def test_metrics_count_stored_duplicate_and_rejected(
    gw: RunningGateway, twilio_standin: TwilioStandin
) -> None:
    form = sms_form(twilio_standin, "count me")
    await gw.twilio(MESSAGING, form, twilio_standin.auth_token)
    await gw.twilio(MESSAGING, form, twilio_standin.auth_token)
    await gw.post(MESSAGING, urlencode(form).encode(), {})
    async with gw.http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert 'gateway_inbound_events_total{channel="sms",result="stored"} 1.0' in text
    assert 'gateway_inbound_events_total{channel="sms",result="duplicate"} 1.0' in text
    assert ('gateway_webhook_rejected_total{reason="missing",route="twilio-messaging"} 1.0'
            in text)


_form_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@given(st.lists(st.tuples(_form_text, _form_text), max_size=6))
def test_parse_form_reads_encoded_forms_exactly_as_parse_qsl(fields: list[tuple[str, str]]) -> None:
    body = urlencode(fields)
    assert list(parse_form(body.encode()).items()) == parse_qsl(body, keep_blank_values=True)


@given(st.text(alphabet="ab=&+%;/?#é😀 \t2F0", max_size=16))
def test_parse_form_reads_odd_bodies_exactly_as_parse_qsl(body: str) -> None:
    assert list(parse_form(body.encode()).items()) == parse_qsl(body, keep_blank_values=True)
