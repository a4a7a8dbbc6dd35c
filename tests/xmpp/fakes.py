"""An in-memory core for the XMPP channel's tests: the InboundSink, AgentRouter and AgentDesk
methods the channel calls, with the real committed-event bus (gateway/bus.py).

It keeps what a store would (messages once per provider id, the channel's checkpoint in the
same step as the message, delivery statuses, conversations and who has them) and survives a
channel restart, as a database would. Replies go through `outbox` to the channel's `send`, as
the outbox worker would. The real core replaces it in the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.bus import (
    ConversationAssigned,
    ConversationClosed,
    EntryAdded,
    EventBus,
)
from gateway.channels import ContextLink, OutboundMessage, Presence, SendReceipt
from gateway.events import DeliveryStatus, InboundMessage


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0,
                     what: str = "condition") -> Any:
    """Wait until `predicate()` is truthy (polling the loop, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Result:
    duplicate: bool
    customer_id: str | None = None
    conversation_id: str | None = None
    leg_id: str | None = None
    entry_id: int | None = None


@dataclass
class Conversation:
    id: str
    customer_id: str
    address: str
    channel: str
    leg_id: str
    name: str | None = None
    status: str = "open"
    agent_id: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)


class FakeRouter:
    def __init__(self) -> None:
        self.presence: dict[tuple[str, str], Presence] = {}
        self.history: list[tuple[str, str, Presence]] = []

    def set_presence(self, agent_id: str, source: str, presence: Presence) -> None:
        self.presence[(agent_id, source)] = presence
        self.history.append((agent_id, source, presence))


class FakeDesk:
    def __init__(self, core: FakeCore) -> None:
        self.core = core
        self.calls: list[tuple[Any, ...]] = []

    async def take(self, agent_id: str, conversation_id: str | None) -> Any:
        self.calls.append(("take", agent_id, conversation_id))
        core = self.core
        if conversation_id is None:
            waiting = [c for c in core.conversations.values()
                       if c.status == "open" and c.agent_id is None]
            if not waiting:
                return None
            conversation = waiting[0]
        else:
            conversation = core.conversations.get(conversation_id)
            if conversation is None:
                raise LookupError(f"no conversation {conversation_id}")
        core.assign(conversation, agent_id)
        return {"conversation_id": conversation.id}

    async def release(self, agent_id: str, conversation_id: str) -> None:
        self.calls.append(("release", agent_id, conversation_id))
        self.core.assign(self.core.conversations[conversation_id], None)

    async def release_all(self, agent_id: str) -> list[str]:
        self.calls.append(("release_all", agent_id))
        released = [c for c in self.core.conversations.values() if c.agent_id == agent_id]
        for conversation in released:
            self.core.assign(conversation, None)
        return [c.id for c in released]

    async def assigned(self, agent_id: str) -> list[str]:
        return [c.id for c in self.core.conversations.values()
                if c.agent_id == agent_id and c.status == "open"]

    async def close(self, agent_id: str, conversation_id: str) -> None:
        self.calls.append(("close", agent_id, conversation_id))
        conversation = self.core.conversations[conversation_id]
        conversation.status = "closed"
        self.core.bus.publish([ConversationClosed(conversation.id, conversation.customer_id)])

    async def reply(self, agent_id: str, conversation_id: str, text: str) -> Any:
        self.calls.append(("reply", agent_id, conversation_id, text))
        conversation = self.core.conversations[conversation_id]
        entry = self.core.append(conversation, "out", agent_id, text)
        await self.core.outbox(conversation, text)
        return {"entry_id": entry["id"]}

    async def verify(self, agent_id: str, conversation_id: str, address: str | None) -> Any:
        self.calls.append(("verify", agent_id, conversation_id, address))
        conversation = self.core.conversations[conversation_id]
        return {"challenge_id": "chl_1", "address": address or conversation.address,
                "code": "654321"}

    async def escalate(self, agent_id: str, conversation_id: str, mode: str) -> Any:
        self.calls.append(("escalate", agent_id, conversation_id, mode))
        return {"mode": mode, "number": "+18005550000", "pin": "123456"}

    async def summary(self, conversation_id: str) -> Any:
        conversation = self.core.conversations[conversation_id]
        return {
            "conversation_id": conversation.id,
            "customer": {"id": conversation.customer_id, "display_name": conversation.name,
                         "addresses": [{"address": conversation.address}]},
            "leg": {"id": conversation.leg_id, "address": conversation.address},
            "verification": None,
            "verification_reason": "no-verification",
            "verification_explanation": "not verified: the customer has not completed a "
                                        "verification",
            "transcript": list(conversation.entries),
            "context_url": f"http://gw.test/api/v1/contexts/tok-{conversation.leg_id}",
        }


