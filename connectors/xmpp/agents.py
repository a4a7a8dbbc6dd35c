"""Agents on XMPP: their presence for the core's router, their chat commands for the core's
desk, and the customers' messages (from any channel) in their chat.

The hub knows agents by bare JID (GATEWAY_AGENTS `xmpp`). It keeps only what a chat needs in
memory (which conversations an agent has, the short #numbers shown to them, the one they are
answering); the core decides and stores everything else, and says what happened on its bus:
- `ConversationAssigned` to an XMPP agent: the context message (customer, verification
  badge, last messages, context link) opens the conversation in their chat;
- `EntryAdded` in a conversation an XMPP agent has: the entry, unless they wrote it;
- back to the queue: available agents are told; closed: the agent who had it is told;
- `CallOffered` to an XMPP agent: the context link beside their ringing phone.
An agent whose last resource goes offline gets their conversations returned to the queue
after a grace period (`desk.release_all`). Presence is only known while the gateway has a
session: at start-up and after the server forgot our session, an agent not seen yet counts
offline for the router, but their conversations stay theirs until the session has been up
for the presence grace (their presence normally arrives within a round trip of ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors.xmpp import agentview
from connectors.xmpp.commands import Command, Help, Reply, parse
from connectors.xmpp.lanes import Lanes
from connectors.xmpp.protocol import aggregate_presence
from gateway.bus import (
    CallOffered,
    ConversationAssigned,
    ConversationClosed,
    DomainEvent,
    EntryAdded,
    SubscriptionLost,
)
from gateway.channels import InboundSink, Presence
from gateway.domain import Conflict, NotFound

log = logging.getLogger("gateway.connectors.xmpp")

SOURCE = "xmpp"
# True while the hub follows an event that another gateway's hub for the same account has
# already told the agents about: the state follows it, nothing is said (set in the bus task
# only, so commands answered meanwhile in their own lanes still speak).
_TOLD_ELSEWHERE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "xmpp_told_elsewhere", default=False)


@dataclass
class AgentState:
    agent_id: str
    jid: str
    resources: dict[str, Presence] = field(default_factory=dict)
    presence: Presence = Presence.OFFLINE
    current: str | None = None  # the conversation plain text goes to
    assigned: set[str] = field(default_factory=set)
    handles: dict[int, str] = field(default_factory=dict)  # #n -> conversation id
    numbers: dict[str, int] = field(default_factory=dict)  # conversation id -> #n
    labels: dict[str, str] = field(default_factory=dict)  # conversation id -> customer label
    seen_upto: dict[str, int] = field(default_factory=dict)  # entries shown in the context
    release: asyncio.Task[None] | None = None

    def handle(self, conversation_id: str) -> int:
        number = self.numbers.get(conversation_id)
        if number is None:
            number = len(self.numbers) + 1
            self.numbers[conversation_id] = number
            self.handles[number] = conversation_id
        return number

    def resolve(self, ref: str) -> str | None:
        if ref.isdigit():
            return self.handles.get(int(ref))
        return ref


class AgentHub:
    def __init__(
        self,
        agents: Mapping[str, str],  # bare JID -> agent id
        *,
        send_text: Callable[[str, str], None],
        release_after: float,
        presence_grace: float,
        account: str | None = None,  # the gateway's own bare JID
    ) -> None:
        self._by_jid = {jid: AgentState(agent_id, jid) for jid, agent_id in agents.items()}
        self._by_id = {state.agent_id: state for state in self._by_jid.values()}
        self._send_text = send_text
        self._release_after = release_after
        self._presence_grace = presence_grace
        self._watching = False  # a session is up and its presence grace has begun
        self._sink: InboundSink | None = None
        self._lanes = Lanes("xmpp-agent")
        self._bus_task: asyncio.Task[None] | None = None
        self._routed: set[str] = set()  # conversations XMPP agents hold, as published
        self._replaying = False
        # With several gateways on one PostgreSQL, each running this account's hub, every one
        # hears every event (the peer link). The gateway that committed an event tells the
        # agents; the others only follow it, so an agent is told once. A gateway without XMPP
        # names no relay, and the events it committed are told here as before.
        self.relay = f"xmpp:{account}" if account else None

    # ---- lifecycle ----------------------------------------------------------------------

    def is_agent(self, bare: str) -> bool:
        return bare in self._by_jid

    @property
    def jids(self) -> list[str]:
        return list(self._by_jid)

    def agent(self, agent_id: str) -> AgentState | None:
        return self._by_id.get(agent_id)

    async def start(self, sink: InboundSink) -> None:
        self._sink = sink
        if not self._by_jid:
            return
        subscription = sink.bus.subscribe(self._wanted)
        if self.relay is not None:
            sink.bus.relays.add(self.relay)
        self._bus_task = asyncio.create_task(self._follow_bus(subscription), name="xmpp-bus")
        await self._restore()

    async def _restore(self) -> None:
        """Conversations agents had before a restart: theirs again, in their chat."""
        assert self._sink is not None
        for state in self._by_jid.values():
            try:
                conversation_ids = await self._sink.desk.assigned(state.agent_id)
            except Exception:
                log.exception("xmpp: could not read the conversations of %s", state.agent_id)
                continue
            for conversation_id in conversation_ids:
                state.assigned.add(conversation_id)
                self._routed.add(conversation_id)
                state.handle(conversation_id)
                state.current = state.current or conversation_id

    async def aclose(self) -> None:
        if self._sink is not None and self.relay is not None:
            self._sink.bus.relays.discard(self.relay)
        tasks = [t for t in (self._bus_task,) if t is not None]
        for state in self._by_jid.values():
            if state.release is not None:
                tasks.append(state.release)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._lanes.aclose()

    # ---- presence -----------------------------------------------------------------------

    def on_presence(self, bare: str, resource: str, presence: Presence) -> None:
        state = self._by_jid.get(bare)
        if state is None:
            return
        if presence is Presence.OFFLINE and not resource:
            state.resources.clear()  # from the bare JID: the server says all are gone
        elif presence is Presence.OFFLINE:
            state.resources.pop(resource, None)
        else:
            state.resources[resource] = presence
        self._set(state, aggregate_presence(state.resources.values()))

    def watching(self) -> None:
        """Our session is up and we asked for the agents' presence: whoever is still not
        seen after the grace (at least `release_after`) is offline for their conversations."""
        if self._watching:
            return
        self._watching = True
        for state in self._by_jid.values():
            self._schedule_release(state, max(self._release_after, self._presence_grace))

    def lost_sight(self) -> None:
        """The server forgot our session: nobody's presence is known until the next one.
        The router hears offline (nobody can be reached now); nobody's conversations move
        because of our own outage."""
        self._watching = False
        for state in self._by_jid.values():
            self._cancel_release(state)
            state.resources.clear()
            self._set(state, Presence.OFFLINE)

    def _set(self, state: AgentState, presence: Presence) -> None:
        if presence is state.presence:
            return
        log.info("xmpp: agent %s is %s", state.agent_id, presence.value)
        state.presence = presence
        if self._sink is not None:
            try:
                self._sink.router.set_presence(state.agent_id, SOURCE, presence)
            except Exception:
                log.exception("xmpp: the router refused the presence of %s", state.agent_id)
        if presence is Presence.OFFLINE:
            self._schedule_release(state, self._release_after)
        else:
            self._cancel_release(state)

    def _schedule_release(self, state: AgentState, after: float) -> None:
        if (not self._watching or state.release is not None
                or state.presence is not Presence.OFFLINE):
            return
        state.release = asyncio.create_task(self._release_later(state, after),
                                            name=f"xmpp-release:{state.agent_id}")

    def _cancel_release(self, state: AgentState) -> None:
        if state.release is not None:
            state.release.cancel()
            state.release = None

    async def _release_later(self, state: AgentState, after: float) -> None:
        await asyncio.sleep(after)
        state.release = None
        if state.presence is not Presence.OFFLINE or self._sink is None:
            return
        try:
            released = await self._sink.desk.release_all(state.agent_id)
        except Exception:
            log.exception("xmpp: returning %s's conversations to the queue failed",
                          state.agent_id)
            return
        if released:
            log.info("xmpp: agent %s offline for %gs: %d conversations back in the queue",
                     state.agent_id, after, len(released))

    # ---- messages from agents -----------------------------------------------------------

    def on_message(self, bare: str, text: str, *, delayed: bool) -> None:
        state = self._by_jid[bare]
        if delayed:
            # Written while the gateway was offline (offline storage): not run now, when the
            # conversation may have moved on; the agent decides.
            self._tell(state, "While the gateway was offline you wrote:\n"
                       f"{agentview._cut(text)}\nIt was not sent or run; send it again if it "
                       "still applies.")
            return
        self._lanes.run(state.agent_id, lambda: self._execute(state, parse(text)))

    def _tell(self, state: AgentState, text: str) -> None:
        if not _TOLD_ELSEWHERE.get():
            self._send_text(state.jid, text)

    async def _execute(self, state: AgentState, parsed: Command | Reply | Help) -> None:
        sink = self._sink
        if sink is None:
            return
        desk = sink.desk
        agent_id = state.agent_id
        what = "reply" if isinstance(parsed, Reply) else f"/{getattr(parsed, 'name', 'help')}"
        try:
            if isinstance(parsed, Help):
                self._tell(state, parsed.text)
            elif isinstance(parsed, Reply):
                if state.current is None:
                    self._tell(state, "You have no conversation to answer. /next takes the "
                               "next waiting customer; /help lists the commands.")
                    return
                await desk.reply(agent_id, state.current, parsed.text)
            elif parsed.name in ("take", "next"):
                await self._take(state, parsed.arg if parsed.name == "take" else None)
            elif parsed.name == "help":
                self._tell(state, Help().text)
            else:
                current = state.current
                if current is None:
                    self._tell(state, f"/{parsed.name} needs a conversation: /take one first.")
                    return
                number = state.handle(current)
                if parsed.name == "release":
                    await desk.release(agent_id, current)
                    self._tell(state, f"#{number} is back in the queue.")
                elif parsed.name == "close":
                    await desk.close(agent_id, current)
                    self._tell(state, f"#{number} closed.")
                elif parsed.name == "call":
                    issued = await desk.escalate(agent_id, current, parsed.arg or "callback")
                    self._tell(state, agentview.escalation_text(number, issued))
                elif parsed.name == "verify":
                    started = await desk.verify(agent_id, current, parsed.arg)
                    self._tell(state, agentview.verification_text(number, started))
                elif parsed.name == "who":
                    await self._send_context(state, current, refresh=True)
        except asyncio.CancelledError:
            raise
        except (Conflict, NotFound, ValueError) as exc:  # the core's answer, for a person
            self._tell(state, f"{what}: {exc}")
        except Exception:
            log.exception("xmpp: %s of agent %s failed", what, agent_id)
            self._tell(state, f"{what} did not work: the gateway failed and logged why; try "
                       "again in a moment.")

    async def _take(self, state: AgentState, ref: str | None) -> None:
        assert self._sink is not None
        conversation_id = None
        if ref is not None:
            conversation_id = state.resolve(ref)
            if conversation_id is None:
                self._tell(state, f"There is no #{ref} here. /next takes the next waiting one.")
                return
            if conversation_id in state.assigned:
                state.current = conversation_id
                self._tell(state, f"Now answering #{state.handle(conversation_id)} "
                           f"{state.labels.get(conversation_id, '')}".rstrip() + ".")
                return
        taken = await self._sink.desk.take(state.agent_id, conversation_id)
        if taken is None:
            self._tell(state, "Nobody is waiting.")
        elif taken.previous_agent_id == state.agent_id:  # theirs already (another device)
            await self._send_context(state, taken.conversation_id, refresh=True)
        # Otherwise the context message comes with the core's ConversationAssigned event.

    # ---- the bus ------------------------------------------------------------------------

    def _wanted(self, event: DomainEvent) -> bool:
        """The bus filter. It runs as each event is published, in order, so it also keeps
        `_routed` (conversations XMPP agents hold) exact: an entry published right after an
        assignment is not filtered out before the consumer has seen the assignment."""
        if self._replaying:
            return isinstance(event, (ConversationAssigned, EntryAdded, ConversationClosed,
                                      CallOffered))
        if isinstance(event, ConversationAssigned):
            if event.agent_id in self._by_id:
                self._routed.add(event.conversation_id)
            elif event.previous_agent_id in self._by_id or event.agent_id is None:
                self._routed.discard(event.conversation_id)
            return True
        if isinstance(event, EntryAdded):
            return event.conversation_id in self._routed
        if isinstance(event, ConversationClosed):
            if event.conversation_id in self._routed:
                self._routed.discard(event.conversation_id)
                return True
            return False
        if isinstance(event, CallOffered):
            return event.agent_id in self._by_id
        return False

    async def _follow_bus(self, subscription: Any) -> None:
        assert self._sink is not None
        last = 0
        while True:
            try:
                async for record in subscription:
                    last = record.seq
                    quiet = _TOLD_ELSEWHERE.set(self.relay in record.relayed_by)
                    try:
                        await self._on_event(record.event)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("xmpp: handling %s failed", type(record.event).__name__)
                    finally:
                        _TOLD_ELSEWHERE.reset(quiet)
            except SubscriptionLost:
                log.warning("xmpp: fell behind the event bus; resuming after #%d", last)
                self._replaying = True  # held records: judged by the consumer, not by _routed
                try:
                    subscription = self._sink.bus.subscribe(self._wanted, since=last)
                finally:
                    self._replaying = False
            finally:
                with contextlib.suppress(Exception):
                    subscription.close()

    async def _on_event(self, event: DomainEvent) -> None:
        if isinstance(event, ConversationAssigned):
            await self._assigned(event)
        elif isinstance(event, EntryAdded):
            for state in self._holders(event.conversation_id):
                await self._forward(state, event)
        elif isinstance(event, ConversationClosed):
            for state in self._holders(event.conversation_id):
                number = state.handle(event.conversation_id)
                self._drop(state, event.conversation_id)
                if state.presence is not Presence.OFFLINE:
                    self._tell(state, f"#{number} {state.labels.get(event.conversation_id, '')}"
                               .rstrip() + " is closed.")
        elif isinstance(event, CallOffered):
            state = self._by_id.get(event.agent_id)
            if state is not None:
                number = state.handle(event.conversation_id)
                label = state.labels.get(event.conversation_id, "a customer")
                self._tell(state, agentview.call_text(number, label, event.context_url))

    def _holders(self, conversation_id: str) -> Iterable[AgentState]:
        return [s for s in self._by_jid.values() if conversation_id in s.assigned]

    def _drop(self, state: AgentState, conversation_id: str) -> None:
        state.assigned.discard(conversation_id)
        state.seen_upto.pop(conversation_id, None)
        if state.current == conversation_id:
            state.current = next(iter(state.assigned), None)

    async def _assigned(self, event: ConversationAssigned) -> None:
        conversation_id = event.conversation_id
        for state in list(self._holders(conversation_id)):
            if state.agent_id == event.agent_id:
                continue
            number = state.handle(conversation_id)
            self._drop(state, conversation_id)
            if state.presence is not Presence.OFFLINE:
                now_with = f"now with {event.agent_id}" if event.agent_id else "back in the queue"
                self._tell(state, f"#{number} is no longer yours ({now_with}).")
        target = self._by_id.get(event.agent_id) if event.agent_id else None
        if target is not None and conversation_id not in target.assigned:
            target.assigned.add(conversation_id)
            target.current = conversation_id
            await self._send_context(target, conversation_id, refresh=False)
        if event.agent_id is None:
            await self._announce_waiting(event)

    async def _announce_waiting(self, event: ConversationAssigned) -> None:
        waiting = [s for s in self._by_jid.values()
                   if s.presence is Presence.AVAILABLE and s.agent_id != event.previous_agent_id]
        if not waiting:
            return
        label = next((s.labels[event.conversation_id] for s in self._by_jid.values()
                      if event.conversation_id in s.labels), None)
        if label is None:
            label = await self._label(event.conversation_id)
        for state in waiting:
            state.labels.setdefault(event.conversation_id, label)
            self._tell(state, agentview.queue_text(
                state.handle(event.conversation_id), label, event.previous_agent_id))

    async def _label(self, conversation_id: str) -> str:
        assert self._sink is not None
        try:
            return agentview.brief_from(
                await self._sink.desk.summary(conversation_id)).customer_label
        except Exception as exc:
            log.warning("xmpp: no summary for %s: %r", conversation_id, exc)
            return "a customer"

    async def _send_context(self, state: AgentState, conversation_id: str, *,
                            refresh: bool) -> None:
        assert self._sink is not None
        number = state.handle(conversation_id)
        try:
            brief = agentview.brief_from(await self._sink.desk.summary(conversation_id))
        except Exception as exc:
            log.warning("xmpp: no summary for %s: %r", conversation_id, exc)
            self._tell(state, f"#{number}: conversation {conversation_id} is yours "
                       "(its summary could not be read just now). /who tries again.")
            return
        state.labels[conversation_id] = brief.customer_label
        ids = [e.get("id") for e in brief.last if isinstance(e.get("id"), int)]
        if ids and not refresh:
            state.seen_upto[conversation_id] = max(ids)
        self._tell(state, agentview.context_text(brief, number))

    async def _forward(self, state: AgentState, event: EntryAdded) -> None:
        entry = event.entry
        entry_id = entry.get("id")
        if isinstance(entry_id, int) and entry_id <= state.seen_upto.get(event.conversation_id,
                                                                         -1):
            return  # already in the context message
        if entry.get("direction") == "out" and entry.get("author") in (
                state.agent_id, f"agent:{state.agent_id}"):
            return  # they wrote it
        number = state.handle(event.conversation_id)
        label = state.labels.get(event.conversation_id)
        if label is None:  # a conversation restored after a restart: no context shown yet
            label = state.labels[event.conversation_id] = await self._label(
                event.conversation_id)
        self._tell(state, agentview.entry_text(entry, number, label))

    # ---- what the customer side needs ---------------------------------------------------

    def holders_on_xmpp(self, conversation_id: str) -> list[str]:
        """JIDs of the XMPP agents who have this conversation (chat-state relay)."""
        return [s.jid for s in self._holders(conversation_id)
                if s.presence is not Presence.OFFLINE]

