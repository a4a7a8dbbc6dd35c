"""The SIP edge: transport, transactions, timers, registrar and proxy behind start()/aclose().

Messages arrive from `SipTransport` with their source; the edge matches them to transactions
(`server_key`, `client_key`, `cancel_target_key`), feeds the sans-IO state machines and does
what they say (send, start or cancel a timer with `loop.call_later`, hand a message to the
TU). REGISTER goes to the `Registrar`, OPTIONS is answered here, everything else goes to the
`Proxy`. Scanners, and sources that collected too many refusals (the probe throttle), are
throttled before any state is made. Transaction keys hold the source address, so nobody can
match another caller's transaction. Transaction timers share one loop timer (`TimerWheel`);
every timer and task is owned here and cancelled (or awaited) by `aclose()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from connectors.sip.answers import make_response
from connectors.sip.digest import NonceIssuer, NonceLedger
from connectors.sip.errors import LocalProtocolError, RemoteProtocolError, SipProtocolError
from connectors.sip.message import SipMessage, SipRequest, SipResponse
from connectors.sip.proxy import ALLOW, CallSink, Forward, Proxy
from connectors.sip.ratelimit import AuthThrottle, LogGate, ScannerLimiter, TokenBuckets
from connectors.sip.registrar import TOO_MANY_ATTEMPTS, DigestAuth, Registrar, RegistrarPolicy
from connectors.sip.routing import ServiceUsers, TrustedPeers, client_host
from connectors.sip.timers import TimerWheel
from connectors.sip.transaction import (
    Action,
    CancelTimer,
    ClientTransaction,
    MessageReceived,
    PassToTu,
    Send,
    ServerTransaction,
    StartTimer,
    State,
    Terminated,
    Timer,
    TimerConfig,
    TimerFired,
    TransactionKey,
    TransportFailed,
    TuSend,
    TuTimeout,
    TuTransportError,
    cancel_target_key,
    client_key,
    server_key,
)
from connectors.sip.transport import Peer, SipTransport
from connectors.sip.txn import ClientTxn, ServerTxn
from gateway.agents import AgentDirectory
from gateway.clock import Clock
from gateway.metrics import Metrics

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = ["SipConfig", "SipEdge"]

log = logging.getLogger("gateway.sip")

_KINDS: Final = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "response",
                 "other", "scanner-dropped", "malformed-answered", "malformed-dropped",
                 "keepalive", "internal-error", "probe-limited", "auth-limited", "tcp-refused",
                 "tcp-timeout", "relay-refused")
# Answers that tell a prober something (a user exists or not, a password is wrong, a route
# is refused): each takes a token from the source's probe bucket.
_REFUSALS: Final = frozenset({401, 403, 404, 407, 416, 481})
TOO_MANY_REFUSALS: Final = "Too Many Failed Requests"
_STOP_GRACE: Final = 5.0  # how long aclose() lets call events reach the database


@dataclass(frozen=True, slots=True)
class SipConfig:
    """The SIP edge's settings, read once from `Settings`."""

    host: str = "127.0.0.1"
    port: int = 5060
    domain: str | None = None  # the name agents register under, also in our Record-Route
    realm: str = "gateway"
    service_users: tuple[str, ...] = ("support",)
    algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    nonce_secret: bytes | None = None
    min_expires: int = 60
    max_expires: int = 3600
    retry_after: int = 30
    ring_timeout: float = 60.0
    scanner_rate: float = 1.0
    scanner_burst: int = 5
    timers: TimerConfig = TimerConfig()
    default_region: str | None = None
    trusted_peers: tuple[str, ...] = ()
    auth_failure_burst: int = 10
    auth_failures_per_minute: float = 6.0
    probe_burst: int = 30
    probes_per_minute: float = 60.0
    tcp_max_per_source: int = 32
    tcp_message_timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SipConfig:
        secret = settings.sip_nonce_secret
        t1 = settings.sip_timer_t1_ms / 1000
        return cls(
            host=settings.sip_host, port=settings.sip_port, domain=settings.sip_domain,
            realm=settings.sip_realm, service_users=tuple(settings.sip_service_users),
            algorithms=tuple(settings.sip_digest_algorithms),
            nonce_secret=secret.get_secret_value().encode() if secret else None,
            min_expires=settings.sip_min_expires, max_expires=settings.sip_max_expires,
            retry_after=settings.sip_retry_after_seconds,
            ring_timeout=settings.sip_ring_timeout_seconds,
            scanner_rate=settings.sip_scanner_rate, scanner_burst=settings.sip_scanner_burst,
            timers=TimerConfig(t1=t1, t2=settings.sip_timer_t2_ms / 1000,
                               t4=settings.sip_timer_t4_ms / 1000, timer_d=64 * t1),
            default_region=settings.default_region,
            trusted_peers=tuple(settings.sip_trusted_peers),
            auth_failure_burst=settings.sip_auth_failure_burst,
            auth_failures_per_minute=settings.sip_auth_failures_per_minute,
            probe_burst=settings.sip_probe_burst, probes_per_minute=settings.sip_probes_per_minute,
            tcp_max_per_source=settings.sip_tcp_max_connections_per_source,
            tcp_message_timeout=settings.sip_tcp_message_timeout_seconds,
        )

    @property
    def advertised_host(self) -> str:
        """The host in our Via and Record-Route: the domain when set, else the bound host."""
        if self.domain:
            return self.domain
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host


