"""Twilio Voice webhooks: an inbound call (`/webhooks/twilio/voice`) is asked for an escalation
PIN, routed through the core (`open_call`, then `offer_call` for the agent) and bridged to the
agent with `<Dial><Sip>`; call progress (`/webhooks/twilio/voice/status`) becomes `CallEvent`s
on the call's leg.

Provider -> this module (signature, parse) -> IncomingCall / CallEvent -> core. The SIP URI
carries only the context token and the conversation id as `x-` headers, never the data:
the agent fetches the bundle from the context URL. Which agent, and for how long they count
as busy, is the core's agent router's answer; this module only translates it into TwiML.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from aiohttp import web
from twilio.twiml.voice_response import VoiceResponse

from gateway.addresses import Address, AddressError, make_address
from gateway.agents import AgentDirectory, AgentTarget
from gateway.channels import CallOffer, InboundSink
from gateway.domain import CallRefused, CallRoute
from gateway.events import (
    CallEvent,
    CallEventKind,
    DeliveryStatus,
    IncomingCall,
    attestation_of,
)
from gateway.metrics import Metrics
from webhooks.signatures import TwilioSignature, verified_twilio_form

log = logging.getLogger("gateway.webhooks.twilio_voice")

VOICE_PATH = "/webhooks/twilio/voice"
VOICE_STATUS_PATH = "/webhooks/twilio/voice/status"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"
PIN_DIGITS = 6
MAX_SIP_URI = 1024  # Twilio refuses longer <Sip> URIs
SIP_EVENTS = "initiated ringing answered completed"

# What Twilio puts in From when the caller withheld their number.
ANONYMOUS_CALLERS = frozenset({
    "", "anonymous", "restricted", "unknown", "unavailable", "blocked", "private",
    "+266696687", "+7378742833", "+86282452253", "+8656696", "+2562533",
})
ENDED = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
DIAL_FAILURES = {"busy": "was busy", "no-answer": "did not answer",
                 "failed": "could not be reached"}
_TWIML_HEADERS = {"Content-Type": "text/xml; charset=utf-8"}
EMPTY_TWIML = str(VoiceResponse()).encode()

PROMPT = ("Welcome. If you have an escalation PIN, enter its six digits now. "
          "If not, press the pound key.")
SORRY_NO_AGENT = ("Sorry, no agent can take your call right now. "
                  "Please try again in a few minutes.")
SORRY_TROUBLE = "Sorry, we cannot connect your call right now. Please try again later."


class BadWebhook(ValueError):
    """A correctly signed request we cannot act on (Twilio gets a 400)."""


class RouteError(Exception):
    """A call cannot be bridged to the chosen agent (e.g. its SIP URI is too long)."""


@dataclass(frozen=True, slots=True)
class VoiceRouting:
    """Where Twilio calls back and where agents are reached."""

    public_url: str  # GATEWAY_PUBLIC_URL: base of every URL in the TwiML
    sip_host: str  # the gateway's SIP edge as Twilio reaches it (GATEWAY_SIP_DOMAIN or _HOST)
    sip_port: int = 5060  # 0 (an ephemeral test port) is left out of URIs
    gather_timeout: int = 8  # seconds Twilio waits for the first PIN digit
    dial_timeout: int = 20  # seconds an agent's phone rings before we try another

    def url(self, path: str, **query: str) -> str:
        base = self.public_url.rstrip("/") + path
        return f"{base}?{urlencode(query, safe=',')}" if query else base


def caller_address(from_: str, default_region: str | None = None) -> Address | None:
    """The caller as a `voice:+E164` address, or None when withheld or not a phone number."""
    text = from_.strip()
    if text.lower() in ANONYMOUS_CALLERS:
        return None
    try:
        return make_address("voice", text, default_region)
    except AddressError:
        return None  # client:alice, sip:…: not a phone number we could ever call back


def agent_sip_uri(target: AgentTarget, directory: AgentDirectory, routing: VoiceRouting
                  ) -> str:
    """The agent's SIP URI as Twilio dials it.

    A registered agent is reached through the gateway's SIP edge (it knows where the phone
    registered from; Twilio cannot reach a phone behind NAT); a static contact directly.
    """
    agent = directory.get(target.agent_id)
    if target.contact.expires_at is not None and agent is not None and agent.sip_user:
        port = f":{routing.sip_port}" if routing.sip_port else ""
        return f"sip:{quote(agent.sip_user, safe='')}@{routing.sip_host}{port}"
    return target.contact.uri.strip().strip("<>")


def with_context(uri: str, token: str, conversation_id: str) -> str:
    """`uri` plus the `x-` headers Twilio turns into SIP headers on the agent's INVITE.

    Only the capability token and the conversation id: no transcript, no caller data.
    """
    headers = urlencode({"x-context": token, "x-conversation-id": conversation_id},
                        quote_via=quote)
    full = f"{uri}{'&' if '?' in uri else '?'}{headers}"
    if len(full) >= MAX_SIP_URI:
        raise RouteError(f"the SIP URI for {uri[:60]}… is {len(full)} characters; "
                         f"Twilio accepts fewer than {MAX_SIP_URI}")
    return full


def _twiml(response: VoiceResponse | bytes) -> web.Response:
    body = response if isinstance(response, bytes) else str(response).encode()
    return web.Response(body=body, headers=_TWIML_HEADERS)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


class TwilioVoiceWebhooks:
    """The routes Twilio Voice calls; one instance per app, given the sink when its channel
    starts (`connectors/twilio_channel.py`)."""

    def __init__(
        self,
        sink: InboundSink | None,
        metrics: Metrics,
        agents: AgentDirectory,
        signature: TwilioSignature,
        routing: VoiceRouting,
        default_region: str | None = None,
    ) -> None:
        self.sink = sink
        self.metrics = metrics
        self.agents = agents
        self.signature = signature
        self.routing = routing
        self.default_region = default_region
        self._latency = metrics.http_latency.labels("twilio-voice")

    def routes(self) -> list[web.RouteDef]:
        return [web.post(VOICE_PATH, self.voice), web.post(VOICE_STATUS_PATH, self.status)]

    @property
    def core(self) -> InboundSink:
        """The sink; before the channel started (or after it stopped) Twilio gets a 503."""
        if self.sink is None:
            raise web.HTTPServiceUnavailable(text="starting\n")
        return self.sink

    # ---- signature -------------------------------------------------------------------------

    async def _verified(self, request: web.Request, route: str
                        ) -> tuple[dict[str, str] | None, web.Response | None]:
        params, refusal = await verified_twilio_form(
            request, self.signature,
            lambda r, why: self.metrics.webhook_rejected.labels(r, why).inc(), route, log)
        if params is None:
            return None, refusal
        return {key: params[key] for key in params}, None  # the first of repeated names

    # ---- the call --------------------------------------------------------------------------

    async def voice(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        params, refusal = await self._verified(request, "twilio-voice")
        if refusal is not None:
            return refusal
        assert params is not None
        query = request.rel_url.query
        call_sid = params.get("CallSid", "")
        if not call_sid:
            self.metrics.webhook_rejected.labels("twilio-voice", "unparseable").inc()
            return web.Response(status=400, text="CallSid is missing\n")
        step = query.get("step", "")
        escalation = query.get("escalation") or None
        try:
            if step == "dial-status":
                response = await self._dial_finished(call_sid, params, query)
            elif escalation is not None:
                # A callback the gateway placed to the verified number: the call itself is the
                # binding, so no PIN is asked for.
                response = await self._route(call_sid, params, pin=None,
                                             escalation_token=escalation)
            elif step == "pin":
                digits = "".join(ch for ch in params.get("Digits", "") if ch.isdigit())
                response = await self._route(call_sid, params, pin=digits or None)
            elif step == "route":
                response = await self._route(call_sid, params, pin=None)
            elif step == "":
                response = self._ask_for_pin()
            else:
                raise BadWebhook(f"unknown step {step!r}")
        except BadWebhook as exc:
            self.metrics.webhook_rejected.labels("twilio-voice", "unparseable").inc()
            log.warning("twilio-voice: signed request refused for %s: %s", call_sid, exc)
            return web.Response(status=400, text=f"{exc}\n")
        self._latency.observe(time.perf_counter() - started)
        return _twiml(response)

    def _ask_for_pin(self) -> VoiceResponse:
        self.metrics.calls.labels("twilio", "asked-for-pin").inc()
        response = VoiceResponse()
        gather = response.gather(
            input="dtmf", num_digits=PIN_DIGITS, finish_on_key="#",
            timeout=self.routing.gather_timeout, action_on_empty_result=True,
            action=self.routing.url(VOICE_PATH, step="pin"), method="POST",
        )
        gather.say(PROMPT)
        # Gather falls through here when nothing was typed: route without a PIN.
        response.redirect(self.routing.url(VOICE_PATH, step="route"), method="POST")
        return response

    def _incoming_call(self, call_sid: str, params: Mapping[str, str], pin: str | None,
                       escalation_token: str | None) -> IncomingCall:
        outbound = params.get("Direction", "").startswith("outbound") or bool(escalation_token)
        # On a call we placed, the customer is the one we called (To), and we are From.
        customer_side = params.get("To", "") if outbound else params.get("From", "")
        our_side = params.get("From", "") if outbound else params.get("To", "")
        return IncomingCall(
            caller=caller_address(customer_side, self.default_region),
            callee=our_side.strip(), call_ref=call_sid, provider="twilio", pin=pin,
            escalation_token=escalation_token,
            # Twilio signed the request: its CallSid finds this call's own leg again.
            call_ref_signed=True,
            # PIN guesses are limited per caller number (what Twilio tells us of the source).
            source=f"twilio:{customer_side.strip() or 'anonymous'}",
            # Twilio's STIR/SHAKEN verdict on the caller ID: evidence, never verification.
            attestation=attestation_of(params.get("StirVerstat")),
        )

    async def _route(self, call_sid: str, params: Mapping[str, str], *, pin: str | None,
                     escalation_token: str | None = None) -> VoiceResponse:
        # The PIN or token is checked (open_call) before anyone is asked to take the call; a
        # caller over the guess limit is told so and hung up on, and nobody rings.
        try:
            route = await self.core.open_call(
                self._incoming_call(call_sid, params, pin, escalation_token))
        except CallRefused as exc:
            self.metrics.calls.labels("twilio", "refused").inc()
            log.info("twilio-voice: %s refused by the core: %s", call_sid, exc)
            response = VoiceResponse()
            response.say(exc.spoken)
            response.hangup()
            return response
        # (the core logs the call's line: call ref, caller, binding, conversation, leg)
        return await self._dial(call_sid, route, tried=())

    async def _dial(self, call_sid: str, route: CallRoute, tried: Sequence[str],
                    why_not: str | None = None) -> VoiceResponse:
        """`<Dial><Sip>` to the agent the core offers the call to, or sorry and hang up."""
        response = VoiceResponse()
        offer = await self.core.offer_call(route, tried)
        if offer is None:
            detail = "no agent available" if not tried else f"no agent answered; {why_not}"
            self.metrics.calls.labels("twilio", "no-agent").inc()
            log.warning("twilio-voice: %s: %s", call_sid, detail)
            await self.core.call_event(CallEvent(
                call_ref=call_sid, provider="twilio", kind="failed", detail=detail,
                event_id=f"twilio-voice:{call_sid}:no-agent", leg_id=route.leg_id,
            ))
            response.say(SORRY_NO_AGENT)
            response.hangup()
            return response
        try:
            uri = with_context(agent_sip_uri(offer.target, self.agents, self.routing),
                               route.context_token, route.conversation_id)
        except RouteError as exc:
            self.metrics.calls.labels("twilio", "bad-uri").inc()
            log.error("twilio-voice: %s: agent %s cannot be dialled: %s", call_sid,
                      offer.agent_id, exc)
            await self.core.call_event(CallEvent(
                call_ref=call_sid, provider="twilio", kind="failed",
                detail=f"agent {offer.agent_id} cannot be dialled",
                event_id=f"twilio-voice:{call_sid}:bad-uri", leg_id=route.leg_id,
            ))
            response.say(SORRY_TROUBLE)
            response.hangup()
            return response
        if tried:
            await self.core.call_event(CallEvent(
                call_ref=call_sid, provider="twilio", kind="transferred",
                detail=f"{why_not}; trying agent {offer.agent_id}",
                event_id=f"twilio-voice:{call_sid}:try:{offer.agent_id}", leg_id=route.leg_id,
            ))
        self.metrics.calls.labels("twilio", "routed").inc()
        return self._bridge(response, offer, tried, uri)

    def _bridge(self, response: VoiceResponse, offer: CallOffer, tried: Sequence[str],
                uri: str) -> VoiceResponse:
        agent = offer.agent_id
        dial = response.dial(
            answer_on_bridge=True, timeout=self.routing.dial_timeout, method="POST",
            action=self.routing.url(VOICE_PATH, step="dial-status", agent=agent,
                                    tried=",".join([*tried, agent])),
        )
        dial.sip(uri, status_callback=self.routing.url(VOICE_STATUS_PATH, agent=agent),
                 status_callback_event=SIP_EVENTS, status_callback_method="POST")
        return response

    async def _dial_finished(self, call_sid: str, params: Mapping[str, str],
                             query: Mapping[str, str]) -> VoiceResponse:
        """The `<Dial action>`: the agent's leg is over; hang up, or try the next agent."""
        agent = query.get("agent") or None
        status = params.get("DialCallStatus", "").lower()
        # The router lets go of the agent when the call is offered to the next one, or ends.
        if status in ("busy", "no-answer", "failed"):
            tried = [a for a in query.get("tried", agent or "").split(",") if a]
            caller_gone = params.get("CallStatus", "").lower() in ENDED
            if not caller_gone:
                route = await self.core.open_call(self._incoming_call(call_sid, params, None,
                                                                      None))
                return await self._dial(call_sid, route, tried,
                                        why_not=f"agent {agent} {DIAL_FAILURES[status]}")
            await self.core.call_event(CallEvent(
                call_ref=call_sid, provider="twilio", kind="failed",
                detail=f"agent {agent} {DIAL_FAILURES[status]}; the caller hung up",
                event_id=f"twilio-voice:{call_sid}:dial:{agent}",
            ))
        elif status in ("completed", "answered", "canceled"):
            await self.core.call_event(CallEvent(
                call_ref=call_sid, provider="twilio", kind="ended",
                agent_id=agent if status != "canceled" else None,
                duration_seconds=_seconds(params.get("DialCallDuration")),
                detail="the caller hung up before an agent answered"
                if status == "canceled" else None,
                event_id=f"twilio-voice:{call_sid}:dial:{agent}",
            ))
        else:
            log.warning("twilio-voice: %s: unexpected DialCallStatus %r", call_sid, status)
        response = VoiceResponse()
        response.hangup()
        return response

    # ---- status callbacks ------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        params, refusal = await self._verified(request, "twilio-voice-status")
        if refusal is not None:
            return refusal
        assert params is not None
        call_sid = params.get("CallSid", "")
        status = params.get("CallStatus", "").lower()
        if not call_sid or not status:
            return web.Response(status=400, text="CallSid and CallStatus are required\n")
        token = request.headers.get(IDEMPOTENCY_HEADER)
        agent = request.rel_url.query.get("agent") or None
        parent = params.get("ParentCallSid") or None
        if parent is not None or agent is not None:
            await self._agent_leg_status(parent or call_sid, call_sid, status, agent, params,
                                         token)
        else:
            await self._call_status(call_sid, status, params, token)
        return _twiml(EMPTY_TWIML)

    async def _agent_leg_status(self, call_ref: str, child_sid: str, status: str,
                                agent: str | None, params: Mapping[str, str],
                                token: str | None) -> None:
        """Progress of the `<Sip>` leg to an agent, reported on the customer's call's leg."""
        kind: CallEventKind
        if status == "ringing":
            kind, event_id = "ringing", f"twilio-voice:{child_sid}:ringing"
        elif status in ("in-progress", "answered"):
            # One answer per agent leg, however often (and with whatever token) it is reported.
            kind, event_id = "answered", f"twilio-voice:{child_sid}:answered"
        elif status == "completed":
            kind, event_id = "ended", f"twilio-voice:{token}" if token else None
        else:
            # busy / no-answer / failed / canceled: the <Dial action> decides what next (the
            # next agent's offer lets go of this one).
            log.debug("twilio-voice: agent leg %s of %s: %s", child_sid, call_ref, status)
            return
        known = await self.core.call_event(CallEvent(
            call_ref=call_ref, provider="twilio", kind=kind, agent_id=agent,
            duration_seconds=_seconds(params.get("CallDuration")) if kind == "ended" else None,
            detail=f"agent {agent}" if kind == "ringing" and agent else None,
            event_id=event_id,
        ))
        if not known:
            log.info("twilio-voice: %s for agent leg %s of unknown call %s ignored", status,
                     child_sid, call_ref)

    async def _call_status(self, call_sid: str, status: str, params: Mapping[str, str],
                           token: str | None) -> None:
        """Progress of the customer's own call (inbound, or a callback we placed)."""
        if status not in ENDED:
            log.debug("twilio-voice: %s is %s", call_sid, status)
            return
        kind: CallEventKind = "ended" if status == "completed" else "failed"
        # The core knows the agent the call was bridged to (and lets go of them).
        known = await self.core.call_event(CallEvent(
            call_ref=call_sid, provider="twilio", kind=kind,
            duration_seconds=_seconds(params.get("CallDuration")),
            detail=None if kind == "ended" else status,
            event_id=f"twilio-voice:{token}" if token else None,
        ))
        if params.get("Direction", "").startswith("outbound"):
            # A callback we placed: its outbox row learns whether the customer picked up.
            await self.core.delivery_status(DeliveryStatus(
                provider="twilio", provider_message_id=call_sid,
                status="delivered" if status == "completed" else "failed",
                error=None if status == "completed" else f"the callback was not answered "
                                                          f"({status})",
                event_id=f"twilio-voice-call:{token}" if token else None,
            ))
        if not known:
            log.info("twilio-voice: status %s for unknown call %s acknowledged and ignored",
                     status, call_sid)
