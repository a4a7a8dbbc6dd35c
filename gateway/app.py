"""The composition root: builds the store, the core, the channels and the HTTP app, and wires them.

This (with `gateway/cli.py`) is the only place in `gateway/` that imports `connectors/` and
`webhooks/`. Channels come from one registry (`CHANNELS`): each is asked to build itself from
the settings, mounts its routes, and gets one `cleanup_ctx` entry. Start-up runs in order and
shutdown in reverse: database and write batcher, the channels in registry order, the outbox
worker. A channel that fails to start stops the ones started before it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiohttp import web

from config.settings import Settings
from connectors.email import EmailChannel
from connectors.sip.channel import SipChannel
from connectors.twilio_channel import TwilioChannel
from connectors.whatsapp import WhatsAppChannel
from connectors.xmpp import XmppChannel
from gateway.agents import AgentDirectory
from gateway.api import AgentApi, errors_as_json
from gateway.auth import Authenticator, auth_middleware
from gateway.batching import WriteBatcher
from gateway.bus import EventBus
from gateway.channels import Channel, ChannelDeps, ChannelFactory, ChannelInfo
from gateway.clock import Clock, SystemClock
from gateway.core import Core, Policy
from gateway.disclosure import Disclosure, Level
from gateway.httpedge import body_deadline, console_headers
from gateway.metrics import Metrics
from gateway.instances import PeerLink, new_instance_id
from gateway.outbox import OutboxWorker
from gateway.registrations import SharedRegistrations
from gateway.store import is_sqlite, make_engine, upgrade
from gateway.workspace_api import Workspace

log = logging.getLogger("gateway.app")

# Every channel the gateway knows, in start order (SIP last: first to stop, so calls end
# before the store closes). A new channel adds one line here.
CHANNELS: tuple[ChannelFactory, ...] = (TwilioChannel, WhatsAppChannel, EmailChannel,
                                        XmppChannel, SipChannel)


@dataclass(frozen=True, slots=True)
class ChannelReport:
    """One line of the start-up report: a channel mounted, or off and why."""

    name: str
    info: ChannelInfo | None  # None: off
    why_off: str = ""


@dataclass
class Gateway:
    """Everything one running gateway owns; reachable from the app as app[GATEWAY]."""

    settings: Settings
    core: Core
    metrics: Metrics
    outbox: OutboxWorker
    agents: AgentDirectory
    agent_token: str
    bus: EventBus
    instance_id: str
    link: PeerLink | None = None  # PostgreSQL: the other gateways on the database
    channels: dict[str, Channel] = field(default_factory=dict)
    off: dict[str, str] = field(default_factory=dict)  # channel name -> what turns it on
    started: bool = False
    shared_registrations: SharedRegistrations | None = None

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.started else "starting",
            "database": self.core.engine.dialect.name,
            "channels": sorted({c for ch in self.channels.values() for c in ch.channels}),
            "services": sorted(self.channels),
            "writes": self.core.batcher.writes,
            "commits": self.core.batcher.batches,
            "outbox": {"passes": self.outbox.passes, "in_flight": self.outbox.in_flight,
                       "enabled": self.settings.outbox_enabled},
            "instance": self.instance_id,
            "peers": None if self.link is None else {
                "events_sent": self.link.sent, "events_heard": self.link.heard,
                "events_dropped": self.link.dropped},
            **self._registrations(),
        }

    def _registrations(self) -> dict[str, Any]:
        shared = self.shared_registrations
        if shared is None:
            return {}
        return {"sip_registrations": {
            "syncs": shared.syncs, "holder": shared.holder,
            "held_elsewhere": sum(len(agent.shared) for agent in self.agents)}}

    def report(self) -> list[ChannelReport]:
        """What `gateway serve` prints: each channel mounted (with the URLs to paste into
        the provider's console), or off and why."""
        mounted = [ChannelReport(name, ch.describe()) for name, ch in self.channels.items()]
        return mounted + [ChannelReport(name, None, why) for name, why in self.off.items()]


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
        pin_failure_burst=settings.pin_failure_burst,
        pin_failures_per_minute=settings.pin_failures_per_minute,
        pin_global_failure_burst=settings.pin_global_failure_burst,
        pin_global_failures_per_minute=settings.pin_global_failures_per_minute,
        pin_lookup_secret=settings.pin_lookup_secret.get_secret_value().encode()
        if settings.pin_lookup_secret else None,
        disclosure=Disclosure({b: Level(v) for b, v in settings.disclosure_unverified.items()}),
    )


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    extra_channels: Sequence[Channel] = (),
    registry: Sequence[ChannelFactory] = CHANNELS,
    migrate: bool = True,
) -> web.Application:
    """Build the whole gateway as an aiohttp app; nothing touches the network until it starts.

    `extra_channels` are channels built by the caller (the in-memory channel of the tests and
    the demo); `registry` replaces the list of channel classes (tests leave SIP out)."""
    clock = clock or SystemClock()
    token = settings.agent_token.get_secret_value() if settings.agent_token else None
    if not token:
        token = secrets.token_urlsafe(24)
        log.warning("GATEWAY_AGENT_TOKEN is not set: generated one for this run: %s", token)
    engine = make_engine(settings.database_url)
    metrics = Metrics()
    instance_id = settings.instance_id or new_instance_id()
    # Event ids start at this process's start (µs): another instance's, or an earlier run's,
    # are then recognised as foreign by the event stream (a resync, not a wrong replay).
    bus = EventBus(clock.now, first_seq=time.time_ns() // 1000)
    agents = AgentDirectory(settings.agents, clock, publish=bus.publish)
    bus.remote_hooks.append(agents.heard)  # calls offered and ended at other gateways
    outbox_worker = OutboxWorker(
        engine, {}, clock, poll_interval=settings.outbox_poll_seconds,
        sent=lambda channel, outcome: metrics.outbound.labels(channel, outcome).inc(),
        publish=bus.publish, instance_id=instance_id)
    # Several gateways on one PostgreSQL hear each other's events and outbox wake-ups.
    link = (None if is_sqlite(settings.database_url) else
            PeerLink(settings.database_url, instance_id, bus, engine, outbox_worker.wake))

    if link is not None:
        link.watch(agents.origins, agents.forget_origin)

    def outbox_queued() -> None:
        outbox_worker.wake()
        if link is not None:
            link.outbox_queued()

    core = Core(engine, clock, policy_from(settings), WriteBatcher(engine),
                on_outbox=outbox_queued, bus=bus, agents=agents, metrics=metrics)
    gw = Gateway(settings, core, metrics, outbox_worker, agents, token, bus, instance_id, link)

    # The service token or an agent's own (its SHA-256 is looked up in the agent router).
    authenticate = auth_middleware(Authenticator(token, agents))
    app = web.Application(middlewares=[console_headers, errors_as_json,
                                       body_deadline(settings.http_body_timeout_seconds),
                                       authenticate],
                          client_max_size=2 * 1024 * 1024)
    app[GATEWAY] = gw
    app.add_routes(AgentApi(core, metrics, gw.health).routes())
    # The agent workspace: inbox, timeline, journeys, the event stream off the bus.
    Workspace(core.reader, clock, bus, heartbeat=settings.events_heartbeat_seconds).mount(app)

    deps = ChannelDeps(clock=clock, metrics=metrics, router=agents)
    # The caller's own channels first: a configured provider channel after them sends for
    # the address channels both serve (the outbox takes the last one named).
    channels: list[Channel] = list(extra_channels)
    for factory in registry:
        channel = factory.from_settings(settings, deps)
        if channel is None:
            gw.off[factory.name] = factory.why_off(settings)
        else:
            channels.append(channel)

    async def database(app: web.Application) -> AsyncIterator[None]:
        if migrate:
            await upgrade(settings.database_url)
        await core.batcher.start()
        try:
            if link is not None:
                await link.start()
            yield
        finally:
            if link is not None:
                await link.aclose()
            await core.aclose()
            await engine.dispose()

    lifecycles: list[Lifecycle] = [database]
    if settings.sip_shared_registrations:
        shared = gw.shared_registrations = SharedRegistrations(
            engine, agents, clock, interval=settings.sip_registration_sync_seconds)

        async def share_registrations(app: web.Application) -> AsyncIterator[None]:
            await shared.start()  # before SIP starts, after SIP stops
            try:
                yield
            finally:
                await shared.aclose()

        lifecycles.append(share_registrations)
    for channel in channels:
        if channel.name in gw.channels:
            raise ValueError(f"two channels are called {channel.name!r}")
        gw.channels[channel.name] = channel
        app.add_routes(channel.routes())
        outbox_worker.add_connector(channel)
        lifecycles.append(_lifecycle(channel, core))

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

    # The outbox starts after every channel it may send through, and stops before them.
    app.cleanup_ctx.extend([*lifecycles, run_outbox])
    return app


async def setup_runner(runner: web.AppRunner) -> None:
    """`runner.setup()`; when start-up fails, what did start is stopped again, in reverse
    (aiohttp leaves that to whoever called setup) before the error goes on."""
    try:
        await runner.setup()
    except BaseException:
        await runner.app.cleanup()
        raise


def _lifecycle(channel: Channel, core: Core) -> Lifecycle:
    """One channel's `cleanup_ctx` entry: started with the sink, closed even after a failed
    or partial start (aiohttp then unwinds the entries started before it, in reverse)."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        try:
            await channel.start(core)
        except BaseException:
            await _close(channel)
            raise
        try:
            yield
        finally:
            await _close(channel)

    run.__name__ = f"run_{channel.name}"
    return run


async def _close(channel: Channel) -> None:
    try:
        await channel.aclose()
    except Exception:
        log.exception("closing the %s channel failed", channel.name)
