"""`gateway demo`: the escalation story on loopback, over the real protocols, printed as the
agent sees it.

A customer writes on WhatsApp (a signed Meta webhook), an agent sends a one-time code (the
Graph API call lands on a stand-in for the customer's phone), the customer answers it, the
agent offers a call with a dial-in PIN, and the customer calls (a signed Twilio Voice
webhook, PIN typed). The agent's side fetches the context link the call carries. Then a
stranger calls from the same number without the PIN: identified, not verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import socket
import tempfile
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

from config.settings import Settings, load_settings

NUMBER = "+14155550100"
WA_ID = NUMBER[1:]
PHONE_NUMBER_ID = "100200300400500"
TWILIO_SID = "AC" + "0" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CustomerPhone:
    """Stands where Meta's Graph API would be: what the gateway sends the customer lands here."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v21.0/{phone_number_id}/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = _free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}/v21.0"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _messages(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": {"message": "Invalid OAuth access token",
                                                "type": "OAuthException", "code": 190}},
                                     status=401)
        body = await request.json()
        await self.inbox.put(body["text"]["body"])
        wamid = f"wamid.{secrets.token_hex(12)}"
        return web.json_response({"messaging_product": "whatsapp",
                                  "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                                  "messages": [{"id": wamid}]})

    async def receive(self) -> str:
        return await asyncio.wait_for(self.inbox.get(), 10)


class Story:
    def __init__(self, base: str, settings: Settings, http: aiohttp.ClientSession) -> None:
        self.base = base
        self.settings = settings
        self.http = http
        assert settings.agent_token and settings.whatsapp_app_secret and settings.twilio_auth_token
        self.agent = {"Authorization": f"Bearer {settings.agent_token.get_secret_value()}"}
        self.app_secret = settings.whatsapp_app_secret.get_secret_value().encode()
        self.twilio = RequestValidator(settings.twilio_auth_token.get_secret_value())

    async def whatsapp(self, text: str) -> None:
        payload = {"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{
            "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "18005550000",
                             "phone_number_id": PHONE_NUMBER_ID},
                "contacts": [{"profile": {"name": "Ann"}, "wa_id": WA_ID}],
                "messages": [{"from": WA_ID, "id": f"wamid.{secrets.token_hex(12)}",
                              "timestamp": str(int(time.time())), "type": "text",
                              "text": {"body": text}}]}}]}]}
        raw = json.dumps(payload, ensure_ascii=False).encode()
        signature = "sha256=" + hmac.new(self.app_secret, raw, hashlib.sha256).hexdigest()
        async with self.http.post(f"{self.base}/webhooks/whatsapp", data=raw, headers={
                "Content-Type": "application/json", "X-Hub-Signature-256": signature}) as resp:
            assert resp.status == 200, await resp.text()

    async def twilio_voice(self, query: str, form: dict[str, str]) -> ElementTree.Element:
        url = f"{self.settings.public_url}/webhooks/twilio/voice{query}"
        signature = self.twilio.compute_signature(url, form)
        async with self.http.post(f"{self.base}/webhooks/twilio/voice{query}", data=form,
                                  headers={"X-Twilio-Signature": signature}) as resp:
            assert resp.status == 200, await resp.text()
            return ElementTree.fromstring(await resp.text())

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.base + path, json=body,
                                     headers=self.agent) as resp:
            data = await resp.json()
            assert resp.status < 300, data
            return data

    async def call(self, caller: str, pin: str | None) -> dict[str, Any]:
        """A phone call through Twilio Voice; returns the bundle the agent's phone links to."""
        sid = "CA" + secrets.token_hex(16)
        form = {"CallSid": sid, "AccountSid": TWILIO_SID, "From": caller, "To": "+18005550000",
                "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}
        await self.twilio_voice("", form)  # the PIN prompt (<Gather>)
        if pin is not None:
            twiml = await self.twilio_voice("?step=pin", {**form, "Digits": pin})
        else:
            twiml = await self.twilio_voice("?step=route", form)
        sip = twiml.find("./Dial/Sip")
        assert sip is not None and sip.text, ElementTree.tostring(twiml)
        headers = parse_qs(urlsplit(sip.text).query)
        token = headers["x-context"][0]
        print(f"  agent's phone rings: {sip.text.split('?')[0]}  "
              f"(x-context=…{token[-6:]}, x-conversation-id={headers['x-conversation-id'][0]})")
        async with self.http.get(f"{self.base}/api/v1/contexts/{token}") as resp:
            return await resp.json()


def show(bundle: dict[str, Any]) -> None:
    v = bundle["verification"]
    print("  ┌ what the agent sees " + "─" * 50)
    print(f"  │ customer {bundle['customer']['id']}: "
          + ", ".join(f"{a['address']} ({a['evidence']})"
                      for a in bundle["customer"]["addresses"]))
    status = v["summary"] if v else bundle["verification_explanation"]
    print(f"  │ {'✔' if v else '✘'} {status}   [{bundle['verification_reason']}]")
    print("  │ transcript:")
    for e in bundle["transcript"]:
        print(f"  │   {e['at'][11:19]} {e['channel']:<8} {e['direction']:<5} {e['text']}")
    print("  └" + "─" * 71)


async def run_demo() -> int:
    from gateway import logs
    from gateway.app import build_app, setup_runner

    logs.configure("WARNING", "text")  # the story is the output; warnings still show

    with tempfile.TemporaryDirectory(prefix="gateway-demo-") as tmp:
        port = _free_port()
        token = secrets.token_urlsafe(24)
        phone = CustomerPhone(token="demo-graph-token")
        graph_url = await phone.start()
        settings = load_settings(
            database_url=f"sqlite+aiosqlite:///{tmp}/demo.db", http_port=port,
            public_url=f"http://127.0.0.1:{port}", agent_token=token,
            whatsapp_app_secret="demo-app-secret", whatsapp_verify_token="demo-verify",
            whatsapp_access_token="demo-graph-token", whatsapp_api_url=graph_url,
            whatsapp_phone_number_id=PHONE_NUMBER_ID,
            twilio_account_sid=TWILIO_SID, twilio_auth_token="demo-twilio-token",
            twilio_api_url="http://127.0.0.1:9", twilio_voice_number="+18005550000",
            agents=[{"id": "12", "name": "Alice", "contact": "sip:alice@127.0.0.1:5090"}],
            log_format="text", log_level="WARNING", sip_port=_free_port(),
        )
        app = build_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await setup_runner(runner)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with aiohttp.ClientSession() as http:
                story = Story(f"http://127.0.0.1:{port}", settings, http)
                await _tell(story, phone)
        finally:
            await runner.cleanup()
            await phone.close()
    print("\ndemo finished: every step went over HTTP on loopback and was stored in SQLite.")
    return 0


async def _tell(story: Story, phone: CustomerPhone) -> None:
    print(f"1. Ann writes on WhatsApp from {NUMBER}.")
    await story.whatsapp("Hi, my card was stolen. Please block it and call me.")
    customer = await story.api("GET", f"/api/v1/customers?address=whatsapp:%2B{WA_ID}")
    conversation_id = customer["conversations"][0]["id"]
    print(f"   conversation {conversation_id} opened.")

    print("2. The agent sends a one-time code; it reaches Ann's WhatsApp.")
    await story.api("POST", f"/api/v1/conversations/{conversation_id}/verifications", {})
    text = await phone.receive()
    code = re.search(r"\d{6}", text)
    assert code, text
    print(f"   Ann's phone shows: {text!r}")
    await story.whatsapp(code.group(0))
    print(f"   Ann's phone shows: {await phone.receive()!r}")

    print("3. The agent offers a call: a dial-in PIN goes to Ann's verified WhatsApp.")
    await story.api("POST", f"/api/v1/conversations/{conversation_id}/escalations",
                    {"channel": "voice", "mode": "dial-in"})
    text = await phone.receive()
    pin = re.search(r"PIN (\d{6})", text)
    assert pin, text
    print(f"   Ann's phone shows: {text!r}")

    print("4. Ann calls the support number and types the PIN (Twilio Voice <Gather>).")
    show(await story.call(NUMBER, pin.group(1)))

    print("5. Someone else calls from Ann's number (caller ID can be forged), no PIN.")
    show(await story.call(NUMBER, None))
