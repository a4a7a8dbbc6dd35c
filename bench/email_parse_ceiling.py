"""Benchmark: the most bench/email_ingest.py can reach with the parser issue #9 requires.

Run by hand (not in CI):  .venv/bin/python bench/email_parse_ceiling.py [--mails 10000]
                                [--batch 100] [--customers 1000]

The same Dovecot mailbox as bench/email_ingest.py (its `make_mail`), then in one run:
  (a) the bare aioimaplib fetch of bench/email_ingest.py (the baseline of the target);
  (b) that fetch, each mail parsed in one worker process pipelined with the next FETCH (the
      gateway's default layout: both cores busy) by the standard `email` package as a
      plain program would use it (`message_from_bytes` with `policy.default`, `get_body`,
      `get_content`, From and Subject): nothing stored;
  (c) the same, each mail parsed by the gateway's own `parse_mail` (the same package and
      policy, tuned: connectors/email/parse.py), in one worker process;
  (d) (c) with two worker processes;
  and (a) again. Each is timed from the first command after SELECT to the last mail parsed.
Nothing is stored: no blobs, threading, transcript or commit. A gateway that does all of
that and parses with `parse_mail` cannot beat the better of (c) and (d): when that is under
0.5x of (a), bench/email_ingest.py's 0.5x target is out of reach with this parser here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from email import message_from_bytes, policy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.email_ingest import (  # noqa: E402
    bare_fetch,
    cpu_seconds,
    fetch_all,
    make_mail,
    open_inbox,
)
from connectors.email.parse import ParseConfig, Parsed, parse_mail  # noqa: E402
from tests.dovecot import Account, Dovecot  # noqa: E402

OURS = ParseConfig(our_address="support@gw.test")


def parse_batch(mails: list[bytes], ours: bool = False) -> tuple[int, float]:
    """Parse each mail and read its text (with the gateway's parse_mail when `ours`):
    characters read, CPU used."""
    cpu, chars = time.process_time(), 0
    if ours:
        for raw in mails:
            parsed = parse_mail(raw, OURS)
            chars += len(parsed.mail.text) if isinstance(parsed, Parsed) else 0
        return chars, time.process_time() - cpu
    for raw in mails:
        message = message_from_bytes(raw, policy=policy.default)
        body = message.get_body(preferencelist=("plain", "html"))
        if body is not None:
            chars += len(body.get_content())
        chars += len(str(message["From"] or "")) + len(str(message["Subject"] or ""))
    return chars, time.process_time() - cpu


async def fetch_and_parse(dovecot: Dovecot, account: Account, batch: int, workers: int,
                          ours: bool) -> tuple[int, float, float, float]:
    """Mails parsed, seconds, CPU of this process, CPU of the parsers (in workers or here)."""
    pool = ProcessPoolExecutor(workers) if workers else None
    loop = asyncio.get_running_loop()
    if pool is not None:  # the workers start before the clock does
        await asyncio.gather(*(loop.run_in_executor(pool, parse_batch, [])
                               for _ in range(workers)))
    client = await open_inbox(dovecot, account)
    started, cpu = time.perf_counter(), cpu_seconds()
    count, parse_cpu, pending = 0, 0.0, []
    async for literals in fetch_all(client, batch):
        mails = [bytes(line) for line in literals]
        count += len(mails)
        if pool is None:
            parse_cpu += parse_batch(mails, ours)[1]
            continue
        pending.append(loop.run_in_executor(pool, parse_batch, mails, ours))
        while len(pending) > 2 * workers:  # bounded, as the gateway's hand-off is
            parse_cpu += (await pending.pop(0))[1]
    for future in pending:
        parse_cpu += (await future)[1]
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    await client.logout()
    if pool is not None:
        pool.shutdown()
    return count, elapsed, cpu, parse_cpu


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--customers", type=int, default=1000)
    args = parser.parse_args()
    rng = random.Random(20261201)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at start")
    with Dovecot() as dovecot:
        account = dovecot.new_account()
        dovecot.drop(account, (make_mail(i, args.customers, rng) for i in range(args.mails)))
        status = dovecot.sync(account)
        assert status["messages"] == args.mails, status
        bare = [await bare_fetch(dovecot, account, args.batch)]
        print(f"(a) bare aioimaplib fetch:                 {bare[0][0] / bare[0][1]:7.0f} mails/s "
              f"(client CPU {bare[0][2] / bare[0][0] * 1000:.2f} ms/mail)")
        runs = []
        for label, workers, ours in (("(b) fetch + plain stdlib parse, 1 worker:", 1, False),
                                     ("(c) fetch + parse_mail, 1 worker:", 1, True),
                                     ("(d) fetch + parse_mail, 2 workers:", 2, True)):
            count, elapsed, cpu, parse_cpu = await fetch_and_parse(dovecot, account,
                                                                   args.batch, workers, ours)
            assert count == args.mails, count
            runs.append((label, count / elapsed))
            print(f"{label:42} {count / elapsed:7.0f} mails/s (fetching process "
                  f"{cpu / count * 1000:.2f} ms/mail, parsing {parse_cpu / count * 1000:.2f} "
                  "ms/mail)")
        bare.append(await bare_fetch(dovecot, account, args.batch))
        print(f"(a) bare aioimaplib fetch again:           {bare[1][0] / bare[1][1]:7.0f} mails/s")
    bare_rate = sum(n / s for n, s, _ in bare) / 2
    for label, rate in runs:
        print(f"ceiling {label[4:].rstrip(':'):38} {rate / bare_rate:.2f}x of the bare fetch "
              "(bench/email_ingest.py's target: 0.5x)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    asyncio.run(main())
