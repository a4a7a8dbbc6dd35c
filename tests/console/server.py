"""A running gateway for the workspace's API and browser tests: the one gateway of
tests/conftest.py (`Gateways`), with two agents who have their own API tokens, and what the
workspace tests ask of it.

Calls reach an agent three ways here. `start_workspace(sip=True)` mounts the SIP edge with
agents whose phones REGISTER (`SIP_AGENTS`; `phone()` gives a registered softphone, `sip_port`
the edge a caller dials): a real SIP call, on which the core publishes `CallOffered` before
the INVITE goes to the agent's phone and `CallEnded` on BYE/CANCEL. `twilio_call` places a
call as Twilio does, through the signed Twilio Voice webhooks (the PIN typed at the
`<Gather>`, `<Dial><Sip>` to an agent, the `<Dial action>` when a phone did not answer).
`offer_call` is the shortcut for tests that need a call leg, not the call: it opens a call and
has the core's router offer it to one agent (the same `offer_call` both edges use).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit
from xml.etree import ElementTree

from aiohttp import ClientSession, web
from yarl import URL

from connectors.memory import ALL, MemoryChannel
from gateway.app import Gateway
from gateway.auth import token_sha256
from gateway.bus import EventBus
from gateway.channels import CallRoute
from gateway.core import Core
from gateway.demo_phone import SoftPhone
from gateway.workspace_api import WORKSPACE, Workspace
from tests.conftest import AGENT_TOKEN, BUSINESS_SMS, PUBLIC_URL, Gateways, RunningGateway
from tests.helpers import call
from tests.standins import (
    TwilioStandin,
    twilio_sign,
    twilio_sms_form,
    twilio_voice_form,
    twilio_webhook_request,
)

ALICE_TOKEN = "alice-token-0123456789abcdefghij"
BOB_TOKEN = "bob-token-0123456789abcdefghijkl"
AGENTS = [
    {"id": "alice", "name": "Alice Agent", "contact": "sip:alice@127.0.0.1:5070",
     "token_sha256": token_sha256(ALICE_TOKEN)},
    {"id": "bob", "name": "Bob Agent", "contact": "sip:bob@127.0.0.1:5071",
     "token_sha256": token_sha256(BOB_TOKEN)},
]
CHECK_PATH = "/api/v1/conversations/{id}/verifications/{challenge_id}/check"
SIP_PASSWORDS = {"alice": secrets.token_urlsafe(16), "bob": secrets.token_urlsafe(16)}
# The same agents with phones that REGISTER at the gateway's SIP edge (their SIP user is their id).
SIP_AGENTS = [
    {key: value for key, value in agent.items() if key != "contact"}
    | {"sip_user": agent["id"], "sip_password": SIP_PASSWORDS[agent["id"]]}
    for agent in AGENTS
]


@dataclass
class TwilioCall:
    """A call Twilio is bridging to an agent's phone (`<Dial><Sip>`)."""

    ws: WorkspaceGateway
    form: dict[str, str]
    sip_uri: str  # what Twilio dials: the agent's SIP URI with x-context and x-conversation-id
    action: str  # the <Dial action> Twilio calls when the agent's leg is over

    @property
    def context_token(self) -> str:
        return parse_qs(urlsplit(self.sip_uri).query)["x-context"][0]

    async def hang_up(self, seconds: int = 42) -> None:
        """The agent answered, they talked, the caller hung up: Twilio's <Dial action>."""
        await self.ws.twiml(self.action, {**self.form, "CallStatus": "completed",
                                          "DialCallStatus": "completed",
                                          "DialCallDuration": str(seconds)})


