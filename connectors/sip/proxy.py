"""The routing TU of the SIP edge: a transaction-stateful proxy (RFC 3261 section 16).

An INVITE for the gateway (a service user such as a trunk's DID, or an agent's own user)
becomes one `IncomingCall` for the core, which opens the call's leg (checking a PIN, and
refusing a caller over its PIN guess limit: we answer 403 with the core's reason and nobody
rings) and issues a context token; the core's router then chooses the agent
(`offer_call`; the next one when a phone is busy or away). The INVITE goes to that agent's
phone with `Call-Info` (the context link) and `X-Conversation-Id`, a Record-Route, and our
Via. Call events name the call by the leg id the core returned, never by its Call-ID.
Responses come back with our Via removed.
CANCEL, ACK, BYE and re-INVITE follow the Record-Route (loose routing) through us. Call
events (ringing, answered by whom, ended, duration) go to the core in tasks the edge owns, so
the relay of a response never waits for a database write.

No open relay (CONTRACT.md "SIP"): an in-dialog request goes on only when it belongs to a
call we routed, and then only to that call's other party as we recorded it, never to a host
the request names. It belongs when its top Route is our Record-Route, whose `dlg` parameter
is a random dialog id with an HMAC over it, the Call-ID and the caller's tag; or, for
route-less peers (SIPp's built-in uac, pyVoIP), when its Call-ID and tags match a call and it
comes from that party's address. Everything else is refused and sent nowhere. Context headers
only we may set are stripped from every request we forward.

Per live call we keep one small `Call` (dialog id -> agent, tags and the two flows); every
other piece of state lives in transactions, which the edge removes when they terminate.
The edge (`connectors/sip/edge.py`) does all I/O; this module decides.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Protocol

from connectors.sip.errors import RemoteProtocolError
from connectors.sip.grammar import (
    MAGIC_COOKIE,
    NameAddr,
    SipUri,
    Via,
    new_branch,
    split_list,
    unescape,
)
from connectors.sip.headers import Headers
from connectors.sip.message import SipMessage, SipRequest, SipResponse
from connectors.sip.registrar import AuthResult, DigestAuth
from connectors.sip.routing import (
    PIN_HEADER,
    ServiceUsers,
    TrustedPeers,
    attestation,
    caller_address,
    client_host,
    dialled,
    pin_from_header,
)
from connectors.sip.transaction import State
from connectors.sip.transport import Peer
from gateway.agents import Agent, AgentDirectory, AgentTarget, Contact
from gateway.clock import Clock
from gateway.domain import CallRefused
from gateway.events import CallEvent, CallEventKind, IncomingCall
from gateway.metrics import Metrics

if TYPE_CHECKING:
    from connectors.sip.txn import ClientTxn, ServerTxn

__all__ = ["Call", "CallSink", "CallState", "Forward", "Forwarding", "Proxy", "ProxyIO",
           "RoutedCall"]

log = logging.getLogger("gateway.sip.proxy")

ALLOW: Final = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, INFO, UPDATE, PRACK, REFER, NOTIFY"
_OUT_OF_DIALOG_ELSEWHERE: Final = frozenset(
    {"MESSAGE", "SUBSCRIBE", "NOTIFY", "REFER", "INFO", "UPDATE", "PRACK", "PUBLISH"}
)
# Twilio's `<Dial><Sip>` passes the context token it got from the core as `X-Context`; the
# core keeps that call's leg when the token is live (and ignores it otherwise).
CONTEXT_HEADER: Final = "X-Context"
# Never forwarded, in any request, either way: context headers only we may set (a caller
# could point an agent at a page of its own, or claim a leg with X-Context) and the PIN.
_STRIP_ALWAYS: Final = frozenset(
    n.lower() for n in ("Call-Info", "X-Conversation-Id", PIN_HEADER, CONTEXT_HEADER))
_STRIP_WITH_ROUTE: Final = _STRIP_ALWAYS | {"route"}  # in-dialog, when our Route led
# From an initial INVITE also its credentials (meant for us) and its Route (we choose).
_STRIP_ON_INVITE: Final = _STRIP_ALWAYS | {"proxy-authorization", "route"}
_DIALOG_PARAM: Final = "dlg"  # in our Record-Route: <sip:host:port;lr;dlg=ID.MAC>
# An agent's phone answering one of these did not take the call: the next agent may.
_NEXT_AGENT_ON: Final = frozenset({408, 480, 486, 500, 502, 503, 504, 600, 603})
MAX_DIALOG_SECONDS: Final = 12 * 3600.0  # a dialog with no BYE after this is forgotten
_SWEEP_EVERY: Final = 60.0


class RoutedCall(Protocol):
    """What the core answers for a call (`gateway.core.CallRoute`): the link, not the data,
    and the leg id by which the edge names the call from then on."""

    context_url: str
    conversation_id: str
    leg_id: str


class OfferedCall(Protocol):
    """The core's offer of a call to one agent (`gateway.channels.CallOffer`)."""

    agent_id: str
    target: AgentTarget


class CallSink(Protocol):
    """The core as the SIP edge uses it (`gateway.core.Core`): open the call's leg (which
    may refuse it: `CallRefused`), offer it to an agent, record its progress."""

    def open_call(self, call: IncomingCall) -> Awaitable[RoutedCall]: ...

    def offer_call(self, route: Any, tried: Sequence[str] = (), *,
                   agent_id: str | None = None, exclude: Sequence[str] = ()
                   ) -> Awaitable[OfferedCall | None]: ...

    def call_event(self, event: CallEvent) -> Awaitable[bool]: ...


