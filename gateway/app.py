"""The composition root: builds the store, the core, the channels and the HTTP app, and wires them.

This (with `gateway/cli.py`) is the only place in `gateway/` that imports `connectors/` and
`webhooks/`. Start-up and shutdown run through aiohttp's `cleanup_ctx`, in order and in
reverse: database, write batcher, connectors, outbox worker, SIP edge.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiohttp import web

from config.settings import Settings
from gateway.agents import AgentDirectory
from gateway.api import AgentApi, bearer_auth, errors_as_json
from gateway.batching import WriteBatcher
from gateway.channels import Connector
from gateway.clock import Clock, SystemClock
from gateway.core import Core, Policy
from gateway.metrics import Metrics
from gateway.outbox import OutboxWorker
from gateway.store import make_engine, upgrade

log = logging.getLogger("gateway.app")


@dataclass
class Gateway:
    """Everything one running gateway owns; reachable from the app as app[GATEWAY]."""

    settings: Settings
    core: Core
    metrics: Metrics
    outbox: OutboxWorker
    agents: AgentDirectory
    agent_token: str
    connectors: list[Connector] = field(default_factory=list)
    services: dict[str, Any] = field(default_factory=dict)  # e.g. "sip": the SIP edge
    started: bool = False

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.started else "starting",
            "database": self.core.engine.dialect.name,
            "channels": sorted({c for conn in self.connectors for c in conn.channels}),
            "services": sorted(self.services),
            "writes": self.core.batcher.writes,
            "commits": self.core.batcher.batches,
        }


GATEWAY = web.AppKey("gateway", Gateway)
Lifecycle = Callable[[web.Application], AsyncIterator[None]]


def policy_from(settings: Settings) -> Policy:
    return Policy(
        public_url=settings.public_url,
        conversation_idle=timedelta(hours=settings.conversation_idle_hours),
        context_token_ttl=timedelta(seconds=settings.context_token_ttl_seconds),
        verification_ttl=timedelta(seconds=settings.verification_ttl_seconds),
        otp_ttl=timedelta(seconds=settings.otp_ttl_seconds),
        otp_max_attempts=settings.otp_max_attempts,
        escalation_ttl=timedelta(seconds=settings.escalation_ttl_seconds),
        dial_in_number=settings.twilio_voice_number,
    )


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    extra_connectors: Sequence[Connector] = (),
    migrate: bool = True,
    enable_sip: bool = True,
) -> web.Application:
    """Build the whole gateway as an aiohttp app; nothing touches the network until it starts."""
    clock = clock or SystemClock()
    token = settings.agent_token.get_secret_value() if settings.agent_token else None
    if not token:
        token = secrets.token_urlsafe(24)
        log.warning("GATEWAY_AGENT_TOKEN is not set: generated one for this run: %s", token)
    engine = make_engine(settings.database_url)
    metrics = Metrics()
    outbox_worker = OutboxWorker(
        engine, {}, clock,
        sent=lambda channel, outcome: metrics.outbound.labels(channel, outcome).inc())
    core = Core(engine, clock, policy_from(settings), WriteBatcher(engine),
                on_outbox=outbox_worker.wake)
    agents = AgentDirectory(settings.agents, clock)
    gw = Gateway(settings, core, metrics, outbox_worker, agents, token)

    app = web.Application(middlewares=[errors_as_json, bearer_auth(token)],
                          client_max_size=2 * 1024 * 1024)
    app[GATEWAY] = gw
    app.add_routes(AgentApi(core, metrics, gw.health).routes())

    async def database(app: web.Application) -> AsyncIterator[None]:
        if migrate:
            await upgrade(settings.database_url)
        await core.batcher.start()
        try:
            yield
        finally:
            await core.aclose()
            await engine.dispose()

    connectors: list[Connector] = list(extra_connectors)
    lifecycles: list[Lifecycle] = []

    # ---- channels: each block adds its connector, its webhook routes and its lifecycle ----
    # (twilio-messaging) and (twilio-voice): one account, one signature check
    if settings.twilio_enabled:
        from connectors.twilio import TwilioMessaging
        from connectors.twilio_voice import TwilioVoice
        from webhooks.signatures import TwilioSignature
        from webhooks.twilio_messaging import TwilioMessagingWebhooks
        from webhooks.twilio_voice import TwilioVoiceWebhooks, VoiceRouting

        # Settings refuse a SID without a (non-empty) token: signature checks never fail open.
        assert settings.twilio_account_sid and settings.twilio_auth_token is not None
        twilio_token = settings.twilio_auth_token.get_secret_value()
        shared_key = settings.twilio_webhook_shared_key
        twilio_signature = TwilioSignature(
            twilio_token, settings.public_url,
            shared_key.get_secret_value() if shared_key else None)
        app.add_routes(TwilioMessagingWebhooks(
            core, metrics, twilio_signature, settings.default_region).routes())
        app.add_routes(TwilioVoiceWebhooks(
            core, metrics, agents, twilio_signature,
            VoiceRouting(public_url=settings.public_url,
                         sip_host=settings.sip_domain or settings.sip_host,
                         sip_port=settings.sip_port),
            settings.default_region,
        ).routes())
        # One WhatsApp sender per gateway: Meta's Cloud API when configured, else Twilio.
        connectors.append(TwilioMessaging(
            settings.twilio_account_sid, twilio_token, api_url=settings.twilio_api_url,
            public_url=settings.public_url, from_number=settings.twilio_from_number,
            channels=frozenset({"sms"} if settings.whatsapp_enabled else {"sms", "whatsapp"}),
            default_region=settings.default_region,
        ))
        # Callbacks the core decides (outbox `voice`/`call` rows) are placed through Twilio.
        connectors.append(TwilioVoice(
            settings.twilio_account_sid, twilio_token, api_url=settings.twilio_api_url,
            public_url=settings.public_url, from_number=settings.twilio_voice_number,
            default_region=settings.default_region,
        ))
    # (whatsapp)
    if settings.whatsapp_enabled:
        from connectors.whatsapp import WhatsAppCloud
        from webhooks.signatures import MetaSignature
        from webhooks.whatsapp import WhatsAppWebhooks

        assert settings.whatsapp_app_secret is not None
        verify_token = settings.whatsapp_verify_token
        access_token = settings.whatsapp_access_token
        app.add_routes(WhatsAppWebhooks(
            core, metrics, MetaSignature(settings.whatsapp_app_secret.get_secret_value()),
            verify_token.get_secret_value() if verify_token else None, settings.whatsapp_api_url,
        ).routes())
        connectors.append(WhatsAppCloud(
            api_url=settings.whatsapp_api_url,
            access_token=access_token.get_secret_value() if access_token else None,
            phone_number_id=settings.whatsapp_phone_number_id,
        ))
    # (sip)
    if enable_sip:
        from connectors.sip.edge import SipConfig, SipEdge

        sip_edge = SipEdge(SipConfig.from_settings(settings), sink=core, agents=agents,
                           metrics=metrics, clock=clock)
        gw.services["sip"] = sip_edge

        async def run_sip(app: web.Application) -> AsyncIterator[None]:
            await sip_edge.start()  # last to start, first to stop: calls end before the store
            try:
                yield
            finally:
                await sip_edge.aclose()

        lifecycles.append(run_sip)

    gw.connectors = connectors
    for connector in connectors:
        outbox_worker.add_connector(connector)

    async def run_connectors(app: web.Application) -> AsyncIterator[None]:
        started: list[Connector] = []
        try:
            for connector in connectors:
                start = getattr(connector, "start", None)
                if start is not None:
                    await start()
                started.append(connector)
            yield
        finally:
            for connector in reversed(started):
                close = getattr(connector, "aclose", None)
                if close is not None:
                    try:
                        await close()
                    except Exception:
                        log.exception("closing connector %r failed", connector)

    async def run_outbox(app: web.Application) -> AsyncIterator[None]:
        if settings.outbox_enabled:
            await outbox_worker.start()
        else:
            log.info("outbox sending is off here (GATEWAY_OUTBOX_ENABLED=false)")
        gw.started = True
        try:
            yield
        finally:
            gw.started = False
            await outbox_worker.aclose()

    app.cleanup_ctx.extend([database, run_connectors, run_outbox, *lifecycles])
    return app
