"""The committed-event bus: after each commit the core says what happened, once, in order.

Subscribers (the console's event stream, XMPP agent notifications) read `Published` records
from their own bounded queue; nothing polls the store. Every record has a sequence number, so a
subscriber that reconnects can resume from the last one it saw (`Last-Event-ID`) while the bus
still holds it. A subscriber that falls too far behind is not allowed to hold the others up: it
is closed, and its next read says so.

Several gateways on one PostgreSQL: events committed here are also handed to `forward_to`'s
hook (`gateway.instances.PeerLink` NOTIFYs them), and the other instances' events come back
through `publish_remote`, marked with their `origin`. Sequence numbers are this bus's own:
each bus starts its count at `first_seq` (the app uses its start time in microseconds), so
an id from another instance, or from before a restart, is recognised as foreign.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from gateway.domain import Entry

REPLAY: Final = 4096  # records kept for resume
QUEUE: Final = 1024  # records a subscriber may have unread before it is dropped


@dataclass(frozen=True, slots=True)
class EntryAdded:
    """A transcript entry was committed (a message either way, a call event, a system note).

    It holds the committed values in `Entry`'s field order and builds the typed `item` (and
    the API's `entry`) when a subscriber asks: every inbound message publishes one, most of
    them read by nobody, on the hot path of group commit."""

    customer_id: str
    values: tuple[Any, ...]  # Entry(*values)

    kind = "message"

    @property
    def item(self) -> Entry:
        return Entry(*self.values)

    @property
    def conversation_id(self) -> str:
        return self.values[_CONVERSATION]  # type: ignore[no-any-return]

    @property
    def leg_id(self) -> str:
        return self.values[_LEG]  # type: ignore[no-any-return]

    @property
    def entry(self) -> Mapping[str, Any]:
        """As the API shows a transcript entry: id, at, channel, direction, author, text…"""
        return self.item.as_json()


_FIELDS = Entry.__dataclass_fields__
_CONVERSATION = list(_FIELDS).index("conversation_id")
_LEG = list(_FIELDS).index("leg_id")


@dataclass(frozen=True, slots=True)
class CallOffered:
    """A call is being offered to an agent (their phone is about to ring)."""

    conversation_id: str
    customer_id: str
    leg_id: str
    agent_id: str
    context_url: str
    call_ref: str

    kind = "call"


@dataclass(frozen=True, slots=True)
class CallEnded:
    conversation_id: str
    customer_id: str
    leg_id: str
    agent_id: str | None
    call_ref: str

    kind = "call-ended"


@dataclass(frozen=True, slots=True)
class ConversationAssigned:
    """An agent took a conversation, or it went back to the queue (agent_id None)."""

    conversation_id: str
    customer_id: str
    agent_id: str | None
    previous_agent_id: str | None

    kind = "assigned"


@dataclass(frozen=True, slots=True)
class ConversationClosed:
    conversation_id: str
    customer_id: str

    kind = "closed"


@dataclass(frozen=True, slots=True)
class DeliveryUpdated:
    """An outbound message's state moved: sent by the worker, or a provider's status callback
    (delivered, read, failed…). Where the timeline shows it beside the entry."""

    conversation_id: str | None
    outbox_id: str
    status: str
    error: str | None

    kind = "delivery"


@dataclass(frozen=True, slots=True)
class AgentPresenceChanged:
    agent_id: str
    presence: str  # available | away | dnd | offline

    kind = "presence"


DomainEvent = (EntryAdded | CallOffered | CallEnded | ConversationAssigned
               | ConversationClosed | DeliveryUpdated | AgentPresenceChanged)


@dataclass(frozen=True, slots=True)
class Published:
    seq: int
    at: datetime
    event: DomainEvent
    origin: str | None = None  # None: committed by this instance; else the one that did
    # Remote only: the agent relays (e.g. "xmpp:support@example.org") that the origin runs
    # itself; they told their agents there, so the same relay here must not tell them again.
    relayed_by: frozenset[str] = frozenset()


class SubscriptionLost(Exception):
    """The subscriber fell more than its queue behind and was dropped; resubscribe."""


@dataclass(eq=False)
class Subscription:
    """One subscriber's view of the bus: `async for record in subscription`."""

    _bus: EventBus
    _accept: Callable[[DomainEvent], bool]
    _queue: asyncio.Queue[Published | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE + 1))
    lost: bool = False

    def _offer(self, record: Published) -> None:
        if self.lost or not self._accept(record.event):
            return
        if self._queue.qsize() >= QUEUE:
            self.lost = True
            self._queue.put_nowait(None)
            self._bus._drop(self)
            return
        self._queue.put_nowait(record)

    async def get(self, timeout: float | None = None) -> Published | None:
        """The next record, or None after `timeout` seconds with nothing new."""
        try:
            record = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if record is None:
            raise SubscriptionLost("subscriber fell behind and was dropped")
        return record

    def __aiter__(self) -> AsyncIterator[Published]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Published]:
        while True:
            record = await self.get()
            assert record is not None
            yield record

    def close(self) -> None:
        self._bus._drop(self)