class ProxyIO(Protocol):
    """What the proxy needs from the edge: transactions, stateless sends, tasks, timers."""

    def respond(self, server: ServerTxn, response: SipResponse) -> bool: ...

    def reply(self, server: ServerTxn, status: int, reason: str | None = None,
              headers: Iterable[tuple[str, str]] = ()) -> bool: ...

    def forward(self, request: SipRequest, peer: Peer, forward: Forward | None
                ) -> ClientTxn: ...

    def abandon(self, client: ClientTxn) -> None: ...

    def send(self, message: SipMessage, peer: Peer) -> None: ...

    def spawn(self, coro: Awaitable[Any], name: str) -> None: ...

    def later(self, delay: float, callback: Callable[..., None], *args: Any
              ) -> asyncio.TimerHandle: ...

    def connected(self, peer: Peer) -> bool: ...


class CallState(Enum):
    """Where a call stands, as the call events record it."""

    OFFERED = "offered"  # the INVITE is on its way to (or at) the agent's phone
    RINGING = "ringing"  # the phone sent 180 or 183 (recorded once)
    ANSWERED = "answered"  # a 2xx: from here on the Call is a dialog record
    ENDED = "ended"  # BYE, failure, cancel or sweep: recorded, the agent freed


class Call:
    """One call from INVITE to BYE; from the 2xx on, the dialog record (kept small).

    The core names it by `leg_id` (what `open_call` returned): every call event carries
    that, never the Call-ID, which the caller chose. `dialled` is the agent whose own user
    the caller dialled (then no other agent is tried); `tried` the agents it was offered to.
    """

    __slots__ = ("call_id", "agent_id", "caller_tag", "caller_peer", "agent_peer",
                 "answered_at", "state", "dialog_id", "leg_id", "route", "dialled", "tried",
                 "exclude")

    def __init__(self, call_id: str, caller_tag: str | None, caller_peer: Peer, *,
                 dialled: str | None = None, exclude: tuple[str, ...] = ()) -> None:
        self.call_id = call_id
        self.agent_id: str | None = None  # the agent it is offered to now
        self.leg_id: str | None = None
        self.route: RoutedCall | None = None
        self.dialled = dialled
        self.exclude = exclude
        self.tried: list[str] = []
        self.caller_tag = caller_tag
        self.caller_peer = caller_peer  # the caller's flow (where its INVITE came from)
        self.agent_peer: Peer | None = None  # where its INVITE went, then where the 2xx came from
        self.dialog_id = secrets.token_hex(8)  # in our Record-Route: the key of self.dialogs
        self.answered_at: float | None = None
        self.state = CallState.OFFERED

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED


class Forwarding(Enum):
    """Where the relay of one request stands, upstream (the caller's answer) and downstream
    (the branch we sent). Transitions, all in `Proxy`:

        ROUTING -> RELAYING                    sent on (an INVITE once routed, others at once)
        ROUTING -> ANSWERED                    CANCEL, failure or no route: we answer ourselves
        RELAYING -> ANSWERED                   a final answer went up (relayed or ours)
        RELAYING -> CANCEL_WAITING -> CANCEL_SENT    the caller cancelled; the CANCEL waits
                                               for the branch's first provisional (RFC 3261 9.1)
        CANCEL_* -> ANSWERED                   the branch's 487 (or a crossing 2xx) went up
        RELAYING -> GIVING_UP -> GAVE_UP       ring timeout: 480 went up, CANCEL waits / went
    """

    ROUTING = "routing"  # an INVITE waiting for the core and the agent's address
    RELAYING = "relaying"  # sent on; answers are relayed up
    CANCEL_WAITING = "cancel-waiting"  # cancelled by the caller; CANCEL on the next 1xx
    CANCEL_SENT = "cancel-sent"  # cancelled by the caller; the branch's final goes up
    GIVING_UP = "giving-up"  # we answered up ourselves; CANCEL on the next 1xx
    GAVE_UP = "gave-up"  # we answered up ourselves and CANCELled the branch
    ANSWERED = "answered"  # a final answer went (or is going) up


# A final answer went upstream: later 1xx are not relayed, a late 2xx is hung up on.
_FINAL: Final = frozenset({Forwarding.ANSWERED, Forwarding.GIVING_UP, Forwarding.GAVE_UP})
# A CANCEL is due on the branch's first provisional answer.
_CANCEL_DUE: Final = {Forwarding.CANCEL_WAITING: Forwarding.CANCEL_SENT,
                      Forwarding.GIVING_UP: Forwarding.GAVE_UP}


class Outcome(Enum):
    """Why we ended an unanswered call ourselves (None: the agent's phone ended it)."""

    CANCELLED = "cancelled"  # the caller CANCELled (or hung up while we routed)
    NO_ANSWER = "no-answer"  # ring timeout


class Forward:
    """A request being relayed: its server transaction, its client transaction (None while
    an INVITE is being routed) and, for an initial INVITE, its Call."""

    __slots__ = ("server", "client", "call", "state", "timer", "outcome", "refusal")

    def __init__(self, server: ServerTxn, call: Call | None = None) -> None:
        self.server = server
        self.client: ClientTxn | None = None
        self.call = call
        self.state = Forwarding.ROUTING
        self.timer: asyncio.TimerHandle | None = None
        self.outcome: Outcome | None = None
        # The last agent phone's refusal (status, reason, the response; None for a timeout):
        # what the caller gets when no other agent can take the call (RFC 3261 16.7 step 6).
        self.refusal: tuple[int, str | None, SipResponse | None] | None = None

    @property
    def final(self) -> bool:
        return self.state in _FINAL


