"""The provider stand-ins behave like Twilio and Meta to the real client libraries, and
the webhook builders produce what those providers send."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re

import aiohttp
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from tests.standins import (
    MetaGraphStandin,
    TwilioStandin,
    meta_message_payload,
    meta_status_payload,
    meta_verification_params,
    meta_webhook_request,
    new_twilio_sid,
    sign_meta,
    twilio_sign,
    twilio_sms_form,
    twilio_status_form,
    twilio_voice_form,
    twilio_webhook_request,
)

SID = "AC" + "1f" * 16
TOKEN = "c0ffee" * 5 + "ab"
AUTH = {"Authorization": aiohttp.encode_basic_auth(SID, TOKEN)}


def _client(base_url: str, sid: str = SID, token: str = TOKEN) -> Client:
    client = Client(sid, token, http_client=AsyncTwilioHttpClient())
    client.api.base_url = base_url
    return client


@pytest.fixture
async def twilio() -> TwilioStandin:
    async with TwilioStandin(SID, TOKEN) as standin:
        yield standin


@pytest.fixture
async def graph() -> MetaGraphStandin:
    async with MetaGraphStandin("EAAGtoken", "106540352242922") as standin:
        yield standin


# --- Twilio REST


async def test_twilio_library_sends_an_sms_through_the_standin(twilio: TwilioStandin) -> None:
    client = _client(twilio.base_url)
    try:
        message = await client.messages.create_async(
            to="+14155550100",
            from_="+14155550199",
            body="Your code is 123456",
            status_callback="http://127.0.0.1:8080/webhooks/twilio/status",
        )
    finally:
        await client.http_client.close()
    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
    assert (message.status, message.to, message.from_, message.body) == (
        "queued",
        "+14155550100",
        "+14155550199",
        "Your code is 123456",
    )
    assert message.num_segments == "1" and message.direction == "outbound-api"
    assert message.date_created is not None and message.date_created.tzinfo is not None
    assert message.uri == f"/2010-04-01/Accounts/{SID}/Messages/{message.sid}.json"
    assert twilio.messages == [
        {
            "To": "+14155550100",
            "From": "+14155550199",
            "Body": "Your code is 123456",
            "StatusCallback": "http://127.0.0.1:8080/webhooks/twilio/status",
            "Sid": message.sid,
        }
    ]


async def test_twilio_library_sends_whatsapp_and_places_a_call(twilio: TwilioStandin) -> None:
    client = _client(twilio.base_url)
    try:
        message = await client.messages.create_async(
            to="whatsapp:+14155550100", from_="whatsapp:+14155550199", body="Hi"
        )
        call = await client.calls.create_async(
            to="+14155550100",
            from_="+14155550199",
            url="http://127.0.0.1:8080/webhooks/twilio/voice",
        )
        fetched = await client.messages(message.sid).fetch_async()
    finally:
        await client.http_client.close()
    assert message.to == "whatsapp:+14155550100"
    assert re.fullmatch(r"CA[0-9a-f]{32}", call.sid) and call.status == "queued"
    assert twilio.calls[0]["Url"] == "http://127.0.0.1:8080/webhooks/twilio/voice"
    assert fetched.sid == message.sid and fetched.body == "Hi"


async def test_twilio_rejects_a_wrong_token_with_its_authenticate_error(
    twilio: TwilioStandin,
) -> None:
    client = _client(twilio.base_url, token="wrong")
    try:
        with pytest.raises(TwilioRestException) as caught:
            await client.messages.create_async(to="+14155550100", from_="+14155550199", body="x")
    finally:
        await client.http_client.close()
    assert (caught.value.status, caught.value.code) == (401, 20003)
    assert twilio.messages == [] and twilio.requests[0].status == 401
    assert twilio.requests[0].response == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }


async def test_twilio_checks_the_account_in_the_path(twilio: TwilioStandin) -> None:
    other = new_twilio_sid("AC")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{twilio.base_url}/2010-04-01/Accounts/{other}/Messages.json",
            data={"To": "+14155550100", "From": "+14155550199", "Body": "x"},
            headers=AUTH,
        ) as response:
            assert response.status == 404
            assert (await response.json())["code"] == 20404


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"From": "+14155550199", "Body": "x"}, 21604),
        ({"To": "+14155550100", "Body": "x"}, 21603),
        ({"To": "+14155550100", "From": "+14155550199"}, 21602),
        ({"To": "14155550100", "From": "+14155550199", "Body": "x"}, 21211),
        ({"To": "whatsapp:+14155550100", "From": "+14155550199", "Body": "x"}, 21910),
        ({"To": "+14155550100", "From": "+14155550199", "Body": "x" * 1601}, 21617),
    ],
)
async def test_twilio_validates_message_fields_like_twilio(
    twilio: TwilioStandin, fields: dict[str, str], code: int
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{twilio.base_url}/2010-04-01/Accounts/{SID}/Messages.json", data=fields, headers=AUTH
        ) as response:
            body = await response.json()
    assert (response.status, body["code"], body["status"]) == (400, code, 400)
    assert twilio.messages == []


async def test_twilio_messaging_service_and_media_and_segments(twilio: TwilioStandin) -> None:
    service = new_twilio_sid("MG")
    client = _client(twilio.base_url)
    try:
        queued = await client.messages.create_async(
            to="+14155550100", messaging_service_sid=service, body="hello"
        )
        media = await client.messages.create_async(
            to="+14155550100", from_="+14155550199", media_url=["https://example.org/a.png"]
        )
        long_unicode = await client.messages.create_async(
            to="+14155550100", from_="+14155550199", body="ü€😀" * 30
        )
        with pytest.raises(TwilioRestException) as caught:
            await client.calls.create_async(to="+14155550100", from_="+14155550199")
    finally:
        await client.http_client.close()
    assert queued.status == "accepted" and queued.messaging_service_sid == service
    assert media.sid.startswith("MM") and media.num_media == "1"
    assert long_unicode.num_segments == "2"
    assert caught.value.code == 21205
    assert twilio.messages[1]["MediaUrl"] == "https://example.org/a.png"


async def test_twilio_failure_injection_then_recovery(twilio: TwilioStandin) -> None:
    twilio.fail_next(2, status=503)
    client = _client(twilio.base_url)
    try:
        for _ in range(2):
            with pytest.raises(TwilioRestException) as caught:
                await client.messages.create_async(
                    to="+14155550100", from_="+14155550199", body="x"
                )
            assert (caught.value.status, caught.value.code) == (503, 20503)
        await client.messages.create_async(to="+14155550100", from_="+14155550199", body="x")
    finally:
        await client.http_client.close()
    assert [r.status for r in twilio.requests] == [503, 503, 201]
    assert len(twilio.messages) == 1


async def test_twilio_delay_makes_a_client_time_out_and_close_stays_fast() -> None:
    standin = TwilioStandin(SID, TOKEN)
    await standin.start()
    standin.delay_next(30)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as http:
        with pytest.raises(asyncio.TimeoutError):
            await http.post(
                f"{standin.base_url}/2010-04-01/Accounts/{SID}/Messages.json",
                data={"To": "+14155550100", "From": "+14155550199", "Body": "x"},
                headers=AUTH,
            )
    await asyncio.wait_for(standin.close(), 3)  # a held request does not hold up close


async def test_twilio_delay_needs_asyncio_timeout_around_the_twilio_library() -> None:
    # AsyncTwilioHttpClient(timeout=...) is not applied to requests in twilio 9.13: only
    # a deadline around the call bounds a slow Twilio.
    async with TwilioStandin(SID, TOKEN) as standin:
        standin.delay_next(30)
        client = _client(standin.base_url)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await client.messages.create_async(
                        to="+14155550100", from_="+14155550199", body="x"
                    )
        finally:
            await client.http_client.close()
        assert standin.messages == []


async def test_twilio_wait_for_messages(twilio: TwilioStandin) -> None:
    async def send_later() -> None:
        await asyncio.sleep(0.05)
        client = _client(twilio.base_url)
        try:
            await client.messages.create_async(
                to="+14155550100", from_="+14155550199", body="later"
            )
        finally:
            await client.http_client.close()

    task = asyncio.create_task(send_later())
    messages = await twilio.wait_for_messages(1, timeout=5)
    await task
    assert messages[0]["Body"] == "later"


# --- Twilio webhooks to the gateway


def test_twilio_signature_validates_with_twilios_own_validator() -> None:
    url = "http://127.0.0.1:8080/webhooks/twilio/messaging"
    form = twilio_sms_form(account_sid=SID, from_="+14155550100", to="+14155550199", body="hi")
    body, headers = twilio_webhook_request(TOKEN, url, form)
    assert RequestValidator(TOKEN).validate(url, form, headers["X-Twilio-Signature"])
    assert not RequestValidator("other").validate(url, form, twilio_sign(TOKEN, url, form))
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert b"Body=hi" in body


def test_twilio_sms_and_whatsapp_forms_carry_the_documented_fields() -> None:
    sms = twilio_sms_form(account_sid=SID, from_="+14155550100", to="+14155550199", body="hi")
    assert re.fullmatch(r"SM[0-9a-f]{32}", sms["MessageSid"])
    assert sms["SmsSid"] == sms["SmsMessageSid"] == sms["MessageSid"]
    assert (sms["NumMedia"], sms["NumSegments"], sms["SmsStatus"], sms["ApiVersion"]) == (
        "0",
        "1",
        "received",
        "2010-04-01",
    )
    assert "FromCity" in sms and "WaId" not in sms

    wa = twilio_sms_form(
        account_sid=SID,
        from_="whatsapp:+14155550100",
        to="whatsapp:+14155550199",
        body="hola",
        profile_name="Ann",
        media=[("https://api.twilio.com/media/ME1", "image/jpeg")],
    )
    assert (wa["ProfileName"], wa["WaId"]) == ("Ann", "14155550100")
    assert (wa["NumMedia"], wa["MediaContentType0"]) == ("1", "image/jpeg")
    assert wa["MessageSid"].startswith("MM") and "FromCity" not in wa

    status = twilio_status_form(
        account_sid=SID,
        message_sid=sms["MessageSid"],
        from_="+14155550199",
        to="+14155550100",
        status="undelivered",
        error_code=30003,
    )
    assert (status["MessageStatus"], status["ErrorCode"]) == ("undelivered", "30003")
    voice = twilio_voice_form(
        account_sid=SID, from_="+14155550100", to="+14155550199", digits="1234"
    )
    assert voice["CallSid"].startswith("CA") and voice["Digits"] == "1234"
    assert voice["CallStatus"] == "ringing" and voice["Direction"] == "inbound"


# --- Meta Graph API


async def _send(
    graph: MetaGraphStandin,
    body: object,
    *,
    token: str | None = "EAAGtoken",
    phone_number_id: str | None = None,
    version: str = "v21.0",
) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{graph.base_url}/{version}/{phone_number_id or graph.phone_number_id}/messages"
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=body, headers=headers) as response:
            return response.status, await response.json()


async def test_meta_accepts_a_text_message_with_the_documented_answer(
    graph: MetaGraphStandin,
) -> None:
    status, body = await _send(
        graph,
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+14155550100",
            "type": "text",
            "text": {"body": "Hello"},
        },
    )
    assert status == 200
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": "+14155550100", "wa_id": "14155550100"}]
    (message,) = body["messages"]
    assert message["id"].startswith("wamid.")
    base64.b64decode(message["id"][6:], validate=True)
    assert graph.messages[0]["text"] == {"body": "Hello"}
    assert graph.message_ids == [message["id"]]


async def test_meta_template_message_is_accepted(graph: MetaGraphStandin) -> None:
    status, body = await _send(
        graph,
        {
            "messaging_product": "whatsapp",
            "to": "14155550100",
            "type": "template",
            "template": {"name": "hello_world", "language": {"code": "en_US"}},
        },
    )
    assert status == 200 and body["messages"][0]["message_status"] == "accepted"


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "error_type"),
    [
        ({"token": None}, 401, 190, "OAuthException"),
        ({"token": "EAAGwrong"}, 401, 190, "OAuthException"),
        ({"phone_number_id": "999"}, 400, 100, "GraphMethodException"),
    ],
)
async def test_meta_checks_token_and_phone_number_id(
    graph: MetaGraphStandin, kwargs: dict, status: int, code: int, error_type: str
) -> None:
    got_status, body = await _send(
        graph,
        {
            "messaging_product": "whatsapp",
            "to": "14155550100",
            "type": "text",
            "text": {"body": "x"},
        },
        **kwargs,
    )
    assert (got_status, body["error"]["code"], body["error"]["type"]) == (status, code, error_type)
    assert "fbtrace_id" in body["error"] and graph.messages == []


@pytest.mark.parametrize(
    "payload",
    [
        {"to": "14155550100", "type": "text", "text": {"body": "x"}},
        {"messaging_product": "sms", "to": "14155550100", "type": "text", "text": {"body": "x"}},
        {"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}},
        {"messaging_product": "whatsapp", "to": "14155550100", "type": "text", "text": {}},
        {"messaging_product": "whatsapp", "to": "14155550100", "type": "fax", "fax": {}},
        {
            "messaging_product": "whatsapp",
            "to": "14155550100",
            "type": "template",
            "template": {"name": "x"},
        },
        ["not", "an", "object"],
    ],
)
async def test_meta_rejects_malformed_messages_with_code_100(
    graph: MetaGraphStandin, payload
) -> None:
    status, body = await _send(graph, payload)
    assert (status, body["error"]["code"]) == (400, 100), body
    assert graph.messages == []


async def test_meta_mark_as_read_and_failure_injection(graph: MetaGraphStandin) -> None:
    status, body = await _send(
        graph, {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.abc"}
    )
    assert (status, body) == (200, {"success": True}) and graph.read_receipts == ["wamid.abc"]
    graph.fail_next(1, status=500)
    graph.fail_next(1, status=429)
    ok = {
        "messaging_product": "whatsapp",
        "to": "14155550100",
        "type": "text",
        "text": {"body": "x"},
    }
    assert (await _send(graph, ok))[1]["error"]["code"] == 1
    status, body = await _send(graph, ok)
    assert (status, body["error"]["code"]) == (429, 130429)
    assert (await _send(graph, ok))[0] == 200


# --- Meta webhooks to the gateway


def test_meta_message_payload_matches_the_webhook_reference() -> None:
    payload = meta_message_payload(
        "106540352242922",
        "15550783881",
        "14155550100",
        "Hi there",
        wamid="wamid.TEST",
        timestamp=1700000000,
        profile_name="Ann",
    )
    (entry,) = payload["entry"]
    (change,) = entry["changes"]
    value = change["value"]
    assert payload["object"] == "whatsapp_business_account" and change["field"] == "messages"
    assert value["metadata"] == {
        "display_phone_number": "15550783881",
        "phone_number_id": "106540352242922",
    }
    assert value["contacts"] == [{"profile": {"name": "Ann"}, "wa_id": "14155550100"}]
    assert value["messages"] == [
        {
            "from": "14155550100",
            "id": "wamid.TEST",
            "timestamp": "1700000000",
            "type": "text",
            "text": {"body": "Hi there"},
        }
    ]

    bsuid_only = meta_message_payload("1", "2", None, "hi", user_id="US.13491208655302741918")
    value = bsuid_only["entry"][0]["changes"][0]["value"]
    assert value["contacts"][0] == {
        "profile": {"name": "Customer"},
        "user_id": "US.13491208655302741918",
    }
    assert "from" not in value["messages"][0]
    assert value["messages"][0]["from_user_id"] == "US.13491208655302741918"


def test_meta_status_payload_and_signature() -> None:
    failed = meta_status_payload("1", "2", "wamid.X", "failed", "14155550100", error_code=131047)
    status = failed["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert (status["id"], status["status"], status["recipient_id"]) == (
        "wamid.X",
        "failed",
        "14155550100",
    )
    assert status["errors"][0]["code"] == 131047
    delivered = meta_status_payload("1", "2", "wamid.X", "delivered", "14155550100")
    assert "pricing" in delivered["entry"][0]["changes"][0]["value"]["statuses"][0]

    raw, headers = meta_webhook_request("app-secret", failed)
    assert json.loads(raw) == failed
    expected = hmac.new(b"app-secret", raw, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == sign_meta("app-secret", raw) == f"sha256={expected}"
    params = meta_verification_params("verify-me", "1158201444")
    assert params == {
        "hub.mode": "subscribe",
        "hub.verify_token": "verify-me",
        "hub.challenge": "1158201444",
    }