class EventBus:
    """In-process fan-out of committed domain events, with a replay window for resume."""

    def __init__(self, clock: Callable[[], datetime], replay: int = REPLAY, *,
                 first_seq: int = 1) -> None:
        self._now = clock
        self._seq = itertools.count(first_seq)
        self._recent: deque[Published] = deque(maxlen=replay)
        self._subscribers: list[Subscription] = []
        self._forward: Callable[[Sequence[DomainEvent]], None] | None = None
        # The agent relays running on this instance (a subscriber that tells agents what
        # happened, e.g. "xmpp:<account>"): the peer link names them on what it carries.
        self.relays: set[str] = set()
        # Told of each event another instance committed, as it arrives (e.g. the agent
        # router, whose call counts cross gateways): `hook(event, origin)`.
        self.remote_hooks: list[Callable[[DomainEvent, str], None]] = []
        self.first_seq = first_seq
        self.last_seq = first_seq - 1

    def publish(self, events: Iterable[DomainEvent]) -> None:
        """Called by the core after the commit that holds `events`; never before."""
        events = list(events)
        self._append(events, None)
        if self._forward is not None and events:
            self._forward(events)

    def publish_remote(self, events: Iterable[DomainEvent], origin: str,
                       relayed_by: frozenset[str] = frozenset()) -> None:
        """Events another instance committed (and published there); not forwarded again."""
        events = list(events)
        for hook in self.remote_hooks:
            for event in events:
                hook(event, origin)
        self._append(events, origin, relayed_by)

    def forward_to(self, hook: Callable[[Sequence[DomainEvent]], None] | None) -> None:
        """Hand every event published here (not remote ones) to `hook` too."""
        self._forward = hook

    def foreign(self, seq: int) -> bool:
        """True when `seq` was never a number of this bus (another instance's, or this
        gateway's before it restarted)."""
        return seq < self.first_seq - 1 or seq > self.last_seq

    def _append(self, events: Iterable[DomainEvent], origin: str | None,
                relayed_by: frozenset[str] = frozenset()) -> None:
        for event in events:
            record = Published(next(self._seq), self._now(), event, origin, relayed_by)
            self.last_seq = record.seq
            self._recent.append(record)
            for subscriber in list(self._subscribers):
                subscriber._offer(record)

    def subscribe(
        self,
        accept: Callable[[DomainEvent], bool] = lambda _e: True,
        *,
        since: int | None = None,
    ) -> Subscription:
        """A new subscription; with `since`, first the held records after that sequence
        number (a gap older than the replay window is not reported: resume is best effort)."""
        subscription = Subscription(self, accept)
        if since is not None:
            for record in self._recent:
                if record.seq > since:
                    subscription._offer(record)
        self._subscribers.append(subscription)
        return subscription

    def _drop(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