class FakeCore:
    """InboundSink + router + desk, in memory."""

    def __init__(self) -> None:
        self.bus = EventBus(lambda: datetime.now(UTC))
        self.router = FakeRouter()
        self.desk = FakeDesk(self)
        self.messages: list[InboundMessage] = []
        self.duplicates: list[InboundMessage] = []
        self.claimed: set[tuple[str, str]] = set()
        self.checkpoints: dict[str, str] = {}
        self.statuses: list[DeliveryStatus] = []
        self.conversations: dict[str, Conversation] = {}
        self.by_address: dict[str, Conversation] = {}
        self.fail_next_ingests = 0
        self.ingest_delay = 0.0
        self.sender: Any = None  # a channel whose send() the fake outbox uses
        self.sent: list[tuple[OutboundMessage, SendReceipt]] = []
        self._ids = itertools.count(1)
        self._entry_ids = itertools.count(1)

    # ---- InboundSink ---------------------------------------------------------------------

    async def ingest(self, event: InboundMessage) -> Result:
        await asyncio.sleep(self.ingest_delay)
        if self.fail_next_ingests:
            self.fail_next_ingests -= 1
            raise ConnectionError("database unavailable (injected)")
        key = (event.provider, event.provider_id)
        if key in self.claimed:
            self.duplicates.append(event)
            return Result(duplicate=True)
        # One "transaction": the message, its entry and the channel's checkpoint together.
        self.claimed.add(key)
        self.messages.append(event)
        if event.checkpoint is not None:
            self.checkpoints[event.checkpoint[0]] = event.checkpoint[1]
        conversation = self.conversation_for(str(event.sender), event.channel,
                                             event.profile_name)
        entry = self.append(conversation, "in", str(event.sender), event.text)
        return Result(False, conversation.customer_id, conversation.id, conversation.leg_id,
                      entry["id"])

    async def delivery_status(self, event: DeliveryStatus) -> str | None:
        self.statuses.append(event)
        return event.status

    async def checkpoint(self, key: str) -> str | None:
        return self.checkpoints.get(key)

    async def issue_context(self, leg_id: str) -> ContextLink:
        conversation = next(c for c in self.conversations.values() if c.leg_id == leg_id)
        return ContextLink(leg_id, conversation.id, f"tok-{leg_id}",
                           f"http://gw.test/api/v1/contexts/tok-{leg_id}",
                           datetime.now(UTC) + timedelta(minutes=15))

    async def check_thread_token(self, token: str) -> str | None:
        return None

    async def open_call(self, call: Any) -> Any:
        raise NotImplementedError

    async def call_event(self, event: Any) -> bool:
        raise NotImplementedError

    # ---- what the store would hold -------------------------------------------------------

    def texts(self, address: str | None = None) -> list[str]:
        return [m.text for m in self.messages if address is None or str(m.sender) == address]

    def conversation_for(self, address: str, channel: str,
                         name: str | None = None) -> Conversation:
        conversation = self.by_address.get(address)
        if conversation is None or conversation.status != "open":
            n = next(self._ids)
            conversation = Conversation(f"conv_{n}", f"cus_{n}", address, channel, f"leg_{n}",
                                        name)
            self.conversations[conversation.id] = conversation
            self.by_address[address] = conversation
        return conversation

    def append(self, conversation: Conversation, direction: str, author: str,
               text: str) -> dict[str, Any]:
        entry = {"id": next(self._entry_ids), "at": datetime.now(UTC).isoformat(),
                 "channel": conversation.channel, "direction": direction, "author": author,
                 "text": text, "kind": "message", "leg_id": conversation.leg_id}
        conversation.entries.append(entry)
        self.bus.publish([EntryAdded(conversation.id, conversation.customer_id,
                                     conversation.leg_id, entry)])
        return entry

    def assign(self, conversation: Conversation, agent_id: str | None) -> None:
        previous, conversation.agent_id = conversation.agent_id, agent_id
        self.bus.publish([ConversationAssigned(conversation.id, conversation.customer_id,
                                               agent_id, previous)])

    def customer_writes(self, address: str, text: str, name: str | None = None) -> Conversation:
        """A customer on another channel (e.g. WhatsApp) writes: stored and published."""
        channel = address.split(":", 1)[0]
        conversation = self.conversation_for(address, channel, name)
        self.append(conversation, "in", address, text)
        return conversation

    async def outbox(self, conversation: Conversation, text: str) -> None:
        """The outbox worker's part: XMPP customers' replies go out through the channel."""
        if self.sender is None or conversation.channel != "xmpp":
            return
        message = OutboundMessage(id=f"out_{next(self._ids):020d}", channel="xmpp",
                                  kind="message", to=conversation.address, from_=None,
                                  text=text)
        receipt = await self.sender.send(message)
        self.sent.append((message, receipt))