@dataclass
class WorkspaceGateway:
    running: RunningGateway
    twilio: TwilioStandin | None
    kept: MemoryChannel

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def app(self) -> web.Application:
        return self.running.app

    @property
    def http(self) -> ClientSession:
        return self.running.http

    @property
    def gw(self) -> Gateway:
        return self.running.gw

    @property
    def core(self) -> Core:
        return self.gw.core

    @property
    def bus(self) -> EventBus:
        return self.gw.bus

    @property
    def workspace(self) -> Workspace:
        return self.app[WORKSPACE]

    @property
    def memory(self) -> MemoryChannel | None:
        return self.kept if self.twilio is None else None

    @property
    def sip_port(self) -> int:
        """The UDP/TCP port of the gateway's SIP edge (`start_workspace(sip=True)`)."""
        return int(self.gw.channels["sip"].edge.port)

    async def phone(self, user: str) -> SoftPhone:
        """A softphone on loopback: with a password in SIP_PASSWORDS, `user`'s phone,
        REGISTERed (digest) at the SIP edge; else a caller's phone. `close()` it."""
        phone = await SoftPhone(user, self.sip_port).open()
        if user in SIP_PASSWORDS:
            try:
                await phone.register(SIP_PASSWORDS[user])
            except BaseException:
                phone.close()
                raise
        return phone

    async def api(self, method: str, path: str, token: str | None = AGENT_TOKEN,
                  **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        async with self.http.request(method, self.url + path, headers=headers,
                                     **kwargs) as resp:
            return resp.status, await resp.json()

    async def sms(self, number: str, body: str, *, whatsapp: bool = False,
                  profile_name: str | None = None) -> int:
        """A customer message as Twilio posts it: signed for PUBLIC_URL, sent to loopback."""
        assert self.twilio is not None
        prefix = "whatsapp:" if whatsapp else ""
        form = twilio_sms_form(account_sid=self.twilio.account_sid, from_=prefix + number,
                               to=prefix + BUSINESS_SMS, body=body, profile_name=profile_name)
        path = "/webhooks/twilio/messaging"
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "X-Twilio-Signature": twilio_sign(self.twilio.auth_token,
                                                     PUBLIC_URL + path, form)}
        async with self.http.post(self.url + path, data=urlencode(form).encode(),
                                  headers=headers) as resp:
            return resp.status

    async def twiml(self, url: str, form: dict[str, str]) -> ElementTree.Element:
        """POST `form` to the public `url` as Twilio does (signed for that URL, sent to the
        loopback port byte for byte); the TwiML answer."""
        assert self.twilio is not None and url.startswith(PUBLIC_URL), url
        body, headers = twilio_webhook_request(self.twilio.auth_token, url, form)
        target = URL(self.url + url.removeprefix(PUBLIC_URL), encoded=True)
        async with self.http.post(target, data=body, headers=headers) as resp:
            text = await resp.text()
            assert resp.status == 200, text
        return ElementTree.fromstring(text)

    async def twilio_call(self, number: str, pin: str | None, agent_id: str) -> TwilioCall:
        """A call through Twilio Voice, webhook by webhook: the caller types `pin` (or `#`) at
        the prompt; while the gateway dials another agent than `agent_id`, that phone does
        not answer and Twilio says so. Returns once `agent_id`'s phone is being dialled."""
        assert self.twilio is not None
        form = twilio_voice_form(account_sid=self.twilio.account_sid, from_=number,
                                 to=BUSINESS_SMS)
        gather = (await self.twiml(PUBLIC_URL + "/webhooks/twilio/voice", form)).find("Gather")
        assert gather is not None
        form = {**form, "CallStatus": "in-progress", "Digits": pin or "",
                "FinishedOnKey": "" if pin else "#"}
        root = await self.twiml(gather.attrib["action"], form)
        for _ in self.gw.agents:
            dial, sip = root.find("Dial"), root.find("Dial/Sip")
            assert dial is not None and sip is not None and sip.text, ElementTree.tostring(root)
            action = dial.attrib["action"]
            if parse_qs(urlsplit(action).query)["agent"] == [agent_id]:
                return TwilioCall(self, form, sip.text.strip(), action)
            root = await self.twiml(action, {**form, "DialCallStatus": "no-answer"})
        raise AssertionError(f"the call never went to {agent_id}")

    async def offer_call(self, number: str | None, agent_id: str, **kwargs: Any) -> CallRoute:
        """A call opened and offered by the core's router to `agent_id` (every other agent
        counts as tried): the core publishes `CallOffered`, as for a Twilio Voice call."""
        route = await self.core.open_call(call(number, **kwargs))
        others = [agent.id for agent in self.gw.agents if agent.id != agent_id]
        offer = await self.core.offer_call(route, tried=others)
        assert offer is not None and offer.agent_id == agent_id, offer
        return route

    async def stop_server(self) -> None:
        """Stop the gateway but keep the client (streams open against it end)."""
        await self.running.stop_server()

    async def stop(self) -> None:
        await self.running.stop()


async def start_workspace(
    gateways: Gateways,
    *,
    twilio: TwilioStandin | None = None,
    heartbeat: float = 15.0,
    sip: bool = False,
    **overrides: Any,
) -> WorkspaceGateway:
    """A gateway from `gateways` (the conftest fixture's pool) with the workspace agents; sends
    go to the Twilio stand-in when given, else they are kept by the memory channel. `sip=True`
    mounts the SIP edge (port 0) with SIP_AGENTS, whose phones must REGISTER to be offered a
    call (`phone()`)."""
    overrides.setdefault("public_url", PUBLIC_URL)
    overrides.setdefault("agents", json.loads(json.dumps(SIP_AGENTS if sip else AGENTS)))
    overrides.setdefault("events_heartbeat_seconds", heartbeat)
    # Without Twilio, sends are kept in memory; with it, they go to the stand-in.
    kept = MemoryChannel(frozenset() if twilio is not None else ALL, name="workspace-memory")
    running = await gateways(memory=kept, twilio=twilio, sip=sip, **overrides)
    return WorkspaceGateway(running, twilio, kept)


# ---- reading an event stream as a client does ----------------------------------------------


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: Any


class SseReader:
    """Reads `text/event-stream` from an aiohttp response: events and comment lines."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.comments: list[str] = []

    async def next(self, timeout: float = 5.0) -> SseEvent | None:
        """The next event, or None when the stream ended."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> SseEvent | None:
        fields: dict[str, str] = {}
        data: list[str] = []
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    return SseEvent(fields.get("id"), fields.get("event", "message"),
                                    json.loads("\n".join(data)))
                fields.clear()
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value

    async def until(self, predicate: Callable[[SseEvent], bool],
                    timeout: float = 5.0) -> SseEvent:
        async def find() -> SseEvent:
            while True:
                event = await self._next()
                assert event is not None, "the stream ended"
                if predicate(event):
                    return event

        return await asyncio.wait_for(find(), timeout)
