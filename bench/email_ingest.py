"""Benchmark: a fresh email channel catching up on a full mailbox vs a bare IMAP fetch.

Run by hand (not in CI):  .venv/bin/python bench/email_ingest.py [--mails 10000]
                                [--batch 100] [--customers 1000] [--workers 1]

One Dovecot (tests/dovecot.py) holds N mails (plain and multipart/alternative with HTML,
some with quoted history and signatures, from a pool of customers). In one run it measures
  (a) a bare aioimaplib client: UID SEARCH, then UID FETCH BODY.PEEK[] in batches, the
      bytes thrown away: what fetching alone costs;
  (b) the gateway's email channel on a fresh SQLite store, handing each FETCH batch to
      `Core.ingest_batch` (one write: dedupe, customer, conversation, leg, transcript entry
      of every mail, and the position; group commit, synchronous=FULL): parse in a worker
      process (started with the channel), parts written to the blob store, committed;
  (c) the same with parsing in a thread (email_parse_workers=0), to show what the process
      (the default) buys,
  and (a) again; each timed from the first command after SELECT to the last mail
committed (for (b)/(c): the core answered the commit). It prints mails/s, the ratio b/a
(target >= 0.5), peak RSS of the gateway process and of the parse worker, and RSS sampled
along the way (flat memory: it must not grow with the number of mails), and the gateway
process's CPU by thread (the SQLite writer, the event loop, the worker pool's hand-off
threads). `--gateway-only` runs (b) alone (for a profiler). The sink is the real `Core`:
positions stored with the mail, each mail placed by its thread (token, anchors, the
customer's open conversation) and its anchors recorded, as in `gateway serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aioimaplib  # noqa: E402

from config.settings import load_settings  # noqa: E402
from connectors.email import EmailChannel, email_config  # noqa: E402
from gateway.batching import WriteBatcher  # noqa: E402
from gateway.clock import SystemClock  # noqa: E402
from gateway.core import Core, Policy  # noqa: E402
from gateway.store import make_engine, upgrade_sync  # noqa: E402
from tests.dovecot import Account, Dovecot  # noqa: E402

PLAIN = (
    "From: {name} <{addr}>\r\nTo: Support <support@gw.test>\r\nSubject: {subject}\r\n"
    "Date: Mon, 30 Nov 2026 09:{minute:02d}:00 +0000\r\nMessage-ID: <{mid}@example.org>\r\n"
    "{thread}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n")
ALTERNATIVE = (
    "From: {name} <{addr}>\r\nTo: Support <support@gw.test>\r\nSubject: {subject}\r\n"
    "Date: Mon, 30 Nov 2026 09:{minute:02d}:00 +0000\r\nMessage-ID: <{mid}@example.org>\r\n"
    "{thread}MIME-Version: 1.0\r\n"
    "Content-Type: multipart/alternative; boundary=\"b{mid}\"\r\n\r\n"
    "--b{mid}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit"
    "\r\n\r\n{body}\r\n--b{mid}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    "<html><body><p>{html}</p></body></html>\r\n--b{mid}--\r\n")
QUOTE = ("\r\n\r\nOn Sun, Nov 29, 2026 at 5:00 PM Support <support@gw.test> wrote:\r\n"
         "> Thank you for your message.\r\n> Could you send us the order number?\r\n")
SIGNATURE = "\r\n-- \r\n{name}\r\nSent from my phone\r\n"


def make_mail(i: int, customers: int, rng: random.Random) -> bytes:
    who = rng.randrange(customers)
    name, addr = f"Customer {who}", f"customer{who}@example.org"
    body = (f"Hello,\r\n\r\nmy order {100000 + i} has not arrived yet. It was due last "
            f"week and the tracking page shows nothing new.\r\n\r\nThanks,\r\n{name}")
    thread = ""
    if i % 3 == 0:
        body += QUOTE
        thread = f"In-Reply-To: <out{i}@gw.test>\r\nReferences: <r{i}@example.org> " \
                 f"<out{i}@gw.test>\r\n"
    if i % 4 == 0:
        body += SIGNATURE.format(name=name)
    template = ALTERNATIVE if i % 2 else PLAIN
    return template.format(name=name, addr=addr, subject=f"Order {100000 + i}",
                           minute=i % 60, mid=f"m{i}", thread=thread, body=body,
                           html=body.replace("\r\n", "<br>")).encode()


def cpu_seconds(pid: int | str | None = None) -> float:
    """User+system CPU of this process (all its threads), or of another process by pid."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name."""
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            out[thread.name] = cpu_seconds(f"self/task/{thread.native_id}")
        except OSError:  # ended meanwhile
            pass
    return out


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def open_inbox(dovecot: Dovecot, account: Account) -> aioimaplib.IMAP4:
    """A client logged in to `account` with INBOX selected."""
    client = aioimaplib.IMAP4(dovecot.host, dovecot.port, timeout=120)
    await client.wait_hello_from_server()
    await client.login(account.user, account.password)
    await client.select("INBOX")
    return client


