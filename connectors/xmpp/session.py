"""The gateway's XMPP connection: log in, stay logged in, and say what arrives.

A client-to-server session (slixmpp) as the gateway's own account. This module owns the
sockets, timers and retries of the channel and nothing of its meaning:
- one supervisor task connects, waits for the session, and after a loss reconnects with
  exponential back-off and jitter (slixmpp's own fixed-step retry is cut short);
- XEP-0198 stream management: a dropped connection resumes, and the server's ack requests
  are answered only once the stanzas received before them are handled (committed), so the
  server never forgets a message we have not stored;
- sends that must not be lost (`send_confirmed`) wait for the server's ack;
- XEP-0313 archive pages (`archive_page`), with results accepted only from our own account;
- a keepalive ping notices a dead link (then the connection is dropped and resumed).
Inbound stanzas are classified (`stanzas.classify`) and handed to the owner's callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0198 import stanza as sm_stanza
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from connectors.xmpp.protocol import reconnect_delay
from connectors.xmpp.stanzas import MAM, ArchiveResult, Inbound, classify

log = logging.getLogger("gateway.connectors.xmpp")

RSM: Final = "http://jabber.org/protocol/rsm"
DATA_FORMS: Final = "jabber:x:data"
PING: Final = "urn:xmpp:ping"
_REQUEST_ACK: Final = '<r xmlns="urn:xmpp:sm:3"/>'
_FEATURES: Final = (  # what we tell clients we understand (disco#info)
    "urn:xmpp:receipts", "urn:xmpp:chat-markers:0", "http://jabber.org/protocol/chatstates",
    "urn:xmpp:sid:0",
)


class XmppStartError(RuntimeError):
    """The gateway could not log in; the message says what to fix."""


class NotConnected(Exception):
    """No session right now (the supervisor is reconnecting)."""


class ArchiveIdUnknown(Exception):
    """The server's archive no longer has the id we asked to continue after."""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    jid: str  # bare
    password: str
    host: str | None
    port: int | None
    security: str  # starttls | tls | none
    ca_file: str | None = None
    resource: str = "gateway"
    connect_timeout: float = 20.0
    send_timeout: float = 15.0
    reconnect_min: float = 1.0
    reconnect_max: float = 60.0
    keepalive: float = 60.0
    # DNS servers ("host:port") to find the server by SRV with, instead of the system's
    # resolver configuration (tests run their own; not a setting today).
    nameservers: tuple[str, ...] = ()

    @property
    def domain(self) -> str:
        return self.jid.rpartition("@")[2]

    @property
    def address(self) -> tuple[str | None, int | None]:
        if self.host is None:
            return None, None
        return self.host, self.port or (5223 if self.security == "tls" else 5222)

    def where(self) -> str:
        host, port = self.address
        return f"{host}:{port}" if host else f"{self.domain} (DNS SRV)"


@dataclass(slots=True)
class ArchivePage:
    results: list[ArchiveResult]
    complete: bool
    last: str | None


@dataclass
class SessionHooks:
    """What the owner is told. Callbacks run on the loop and must not block."""

    message: Callable[[Inbound], None]
    presence: Callable[[ET.Element], None]
    session_started: Callable[[bool], None]  # True: a fresh session (not resumed)
    session_ended: Callable[[], None]  # the server forgot our session (no resume possible)
    in_flight: Callable[[], Collection[asyncio.Future[Any]]] = field(
        default=lambda: ())  # work on stanzas received so far (acks wait for it)


async def shut_down(client: slixmpp.ClientXMPP, wait: float = 1.0) -> None:
    """Close a slixmpp client for good: end the stream (or cut it), stop any connection
    attempt, and end its sender task (slixmpp leaves it running otherwise)."""
    if client.transport is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(wait=wait), wait + 1.0)
    if client.transport is not None:
        client.abort()
    client.cancel_connection_attempt()
    sender = getattr(client, "_run_out_filters", None)
    if sender is not None and not sender.done():
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender


