"""Meta WhatsApp Cloud API webhooks through real HTTP on loopback: the verification
handshake, X-Hub-Signature-256 over raw bytes (emoji, accents, escaped or not), dedupe on
wamid, business-scoped user ids, and statuses out of order."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from tests.conftest import (
    APP_SECRET,
    VERIFY_TOKEN,
    Gateways,
    RunningGateway,
)
from tests.standins import (  # noqa: F401  (fixture)
    MetaGraphStandin,
    meta_graph_standin,
    meta_message_payload,
    meta_status_payload,
    meta_verification_params,
    new_wamid,
    sign_meta,
)

WA_ID = "14155550100"
NUMBER = "+14155550100"
DISPLAY = "15550783881"
BSUID = "US.13491208655302741918"


@pytest.fixture
async def gw(start_gateway: Gateways, meta_graph_standin: MetaGraphStandin) -> RunningGateway:
    return await start_gateway(meta=meta_graph_standin)


def text_payload(standin: MetaGraphStandin, text: str, **kwargs: object) -> dict:
    wa_id = kwargs.pop("wa_id", WA_ID)
    return meta_message_payload(  # type: ignore[arg-type]
        standin.phone_number_id, DISPLAY, wa_id, text, **kwargs)  # type: ignore[arg-type]


async def test_verification_handshake_echoes_the_challenge(gw: RunningGateway) -> None:
    params = meta_verification_params(VERIFY_TOKEN, "1158201444")
    async with gw.http.get(gw.url + "/webhooks/whatsapp", params=params) as resp:
        assert (resp.status, await resp.text()) == (200, "1158201444")


@pytest.mark.parametrize("change", ["wrong-token", "no-token", "wrong-mode", "no-mode"])
async def test_verification_handshake_refuses_a_wrong_token(gw: RunningGateway, change: str) -> None:
    params = meta_verification_params(VERIFY_TOKEN, "42")
    if change == "wrong-token":
        params["hub.verify_token"] = VERIFY_TOKEN + "x"
    elif change == "no-token":
        del params["hub.verify_token"]
    elif change == "wrong-mode":
        params["hub.mode"] = "unsubscribe"
    else:
        del params["hub.mode"]
    async with gw.http.get(gw.url + "/webhooks/whatsapp", params=params) as resp:
        assert resp.status == 403
        assert "42" not in await resp.text()


async def test_signed_text_message_is_stored_with_an_attested_sender(
    gw: RunningGateway, meta_graph_standin: MetaGraphStandin
) -> None:
    payload = text_payload(meta_graph_standin, "Hi, my order never arrived",
                           profile_name="Ann Example", timestamp=1764072000)
    status, body, _ = await gw.meta(payload)
    assert status == 200, body
    customer = await gw.customer(f"whatsapp:{NUMBER}")
    assert customer["display_name"] == "Ann Example"
    assert [(a["address"], a["evidence"]) for a in customer["addresses"]] == [
        (f"whatsapp:{NUMBER}", "attested")]
    [entry] = await gw.transcript(f"whatsapp:{NUMBER}")
    assert (entry["channel"], entry["text"]) == ("whatsapp", "Hi, my order never arrived")
    assert entry["provider_at"].startswith("2025-11-25T12:00:00")


@pytest.mark.parametrize("forgery", [
    "missing", "other-secret", "one-byte-changed", "sha1-only", "no-prefix",
    "uppercase-scheme-garbage", "non-ascii-header",
])
async def test_forged_and_mutated_signatures_get_403_and_store_nothing(
    gw: RunningGateway, meta_graph_standin: MetaGraphStandin, forgery: str
) -> None:
    raw = json.dumps(text_payload(meta_graph_standin, "send me the money")).encode()
    headers = {"Content-Type": "application/json",
               "X-Hub-Signature-256": sign_meta(APP_SECRET, raw)}
    if forgery == "missing":
        del headers["X-Hub-Signature-256"]
    elif forgery == "other-secret":
        headers["X-Hub-Signature-256"] = sign_meta("not-the-secret", raw)
    elif forgery == "one-byte-changed":
        raw = raw.replace(b"send me", b"send ME")
    elif forgery == "sha1-only":
        del headers["X-Hub-Signature-256"]
        headers["X-Hub-Signature"] = "sha1=" + "0" * 40
    elif forgery == "no-prefix":
        headers["X-Hub-Signature-256"] = headers["X-Hub-Signature-256"].removeprefix("sha256=")
    elif forgery == "uppercase-scheme-garbage":
        headers["X-Hub-Signature-256"] = "SHA256=zzzz"
    else:
        headers["X-Hub-Signature-256"] = "sha256=ünïcödé"
    status, _, _ = await gw.post("/webhooks/whatsapp", raw, headers)
    assert status == 403
    assert await gw.counts() == (0, 0)


@pytest.mark.parametrize("ensure_ascii", [False, True], ids=["utf8-bytes", "u-escapes"])
async def test_emoji_and_accents_verify_over_the_raw_bytes(
    gw: RunningGateway, meta_graph_standin: MetaGraphStandin, ensure_ascii: bool
) -> None:
    text = "Café ☕ à São Paulo — naïve façade 👩🏽‍💻🇧🇷 ñ"
    payload = text_payload(meta_graph_standin, text, profile_name="José 🌵")
    # Meta may send UTF-8 or \\u escapes; the signature covers whichever bytes arrived.
    raw = json.dumps(payload, ensure_ascii=ensure_ascii, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json",
               "X-Hub-Signature-256": sign_meta(APP_SECRET, raw)}
    status, _, _ = await gw.post("/webhooks/whatsapp", raw, headers)
    assert status == 200
    [entry] = await gw.transcript(f"whatsapp:{NUMBER}")
    assert entry["text"] == text
    # Re-serialising the JSON would have broken the signature of the other form.
    other = json.dumps(payload, ensure_ascii=not ensure_ascii, separators=(",", ":")).encode()
    headers["X-Hub-Signature-256"] = sign_meta(APP_SECRET, raw)
    status, _, _ = await gw.post("/webhooks/whatsapp", other, headers)
    assert status == 403


async def test_same_wamid_ten_times_concurrently_is_stored_once(
    start_gateway: Gateways, database_url: str, meta_graph_standin: MetaGraphStandin
) -> None:
    gw = await start_gateway(database_url=database_url, meta=meta_graph_standin)
    payload = text_payload(meta_graph_standin, "once", wamid=new_wamid(WA_ID))
    results = await asyncio.gather(*(gw.meta(payload) for _ in range(10)))
    assert [r[0] for r in results] == [200] * 10
    assert await gw.counts() == (1, 1)


async def test_one_delivery_with_several_messages_and_entries(
    gw: RunningGateway, meta_graph_standin: MetaGraphStandin
) -> None:
    first = text_payload(meta_graph_standin, "one")
    second = text_payload(meta_graph_standin, "two", wa_id="447700900123")
    first["entry"][0]["changes"][0]["value"]["messages"].append(
        copy.deepcopy(first["entry"][0]["changes"][0]["value"]["messages"][0])
        | {"id": new_wamid(WA_ID), "text": {"body": "one, again"}})
    first["entry"].append(second["entry"][0])
    first["entry"][0]["changes"].append({"field": "message_template_status_update",
                                         "value": {"event": "APPROVED"}})
    status, _, _ = await gw.meta(first)
    assert status == 200
    assert [e["text"] for e in await gw.transcript(f"whatsapp:{NUMBER}")] == ["one", "one, again"]
    assert [e["text"] for e in await gw.transcript("whatsapp:+447700900123")] == ["two"]


async def test_media_location_and_buttons_are_kept_as_references(
    gw: RunningGateway, meta_graph_standin: MetaGraphStandin
) -> None:
    payload = text_payload(meta_graph_standin, "")
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    del message["text"]
    message |= {"type": "image", "image": {"id": "2754859441498128", "mime_type": "image/jpeg",
                                           "sha256": "81d3", "caption": "the receipt"}}
    location = copy.deepcopy(message) | {
        "id": new_wamid(WA_ID), "type": "location",
        "location": {"latitude": 52.52, "longitude": 13.405, "name": "Büro"}}
    del location["image"]
    payload["entry"][0]["changes"][0]["value"]["messages"].append(location)
    status, _, _ = await gw.meta(payload)
    assert status == 200
    image, place = await gw.transcript(f"whatsapp:{NUMBER}")
    assert image["text"] == "the receipt"
    assert image["data"]["attachments"] == [{
        "url": f"{meta_graph_standin.base_url}/v21.0/2754859441498128",
        "content_type": "image/jpeg", "name": None}]
    assert place["text"] == "[location 52.52,13.405 Büro]"
    assert place["data"]["extra"]["latitude"] == "52.52"


async def test_business_scoped_user_id_alone_is_an_address_of_its_own(
    gw: RunningGateway, meta_graph_standin: MetaGraphStandin
) -> None:
    payload = text_payload(meta_graph_standin, "hi, I use a username now", wa_id=None,
                           user_id=BSUID)
    status, _, _ = await gw.meta(payload)
    assert status == 200
    customer = await gw.customer(f"whatsapp-user:{BSUID}")
    assert [(a["address"], a["evidence"]) for a in customer["addresses"]] == [
        (f"whatsapp-user:{BSUID}", "attested")]
    # The agent's reply goes to the user id (Graph API `recipient`), not a number.
    conversation = customer["conversations"][0]["id"]
    status, reply = await gw.api("POST", f"/api/v1/conversations/{conversation}/messages",
                                 json={"text": "Hello! How can we help?"})
    assert status == 202
    [sent] = await meta_graph_standin.wait_for_messages(1)
    assert sent["recipient"] == BSUID and "to" not in sent
    row = await gw.wait_outbox(reply["id"], lambda r: r["provider_id"] is not None)
    assert row["provider_id"] == meta_graph_standin.message_ids[0]


async def test_user_id_arriving_beside_the_number_links_both_to_one_customer(
    start_gateway: Gateways, database_url: str, meta_graph_standin: MetaGraphStandin
) -> None:
    gw = await start_gateway(database_url=database_url, meta=meta_graph_standin)
    await gw.meta(text_payload(meta_graph_standin, "username only", wa_id=None, user_id=BSUID))
    await gw.meta(text_payload(meta_graph_standin, "now with my number", user_id=BSUID))
    by_number = await gw.customer(f"whatsapp:{NUMBER}")
    by_user = await gw.customer(f"whatsapp-user:{BSUID}")
    assert by_number["id"] == by_user["id"]
    assert {(a["address"], a["evidence"]) for a in by_number["addresses"]} == {
        (f"whatsapp-user:{BSUID}", "attested"), (f"whatsapp:{NUMBER}", "attested")}
    # And the other way round: number first, user id later.
    other_bsuid, other_wa = "GB.99887766554433221100", "447700900123"
    await gw.meta(text_payload(meta_graph_standin, "number first", wa_id=other_wa))
    await gw.meta(text_payload(meta_graph_standin, "and my id", wa_id=other_wa,
                               user_id=other_bsuid))
    a = await gw.customer(f"whatsapp-user:{other_bsuid}")
    b = await gw.customer("whatsapp:+447700900123")
    assert a["id"] == b["id"] != by_number["id"]


async def test_statuses_out_of_order_never_move_a_message_backwards(
    gw: RunningGateway, meta_graph_standin: MetaGraphStandin
) -> None:
    await gw.meta(text_payload(meta_graph_standin, "hello"))
    conversation = (await gw.customer(f"whatsapp:{NUMBER}"))["conversations"][0]["id"]
    _, reply = await gw.api("POST", f"/api/v1/conversations/{conversation}/messages",
                            json={"text": "Hi Ann 👋"})
    [sent] = await meta_graph_standin.wait_for_messages(1)
    assert sent["to"] == NUMBER and sent["text"]["body"] == "Hi Ann 👋"
    row = await gw.wait_outbox(reply["id"], lambda r: r["provider_id"] is not None)
    wamid = meta_graph_standin.message_ids[0]
    assert (row["status"], row["provider_id"]) == ("accepted", wamid)

    async def status(state: str) -> str:
        code, _, _ = await gw.meta(meta_status_payload(
            meta_graph_standin.phone_number_id, DISPLAY, wamid, state, WA_ID))
        assert code == 200
        return (await gw.outbox(reply["id"]))["status"]

    assert await status("read") == "read"
    assert await status("delivered") == "read"
    assert await status("sent") == "read"
    assert await status("failed") == "read"


async def test_failed_status_shows_meta_error(
    gw: RunningGateway, meta_graph_standin: MetaGraphStandin
) -> None:
    await gw.meta(text_payload(meta_graph_standin, "hello"))
    conversation = (await gw.customer(f"whatsapp:{NUMBER}"))["conversations"][0]["id"]
    _, reply = await gw.api("POST", f"/api/v1/conversations/{conversation}/messages",
                            json={"text": "reply"})
    await meta_graph_standin.wait_for_messages(1)
    await gw.wait_outbox(reply["id"], lambda r: r["provider_id"] is not None)
    wamid = meta_graph_standin.message_ids[0]
    for _ in range(2):  # a repeated delivery changes nothing
        code, _, _ = await gw.meta(meta_status_payload(
            meta_graph_standin.phone_number_id, DISPLAY, wamid, "failed", WA_ID,
            error_code=131026))
        assert code == 200
    row = await gw.outbox(reply["id"])
    assert row["status"] == "failed"
    assert "131026" in row["last_error"]


async def test_signed_but_unreadable_payloads_get_400(gw: RunningGateway) -> None:
    for raw in (b"not json", b"[]", json.dumps({"object": "page", "entry": []}).encode()):
        status, _, _ = await gw.post("/webhooks/whatsapp", raw, {
            "X-Hub-Signature-256": sign_meta(APP_SECRET, raw)})
        assert status == 400
    assert await gw.counts() == (0, 0)


async def test_verify_token_unset_refuses_every_handshake(
    start_gateway: Gateways, meta_graph_standin: MetaGraphStandin
) -> None:
    gw = await start_gateway(meta=meta_graph_standin, whatsapp_verify_token=None)
    params = meta_verification_params("", "7")
    params["hub.verify_token"] = ""
    async with gw.http.get(gw.url + "/webhooks/whatsapp", params=params) as resp:
        assert resp.status == 403
