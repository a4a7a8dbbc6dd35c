"""The SIP channel: the SIP edge (`connectors/sip/edge.py`) as one of the gateway's channels.

Agents' phones REGISTER with it (their presence in the core's agent router), calls from a
trunk or a phone become `IncomingCall`s for the core and are proxied to an agent with the
context link. It sends nothing through the outbox (callbacks go out through Twilio) and mounts
no HTTP routes. Always on: `GATEWAY_SIP_HOST` / `GATEWAY_SIP_PORT` say where it listens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from connectors.sip.edge import SipConfig, SipEdge
from gateway.channels import (
    CallOffer,
    ChannelDeps,
    ChannelInfo,
    InboundSink,
    OutboundMessage,
    SendError,
)
from gateway.domain import CallRoute
from gateway.events import CallEvent, IncomingCall

if TYPE_CHECKING:
    from config.settings import Settings
    from gateway.channels import SendReceipt


class _LateSink:
    """The core as the edge sees it (`connectors.sip.proxy.CallSink`), bound at `start`:
    the edge is built with the app, the sink arrives when the channel starts."""

    def __init__(self) -> None:
        self.sink: InboundSink | None = None

    def open_call(self, call: IncomingCall) -> Awaitable[CallRoute]:
        assert self.sink is not None, "the SIP channel is not started"
        return self.sink.open_call(call)

    def offer_call(self, route: CallRoute, tried: Sequence[str] = (), *,
                   agent_id: str | None = None, exclude: Sequence[str] = ()
                   ) -> Awaitable[CallOffer | None]:
        assert self.sink is not None, "the SIP channel is not started"
        return self.sink.offer_call(route, tried, agent_id=agent_id, exclude=exclude)

    def call_event(self, event: CallEvent) -> Awaitable[bool]:
        assert self.sink is not None, "the SIP channel is not started"
        return self.sink.call_event(event)


class SipChannel:
    name = "sip"
    channels: frozenset[str] = frozenset()

    def __init__(self, config: SipConfig, deps: ChannelDeps) -> None:
        self._sink = _LateSink()
        self.edge = SipEdge(config, sink=self._sink, agents=deps.router,
                            metrics=deps.metrics, clock=deps.clock)

    @classmethod
    def from_settings(cls, settings: Settings, deps: ChannelDeps) -> SipChannel | None:
        return cls(SipConfig.from_settings(settings), deps)

    @classmethod
    def why_off(cls, settings: Settings) -> str:
        return "always on"

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return ()

    def describe(self) -> ChannelInfo:
        where = f"sip:{self.edge.address}"  # the bound port once started
        return ChannelInfo(self.name, (
            ("SIP trunk and agents' phones (UDP and TCP)", where),
        ), (f"service users: {', '.join(self.edge.config.service_users) or 'none'}",))

    async def start(self, sink: InboundSink) -> None:
        self._sink.sink = sink
        await self.edge.start()  # last to start, first to stop: calls end before the store

    async def aclose(self) -> None:
        await self.edge.aclose()

    async def send(self, message: OutboundMessage) -> SendReceipt:
        raise SendError("the SIP channel sends nothing through the outbox", permanent=True)
