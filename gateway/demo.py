"""`gateway demo`: the escalation story on loopback, over the real protocols, printed as the
agent sees it.

A customer writes on WhatsApp (a signed Meta webhook), an agent sends a one-time code (the
Graph API call lands on a stand-in for the customer's phone), the customer answers it, the
agent offers a call with a dial-in PIN, and the customer calls from another phone: a real SIP
call (`gateway.demo_phone`, a pure-Python softphone) to `support*PIN` at the gateway's SIP
port. The agent's phone, REGISTERed with digest, rings with `Call-Info`; the demo fetches the
context bundle from that link and prints it. Then a stranger calls from the customer's number
without the PIN: identified, not verified.

`gateway demo --keep` leaves the database and the gateway running afterwards (until Ctrl-C)
and prints the console URL and the agent's token, to open the console on the story.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from config.settings import Settings, load_settings
from gateway.auth import new_agent_token
from gateway.demo_phone import SoftPhone

NUMBER = "+14155550100"
LANDLINE = "+14155550199"  # Ann's other phone: only the PIN ties a call from it to her
WA_ID = NUMBER[1:]
PHONE_NUMBER_ID = "100200300400500"
AGENT_SIP_USER = "alice"


def _listening_socket() -> socket.socket:
    """A TCP socket bound to a free loopback port and kept open (no race for the port)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


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
        sock = _listening_socket()
        await web.SockSite(self._runner, sock).start()
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v21.0"

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
    """The agent's and the customer's side of the story, over HTTP and SIP on loopback."""

    def __init__(self, base: str, settings: Settings, http: aiohttp.ClientSession,
                 agent_token: str, agent_phone: SoftPhone, sip_port: int) -> None:
        self.base = base
        self.http = http
        assert settings.whatsapp_app_secret
        # The demo's agent acts with her own token, as the console does.
        self.agent = {"Authorization": f"Bearer {agent_token}"}
        self.app_secret = settings.whatsapp_app_secret.get_secret_value().encode()
        self.agent_phone = agent_phone
        self.sip_port = sip_port

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

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.base + path, json=body,
                                     headers=self.agent) as resp:
            data = await resp.json()
            assert resp.status < 300, data
            return data

    async def call(self, caller_id: str, pin: str | None) -> dict[str, Any]:
        """A SIP call from a softphone to the support line (`support*PIN` with a PIN); the
        agent's phone rings, fetches the bundle its `Call-Info` links to, picks up; the
        caller hangs up. Returns the bundle."""
        customer = await SoftPhone("ann", self.sip_port).open()
        try:
            dialling = asyncio.create_task(
                customer.dial(f"support*{pin}" if pin else "support", caller_id))
            invite = await self.agent_phone.ringing()
            call_info = invite.headers.get("Call-Info") or ""
            link = re.fullmatch(r"<([^>]+)>;purpose=info", call_info)
            assert link, f"the INVITE has no context link: {call_info!r}"
            print(f"   the agent's phone rings: INVITE {invite.uri}")
            print(f"     Call-Info: <…/api/v1/contexts/…{link.group(1)[-6:]}>;purpose=info")
            print(f"     X-Conversation-Id: {invite.headers.get('X-Conversation-Id')}")
            async with self.http.get(link.group(1)) as resp:  # no bearer: a capability
                assert resp.status == 200, await resp.text()
                bundle: dict[str, Any] = await resp.json()
            answered = await self.agent_phone.pick_up(invite)
            dialog = await dialling
            print(f"   the agent picks up; the call is {answered.call_id[:8]}…; the caller "
                  "hangs up.")
            await asyncio.gather(customer.hang_up(dialog), self.agent_phone.hung_up())
            return bundle
        finally:
            customer.close()


def show(bundle: dict[str, Any]) -> None:
    v = bundle["verification"]
    print("  ┌ what the agent sees " + "─" * 50)
    print(f"  │ customer {bundle['customer']['id']}: "
          + ", ".join(f"{a['address']} ({a['evidence']})"
                      for a in bundle["customer"]["addresses"]))
    status = v["summary"] if v else bundle["verification_explanation"]
    print(f"  │ {'✔' if v else '✘'} {status}   [{bundle['verification_reason']}]")
    if bundle.get("disclosure"):
        print(f"  │ disclosure: {bundle['disclosure']}")
    if bundle.get("disclosure") == "limited":  # the contract's Disclosure rule
        print("  │   (this leg carries no verification: the agent sees which channels and "
              "when, and\n  │   the customer's own messages; replies, codes and anything "
              "after a verification\n  │   are withheld until the caller proves who they are)")
    print("  │ transcript:")
    for e in bundle["transcript"]:
        text = "(withheld)" if e.get("withheld") else e["text"]
        print(f"  │   {e['at'][11:19]} {e['channel']:<8} {e['direction']:<5} {text}")
    print("  └" + "─" * 71)