def _response_peer(request: SipRequest, source: Peer) -> Peer:
    """Where responses to `request` go: the same connection over TCP; over UDP the source
    address, at the source port when rport was asked for, else at the Via port."""
    if source.reliable:
        return source
    via = request.top_via
    if via.wants_rport:
        return source
    port = via.port or 5060
    return source if port == source.port else Peer("UDP", source.host, port)


class SipEdge:
    """The gateway's SIP side on one UDP+TCP port: `await start()`, `await aclose()`."""

    def __init__(
        self,
        config: SipConfig,
        *,
        sink: CallSink,
        agents: AgentDirectory,
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.timers = config.timers
        self.trusted = TrustedPeers(config.trusted_peers)
        self.transport = SipTransport(
            config.host, config.port, self._receive, count=self._count,
            on_send_failed=self._send_failed, max_per_source=config.tcp_max_per_source,
            message_timeout=config.tcp_message_timeout, exempt=self.trusted.__contains__,
        )
        secret = config.nonce_secret or secrets.token_bytes(32)
        issuer = NonceIssuer(secret)
        self.auth = DigestAuth(
            issuer, config.realm, config.algorithms,
            throttle=AuthThrottle(config.auth_failures_per_minute, config.auth_failure_burst),
            ledger=NonceLedger(issuer.lifetime + issuer.max_skew),
        )
        self.registrar = Registrar(
            agents, self.auth,
            RegistrarPolicy(config.min_expires, config.max_expires, min(3600, config.max_expires)),
            clock,
        )
        self.proxy = Proxy(
            self, sink=sink, agents=agents, auth=self.auth, clock=clock, metrics=metrics,
            service_users=ServiceUsers(config.service_users), retry_after=config.retry_after,
            ring_timeout=config.ring_timeout, cancel_grace=64 * config.timers.t1,
            default_region=config.default_region, trusted=self.trusted,
            dialog_secret=hmac.new(secret, b"record-route", hashlib.sha256).digest(),
        )
        self.limiter = ScannerLimiter(config.scanner_rate, config.scanner_burst)
        # Refusals per source, whatever the User-Agent says (a scanner that hides its name).
        self.probes = TokenBuckets(config.probes_per_minute / 60.0, config.probe_burst)
        self._log_probe = LogGate()
        self._servers: dict[TransactionKey, ServerTxn] = {}
        self._clients: dict[TransactionKey, ClientTxn] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wheel: TimerWheel | None = None
        self._tokens = itertools.count()
        self._fire_server_cb = self._fire_server  # bound once, not once per timer
        self._fire_client_cb = self._fire_client
        self._counters = {kind: metrics.sip_messages.labels(kind) for kind in _KINDS}
        self._running = False

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one chosen for port 0)."""
        return self.transport.port

    @property
    def address(self) -> str:
        return f"{self.config.advertised_host}:{self.port}"

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wheel = TimerWheel(self._loop)
        try:
            port = await self.transport.start()
        except OSError as exc:
            raise OSError(
                f"SIP: cannot listen on {self.config.host}:{self.config.port} "
                f"(GATEWAY_SIP_HOST/GATEWAY_SIP_PORT): {exc.strerror or exc}"
            ) from None
        aliases = {self.config.host, self.config.advertised_host}
        if self.config.host in ("0.0.0.0", ""):
            aliases.add("127.0.0.1")
        self.proxy.bind(self.config.advertised_host, port, aliases)
        self._running = True
        log.info("SIP edge listening on %s:%d (UDP and TCP)", self.config.host, port)

    async def aclose(self) -> None:
        """Stop answering, let call events reach the core (briefly), drop every timer."""
        self._running = False
        await self.transport.aclose()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=_STOP_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        self.proxy.close()
        if self._wheel is not None:
            self._wheel.close()
        for entry in (*self._servers.values(), *self._clients.values()):
            entry.timers.clear()
            entry.forward = None
        self._servers.clear()
        self._clients.clear()

    @property
    def live_transactions(self) -> int:
        return len(self._servers) + len(self._clients)

    # ---- receiving -----------------------------------------------------------------------------

    def _count(self, kind: str) -> None:
        counter = self._counters.get(kind)
        if counter is not None:
            counter.inc()

    def _receive(self, message: SipMessage, source: Peer) -> None:
        if not self._running:
            return
        if isinstance(message, SipResponse):
            self._count("response")
            try:
                self._on_response(message, source)
            except RemoteProtocolError as exc:  # a header read on demand was malformed
                log.debug("SIP: dropped a malformed response from %s: %s", source, exc)
            return
        user_agent = message.headers.get("User-Agent")
        if user_agent is not None and self.limiter.is_scanner(user_agent):
            if not self.limiter.allow(source.host):
                self._count("scanner-dropped")
                if self.limiter.should_log(source.host):
                    log.warning("SIP: throttling scanner %r from %s (dropping silently)",
                                user_agent[:60], source.host)
                return
        method = message.method
        host = source.host
        if self.probes.exhausted(host) and host not in self.trusted:
            self._count("probe-limited")
            if self._log_probe(host):
                log.warning("SIP: %s collected too many refusals; answering it 403 %s",
                            host, TOO_MANY_REFUSALS)
            if method != "ACK":
                with contextlib.suppress(SipProtocolError):
                    answer = make_response(message, 403, TOO_MANY_REFUSALS)
                    self.transport.send(answer.to_bytes(), _response_peer(message, source))
            return
        self._count(method if method in self._counters else "other")
        try:
            self._on_request(message, source)
        except SipProtocolError as exc:
            # A header read on demand was malformed (RemoteProtocolError), or the TU broke
            # the protocol (LocalProtocolError, a bug): answer when we can, never raise.
            if isinstance(exc, LocalProtocolError):
                self._count("internal-error")
                log.exception("SIP: internal protocol error on %s from %s", method, source)
            self._refuse(message, source, exc)

    def _refuse(self, request: SipRequest, source: Peer, exc: SipProtocolError) -> None:
        if request.method == "ACK":
            return
        entry = self._servers.get(_safe_server_key(request, source.host) or ("",))
        try:
            if entry is not None:
                self.reply(entry, exc.status_hint, _reason(exc))
            else:
                response = make_response(request, exc.status_hint, _reason(exc))
                self.transport.send(response.to_bytes(), _response_peer(request, source))
        except SipProtocolError:
            log.debug("SIP: could not answer a bad %s from %s", request.method, source)

    def _on_request(self, request: SipRequest, source: Peer) -> None:
        method = request.method
        if method == "ACK":
            entry = self._servers.get(server_key(request, source=source.host))
            if entry is not None:
                self._run_server(entry, entry.txn.handle(MessageReceived(request)))
            else:
                self.proxy.on_ack(request, source)
            return
        key = server_key(request, source=source.host)
        entry = self._servers.get(key)
        if entry is not None:  # a retransmission: the transaction answers it again
            self._run_server(entry, entry.txn.handle(MessageReceived(request)))
            return
        txn = ServerTransaction(request, reliable=source.reliable, timers=self.timers,
                                source=source.host)
        entry = ServerTxn(txn, source, _response_peer(request, source))
        self._servers[key] = entry
        self._run_server(entry, txn.start())

    def _dispatch(self, entry: ServerTxn, request: SipRequest) -> None:
        """The TU's part of a new request (or of an ACK its INVITE transaction passed on)."""
        if request is not entry.txn.request:  # an ACK matched to an Accepted INVITE
            self.proxy.on_ack(request, entry.source)
            return
        method = request.method
        if method == "CANCEL":
            self.proxy.on_cancel(entry, self._servers.get(
                cancel_target_key(request, source=entry.source.host)))
        elif method == "REGISTER":
            self.respond(entry, self.registrar.handle(
                request, entry.source, client_host(request, entry.source.host, self.trusted)))
        elif method == "OPTIONS" and request.to_addr.tag is None and "Route" not in request.headers:
            self.reply(entry, 200, headers=[
                ("Allow", ALLOW), ("Accept", "application/sdp"), ("Accept-Language", "en"),
            ])
        else:
            self.proxy.on_request(entry)

    def _on_response(self, response: SipResponse, source: Peer) -> None:
        entry = self._clients.get(client_key(response))
        if entry is None:
            self.proxy.on_stray_response(response, source)
            return
        self._run_client(entry, entry.txn.handle(MessageReceived(response)))

    def _send_failed(self, peer: Peer, reason: str) -> None:
        for entry in [e for e in self._clients.values() if e.peer == peer]:
            self._run_client(entry, entry.txn.handle(TransportFailed(reason)))

    # ---- running transactions --------------------------------------------------------------

    def _run_server(self, entry: ServerTxn, actions: list[Action]) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                self.transport.send(action.data, entry.peer)  # type: ignore[union-attr]
            elif kind is StartTimer:
                self._start_timer(entry, action.timer, action.delay, self._fire_server_cb)  # type: ignore[union-attr]
            elif kind is CancelTimer:
                entry.timers.pop(action.timer, None)  # type: ignore[union-attr]
            elif kind is PassToTu:
                self._tu(self._dispatch, entry, action.message)  # type: ignore[union-attr]
            elif kind is Terminated:
                self._forget(self._servers, entry)
            elif kind is TuTimeout:
                log.debug("SIP: no ACK for our final response to %s", entry.request.call_id)
            elif kind is TuTransportError:
                log.info("SIP: cannot answer %s: %s", entry.peer, action.reason)  # type: ignore[union-attr]

    def _run_client(self, entry: ClientTxn, actions: list[Action]) -> None:
        for action in actions:
            kind = type(action)
            if kind is Send:
                self.transport.send(action.data, entry.peer)  # type: ignore[union-attr]
            elif kind is StartTimer:
                self._start_timer(entry, action.timer, action.delay, self._fire_client_cb)  # type: ignore[union-attr]
            elif kind is CancelTimer:
                entry.timers.pop(action.timer, None)  # type: ignore[union-attr]
            elif kind is PassToTu:
                self._tu(self.proxy.on_response, entry, action.message)  # type: ignore[union-attr]
            elif kind is Terminated:
                self._forget(self._clients, entry)
            elif kind is TuTimeout:
                self._tu(self.proxy.on_client_timeout, entry)
            elif kind is TuTransportError:
                self._tu(self.proxy.on_client_timeout, entry, action.reason)  # type: ignore[union-attr]

    def _tu(self, handler: Callable[..., None], *args: Any) -> None:
        try:
            handler(*args)
        except RemoteProtocolError as exc:
            entry = args[0]
            if isinstance(entry, ServerTxn) and entry.request.method != "ACK":
                self.reply(entry, exc.status_hint, _reason(exc))
            else:
                log.debug("SIP: dropped a malformed message: %s", exc)
        except LocalProtocolError:
            self._count("internal-error")
            log.exception("SIP: the proxy broke the protocol; message dropped")

    def _start_timer(self, entry: ServerTxn | ClientTxn, timer: Timer, delay: float,
                     fire: Callable[[Any, Timer, int], None]) -> None:
        assert self._wheel is not None
        token = next(self._tokens)
        entry.timers[timer] = token  # a restart makes the earlier firing stale
        self._wheel.schedule(delay, fire, entry, timer, token)

    def _fire_server(self, entry: ServerTxn, timer: Timer, token: int) -> None:
        if entry.timers.get(timer) == token:
            del entry.timers[timer]
            self._run_server(entry, entry.txn.handle(TimerFired(timer)))

    def _fire_client(self, entry: ClientTxn, timer: Timer, token: int) -> None:
        if entry.timers.get(timer) == token:
            del entry.timers[timer]
            self._run_client(entry, entry.txn.handle(TimerFired(timer)))

    @staticmethod
    def _forget(table: dict[TransactionKey, Any], entry: ServerTxn | ClientTxn) -> None:
        entry.timers.clear()  # pending firings find no token and do nothing
        # The TU's state points back at its transactions: dropping the link here lets
        # reference counting free the pair, so the garbage collector has less to walk.
        entry.forward = None
        if table.get(entry.txn.key) is entry:
            del table[entry.txn.key]

    # ---- ProxyIO: what the TU may ask for -----------------------------------------------------

    def respond(self, server: ServerTxn, response: SipResponse) -> bool:
        """Send `response` through `server`; False when its state no longer allows it."""
        if server.txn.state is State.TERMINATED:
            return False
        try:
            actions = server.txn.handle(TuSend(response))
        except LocalProtocolError:
            return False
        if response.status in _REFUSALS and (host := server.source.host) not in self.trusted:
            self.probes.take(host)
            if response.reason == TOO_MANY_ATTEMPTS:
                self._count("auth-limited")
                if self._log_probe("auth " + host):
                    log.warning("SIP: failed authentications from %s (or for the user it "
                                "names) are limited; answering 403 %s", host, TOO_MANY_ATTEMPTS)
        self._run_server(server, actions)
        return True

    def reply(self, server: ServerTxn, status: int, reason: str | None = None,
              headers: Iterable[tuple[str, str]] = ()) -> bool:
        return self.respond(server, make_response(server.request, status, reason,
                                                  extra_headers=headers))

    def forward(self, request: SipRequest, peer: Peer, forward: Forward | None) -> ClientTxn:
        txn = ClientTransaction(request, reliable=peer.reliable, timers=self.timers)
        entry = ClientTxn(txn, peer, forward)
        self._clients[txn.key] = entry
        self._run_client(entry, txn.start())
        return entry

    def abandon(self, client: ClientTxn) -> None:
        self._forget(self._clients, client)

    def send(self, message: SipMessage, peer: Peer) -> None:
        self.transport.send(message.to_bytes(), peer)

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("SIP: task %s failed", task.get_name(), exc_info=task.exception())

    def later(self, delay: float, callback: Callable[..., None], *args: Any
              ) -> asyncio.TimerHandle:
        assert self._loop is not None
        return self._loop.call_later(delay, callback, *args)

    def connected(self, peer: Peer) -> bool:
        return self.transport.connected(peer)


def _safe_server_key(request: SipRequest, source: str) -> TransactionKey | None:
    try:
        return server_key(request, source=source)
    except SipProtocolError:
        return None


def _reason(exc: SipProtocolError) -> str | None:
    if exc.status_hint == 400:
        text = str(exc).replace("\r", " ").replace("\n", " ")
        return "Bad Request (" + text[:80] + ")" if text.isprintable() else None
    return None
