"""A real `gateway serve` process killed with SIGKILL while it works on mail, then started
again on the same database and mailbox.

Mid-ingest: every mail of the mailbox is in the transcript exactly once after the restart
(the IMAP position is committed with the mail it follows, never ahead of it). Mid-send: a
mail the SMTP server took whole, before the gateway could record that, is `unknown` after the
restart and never sent again (the outbox's rule for SMTP). And without a crash, a connection
lost during DATA is `unknown` at once and not retried."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import AGENT_TOKEN, RunningGateway
from tests.dovecot import Account, Dovecot
from tests.email.conftest import gateway_email_settings
from tests.email.support import CuttingProxy, Received, SmtpBehaviour, SmtpServer, mail
from tests.email.test_gateway import customer_of, reply
from tests.helpers import wait_until

pytestmark = pytest.mark.peers
ANN = "email:ann@example.org"
ROOT = Path(__file__).resolve().parents[2]


class Serve:
    """`python -m gateway serve` on ephemeral ports; its log goes to a file (for a failure)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._log = log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env,
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log)
        self.url = ""

    async def ready(self) -> None:
        """Until it prints "gateway: listening on http://host:port"."""
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        def listening() -> str:
            for raw in stdout:
                line = raw.decode(errors="replace")
                if line.startswith("gateway: listening on "):
                    return line.split()[3].rstrip(",")
            return ""

        self.url = await asyncio.wait_for(asyncio.to_thread(listening), 30)
        assert self.url, f"gateway serve exited ({self.proc.poll()}) before listening"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


@pytest.fixture
def serve_env(dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer,
              tmp_path: Path) -> dict[str, str]:
    settings = gateway_email_settings(dovecot, mailbox, smtp_server, tmp_path / "mail")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
           "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db",
           "GATEWAY_HTTP_PORT": "0", "GATEWAY_SIP_PORT": "0", "GATEWAY_LOG_FORMAT": "text",
           "GATEWAY_AGENT_TOKEN": AGENT_TOKEN}
    env.update({f"GATEWAY_{key.upper()}": str(value) for key, value in settings.items()})
    return env


@pytest.fixture
def processes() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()


async def api(http: aiohttp.ClientSession, gw: Serve, method: str, path: str,
              **kw: Any) -> Any:
    async with http.request(method, gw.url + path, **kw,
                            headers={"Authorization": f"Bearer {AGENT_TOKEN}"}) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