async def run_demo(keep: bool = False) -> int:
    from gateway import logs
    from gateway.app import GATEWAY, build_app, setup_runner

    logs.configure("WARNING", "text")  # the story is the output; warnings still show

    workdir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    database = workdir / "demo.db"
    http_socket = _listening_socket()
    port = http_socket.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    agent_token, agent_sha256 = new_agent_token()
    sip_password = secrets.token_urlsafe(16)
    app_secret = secrets.token_hex(16)
    phone = CustomerPhone(token="demo-graph-token")
    graph_url = await phone.start()
    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{database}", http_port=port, public_url=base,
        agent_token=secrets.token_urlsafe(24),
        whatsapp_app_secret=app_secret, whatsapp_verify_token="demo-verify",
        whatsapp_access_token="demo-graph-token", whatsapp_api_url=graph_url,
        whatsapp_phone_number_id=PHONE_NUMBER_ID,
        agents=[{"id": "12", "name": "Alice", "sip_user": AGENT_SIP_USER,
                 "sip_password": sip_password, "token_sha256": agent_sha256}],
        log_format="text", log_level="WARNING", sip_port=0,
    )
    app = build_app(settings)
    runner = web.AppRunner(app, access_log=None)
    agent_phone: SoftPhone | None = None
    try:
        await setup_runner(runner)
        await web.SockSite(runner, http_socket).start()
        sip_port = app[GATEWAY].channels["sip"].edge.port
        agent_phone = await SoftPhone(AGENT_SIP_USER, sip_port).open()
        await agent_phone.register(sip_password)
        print(f"0. Alice's phone REGISTERs at sip:127.0.0.1:{sip_port} (digest); she signs in.")
        async with aiohttp.ClientSession() as http:
            story = Story(base, settings, http, agent_token, agent_phone, sip_port)
            await _tell(story, phone)
        if keep:
            _print_keep(base, agent_token, database, app_secret)
            await _until_stopped(phone)
    finally:
        if agent_phone is not None:
            agent_phone.close()
        await runner.cleanup()
        await phone.close()
        if not keep:  # the directory is the demo's own (mkdtemp): the database, its WAL
            shutil.rmtree(workdir, ignore_errors=True)  # and migration lock files go with it
    if keep:
        print(f"gateway stopped; the database stays at {database}")
    else:
        print("\ndemo finished: every step went over HTTP and SIP on loopback and was stored "
              "in SQLite.")
    return 0


def _print_keep(base: str, agent_token: str, database: Path, app_secret: str) -> None:
    print(f"""
The gateway keeps running on the story (Ctrl-C stops it):
  console:      {base}/console
  agent token:  {agent_token}
  database:     {database}
Send Ann another WhatsApp message and watch the inbox move:
  GATEWAY_PUBLIC_URL={base} GATEWAY_WHATSAPP_APP_SECRET={app_secret} \\
  GATEWAY_WHATSAPP_PHONE_NUMBER_ID={PHONE_NUMBER_ID} \\
    gateway send whatsapp --from {NUMBER} --name Ann "Thanks, the card is blocked"
Ann's phone prints what the agent sends her here.""", flush=True)


async def _until_stopped(phone: CustomerPhone) -> None:
    """Serve until SIGINT or SIGTERM; print what reaches Ann's phone meanwhile."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def show_phone() -> None:
        while True:
            print(f"  Ann's phone shows: {await phone.inbox.get()!r}", flush=True)

    shower = asyncio.create_task(show_phone())
    try:
        await stop.wait()
    finally:
        shower.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


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

    print(f"4. Ann calls from her landline {LANDLINE}: a SIP INVITE to support*PIN.")
    show(await story.call(LANDLINE, pin.group(1)))

    print("5. Someone else calls from Ann's number (caller ID can be forged), no PIN.")
    show(await story.call(NUMBER, None))
