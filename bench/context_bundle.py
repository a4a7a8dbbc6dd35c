"""Benchmark: build the context bundle for a customer with 1,000 transcript entries, in a
store of 1,000,000 entries across 10,000 customers, on SQLite and on PostgreSQL.

Run by hand (not in CI):  .venv/bin/python bench/context_bundle.py [--entries 1000000]
Prints p50/p99 of `Core.bundle(token)` alone and with JSON encoding (what the HTTP handler
does), against the target p99 < 5 ms. PostgreSQL is a throwaway server from tests/peers.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402

from gateway.batching import WriteBatcher  # noqa: E402
from gateway.clock import SystemClock  # noqa: E402
from gateway.core import Core, Policy  # noqa: E402
from gateway.events import IncomingCall  # noqa: E402
from gateway.addresses import make_address  # noqa: E402
from gateway.models import (  # noqa: E402
    Conversation,
    Customer,
    CustomerAddress,
    Leg,
    TranscriptEntry,
)
from gateway.store import make_engine, upgrade  # noqa: E402

CHUNK = 20_000


async def populate(url: str, customers: int, entries: int, big: int) -> str:
    """Fill the store; return the phone number of the customer with `big` entries."""
    engine = make_engine(url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    per = max(1, (entries - big) // max(1, customers - 1))
    cust, addr, conv, legs = [], [], [], []
    for i in range(customers):
        number = f"+1415{i:07d}"
        cust.append({"id": f"cus_{i}", "display_name": None, "created_at": t0,
                     "merged_into": None})
        addr.append({"address": f"whatsapp:{number}", "channel": "whatsapp", "value": number,
                     "customer_id": f"cus_{i}", "evidence": "attested", "detail": None,
                     "linked_at": t0})
        conv.append({"id": f"conv_{i}", "customer_id": f"cus_{i}", "status": "open",
                     "opened_at": t0, "last_activity_at": datetime.now(UTC),
                     "closed_at": None})
        legs.append({"id": f"leg_{i}", "conversation_id": f"conv_{i}", "channel": "whatsapp",
                     "thread_key": f"meta:+18005550000:{number}",
                     "address": f"whatsapp:{number}", "local_address": "+18005550000",
                     "binding": "attested", "escalation_id": None, "started_at": t0,
                     "ended_at": None, "agent_id": None})
    async with engine.begin() as conn:
        for table, rows in ((Customer, cust), (CustomerAddress, addr), (Conversation, conv),
                            (Leg, legs)):
            for start in range(0, len(rows), CHUNK):
                await conn.execute(insert(table.__table__), rows[start:start + CHUNK])
    # Interleave customers as real traffic would, so one customer's rows are scattered.
    batch: list[dict[str, object]] = []
    written = 0
    rounds = max(per, big)
    for r in range(rounds):
        for i in range(customers):
            if (i == 0 and r >= big) or (i > 0 and r >= per):
                continue
            batch.append({
                "conversation_id": f"conv_{i}", "leg_id": f"leg_{i}",
                "at": t0 + timedelta(seconds=r * customers + i), "provider_at": None,
                "channel": "whatsapp", "direction": "in" if r % 2 else "out",
                "kind": "message", "author": f"whatsapp:+1415{i:07d}",
                "text": f"message {r} of customer {i}: my parcel has not arrived yet",
                "data": None, "provider": "meta", "provider_id": f"wamid.{i}.{r}",
            })
            if len(batch) >= CHUNK:
                async with engine.begin() as conn:
                    await conn.execute(insert(TranscriptEntry.__table__), batch)
                written += len(batch)
                batch = []
    if batch:
        async with engine.begin() as conn:
            await conn.execute(insert(TranscriptEntry.__table__), batch)
        written += len(batch)
    await engine.dispose()
    print(f"  populated {customers:,} customers, {written:,} transcript entries", flush=True)
    return "+14150000000"


async def measure(url: str, number: str, runs: int) -> dict[str, float]:
    engine = make_engine(url)
    core = Core(engine, SystemClock(), Policy(public_url="http://gw.test"), WriteBatcher(engine))
    route = await core.open_call(IncomingCall(
        caller=make_address("voice", number), callee="support", call_ref="bench-call",
        provider="sip"))
    for _ in range(20):  # warm caches and the pool
        await core.bundle(route.context_token)
    gc.collect()
    gc.freeze()  # as `gateway serve` does after start-up
    build, with_json = [], []
    size = 0
    for _ in range(runs):
        t = time.perf_counter()
        bundle = await core.bundle(route.context_token)
        t1 = time.perf_counter()
        body = json.dumps(bundle, ensure_ascii=False, separators=(",", ":"))
        t2 = time.perf_counter()
        build.append((t1 - t) * 1000)
        with_json.append((t2 - t) * 1000)
        size = len(body)
    assert bundle is not None and len(bundle["transcript"]) >= 1000, "wrong customer"
    await engine.dispose()

    def pct(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=100)[int(p) - 1] if p < 100 else max(xs)

    return {"p50": statistics.median(build), "p99": pct(build, 99),
            "json_p50": statistics.median(with_json), "json_p99": pct(with_json, 99),
            "entries": len(bundle["transcript"]), "bytes": size}


def report(name: str, r: dict[str, float]) -> None:
    verdict = "meets" if r["p99"] < 5 else "MISSES"
    print(f"{name:<11} bundle of {int(r['entries'])} entries ({int(r['bytes']):,} B JSON): "
          f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms ({verdict} p99 < 5 ms); "
          f"with JSON encoding p50 {r['json_p50']:.2f} ms, p99 {r['json_p99']:.2f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        await upgrade(url)
        print("SQLite:", flush=True)
        number = await populate(url, args.customers, args.entries, args.big)
        results["SQLite"] = await measure(url, number, args.runs)
    if not args.skip_postgres:
        from tests.peers import PostgresServer

        print("PostgreSQL:", flush=True)
        with PostgresServer() as server:
            url = server.create_database("bench")
            await upgrade(url)
            number = await populate(url, args.customers, args.entries, args.big)
            results["PostgreSQL"] = await measure(url, number, args.runs)
    print()
    for name, r in results.items():
        report(name, r)


if __name__ == "__main__":
    asyncio.run(main())
