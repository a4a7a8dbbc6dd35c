"""Benchmark: calls per second through the SIP edge, against Kamailio on the same SIPp pair.

Run by hand (not in CI):  .venv/bin/python bench/sip_cps.py [--step-seconds 10] [--registrar]
                              [--gateway-rates 100,200,...] [--kamailio-rates 1000,...]
                              [--delay-rate 100] [--dialogs 20000] [--skip-edge-only]
                              [--skip-single] [--skip-scale-out] [--skip-whole-edge]
                              [--event-loop auto|uvloop|asyncio] [--spans [--spans-rates 50]]
                              [--quick]

In one run, with SIPp's built-in uac (`-d 10`) placing calls on loopback and a SIPp UAS that
answers 200 without 180 (BASELINES.md: two relay workers may reorder 180/200), it drives
  (a) uac -> Kamailio (stateless forward(), children=2, -x tlsf) -> uas,
  (b) uac -> gateway (`python -m gateway serve`: SIP edge, core, SQLite, each call opened,
      answered and ended in the transcript) -> uas,
  (c) uac -> the SIP edge alone on a core that stores nothing -> uas: what SIP costs apart
      from the database,
and, for several gateways (issue 12; docs/scale-out.md), with a uac and UAS that keep the
route set (bench/sipp/):
  (d0) uac -> the repo's Kamailio dispatcher (config/kamailio/kamailio.cfg) -> uas,
  (b') uac -> one gateway on PostgreSQL -> uas,
  (d)  uac -> the same Kamailio dispatcher -> two gateways on one PostgreSQL -> uas,
  (e)  uac -> Kamailio as the whole SIP edge (bench/kamailio_whole_edge.cfg, a prototype)
       asking one gateway on PostgreSQL over HTTP for each call's route -> uas,
  (r)  with --registrar: issue 12's second option, Kamailio as registrar with usrloc on
       PostgreSQL (bench/kamailio_registrar.cfg, db_mode 3): REGISTERs of distinct users,
       then INVITEs looked up in the location table -> uas (Debian's kamailio-postgres-modules),
each relay in its own process, stepping the rate up (10 s of calls per step) until a step
fails (>= 0.1% of calls failed, or calls left unfinished), and reports the last clean step
of each, the ratio b/a (target >= 0.3) and b >= 1,000 CPS. It then measures the setup delay
(INVITE -> 200 at the UAC, SIPp -trace_rtt) at one moderate rate through each path and
directly (uac -> uas), and prints the p99 added by the gateway and by Kamailio (target < 5 ms).
With --spans, (d)'s gateways time each call's set-up (route, open_call, its write queued /
run / waiting for its commit, batch sizes, loop lag, GC pauses, PostgreSQL round trips a call)
and print them per step; --quick runs (d) alone for that. Last, memory per live dialog: N calls answered and never hung up on an edge in this process,
measured with tracemalloc once their transactions are gone (target < 10 KB).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.channels import CallOffer  # noqa: E402
from tests.peers import (  # noqa: E402
    UAS_ANSWER_WITHOUT_RINGING,
    Kamailio,
    SippUas,
    free_udp_port,
    sipp_command,
)

LOOPBACK = "127.0.0.1"
CALL_LENGTH_MS = 10
# Behind the record-routing Kamailio dispatcher, ACK and BYE must follow the route set.
UAC_ROUTE_SET = ROOT / "bench" / "sipp" / "uac_route_set.xml"
UAS_COPYING_ROUTE = ROOT / "bench" / "sipp" / "uas_answer_copying_route.xml"
REGISTER_UNIQUE = ROOT / "bench" / "sipp" / "register_unique.xml"


# ---- processes ----------------------------------------------------------------------------


def _free_port_both() -> int:
    for _ in range(100):
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free on both UDP and TCP")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _runnable_waiting_seconds(pid: int) -> float | None:
    """Seconds the relay's threads were runnable but waited for a CPU (schedstat): on a
    shared, loaded machine a relay that falls behind at low CPU is often just not scheduled."""
    try:
        return sum(int((task / "schedstat").read_text().split()[1])
                   for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class Relay:
    """A SIP relay under test, in its own process: the gateway or the bare edge."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int,
                 directory: Path) -> None:
        self.name = name
        self.port = port
        self.log = directory / f"{name}.log"
        self.spans_file: Path | None = None  # a traced gateway's spans (SIGUSR1 writes them)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, timeout: float = 30.0) -> None:
        from tests.peers import sip_options_ping

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            if await sip_options_ping(self.port, timeout=0.5):
                return
        raise RuntimeError(f"{self.name} not answering OPTIONS:\n{self.log.read_text()[-3000:]}")

    async def logged(self, marker: str, timeout: float, what: str) -> None:
        """Wait until `marker` is in its log; an exit or the timeout raises, with the log."""
        deadline = time.monotonic() + timeout
        while marker not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_gateway(uas_address: str, directory: Path, *, database_url: str | None = None,
                  name: str = "gateway", spans: bool = False) -> Relay:
    """`spans`: the gateway runs with timers on each call's set-up (`serve_gateway_traced`)."""
    port = _free_port_both()
    env = {**os.environ,
           "GATEWAY_DATABASE_URL": database_url or f"sqlite+aiosqlite:///{directory}/gateway.db",
           "GATEWAY_HTTP_PORT": str(_free_port_both()), "GATEWAY_SIP_PORT": str(port),
           "GATEWAY_AGENT_TOKEN": "bench-token-0123456789abcdef",
           "GATEWAY_AGENTS": json.dumps([{"id": "12", "contact": f"sip:agent@{uas_address}"}]),
           "GATEWAY_SIP_SERVICE_USERS": '["service"]', "GATEWAY_LOG_LEVEL": "WARNING",
           "GATEWAY_OUTBOX_ENABLED": "false"}
    argv = [sys.executable, "-m", "gateway", "serve"]
    spans_file = directory / f"{name}.spans.json"
    if spans:
        argv = [sys.executable, __file__, "--serve-gateway-traced", str(spans_file)]
    relay = Relay(name, argv, env, port, directory)
    relay.spans_file = spans_file if spans else None
    return relay


