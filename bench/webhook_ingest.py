"""Benchmark: the signed Twilio messaging webhook with persistence vs a bare aiohttp hello-world.

Run by hand (not in CI):  .venv/bin/python bench/webhook_ingest.py [--duration 10]
                                [--connections 64] [--threads 2] [--requests 150000]

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
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
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
    """The gateway exactly as `gateway serve` runs it (SIP on a spare port, unused here)."""
    import asyncio

    from config.settings import load_settings
    from gateway import logs
    from gateway.cli import serve

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        sip_port = probe.getsockname()[1]
    settings = load_settings(
        database_url=f"sqlite+aiosqlite:///{database}", http_port=port, public_url=PUBLIC_URL,
        twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
        twilio_from_number=BUSINESS, agent_token="bench-agent-token", log_level="WARNING",
        log_format="text", sip_port=sip_port,
    )
    logs.configure(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))


# ---- load ------------------------------------------------------------------------------------


def signed_requests(count: int, prefix: str) -> list[str]:
    """`count` lines of "signature<TAB>urlencoded body", each a distinct inbound SMS."""
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
            "From": f"+1415555{n % CUSTOMERS:04d}", "ApiVersion": "2010-04-01",
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
    proc = subprocess.Popen(cmd, cwd=ROOT)
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


def run_wrk(url: str, script: Path, requests: Path, threads: int, connections: int,
            duration: int) -> dict[str, float | int | bool]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
         "--timeout", "10s", "-s", str(script), url, "--", str(requests), str(threads)],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = parse_duration(re.search(r"(?m)^\s+99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p99": p99, "requests": total,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": bool(errors), "wrapped": "WRAPPED true" in out}


def stored_messages(database: str) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute(
            "SELECT count(*) FROM transcript_entries WHERE direction = 'in'").fetchone()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=150_000,
                        help="distinct signed messages prepared for the measured run")
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

    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        work = Path(tmp)
        script = work / "signed_post.lua"
        script.write_text(LUA)
        warm, measured = work / "warmup.tsv", work / "requests.tsv"
        t0 = time.perf_counter()
        warm.write_text("\n".join(signed_requests(max(2000, args.requests // 10), "0")) + "\n")
        measured.write_text("\n".join(signed_requests(args.requests, "1")) + "\n")
        print(f"prepared {args.requests:,} signed requests in {time.perf_counter() - t0:.1f} s; "
              f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
              f"{os.cpu_count()} CPUs shared by server and load generator")

        results = {}
        for kind in ("hello", "webhook-only", "gateway"):
            port = free_port()
            database = str(work / "gateway.db") if kind == "gateway" else None
            proc = start_server(kind, port, database)
            try:
                url = f"http://127.0.0.1:{port}{PATH}"
                warmed = 0
                if args.warmup:
                    w = run_wrk(url, script, warm, args.threads, args.connections, args.warmup)
                    warmed = int(w["requests"]) - int(w["non2xx"])
                results[kind] = run_wrk(url, script, measured, args.threads, args.connections,
                                        args.duration)
                results[kind]["warmup_answered"] = warmed
            finally:
                stop_server(proc)
            if database:
                results[kind]["stored"] = stored_messages(database)

        hello, gw = results["hello"], results["gateway"]
        print(f"{'server':<50}{'req/s':>9}{'p99':>10}{'requests':>10}{'non-2xx':>9}{'vs a':>7}")
        rows = (("(a) aiohttp hello-world", hello),
                ("(c) signed Twilio webhook, no database", results["webhook-only"]),
                ("(b) signed Twilio webhook + SQLite (WAL, FULL)", gw))
        for label, r in rows:
            print(f"{label:<50}{r['rps']:>9,.0f}{r['p99'] * 1000:>8.1f}ms"
                  f"{r['requests']:>10,}{r['non2xx']:>9}"
                  f"{float(r['rps']) / float(hello['rps']):>7.2f}")
        ratio = float(gw["rps"]) / float(hello["rps"])
        print(f"ratio b/a: {ratio:.2f} (target >= 0.5)")
        answered = int(gw["requests"]) - int(gw["non2xx"]) + int(gw["warmup_answered"])
        note = " (the request pool wrapped: later ones were duplicates)" if gw["wrapped"] else ""
        print(f"(b) answered 200 (warm-up + measured): {answered:,}; inbound messages in the "
              f"database afterwards: {gw['stored']:,}{note}")
        # wrk stops with up to one request per connection in flight (sent, maybe stored,
        # never counted): stored may exceed answered by that much, never fall below it.
        in_flight = 2 * args.connections
        if not gw["wrapped"] and not answered <= int(gw["stored"]) <= answered + in_flight:
            print("bench: acknowledged and stored counts do not match", file=sys.stderr)
            return 1
        if any(r["non2xx"] or r["socket_errors"] for _, r in rows):
            print("bench: a server answered errors or dropped connections", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