class _Client(slixmpp.ClientXMPP):
    """slixmpp's client, with its handler of uncaught exceptions kept to one log line."""

    nameservers: tuple[str, ...] = ()

    def exception(self, exception: Exception) -> None:
        log.error("xmpp: handler failed: %r", exception, exc_info=exception)

    def configure_dns(self, resolver: Any, domain: str | None = None,
                      port: int | None = None) -> None:
        if self.nameservers and resolver is not None:
            resolver.nameservers = list(self.nameservers)


class XmppSession:
    def __init__(self, config: SessionConfig, hooks: SessionHooks) -> None:
        self.config = config
        self._hooks = hooks
        self._client = self._make_client()
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._ready = asyncio.Event()  # a session is up
        self._lost = asyncio.Event()  # the current connection is gone
        self._outcome: asyncio.Future[str] | None = None
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._queries: dict[str, list[ArchiveResult]] = {}
        self._ack_chain: asyncio.Task[None] | None = None
        self._paused = False
        self.sessions = 0  # fresh sessions so far (for logs and tests)
        self.resumes = 0

    # ---- construction -------------------------------------------------------------------

    def _make_client(self) -> _Client:
        cfg = self.config
        plugin_config: dict[str, Any] = {"xep_0198": {"window": 20}}
        if cfg.security == "none":
            plugin_config["feature_mechanisms"] = {"unencrypted_scram": True}
        client = _Client(f"{cfg.jid}/{cfg.resource}", cfg.password, plugin_config=plugin_config)
        client.enable_plaintext = cfg.security == "none"
        client.enable_starttls = cfg.security == "starttls"
        client.enable_direct_tls = cfg.security == "tls"
        client.nameservers = cfg.nameservers
        if cfg.ca_file:
            client.ca_certs = Path(cfg.ca_file)
        client.whitespace_keepalive = False  # our ping notices a dead link; spaces do not
        client.auto_authorize = True  # anyone may see that the gateway is online
        client.auto_subscribe = False  # ... but we follow only agents' presence
        client.use_message_ids = True
        for plugin in ("xep_0030", "xep_0198", "xep_0199"):
            client.register_plugin(plugin)
        for feature in _FEATURES:
            client.plugin["xep_0030"].add_feature(feature)
        # Answer the server's ack requests only after what came before them is handled.
        client.remove_handler("Stream Management Request Ack")
        client.register_handler(Callback(
            "Gateway SM Request Ack", MatchXPath(sm_stanza.RequestAck.tag_name()),
            self._on_request_ack, instream=True))
        client.register_handler(Callback(
            "Gateway Message", MatchXPath("{jabber:client}message"), self._on_message))
        client.register_handler(Callback(
            "Gateway Presence", MatchXPath("{jabber:client}presence"), self._on_presence))
        client.add_event_handler("session_start", self._on_session_start)
        client.add_event_handler("session_resumed", self._on_session_resumed)
        client.add_event_handler("session_end", self._on_session_end)
        client.add_event_handler("disconnected", self._on_disconnected)
        client.add_event_handler("connection_failed", self._on_connection_failed)
        client.add_event_handler("reconnect_delay", self._on_slixmpp_retry)
        client.add_event_handler("failed_all_auth", self._on_auth_failed)
        client.add_event_handler("ssl_invalid_chain", self._on_invalid_chain)
        client.add_event_handler("stream_error", self._on_stream_error)
        client.add_event_handler("stanza_acked", self._on_stanza_acked)
        return client

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Log in; raise XmppStartError with the reason when that does not work in time."""
        first = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(first), name="xmpp-supervisor")
        try:
            await asyncio.wait_for(asyncio.shield(first), self.config.connect_timeout)
        except TimeoutError:
            await self.aclose()
            raise XmppStartError(
                f"xmpp: could not log in as {self.config.jid} at {self.config.where()} within "
                f"{self.config.connect_timeout:g}s (GATEWAY_XMPP_HOST/PORT/SECURITY)") from None
        except XmppStartError:
            await self.aclose()
            raise

    async def aclose(self, drain: Callable[[], Awaitable[None]] | None = None) -> None:
        """Stop: finish handling what arrived (`drain`), tell the server, close, cancel."""
        if self._closing:
            return
        self._closing = True
        if drain is not None and self.connected:
            self.pause_reading()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drain(), self.config.send_timeout)
            self._send_ack_now()
            self.resume_reading()  # to read the server's end of stream
        if self._supervisor is not None:
            self._supervisor.cancel()
        tasks = [t for t in (self._supervisor, self._ack_chain, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await shut_down(self._client)
        self._fail_pending_acks("the gateway is stopping")

    @property
    def connected(self) -> bool:
        return self._ready.is_set() and self._client.transport is not None

    @property
    def stream_management(self) -> bool:
        return bool(self._client.plugin["xep_0198"].enabled_out)

    @property
    def resumable(self) -> bool:
        """The server keeps our stream for resumption (XEP-0198 with resume)."""
        return self._client.plugin["xep_0198"].sm_id is not None

    async def _supervise(self, first: asyncio.Future[None]) -> None:
        attempt = 0
        host, port = self.config.address
        while not self._closing:
            self._lost = asyncio.Event()  # one per connection: its keepalive watches it
            self._outcome = asyncio.get_running_loop().create_future()
            if host:
                self._client.connect(host, port)
            else:
                self._client.connect()  # DNS SRV of the domain (aiodns), then the domain
            try:
                outcome = await asyncio.wait_for(self._outcome, self.config.connect_timeout)
            except TimeoutError:
                outcome = f"no session within {self.config.connect_timeout:g}s"
                self._client.cancel_connection_attempt()
                if self._client.transport is not None:
                    self._client.abort()
            if outcome == "session":
                attempt = 0
                if not first.done():
                    first.set_result(None)
                await self._lost.wait()
                continue  # a lost session is retried at once: resumption is time-critical
            if outcome.startswith("auth:") and not first.done():
                first.set_exception(XmppStartError(
                    f"xmpp: the server refused the login of {self.config.jid} "
                    f"({outcome[5:]}): check GATEWAY_XMPP_JID and GATEWAY_XMPP_PASSWORD"))
                return
            if outcome.startswith("tls:") and not first.done():
                first.set_exception(XmppStartError(
                    f"xmpp: the TLS certificate of {self.config.where()} is not trusted "
                    f"({outcome[4:]}): install a certificate for {self.config.domain} from a "
                    "public CA, or set GATEWAY_XMPP_CA_FILE to the CA that signed it"))
                return
            delay = reconnect_delay(attempt, self.config.reconnect_min,
                                    self.config.reconnect_max)
            attempt += 1
            log.warning("xmpp: no session with %s (%s); retrying in %.1fs",
                        self.config.where(), outcome, delay)
            await asyncio.sleep(delay)

    def _settle(self, outcome: str) -> None:
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_result(outcome)

    # ---- slixmpp events -----------------------------------------------------------------

    def _on_session_start(self, _event: Any) -> None:
        self.sessions += 1
        self._ready.set()
        self._settle("session")
        self._hooks.session_started(True)
        self._spawn(self._keepalive(), "xmpp-keepalive")

    def _on_session_resumed(self, _event: Any) -> None:
        self.resumes += 1
        self._ready.set()
        self._settle("session")
        log.info("xmpp: stream resumed (XEP-0198); nothing to catch up")
        self._hooks.session_started(False)
        self._spawn(self._keepalive(), "xmpp-keepalive")

    def _on_session_end(self, _event: Any) -> None:
        self._fail_pending_acks("the server ended our session before acknowledging the send")
        self._hooks.session_ended()

    def _on_disconnected(self, reason: Any) -> None:
        was_up = self._ready.is_set()
        self._ready.clear()
        self._paused = False
        if isinstance(reason, ssl.SSLCertVerificationError):  # STARTTLS handshake failed
            self._settle(f"tls:{reason.verify_message or reason}")
        self._settle(f"disconnected: {reason}")
        self._lost.set()
        if was_up and not self._closing:
            log.warning("xmpp: connection to %s lost (%s)", self.config.where(), reason)
        if not self.resumable:
            self._fail_pending_acks("connection lost before the server acknowledged the send")

    def _on_connection_failed(self, error: Any) -> None:
        log.debug("xmpp: connection attempt failed: %s", error)
        if isinstance(error, ssl.SSLCertVerificationError):
            self._settle(f"tls:{error.verify_message or error}")

    def _on_invalid_chain(self, error: Any) -> None:
        self._settle(f"tls:{error}")
        self._client.abort()

    def _on_slixmpp_retry(self, _delay: Any) -> None:
        # slixmpp tried every address and wants to retry on its own schedule; ours decides.
        self._client.cancel_connection_attempt()
        self._settle("could not connect")

    def _on_auth_failed(self, _event: Any) -> None:
        self._settle("auth:no mechanism accepted (wrong password, or TLS missing?)")

    def _on_stream_error(self, error: Any) -> None:
        with contextlib.suppress(Exception):
            log.warning("xmpp: stream error from server: %s %s", error["condition"],
                        error["text"])

    def _on_stanza_acked(self, stanza: Any) -> None:
        with contextlib.suppress(Exception):
            future = self._acks.pop(stanza["id"], None)
            if future is not None and not future.done():
                future.set_result(None)

    def _on_message(self, stanza: Any) -> None:
        try:
            inbound = classify(stanza.xml, self.config.jid)
        except Exception:  # classify is total; this is a last line, not a path
            log.exception("xmpp: could not read a message stanza; dropped")
            return
        if isinstance(inbound, ArchiveResult):
            collected = self._queries.get(inbound.queryid)
            if collected is None:
                log.warning("xmpp: archive result for no query of ours (queryid %r); dropped",
                            inbound.queryid[:40])
            else:
                collected.append(inbound)
            return
        try:
            self._hooks.message(inbound)
        except Exception:
            log.exception("xmpp: handling a message failed; dropped")

    def _on_presence(self, stanza: Any) -> None:
        try:
            self._hooks.presence(stanza.xml)
        except Exception:
            log.exception("xmpp: handling a presence failed; dropped")

    def _on_request_ack(self, _request: Any) -> None:
        sm = self._client.plugin["xep_0198"]
        handled = sm.handled
        waiting = [f for f in self._hooks.in_flight() if not f.done()]
        previous = self._ack_chain
        if not waiting and (previous is None or previous.done()):
            self._send_ack(handled)
            return

        async def ack_when_handled() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            if waiting:
                await asyncio.wait(waiting, timeout=self.config.send_timeout)
            self._send_ack(handled)

        self._ack_chain = asyncio.create_task(ack_when_handled(), name="xmpp-sm-ack")

    def _send_ack(self, handled: int) -> None:
        if self._client.transport is None:
            return
        ack = sm_stanza.Ack(self._client)
        ack["h"] = handled
        with contextlib.suppress(Exception):
            self._client.send_raw(str(ack))

    def _send_ack_now(self) -> None:
        if self.stream_management:
            self._send_ack(self._client.plugin["xep_0198"].handled)

    # ---- tasks --------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("xmpp: task %s failed: %r", task.get_name(), task.exception(),
                      exc_info=task.exception())

    async def _keepalive(self) -> None:
        """Ping our server now and then; no answer in time means the link is dead: drop it,
        and the supervisor reconnects (and resumes the stream)."""
        lost = self._lost
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), self.config.keepalive)
                return
            except TimeoutError:
                pass
            iq = self._client.make_iq_get(queryxmlns=PING, ito=self.config.domain)
            try:
                await iq.send(timeout=max(1.0, self.config.keepalive / 2))
            except IqError:
                pass  # an answer, even an error, means the link is alive
            except IqTimeout:
                log.warning("xmpp: no answer to a ping from %s; dropping the connection",
                            self.config.where())
                if self._client.transport is not None:
                    self._client.abort()
                return

    # ---- sending ------------------------------------------------------------------------

    def make_message(self, to: str, body: str | None, stanza_id: str | None = None,
                     mtype: str = "chat") -> Any:
        message = self._client.make_message(mto=to, mbody=body, mtype=mtype)
        if stanza_id:
            message["id"] = stanza_id
        return message

    def send(self, stanza: Any) -> bool:
        """Send without waiting; False when there is no session (nothing is queued then)."""
        if not self.connected:
            return False
        stanza.send()
        return True

    async def send_confirmed(self, stanza: Any) -> None:
        """Send and wait until the server has it (XEP-0198 ack). Raises NotConnected, or
        TimeoutError when the ack does not come within the send timeout."""
        if not self.connected:
            raise NotConnected("no XMPP session")
        if not self.stream_management:
            stanza.send()  # without stream management, written is all we can know
            return
        stanza_id = stanza["id"]
        future = asyncio.get_running_loop().create_future()
        self._acks[stanza_id] = future
        stanza.send()
        self._client.send(_REQUEST_ACK)  # queued behind the stanza, so its ack counts it
        try:
            await asyncio.wait_for(asyncio.shield(future), self.config.send_timeout)
        finally:
            self._acks.pop(stanza_id, None)

    def _fail_pending_acks(self, why: str) -> None:
        for future in self._acks.values():
            if not future.done():
                future.set_exception(NotConnected(why))
        self._acks.clear()

    def pause_reading(self) -> None:
        """Back-pressure: stop reading the socket (TCP pushes back to the server)."""
        transport = self._client.transport
        if transport is not None and not self._paused:
            self._paused = True
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self._client.transport
        if transport is not None and self._paused:
            self._paused = False
            transport.resume_reading()

    # ---- presence and roster ------------------------------------------------------------

    def announce(self, status: str) -> None:
        self._client.send_presence(pstatus=status)

    async def follow(self, jids: Collection[str]) -> None:
        """Ask for the presence of these JIDs (agents) unless we already have it."""
        with contextlib.suppress(IqError, IqTimeout):
            await self._client.get_roster(timeout=self.config.send_timeout)
        roster = self._client.client_roster
        for jid in jids:
            item = roster[jid]
            if item["subscription"] in ("to", "both") or item["pending_out"]:
                continue
            self._client.send_presence_subscription(pto=jid, ptype="subscribe")

    # ---- the archive (XEP-0313) ---------------------------------------------------------

    async def supports_archive(self) -> bool:
        try:
            info = await self._client.plugin["xep_0030"].get_info(
                jid=self.config.jid, timeout=self.config.send_timeout)
        except (IqError, IqTimeout):
            return False
        return MAM in info["disco_info"]["features"]

    async def archive_page(self, *, after: str | None, start: datetime | None,
                           size: int) -> ArchivePage:
        """One page of our account's archive, oldest first, after `after` (an archive id) or
        from `start`. Raises ArchiveIdUnknown when the archive no longer has `after`."""
        queryid = secrets.token_hex(12)
        iq = self._client.make_iq_set()  # to our own account
        query = ET.SubElement(iq.xml, f"{{{MAM}}}query", {"queryid": queryid})
        if start is not None:
            form = ET.SubElement(query, f"{{{DATA_FORMS}}}x", {"type": "submit"})
            for var, value, kind in (("FORM_TYPE", MAM, "hidden"),
                                     ("start", start.strftime("%Y-%m-%dT%H:%M:%SZ"), None)):
                attrs = {"var": var, **({"type": kind} if kind else {})}
                ET.SubElement(ET.SubElement(form, f"{{{DATA_FORMS}}}field", attrs),
                              f"{{{DATA_FORMS}}}value").text = value
        rsm = ET.SubElement(query, f"{{{RSM}}}set")
        ET.SubElement(rsm, f"{{{RSM}}}max").text = str(size)
        if after is not None:
            ET.SubElement(rsm, f"{{{RSM}}}after").text = after
        collected: list[ArchiveResult] = []
        self._queries[queryid] = collected
        try:
            reply = await iq.send(timeout=self.config.send_timeout)
        except IqError as exc:
            if exc.condition == "item-not-found" and after is not None:
                raise ArchiveIdUnknown(after) from None
            raise
        finally:
            self._queries.pop(queryid, None)
        fin = reply.xml.find(f"{{{MAM}}}fin")
        last = fin.findtext(f"{{{RSM}}}set/{{{RSM}}}last") if fin is not None else None
        complete = fin is None or fin.get("complete") in ("true", "1") or not collected
        return ArchivePage(collected, complete, last)