def start_edge_only(uas_address: str, directory: Path) -> Relay:
    port = _free_port_both()
    argv = [sys.executable, __file__, "--serve-edge-only", str(port), uas_address]
    return Relay("edge-only", argv, dict(os.environ), port, directory)


async def serve_edge_only(port: int, uas_address: str) -> None:
    """(c): the SIP edge on a core that stores nothing, until SIGTERM."""
    from config.settings import AgentConfig
    from connectors.sip.edge import SipConfig, SipEdge
    from gateway.agents import AgentDirectory
    from gateway.clock import SystemClock
    from gateway.metrics import Metrics

    core = _NullCore(AgentDirectory([AgentConfig(id="12", contact=f"sip:agent@{uas_address}")],
                                    SystemClock()))
    edge = SipEdge(
        SipConfig(port=port, service_users=("service",)), sink=core, agents=core.router,
        metrics=Metrics(), clock=SystemClock())
    await edge.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await edge.aclose()


async def serve_route_api(port: int, database_url: str, uas_address: str) -> None:
    """(e)'s gateway: the real gateway (core, PostgreSQL, agent router; no SIP channel) plus
    the two HTTP calls a Kamailio that is the whole SIP edge would make
    (bench/kamailio_whole_edge.cfg), until SIGTERM. A prototype for measuring, not an API."""
    from aiohttp import web

    from config.settings import load_settings
    from connectors.sip.grammar import NameAddr
    from connectors.sip.routing import _address_of
    from gateway.app import GATEWAY, build_app, setup_runner
    from gateway.events import CallEvent, IncomingCall

    os.environ.update({
        "GATEWAY_DATABASE_URL": database_url, "GATEWAY_HTTP_PORT": str(port),
        "GATEWAY_AGENT_TOKEN": "bench-token-0123456789abcdef", "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_AGENTS": json.dumps([{"id": "12", "contact": f"sip:agent@{uas_address}"}]),
        "GATEWAY_OUTBOX_ENABLED": "false"})
    settings = load_settings()
    app = build_app(settings, registry=())
    gw = app[GATEWAY]
    answered: dict[str, float] = {}
    legs: dict[str, str] = {}  # Call-ID -> the leg the core opened (events name the leg)

    async def route(request: web.Request) -> web.Response:
        q = request.query
        try:
            caller = _address_of(NameAddr.parse(f"<{q['from']}>").uri, None)[1]
        except Exception:
            caller = None
        call_ref = q["call"]
        found = await gw.core.open_call(IncomingCall(
            caller=caller, callee=q.get("user") or "service", call_ref=call_ref,
            provider="sip", source=q.get("source")))
        offer = await gw.core.offer_call(found)
        if offer is None:
            return web.Response(status=480)
        legs[call_ref] = found.leg_id
        return web.Response(text=f"{offer.target.contact.uri}|{found.context_url}|"
                                 f"{found.conversation_id}")

    async def event(request: web.Request) -> web.Response:
        kind, call_ref = request.query["kind"], request.query["call"]
        now = time.monotonic()
        duration = None
        if kind == "answered":
            answered[call_ref] = now
        else:
            duration = now - answered.pop(call_ref, now)
        leg_id = legs.pop(call_ref, None) if kind == "ended" else legs.get(call_ref)
        await gw.core.call_event(CallEvent(call_ref=call_ref, provider="sip", kind=kind,
                                           agent_id="12", duration_seconds=duration,
                                           leg_id=leg_id))
        return web.Response(text="ok")

    app.router.add_get("/bench/route", route)
    app.router.add_get("/bench/event", event)
    runner = web.AppRunner(app, access_log=None)
    await setup_runner(runner)
    await web.TCPSite(runner, LOOPBACK, port).start()
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    print("route api listening", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


class _Route:
    context_url = "https://gw.example/api/v1/contexts/" + "t" * 32
    conversation_id = "conv_" + "0" * 20

    def __init__(self, leg_id: str) -> None:
        self.leg_id = leg_id


class _NullCore:
    """A core that stores nothing; its router is the edge's agent directory."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self._legs = itertools.count()

    async def open_call(self, call: Any) -> _Route:
        return _Route(f"leg_{next(self._legs)}")

    async def offer_call(self, route: _Route, tried: Any = (), *, agent_id: Any = None,
                         exclude: Any = ()) -> Any:
        target = self.router.offer(route.leg_id, (*tried, *exclude), agent_id)
        if target is None:
            return None
        return CallOffer(target.agent_id, target, route)  # type: ignore[arg-type]

    async def call_event(self, event: Any) -> bool:
        if event.kind in ("ended", "failed"):
            self.router.release(event.leg_id, event.agent_id)
        return True


# ---- SIPp runs ----------------------------------------------------------------------------


@dataclass
class Step:
    rate: int
    calls: int
    successful: int
    failed: int
    cpu: float | None  # CPU seconds the relay spent during the step
    seconds: float
    rtts: list[float]
    waited: float | None = None  # seconds the relay was runnable but had no CPU

    @property
    def kept_up(self) -> bool:
        """SIPp placed the calls at the rate asked: a relay that falls behind slows it down
        (calls wait for answers) before calls start to fail."""
        return self.seconds <= 1.05 * self.calls / self.rate + 0.3

    @property
    def clean(self) -> bool:
        return (self.successful + self.failed == self.calls
                and self.failed <= self.calls * 0.001 and self.kept_up)


async def run_uac(target: str, rate: int, calls: int, directory: Path, *, rtt: bool = False,
                  relay_pid: int | None = None, relay_pids: tuple[int, ...] = (),
                  scenario: str | Path = "uac", service: str = "service",
                  extra: tuple[str, ...] = ()) -> Step:
    """SIPp's built-in uac (or `scenario`): `calls` calls at `rate` per second to `target`.
    The relay's CPU is summed over `relay_pid` and `relay_pids`."""
    pids = ((relay_pid,) if relay_pid else ()) + relay_pids
    run_dir = Path(tempfile.mkdtemp(prefix="uac-", dir=directory))
    local = _free_port_both()
    argv = sipp_command(
        scenario, local_port=local, control_port=free_udp_port(), media_port=_free_media_port(),
        target=target, service=service, calls=calls, rate=rate,
        call_length_ms=CALL_LENGTH_MS, trace_dir=run_dir, recv_timeout_ms=5000,
        global_timeout_s=calls / rate + 60,
        # -timer_resol 1: SIPp's clock ticks every 10 ms by default, too coarse for delays
        extra_args=(["-trace_rtt", "-rtt_freq", "1", "-timer_resol", "1"] if rtt else [])
        + list(extra),
    )
    argv += ["-l", str(max(1000, rate * 20))]  # allow enough simultaneous calls
    cpu0 = sum(_cpu_seconds(pid) for pid in pids) if pids else None
    waited0 = _waiting(pids)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        await asyncio.wait_for(proc.wait(), calls / rate + 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    seconds = time.monotonic() - started
    cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu0 if pids and cpu0 is not None else None
    waited1 = _waiting(pids)
    waited = waited1 - waited0 if waited0 is not None and waited1 is not None else None
    successful, failed = _counts((run_dir / "stat.csv").read_text(errors="replace"))
    rtts: list[float] = []
    for path in run_dir.glob("*_rtt.csv"):
        for line in path.read_text().splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 3:
                rtts.append(float(parts[1]))
    return Step(rate, calls, successful, failed, cpu, seconds, rtts, waited)


def _waiting(pids: tuple[int, ...]) -> float | None:
    waits = [_runnable_waiting_seconds(pid) for pid in pids]
    return None if not pids or None in waits else sum(w for w in waits if w is not None)


def _free_media_port() -> int:
    for _ in range(100):
        port = free_udp_port()
        if port + 2 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            try:
                other.bind((LOOPBACK, port + 2))
            except OSError:
                continue
        return port
    raise RuntimeError("no media ports")


def _counts(csv_text: str) -> tuple[int, int]:
    lines = [line for line in csv_text.splitlines() if line.strip()]
    if len(lines) < 2:
        return 0, 0
    header, last = lines[0].split(";"), lines[-1].split(";")
    return (int(last[header.index("SuccessfulCall(C)")]),
            int(last[header.index("FailedCall(C)")]))


async def step_up(name: str, target: str, rates: list[int], seconds: float, directory: Path,
                  relay_pid: int | None, *, relay_pids: tuple[int, ...] = (),
                  scenario: str | Path = "uac", rtt: bool = False, service: str = "service",
                  extra: tuple[str, ...] = (), traced: tuple[Relay, ...] = ()) -> Step | None:
    """`rtt`: trace every call's INVITE->200 too (cheap at gateway rates), so each step
    prints its p99 set-up delay. `traced`: gateways run with spans, printed per step."""
    last_clean: Step | None = None
    for rate in rates:
        await collect_spans(traced)  # start afresh
        step = await run_uac(target, rate, int(rate * seconds), directory, relay_pid=relay_pid,
                             relay_pids=relay_pids, scenario=scenario, rtt=rtt,
                             service=service, extra=extra)
        cpu = f", relay CPU {100 * step.cpu / step.seconds:.0f}%" if step.cpu else ""
        if step.cpu and step.successful:
            cpu += f" ({1000 * step.cpu / step.successful:.1f} ms a call)"
        if step.waited is not None:
            cpu += f", waiting for a CPU {100 * step.waited / step.seconds:.0f}%"
        if step.rtts:
            cpu += f", p99 INVITE->200 {p99(step.rtts):.0f} ms"
        verdict = "clean" if step.clean else "FAILED" if step.failed else "FELL BEHIND"
        print(f"  {name:9} {rate:6} CPS: {step.successful}/{step.calls} ok, "
              f"{step.failed} failed in {step.seconds:.1f} s "
              f"({step.successful / step.seconds:.0f}/s){cpu}  {verdict}", flush=True)
        print_spans(await collect_spans(traced), step.successful)
        if not step.clean:
            break
        last_clean = step
        await asyncio.sleep(2)  # let retransmission timers of the last step run out
    return last_clean


async def setup_delay(target: str, rate: int, directory: Path, scenario: str | Path = "uac",
                      service: str = "service", traced: tuple[Relay, ...] = ()) -> float:
    """p99 INVITE -> 200 at the UAC over 10 s at `rate`, after 2 s of warm-up calls
    (`traced`: the spans of those 10 s are printed)."""
    await run_uac(target, rate, rate * 2, directory, scenario=scenario, service=service)
    await collect_spans(traced)
    step = await run_uac(target, rate, rate * 10, directory, rtt=True, scenario=scenario,
                         service=service)
    if any(relay.spans_file for relay in traced):
        print(f"  spans at {rate} CPS (the set-up delay run, {step.successful} calls):")
        print_spans(await collect_spans(traced), step.successful)
    return p99(step.rtts)


async def collect_spans(relays: tuple[Relay, ...]) -> dict[str, Any]:
    """What the traced gateways gathered since they were last asked (merged), and afresh."""
    merged: dict[str, Any] = {"counts": {}, "spans": {}}
    for relay in relays:
        if relay.spans_file is None or relay.proc.poll() is not None:
            continue
        relay.spans_file.unlink(missing_ok=True)
        relay.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not relay.spans_file.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if not relay.spans_file.exists():
            continue
        got = json.loads(relay.spans_file.read_text())
        for key, n in got["counts"].items():
            merged["counts"][key] = merged["counts"].get(key, 0) + n
        for key, values in got["spans"].items():
            merged["spans"].setdefault(key, []).extend(values)
    return merged


def print_spans(merged: dict[str, Any], calls: int) -> None:
    if not merged["spans"] and not merged["counts"]:
        return
    for key, values in sorted(merged["spans"].items()):
        ordered = sorted(values)
        unit = "" if key == "batch size" else " ms"
        print(f"      {key:40} n {len(ordered):6}  p50 {ordered[len(ordered) // 2]:7.2f}"
              f"  p99 {p99(ordered):7.2f}  max {ordered[-1]:7.2f}{unit}")
    for key, n in sorted(merged["counts"].items()):
        if key.startswith(("pg round trips", "log records")):
            print(f"      {key:40} {n:7} ({n / calls if calls else float('nan'):.1f} a call)")
    print(flush=True)


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# ---- memory per dialog --------------------------------------------------------------------


async def memory_per_dialog(n: int) -> tuple[float, float]:
    """(bytes per live dialog with its transactions still open, bytes once they ended)."""
    with_transactions, _ = await _memory(n, short_timers=False)
    _, dialog_only = await _memory(n, short_timers=True)
    return with_transactions, dialog_only


async def _memory(n: int, *, short_timers: bool) -> tuple[float, float]:
    from config.settings import AgentConfig
    from connectors.sip.edge import SipConfig, SipEdge
    from connectors.sip.transaction import TimerConfig
    from gateway.agents import AgentDirectory
    from gateway.clock import SystemClock
    from gateway.metrics import Metrics

    # RFC timers: every transaction is still alive when measured (Timers L, M, J: 32 s).
    # Short ones: they end in 0.3 s and only the dialogs remain.
    timers = TimerConfig(t1=0.005, t2=0.02, t4=0.02, timer_d=0.3) if short_timers \
        else TimerConfig()
    agents = AgentDirectory([AgentConfig(id="12", contact="sip:a@127.0.0.1:5072")],
                            SystemClock())
    edge = SipEdge(SipConfig(port=0, service_users=("service",), timers=timers),
                   sink=_NullCore(agents), clock=SystemClock(), metrics=Metrics(),
                   agents=agents)
    await edge.start()
    sent: list[tuple[bytes, Any]] = []
    edge.transport.send = lambda data, peer: sent.append((data, peer))  # type: ignore[method-assign]
    feed = edge.transport._datagram
    me = f"127.0.0.1:{edge.port}"

    async def call(i: int) -> None:
        sent.clear()
        feed(_invite(i, me), ("127.0.0.1", 5071))
        await asyncio.sleep(0)
        forwarded = next(d for d, p in sent if p.port == 5072)
        feed(_ok(forwarded, i), ("127.0.0.1", 5072))
        feed(_ack(i, me), ("127.0.0.1", 5071))

    for i in range(200):  # warm up: imports, caches, interned strings
        await call(1_000_000 + i)
    if short_timers:
        await asyncio.sleep(0.5)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        await call(i)
    sent.clear()
    gc.collect()
    with_transactions = (tracemalloc.get_traced_memory()[0] - before) / n
    dialog_only = float("nan")
    if short_timers:
        await asyncio.sleep(0.6)  # Timers L, M, K, J, D: transactions end, dialogs stay
        gc.collect()
        assert edge.live_transactions == 0, edge.live_transactions
        assert len(edge.proxy.dialogs) >= n
        dialog_only = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    await edge.aclose()
    return with_transactions, dialog_only


def _invite(i: int, me: str) -> bytes:
    sdp = ("v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
           "t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    return (f"INVITE sip:service@{me} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-{i}-1-0\r\n"
            f"From: sipp <sip:sipp@127.0.0.1:5071>;tag={i}SIPpTag00{i}\r\n"
            f"To: service <sip:service@{me}>\r\nCall-ID: {i}-4242@127.0.0.1\r\n"
            "CSeq: 1 INVITE\r\nContact: sip:sipp@127.0.0.1:5071\r\nMax-Forwards: 70\r\n"
            "Subject: Performance Test\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n{sdp}").encode()


def _ok(forwarded: bytes, i: int) -> bytes:
    head = forwarded.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    keep = [line for line in head if line.split(b":", 1)[0].lower() in
            (b"via", b"from", b"to", b"call-id", b"cseq", b"record-route")]
    keep = [line + b";tag=uas%d" % i if line.startswith(b"To:") else line for line in keep]
    return (b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep)
            + b"\r\nContact: <sip:127.0.0.1:5072>\r\nContent-Length: 0\r\n\r\n")


def _ack(i: int, me: str) -> bytes:
    return (f"ACK sip:service@{me} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-{i}-1-5\r\n"
            f"From: sipp <sip:sipp@127.0.0.1:5071>;tag={i}SIPpTag00{i}\r\n"
            f"To: service <sip:service@{me}>;tag=uas{i}\r\nCall-ID: {i}-4242@127.0.0.1\r\n"
            "CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


# ---- the scale-out path: Kamailio dispatcher over two gateways on one PostgreSQL ------------


async def scale_out(args: argparse.Namespace, directory: Path, results: dict[str, Step | None],
                    delays: dict[str, float]) -> None:
    """(d0) the repository's Kamailio config (config/kamailio/kamailio.cfg: stateful,
    record-routing dispatcher) straight to the UAS; (d) the same Kamailio dispatching to two
    `gateway serve`s on one PostgreSQL (each call opened, answered and ended in it) that relay
    to the UAS. Both with a uac and a UAS that keep the route set."""
    from tests.peers import KamailioDispatcher, PostgresServer

    async with SippUas(UAS_COPYING_ROUTE, trace_messages=False) as uas:
        if not args.quick:
            async with KamailioDispatcher([uas.address], probe=False) as kamailio:
                print(f"(d0) Kamailio dispatcher alone {kamailio.address} -> uas", flush=True)
                delays["dispatcher"] = await setup_delay(kamailio.address, args.delay_rate,
                                                         directory, UAC_ROUTE_SET)
                results["dispatcher"] = await step_up(
                    "dispatch", kamailio.address, _rates(args.kamailio_rates),
                    args.step_seconds, directory, None, scenario=UAC_ROUTE_SET)
        with PostgresServer() as postgres:
            url = postgres.create_database()
            if not args.quick:
                await one_gateway_on_postgres(args, directory, results, delays, uas, url)
            gateways = [start_gateway(uas.address, directory, database_url=url,
                                      name=f"gateway-{n}", spans=args.spans) for n in "ab"]
            try:
                for gateway in gateways:
                    await gateway.ready(timeout=90)
                ports = [f"{LOOPBACK}:{g.port}" for g in gateways]
                async with KamailioDispatcher(ports) as kamailio:
                    print(f"(d) Kamailio dispatcher {kamailio.address} -> gateways {ports} "
                          f"(pids {[g.pid for g in gateways]}, PostgreSQL) -> uas", flush=True)
                    for rate in _rates(args.spans_rates):  # spans at moderate rates first
                        await setup_delay(kamailio.address, rate, directory, UAC_ROUTE_SET,
                                          traced=tuple(gateways))
                    delays["scale-out"] = await setup_delay(kamailio.address, args.delay_rate,
                                                            directory, UAC_ROUTE_SET,
                                                            traced=tuple(gateways))
                    results["scale-out"] = await step_up(
                        "2 gateways", kamailio.address, _rates(args.gateway_rates),
                        args.step_seconds, directory, None,
                        relay_pids=tuple(g.pid for g in gateways), scenario=UAC_ROUTE_SET,
                        rtt=True, traced=tuple(gateways))
            finally:
                for gateway in gateways:
                    gateway.stop()
            if not args.skip_whole_edge and not args.quick:
                await whole_edge(args, directory, results, delays, uas, postgres)

        delays["direct-route"] = await setup_delay(uas.address, args.delay_rate, directory,
                                                   UAC_ROUTE_SET)


async def one_gateway_on_postgres(args: argparse.Namespace, directory: Path,
                                  results: dict[str, Step | None], delays: dict[str, float],
                                  uas: SippUas, url: str) -> None:
    """(b') one gateway on the same PostgreSQL, no Kamailio: what PostgreSQL costs."""
    single = start_gateway(uas.address, directory, database_url=url, name="gateway-pg")
    try:
        await single.ready(timeout=90)
        target = f"{LOOPBACK}:{single.port}"
        print(f"(b') one gateway on PostgreSQL {target} (pid {single.pid}) -> uas", flush=True)
        delays["gateway-pg"] = await setup_delay(target, args.delay_rate, directory,
                                                 UAC_ROUTE_SET)
        results["gateway-pg"] = await step_up(
            "gw on pg", target, _rates(args.gateway_rates), args.step_seconds,
            directory, single.pid, scenario=UAC_ROUTE_SET, rtt=True)
    finally:
        single.stop()


async def whole_edge(args: argparse.Namespace, directory: Path, results: dict[str, Step | None],
                     delays: dict[str, float], uas: SippUas, postgres: Any) -> None:
    """(e) issue 12's third option, as a prototype: Kamailio is the whole SIP edge
    (bench/kamailio_whole_edge.cfg, synchronous http_client, 16 workers) and asks one gateway
    on PostgreSQL over HTTP for each call's route and context link, and reports the answer
    and the end back; that gateway carries no SIP."""
    from tests.peers import _make_peer_dir, _remove_peer_dir, _which

    http_port = _free_port_both()
    api = Relay("route-api", [sys.executable, __file__, "--serve-route-api", str(http_port),
                              postgres.create_database(), uas.address],
                dict(os.environ), 0, directory)
    kdir = _make_peer_dir("kamailio-edge")
    kamailio = None
    try:
        await api.logged("route api listening", 90, "route api")
        port = _free_port_both()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "KAMAILIO_LISTEN": f"udp:{LOOPBACK}:{port}", "KAMAILIO_CHILDREN": "16",
               "ROUTE_API": f"http://{LOOPBACK}:{http_port}"}
        kamailio = Relay("kamailio-edge", [
            _which("kamailio", "/usr/sbin/kamailio"), "-f",
            str(ROOT / "bench" / "kamailio_whole_edge.cfg"), "-DD", "-E", "-Y", str(kdir),
            "-x", "tlsf", "-m", "512"], env, port, directory)
        target = f"{LOOPBACK}:{port}"
        await kamailio.logged("processes (at least)", 30, "kamailio")
        await asyncio.sleep(0.5)  # its workers bind after the main process logs
        print(f"(e) Kamailio as the whole edge {target} -> HTTP route api "
              f"127.0.0.1:{http_port} (pid {api.pid}, PostgreSQL) -> uas", flush=True)
        delays["whole-edge"] = await setup_delay(target, args.delay_rate, directory,
                                                 UAC_ROUTE_SET)
        results["whole-edge"] = await step_up(
            "kam+http", target, _rates(args.gateway_rates), args.step_seconds, directory,
            None, relay_pids=(api.pid,), scenario=UAC_ROUTE_SET)
    finally:
        if kamailio is not None:
            kamailio.stop()
        api.stop()
        _remove_peer_dir(kdir)


async def registrar(args: argparse.Namespace, directory: Path, results: dict[str, Step | None],
                    delays: dict[str, float], uas: SippUas, postgres: Any) -> None:
    """(r) issue 12's second option: Kamailio as the registrar, usrloc on PostgreSQL in
    db_mode 3 (bench/kamailio_registrar.cfg): REGISTERs of distinct users (each a row
    written), then INVITEs to one of them (each a location lookup in PostgreSQL) relayed to
    the UAS, record-routed. Kamailio's own children and the database, no gateway."""
    import asyncpg

    from tests.peers import _make_peer_dir, _remove_peer_dir, _which

    url = postgres.create_database()
    dsn = postgres.dsn.rsplit("/", 1)[0] + "/" + url.rsplit("/", 1)[1]
    schema = Path("/usr/share/kamailio/postgres")
    db = await asyncpg.connect(dsn)
    try:
        for name in ("standard-create.sql", "usrloc-create.sql"):
            await db.execute((schema / name).read_text())
    finally:
        await db.close()
    kdir = _make_peer_dir("kamailio-registrar")
    port = _free_port_both()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "KAMAILIO_LISTEN": f"udp:{LOOPBACK}:{port}", "KAMAILIO_CHILDREN": "2",
           "DB_URL": dsn.replace("postgresql://", "postgres://", 1)}
    kamailio = Relay("kamailio-registrar", [
        _which("kamailio", "/usr/sbin/kamailio"), "-f",
        str(ROOT / "bench" / "kamailio_registrar.cfg"), "-DD", "-E", "-Y", str(kdir),
        "-x", "tlsf", "-m", "256"], env, port, directory)
    try:
        await kamailio.logged("processes (at least)", 30, "kamailio")
        await asyncio.sleep(0.5)  # its workers bind after the main process logs
        target = f"{LOOPBACK}:{port}"
        binding = ("-key", "contact", uas.address)
        print(f"(r) Kamailio registrar {target} (pid {kamailio.pid}), usrloc db_mode 3 on "
              f"PostgreSQL -> uas", flush=True)
        results["registrar-register"] = await step_up(
            "REGISTER", target, _rates(args.register_rates), args.step_seconds, directory,
            None, scenario=REGISTER_UNIQUE, service="u", extra=binding)
        # u1 is registered now (the first step's first REGISTER), at the UAS.
        delays["registrar"] = await setup_delay(target, args.delay_rate, directory,
                                                UAC_ROUTE_SET, service="u1")
        results["registrar"] = await step_up(
            "reg+INVITE", target, _rates(args.registrar_rates), args.step_seconds, directory,
            None, scenario=UAC_ROUTE_SET, service="u1")
    finally:
        kamailio.stop()
        _remove_peer_dir(kdir)