class Proxy:
    """Decides what happens to each request and response the edge cannot settle itself."""

    def __init__(
        self,
        io: ProxyIO,
        *,
        sink: CallSink,
        agents: AgentDirectory,
        auth: DigestAuth,
        clock: Clock,
        metrics: Metrics,
        service_users: ServiceUsers,
        retry_after: int,
        ring_timeout: float,
        cancel_grace: float,
        default_region: str | None = None,
        trusted: TrustedPeers | None = None,
        dialog_secret: bytes | None = None,
    ) -> None:
        self.io = io
        self.sink = sink
        self.agents = agents
        self.auth = auth
        self.clock = clock
        self.metrics = metrics
        self.service_users = service_users
        self.retry_after = retry_after
        self.ring_timeout = ring_timeout
        self.cancel_grace = cancel_grace
        self.default_region = default_region
        self.trusted = trusted if trusted is not None else TrustedPeers(())
        # HMAC-SHA256 keyed once; each MAC copies it (a third of the cost of hmac.digest)
        self._dialog_hmac = hmac.new(dialog_secret or secrets.token_bytes(32),
                                     digestmod=hashlib.sha256)
        # Every call from the moment its INVITE goes on until it ends, by dialog id; and the
        # same calls by Call-ID, for peers that send in-dialog requests without our Route.
        self.dialogs: dict[str, Call] = {}
        self._by_call_id: dict[str, list[Call]] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self.sent_by = ""
        self._own_via = Via(transport="UDP", host="")
        self._rr_prefix = ""
        self._hosts: frozenset[str] = frozenset()
        self._port = 0
        self._me: dict[str, bool] = {}
        self._answered = metrics.calls.labels("sip", "answered")
        self._routed = metrics.calls.labels("sip", "routed")
        self._relay_refused = metrics.sip_messages.labels("relay-refused")

    def bind(self, host: str, port: int, aliases: Iterable[str] = ()) -> None:
        """Where we are, once the transport is bound: our Via, Record-Route and own hosts."""
        self._port = port
        self.sent_by = f"{host}:{port}".lower()
        self._own_via = Via.parse(f"SIP/2.0/UDP {self.sent_by}")  # our host and port, parsed
        self._rr_prefix = f"<sip:{host}:{port};lr;{_DIALOG_PARAM}="
        self._hosts = frozenset(h.lower() for h in (host, *aliases))
        self._sweeper = self.io.later(_SWEEP_EVERY, self._sweep)

    def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.dialogs.clear()
        self._by_call_id.clear()

    # ---- our Record-Route: which dialog a request belongs to ----------------------------------

    def _dialog_mac(self, dialog_id: str, call_id: str, caller_tag: str | None) -> str:
        mac = self._dialog_hmac.copy()
        mac.update(f"{dialog_id}\0{call_id}\0{caller_tag or ''}".encode("utf-8", "surrogateescape"))
        return mac.digest()[:8].hex()

    def record_route(self, call: Call) -> str:
        """Our Record-Route for `call`: `dlg` names the call and proves we wrote it."""
        mac = self._dialog_mac(call.dialog_id, call.call_id, call.caller_tag)
        return f"{self._rr_prefix}{call.dialog_id}.{mac}>"

    def _remember(self, call: Call) -> None:
        if self.dialogs.setdefault(call.dialog_id, call) is call and call.tried[1:]:
            return  # offered to the next agent: remembered already
        self._by_call_id.setdefault(call.call_id, []).append(call)

    def _forget_call(self, call: Call) -> None:
        if self.dialogs.pop(call.dialog_id, None) is None:
            return
        same = self._by_call_id.get(call.call_id)
        if same is not None:
            if call in same:
                same.remove(call)
            if not same:
                del self._by_call_id[call.call_id]

    def _dialog_of(self, request: SipRequest, source: Peer, routes: tuple[NameAddr, ...]
                   ) -> tuple[Call, bool] | int:
        """The call an in-dialog request belongs to and whether it comes from the caller's
        side, or the status to refuse it with (403: not ours; 481: ours, but over)."""
        from_tag = request.from_addr.tag
        to_tag = request.to_addr.tag
        if routes and (dlg := self._our_dialog_param(routes[0].uri)) is not None:
            dialog_id, _, mac = dlg.partition(".")
            if not mac.isascii():
                return 403  # not a MAC we wrote (ours are hex; compare_digest refuses it)
            call_id = request.call_id
            for tag, from_caller in ((from_tag, True), (to_tag, False)):
                if hmac.compare_digest(self._dialog_mac(dialog_id, call_id, tag), mac):
                    call = self.dialogs.get(dialog_id)
                    if call is None or call.ended:
                        return 481  # a dialog we record-routed, gone (ended, or a restart)
                    return call, from_caller
            return 403  # a Route that claims to be ours for a dialog it is not
        # No Route of ours (a peer that ignored the route set): the Call-ID and tags must
        # match a call, and the request must come from that side's own address.
        for call in self._by_call_id.get(request.call_id, ()):
            if call.ended:
                continue
            if from_tag == call.caller_tag and source.host == call.caller_peer.host:
                return call, True
            agent = call.agent_peer
            if to_tag == call.caller_tag and agent is not None and source.host == agent.host:
                return call, False
        return 403

    def _our_dialog_param(self, uri_text: str) -> str | None:
        """The `dlg` of a Route URI that names us, else None."""
        prefix = self._rr_prefix[1:]  # without the "<"
        if uri_text.startswith(prefix):  # our own text, copied back as peers should
            return uri_text[len(prefix):].split(";", 1)[0]
        if not self._is_me(uri_text):
            return None
        try:
            return SipUri.parse(uri_text).param(_DIALOG_PARAM)
        except RemoteProtocolError:
            return None

    # ---- out-of-dialog requests ------------------------------------------------------------

    def on_request(self, server: ServerTxn) -> None:
        """A new request with its server transaction (not ACK, CANCEL, REGISTER, OPTIONS)."""
        request = server.request
        if request.to_addr.tag is not None:
            self._in_dialog(server, request)
        elif request.method == "INVITE":
            self._invite(server, request)
        elif not self._is_me(request.uri) or not all(self._is_me(r.uri) for r in request.routes):
            self._refused(server, 403, "Forbidden (not relaying)")  # we serve only ourselves
        elif request.method == "BYE":
            self.io.reply(server, 481)
        elif request.method == "OPTIONS":  # to us, through our own Route
            self.io.reply(server, 200, headers=[("Allow", ALLOW)])
        elif request.method in _OUT_OF_DIALOG_ELSEWHERE:
            self.io.reply(server, 405, headers=[("Allow", ALLOW)])
        else:
            self.io.reply(server, 501, headers=[("Allow", ALLOW)])

    def _invite(self, server: ServerTxn, request: SipRequest) -> None:
        io = self.io
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            io.reply(server, 483)
            return
        if self._looped(request):
            io.reply(server, 482)
            return
        ruri = request.request_uri
        wanted = dialled(unescape(ruri.user or ""))
        pin = wanted.pin or pin_from_header(request)
        agent = self.agents.by_sip_user(wanted.user) if wanted.user else None
        if agent is None and not (
            wanted.user in self.service_users or (not wanted.user and wanted.pin)
        ):
            self._count("not-found")
            io.reply(server, 404)
            return
        caller_agent = self._claimed_agent(request)
        source = server.source.host
        # Guess limits (digest, PIN) count the phone behind a trusted Kamailio, not Kamailio.
        client = client_host(request, source, self.trusted)
        if caller_agent is not None:
            result = self.auth.check(request, "Proxy-Authorization", caller_agent, client)
            if result is not AuthResult.OK:
                io.respond(server, self.auth.refusal(request, result, "Proxy-Authenticate", 407))
                return
        # Which agent takes it (and whether anyone can) is the core's answer, after the core
        # has opened the call's leg and checked its PIN: see `_route`.
        call = Call(request.call_id, request.from_addr.tag, server.source,
                    dialled=agent.id if agent is not None else None,
                    exclude=(caller_agent.id,) if caller_agent is not None else ())
        forward = Forward(server, call)
        server.forward = forward
        # X-Context (a leg an upstream edge opened) and caller-ID attestation are believed
        # only from the trunks and edges we were told to trust.
        trusted = source in self.trusted
        incoming = IncomingCall(
            caller=caller_address(request, self.default_region),
            callee=wanted.user or "pin",
            call_ref=request.call_id,
            provider="sip",
            pin=pin,
            caller_authenticated=caller_agent is not None,
            context_token=request.headers.get(CONTEXT_HEADER) if trusted else None,
            source=client,
            attestation=attestation(request) if trusted else None,
        )
        io.spawn(self._route(forward, incoming), "sip-route")

    async def _route(self, forward: Forward, incoming: IncomingCall) -> None:
        """The core opens the call's leg (a PIN is checked there, before any agent is asked)
        and then offers the call to an agent; we only translate its answers."""
        call = forward.call
        assert call is not None
        try:
            route = await self.sink.open_call(incoming)
        except CallRefused as exc:
            call.state = CallState.ENDED
            self._count("refused")
            log.info("SIP: call %s from %s refused by the core: %s", call.call_id[:80],
                     forward.server.source.host, exc)
            if not forward.final:
                self._final(forward, exc.status, reason=exc.sip_reason)
            return
        except Exception:
            log.exception("SIP: the core could not open call %s; answering 500", call.call_id)
            call.state = CallState.ENDED
            self._count("error")
            if not forward.final:
                self._final(forward, 500)
            return
        call.leg_id = route.leg_id
        call.route = route
        if forward.state is not Forwarding.ROUTING:  # CANCEL came meanwhile: 487 was sent
            self._unanswered(forward, 487)
            return
        await self._offer(forward)

    async def _offer(self, forward: Forward, why_not: str | None = None) -> None:
        """Offer the call to the next agent through the core's router, and send it there;
        480 to the caller when nobody (else) can take it."""
        call = forward.call
        assert call is not None and call.route is not None
        offer = await self.sink.offer_call(call.route, tuple(call.tried),
                                           agent_id=call.dialled, exclude=call.exclude)
        if forward.state is not Forwarding.ROUTING:
            if offer is not None:
                call.agent_id = offer.agent_id
            self._unanswered(forward, 487)  # CANCEL came meanwhile; the end frees the agent
            return
        if offer is None:
            if forward.refusal is not None:  # nobody else: the last phone's answer goes up
                status, reason, response = forward.refusal
                self._unanswered(forward, status, reason)
                if response is not None:
                    forward.state = Forwarding.ANSWERED
                    self.io.respond(forward.server, _upstream(response, final_error=True))
                else:
                    self._final(forward, 480, headers=[("Retry-After", str(self.retry_after))])
                return
            self._count("no-agent")
            self._final(forward, 480, headers=[("Retry-After", str(self.retry_after))])
            self._unanswered(forward, 480, detail="no agent available")
            return
        call.agent_id = offer.agent_id
        call.tried.append(offer.agent_id)
        if why_not is not None:
            self._event(call, "transferred", detail=f"{why_not}; trying agent {offer.agent_id}")
        peer = await self._peer_of_contact(offer.target.contact)
        if forward.state is not Forwarding.ROUTING:
            self._unanswered(forward, 487)
            return
        if peer is None:
            log.warning("SIP: agent %s's contact %s is unreachable", call.agent_id,
                        offer.target.contact.uri)
            self._final(forward, 480, headers=[("Retry-After", str(self.retry_after))])
            self._unanswered(forward, 480, detail=f"agent {call.agent_id} is unreachable")
            return
        route = call.route
        request = forward.server.request
        headers = self._headers_onward(request, forward.server.source, peer, _STRIP_ON_INVITE)
        headers.add("Record-Route", self.record_route(call), first=True)
        headers.add("Call-Info", f"<{route.context_url}>;purpose=info")
        headers.add("X-Conversation-Id", route.conversation_id)
        onward = SipRequest("INVITE", offer.target.contact.uri, headers, request.body)
        self._routed.inc()
        forward.state = Forwarding.RELAYING
        call.agent_peer = peer
        self._remember(call)
        forward.client = self.io.forward(onward, peer, forward)
        forward.timer = self._later(self.ring_timeout, self._ring_timeout, forward)

    def _try_next(self, forward: Forward, why_not: str) -> bool:
        """After the agent's phone refused or never answered: offer the call to the next
        agent (the router's choice), unless the caller dialled that agent or gave up."""
        call = forward.call
        if (call is None or call.dialled is not None or forward.outcome is not None
                or forward.state is not Forwarding.RELAYING or call.answered_at is not None
                or call.ended):
            return False
        forward.state = Forwarding.ROUTING
        forward.client = None
        self.io.spawn(self._offer(forward, why_not), "sip-route")
        return True

    def _claimed_agent(self, request: SipRequest) -> Agent | None:
        """The agent the From header claims to be, when it names one of ours on our host."""
        try:
            uri = request.from_addr.sip_uri()
        except RemoteProtocolError:
            return None  # a tel: URI or other scheme: a caller, not an agent
        if uri.user is None or uri.host.lower() not in self._hosts:
            return None
        return self.agents.by_sip_user(unescape(uri.user))

    async def _peer_of_contact(self, contact: Contact) -> Peer | None:
        """Where to send a call for `contact`: the flow its REGISTER came from (NAT-proof, and
        the open connection for TCP), else the contact URI's host. Only a configured static
        contact's host name is resolved (off the loop, with a timeout); a registered one
        names whatever the phone wrote, so its host is used only when it is an address."""
        try:
            uri = SipUri.parse(contact.uri)
        except RemoteProtocolError:
            uri = None
        if contact.source is not None:
            host, port = contact.source
            if contact.transport != "tcp":
                return Peer("UDP", host, port)
            flow = Peer("TCP", host, port)
            if self.io.connected(flow):  # a TCP flow is only good while its connection is
                return flow
            literal = _peer_of(uri) if uri is not None else None
            # the phone's listening port at the address it registered from
            return literal or Peer("TCP", host, (uri.port if uri else None) or 5060)
        if uri is None:
            return None
        peer = _peer_of(uri)
        if peer is not None or uri.scheme != "sip":
            return peer
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(uri.host, uri.port or 5060, type=2), 2.0  # SOCK_DGRAM
            )
        except (OSError, TimeoutError):
            return None
        if not infos:
            return None
        return Peer("TCP" if uri.transport == "tcp" else "UDP", infos[0][4][0], uri.port or 5060)

    # ---- in-dialog requests -------------------------------------------------------------------

    def _in_dialog(self, server: ServerTxn, request: SipRequest) -> None:
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            self.io.reply(server, 483)
            return
        found = self._onward_in_dialog(request, server.source, stateless=False)
        if isinstance(found, int):
            reason = "Forbidden (no such dialog here)" if found == 403 else None
            self._refused(server, found, reason)
            return
        onward, peer, call, from_caller = found
        if request.method == "BYE":
            self._end(call, f"{'caller' if from_caller else 'agent'} hung up")
        forward = Forward(server)
        forward.state = Forwarding.RELAYING
        server.forward = forward
        forward.client = self.io.forward(onward, peer, forward)

    def on_ack(self, request: SipRequest, source: Peer) -> None:
        """An ACK no server transaction took: the ACK for a 2xx, relayed statelessly."""
        if request.to_addr.tag is None:
            return  # the ACK of a transaction that is gone: nothing to do (RFC 3261 17.2.3)
        max_forwards = request.max_forwards
        if max_forwards is not None and max_forwards <= 0:
            return
        found = self._onward_in_dialog(request, source, stateless=True)
        if isinstance(found, int):
            log.debug("SIP: dropped an ACK for no dialog of ours from %s", source)
            return
        onward, peer, _, _ = found
        self.io.send(onward, peer)

    def _onward_in_dialog(self, request: SipRequest, source: Peer, *, stateless: bool
                          ) -> tuple[SipRequest, Peer, Call, bool] | int:
        """Loose routing (RFC 3261 16.4, 16.12) inside a dialog we record-routed: our own
        Route entries dropped, the rest kept, and the request sent to the call's other party
        as recorded (never to a host the request names). Or the status to refuse it with."""
        routes = request.routes
        found = self._dialog_of(request, source, routes)
        if isinstance(found, int):
            if found == 403 and request.uri.partition(":")[0].lower() not in ("sip", "sips"):
                return 416
            return found
        call, from_caller = found
        peer = call.agent_peer if from_caller else call.caller_peer
        if peer is None:
            return 481
        ours = 0
        while ours < len(routes) and self._is_me(routes[ours].uri):
            ours += 1
        drop = _STRIP_WITH_ROUTE if ours else _STRIP_ALWAYS
        if stateless:  # RFC 3261 16.11: the same branch for every retransmission
            branch = MAGIC_COOKIE + hashlib.sha1(
                (request.top_via.branch or request.call_id).encode(), usedforsecurity=False
            ).hexdigest()[:16]
        else:
            branch = new_branch()
        headers = self._headers_onward(request, source, peer, drop, branch)
        if ours:
            for route in routes[ours:]:
                headers.add("Route", str(route))
        return SipRequest(request.method, request.uri, headers, request.body), peer, call, \
            from_caller

    def _looped(self, request: SipRequest) -> bool:
        """Our own Via in the request: it went round to us again (RFC 3261 16.3 step 4)."""
        sent_by = self.sent_by
        if not any(sent_by in value.lower() for value in request.headers.get_all("Via")):
            return False  # the usual case, without parsing every Via
        return any(v.sent_by.lower() == sent_by for v in request.vias)

    def _is_me(self, uri_text: str) -> bool:
        """Whether a Route or Request-URI names us (remembered, but for our own Record-Route
        texts, which differ per call and are recognised by their prefix)."""
        if uri_text.startswith(self._rr_prefix[1:]):
            return True
        known = self._me.get(uri_text)
        if known is not None:
            return known
        try:
            uri = SipUri.parse(uri_text)
            me = uri.host.lower() in self._hosts and (uri.port or 5060) == self._port
        except RemoteProtocolError:
            me = False
        if len(self._me) >= 1024:
            self._me.clear()
        self._me[uri_text] = me
        return me

    def _headers_onward(self, request: SipRequest, source: Peer, peer: Peer,
                        drop: frozenset[str], branch: str | None = None) -> Headers:
        """The request's headers for the next hop (RFC 3261 16.6): `drop` (lower-case names)
        removed, the sender's Via marked with received/rport (RFC 3581), Max-Forwards less
        one, our Via."""
        headers = request.headers.copy()
        headers.remove_all(drop)
        via = request.top_via
        if via.wants_rport or via.host != source.host:
            marked = via.with_param("received", source.host)
            if via.wants_rport:
                marked = marked.with_param("rport", str(source.port))
            headers.pop_first_value("Via")
            headers.add("Via", str(marked), first=True)
        max_forwards = request.max_forwards
        headers.set("Max-Forwards", "70" if max_forwards is None else str(max_forwards - 1))
        # SIP/2.0/<transport> <sent-by>;branch=...[;rport], built already parsed
        own = self._own_via
        params: tuple[tuple[str, str | None], ...] = (("branch", branch or new_branch()),)
        if peer.transport == "UDP":
            params += (("rport", None),)
        headers.add_top_via(Via(transport=peer.transport, host=own.host, port=own.port,
                                params=params))
        return headers

    # ---- responses ----------------------------------------------------------------------------

    def on_response(self, client: ClientTxn, response: SipResponse) -> None:
        forward = client.forward
        if forward is None:
            return  # the answer to a CANCEL or BYE we sent ourselves
        status = response.status
        if status == 100:
            return  # hop by hop: we sent our own
        call = forward.call
        if status < 200:
            if forward.state in _CANCEL_DUE:
                self._send_cancel(forward)  # the CANCEL that waited for a provisional
            if call is not None and call.state is CallState.OFFERED and status in (180, 183):
                call.state = CallState.RINGING
                self._event(call, "ringing")
            if not forward.final:
                self.io.respond(forward.server, self._dialog_response(client, response))
            return
        if status < 300:
            if call is not None and call.answered_at is None:
                self._answered_call(forward, call, client, response)
            if forward.final and forward.server.txn.state is not State.ACCEPTED:
                return
            forward.state = Forwarding.ANSWERED
            upstream = self._dialog_response(client, response)
            if not self.io.respond(forward.server, upstream):
                self.io.send(upstream, forward.server.peer)
            return
        # 3xx-6xx: the client transaction ACKs it; pass it up unless we already answered,
        # or offer the call to the next agent when this one's phone is busy or away.
        self._stop_timer(forward)
        if call is not None:
            if status in _NEXT_AGENT_ON:
                forward.refusal = (status, response.reason, response)
                if self._try_next(forward, f"agent {call.agent_id}'s phone answered {status}"):
                    return
            self._unanswered(forward, status, response.reason)
        if not forward.final:
            forward.state = Forwarding.ANSWERED
            self.io.respond(forward.server, _upstream(response, final_error=True))

    def _dialog_response(self, client: ClientTxn, response: SipResponse) -> SipResponse:
        """`response` for the caller; when the agent's phone left out the Record-Route it
        had to copy (RFC 3261 12.1.1; pyVoIP does), put it back so that the dialog, and its
        BYE, still pass through us."""
        upstream = _upstream(response)
        request = client.txn.request
        if (request.method == "INVITE" and response.headers.get("Record-Route") is None
                and response.to_addr.tag is not None):
            for value in request.headers.get_all("Record-Route"):
                upstream.headers.add("Record-Route", value)
        return upstream

    def _answered_call(self, forward: Forward, call: Call, client: ClientTxn,
                       response: SipResponse) -> None:
        self._stop_timer(forward)
        if forward.final or call.ended:
            # We gave up (ring timeout, CANCEL that crossed the 200): hang up on the agent.
            self._hang_up_late_answer(client, response)
            return
        call.answered_at = time.monotonic()
        call.state = CallState.ANSWERED
        call.agent_peer = client.peer
        self.metrics.dialogs.inc()
        self._answered.inc()
        self._event(call, "answered", agent_id=call.agent_id)

    def on_client_timeout(self, client: ClientTxn, reason: str | None = None) -> None:
        """Timer B/F fired, or the transport failed: treat it as 408 (RFC 3261 16.7 step 2)
        and, for a call, as the agent being unreachable (480 with Retry-After)."""
        forward = client.forward
        if forward is None:
            return
        self._stop_timer(forward)
        call = forward.call
        if call is not None:
            forward.refusal = (480, reason or "agent did not answer", None)
            if self._try_next(forward, f"agent {call.agent_id}'s phone did not answer"):
                return
            self._unanswered(forward, 480, reason or "agent did not answer")
            if not forward.final:
                self._final(forward, 480, headers=[("Retry-After", str(self.retry_after))])
        elif not forward.final:
            self._final(forward, 408 if reason is None else 503)

    def on_stray_response(self, response: SipResponse, source: Peer) -> None:
        """A response no client transaction took (a 2xx retransmitted after Timer M):
        forward it statelessly along the Via when the top Via is ours (RFC 3261 16.11), but
        only for a call we routed, from its agent's side, to its caller's address."""
        vias = response.vias
        if len(vias) < 2 or vias[0].sent_by.lower() != self.sent_by:
            return
        tag = response.from_addr.tag
        for call in self._by_call_id.get(response.call_id, ()):
            agent = call.agent_peer
            if call.caller_tag == tag and agent is not None and agent.host == source.host:
                peer = _peer_of_via(vias[1])
                if peer is not None and peer.host == call.caller_peer.host:
                    self.io.send(_upstream(response), peer)
                return

    # ---- CANCEL and giving up ---------------------------------------------------------------

    def on_cancel(self, cancel: ServerTxn, target: ServerTxn | None) -> None:
        """RFC 3261 16.10: 200 to the CANCEL, CANCEL the branch; the branch's 487 goes up."""
        forward = target.forward if target is not None else None
        if forward is None:
            self.io.reply(cancel, 481)
            return
        self.io.reply(cancel, 200)
        if (forward.state not in (Forwarding.ROUTING, Forwarding.RELAYING)
                or target.txn.state is not State.PROCEEDING):  # type: ignore[union-attr]
            return
        forward.outcome = Outcome.CANCELLED
        if forward.client is None:  # still being routed: answer for the branch that never was
            self._final(forward, 487)
            return
        forward.state = Forwarding.CANCEL_WAITING
        self._send_cancel(forward)
        # A branch that never answers the CANCEL must not keep the caller waiting.
        self._stop_timer(forward)
        forward.timer = self._later(self.cancel_grace, self._cancel_expired, forward)

    def _send_cancel(self, forward: Forward) -> None:
        """CANCEL the branch (RFC 3261 9.1), or wait for its first provisional response."""
        client = forward.client
        sent = _CANCEL_DUE.get(forward.state)
        if client is None or sent is None:
            return
        if client.txn.state is not State.PROCEEDING:
            return  # no provisional yet (sent on the first one) or already final
        forward.state = sent
        invite = client.txn.request
        h = invite.headers
        entries = [("Via", split_list(h.get("Via") or "")[0])]
        entries += [("Route", r) for r in h.get_all("Route")]
        entries += [
            ("Max-Forwards", "70"), ("From", h.get("From") or ""), ("To", h.get("To") or ""),
            ("Call-ID", invite.call_id), ("CSeq", f"{invite.cseq.number} CANCEL"),
        ]
        self.io.forward(SipRequest("CANCEL", invite.uri, Headers(entries)), client.peer, None)

    def _cancel_expired(self, forward: Forward) -> None:
        self._timers.discard(forward.timer)  # type: ignore[arg-type]
        forward.timer = None
        if forward.final:
            return
        if forward.client is not None:
            self.io.abandon(forward.client)
        self._unanswered(forward, 487)
        self._final(forward, 487)

    def _ring_timeout(self, forward: Forward) -> None:
        self._timers.discard(forward.timer)  # type: ignore[arg-type]
        forward.timer = None
        call = forward.call
        if forward.state is not Forwarding.RELAYING or call is None \
                or call.answered_at is not None:
            return
        forward.outcome = Outcome.NO_ANSWER
        forward.state = Forwarding.GIVING_UP
        self._send_cancel(forward)
        self._unanswered(forward, 480, f"no answer within {self.ring_timeout:g} s")
        self._final(forward, 480, headers=[("Retry-After", str(self.retry_after))],
                    then=forward.state)

    def _hang_up_late_answer(self, client: ClientTxn, response: SipResponse) -> None:
        """ACK and BYE a 2xx that arrived after we answered the caller ourselves."""
        invite = client.txn.request
        h = invite.headers
        to = response.headers.get("To") or h.get("To") or ""
        try:
            contacts = response.contacts
            uri = contacts[0].uri if contacts else invite.uri
        except RemoteProtocolError:
            uri = invite.uri
        number = invite.cseq.number
        for method, cseq in (("ACK", number), ("BYE", number + 1)):
            headers = Headers([
                ("Via", f"SIP/2.0/{client.peer.transport} {self.sent_by};branch={new_branch()}"),
                ("Max-Forwards", "70"), ("From", h.get("From") or ""), ("To", to),
                ("Call-ID", invite.call_id), ("CSeq", f"{cseq} {method}"),
            ])
            request = SipRequest(method, uri, headers)
            if method == "ACK":
                self.io.send(request, client.peer)
            else:
                self.io.forward(request, client.peer, None)

    # ---- call records --------------------------------------------------------------------------

    def _unanswered(self, forward: Forward, status: int, reason: str | None = None, *,
                    detail: str | None = None) -> None:
        """The call ends before anyone answered: record why (the core frees the agent)."""
        call = forward.call
        if call is None or call.ended or call.answered_at is not None:
            return
        call.state = CallState.ENDED
        self._forget_call(call)
        if forward.outcome is Outcome.CANCELLED:
            self._count("cancelled")
            self._event(call, "ended", detail="caller hung up before answer")
        elif forward.outcome is Outcome.NO_ANSWER:
            self._count("no-answer")
            self._event(call, "failed", agent_id=call.agent_id, detail=reason)
        elif detail is not None:  # nobody took it, or the agent's phone cannot be reached
            self._event(call, "failed", detail=detail)
        else:
            self._count("failed")
            detail = f"agent's phone answered {status}" + (f" {reason}" if reason else "")
            self._event(call, "failed", agent_id=call.agent_id, detail=detail)

    def _end(self, call: Call, detail: str) -> None:
        """A BYE (either side) or the sweep ends an answered call."""
        if call.ended:
            return
        call.state = CallState.ENDED
        self._forget_call(call)
        self.metrics.dialogs.dec()
        duration = time.monotonic() - (call.answered_at or time.monotonic())
        self._event(call, "ended", agent_id=call.agent_id, duration=duration, detail=detail)

    def _sweep(self) -> None:
        deadline = time.monotonic() - MAX_DIALOG_SECONDS
        for call in [c for c in self.dialogs.values()
                     if c.answered_at is not None and c.answered_at < deadline]:
            self._end(call, "no BYE seen; forgotten")
        self._sweeper = self.io.later(_SWEEP_EVERY, self._sweep)

    def _event(self, call: Call, kind: CallEventKind, *, agent_id: str | None = None,
               duration: float | None = None, detail: str | None = None) -> None:
        if call.leg_id is None:
            return  # the core never opened a leg for it (refused, or it failed first)
        event = CallEvent(call_ref=call.call_id, provider="sip", kind=kind, agent_id=agent_id,
                          duration_seconds=duration, detail=detail, leg_id=call.leg_id)
        self.io.spawn(self._record(event), "sip-call-event")

    async def _record(self, event: CallEvent) -> None:
        try:
            if not await self.sink.call_event(event):
                log.warning("SIP: call %s is unknown to the core; %s not recorded",
                            event.call_ref, event.kind)
        except Exception:
            log.exception("SIP: recording %s of call %s failed", event.kind, event.call_ref)

    def _count(self, outcome: str) -> None:
        self.metrics.calls.labels("sip", outcome).inc()

    # ---- small helpers ------------------------------------------------------------------------

    def _final(self, forward: Forward, status: int,
               headers: Iterable[tuple[str, str]] = (), *,
               then: Forwarding = Forwarding.ANSWERED, reason: str | None = None) -> None:
        """Answer the caller ourselves (`then`: the state after, a final one)."""
        self._stop_timer(forward)
        forward.state = then
        self.io.reply(forward.server, status, reason, headers=headers)

    def _refused(self, server: ServerTxn, status: int, reason: str | None = None) -> None:
        """Refuse a request that would take us somewhere we do not relay to."""
        self._relay_refused.inc()
        self.io.reply(server, status, reason)

    def _later(self, delay: float, callback: Callable[[Forward], None],
               forward: Forward) -> asyncio.TimerHandle:
        handle = self.io.later(delay, callback, forward)
        self._timers.add(handle)
        return handle

    def _stop_timer(self, forward: Forward) -> None:
        if forward.timer is not None:
            forward.timer.cancel()
            self._timers.discard(forward.timer)
            forward.timer = None


def _upstream(response: SipResponse, *, final_error: bool = False) -> SipResponse:
    """The response for the previous hop: our Via removed (RFC 3261 16.7 step 3). A 503 from
    an agent's phone is about the phone, not us: upstream it becomes 500 (16.7 step 6)."""
    headers = response.headers.copy()
    headers.pop_first_value("Via")
    if final_error and response.status == 503:
        return SipResponse(500, "Server Internal Error", headers, response.body)
    return SipResponse(response.status, response.reason, headers, response.body)


def _peer_of(uri: SipUri) -> Peer | None:
    """The peer a URI names when its host is an IP address (names need a resolver)."""
    host = uri.host
    if host[:1] == "[":
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    maddr = uri.param("maddr")
    if maddr:
        host = maddr
    return Peer("TCP" if uri.transport == "tcp" else "UDP", host, uri.port or 5060)


def _peer_of_via(via: Via) -> Peer | None:
    host = via.received or via.host
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    try:
        port = via.rport or via.port or 5060
    except RemoteProtocolError:
        port = via.port or 5060
    return Peer("TCP" if via.transport == "TCP" else "UDP", host.strip("[]"), port)

