"""Benchmark: XMPP customers writing to the gateway through Prosody, against a bare slixmpp
account that answers at once, on the same Prosody in the same run.

Run by hand (not in CI):  .venv/bin/python bench/xmpp_ingest.py [--messages 20000]
                              [--clients 40] [--window 16] [--rounds 2] [--mam]

Three processes, as in production: Prosody (tests/prosody.py, throwaway, loopback), the
receiver, and a load generator with `--clients` slixmpp customers, each keeping at most
`--window` messages unanswered. A message is answered by an XEP-0184 receipt:
  (a) echo: a bare slixmpp client (stream management on, like the gateway) that sends the
      receipt as soon as the message arrives;
  (b) gateway: `connectors.xmpp.XmppChannel` on the gateway's current `Core.ingest` on SQLite
      (WAL, synchronous=FULL, group commit through its WriteBatcher), which sends the receipt
      only after the commit that holds the message.
It prints messages/s answered (b: committed), p50/p99 of send -> receipt (b: an upper bound of
the committed latency), the ratio b/a (target >= 0.5), and checks that (b) stored every
message exactly once. The channel's sink is the gateway's Core as `gateway serve` builds it
(bus, router, archive checkpoints), without the HTTP side and the outbox worker.

Two things shape the figures. The gateway stores one customer's messages one after the
other (their order is kept whatever the core does), so throughput grows with the number of
customers writing at once, and one customer alone is bound by the commit latency. And
Prosody's own message archive (mod_mam, 0.12) costs Prosody more per message than either
receiver does, so by default it is switched off here (`--mam` keeps it: then both runs
measure Prosody); the gateway then logs that the server has no archive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.prosody import PASSWORD, Prosody, XmppClient  # noqa: E402


# ---- receivers (run in their own process) -------------------------------------------------


async def serve_echo(jid: str, port: int) -> None:
    import slixmpp
    from slixmpp.xmlstream.handler import Callback
    from slixmpp.xmlstream.matcher import MatchXPath

    client = slixmpp.ClientXMPP(f"{jid}/echo", PASSWORD, plugin_config={
        "feature_mechanisms": {"unencrypted_scram": True}})
    client.enable_plaintext, client.enable_starttls, client.enable_direct_tls = True, False, False
    client.register_plugin("xep_0198")

    def on_message(stanza: Any) -> None:
        xml = stanza.xml
        if xml.find("{jabber:client}body") is None or xml.find(
                "{urn:xmpp:receipts}request") is None:
            return
        receipt = client.make_message(mto=xml.get("from"))
        receipt["receipt"] = xml.get("id")
        receipt.send()

    client.register_plugin("xep_0184", {"auto_ack": False})
    client.register_handler(Callback("echo", MatchXPath("{jabber:client}message"), on_message))
    started = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _e: started.done() or started.set_result(1))
    client.connect("127.0.0.1", port)
    await started
    client.send_presence()
    print("READY", flush=True)
    await asyncio.Event().wait()


async def serve_gateway(jid: str, port: int, db_url: str) -> None:
    from config.settings import Settings
    from connectors.xmpp import XmppChannel
    from gateway.batching import WriteBatcher
    from gateway.clock import SystemClock
    from gateway.core import Core, Policy
    from gateway.store import make_engine, upgrade

    await upgrade(db_url)
    engine = make_engine(db_url)
    core = Core(engine, SystemClock(), Policy(public_url="http://gw.bench"),
                WriteBatcher(engine))
    await core.batcher.start()
    settings = Settings(xmpp_jid=jid, xmpp_password=PASSWORD, xmpp_host="127.0.0.1",
                        xmpp_port=port, xmpp_security="none",
                        xmpp_flood_rate=100_000, xmpp_flood_burst=100_000)
    channel = XmppChannel.from_settings(settings)
    assert channel is not None
    await channel.start(core)  # the core is the channel's sink, as in `gateway serve`
    print("READY", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await channel.aclose()
        await core.aclose()
        await engine.dispose()


# ---- the load generator -------------------------------------------------------------------


async def load(target: str, port: int, customers: list[str], messages: int,
               window: int) -> dict[str, Any]:
    clients = [XmppClient(jid, port, resource="load") for jid in customers]
    await asyncio.gather(*(c.connect(presence=False) for c in clients))
    per_client = messages // len(clients)
    latencies: list[float] = []
    sent_at: dict[str, float] = {}
    done = asyncio.Event()
    answered = 0

    def attach(xmpp: XmppClient, slots: asyncio.Semaphore) -> None:
        def on_receipt(stanza: Any) -> None:
            nonlocal answered
            received = stanza.xml.find("{urn:xmpp:receipts}received")
            if received is None:
                return
            started = sent_at.pop(received.get("id"), None)
            if started is None:
                return
            latencies.append(time.perf_counter() - started)
            answered += 1
            slots.release()
            if answered == per_client * len(clients):
                done.set()

        from slixmpp.xmlstream.handler import Callback
        from slixmpp.xmlstream.matcher import MatchXPath
        xmpp.client.register_handler(Callback(
            "receipts", MatchXPath("{jabber:client}message"), on_receipt))

    async def run(index: int, xmpp: XmppClient) -> None:
        slots = asyncio.Semaphore(window)
        attach(xmpp, slots)
        for n in range(per_client):
            await slots.acquire()
            message_id = f"b{index}-{n}"
            sent_at[message_id] = time.perf_counter()
            xmpp.send(target, f"benchmark message {index}/{n}", message_id=message_id,
                      origin_id=message_id)

    start = time.perf_counter()
    senders = asyncio.gather(*(run(i, c) for i, c in enumerate(clients)))
    seen = -1
    while not done.is_set():  # fail loudly when answers stop coming
        if answered == seen:
            senders.cancel()
            raise RuntimeError(f"no answer for 30 s: {answered} of {messages} answered")
        seen = answered
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 30)
    elapsed = time.perf_counter() - start
    await senders
    await asyncio.gather(*(c.disconnect() for c in clients))
    latencies.sort()
    return {
        "messages": answered, "seconds": elapsed, "per_second": answered / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
    }


# ---- orchestration ------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                               text=True, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert process.stdout is not None
    line = process.stdout.readline()
    if "READY" not in line:
        process.kill()
        raise RuntimeError(f"receiver did not start: {line!r}")
    return process


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _stored(db_path: Path) -> tuple[int, int]:
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT count(*), count(DISTINCT provider_id) FROM transcript_entries "
                          "WHERE provider = 'xmpp'").fetchone()
    return int(rows[0]), int(rows[1])


async def orchestrate(args: argparse.Namespace) -> int:
    extra = "" if args.mam else 'modules_disabled = { "s2s", "mam" }'
    async with Prosody(archive="internal", extra=extra) as prosody:
        gw, echo = await prosody.accounts("gw", "echo")
        customers = list(await asyncio.gather(
            *(prosody.register(f"cust{i}") for i in range(args.clients))))
        results: dict[str, list[dict[str, Any]]] = {"echo": [], "gateway": []}
        for round_ in range(args.rounds):
            for target in ("echo", "gateway"):
                with tempfile.TemporaryDirectory(prefix="xmpp-bench-") as tmp:
                    db_path = Path(tmp) / "gateway.db"
                    if target == "echo":
                        receiver = _spawn("--serve", "echo", echo, str(prosody.port))
                        jid = echo
                    else:
                        receiver = _spawn("--serve", "gateway", gw, str(prosody.port),
                                          f"sqlite+aiosqlite:///{db_path}")
                        jid = gw
                    try:
                        out = subprocess.run(
                            [sys.executable, __file__, "--load", jid, str(prosody.port),
                             str(args.messages), str(args.window), *customers],
                            capture_output=True, text=True, cwd=ROOT, timeout=900)
                    finally:
                        _stop(receiver)
                    if out.returncode != 0:
                        print(out.stderr[-3000:], file=sys.stderr)
                        return 1
                    result = json.loads(out.stdout.strip().splitlines()[-1])
                    if target == "gateway":
                        rows, distinct = _stored(db_path)
                        result["stored"], result["stored_distinct"] = rows, distinct
                    results[target].append(result)
                    print(f"round {round_ + 1} {target:8s} {result['per_second']:8.0f} msg/s  "
                          f"p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:7.1f} ms"
                          + (f"  stored {result['stored']} ({result['stored_distinct']} "
                             "distinct)" if target == "gateway" else ""), flush=True)
        echo_rate = statistics.median(r["per_second"] for r in results["echo"])
        gw_rate = statistics.median(r["per_second"] for r in results["gateway"])
        gw_p99 = statistics.median(r["p99_ms"] for r in results["gateway"])
        ratio = gw_rate / echo_rate
        print(f"\nmedian: echo {echo_rate:.0f} msg/s, gateway {gw_rate:.0f} msg/s committed, "
              f"ratio {ratio:.2f} (target >= 0.5), gateway p99 send->receipt {gw_p99:.1f} ms")
        complete = all(r["stored"] == r["stored_distinct"] == r["messages"]
                       for r in results["gateway"])
        print("every answered message stored exactly once:", complete)
        return 0 if complete else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mam", action="store_true",
                        help="keep Prosody's message archive on: it then costs Prosody more "
                             "than either receiver, and both runs measure Prosody")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        if args.serve:
            kind, jid, port, *rest = args.serve
            if kind == "echo":
                asyncio.run(serve_echo(jid, int(port)))
            else:
                asyncio.run(serve_gateway(jid, int(port), rest[0]))
            return 0
        if args.load:
            jid, port, messages, window, *customers = args.load
            result = asyncio.run(load(jid, int(port), customers, int(messages), int(window)))
            print(json.dumps(result))
            return 0
    except KeyboardInterrupt:
        return 0
    return asyncio.run(orchestrate(args))


if __name__ == "__main__":
    sys.exit(main())