# ---- spans: where one call's set-up time goes, inside a traced `gateway serve` ------------


def serve_gateway_traced(out: str) -> int:
    """`gateway serve` with timers on the set-up path of each call (--spans): the proxy's
    route (open_call + offer + relay), open_call, its write's wait in the batch queue, the
    write itself, the wait for its commit; batch sizes; the loop's lag (a 5 ms sleep's
    overshoot); GC pauses; PostgreSQL round trips (asyncpg protocol calls) and log records.
    SIGUSR1 writes what was gathered since the last one to `out` (JSON) and starts afresh."""
    import logging

    import asyncpg.connection

    from connectors.sip.proxy import Proxy
    from gateway import batching, calls, cli

    spans: dict[str, list[float]] = {}
    counts: dict[str, int] = {}

    def note(name: str, seconds: float) -> None:
        spans.setdefault(name, []).append(1000 * seconds)

    def count(name: str, n: int = 1) -> None:
        counts[name] = counts.get(name, 0) + n

    def timed(cls: Any, method: str, name: str) -> None:
        original = getattr(cls, method)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                note(name, time.perf_counter() - started)
                count(name)

        setattr(cls, method, wrapper)

    timed(Proxy, "_route", "route (INVITE in -> relayed)")
    timed(calls.Calls, "open_call", "open_call")
    timed(calls.Calls, "offer_call", "offer_call")
    timed(calls.Calls, "_record_event", "call event (answer, end)")
    run, commit = batching.WriteBatcher.run, batching.WriteBatcher._commit

    async def run_timed(self: Any, write: Any, after: Any = None) -> Any:
        queued = time.perf_counter()
        marks: list[float] = []

        def write_timed(conn: Any) -> Any:
            marks.append(time.perf_counter())
            try:
                return write(conn)
            finally:
                marks.append(time.perf_counter())

        result = await run(self, write_timed, after)
        done = time.perf_counter()
        if len(marks) >= 2:
            note("write: queued", marks[-2] - queued)
            note("write: run", marks[-1] - marks[-2])
            note("write: wait for its commit", done - marks[-1])
        return result

    async def commit_timed(self: Any, batch: Any) -> None:
        started = time.perf_counter()
        try:
            await commit(self, batch)
        finally:
            note("batch: run + commit", time.perf_counter() - started)
            spans.setdefault("batch size", []).append(len(batch))

    batching.WriteBatcher.run = run_timed  # type: ignore[method-assign]
    batching.WriteBatcher._commit = commit_timed  # type: ignore[method-assign]

    class Counting:  # asyncpg's protocol, its round trips counted
        def __init__(self, protocol: Any) -> None:
            self._protocol = protocol

        def __getattr__(self, name: str) -> Any:
            value = getattr(self._protocol, name)
            if name in ("query", "prepare", "bind_execute", "bind_execute_many", "bind",
                        "execute", "close_statement"):
                count(f"pg round trips ({name})")
                count("pg round trips")
            return value

    init = asyncpg.connection.Connection.__init__

    def init_counting(self: Any, protocol: Any, *args: Any, **kwargs: Any) -> None:
        init(self, protocol, *args, **kwargs)
        self._protocol = Counting(protocol)

    asyncpg.connection.Connection.__init__ = init_counting  # type: ignore[method-assign]

    class LogCount(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            count(f"log records ({record.levelname})")

    logging.getLogger().addHandler(LogCount())
    gc_started: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started.append(time.perf_counter())
        elif gc_started:
            note(f"gc pause (generation {info['generation']})",
                 time.perf_counter() - gc_started.pop())

    gc.callbacks.append(on_gc)

    def dump(*_: Any) -> None:
        Path(out + ".tmp").write_text(json.dumps({"counts": counts, "spans": spans}))
        os.replace(out + ".tmp", out)
        spans.clear()
        counts.clear()

    serve = cli.serve

    async def serve_traced(settings: Any, *args: Any) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, dump)

        async def lag() -> None:
            while True:
                started = time.perf_counter()
                await asyncio.sleep(0.005)
                note("loop lag (a 5 ms sleep's overshoot)", time.perf_counter() - started - 0.005)

        ticker = asyncio.create_task(lag())
        try:
            await serve(settings, *args)
        finally:
            ticker.cancel()

    cli.serve = serve_traced  # type: ignore[assignment]
    return cli.main(["serve"])