async def fetch_all(client: aioimaplib.IMAP4, batch: int) -> AsyncIterator[list[bytearray]]:
    """UID SEARCH ALL, then each UID FETCH BODY.PEEK[] of `batch` mails: its literals."""
    response = await client.uid_search("ALL", charset=None)
    uids = [u.decode() for line in response.lines[:-1] for u in line.split() if u.isdigit()]
    for start in range(0, len(uids), batch):
        chunk = ",".join(uids[start:start + batch])
        response = await client.uid("fetch", chunk, "(UID RFC822.SIZE BODY.PEEK[])")
        yield [line for line in response.lines if isinstance(line, bytearray)]


async def bare_fetch(dovecot: Dovecot, account: Account,
                     batch: int) -> tuple[int, float, float]:
    client = await open_inbox(dovecot, account)
    started, cpu = time.perf_counter(), cpu_seconds()
    count = 0
    async for mails in fetch_all(client, batch):
        count += len(mails)
    elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    await client.logout()
    return count, elapsed, cpu


class CoreSink:
    """The InboundSink calls the channel makes, served by today's Core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.committed = 0
        self.duplicates = 0
        self.done = asyncio.Event()
        self.expected = 0

    async def ingest(self, event: Any) -> Any:
        result = await self.core.ingest(event)
        self._tally([result])
        return result

    async def ingest_batch(self, events: Any, checkpoint: Any = None) -> Any:
        results = await self.core.ingest_batch(events, checkpoint)
        self._tally(results)
        return results

    def _tally(self, results: Any) -> None:
        for result in results:
            if result.duplicate:
                self.duplicates += 1
            else:
                self.committed += 1
        if self.committed >= self.expected:
            self.done.set()

    async def delivery_status(self, event: Any) -> Any:
        return await self.core.delivery_status(event)

    async def checkpoint(self, key: str) -> str | None:
        return await self.core.checkpoint(key)

    async def check_thread_token(self, token: str) -> str | None:
        return await self.core.check_thread_token(token)

    async def reply_thread(self, outbox_id: Any) -> Any:
        return await self.core.reply_thread(outbox_id)


async def gateway_catch_up(dovecot: Dovecot, account: Account, mails: int, batch: int,
                           workers: int, directory: Path) -> dict[str, Any]:
    db = directory / f"gateway-{workers}.db"
    url = f"sqlite+aiosqlite:///{db}"
    await asyncio.to_thread(upgrade_sync, url)  # Alembic runs its own loop
    engine = make_engine(url)
    core = Core(engine, SystemClock(), Policy(public_url="http://127.0.0.1:8080"),
                WriteBatcher(engine))
    await core.batcher.start()
    sink = CoreSink(core)
    sink.expected = mails
    settings = load_settings(
        email_address="support@gw.test", imap_host=dovecot.host, imap_port=dovecot.port,
        imap_user=account.user, imap_password=account.password, imap_security="none",
        smtp_host="127.0.0.1", smtp_security="none", email_batch=batch,
        email_parse_workers=workers, email_store_dir=str(directory / f"store-{workers}"),
        database_url=url)
    config = email_config(settings)
    assert config is not None
    channel = EmailChannel(replace(config, follow=replace(config.follow, reconnect_base=0.1)))
    samples: list[tuple[int, int]] = []
    try:
        await channel.start(sink)  # logged in, mailbox selected
        started, cpu, threads = time.perf_counter(), cpu_seconds(), thread_cpu()
        while not sink.done.is_set():
            try:
                await asyncio.wait_for(sink.done.wait(), 0.5)
            except TimeoutError:
                pass
            samples.append((sink.committed, rss_kb()))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        threads = {name: used - threads.get(name, 0.0) for name, used in thread_cpu().items()}
        worker_peak, worker_cpu = 0, 0.0
        pool = getattr(channel, "_parser", None)
        for process in (getattr(pool, "_processes", None) or {}).values():
            worker_peak = max(worker_peak, rss_kb(process.pid, "VmHWM"))
            worker_cpu += cpu_seconds(process.pid)
    finally:
        await channel.aclose()
        await core.aclose()
        await engine.dispose()
    stored = sqlite3.connect(db).execute(
        "select count(*) from transcript_entries where provider = 'imap'").fetchone()[0]
    return {"mails": sink.committed, "stored": stored, "elapsed": elapsed, "cpu": cpu,
            "worker_cpu": worker_cpu, "threads": threads,
            "duplicates": sink.duplicates, "samples": samples, "worker_peak_kb": worker_peak}


def _flatness(samples: list[tuple[int, int]], total: int) -> str:
    picks = []
    for fraction in (0.1, 0.5, 0.9):
        target = total * fraction
        near = min(samples, key=lambda s: abs(s[0] - target), default=None)
        if near is not None:
            picks.append(f"{near[1] / 1024:.0f} MB at {near[0]}")
    return ", ".join(picks)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1, help="parse processes for (b)")
    parser.add_argument("--gateway-only", action="store_true",
                        help="run (b) alone, no bare fetch and no (c): e.g. to profile it")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="gateway-bench-email-"))
    rng = random.Random(20261201)
    try:
        with Dovecot() as dovecot:
            account = dovecot.new_account()
            t = time.perf_counter()
            dovecot.drop(account, (make_mail(i, args.customers, rng) for i in range(args.mails)))
            status = dovecot.sync(account)
            assert status["messages"] == args.mails, status
            print(f"mailbox: {args.mails} mails ready in {time.perf_counter() - t:.1f} s "
                  f"(Dovecot {dovecot.host}:{dovecot.port}); FETCH batches of {args.batch}")
            bare1 = None if args.gateway_only else await bare_fetch(dovecot, account, args.batch)
            if bare1 is not None:
                print(f"(a) bare aioimaplib fetch:      {bare1[0] / bare1[1]:7.0f} mails/s "
                      f"({bare1[0]} in {bare1[1]:.2f} s; client CPU "
                      f"{bare1[2] / bare1[0] * 1000:.2f} ms/mail)")
            runs = []
            for workers in dict.fromkeys((args.workers,) if args.gateway_only
                                         else (args.workers, 0)):
                result = await gateway_catch_up(dovecot, account, args.mails, args.batch,
                                                workers, directory)
                runs.append((workers, result))
                label = f"worker process x{workers}" if workers else "parse in a thread"
                print(f"({'b' if workers == args.workers else 'c'}) gateway, {label + ':':22}"
                      f"{result['mails'] / result['elapsed']:7.0f} mails/s "
                      f"({result['mails']} committed, {result['stored']} transcript "
                      f"entries, in {result['elapsed']:.2f} s); RSS {_flatness(result['samples'], args.mails)}"
                      + (f"; worker peak {result['worker_peak_kb'] / 1024:.0f} MB"
                         if result["worker_peak_kb"] else "")
                      + f"; CPU {result['cpu'] / result['mails'] * 1000:.2f} ms/mail in the "
                      f"gateway process + {result['worker_cpu'] / result['mails'] * 1000:.2f} "
                      "in the parse worker")
                busy = sorted(((used, name) for name, used in result["threads"].items()
                               if used > 0.005 * result["cpu"]), reverse=True)
                print("    gateway process CPU by thread (ms/mail): " + ", ".join(
                    f"{name} {used / result['mails'] * 1000:.2f}" for used, name in busy))
            if bare1 is None:
                return
            bare2 = await bare_fetch(dovecot, account, args.batch)
            print(f"(a) bare aioimaplib fetch again: {bare2[0] / bare2[1]:6.0f} mails/s")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    bare_rate = (bare1[0] / bare1[1] + bare2[0] / bare2[1]) / 2
    for workers, result in runs:
        rate = result["mails"] / result["elapsed"]
        print(f"ratio gateway(workers={workers}) / bare fetch: {rate / bare_rate:.2f}x "
              f"(target >= 0.5x)")
    print(f"peak RSS of the gateway process: {rss_kb('self', 'VmHWM') / 1024:.0f} MB; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work on the "
          "machine slows (b) and (c) more than (a), which is mostly Dovecot)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(main())
