"""The durable outbox: retried with back-off, failures visible, nothing lost or sent twice,
including when the process is killed (SIGKILL) between accepting and sending."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web

from connectors.memory import MemoryChannel
from gateway.batching import WriteBatcher
from gateway.channels import SendError
from gateway.clock import FrozenClock, SystemClock
from gateway.core import Core, Policy
from gateway.outbox import Backoff, OutboxWorker
from gateway.store import make_engine
from tests.conftest import AGENT_TOKEN
from tests.helpers import wait_until, whatsapp

NUMBER = "+14155550100"
ROOT = Path(__file__).resolve().parent.parent


async def test_transient_failure_is_retried_and_sent_once(core: Core, clock: FrozenClock) -> None:
    memory = MemoryChannel()
    memory.fail_next = [SendError("provider answered 503", permanent=False)]
    worker = OutboxWorker(core.engine, {"whatsapp": memory}, clock, Backoff(base=30))
    first = await core.ingest(whatsapp(NUMBER, "hi"))
    reply = await core.reply(first.conversation_id, "hello back", "12")
    await worker.drain()
    state = await core.outbox_message(reply.id)
    assert state.status == "pending" and "503" in state.last_error
    await worker.drain()
    assert memory.sent == []  # not due yet: back-off
    clock.advance(seconds=31)
    await worker.drain()
    assert [m.text for m in memory.sent] == ["hello back"]
    state = await core.outbox_message(reply.id)
    assert state.status == "sent" and state.attempts == 2 and state.provider_id
    await worker.drain()
    assert len(memory.sent) == 1


async def test_permanent_failure_ends_in_a_visible_state(core: Core, clock: FrozenClock) -> None:
    memory = MemoryChannel()
    memory.fail_next = [SendError("21211: invalid 'To' number", permanent=True)]
    worker = OutboxWorker(core.engine, {"whatsapp": memory}, clock)
    first = await core.ingest(whatsapp(NUMBER, "hi"))
    reply = await core.reply(first.conversation_id, "hello back", None)
    await worker.drain()
    state = await core.outbox_message(reply.id)
    assert state.status == "failed" and "21211" in state.last_error


async def test_retries_give_up_after_the_limit(core: Core, clock: FrozenClock) -> None:
    memory = MemoryChannel()
    memory.fail_next = [SendError("timeout", permanent=False) for _ in range(3)]
    worker = OutboxWorker(core.engine, {"whatsapp": memory}, clock,
                          Backoff(base=1, max_attempts=3))
    first = await core.ingest(whatsapp(NUMBER, "hi"))
    reply = await core.reply(first.conversation_id, "hello back", None)
    for _ in range(3):
        await worker.drain()
        clock.advance(seconds=10)
    state = await core.outbox_message(reply.id)
    assert state.status == "failed" and "gave up after 3 attempts" in state.last_error


async def test_a_channel_without_connector_fails_visibly(core: Core, clock: FrozenClock) -> None:
    worker = OutboxWorker(core.engine, {}, clock)
    first = await core.ingest(whatsapp(NUMBER, "hi"))
    reply = await core.reply(first.conversation_id, "hello", None)
    await worker.drain()
    state = await core.outbox_message(reply.id)
    assert state.status == "failed" and "no connector" in state.last_error


async def test_status_callbacks_never_move_backwards(core: Core, clock: FrozenClock) -> None:
    from gateway.events import DeliveryStatus

    memory = MemoryChannel()
    worker = OutboxWorker(core.engine, {"whatsapp": memory}, clock)
    first = await core.ingest(whatsapp(NUMBER, "hi"))
    reply = await core.reply(first.conversation_id, "hello", None)
    await worker.drain()
    pid = (await core.outbox_message(reply.id)).provider_id
    for status, expected in [("delivered", "delivered"), ("sent", "delivered"),
                             ("queued", "delivered"), ("read", "read"),
                             ("delivered", "read")]:
        assert await core.delivery_status(DeliveryStatus("memory", pid, status)) == expected
    assert (await core.outbox_message(reply.id)).status == "read"


# ---- the crash: a real process, killed with SIGKILL ---------------------------------------


class Sink:
    """Stands for the provider: counts what it receives; can hold a request unanswered."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.hold = False
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        self.arrived.set()
        if self.hold:
            await asyncio.sleep(3600)
        return web.json_response({"sid": f"sink-{len(self.received)}"})


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[tuple[Sink, str]]:
    s = Sink()
    app = web.Application()
    app.router.add_post("/send", s.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield s, f"http://127.0.0.1:{port}/send"
    await runner.shutdown()
    await runner.cleanup()


class GatewayProcess:
    def __init__(self, db: str, sink_url: str, outbox: bool) -> None:
        env = {**os.environ, "GATEWAY_DATABASE_URL": db,
               "GATEWAY_AGENT_TOKEN": AGENT_TOKEN, "SINK_URL": sink_url,
               "GATEWAY_OUTBOX_ENABLED": "true" if outbox else "false",
               "GATEWAY_LOG_FORMAT": "text", "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.outbox_crash_app"], env=env,
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.url = ""

    async def ready(self) -> None:
        """Until the process says "ready <port>" (it binds ephemeral ports, HTTP and SIP)."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 30)
        while line and not line.startswith(b"ready "):
            line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 30)
        assert line, "the gateway process died before it was ready"
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    async def outbox_idle(self, http: aiohttp.ClientSession) -> None:
        """Until its outbox worker has looked for due rows and has no send on the wire."""
        async def idle() -> bool:
            async with http.get(self.url + "/healthz") as resp:
                outbox = (await resp.json())["outbox"]
            return bool(outbox["passes"] >= 1 and outbox["in_flight"] == 0)

        await wait_until(idle, timeout=20, what="the outbox to finish its first pass")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


async def api(http: aiohttp.ClientSession, gw: GatewayProcess, method: str, path: str,
              **kw: Any) -> Any:
    async with http.request(method, gw.url + path, **kw,
                            headers={"Authorization": f"Bearer {AGENT_TOKEN}"}) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def test_killed_between_accept_and_send_loses_nothing_and_sends_once(
    database_url: str, sink: tuple[Sink, str]
) -> None:
    received, sink_url = sink
    seed_core_db = database_url
    # 1. An API-only process accepts an agent reply (committed), then dies with SIGKILL.
    accepting = GatewayProcess(seed_core_db, sink_url, outbox=False)
    procs = [accepting]
    try:
        await accepting.ready()
        async with aiohttp.ClientSession() as http:
            # The customer wrote first (as a webhook would have stored it).
            engine = make_engine(seed_core_db)
            core = Core(engine, SystemClock(), Policy(public_url="http://x"), WriteBatcher(engine))
            first = await core.ingest(whatsapp(NUMBER, "where is my parcel?"))
            await core.aclose()
            await engine.dispose()
            reply = await api(http, accepting, "POST",
                              f"/api/v1/conversations/{first.conversation_id}/messages",
                              json={"text": "On its way."})
            accepting.kill()
            assert received.received == []

            # 2. A sending process starts on the same database: the reply goes out once.
            sending = GatewayProcess(seed_core_db, sink_url, outbox=True)
            procs.append(sending)
            await sending.ready()
            await asyncio.wait_for(received.arrived.wait(), 20)

            async def sent() -> bool:
                state = await api(http, sending, "GET", f"/api/v1/outbox/{reply['id']}")
                return bool(state["status"] == "sent")

            await wait_until(sent, what="the reply recorded as sent")
            sending.kill()

            # 3. Restarted again: nothing is sent twice.
            again = GatewayProcess(seed_core_db, sink_url, outbox=True)
            procs.append(again)
            await again.ready()
            await again.outbox_idle(http)
            assert [r["id"] for r in received.received] == [reply["id"]]

            # 4. Killed while the provider holds the request: in doubt, marked, never resent.
            received.hold = True
            received.arrived.clear()
            held = await api(http, again, "POST",
                             f"/api/v1/conversations/{first.conversation_id}/messages",
                             json={"text": "Anything else?"})
            await asyncio.wait_for(received.arrived.wait(), 20)
            again.kill()
            received.hold = False
            last = GatewayProcess(seed_core_db, sink_url, outbox=True)
            procs.append(last)
            await last.ready()
            await last.outbox_idle(http)
            state = await api(http, last, "GET", f"/api/v1/outbox/{held['id']}")
            assert state["status"] == "unknown" and "not resent" in state["last_error"]
            assert [r["id"] for r in received.received] == [reply["id"], held["id"]]
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.kill()


async def test_a_status_that_arrives_before_the_send_is_recorded_is_applied_after(
    core: Core, clock: FrozenClock
) -> None:
    from gateway.channels import OutboundMessage, SendReceipt
    from gateway.events import DeliveryStatus

    class QuickProvider:
        """Calls back 'delivered' before its own API answer reaches the worker."""

        channels = frozenset({"whatsapp"})

        async def send(self, message: OutboundMessage) -> SendReceipt:
            assert await core.delivery_status(
                DeliveryStatus("memory", "SMfast", "delivered", event_id="cb-1")) is None
            return SendReceipt("memory", "SMfast", "queued")

    worker = OutboxWorker(core.engine, {"whatsapp": QuickProvider()}, clock)
    first = await core.ingest(whatsapp(NUMBER, "hi"))
    reply = await core.reply(first.conversation_id, "hello", None)
    await worker.drain()
    assert (await core.outbox_message(reply.id)).status == "delivered"
    # the provider repeats the callback: nothing moves, nothing breaks
    assert await core.delivery_status(
        DeliveryStatus("memory", "SMfast", "delivered", event_id="cb-1")) == "delivered"
