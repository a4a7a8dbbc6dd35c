"""Benchmark: calls per second through the SIP edge, against Kamailio on the same SIPp pair.

Run by hand (not in CI):  .venv/bin/python bench/sip_cps.py [--step-seconds 10]
                              [--gateway-rates 100,200,...] [--kamailio-rates 1000,...]
                              [--delay-rate 100] [--dialogs 20000] [--skip-edge-only]

In one run, with SIPp's built-in uac (`-d 10`) placing calls on loopback and a SIPp UAS that
answers 200 without 180 (BASELINES.md: two relay workers may reorder 180/200), it drives
  (a) uac -> Kamailio (stateless forward(), children=2, -x tlsf) -> uas,
  (b) uac -> gateway (`python -m gateway serve`: SIP edge, core, SQLite, each call opened,
      answered and ended in the transcript) -> uas,
  (c) uac -> the SIP edge alone on a core that stores nothing -> uas: what SIP costs apart
      from the database,
each relay in its own process, stepping the rate up (10 s of calls per step) until a step
fails (>= 0.1% of calls failed, or calls left unfinished), and reports the last clean step
of each, the ratio b/a (target >= 0.3) and b >= 1,000 CPS. It then measures the setup delay
(INVITE -> 200 at the UAC, SIPp -trace_rtt) at one moderate rate through each path and
directly (uac -> uas), and prints the p99 added by the gateway and by Kamailio (target < 5 ms).
Last, memory per live dialog: N calls answered and never hung up on an edge in this process,
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

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_gateway(uas_address: str, directory: Path) -> Relay:
    port = _free_port_both()
    env = {**os.environ,
           "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{directory}/gateway.db",
           "GATEWAY_HTTP_PORT": str(_free_port_both()), "GATEWAY_SIP_PORT": str(port),
           "GATEWAY_AGENT_TOKEN": "bench-token-0123456789abcdef",
           "GATEWAY_AGENTS": json.dumps([{"id": "12", "contact": f"sip:agent@{uas_address}"}]),
           "GATEWAY_SIP_SERVICE_USERS": '["service"]', "GATEWAY_LOG_LEVEL": "WARNING",
           "GATEWAY_OUTBOX_ENABLED": "false"}
    argv = [sys.executable, "-m", "gateway", "serve"]
    return Relay("gateway", argv, env, port, directory)


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
                  relay_pid: int | None = None) -> Step:
    """SIPp's built-in uac: `calls` calls at `rate` per second to `target`."""
    run_dir = Path(tempfile.mkdtemp(prefix="uac-", dir=directory))
    local = _free_port_both()
    argv = sipp_command(
        "uac", local_port=local, control_port=free_udp_port(), media_port=_free_media_port(),
        target=target, service="service", calls=calls, rate=rate,
        call_length_ms=CALL_LENGTH_MS, trace_dir=run_dir, recv_timeout_ms=5000,
        global_timeout_s=calls / rate + 60,
        # -timer_resol 1: SIPp's clock ticks every 10 ms by default, too coarse for delays
        extra_args=["-trace_rtt", "-rtt_freq", "1", "-timer_resol", "1"] if rtt else [],
    )
    argv += ["-l", str(max(1000, rate * 20))]  # allow enough simultaneous calls
    cpu0 = _cpu_seconds(relay_pid) if relay_pid else None
    waited0 = _runnable_waiting_seconds(relay_pid) if relay_pid else None
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
    cpu = _cpu_seconds(relay_pid) - cpu0 if relay_pid and cpu0 is not None else None
    waited1 = _runnable_waiting_seconds(relay_pid) if relay_pid else None
    waited = waited1 - waited0 if waited0 is not None and waited1 is not None else None
    successful, failed = _counts((run_dir / "stat.csv").read_text(errors="replace"))
    rtts: list[float] = []
    for path in run_dir.glob("*_rtt.csv"):
        for line in path.read_text().splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 3:
                rtts.append(float(parts[1]))
    return Step(rate, calls, successful, failed, cpu, seconds, rtts, waited)


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
                  relay_pid: int | None) -> Step | None:
    last_clean: Step | None = None
    for rate in rates:
        step = await run_uac(target, rate, int(rate * seconds), directory, relay_pid=relay_pid)
        cpu = f", relay CPU {100 * step.cpu / step.seconds:.0f}%" if step.cpu else ""
        if step.waited is not None:
            cpu += f", waiting for a CPU {100 * step.waited / step.seconds:.0f}%"
        verdict = "clean" if step.clean else "FAILED" if step.failed else "FELL BEHIND"
        print(f"  {name:9} {rate:6} CPS: {step.successful}/{step.calls} ok, "
              f"{step.failed} failed in {step.seconds:.1f} s "
              f"({step.successful / step.seconds:.0f}/s){cpu}  {verdict}", flush=True)
        if not step.clean:
            break
        last_clean = step
        await asyncio.sleep(2)  # let retransmission timers of the last step run out
    return last_clean


