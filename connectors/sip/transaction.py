"""SIP transactions (RFC 3261 section 17, with the Accepted state of RFC 6026) as data.

Sits between the SIP transports and the UA core (the TU) of the SIP edge. The edge feeds a
transaction events (a message received, a timer fired, a response from the TU, a transport
failure) and performs the actions it gets back (send, start or cancel a timer, hand a
message or a timeout to the TU). No sockets and no clock, so tests drive it with a fake one.

Invariants of the four tables below (tests/test_sip_transaction.py checks them):
1. Every move is a row (state, event) -> (next state, steps). A pair without a row is
   absorbed (no step, no move), except an event from the TU, which raises
   LocalProtocolError: the TU broke the protocol, e.g. a second final response.
2. INIT has only the "start" row; TERMINATED has no rows, so a terminated transaction
   ignores the network and refuses the TU.
3. Entering TERMINATED cancels every running timer and yields `Terminated` exactly once.
4. Retransmission timers (A, E, G) run only over unreliable transports; timers that are
   zero over reliable ones (D, I, J, K) fire within the same call, so a TCP transaction
   goes from Completed to Terminated at once (RFC 3261 17.1.1.2, 17.1.2.2, 17.2.1, 17.2.2).
5. A timer firing that is not running (never started, cancelled, already fired) is ignored.
6. Only the TU ends the wait in the INVITE Proceeding states (RFC 3261 leaves Timer C and
   CANCEL to it); every other non-terminal state is left by a timer at the latest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import ClassVar, Final, TypeAlias

from connectors.sip.answers import make_response
from connectors.sip.errors import LocalProtocolError
from connectors.sip.grammar import MAGIC_COOKIE, split_list
from connectors.sip.headers import Headers
from connectors.sip.message import SipMessage, SipRequest, SipResponse

__all__ = [
    "Action",
    "CLIENT_INVITE",
    "CLIENT_NON_INVITE",
    "CancelTimer",
    "ClientTransaction",
    "Event",
    "MessageReceived",
    "PassToTu",
    "SERVER_INVITE",
    "SERVER_NON_INVITE",
    "Send",
    "ServerTransaction",
    "StartTimer",
    "State",
    "Terminated",
    "Timer",
    "TimerConfig",
    "TimerFired",
    "TransactionKey",
    "TransportFailed",
    "TuSend",
    "TuTimeout",
    "TuTransportError",
    "cancel_target_key",
    "client_key",
    "make_ack",
    "server_key",
]


class State(StrEnum):
    INIT = "Init"
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class Timer(StrEnum):
    A = "A"  # INVITE client: request retransmit, doubling
    B = "B"  # INVITE client: transaction timeout
    D = "D"  # INVITE client: wait for response retransmits after ACK
    E = "E"  # non-INVITE client: request retransmit, doubling up to T2
    F = "F"  # non-INVITE client: transaction timeout
    G = "G"  # INVITE server: final response retransmit, doubling up to T2
    H = "H"  # INVITE server: wait for ACK
    I = "I"  # noqa: E741 -- RFC name. INVITE server: absorb ACK retransmits
    J = "J"  # non-INVITE server: absorb request retransmits
    K = "K"  # non-INVITE client: absorb response retransmits
    L = "L"  # INVITE server, RFC 6026: absorb INVITE retransmits after 2xx
    M = "M"  # INVITE client, RFC 6026: collect 2xx retransmits and forks


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """RFC 3261 17.1.1.1 timer values in seconds (T1 RTT estimate, T2 cap, T4 network life)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_d: float = 32.0  # "at least 32 seconds" over unreliable transports

    def __post_init__(self) -> None:
        if not 0 < self.t1 <= self.t2 or self.t4 <= 0 or self.timer_d < 0:
            raise LocalProtocolError(f"timer values must satisfy 0 < T1 <= T2, T4 > 0: {self}")

    def initial(self, timer: Timer, reliable: bool) -> float | None:
        """How long `timer` first runs; None when it is not used on this transport."""
        t1x64 = 64 * self.t1
        match timer:
            case Timer.A | Timer.E | Timer.G:
                return None if reliable else self.t1
            case Timer.B | Timer.F | Timer.H | Timer.L | Timer.M:
                return t1x64
            case Timer.D:
                return 0.0 if reliable else self.timer_d
            case Timer.I | Timer.K:
                return 0.0 if reliable else self.t4
            case Timer.J:
                return 0.0 if reliable else t1x64


