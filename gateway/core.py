"""The continuity core: the three flows of DESIGN.md behind one object, the `InboundSink`.

`Core` composes the flows, each in its own module: inbound messages and statuses
(`gateway/inbound.py`), calls (`gateway/calls.py`), agent commands (`gateway/desk.py`), and
the reads the API and the context URL serve (`gateway/context.py`). Every write is one
group-committed transaction (`gateway/writes.py`) whose domain events go on the bus after
the commit. The core knows no channel: it speaks in addresses, legs and events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import context, outbox, verification
from gateway.addresses import Address
from gateway.agents import AgentDirectory
from gateway.batching import WriteBatcher
from gateway.bus import EventBus
from gateway.calls import Calls
from gateway.channels import CallOffer, ContextLink, ReplyThread
from gateway.clock import Clock
from gateway.desk import Desk
from gateway.domain import (
    CallRoute,
    CodeChecked,
    Conflict,
    ConversationId,
    EscalationIssued,
    IngestResult,
    LegId,
    NotFound,
    OutboxId,
    OutboxState,
    ReplyQueued,
    VerificationStarted,
)
from gateway.events import CallEvent, DeliveryStatus, IncomingCall, InboundMessage
from gateway.inbound import Inbound
from gateway.metrics import Metrics
from gateway.policy import Policy
from gateway.store import Reader
from gateway.writes import Writes

__all__ = ["CallRoute", "Conflict", "Core", "IngestResult", "NotFound", "Policy"]


class Core:
    """What every edge and the agent API talk to (`gateway.channels.InboundSink`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        policy: Policy,
        batcher: WriteBatcher | None = None,
        on_outbox: Callable[[], None] | None = None,
        *,
        bus: EventBus | None = None,
        agents: AgentDirectory | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.policy = policy
        self.batcher = batcher or WriteBatcher(engine)
        self.bus = bus or EventBus(clock.now)
        self.router = agents if agents is not None else AgentDirectory((), clock)
        self.reader = Reader(engine, engine.url.render_as_string(hide_password=False))
        self.writes = Writes(self.batcher, self.bus, clock, on_outbox or (lambda: None))
        self.metrics = metrics or Metrics()
        pins = verification.PinIndex(policy.pin_lookup_secret)
        self.inbound = Inbound(self.writes, self.reader, policy)
        self.calls = Calls(self.writes, policy, self.router, self.metrics, pins)
        self.desk = Desk(self.writes, self.reader, policy, clock, pins)

    async def aclose(self) -> None:
        """Finish queued writes, then release the store's threads and connections."""
        await self.batcher.aclose()
        self.reader.dispose()

    def context_url(self, token: str) -> str:
        return self.policy.context_url(token)

    # ---- flow 1: inbound events (the edges' InboundSink) --------------------------------

    def ingest(self, event: InboundMessage) -> Awaitable[IngestResult]:
        return self.inbound.ingest(event)

    def ingest_batch(self, events: Sequence[InboundMessage],
                     checkpoint: tuple[str, str] | None = None
                     ) -> Awaitable[list[IngestResult]]:
        """Many messages and the channel's checkpoint in one write (email's FETCH batch)."""
        return self.inbound.ingest_batch(events, checkpoint)

    def delivery_status(self, event: DeliveryStatus) -> Awaitable[str | None]:
        return self.inbound.delivery_status(event)

    def check_thread_token(self, token: str) -> Awaitable[ConversationId | None]:
        return self.inbound.check_thread_token(token)

    def issue_thread_token(self, leg_id: LegId) -> Awaitable[str]:
        return self.inbound.issue_thread_token(leg_id)

    def checkpoint(self, key: str) -> Awaitable[str | None]:
        return self.inbound.checkpoint(key)

    def reply_thread(self, outbox_id: OutboxId) -> Awaitable[ReplyThread]:
        return self.inbound.reply_thread(outbox_id)

    # ---- flow 2: new legs ------------------------------------------------------------------

    def open_call(self, call: IncomingCall) -> Awaitable[CallRoute]:
        return self.calls.open_call(call)

    def offer_call(self, route: CallRoute, tried: Sequence[str] = (), *,
                   agent_id: str | None = None, exclude: Sequence[str] = ()
                   ) -> Awaitable[CallOffer | None]:
        return self.calls.offer_call(route, tried, agent_id=agent_id, exclude=exclude)

    def call_event(self, event: CallEvent) -> Awaitable[bool]:
        return self.calls.call_event(event)

    def issue_context(self, leg_id: LegId) -> Awaitable[ContextLink]:
        return self.calls.issue_context(leg_id)

    # ---- flow 3: agent commands (the API's; agent channels use `desk`) -------------------------

    def reply(self, conversation_id: str, text: str, agent: str | None
              ) -> Awaitable[ReplyQueued]:
        return self.desk.reply(agent, conversation_id, text)

    def start_verification(self, conversation_id: str, address_text: str | None
                           ) -> Awaitable[VerificationStarted]:
        return self.desk.verify(None, conversation_id, address_text)

    def check_code(self, conversation_id: str, challenge_id: str, code: str, leg_id: str
                   ) -> Awaitable[CodeChecked]:
        return self.desk.check_code(None, conversation_id, challenge_id, code, leg_id)

    async def escalate(self, conversation_id: str, channel: str, mode: str
                       ) -> EscalationIssued:
        if channel != "voice":
            raise Conflict(f"escalation to {channel!r} is not supported; use \"voice\"")
        return await self.desk.escalate(None, conversation_id, mode)

    def close_conversation(self, conversation_id: str) -> Awaitable[None]:
        return self.desk.close(None, conversation_id)

    def merge_customers(self, survivor_id: str, merged_id: str, agent: str | None
                        ) -> Awaitable[str]:
        return self.desk.merge_customers(survivor_id, merged_id, agent)

    def undo_merge(self, merge_id: str) -> Awaitable[None]:
        return self.desk.undo_merge(merge_id)

    # ---- reads ----------------------------------------------------------------------------

    async def bundle(self, token: str) -> dict[str, Any] | None:
        return await self.reader.run(context.bundle_for_token, token, self.clock.now(),
                                     self.policy.disclosure)

    async def customer_by_address(self, address: Address) -> dict[str, Any] | None:
        return await self.reader.run(context.customer_view, str(address))

    async def conversation(self, conversation_id: str) -> dict[str, Any]:
        view = await self.reader.run(context.conversation_view, conversation_id)
        if view is None:
            raise NotFound(f"no conversation {conversation_id}")
        return view

    async def outbox_message(self, message_id: str) -> OutboxState:
        state = await self.reader.run(outbox.read_state, message_id)
        if state is None:
            raise NotFound(f"no outbound message {message_id}")
        return state
