"""`gateway serve` killed (SIGKILL) while an XMPP customer keeps writing: after the restart
every message is in the transcript once (offline storage and the server's archive both
deliver copies), the archive position is stored, and the agent who had the conversation
still has it and sees what came in meanwhile, once."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.xmpp.protocol import parse_checkpoint
from tests.conftest import AGENT_TOKEN
from tests.helpers import wait_until
from tests.xmpp.conftest import FAST, PASSWORD

pytestmark = pytest.mark.peers

ROOT = Path(__file__).resolve().parents[2]
BODY = "{jabber:client}body"
_LISTENING = re.compile(r"gateway: listening on (http://\S+),")


class GatewayServe:
    """`python -m gateway serve` as a child process, its output in a file (never a pipe it
    could fill and block on)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    async def start(self) -> GatewayServe:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"],
                                         env=self.env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT)
        offset = self.log.stat().st_size if self.log.exists() else 0

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway serve exited: {self.output()[-3000:]}")
            found = _LISTENING.search(self.output()[offset:])
            self.url = found.group(1) if found else ""
            return bool(found)

        await wait_until(listening, timeout=30, what="gateway serve to listen")
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


async def api(http: aiohttp.ClientSession, gw: GatewayServe, path: str, **kw: Any
              ) -> tuple[int, Any]:
    async with http.get(gw.url + path, headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
                        **kw) as resp:
        return resp.status, await resp.json()


async def test_gateway_killed_while_the_customer_writes_catches_up_once_after_restart(
        prosody, client, tmp_path: Path) -> None:
    gw_jid, alice_jid, ann_jid = await prosody.accounts("gw", "alice", "ann")
    database = tmp_path / "gateway.db"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "GATEWAY_HTTP_PORT": "0", "GATEWAY_SIP_PORT": "0", "GATEWAY_AGENT_TOKEN": AGENT_TOKEN,
        "GATEWAY_LOG_FORMAT": "text", "GATEWAY_LOG_LEVEL": "INFO",
        "GATEWAY_XMPP_JID": gw_jid, "GATEWAY_XMPP_PASSWORD": PASSWORD,
        "GATEWAY_XMPP_HOST": "127.0.0.1", "GATEWAY_XMPP_PORT": str(prosody.port),
        "GATEWAY_XMPP_SECURITY": "none",
        "GATEWAY_AGENTS": json.dumps([{"id": "alice", "name": "Alice", "xmpp": alice_jid}]),
        **{f"GATEWAY_{key.upper()}": str(value) for key, value in FAST.items()},
    }
    log = tmp_path / "gateway.log"
    first = await GatewayServe(env, log).start()
    second: GatewayServe | None = None
    try:
        async with aiohttp.ClientSession() as http:
            alice = await client(alice_jid)
            ann = await client(ann_jid)

            async def texts(gw: GatewayServe) -> list[str]:
                status, customer = await api(http, gw, "/api/v1/customers",
                                             params={"address": f"xmpp:{ann_jid}"})
                if status != 200 or not customer["conversations"]:
                    return []
                conversation = customer["conversations"][0]["id"]
                status, view = await api(http, gw, f"/api/v1/conversations/{conversation}")
                assert status == 200, view
                return [e["text"] for e in view["transcript"] if e["direction"] == "in"]

            ann.send(gw_jid, "one", origin_id="m1")
            await wait_until(lambda: _has(texts(first), "one"), timeout=10, what="one")
            alice.send(gw_jid, "/next")
            await alice.wait_for_body("one")
            ann.send(gw_jid, "two", origin_id="m2")
            await alice.wait_for_body("[#1 xmpp:")

            ann.send(gw_jid, "three", origin_id="m3")  # in flight as the gateway dies
            first.kill()
            ann.send(gw_jid, "four", origin_id="m4")  # while it is down
            ann.send(gw_jid, "four", origin_id="m4")  # the customer's client resends it
            ann.send(gw_jid, "five", origin_id="m5")

            second = await GatewayServe(env, log).start()
            ann.send(gw_jid, "six", origin_id="m6")
            await wait_until(lambda: _has(texts(second), "six", "five", "four", "three"),
                             timeout=30, what="the catch-up")

            stored = await texts(second)
            assert sorted(stored) == sorted(["one", "two", "three", "four", "five", "six"])
            assert stored[:2] == ["one", "two"]
            status, customer = await api(http, second, "/api/v1/customers",
                                         params={"address": f"xmpp:{ann_jid}"})
            conversation_id = customer["conversations"][0]["id"]
            status, view = await api(http, second, f"/api/v1/conversations/{conversation_id}")
            assert view["agent_id"] == "alice"  # kept across the restart (presence grace)
            for text in ("four", "five", "six"):  # what came in while alice's gateway was away
                await alice.wait_for(lambda m, t=text: body(m).endswith(f"] {t}"), timeout=10)
            shown = [b for b in alice.bodies() if b.startswith("[#1")]
            assert len(shown) == len(set(shown))  # none shown twice

        with sqlite3.connect(database) as db:
            rows = db.execute("SELECT value FROM checkpoints WHERE key = ?",
                              (f"xmpp:archive:{gw_jid}",)).fetchall()
        assert len(rows) == 1 and parse_checkpoint(rows[0][0]) is not None
        assert "archive catch-up read" in second.output()
    finally:
        first.kill()
        if second is not None:
            second.stop()


def body(message: Any) -> str:
    return message.findtext(BODY) or ""


async def _has(texts: Any, *wanted: str) -> bool:
    got = await texts
    return all(w in got for w in wanted)
