"""The XMPP channel: customers who chat from an XMPP client, and agents who work from one.

Flow: server -> `session.XmppSession` (socket, stream management, archive pages) ->
`stanzas.classify` -> here: a customer's chat becomes an `InboundMessage` for the core's
sink (stored once, in order per customer, with the archive position in the same
transaction), receipts and bounces become `DeliveryStatus`es, chat states are kept in memory
and shown to the agent; an agent's chat goes to `agents.AgentHub`. Outbound: the outbox calls
`send`, which waits for the server's ack and returns the stanza id (the id carries a MAC of
the recipient, so only the recipient's receipts count).

One customer's messages are handed to `sink.ingest` in the order they arrived, several at a
time (`XmppOptions.pipeline`), so a burst shares the core's group commit; the transcript keeps
that order as long as the core takes a write's place when `ingest` is called (the current
core's WriteBatcher queues it before its first await). With `pipeline=1` the order holds
whatever the core does, at one commit per message per customer.

After every fresh session (first login, or after the server forgot our stream) the archive
(XEP-0313) is read from the last stored position, beside offline storage; both deliver copies
of what may have arrived live, and the dedupe key (`protocol.dedupe_key`) makes them one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from config.settings import ConfigError
from connectors.sip.ratelimit import ScannerLimiter as TokenBuckets
from connectors.xmpp import stanzas
from connectors.xmpp.agents import AgentHub
from connectors.xmpp.lanes import Lanes
from connectors.xmpp.protocol import (
    ArchiveCursor,
    ArchivePosition,
    StanzaIds,
    dedupe_key,
    format_checkpoint,
    parse_checkpoint,
    resource_presence,
    since,
)
from connectors.xmpp.session import (
    ArchiveIdUnknown,
    NotConnected,
    SessionConfig,
    SessionHooks,
    XmppSession,
)
from connectors.xmpp.stanzas import Bounce, Chat, ChatState, Inbound, Receipt, Unusable
from gateway.addresses import Address, AddressError, normalise_jid, parse_address
from gateway.channels import (
    CallbackRequest,
    ChannelDeps,
    ChannelInfo,
    CodeMessage,
    InboundSink,
    OutboundMessage,
    SendError,
    SendReceipt,
    TextMessage,
)
from gateway.events import Attachment, DeliveryStatus, InboundMessage

if TYPE_CHECKING:
    from aiohttp import web

    from config.settings import Settings

log = logging.getLogger("gateway.connectors.xmpp")

_STORE_ATTEMPTS: Final = 5  # a failing store is retried (0.2 s, 0.4 s, ...), then left to
#                             the archive catch-up of the next fresh session
_REMEMBERED: Final = 10_000  # customers whose conversation / chat state we keep in memory
_ARCHIVE_MARGIN: Final = timedelta(minutes=10)  # catch-up by time starts this much earlier
_MAX_THREAD_KEY: Final = 400


@dataclass(frozen=True, slots=True)
class XmppOptions:
    session: SessionConfig
    max_body_chars: int = 10_000
    flood_rate: float = 1.0
    flood_burst: int = 20
    agent_release_after: float = 60.0
    presence_grace: float = 10.0  # after a fresh session, before unseen agents count as gone
    archive_backfill: timedelta = timedelta(0)
    archive_page: int = 100
    high_water: int = 2_000  # messages being stored before we stop reading the socket
    store_retry: float = 0.2  # first pause before a failed store is tried again (doubles)
    # One customer's messages handed to the core at once, in order (a burst shares a commit).
    pipeline: int = 16


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bounded_put(store: dict[str, Any], key: str, value: Any) -> None:
    store.pop(key, None)
    store[key] = value
    if len(store) > _REMEMBERED:
        del store[next(iter(store))]


class XmppChannel:
    """One XMPP account of the gateway's (client-to-server)."""

    name = "xmpp"
    channels = frozenset({"xmpp"})

    def __init__(
        self,
        options: XmppOptions,
        agents: Mapping[str, str] | None = None,  # bare JID -> agent id
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.options = options
        self._jid = options.session.jid
        self._clock = clock
        self._sink: InboundSink | None = None
        self._live: XmppSession | None = None  # made in start(): slixmpp binds the loop
        self._agents = AgentHub(agents or {}, send_text=self._send_text,
                                release_after=options.agent_release_after,
                                presence_grace=options.presence_grace, account=self._jid)
        self._work = Lanes("xmpp-inbound", depth=options.pipeline)
        self._cursor = ArchiveCursor()
        self._checkpoint_key = f"xmpp:archive:{self._jid}"
        key = hashlib.sha256(b"gateway xmpp stanza ids\n"
                             + options.session.password.encode()).digest()
        self._ids = StanzaIds(key)
        rate, burst = options.flood_rate, options.flood_burst
        self._flood = TokenBuckets(rate, burst)
        self._errors = TokenBuckets(1.0, 3)  # error stanzas: a flood does not echo back
        self._stanzas = TokenBuckets(rate * 10, burst * 5)  # receipts, states, odd stanzas
        self._catchup_at = 0.0
        self._catchup_flood = TokenBuckets(rate, burst, clock=lambda: self._catchup_at)
        self._logs = TokenBuckets(1.0, 1)
        self._catching_up = False
        self._archive_ok = False
        self._login_task: asyncio.Task[None] | None = None
        self._conversation_of: dict[str, str] = {}
        self._chat_states: dict[str, tuple[str, datetime]] = {}
        self.refused = 0  # messages refused (flood, size): for tests and metrics

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings, deps: ChannelDeps | None = None
                      ) -> XmppChannel | None:
        if settings.xmpp_jid is None:
            return None
        try:
            jid = normalise_jid(settings.xmpp_jid)
        except AddressError as exc:
            raise ConfigError(f"configuration error: GATEWAY_XMPP_JID: {exc}") from None
        agents: dict[str, str] = {}
        for index, agent in enumerate(settings.agents):
            raw = agent.xmpp
            if not raw:
                continue
            key = f"GATEWAY_AGENTS[{index}].xmpp"
            try:
                agent_jid = normalise_jid(raw)
            except AddressError as exc:
                raise ConfigError(f"configuration error: {key}: {exc}") from None
            if "@" not in agent_jid or agent_jid == jid:
                raise ConfigError(f"configuration error: {key}: must be the agent's own bare "
                                  f"JID (not the gateway's {jid})")
            if agent_jid in agents:
                raise ConfigError(f"configuration error: {key}: {agent_jid} is already agent "
                                  f"{agents[agent_jid]!r}")
            agents[agent_jid] = agent.id
        assert settings.xmpp_password is not None  # the settings block checks it
        session = SessionConfig(
            jid=jid, password=settings.xmpp_password.get_secret_value(),
            host=settings.xmpp_host, port=settings.xmpp_port,
            security=settings.xmpp_security, ca_file=settings.xmpp_ca_file,
            resource=settings.xmpp_resource,
            connect_timeout=settings.xmpp_connect_timeout_seconds,
            send_timeout=settings.xmpp_send_timeout_seconds,
            reconnect_min=settings.xmpp_reconnect_min_seconds,
            reconnect_max=settings.xmpp_reconnect_max_seconds,
            keepalive=settings.xmpp_keepalive_seconds,
        )
        host = settings.xmpp_host or jid.rpartition("@")[2]
        if settings.xmpp_security == "none" and not _is_loopback(host):
            log.warning("xmpp: GATEWAY_XMPP_SECURITY=none towards %s: the password and every "
                        "message cross the network in clear (use starttls or tls)", host)
        return cls(XmppOptions(
            session=session, max_body_chars=settings.xmpp_max_body_chars,
            flood_rate=settings.xmpp_flood_rate, flood_burst=settings.xmpp_flood_burst,
            agent_release_after=settings.xmpp_agent_release_after_seconds,
            presence_grace=settings.xmpp_presence_grace_seconds,
            archive_backfill=timedelta(hours=settings.xmpp_archive_backfill_hours),
        ), agents)

    @classmethod
    def why_off(cls, settings: Settings) -> str:
        return "set GATEWAY_XMPP_JID and GATEWAY_XMPP_PASSWORD (the gateway's own account)"

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return ()

    def describe(self) -> ChannelInfo:
        cfg = self.options.session
        notes = [f"XMPP account {self._jid} at {cfg.where()} ({cfg.security})"]
        if self._agents.jids:
            notes.append("agents on XMPP: " + ", ".join(self._agents.jids))
        return ChannelInfo(self.name, (), tuple(notes))

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self, sink: InboundSink) -> None:
        self._sink = sink
        self._live = XmppSession(self.options.session, SessionHooks(
            message=self._on_inbound, presence=self._on_presence,
            session_started=self._on_session_started, session_ended=self._on_session_ended,
            in_flight=lambda: self._work.in_flight,
        ))
        await self._agents.start(sink)
        try:
            await self._live.start()
        except BaseException:
            await self._agents.aclose()
            raise
        log.info("xmpp: logged in as %s at %s", self._jid, self.options.session.where())

    async def aclose(self) -> None:
        if self._login_task is not None:
            self._login_task.cancel()
            with contextlib.suppress(BaseException):
                await self._login_task
        if self._live is not None:
            await self._live.aclose(drain=self._work.drain)
        await self._agents.aclose()
        await self._work.aclose()

    @property
    def _session(self) -> XmppSession:
        if self._live is None:
            raise RuntimeError("the XMPP channel is not started")
        return self._live

    @property
    def session(self) -> XmppSession:
        return self._session

    @property
    def agents(self) -> AgentHub:
        return self._agents

    @property
    def idle(self) -> bool:
        """Logged in, caught up, and nothing being stored: for tests and health checks."""
        return (self._live is not None and self._live.connected and not self._catching_up
                and not len(self._work)
                and (self._login_task is None or self._login_task.done()))

    def chat_state(self, bare_jid: str) -> str | None:
        """The last chat state (XEP-0085) a customer sent: composing, paused, active, ..."""
        known = self._chat_states.get(bare_jid)
        return known[0] if known else None

    # ---- sessions -----------------------------------------------------------------------

    def _on_session_started(self, fresh: bool) -> None:
        if not fresh:
            return
        # Set before our presence goes out: what arrives from now until the catch-up is done
        # is newer than archived messages not fetched yet, so it must not move the position.
        self._catching_up = True
        if self._login_task is not None:
            self._login_task.cancel()
        self._login_task = asyncio.create_task(self._after_login(), name="xmpp-after-login")

    def _on_session_ended(self) -> None:
        self._agents.lost_sight()

    async def _after_login(self) -> None:
        try:
            self._session.announce("Support")
            await self._session.follow(self._agents.jids)
            self._agents.watching()  # their presence is on its way from now
            self._archive_ok = await self._session.supports_archive()
            if self._archive_ok:
                await self._catch_up()
            else:
                log.warning("xmpp: the server has no message archive (XEP-0313): messages "
                            "that arrive while the gateway is away rely on offline storage")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("xmpp: archive catch-up failed; the next fresh session retries")
        finally:
            self._catching_up = False

    async def _catch_up(self) -> None:
        assert self._sink is not None
        position = self._cursor.committed
        if position is None:
            position = parse_checkpoint(await self._sink.checkpoint(self._checkpoint_key))
            self._cursor.committed = position
        after = position.archive_id if position else None
        start: datetime | None = None
        if after is None:
            if self.options.archive_backfill <= timedelta(0):
                log.info("xmpp: no archive position stored yet; offline storage only this time")
                return
            start = self._clock() - self.options.archive_backfill
        fetched, fell_back = 0, False
        while True:
            try:
                page = await self._session.archive_page(after=after, start=start,
                                                        size=self.options.archive_page)
            except ArchiveIdUnknown:
                start = since(position, _ARCHIVE_MARGIN)
                if fell_back or start is None:
                    raise
                log.warning("xmpp: the archive no longer has %s; catching up by time from %s",
                            after, start.isoformat())
                after, fell_back = None, True
                continue
            for result in page.results:
                self._archived(result)
            fetched += len(page.results)
            if page.complete or page.last is None:
                break
            after, start = page.last, None
            while len(self._work) > self.options.high_water:
                await asyncio.wait(set(self._work.in_flight), return_when="FIRST_COMPLETED")
        log.info("xmpp: archive catch-up read %d messages after %s", fetched,
                 position.archive_id if position else "the backfill start")

    def _archived(self, result: stanzas.ArchiveResult) -> None:
        at = result.stamp or self._clock()
        position = ArchivePosition(result.archive_id, at)
        inner = stanzas.unwrap_archived(result, self._jid)
        if (isinstance(inner, Chat) and "@" in inner.sender.bare
                and inner.sender.bare != self._jid
                and not self._agents.is_agent(inner.sender.bare)):
            self._catchup_at = at.timestamp()
            self._customer_chat(inner, position=position, live=False)
            return
        ticket = self._cursor.submit(position)  # ours, an agent's, a receipt: passed over
        if isinstance(inner, Receipt):
            self._receipt(inner)
        self._cursor.done(ticket)

    # ---- inbound ------------------------------------------------------------------------

    def _on_inbound(self, inbound: Inbound) -> None:
        sender = getattr(inbound, "sender", None)
        bare = sender.bare if sender is not None else None
        if bare == self._jid:
            return  # our own account (another resource, or the server speaking for it)
        if bare is not None and self._agents.is_agent(bare):
            if isinstance(inbound, Chat):
                self._agent_chat(inbound)
            return
        if isinstance(inbound, Chat) and "@" not in inbound.sender.bare:
            self._log_once(f"{bare} service", "xmpp: ignored a message from %s: a server or "
                           "service, not a person", bare)
            return
        if isinstance(inbound, Chat):
            position = None
            if inbound.archive_id and self._archive_ok and not self._catching_up:
                position = ArchivePosition(inbound.archive_id, inbound.stamp or self._clock())
            self._customer_chat(inbound, position=position, live=True)
            return
        if bare is not None and not self._stanzas.allow(bare):
            self._log_once(bare, "xmpp: too many stanzas from %s; dropping some", bare)
            return
        if isinstance(inbound, Receipt):
            self._receipt(inbound)
        elif isinstance(inbound, ChatState):
            self._chat_state(inbound)
        elif isinstance(inbound, Bounce):
            self._bounce(inbound)
        elif isinstance(inbound, Unusable):
            self._log_once(f"{bare} {inbound.reason}", "xmpp: ignored a stanza from %s: %s",
                           bare or "?", inbound.reason)

    def _log_once(self, key: str, message: str, *args: Any) -> None:
        if self._logs.should_log(key):
            log.info(message, *args)

    def _customer_chat(self, chat: Chat, *, position: ArchivePosition | None,
                       live: bool) -> None:
        bare = chat.sender.bare
        ticket = self._cursor.submit(position)
        allowed = (self._flood if live else self._catchup_flood).allow(bare)
        if not allowed:
            self._cursor.done(ticket)
            self.refused += 1
            if live and self._errors.allow(bare):
                self._refuse(chat, "resource-constraint", "wait",
                             f"too many messages: at most {self.options.flood_burst} at once "
                             f"and {self.options.flood_rate:g} a second; this one was not "
                             "received, send it again in a moment")
            if self._flood.should_log(bare):
                log.warning("xmpp: %s sends too fast; messages refused", bare)
            return
        if not chat.body.strip():
            self._cursor.done(ticket)
            log.info("xmpp: empty message from %s ignored", bare)
            return
        limit = self.options.max_body_chars
        if len(chat.body) > limit:
            self._cursor.done(ticket)
            self.refused += 1
            if live:
                self._refuse(chat, "policy-violation", "modify",
                             f"message too long: {len(chat.body)} characters, the limit is "
                             f"{limit}; it was not received")
            log.warning("xmpp: message of %d characters from %s refused (limit %d)",
                        len(chat.body), bare, limit)
            return
        event = self._event(chat, ticket.checkpoint)
        self._accept(bare, lambda: self._store(chat, event, ticket, live))
        if len(self._work) > self.options.high_water:
            self._session.pause_reading()

    def _accept(self, sender: str, work: Callable[[], Awaitable[None]]) -> None:
        """Work on what `sender` sent, in their order; reading resumes at low water."""
        self._work.run(sender, work).add_done_callback(self._drained)

    def _drained(self, _done: asyncio.Future[Any]) -> None:
        # A done callback, so the work has left the count: when a group commit answers many
        # stores at once, each one's own code would still count them all, and nobody resumes.
        if len(self._work) <= self.options.high_water // 2:
            self._session.resume_reading()

    def _event(self, chat: Chat, checkpoint: ArchivePosition | None) -> InboundMessage:
        bare = chat.sender.bare
        thread_key = f"xmpp:{self._jid}:{bare}"
        if len(thread_key) > _MAX_THREAD_KEY:
            thread_key = "xmpp#sha256:" + hashlib.sha256(thread_key.encode()).hexdigest()
        return InboundMessage(
            sender=Address("xmpp", bare), recipient=self._jid, text=chat.body,
            provider="xmpp",
            provider_id=dedupe_key(sender_full=chat.sender.full, sender_bare=bare,
                                   origin_id=chat.origin_id, message_id=chat.message_id,
                                   archive_id=chat.archive_id),
            thread_key=thread_key, attested=True, provider_at=chat.stamp,
            attachments=tuple(Attachment(url) for url in chat.urls),
            profile_name=chat.nick,
            checkpoint=(self._checkpoint_key, format_checkpoint(checkpoint))
            if checkpoint is not None else None,
        )

    async def _store(self, chat: Chat, event: InboundMessage, ticket: Any, live: bool) -> None:
        assert self._sink is not None
        for attempt in range(_STORE_ATTEMPTS):
            try:
                result = await self._sink.ingest(event)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if attempt == _STORE_ATTEMPTS - 1:
                    log.error("xmpp: could not store the message %s from %s (%r); the "
                              "archive catch-up of the next session tries again",
                              event.provider_id, chat.sender.bare, exc)
                    return
                log.warning("xmpp: storing a message from %s failed (%r); retrying",
                            chat.sender.bare, exc)
                await asyncio.sleep(self.options.store_retry * 2 ** attempt)
        self._cursor.done(ticket)
        if result.conversation_id is not None:
            _bounded_put(self._conversation_of, chat.sender.bare, result.conversation_id)
        # Live: every copy that asks gets its receipt (a resend wants one too). From the
        # archive: only a message stored just now (its live copy never got one).
        if chat.wants_receipt and chat.message_id and (live or not result.duplicate):
            receipt = self._session.make_message(chat.sender.full, None)
            ET.SubElement(receipt.xml, f"{{{stanzas.RECEIPTS}}}received",
                          {"id": chat.message_id})
            self._session.send(receipt)  # only now: the message is committed

    def _refuse(self, chat: Chat, condition: str, kind: str, text: str) -> None:
        """An error stanza (RFC 6120 8.3) to the sender. Built by hand: slixmpp's error
        stanza does not know every RFC condition (policy-violation, for one)."""
        error = self._session.make_message(chat.sender.full, None, chat.message_id,
                                           mtype="error")
        element = ET.SubElement(error.xml, "{jabber:client}error", {"type": kind})
        ET.SubElement(element, f"{{{stanzas.STANZAS}}}{condition}")
        ET.SubElement(element, f"{{{stanzas.STANZAS}}}text").text = text
        self._session.send(error)

    def _receipt(self, receipt: Receipt) -> None:
        if not self._ids.verify(receipt.ref_id, receipt.sender.bare):
            self._log_once(receipt.sender.bare, "xmpp: receipt from %s for an id that is "
                           "not one of ours sent to them; ignored", receipt.sender.bare)
            return
        status = DeliveryStatus("xmpp", receipt.ref_id, receipt.status, at=self._clock())
        self._accept(receipt.sender.bare, lambda: self._status(status))

    def _bounce(self, bounce: Bounce) -> None:
        if bounce.ref_id is None or not self._ids.verify(bounce.ref_id, bounce.sender.bare):
            self._log_once(bounce.sender.bare, "xmpp: error stanza from %s (%s: %s) about no "
                           "message of ours; ignored", bounce.sender.bare, bounce.condition,
                           bounce.text)
            return
        error = bounce.condition + (f": {bounce.text}" if bounce.text else "")
        status = DeliveryStatus("xmpp", bounce.ref_id, "undelivered", at=self._clock(),
                                error=error)
        self._accept(bounce.sender.bare, lambda: self._status(status))

    async def _status(self, status: DeliveryStatus) -> None:
        assert self._sink is not None
        try:
            await self._sink.delivery_status(status)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("xmpp: applying %s to %s failed", status.status,
                          status.provider_message_id)

    def _chat_state(self, state: ChatState) -> None:
        """Chat states are kept in memory and shown live to the agent, never stored: they
        are not something the customer said, and one per keystroke would flood the
        transcript with noise (and with how someone types)."""
        bare = state.sender.bare
        previous = self._chat_states.get(bare)
        _bounded_put(self._chat_states, bare, (state.state, self._clock()))
        if previous is not None and previous[0] == state.state:
            return
        conversation_id = self._conversation_of.get(bare)
        if conversation_id is None or state.state not in ("composing", "paused", "active"):
            return
        for jid in self._agents.holders_on_xmpp(conversation_id):
            relay = self._session.make_message(jid, None)
            ET.SubElement(relay.xml, f"{{{stanzas.CHATSTATES}}}{state.state}")
            ET.SubElement(relay.xml, "{urn:xmpp:hints}no-store")
            self._session.send(relay)

    def _agent_chat(self, chat: Chat) -> None:
        if not chat.body.strip():
            return
        if len(chat.body) > self.options.max_body_chars:
            self._refuse(chat, "policy-violation", "modify",
                         f"message too long: the limit is {self.options.max_body_chars}")
            return
        self._agents.on_message(chat.sender.bare, chat.body, delayed=chat.stamp is not None)

    def _on_presence(self, xml: ET.Element) -> None:
        raw = xml.get("from") or ""
        try:
            bare = normalise_jid(raw)
        except AddressError:
            return
        if not self._agents.is_agent(bare):
            return
        resource = raw.partition("/")[2]
        presence = resource_presence(xml.get("type") or "",
                                     xml.findtext("{jabber:client}show") or "")
        if presence is not None:
            self._agents.on_presence(bare, resource, presence)

    def _send_text(self, jid: str, text: str) -> None:
        """A notice for an agent: queued by slixmpp while we reconnect (not durable)."""
        self._session.make_message(jid, text).send()

    # ---- outbound -----------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendReceipt:
        if not isinstance(message, (TextMessage, CodeMessage)):
            raise SendError(f"xmpp cannot send a {message.kind.value}: it carries text only"
                            + (" (it cannot place calls)"
                               if isinstance(message, CallbackRequest) else ""),
                            permanent=True)
        if not message.text:
            raise SendError("nothing to send: the message has no text", permanent=True)
        try:
            address = parse_address(message.to)
        except AddressError as exc:
            raise SendError(f"not an XMPP address: {exc}", permanent=True) from None
        if address.channel != "xmpp" or "@" not in address.value or address.value == self._jid:
            raise SendError(f"{message.to} is not a customer's XMPP address", permanent=True)
        if self._live is None:
            raise SendError("xmpp: the channel is not started", permanent=False)
        stanza_id = self._ids.make(message.id, address.value)
        stanza = self._session.make_message(address.value, message.text, stanza_id)
        xml = stanza.xml
        ET.SubElement(xml, f"{{{stanzas.RECEIPTS}}}request")
        ET.SubElement(xml, f"{{{stanzas.MARKERS}}}markable")
        ET.SubElement(xml, f"{{{stanzas.SID}}}origin-id", {"id": stanza_id})
        ET.SubElement(xml, f"{{{stanzas.CHATSTATES}}}active")
        if isinstance(message, CodeMessage):  # delivered (offline too), never archived
            ET.SubElement(xml, "{urn:xmpp:hints}no-permanent-store")
        try:
            await self._session.send_confirmed(stanza)
        except NotConnected as exc:
            raise SendError(f"xmpp: not connected ({exc})", permanent=False) from None
        except TimeoutError:
            raise SendError("xmpp: the server did not acknowledge the message in time",
                            permanent=False) from None
        return SendReceipt("xmpp", stanza_id, "sent")
