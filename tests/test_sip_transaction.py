"""SIP transaction state machines (`connectors/sip/transaction.py`) driven by a fake clock:
retransmission intervals, timeouts, absorption of retransmits, RFC 6026 Accepted, matching."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from connectors.sip.answers import make_response
from connectors.sip.errors import LocalProtocolError
from connectors.sip.framing import parse_datagram
from connectors.sip.message import SipRequest, SipResponse
from connectors.sip.transaction import (
    CLIENT_INVITE,
    CLIENT_NON_INVITE,
    SERVER_INVITE,
    SERVER_NON_INVITE,
    CancelTimer,
    ClientTransaction,
    MessageReceived,
    PassToTu,
    Send,
    ServerTransaction,
    StartTimer,
    State,
    Step,
    Terminated,
    Timer,
    TimerConfig,
    TimerFired,
    TransportFailed,
    TuSend,
    TuTimeout,
    TuTransportError,
    cancel_target_key,
    client_key,
    make_ack,
    server_key,
)


def request_bytes(method: str, branch: str = "z9hG4bK74bf9", cseq: int = 1) -> bytes:
    return (
        f"{method} sip:agent@192.0.2.20:5070 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "Route: <sip:proxy.example.com;lr>\r\n"
        "From: Gateway <sip:gateway@192.0.2.10>;tag=9fxced76sl\r\n"
        "To: Agent <sip:agent@example.com>\r\n"
        "Call-ID: 3848276298220188511@192.0.2.10\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def req(method: str, **kw: object) -> SipRequest:
    message = parse_datagram(request_bytes(method, **kw))  # type: ignore[arg-type]
    assert isinstance(message, SipRequest)
    return message


def answer(request: SipRequest, status: int, tag: str = "agent1") -> SipResponse:
    return make_response(request, status, to_tag=tag)


@dataclass
class Clock:
    """Runs one transaction: performs its timer actions on a fake timeline and records the
    rest with the time they happened."""

    txn: ClientTransaction | ServerTransaction
    now: float = 0.0
    timers: dict[Timer, float] = field(default_factory=dict)  # timer -> when it fires
    log: list[tuple[float, object]] = field(default_factory=list)

    def apply(self, actions: list) -> list:
        for action in actions:
            if isinstance(action, StartTimer):
                self.timers[action.timer] = self.now + action.delay
            elif isinstance(action, CancelTimer):
                self.timers.pop(action.timer, None)
            else:
                self.log.append((self.now, action))
        return actions

    def start(self) -> list:
        return self.apply(self.txn.start())

    def feed(self, event: object) -> list:
        return self.apply(self.txn.handle(event))  # type: ignore[arg-type]

    def run_until(self, end: float) -> None:
        while self.timers:
            timer, when = min(self.timers.items(), key=lambda kv: (kv[1], kv[0]))
            if when > end:
                break
            del self.timers[timer]
            self.now = when
            self.feed(TimerFired(timer))
        self.now = max(self.now, end)

    def sent(self) -> list[tuple[float, SipRequest | SipResponse]]:
        return [(t, a.message) for t, a in self.log if isinstance(a, Send)]

    def send_times(self) -> list[float]:
        return [t for t, _ in self.sent()]

    def timeouts(self) -> list[tuple[float, TuTimeout]]:
        return [(t, a) for t, a in self.log if isinstance(a, TuTimeout)]

    def of(self, kind: type) -> list:
        return [a for _, a in self.log if isinstance(a, kind)]


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in zip(times, times[1:])]


# --- client INVITE ------------------------------------------------------------------------


def test_client_invite_over_udp_retransmits_doubling_until_timer_b_at_64_t1() -> None:
    clock = Clock(ClientTransaction(req("INVITE"), reliable=False))
    clock.start()
    clock.run_until(100)
    assert gaps(clock.send_times()) == [0.5, 1, 2, 4, 8, 16]  # Timer A doubles, no cap
    assert clock.of(TuTimeout) == [TuTimeout(Timer.B)]
    assert [t for t, a in clock.log if isinstance(a, TuTimeout)] == [32.0]  # 64*T1
    assert clock.txn.state is State.TERMINATED and clock.of(Terminated) == [Terminated()]
    assert clock.timers == {}


def test_client_invite_provisional_stops_retransmission_and_timer_b() -> None:
    invite = req("INVITE")
    clock = Clock(ClientTransaction(invite, reliable=False))
    clock.start()
    clock.run_until(0.7)
    actions = clock.feed(MessageReceived(answer(invite, 180)))
    assert PassToTu(answer(invite, 180)) in actions
    assert clock.txn.state is State.PROCEEDING and clock.timers == {}
    clock.run_until(1000)
    assert len(clock.sent()) == 2 and clock.of(TuTimeout) == []  # the TU owns the wait now


def test_client_invite_non_2xx_is_acked_and_retransmits_absorbed_for_timer_d() -> None:
    invite = req("INVITE")
    clock = Clock(ClientTransaction(invite, reliable=False))
    clock.start()
    busy = answer(invite, 486)
    clock.feed(MessageReceived(busy))
    ack = clock.sent()[-1][1]
    assert isinstance(ack, SipRequest) and ack == make_ack(invite, busy)
    assert clock.txn.state is State.COMPLETED and clock.timers == {Timer.D: 32.0}
    clock.now = 1.0
    actions = clock.feed(MessageReceived(busy))  # the 486 again: ACK again, TU not told
    assert [type(a) for a in actions] == [Send] and actions[0].message == ack
    assert len(clock.of(PassToTu)) == 1
    clock.run_until(40)
    assert clock.txn.state is State.TERMINATED


def test_ack_for_non_2xx_follows_rfc_3261_17_1_1_3() -> None:
    invite = req("INVITE")
    busy = answer(invite, 486, tag="t486")
    ack = make_ack(invite, busy)
    assert (ack.method, ack.uri) == ("ACK", invite.uri)
    assert ack.headers.get_all("Via") == ["SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK74bf9;rport"]
    assert ack.headers.get_all("Route") == ["<sip:proxy.example.com;lr>"]
    assert ack.to_addr.tag == "t486" and ack.from_addr == invite.from_addr
    assert (ack.cseq.number, ack.cseq.method) == (invite.cseq.number, "ACK")
    assert ack.call_id == invite.call_id
    assert server_key(ack) == server_key(invite)  # it finds the INVITE server transaction


def test_client_invite_2xx_goes_to_accepted_and_passes_every_2xx_until_timer_m() -> None:
    invite = req("INVITE")
    clock = Clock(ClientTransaction(invite, reliable=False))
    clock.start()
    ok = answer(invite, 200)
    clock.feed(MessageReceived(ok))
    assert clock.txn.state is State.ACCEPTED and clock.timers == {Timer.M: 32.0}
    clock.now = 2.0
    assert clock.feed(MessageReceived(ok)) == [PassToTu(ok)]  # the TU ACKs 2xx itself
    forked = answer(invite, 200, tag="other-branch")
    assert clock.feed(MessageReceived(forked)) == [PassToTu(forked)]
    assert clock.feed(MessageReceived(answer(invite, 180))) == []
    assert all(isinstance(m, SipRequest) and m.method == "INVITE" for _, m in clock.sent())
    clock.run_until(40)
    assert clock.txn.state is State.TERMINATED


def test_client_invite_over_tcp_never_retransmits_and_timer_d_is_zero() -> None:
    invite = req("INVITE")
    clock = Clock(ClientTransaction(invite, reliable=True))
    clock.start()
    assert clock.timers == {Timer.B: 32.0}  # no Timer A on a reliable transport
    actions = clock.feed(MessageReceived(answer(invite, 503)))
    assert clock.txn.state is State.TERMINATED
    assert [type(a) for a in actions] == [PassToTu, Send, CancelTimer, Terminated]
    assert actions[2] == CancelTimer(Timer.B)


def test_client_transport_error_terminates_and_tells_the_tu() -> None:
    clock = Clock(ClientTransaction(req("INVITE"), reliable=False))
    clock.start()
    actions = clock.feed(TransportFailed("ICMP port unreachable"))
    assert TuTransportError("ICMP port unreachable") in actions
    assert CancelTimer(Timer.A) in actions and CancelTimer(Timer.B) in actions
    assert clock.txn.state is State.TERMINATED and clock.timers == {}


# --- client non-INVITE --------------------------------------------------------------------


def test_client_non_invite_retransmits_500ms_1s_2s_4s_4s_until_timer_f() -> None:
    clock = Clock(ClientTransaction(req("OPTIONS"), reliable=False))
    clock.start()
    clock.run_until(100)
    assert gaps(clock.send_times()) == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    assert clock.timeouts() == [(32.0, TuTimeout(Timer.F))]
    assert clock.txn.state is State.TERMINATED


def test_client_non_invite_in_proceeding_retransmits_every_t2() -> None:
    bye = req("BYE")
    clock = Clock(ClientTransaction(bye, reliable=False))
    clock.start()
    clock.run_until(0.6)  # one retransmission at 0.5
    clock.feed(MessageReceived(answer(bye, 100)))
    assert clock.txn.state is State.PROCEEDING
    clock.run_until(14)
    # Timer E was running with 1 s; it fires at 1.5, then every T2 = 4 s
    assert clock.send_times() == [0, 0.5, 1.5, 5.5, 9.5, 13.5]
    clock.feed(MessageReceived(answer(bye, 200)))
    assert clock.txn.state is State.COMPLETED and clock.timers == {Timer.K: 14 + 5.0}
    assert clock.feed(MessageReceived(answer(bye, 200))) == []  # retransmitted final absorbed
    clock.run_until(30)
    assert clock.txn.state is State.TERMINATED


def test_client_non_invite_over_tcp_completes_at_once() -> None:
    register = req("REGISTER")
    clock = Clock(ClientTransaction(register, reliable=True))
    clock.start()
    assert clock.timers == {Timer.F: 32.0}
    clock.feed(MessageReceived(answer(register, 401)))
    assert clock.txn.state is State.TERMINATED  # Timer K is zero


def test_timer_values_are_configurable() -> None:
    timers = TimerConfig(t1=0.1, t2=0.4, t4=1.0)
    clock = Clock(ClientTransaction(req("OPTIONS"), reliable=False, timers=timers))
    clock.start()
    clock.run_until(100)
    assert gaps(clock.send_times()) == [0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4,
                                        0.4, 0.4, 0.4, 0.4, 0.4, 0.4]
    assert [t for t, a in clock.log if isinstance(a, TuTimeout)] == [pytest.approx(6.4)]
    with pytest.raises(LocalProtocolError):
        TimerConfig(t1=5, t2=4)


# --- server INVITE ------------------------------------------------------------------------


def test_server_invite_sends_100_trying_and_resends_it_for_retransmissions() -> None:
    invite = req("INVITE")
    clock = Clock(ServerTransaction(invite, reliable=False))
    actions = clock.start()
    trying = actions[0].message
    assert isinstance(trying, SipResponse) and trying.status == 100
    assert trying.to_addr.tag is None
    assert actions[1] == PassToTu(invite)
    assert clock.feed(MessageReceived(invite)) == [actions[0]]  # absorbed, 100 again
    ringing = answer(invite, 180)
    clock.feed(TuSend(ringing))
    assert clock.feed(MessageReceived(invite))[0].message == ringing  # the latest provisional
    assert len(clock.of(PassToTu)) == 1  # the TU saw the INVITE once


def test_server_invite_failure_is_retransmitted_until_ack_then_confirmed() -> None:
    invite = req("INVITE")
    clock = Clock(ServerTransaction(invite, reliable=False))
    clock.start()
    busy = answer(invite, 486)
    clock.feed(TuSend(busy))
    assert clock.txn.state is State.COMPLETED
    clock.run_until(10)
    finals = [t for t, m in clock.sent() if isinstance(m, SipResponse) and m.status == 486]
    assert gaps(finals) == [0.5, 1, 2, 4]  # Timer G doubles, capped at T2
    assert clock.feed(MessageReceived(invite))[0].message == busy
    ack = make_ack(invite, busy)
    actions = clock.feed(MessageReceived(ack))
    assert clock.txn.state is State.CONFIRMED
    assert CancelTimer(Timer.G) in actions and CancelTimer(Timer.H) in actions
    assert clock.timers == {Timer.I: 15.0}  # T4 after the ACK at t=10
    assert clock.feed(MessageReceived(ack)) == []  # ACK retransmissions absorbed
    assert PassToTu(ack) not in clock.of(PassToTu)
    clock.run_until(20)
    assert clock.txn.state is State.TERMINATED


def test_server_invite_without_ack_times_out_on_timer_h() -> None:
    invite = req("INVITE")
    clock = Clock(ServerTransaction(invite, reliable=False))
    clock.start()
    clock.feed(TuSend(answer(invite, 404)))
    clock.run_until(100)
    finals = [t for t, m in clock.sent() if isinstance(m, SipResponse) and m.status == 404]
    assert gaps(finals) == [0.5, 1, 2, 4, 4, 4, 4, 4, 4, 4]
    assert clock.timeouts() == [(32.0, TuTimeout(Timer.H))]


def test_server_invite_2xx_enters_accepted_and_absorbs_invite_retransmits() -> None:
    invite = req("INVITE")
    clock = Clock(ServerTransaction(invite, reliable=False))
    clock.start()
    ok = answer(invite, 200)
    clock.feed(TuSend(ok))
    assert clock.txn.state is State.ACCEPTED and clock.timers == {Timer.L: 32.0}
    assert clock.feed(MessageReceived(invite)) == []  # RFC 6026: absorbed, not a new call
    assert clock.feed(TuSend(ok)) == [Send(ok, ok.to_bytes())]  # the TU's 2xx retransmit
    with pytest.raises(LocalProtocolError):
        clock.feed(TuSend(answer(invite, 486)))
    clock.run_until(40)
    assert clock.txn.state is State.TERMINATED
    with pytest.raises(LocalProtocolError):
        clock.feed(TuSend(ok))


def test_server_invite_over_tcp_sends_no_retransmissions_and_timer_i_is_zero() -> None:
    invite = req("INVITE")
    clock = Clock(ServerTransaction(invite, reliable=True, send_trying=False))
    assert clock.start() == [PassToTu(invite)]
    busy = answer(invite, 486)
    clock.feed(TuSend(busy))
    assert clock.timers == {Timer.H: 32.0}  # no Timer G
    clock.feed(MessageReceived(make_ack(invite, busy)))
    assert clock.txn.state is State.TERMINATED


# --- server non-INVITE --------------------------------------------------------------------


def test_server_non_invite_absorbs_retransmits_and_answers_with_the_last_response() -> None:
    options = req("OPTIONS")
    clock = Clock(ServerTransaction(options, reliable=False))
    assert clock.start() == [PassToTu(options)]
    assert clock.feed(MessageReceived(options)) == []  # Trying: nothing to resend yet
    ok = answer(options, 200)
    clock.feed(TuSend(ok))
    assert clock.txn.state is State.COMPLETED and clock.timers == {Timer.J: 32.0}
    assert clock.feed(MessageReceived(options)) == [Send(ok, ok.to_bytes())]
    with pytest.raises(LocalProtocolError):
        clock.feed(TuSend(answer(options, 500)))
    clock.run_until(40)
    assert clock.txn.state is State.TERMINATED
    assert len(clock.of(PassToTu)) == 1


def test_server_non_invite_provisional_then_final() -> None:
    register = req("REGISTER")
    clock = Clock(ServerTransaction(register, reliable=True))
    clock.start()
    trying = answer(register, 100)
    clock.feed(TuSend(trying))
    assert clock.txn.state is State.PROCEEDING
    assert clock.feed(MessageReceived(register)) == [Send(trying, trying.to_bytes())]
    clock.feed(TuSend(answer(register, 200)))
    assert clock.txn.state is State.TERMINATED  # Timer J is zero over TCP


def test_server_transport_error_terminates() -> None:
    options = req("OPTIONS")
    clock = Clock(ServerTransaction(options, reliable=False))
    clock.start()
    clock.feed(TuSend(answer(options, 200)))
    actions = clock.feed(TransportFailed("connection reset"))
    assert TuTransportError("connection reset") in actions
    assert clock.txn.state is State.TERMINATED and clock.timers == {}


# --- lifecycle rules ----------------------------------------------------------------------


def test_stale_timers_and_events_before_start_are_handled() -> None:
    invite = req("INVITE")
    txn = ClientTransaction(invite, reliable=False)
    with pytest.raises(LocalProtocolError):
        txn.handle(TimerFired(Timer.A))
    txn.start()
    assert txn.handle(TimerFired(Timer.D)) == []  # never started
    txn.handle(MessageReceived(answer(invite, 180)))
    assert txn.handle(TimerFired(Timer.A)) == []  # cancelled by the 180
    with pytest.raises(LocalProtocolError):
        txn.start()
    with pytest.raises(LocalProtocolError):
        txn.handle(TuSend(answer(invite, 200)))  # a client takes no TU response
    with pytest.raises(LocalProtocolError):
        ClientTransaction(req("ACK"), reliable=False)
    with pytest.raises(LocalProtocolError):
        ServerTransaction(req("ACK"), reliable=False)


def test_terminated_transactions_ignore_the_network() -> None:
    options = req("OPTIONS")
    txn = ClientTransaction(options, reliable=True)
    txn.start()
    txn.handle(MessageReceived(answer(options, 200)))
    assert txn.state is State.TERMINATED
    assert txn.handle(MessageReceived(answer(options, 200))) == []
    assert txn.handle(TransportFailed("late")) == []


# --- the tables themselves ----------------------------------------------------------------

TABLES = {
    "client INVITE": (CLIENT_INVITE, {Timer.A, Timer.B, Timer.D, Timer.M}),
    "client non-INVITE": (CLIENT_NON_INVITE, {Timer.E, Timer.F, Timer.K}),
    "server INVITE": (SERVER_INVITE, {Timer.G, Timer.H, Timer.I, Timer.L}),
    "server non-INVITE": (SERVER_NON_INVITE, {Timer.J}),
}


@pytest.mark.parametrize("name", TABLES)
def test_table_invariants(name: str) -> None:
    table, own_timers = TABLES[name]
    states = {s for s, _ in table} | {t for t, _ in table.values()}
    # INIT only starts; TERMINATED is final
    assert [e for s, e in table if s is State.INIT] == ["start"]
    assert not any(s is State.TERMINATED for s, _ in table)
    assert State.INIT not in {t for t, _ in table.values()}
    # every state is reachable from INIT
    reachable, frontier = {State.INIT}, [State.INIT]
    while frontier:
        here = frontier.pop()
        for (s, _), (t, _) in table.items():
            if s is here and t not in reachable:
                reachable.add(t)
                frontier.append(t)
    assert reachable == states
    # each machine uses its own timers only, and reacts to every timer it starts
    started = {t for _, ops in table.values() for step, t in ops if step is Step.START}
    assert started == own_timers
    for (state, event), (_, ops) in table.items():
        for step, timer in ops:
            if step is Step.START:
                assert any(e == f"timer {timer}" for _, e in table), (state, event, timer)
    # the states the RFC names, and no others
    expected = {
        "client INVITE": {"Calling", "Proceeding", "Completed", "Accepted", "Terminated"},
        "client non-INVITE": {"Trying", "Proceeding", "Completed", "Terminated"},
        "server INVITE": {"Proceeding", "Completed", "Confirmed", "Accepted", "Terminated"},
        "server non-INVITE": {"Trying", "Proceeding", "Completed", "Terminated"},
    }[name]
    assert {str(s) for s in states} - {"Init"} == expected


@pytest.mark.parametrize("name", TABLES)
def test_every_non_terminal_state_but_invite_proceeding_has_a_timer_way_out(name: str) -> None:
    table, _ = TABLES[name]
    for state in {s for s, _ in table} - {State.INIT}:
        exits = [e for s, e in table if s is state and e.startswith("timer ")]
        if state is State.PROCEEDING and "INVITE" in name and "non" not in name:
            continue  # invariant 6: the TU (CANCEL, Timer C, its own answer) ends the wait
        if name == "server non-INVITE" and state in (State.TRYING, State.PROCEEDING):
            continue  # waiting on the TU, which must answer
        assert exits, (name, state)


# --- matching -----------------------------------------------------------------------------


def test_client_key_matches_responses_by_branch_and_cseq_method() -> None:
    invite = req("INVITE")
    assert client_key(answer(invite, 180)) == client_key(invite) == ClientTransaction(
        invite, reliable=False).key
    cancel = req("CANCEL")  # same branch as the INVITE, as RFC 3261 9.1 requires
    assert client_key(answer(cancel, 200)) == client_key(cancel) != client_key(invite)


def test_server_key_rfc_3261_branch_sent_by_and_method() -> None:
    invite = req("INVITE")
    assert server_key(invite) == ("server", "z9hG4bK74bf9", "192.0.2.10:5060", "INVITE")
    assert server_key(parse_datagram(request_bytes("INVITE").replace(b"192.0.2.10:5060",
                                                                      b"192.0.2.11:5060"))) \
        != server_key(invite)
    cancel = req("CANCEL")
    assert server_key(cancel) != server_key(invite)  # its own transaction...
    assert cancel_target_key(cancel) == server_key(invite)  # ...that finds the INVITE's
    assert server_key(req("INVITE", branch="z9hG4bKother")) != server_key(invite)


def test_server_key_falls_back_to_rfc_2543_matching_without_a_cookie() -> None:
    for branch in ("z9hG4bK", "1234-old-style"):  # RFC 4475 badbranch, RFC 2543 peer
        invite = req("INVITE", branch=branch)
        key = server_key(invite)
        assert key[0] == "server-2543"
        busy = answer(invite, 486)
        assert server_key(make_ack(invite, busy)) == key  # the ACK still matches
        assert cancel_target_key(req("CANCEL", branch=branch)) == key
        assert server_key(req("INVITE", branch=branch, cseq=2)) != key


def test_server_key_with_the_source_keeps_strangers_out_of_a_transaction() -> None:
    invite, cancel = req("INVITE"), req("CANCEL")
    mine = server_key(invite, source="192.0.2.10")
    assert mine == (*server_key(invite), "192.0.2.10")
    assert server_key(invite, source="203.0.113.66") != mine  # the same branch copied
    assert cancel_target_key(cancel, source="192.0.2.10") == mine
    assert cancel_target_key(cancel, source="203.0.113.66") != mine
    assert ServerTransaction(invite, reliable=False, source="192.0.2.10").key == mine
    old = req("INVITE", branch="1234-old-style")
    assert server_key(old, source="a") != server_key(old, source="b")