# --- events in, actions out ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A message the transport matched to this transaction (a response, or for a server a
    retransmitted request or an ACK)."""

    message: SipMessage


@dataclass(frozen=True, slots=True)
class TimerFired:
    timer: Timer


@dataclass(frozen=True, slots=True)
class TuSend:
    """The TU sends a response through a server transaction."""

    response: SipResponse


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """Sending failed (ICMP unreachable, connection refused or reset; RFC 3261 17.1.4)."""

    reason: str


Event: TypeAlias = MessageReceived | TimerFired | TuSend | TransportFailed


@dataclass(frozen=True, slots=True)
class Send:
    """Hand `data` (the serialized `message`) to the transport."""

    message: SipMessage
    data: bytes


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Start (or restart) `timer`; when it fires, feed TimerFired(timer)."""

    timer: Timer
    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True, slots=True)
class PassToTu:
    """Give `message` to the TU (a new request, or a response worth its attention)."""

    message: SipMessage


@dataclass(frozen=True, slots=True)
class TuTimeout:
    """The transaction timed out (Timer B, F or H); for a client, act as on a 408."""

    timer: Timer


@dataclass(frozen=True, slots=True)
class TuTransportError:
    reason: str


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction is over: forget it (and its key)."""


Action: TypeAlias = (
    Send | StartTimer | CancelTimer | PassToTu | TuTimeout | TuTransportError | Terminated
)


# --- the tables ---------------------------------------------------------------------------


class Step(Enum):
    SEND_REQUEST = "send the request (again)"
    SEND_ACK = "send the ACK for a non-2xx final response (again)"
    SEND_TRYING = "send 100 Trying"
    SEND_RESPONSE = "send the TU's response and keep it"
    RESEND_RESPONSE = "send the last response again"
    PASS_TO_TU = "pass the message to the TU"
    TIMEOUT = "tell the TU it timed out"
    TRANSPORT_ERROR = "tell the TU the transport failed"
    START = "start the timer at its initial value"
    BACKOFF = "restart the timer at twice its last value (E and G capped at T2)"
    START_T2 = "restart the timer at T2"
    CANCEL = "cancel the timer"


Op: TypeAlias = tuple[Step, Timer | None]
Table: TypeAlias = Mapping[tuple[State, str], tuple[State, tuple[Op, ...]]]


def _do(step: Step) -> Op:
    return (step, None)


def start(timer: Timer) -> Op:
    return (Step.START, timer)


def backoff(timer: Timer) -> Op:
    return (Step.BACKOFF, timer)


def cancel(timer: Timer) -> Op:
    return (Step.CANCEL, timer)


SEND_REQUEST, SEND_ACK, SEND_TRYING = _do(Step.SEND_REQUEST), _do(Step.SEND_ACK), _do(
    Step.SEND_TRYING
)
SEND_RESPONSE, RESEND_RESPONSE = _do(Step.SEND_RESPONSE), _do(Step.RESEND_RESPONSE)
PASS_TO_TU, TIMEOUT, TRANSPORT_ERROR = _do(Step.PASS_TO_TU), _do(Step.TIMEOUT), _do(
    Step.TRANSPORT_ERROR
)

# Event names: "start", "1xx", "2xx", "3xx-6xx" (responses received), "request" (the
# request again), "ACK", "TU 1xx", "TU 2xx", "TU 3xx-6xx", "timer A".., "transport error".
S = State
A, B, D, M = Timer.A, Timer.B, Timer.D, Timer.M
E, F, K = Timer.E, Timer.F, Timer.K
G, H, I, L = Timer.G, Timer.H, Timer.I, Timer.L  # noqa: E741
J = Timer.J

CLIENT_INVITE: Final[Table] = {  # RFC 3261 17.1.1 figure 5, RFC 6026 figure 5
    (S.INIT, "start"): (S.CALLING, (SEND_REQUEST, start(A), start(B))),
    (S.CALLING, "timer A"): (S.CALLING, (SEND_REQUEST, backoff(A))),
    (S.CALLING, "timer B"): (S.TERMINATED, (TIMEOUT,)),
    (S.CALLING, "1xx"): (S.PROCEEDING, (PASS_TO_TU, cancel(A), cancel(B))),
    (S.CALLING, "2xx"): (S.ACCEPTED, (PASS_TO_TU, cancel(A), cancel(B), start(M))),
    (S.CALLING, "3xx-6xx"): (
        S.COMPLETED, (PASS_TO_TU, SEND_ACK, cancel(A), cancel(B), start(D))),
    (S.CALLING, "transport error"): (S.TERMINATED, (TRANSPORT_ERROR,)),
    (S.PROCEEDING, "1xx"): (S.PROCEEDING, (PASS_TO_TU,)),
    (S.PROCEEDING, "2xx"): (S.ACCEPTED, (PASS_TO_TU, start(M))),
    (S.PROCEEDING, "3xx-6xx"): (S.COMPLETED, (PASS_TO_TU, SEND_ACK, start(D))),
    (S.PROCEEDING, "transport error"): (S.TERMINATED, (TRANSPORT_ERROR,)),
    (S.COMPLETED, "3xx-6xx"): (S.COMPLETED, (SEND_ACK,)),
    (S.COMPLETED, "timer D"): (S.TERMINATED, ()),
    (S.COMPLETED, "transport error"): (S.TERMINATED, (TRANSPORT_ERROR,)),
    (S.ACCEPTED, "2xx"): (S.ACCEPTED, (PASS_TO_TU,)),  # retransmitted or forked 2xx
    (S.ACCEPTED, "timer M"): (S.TERMINATED, ()),
}

CLIENT_NON_INVITE: Final[Table] = {  # RFC 3261 17.1.2 figure 6
    (S.INIT, "start"): (S.TRYING, (SEND_REQUEST, start(E), start(F))),
    (S.TRYING, "timer E"): (S.TRYING, (SEND_REQUEST, backoff(E))),
    (S.TRYING, "timer F"): (S.TERMINATED, (TIMEOUT,)),
    (S.TRYING, "1xx"): (S.PROCEEDING, (PASS_TO_TU,)),
    (S.TRYING, "2xx"): (S.COMPLETED, (PASS_TO_TU, cancel(E), cancel(F), start(K))),
    (S.TRYING, "3xx-6xx"): (S.COMPLETED, (PASS_TO_TU, cancel(E), cancel(F), start(K))),
    (S.TRYING, "transport error"): (S.TERMINATED, (TRANSPORT_ERROR,)),
    (S.PROCEEDING, "timer E"): (S.PROCEEDING, (SEND_REQUEST, (Step.START_T2, E))),
    (S.PROCEEDING, "timer F"): (S.TERMINATED, (TIMEOUT,)),
    (S.PROCEEDING, "1xx"): (S.PROCEEDING, (PASS_TO_TU,)),
    (S.PROCEEDING, "2xx"): (S.COMPLETED, (PASS_TO_TU, cancel(E), cancel(F), start(K))),
    (S.PROCEEDING, "3xx-6xx"): (S.COMPLETED, (PASS_TO_TU, cancel(E), cancel(F), start(K))),
    (S.PROCEEDING, "transport error"): (S.TERMINATED, (TRANSPORT_ERROR,)),
    (S.COMPLETED, "timer K"): (S.TERMINATED, ()),
}

SERVER_INVITE: Final[Table] = {  # RFC 3261 17.2.1 figure 7, RFC 6026 figure 7
    (S.INIT, "start"): (S.PROCEEDING, (SEND_TRYING, PASS_TO_TU)),
    (S.PROCEEDING, "request"): (S.PROCEEDING, (RESEND_RESPONSE,)),
    (S.PROCEEDING, "TU 1xx"): (S.PROCEEDING, (SEND_RESPONSE,)),
    (S.PROCEEDING, "TU 2xx"): (S.ACCEPTED, (SEND_RESPONSE, start(L))),
    (S.PROCEEDING, "TU 3xx-6xx"): (S.COMPLETED, (SEND_RESPONSE, start(G), start(H))),
    (S.PROCEEDING, "transport error"): (S.TERMINATED, (TRANSPORT_ERROR,)),
    (S.COMPLETED, "request"): (S.COMPLETED, (RESEND_RESPONSE,)),
    (S.COMPLETED, "timer G"): (S.COMPLETED, (RESEND_RESPONSE, backoff(G))),
    (S.COMPLETED, "timer H"): (S.TERMINATED, (TIMEOUT,)),
    (S.COMPLETED, "ACK"): (S.CONFIRMED, (cancel(G), cancel(H), start(I))),
    (S.COMPLETED, "transport error"): (S.TERMINATED, (TRANSPORT_ERROR,)),
    (S.CONFIRMED, "timer I"): (S.TERMINATED, ()),
    # Accepted: INVITE retransmits are absorbed (the TU resends its 2xx), the TU's 2xx
    # retransmissions pass through, an ACK that matches goes to the TU.
    (S.ACCEPTED, "TU 2xx"): (S.ACCEPTED, (SEND_RESPONSE,)),
    (S.ACCEPTED, "ACK"): (S.ACCEPTED, (PASS_TO_TU,)),
    (S.ACCEPTED, "timer L"): (S.TERMINATED, ()),
    (S.ACCEPTED, "transport error"): (S.TERMINATED, (TRANSPORT_ERROR,)),
}

SERVER_NON_INVITE: Final[Table] = {  # RFC 3261 17.2.2 figure 8
    (S.INIT, "start"): (S.TRYING, (PASS_TO_TU,)),
    (S.TRYING, "TU 1xx"): (S.PROCEEDING, (SEND_RESPONSE,)),
    (S.TRYING, "TU 2xx"): (S.COMPLETED, (SEND_RESPONSE, start(J))),
    (S.TRYING, "TU 3xx-6xx"): (S.COMPLETED, (SEND_RESPONSE, start(J))),
    (S.PROCEEDING, "request"): (S.PROCEEDING, (RESEND_RESPONSE,)),
    (S.PROCEEDING, "TU 1xx"): (S.PROCEEDING, (SEND_RESPONSE,)),
    (S.PROCEEDING, "TU 2xx"): (S.COMPLETED, (SEND_RESPONSE, start(J))),
    (S.PROCEEDING, "TU 3xx-6xx"): (S.COMPLETED, (SEND_RESPONSE, start(J))),
    (S.PROCEEDING, "transport error"): (S.TERMINATED, (TRANSPORT_ERROR,)),
    (S.COMPLETED, "request"): (S.COMPLETED, (RESEND_RESPONSE,)),
    (S.COMPLETED, "timer J"): (S.TERMINATED, ()),
    (S.COMPLETED, "transport error"): (S.TERMINATED, (TRANSPORT_ERROR,)),
}


def _status_class(status: int) -> str:
    return "1xx" if status < 200 else "2xx" if status < 300 else "3xx-6xx"


# --- the interpreter ----------------------------------------------------------------------


class _Transaction:
    _is_server: ClassVar[bool]
    __slots__ = (
        "request", "reliable", "timers", "state", "key", "_table", "_compiled", "_running",
        "_intervals", "_request_data", "_last", "_ack", "_send_trying",
    )

    def __init__(
        self, request: SipRequest, table: Table, *, reliable: bool, timers: TimerConfig
    ) -> None:
        self.request = request
        self.reliable = reliable
        self.timers = timers
        self.state = State.INIT
        self._table = table
        self._compiled = _compiled(table)
        self._running: dict[Timer, float] = {}  # timers now running -> their interval
        self._intervals: dict[Timer, float] = {}  # last interval of each timer, for backoff
        self._request_data: bytes | None = None
        self._last: Send | None = None  # a server's last response, for retransmission
        self._ack: Send | None = None  # a client's ACK to a non-2xx response
        self._send_trying = False
        self.key: TransactionKey = ()

    @property
    def running_timers(self) -> frozenset[Timer]:
        return frozenset(self._running)

    def start(self) -> list[Action]:
        """Begin: a client sends its request, a server hands its request to the TU."""
        if self.state is not State.INIT:
            raise LocalProtocolError("transaction already started")
        return self._step("start", None)

    def handle(self, event: Event) -> list[Action]:
        if self.state is State.INIT:
            raise LocalProtocolError("call start() before feeding events")
        match event:
            case TimerFired(timer):
                if self._running.pop(timer, None) is None:
                    return []  # invariant 5: stale or cancelled
                return self._step(f"timer {timer}", timer)
            case TransportFailed():
                return self._step("transport error", event)
            case MessageReceived(message):
                kind = self._classify(message)
                return [] if kind is None else self._step(kind, message)
            case TuSend(response):
                if not self._is_server:
                    raise LocalProtocolError("a client transaction takes no response from the TU")
                return self._step("TU " + _status_class(response.status), response)
        raise LocalProtocolError(f"not a transaction event: {event!r}")

    def _classify(self, message: SipMessage) -> str | None:
        raise NotImplementedError

    def _step(self, kind: str, payload: object) -> list[Action]:
        row = self._compiled.get((self.state._name_, kind))
        if row is None:
            if kind.startswith("TU "):
                raise LocalProtocolError(
                    f"the TU cannot send a {kind[3:]} response in state {self.state}"
                )
            return []  # invariant 1: absorbed
        self.state, ops = row
        actions: list[Action] = []
        immediate: list[Timer] = []
        for apply, step, timer in ops:
            apply(self, step, timer, payload, actions, immediate)
        if self.state is State.TERMINATED:
            actions.extend(CancelTimer(t) for t in self._running)
            self._running.clear()
            actions.append(Terminated())
            return actions
        for timer in immediate:  # invariant 4: zero-length timers fire now
            if self.state is State.TERMINATED:
                break
            actions.extend(self._step(f"timer {timer}", timer))
        return actions

    # One method per Step, found through the compiled tables (below) rather than by matching
    # the step against each member in turn.

    def _send_request(self, step: Step, timer: Timer | None, payload: object,
                      actions: list[Action], immediate: list[Timer]) -> None:
        if self._request_data is None:
            self._request_data = self.request.to_bytes()
        actions.append(Send(self.request, self._request_data))

    def _send_ack(self, step: Step, timer: Timer | None, payload: object,
                  actions: list[Action], immediate: list[Timer]) -> None:
        if self._ack is None:
            assert isinstance(payload, SipResponse)
            ack = make_ack(self.request, payload)
            self._ack = Send(ack, ack.to_bytes())
        actions.append(self._ack)

    def _send_100(self, step: Step, timer: Timer | None, payload: object,
                  actions: list[Action], immediate: list[Timer]) -> None:
        if self._send_trying:
            trying = make_response(self.request, 100)
            self._last = Send(trying, trying.to_bytes())
            actions.append(self._last)

    def _send_response(self, step: Step, timer: Timer | None, payload: object,
                       actions: list[Action], immediate: list[Timer]) -> None:
        assert isinstance(payload, SipResponse)
        self._last = Send(payload, payload.to_bytes())
        actions.append(self._last)

    def _resend_response(self, step: Step, timer: Timer | None, payload: object,
                         actions: list[Action], immediate: list[Timer]) -> None:
        if self._last is not None:
            actions.append(self._last)

    def _pass_to_tu(self, step: Step, timer: Timer | None, payload: object,
                    actions: list[Action], immediate: list[Timer]) -> None:
        message = self.request if payload is None else payload
        assert isinstance(message, (SipRequest, SipResponse))
        actions.append(PassToTu(message))

    def _timeout(self, step: Step, timer: Timer | None, payload: object,
                 actions: list[Action], immediate: list[Timer]) -> None:
        assert isinstance(payload, Timer)
        actions.append(TuTimeout(payload))

    def _transport_error(self, step: Step, timer: Timer | None, payload: object,
                         actions: list[Action], immediate: list[Timer]) -> None:
        assert isinstance(payload, TransportFailed)
        actions.append(TuTransportError(payload.reason))

    def _start_timer(self, step: Step, timer: Timer | None, payload: object,
                     actions: list[Action], immediate: list[Timer]) -> None:
        assert timer is not None
        delay = self._delay(step, timer)
        if delay is None:
            return
        if delay == 0:
            immediate.append(timer)
            return
        self._running[timer] = self._intervals[timer] = delay
        actions.append(StartTimer(timer, delay))

    def _cancel_timer(self, step: Step, timer: Timer | None, payload: object,
                      actions: list[Action], immediate: list[Timer]) -> None:
        assert timer is not None
        if self._running.pop(timer, None) is not None:
            actions.append(CancelTimer(timer))

    def _delay(self, step: Step, timer: Timer) -> float | None:
        initial = self.timers.initial(timer, self.reliable)
        if initial is None or step is Step.START:
            return initial
        if step is Step.START_T2:
            return self.timers.t2
        doubled = 2 * self._intervals.get(timer, initial)
        return doubled if timer is Timer.A else min(doubled, self.timers.t2)


_Apply: TypeAlias = Callable[
    [_Transaction, Step, "Timer | None", object, list[Action], list[Timer]], None
]
_Compiled: TypeAlias = dict[
    tuple[str, str], tuple[State, tuple[tuple[_Apply, Step, "Timer | None"], ...]]
]

_APPLY: Final[dict[Step, _Apply]] = {
    Step.SEND_REQUEST: _Transaction._send_request,
    Step.SEND_ACK: _Transaction._send_ack,
    Step.SEND_TRYING: _Transaction._send_100,
    Step.SEND_RESPONSE: _Transaction._send_response,
    Step.RESEND_RESPONSE: _Transaction._resend_response,
    Step.PASS_TO_TU: _Transaction._pass_to_tu,
    Step.TIMEOUT: _Transaction._timeout,
    Step.TRANSPORT_ERROR: _Transaction._transport_error,
    Step.START: _Transaction._start_timer,
    Step.BACKOFF: _Transaction._start_timer,
    Step.START_T2: _Transaction._start_timer,
    Step.CANCEL: _Transaction._cancel_timer,
}
assert set(_APPLY) == set(Step)

def _compile(table: Table) -> _Compiled:
    """`table` as the interpreter runs it: the same rows, keyed by the state's name (a str
    hashes in C, an Enum member in Python), each step with its method."""
    return {
        (state._name_, kind): (after, tuple((_APPLY[step], step, timer) for step, timer in ops))
        for (state, kind), (after, ops) in table.items()
    }


_COMPILED: Final = {
    id(t): (t, _compile(t))
    for t in (CLIENT_INVITE, CLIENT_NON_INVITE, SERVER_INVITE, SERVER_NON_INVITE)
}


def _compiled(table: Table) -> _Compiled:
    known = _COMPILED.get(id(table))
    if known is not None and known[0] is table:
        return known[1]
    return _compile(table)


class ClientTransaction(_Transaction):
    """INVITE or non-INVITE client transaction for `request` (chosen by its method)."""

    __slots__ = ()
    _is_server = False

    def __init__(
        self, request: SipRequest, *, reliable: bool, timers: TimerConfig = TimerConfig()
    ) -> None:
        if request.method == "ACK":
            raise LocalProtocolError("ACK has no client transaction (RFC 3261 17.1)")
        table = CLIENT_INVITE if request.method == "INVITE" else CLIENT_NON_INVITE
        super().__init__(request, table, reliable=reliable, timers=timers)
        self.key = client_key(request)

    def _classify(self, message: SipMessage) -> str | None:
        if isinstance(message, SipResponse):
            return _status_class(message.status)
        return None


class ServerTransaction(_Transaction):
    """INVITE or non-INVITE server transaction for a received `request`.

    An INVITE transaction sends 100 Trying at once unless `send_trying` is False (RFC 3261
    17.2.1 allows skipping it when the TU answers within 200 ms).
    """

    __slots__ = ()
    _is_server = True

    def __init__(
        self,
        request: SipRequest,
        *,
        reliable: bool,
        timers: TimerConfig = TimerConfig(),
        send_trying: bool = True,
        source: str | None = None,
    ) -> None:
        if request.method == "ACK":
            raise LocalProtocolError("ACK creates no server transaction (RFC 3261 17.2)")
        table = SERVER_INVITE if request.method == "INVITE" else SERVER_NON_INVITE
        super().__init__(request, table, reliable=reliable, timers=timers)
        self._send_trying = send_trying
        self.key = server_key(request, source=source)

    def _classify(self, message: SipMessage) -> str | None:
        if isinstance(message, SipRequest):
            return "ACK" if message.method == "ACK" else "request"
        return None


# --- building the ACK ---------------------------------------------------------------------


def make_ack(request: SipRequest, response: SipResponse) -> SipRequest:
    """The ACK a client transaction sends for a non-2xx final response (RFC 3261 17.1.1.3):
    same Request-URI, Call-ID, From and CSeq number, the response's To (with its tag), the
    request's top Via only and its Route headers."""
    h = request.headers
    entries = [("Via", split_list(h.get("Via") or "")[0])]
    entries += [("Route", r) for r in h.get_all("Route")]
    entries += [
        ("Max-Forwards", "70"),
        ("From", h.get("From") or ""),
        ("To", response.headers.get("To") or h.get("To") or ""),
        ("Call-ID", request.call_id),
        ("CSeq", f"{request.cseq.number} ACK"),
    ]
    return SipRequest("ACK", request.uri, Headers(entries))


