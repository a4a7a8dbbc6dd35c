"""`gateway send sms|whatsapp` as a user runs it: a real process posting signed webhooks to
a running gateway, which stores them (or refuses them, when the secret is not its own)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.console.server import PUBLIC_URL, WorkspaceGateway
from tests.standins import TwilioStandin

GATEWAY = str(Path(sys.executable).with_name("gateway"))
APP_SECRET = "meta-app-secret-for-send-0123456789"


async def gateway_send(*args: str, **env: str) -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    clean.update({"GATEWAY_PUBLIC_URL": PUBLIC_URL, "GATEWAY_LOG_FORMAT": "text", **env})
    proc = await asyncio.create_subprocess_exec(
        GATEWAY, "send", *args, env=clean, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


def twilio_env(standin: TwilioStandin) -> dict[str, str]:
    return {"GATEWAY_TWILIO_ACCOUNT_SID": standin.account_sid,
            "GATEWAY_TWILIO_AUTH_TOKEN": standin.auth_token}


async def transcript_of(ws: WorkspaceGateway, address: str) -> list[dict[str, Any]]:
    status, customer = await ws.api("GET", "/api/v1/customers", params={"address": address})
    assert status == 200, customer
    status, conv = await ws.api("GET", f"/api/v1/conversations/{customer['conversations'][0]['id']}")
    return conv["transcript"]


@pytest.fixture
async def ws(start_ws: Any, sqlite_url: str, twilio: TwilioStandin) -> WorkspaceGateway:
    return await start_ws(sqlite_url, twilio=twilio)


async def test_send_sms_and_whatsapp_through_twilio(ws: WorkspaceGateway,
                                                    twilio: TwilioStandin) -> None:
    code, out = await gateway_send("sms", "--from", "+14155550161", "--url", ws.url,
                                   "Hi, my order is late", **twilio_env(twilio))
    assert code == 0, out
    assert "HTTP 200" in out and "stored" in out
    entries = await transcript_of(ws, "sms:+14155550161")
    assert [(e["channel"], e["text"]) for e in entries] == [("sms", "Hi, my order is late")]
    code, out = await gateway_send("whatsapp", "--from", "+14155550161", "--name", "Ann",
                                   "--url", ws.url, "and on WhatsApp", **twilio_env(twilio))
    assert code == 0, out
    entries = await transcript_of(ws, "whatsapp:+14155550161")
    assert entries[-1]["channel"] == "whatsapp" and entries[-1]["text"] == "and on WhatsApp"


async def test_a_secret_that_is_not_the_gateways_is_refused(ws: WorkspaceGateway,
                                                            twilio: TwilioStandin) -> None:
    code, out = await gateway_send(
        "sms", "--from", "+14155550162", "--url", ws.url, "forged",
        GATEWAY_TWILIO_ACCOUNT_SID=twilio.account_sid,
        GATEWAY_TWILIO_AUTH_TOKEN="0" * 32)
    assert code == 1 and "HTTP 403" in out and "GATEWAY_PUBLIC_URL" in out
    status, _ = await ws.api("GET", "/api/v1/customers", params={"address": "sms:+14155550162"})
    assert status == 404


async def test_without_twilio_settings_it_says_what_to_set() -> None:
    code, out = await gateway_send("sms", "--from", "+14155550163", "--url",
                                   "http://127.0.0.1:9", "x")
    assert code == 2 and "GATEWAY_TWILIO_AUTH_TOKEN" in out


async def test_an_unreachable_gateway_is_one_line(twilio: TwilioStandin) -> None:
    code, out = await gateway_send("sms", "--from", "+14155550164", "--url",
                                   "http://127.0.0.1:9", "x", **twilio_env(twilio))
    assert code == 1 and "could not reach the gateway" in out and "Traceback" not in out


async def test_whatsapp_goes_through_meta_when_the_gateway_uses_the_cloud_api(
    start_ws: Any, sqlite_url: str
) -> None:
    ws = await start_ws(sqlite_url, whatsapp_app_secret=APP_SECRET,
                        whatsapp_phone_number_id="106540352242922")
    code, out = await gateway_send("whatsapp", "--from", "+14155550165", "--url", ws.url,
                                   "hello via Meta", GATEWAY_WHATSAPP_APP_SECRET=APP_SECRET)
    assert code == 0, out
    assert out.startswith("meta whatsapp wamid.")
    entries = await transcript_of(ws, "whatsapp:+14155550165")
    assert entries[0]["text"] == "hello via Meta"