# ---- the run ------------------------------------------------------------------------------


def _rates(text: str) -> list[int]:
    return [int(r) for r in text.split(",") if r]


async def main(args: argparse.Namespace) -> int:
    directory = Path(tempfile.mkdtemp(prefix="sip-bench-"))
    nan = float("nan")
    os.environ["GATEWAY_EVENT_LOOP"] = args.event_loop  # the gateways started below
    print("load average {:.2f} {:.2f} {:.2f} on {} CPUs (a loaded machine starves the relays: "
          "'waiting for a CPU' sums the relay's threads)".format(*os.getloadavg(), os.cpu_count()))
    print(f"SIP CPS benchmark: SIPp uac -d {CALL_LENGTH_MS} -> relay -> SIPp uas (200 without "
          f"180), {args.step_seconds:g} s per step; the gateway as `gateway serve` runs it "
          f"(gc frozen after start-up, thresholds 20000/50/100), GATEWAY_EVENT_LOOP="
          f"{args.event_loop}; work dir {directory}",
          flush=True)
    results: dict[str, Step | None] = {}
    delays: dict[str, float] = {}
    async with SippUas(UAS_ANSWER_WITHOUT_RINGING, trace_messages=False) as uas:
        if not args.quick:
            async with Kamailio(uas.port) as kamailio:
                print(f"(a) Kamailio {kamailio.address} (children=2, "
                      f"tlsf={kamailio.used_tlsf})")
                delays["kamailio"] = await setup_delay(kamailio.address, args.delay_rate,
                                                       directory)
                results["kamailio"] = await step_up(
                    "kamailio", kamailio.address, _rates(args.kamailio_rates),
                    args.step_seconds, directory,
                    kamailio._child.pid if kamailio._child else None)
        relays = [] if args.skip_single else [("gateway", start_gateway)]
        if not args.skip_edge_only and not args.skip_single:
            relays.append(("edge-only", start_edge_only))
        for name, start in relays:
            relay = start(uas.address, directory)
            try:
                await relay.ready()
                print(f"({'b' if name == 'gateway' else 'c'}) {name} 127.0.0.1:{relay.port} "
                      f"(pid {relay.pid})", flush=True)
                # Delay first, on a fresh relay: after an overloaded step its queues need
                # a while to drain and would be measured instead.
                delays[name] = await setup_delay(f"127.0.0.1:{relay.port}", args.delay_rate,
                                                 directory)
                results[name] = await step_up(name, f"127.0.0.1:{relay.port}",
                                              _rates(args.gateway_rates), args.step_seconds,
                                              directory, relay.pid)
            finally:
                relay.stop()
        delays["direct"] = await setup_delay(uas.address, args.delay_rate, directory)
    if not args.skip_scale_out:
        await scale_out(args, directory, results, delays)
    if args.registrar:
        from tests.peers import PostgresServer

        async with SippUas(UAS_COPYING_ROUTE, trace_messages=False) as uas:
            with PostgresServer() as postgres:
                await registrar(args, directory, results, delays, uas, postgres)
    with_txns, dialog_only = (nan, nan) if args.quick else \
        await memory_per_dialog(args.dialogs)

    def cps(name: str) -> int:
        step = results.get(name)
        return step.rate if step else 0

    gateway, kamailio = cps("gateway"), cps("kamailio")
    ratio = gateway / kamailio if kamailio else float("nan")
    print()
    print("last clean step (< 0.1% failed, every call finished, the rate kept):")
    print(f"  Kamailio (stateless, children=2, tlsf)   {kamailio:6} CPS")
    if "gateway" in results:
        print(f"  gateway (SIP edge + core + SQLite)       {gateway:6} CPS   target >= 1000")
        print(f"  ratio gateway / Kamailio                 {ratio:6.2f}       target >= 0.3")
    if "edge-only" in results:
        print(f"  SIP edge alone (core stores nothing)     {cps('edge-only'):6} CPS")
    if "scale-out" in results:
        scaled = cps("scale-out")
        print(f"  one gateway on PostgreSQL, no Kamailio   {cps('gateway-pg'):6} CPS")
        print(f"  Kamailio dispatcher alone (repo config)  {cps('dispatcher'):6} CPS")
        print(f"  dispatcher -> 2 gateways on PostgreSQL   {scaled:6} CPS")
        if "whole-edge" in results:
            print(f"  Kamailio whole edge + HTTP route api     {cps('whole-edge'):6} CPS"
                  f"   ratio / Kamailio alone "
                  f"{cps('whole-edge') / kamailio if kamailio else float('nan'):.2f}")
        for name, label in (("gateway-pg", "one gateway on PostgreSQL"),
                            ("scale-out", "dispatcher -> 2 gateways")):
            step = results.get(name)
            if step is not None and step.cpu is not None and step.successful:
                print(f"  {label} at its last clean step ({step.rate} CPS): relay CPU "
                      f"{1000 * step.cpu / step.successful:.1f} ms a call, p99 INVITE->200 "
                      f"{p99(step.rtts):.0f} ms (direct, with route set: "
                      f"{delays.get('direct-route', float('nan')):.0f} ms at "
                      f"{args.delay_rate} CPS)")
        print(f"  ratio 2 gateways / Kamailio alone        "
              f"{scaled / kamailio if kamailio else float('nan'):6.2f}       target >= 0.3"
              f"  (/ dispatcher alone: "
              f"{scaled / cps('dispatcher') if cps('dispatcher') else float('nan'):.2f})")
    if "registrar" in results:
        print(f"  Kamailio registrar, usrloc on PostgreSQL: REGISTER "
              f"{cps('registrar-register')}/s, INVITE with lookup {cps('registrar')} CPS"
              f"   ratio / Kamailio alone "
              f"{cps('registrar') / kamailio if kamailio else float('nan'):.2f}")
    print(f"p99 INVITE->200 at {args.delay_rate} CPS, in whole ms as SIPp reports them: "
          f"direct {delays['direct']:.0f}, Kamailio {delays.get('kamailio', nan):.0f}"
          + (f", gateway {delays['gateway']:.0f}" if "gateway" in delays else "")
          + (f", edge alone {delays['edge-only']:.0f}" if "edge-only" in delays else "")
          + (f"; with route set: direct {delays['direct-route']:.0f}, dispatcher "
             f"{delays.get('dispatcher', nan):.0f}, one gateway on PostgreSQL "
             f"{delays.get('gateway-pg', nan):.0f}, dispatcher -> 2 gateways "
             f"{delays['scale-out']:.0f}"
             if "scale-out" in delays else "")
          + (f", Kamailio whole edge + HTTP {delays['whole-edge']:.0f}"
             if "whole-edge" in delays else "")
          + (f", Kamailio registrar (lookup in PostgreSQL) {delays['registrar']:.0f}"
             if "registrar" in delays else ""))
    added = [f"Kamailio {delays.get('kamailio', nan) - delays['direct']:.0f} ms "
             "(0: under a millisecond)"]
    if "gateway" in delays:
        added.insert(0, f"gateway {delays['gateway'] - delays['direct']:.0f} ms (target < 5)")
    if "scale-out" in delays:
        added.append(f"dispatcher -> 2 gateways "
                     f"{delays['scale-out'] - delays['direct-route']:.0f} ms (target < 5), "
                     f"dispatcher alone "
                     f"{delays.get('dispatcher', nan) - delays['direct-route']:.0f} ms")
    if "whole-edge" in delays:
        added.append(f"Kamailio whole edge + HTTP "
                     f"{delays['whole-edge'] - delays['direct-route']:.0f} ms")
    print("  p99 added setup delay: " + ", ".join(added))
    print(f"memory per live dialog ({args.dialogs} dialogs, tracemalloc): "
          f"{dialog_only:.0f} B once transactions ended (target < 10 KB); "
          f"{with_txns:.0f} B with its four transactions still alive (RFC timers)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-edge-only":
        asyncio.run(serve_edge_only(int(sys.argv[2]), sys.argv[3]))
        sys.exit(0)
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-gateway-traced":
        sys.exit(serve_gateway_traced(sys.argv[2]))
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-route-api":
        asyncio.run(serve_route_api(int(sys.argv[2]), sys.argv[3], sys.argv[4]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--gateway-rates",
                        default="100,200,300,400,500,600,700,800,1000,1200,1500,2000")
    parser.add_argument("--kamailio-rates", default="1000,2000,4000,6000,8000,10000,12000")
    parser.add_argument("--delay-rate", type=int, default=100)
    parser.add_argument("--dialogs", type=int, default=20000)
    parser.add_argument("--skip-edge-only", action="store_true")
    parser.add_argument("--skip-single", action="store_true",
                        help="leave out (b) and (c), the one-process paths")
    parser.add_argument("--skip-whole-edge", action="store_true",
                        help="leave out (e), Kamailio as the whole edge asking a gateway over HTTP")
    parser.add_argument("--registrar", action="store_true",
                        help="add (r), Kamailio as registrar with usrloc on PostgreSQL "
                             "(needs Debian's kamailio-postgres-modules)")
    parser.add_argument("--register-rates", default="100,250,500,750,1000,1500,2000")
    parser.add_argument("--registrar-rates", default="100,250,500,750,1000,1500,2000",
                        help="INVITE rates of (r), each call a location lookup")
    parser.add_argument("--spans", action="store_true",
                        help="run (d)'s gateways with timers on each call's set-up path and "
                             "print them per step (a little slower: measure CPS without)")
    parser.add_argument("--spans-rates", default="",
                        help="with --spans: rates (e.g. 50) whose spans are measured before "
                             "(d)'s set-up delay at --delay-rate")
    parser.add_argument("--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="the gateways' GATEWAY_EVENT_LOOP (auto: uvloop if installed)")
    parser.add_argument("--quick", action="store_true",
                        help="only (d), the two gateways (no Kamailio alone, no (b'), no "
                             "memory): a look at their spans, not a figure to report")
    parser.add_argument("--skip-scale-out", action="store_true",
                        help="leave out (d0) and (d), Kamailio's dispatcher over two gateways")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments)))