def stored_mails(db: Path) -> int:
    """Mail entries committed (read beside or after the gateway: SQLite in WAL mode)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return int(conn.execute("SELECT count(*) FROM transcript_entries WHERE "
                                "channel = 'email' AND direction = 'in'").fetchone()[0])


async def test_killed_mid_ingest_every_mail_is_stored_once_after_the_restart(
        dovecot: Dovecot, mailbox: Account, serve_env: dict[str, str], tmp_path: Path,
        processes: list[Serve]) -> None:
    total = 300
    # One thread: the first question, then replies naming it (one conversation, one leg).
    mails = [mail("Question", message_id="q0", body="Question 0")] + [
        mail("Re: Question", message_id=f"q{i}", body=f"Question {i}",
             headers={"References": "<q0@example.org>", "In-Reply-To": "<q0@example.org>"})
        for i in range(1, total)]
    dovecot.drop(mailbox, mails)
    # The first gateway reads through a proxy that kills it (SIGKILL) once half the
    # mailbox's bytes went by: some mail committed, some fetched and not yet, some unread.
    proxy = await CuttingProxy(dovecot.host, dovecot.port).start()
    proxy.cut_after = sum(map(len, mails)) // 2
    proxy.on_cut = lambda: processes[0].kill()
    db = tmp_path / "gateway.db"
    try:
        first = Serve({**serve_env, "GATEWAY_IMAP_PORT": str(proxy.port),
                       "GATEWAY_EMAIL_BATCH": "20"}, tmp_path / "serve.log")
        processes.append(first)  # (it may be killed before it prints that it listens)
        await wait_until(lambda: first.proc.poll() is not None, timeout=60,
                         what="the gateway killed mid-fetch")
    finally:
        await proxy.stop()
    at_kill = stored_mails(db)
    assert proxy.cuts == 1 and 0 < at_kill < total, f"{at_kill} of {total} stored at the kill"

    again = Serve({**serve_env, "GATEWAY_EMAIL_BATCH": "20"}, tmp_path / "serve.log")
    processes.append(again)
    await again.ready()
    await wait_until(lambda: stored_mails(db) >= total, timeout=60, what="the rest stored")
    async with aiohttp.ClientSession() as http:
        customer = await api(http, again, "GET", "/api/v1/customers", params={"address": ANN})
        [conv] = customer["conversations"]
        transcript = (await api(http, again, "GET",
                                f"/api/v1/conversations/{conv['id']}"))["transcript"]
    texts = [e["text"] for e in transcript if e["direction"] == "in"]
    assert sorted(texts) == sorted(f"Question {i}" for i in range(total))  # each once
    assert stored_mails(db) == total


async def test_killed_after_the_server_took_the_mail_it_is_never_sent_again(
        dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer,
        serve_env: dict[str, str], tmp_path: Path, processes: list[Serve]) -> None:
    def die_before_the_answer(got: Received) -> None:
        processes[-1].kill()  # the server has every byte; the gateway never hears "250"

    smtp_server.behaviour = SmtpBehaviour(on_message=die_before_the_answer)
    sending = Serve(serve_env, tmp_path / "serve.log")
    processes.append(sending)
    await sending.ready()
    await dovecot.append(mailbox, [mail("Where is my order?", message_id="m1")])
    async with aiohttp.ClientSession() as http:
        async def known() -> bool:
            async with http.get(sending.url + "/api/v1/customers", params={"address": ANN},
                                headers={"Authorization": f"Bearer {AGENT_TOKEN}"}) as resp:
                return resp.status == 200

        await wait_until(known, timeout=20, what="the customer's mail stored")
        customer = await api(http, sending, "GET", "/api/v1/customers",
                             params={"address": ANN})
        queued = await api(http, sending, "POST",
                           f"/api/v1/conversations/{customer['conversations'][0]['id']}"
                           "/messages", json={"text": "It left today."})
        await wait_until(lambda: sending.proc.poll() is not None, timeout=20,
                         what="the gateway killed during the handover")
        assert len(smtp_server.received) == 1

        smtp_server.behaviour = SmtpBehaviour()
        restarted = Serve(serve_env, tmp_path / "serve.log")
        processes.append(restarted)
        await restarted.ready()

        async def outbox_idle() -> bool:
            async with http.get(restarted.url + "/healthz") as resp:
                outbox = (await resp.json())["outbox"]
            return bool(outbox["passes"] >= 1 and outbox["in_flight"] == 0)

        await wait_until(outbox_idle, timeout=20, what="the outbox's first pass")
        state = await api(http, restarted, "GET", f"/api/v1/outbox/{queued['id']}")
        assert state["status"] == "unknown" and "not resent" in state["last_error"]
        assert len(smtp_server.received) == 1  # never twice


async def test_a_connection_lost_during_data_is_unknown_and_not_retried(
        mail_gateway, dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer) -> None:
    gw: RunningGateway = await mail_gateway()
    await dovecot.append(mailbox, [mail("Order", message_id="m1")])
    conv_id = (await customer_of(gw, ANN))["conversations"][0]["id"]
    smtp_server.behaviour = SmtpBehaviour(drop_after_data=True)
    message_id = await reply(gw, conv_id, "It left today.")
    row = await gw.wait_outbox(message_id, lambda r: r["status"] not in ("pending", "sending"))
    assert row["status"] == "unknown" and "not resent" in row["last_error"]
    assert row["attempts"] == 1
    smtp_server.behaviour = SmtpBehaviour()
    await gw.settle()
    assert (await gw.outbox(message_id))["attempts"] == 1 and smtp_server.received == []