async def setup_delay(target: str, rate: int, directory: Path) -> float:
    """p99 INVITE -> 200 at the UAC over 10 s at `rate`, after 2 s of warm-up calls."""
    await run_uac(target, rate, rate * 2, directory)
    return p99((await run_uac(target, rate, rate * 10, directory, rtt=True)).rtts)


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


# ---- the run ------------------------------------------------------------------------------


def _rates(text: str) -> list[int]:
    return [int(r) for r in text.split(",") if r]


async def main(args: argparse.Namespace) -> int:
    directory = Path(tempfile.mkdtemp(prefix="sip-bench-"))
    print("load average {:.2f} {:.2f} {:.2f} on {} CPUs (a loaded machine starves the relays: "
          "'waiting for a CPU' sums the relay's threads)".format(*os.getloadavg(), os.cpu_count()))
    print(f"SIP CPS benchmark: SIPp uac -d {CALL_LENGTH_MS} -> relay -> SIPp uas (200 without "
          f"180), {args.step_seconds:g} s per step; the gateway as `gateway serve` runs it "
          f"(gc frozen after start-up, thresholds 20000/50/100); work dir {directory}",
          flush=True)
    results: dict[str, Step | None] = {}
    delays: dict[str, float] = {}
    async with SippUas(UAS_ANSWER_WITHOUT_RINGING, trace_messages=False) as uas:
        async with Kamailio(uas.port) as kamailio:
            print(f"(a) Kamailio {kamailio.address} (children=2, tlsf={kamailio.used_tlsf})")
            delays["kamailio"] = await setup_delay(kamailio.address, args.delay_rate, directory)
            results["kamailio"] = await step_up(
                "kamailio", kamailio.address, _rates(args.kamailio_rates), args.step_seconds,
                directory, kamailio._child.pid if kamailio._child else None)
        relays = [("gateway", start_gateway)]
        if not args.skip_edge_only:
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
    with_txns, dialog_only = await memory_per_dialog(args.dialogs)

    def cps(name: str) -> int:
        step = results.get(name)
        return step.rate if step else 0

    gateway, kamailio = cps("gateway"), cps("kamailio")
    ratio = gateway / kamailio if kamailio else float("nan")
    print()
    print("last clean step (< 0.1% failed, every call finished, the rate kept):")
    print(f"  Kamailio (stateless, children=2, tlsf)   {kamailio:6} CPS")
    print(f"  gateway (SIP edge + core + SQLite)       {gateway:6} CPS   target >= 1000")
    if "edge-only" in results:
        print(f"  SIP edge alone (core stores nothing)     {cps('edge-only'):6} CPS")
    print(f"  ratio gateway / Kamailio                 {ratio:6.2f}       target >= 0.3")
    print(f"p99 INVITE->200 at {args.delay_rate} CPS, in whole ms as SIPp reports them: "
          f"direct {delays['direct']:.0f}, Kamailio {delays['kamailio']:.0f}, "
          f"gateway {delays['gateway']:.0f}"
          + (f", edge alone {delays['edge-only']:.0f}" if "edge-only" in delays else ""))
    print(f"  p99 added setup delay: gateway {delays['gateway'] - delays['direct']:.0f} ms "
          f"(target < 5), Kamailio {delays['kamailio'] - delays['direct']:.0f} ms "
          "(0: under a millisecond)")
    print(f"memory per live dialog ({args.dialogs} dialogs, tracemalloc): "
          f"{dialog_only:.0f} B once transactions ended (target < 10 KB); "
          f"{with_txns:.0f} B with its four transactions still alive (RFC timers)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-edge-only":
        asyncio.run(serve_edge_only(int(sys.argv[2]), sys.argv[3]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--gateway-rates",
                        default="100,200,300,400,500,600,700,800,1000,1200,1500,2000")
    parser.add_argument("--kamailio-rates", default="1000,2000,4000,6000,8000,10000,12000")
    parser.add_argument("--delay-rate", type=int, default=100)
    parser.add_argument("--dialogs", type=int, default=20000)
    parser.add_argument("--skip-edge-only", action="store_true")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments)))