# --- matching -----------------------------------------------------------------------------

TransactionKey: TypeAlias = tuple[str, ...]


def client_key(message: SipMessage) -> TransactionKey:
    """Key of the client transaction a response belongs to (RFC 3261 17.1.3): the top Via
    branch and the CSeq method (so the 200 to a CANCEL does not match the INVITE).
    For a request, the key its client transaction is filed under."""
    method = message.method if isinstance(message, SipRequest) else message.cseq.method
    return ("client", message.top_via.branch or "", method)


def _has_rfc3261_branch(branch: str | None) -> bool:
    # A bare "z9hG4bK" (RFC 4475 badbranch) carries no identifier: match it RFC 2543 style.
    return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > 7


def server_key(request: SipRequest, *, method: str | None = None, source: str | None = None
               ) -> TransactionKey:
    """Key of the server transaction `request` belongs to (RFC 3261 17.2.3).

    With an RFC 3261 branch: branch, sent-by and method, where an ACK counts as INVITE (so
    the ACK for a non-2xx response finds its INVITE transaction). Without one, the RFC 2543
    fields: Request-URI, From tag, Call-ID, CSeq number, top Via and method (the To tag is
    left out, since the ACK's differs from the INVITE's).

    With `source` (the IP address the request came from) the key holds it too: the branch
    and sent-by are whatever the sender wrote, so without it a stranger who copies them
    could match another caller's transaction (a CANCEL that ends someone else's call). A
    retransmission, its ACK and its CANCEL come from the same previous hop.
    """
    via = request.top_via
    if method is None:
        method = "INVITE" if request.method == "ACK" else request.method
    if _has_rfc3261_branch(via.branch):
        if source is not None:
            return ("server", via.branch or "", via.sent_by.lower(), method, source)
        return ("server", via.branch or "", via.sent_by.lower(), method)
    return (
        "server-2543", request.uri, request.from_addr.tag or "", request.call_id,
        str(request.cseq.number), str(via), method, source or "",
    )


def cancel_target_key(cancel_request: SipRequest, *, source: str | None = None
                      ) -> TransactionKey:
    """Key of the INVITE server transaction a CANCEL cancels (RFC 3261 9.2): the CANCEL
    copies the INVITE's top Via, Request-URI, Call-ID, From and CSeq number."""
    return server_key(cancel_request, method="INVITE", source=source)
