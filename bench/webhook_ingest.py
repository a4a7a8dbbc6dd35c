"""Benchmark: the signed Twilio messaging webhook with persistence vs a bare aiohttp hello-world.

Run by hand (not in CI):  .venv/bin/python bench/webhook_ingest.py [--duration 10]
                                [--connections 64] [--threads 2] [--requests 150000]
                                [--customers 1000] [--postgres [--gateways N [--sweep]]]

In one run, with the same load generator (wrk, a Lua script replaying pre-signed POSTs) and
the same concurrency, it drives
  (a) a bare aiohttp hello-world handler,
  (c) the messaging webhook alone (parse, signature, event, TwiML) on a core that stores
      nothing: what the handler costs apart from the database, and
  (b) the gateway's `POST /webhooks/twilio/messaging` (signature check, parse, group-committed
      write to SQLite in WAL with synchronous=FULL, constant TwiML answer),
each server in its own process, one after the other, and prints req/s, p99 latency and the
ratio b/a (target >= 0.5; BASELINES.md has the naive figure, ~0.03). Every request to (b)
carries a fresh MessageSid, signed with twilio's RequestValidator for GATEWAY_PUBLIC_URL, so
each one is a real insert; the run checks afterwards that every 200 was stored.

With `--postgres` (issue 12), (b) runs on a real PostgreSQL started for the run (tests/peers.py,
durable: fsync, synchronous_commit and full_page_writes on, as shipped) instead of SQLite, and
`--gateways N` adds, in the same run and on the same PostgreSQL, N `gateway serve` processes
sharing one fresh database, the load spread evenly over them (one wrk per gateway, each with
its share of the connections and its own signed requests). It prints req/s of one gateway and
of N, the scale factor N/one, the ratio of each against (a), and, per measurement, the load
average, the CPU seconds of every gateway process, of PostgreSQL (the postmaster, its backends
and its reaped children, from /proc) and of wrk, PostgreSQL's commits and WAL per stored
event (pg_stat_wal, pg_stat_database) and the connections each gateway held.

    .venv/bin/python bench/webhook_ingest.py --postgres --gateways 2
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
PUBLIC_URL = "https://gw.example.com"
PATH = "/webhooks/twilio/messaging"
BUSINESS = "+15005550006"
CUSTOMERS = 1000

LUA = r"""
-- Replays pre-signed requests from a file: one "signature<TAB>body" per line. Each wrk
-- thread takes its own slice, so no two requests share a MessageSid.
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local requests = {}
local i = 0
function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  local n = 0
  for line in io.lines(path) do
    if n % nthreads == tid then
      local tab = string.find(line, "\t", 1, true)
      local sig, body = string.sub(line, 1, tab - 1), string.sub(line, tab + 1)
      requests[#requests + 1] = wrk.format("POST", wrk.path, {
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["X-Twilio-Signature"] = sig,
        ["I-Twilio-Idempotency-Token"] = sig,
      }, body)
    end
    n = n + 1
  end
end

function request()
  i = i + 1
  if i > #requests then i = 1 end  -- wrapped: later requests are duplicates
  return requests[i]
end

function done(summary, latency, requests_)
  io.write(string.format("WRAPPED %s\n", tostring(i > #requests)))
end
"""


# ---- servers (each runs in its own process) ---------------------------------------------------


def serve_hello(port: int) -> None:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="Hello, world")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_webhook_only(port: int) -> None:
    """(c): the real messaging webhook (parse, signature, event, TwiML) on a core that stores
    nothing, to show what the handler costs apart from the database."""
    from aiohttp import web

    from gateway.core import IngestResult
    from gateway.metrics import Metrics
    from webhooks.signatures import TwilioSignature
    from webhooks.twilio_messaging import TwilioMessagingWebhooks

    class NoStore:
        async def ingest(self, event: object) -> IngestResult:
            return IngestResult(duplicate=False)

    routes = TwilioMessagingWebhooks(
        NoStore(), Metrics(), TwilioSignature(AUTH_TOKEN, PUBLIC_URL)  # type: ignore[arg-type]
    ).routes()
    app = web.Application()
    app.add_routes(routes)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_gateway(port: int, database: str) -> None:
    """The gateway exactly as `gateway serve` runs it (SIP on a spare port, unused here).
    `database`: a SQLite file, or a PostgreSQL URL."""
    import asyncio

    from config.settings import load_settings
    from gateway import logs
    from gateway.cli import serve

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        sip_port = probe.getsockname()[1]
    settings = load_settings(
        database_url=database if "://" in database else f"sqlite+aiosqlite:///{database}",
        http_port=port, public_url=PUBLIC_URL,
        twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
        twilio_from_number=BUSINESS, agent_token="bench-agent-token", log_level="WARNING",
        log_format="text", sip_port=sip_port,
    )
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


# ---- load ------------------------------------------------------------------------------------


def signed_requests(count: int, prefix: str, customers: int = CUSTOMERS) -> list[str]:
    """`count` lines of "signature<TAB>urlencoded body", each a distinct inbound SMS, from
    `customers` numbers in turn."""
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(AUTH_TOKEN)
    url = PUBLIC_URL + PATH
    lines = []
    for n in range(count):
        sid = f"SM{prefix}{n:030x}"[:34]
        form = {
            "ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0",
            "ToCity": "OAKLAND", "FromZip": "94105", "SmsSid": sid, "FromState": "CA",
            "SmsStatus": "received", "FromCity": "SAN FRANCISCO",
            "Body": f"Hello, I need help with order {n} — merci 😀",
            "FromCountry": "US", "To": BUSINESS, "ToZip": "94612", "NumSegments": "1",
            "MessageSid": sid, "AccountSid": ACCOUNT_SID,
            "From": f"+1415555{n % customers:04d}", "ApiVersion": "2010-04-01",
        }
        lines.append(validator.compute_signature(url, form) + "\t" + urlencode(form))
    return lines


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start in {timeout:.0f} s")


def start_server(kind: str, port: int, database: str | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    if database:
        cmd += ["--database", database]
    # the gateway's start-up banner (its channels) is not the bench's output
    quiet = subprocess.DEVNULL if kind == "gateway" else None
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=quiet)
    wait_listening(port, proc)
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def parse_duration(text: str) -> float:
    """wrk's "12.34ms" / "1.02s" / "850.00us" in seconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[match.group(2)]


Result = dict[str, Any]


def _wrk_argv(url: str, script: Path, requests: Path, threads: int, connections: int,
              duration: int) -> list[str]:
    return ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
            "--timeout", "10s", "-s", str(script), url, "--", str(requests), str(threads)]


def _parse_wrk(out: str) -> Result:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = parse_duration(re.search(r"(?m)^\s+99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p99": p99, "requests": total,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": bool(errors), "wrapped": "WRAPPED true" in out}


def run_wrk(urls: list[str], script: Path, requests: list[Path], threads: int,
            connections: int, duration: int) -> Result:
    """One wrk per URL at once, each with its share of threads and connections and its own
    request file; their figures summed (req/s, requests) or the worst taken (p99)."""
    share = len(urls)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [subprocess.Popen(
        _wrk_argv(url, script, file, max(1, threads // share), max(1, connections // share),
                  duration), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for url, file in zip(urls, requests, strict=True)]
    outs = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"wrk failed ({proc.returncode}): {err.strip()}")
        outs.append(_parse_wrk(out))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"rps": sum(o["rps"] for o in outs), "p99": max(o["p99"] for o in outs),
            "requests": sum(o["requests"] for o in outs),
            "non2xx": sum(o["non2xx"] for o in outs),
            "socket_errors": any(o["socket_errors"] for o in outs),
            "wrapped": any(o["wrapped"] for o in outs),
            "wrk_cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}


# ---- what the processes spent ---------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds (user + system) of `pid`; with `reaped`, plus its reaped children's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # after the command: state(3) ... utime(14) stime(15) cutime(16) cstime(17)
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def postgres_cpu(postmaster: int) -> float:
    """The postmaster, every live backend and helper, and the ones that already exited (their
    time is the postmaster's reaped-children time): a difference of two readings is what
    PostgreSQL spent between them."""
    from tests.peers import _children_of

    return proc_cpu(postmaster, reaped=True) + sum(
        proc_cpu(pid) for pid, _ in _children_of(postmaster))


class Postgres:
    """A durable PostgreSQL for the run, a fresh database per measurement, its counters."""

    def __init__(self) -> None:
        from tests.peers import PostgresServer

        self.server = PostgresServer(durable=True).start()
        assert self.server._child is not None
        self.postmaster = self.server._child.pid
        self.version = self.sql("SHOW server_version")

    def sql(self, statement: str, database: str = "postgres") -> str:
        return self.server._psql(statement, database=database).strip()

    def new_database(self) -> tuple[str, str]:
        url = self.server.create_database()
        return url, url.rsplit("/", 1)[1]

    def counters(self, database: str) -> dict[str, float]:
        commits = self.sql(
            f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{database}'")
        wal = self.sql("SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal")
        records, wal_bytes, writes, syncs = (float(v) for v in wal.split("|"))
        return {"commits": float(commits), "wal_records": records, "wal_bytes": wal_bytes,
                "wal_writes": writes, "wal_syncs": syncs, "cpu": postgres_cpu(self.postmaster)}

    def connections(self, database: str) -> int:
        return int(self.sql(
            f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'"))

    def stored(self, database: str) -> int:
        return int(self.sql(
            "SELECT count(*) FROM transcript_entries WHERE direction = 'in'", database))

    def stop(self) -> None:
        self.server.stop()


def measure(kind: str, count: int, work: Path, script: Path, warm: list[str],
            measured: list[str], args: argparse.Namespace, pg: Postgres | None = None
            ) -> Result:
    """Start `count` servers of `kind` (gateways on one fresh database), warm them up, drive
    the measured load spread over them, stop them; the figures."""
    database = name = None
    if kind == "gateway":
        if pg is not None:
            database, name = pg.new_database()
        else:
            database = str(work / "gateway.db")

    def files(lines: list[str], tag: str) -> list[Path]:
        paths = []
        for i in range(count):  # gateway i gets every count-th request: the same mix
            path = work / f"{tag}-{count}-{i}.tsv"
            path.write_text("\n".join(lines[i::count]) + "\n")
            paths.append(path)
        return paths

    warm_files, measured_files = files(warm, "warm"), files(measured, "measured")
    procs, urls = [], []
    try:
        for _ in range(count):  # one after the other: the first migrates, the rest find it done
            port = free_port()
            procs.append(start_server(kind, port, database))
            urls.append(f"http://127.0.0.1:{port}{PATH}")
        warmed = 0
        if args.warmup:
            w = run_wrk(urls, script, warm_files, args.threads, args.connections, args.warmup)
            warmed = int(w["requests"]) - int(w["non2xx"])
        before_pg = pg.counters(name) if pg is not None and name else None
        before_cpu = [proc_cpu(p.pid, reaped=True) for p in procs]
        result = run_wrk(urls, script, measured_files, args.threads, args.connections,
                         args.duration)
        result["server_cpu"] = [proc_cpu(p.pid, reaped=True) - b
                                for p, b in zip(procs, before_cpu, strict=True)]
        result["load"] = os.getloadavg()[0]
        result["warmup_answered"] = warmed
        if before_pg is not None and pg is not None and name:
            after_pg = pg.counters(name)
            result["pg"] = {k: after_pg[k] - before_pg[k] for k in after_pg}
            result["connections"] = pg.connections(name)
    finally:
        for proc in procs:
            stop_server(proc)
    if kind == "gateway":
        result["stored"] = pg.stored(name) if pg is not None and name else stored_messages(
            str(database))
    return result


def stored_messages(database: str) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute(
            "SELECT count(*) FROM transcript_entries WHERE direction = 'in'").fetchone()[0])


def check_stored(label: str, r: Result, connections: int) -> bool:
    answered = int(r["requests"]) - int(r["non2xx"]) + int(r["warmup_answered"])
    note = " (the request pool wrapped: later ones were duplicates)" if r["wrapped"] else ""
    print(f"{label} answered 200 (warm-up + measured): {answered:,}; inbound messages in the "
          f"database afterwards: {r['stored']:,}{note}")
    # wrk stops with up to one request per connection in flight (sent, maybe stored,
    # never counted): stored may exceed answered by that much, never fall below it.
    in_flight = 2 * connections
    if not r["wrapped"] and not answered <= int(r["stored"]) <= answered + in_flight:
        print("bench: acknowledged and stored counts do not match", file=sys.stderr)
        return False
    return True


def print_costs(label: str, r: Result) -> None:
    gateways = " + ".join(f"{c:.1f}" for c in r["server_cpu"])
    line = (f"{label}: load average {r['load']:.2f}; CPU s: server(s) {gateways}, "
            f"wrk {r['wrk_cpu']:.1f}")
    if "pg" in r:
        pg = r["pg"]
        events = max(1, int(r["requests"]) - int(r["non2xx"]))
        line += (f", PostgreSQL {pg['cpu']:.1f}; per stored event: PostgreSQL "
                 f"{pg['cpu'] / events * 1e6:,.0f} us CPU, {pg['wal_bytes'] / events:,.0f} B WAL, "
                 f"{pg['wal_records'] / events:.1f} WAL records, {pg['commits'] / events:.3f} "
                 f"commits, {pg['wal_syncs'] / events:.3f} WAL fsyncs; connections held "
                 f"{r['connections']} ({r['connections'] / len(r['server_cpu']):.0f} per gateway)")
    print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=150_000,
                        help="distinct signed messages prepared for the measured run")
    parser.add_argument("--customers", type=int, default=CUSTOMERS,
                        help="distinct senders: each one's first message makes a customer, a "
                        "conversation and a leg; the later ones only append")
    parser.add_argument("--postgres", action="store_true",
                        help="store in a real PostgreSQL started for the run, not SQLite")
    parser.add_argument("--gateways", type=int, default=1,
                        help="with --postgres: also measure this many gateways on one database")
    parser.add_argument("--sweep", action="store_true",
                        help="with --gateways N: measure every count from 1 to N")
    parser.add_argument("--serve", choices=["hello", "webhook-only", "gateway"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--database", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve == "hello":
        serve_hello(args.port)
        return 0
    if args.serve == "webhook-only":
        serve_webhook_only(args.port)
        return 0
    if args.serve == "gateway":
        serve_gateway(args.port, args.database)
        return 0
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.gateways < 1 or (args.gateways > 1 and not args.postgres):
        parser.error("--gateways N > 1 needs --postgres (several processes on one database)")
    counts = list(range(1, args.gateways + 1)) if args.sweep else sorted({1, args.gateways})

    pg = Postgres() if args.postgres else None
    try:
        with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
            return run(args, counts, Path(tmp), pg)
    finally:
        if pg is not None:
            pg.stop()


def run(args: argparse.Namespace, counts: list[int], work: Path, pg: Postgres | None) -> int:
    script = work / "signed_post.lua"
    script.write_text(LUA)
    t0 = time.perf_counter()
    warm = signed_requests(max(2000, args.requests // 10), "0", args.customers)
    measured = signed_requests(args.requests, "1", args.customers)
    store = f"PostgreSQL {pg.version} (durable)" if pg else "SQLite (WAL, FULL)"
    print(f"prepared {args.requests:,} signed requests in {time.perf_counter() - t0:.1f} s; "
          f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
          f"{args.customers:,} senders, {os.cpu_count()} CPUs shared by server(s), {store} and "
          f"load generator; "
          f"load average at start {os.getloadavg()[0]:.2f}")

    rows: list[tuple[str, Result]] = []
    for kind, label in (("hello", "(a) aiohttp hello-world"),
                        ("webhook-only", "(c) signed Twilio webhook, no database")):
        rows.append((label, measure(kind, 1, work, script, warm, measured, args)))
    gateways: dict[int, Result] = {}
    for count in counts:
        gateways[count] = measure("gateway", count, work, script, warm, measured, args, pg)
        what = "1 gateway" if count == 1 else f"{count} gateways, one database"
        rows.append((f"(b) signed Twilio webhook + {store.split(' (')[0]}, {what}",
                     gateways[count]))

    hello = rows[0][1]
    print(f"{'server':<62}{'req/s':>9}{'p99':>10}{'requests':>10}{'non-2xx':>9}{'vs a':>7}")
    for label, r in rows:
        print(f"{label:<62}{r['rps']:>9,.0f}{r['p99'] * 1000:>8.1f}ms"
              f"{r['requests']:>10,}{r['non2xx']:>9}"
              f"{float(r['rps']) / float(hello['rps']):>7.2f}")
    print(f"ratio b/a (one gateway): {float(gateways[1]['rps']) / float(hello['rps']):.2f} "
          f"(target >= 0.5)")
    for count in counts[1:]:
        print(f"scale factor {count} gateways / 1: "
              f"{float(gateways[count]['rps']) / float(gateways[1]['rps']):.2f}")
    for (label, r), short in zip(rows, ["(a) hello", "(c) no database",
                                        *[f"(b) x{c}" for c in counts]], strict=True):
        print_costs(short, r)
    ok = all(check_stored(f"(b) x{count}", gateways[count], args.connections)
             for count in counts)
    if any(r["non2xx"] or r["socket_errors"] for _, r in rows):
        print("bench: a server answered errors or dropped connections", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
