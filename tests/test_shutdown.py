"""Stopping while a wake-up is on its way: a background loop that is woken (a reply just
committed, a phone just registered) in the same moment the gateway stops must still stop.

On Python 3.11 `asyncio.wait_for(event.wait(), t)` returns the event's True instead of
raising when the task is cancelled after the event was set but before the task resumed:
the cancellation is lost, the loop goes round again and `aclose()` waited for it forever
(the console tests' rare 120 s teardown hang). These tests set the event and cancel in the
same step of the event loop, which loses the cancellation every time."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from config.settings import AgentConfig
from gateway.agents import AgentDirectory
from gateway.clock import FrozenClock
from gateway.outbox import OutboxWorker
from gateway.registrations import SharedRegistrations
from gateway.store import make_engine
from gateway.tasks import cancel_and_wait
from tests.helpers import wait_until

# Only a guard so that a regression fails instead of hanging the suite; nothing is timed.
HANG = 10.0


async def stops(closing: Any, name: str) -> None:
    """`closing` (an aclose()) returns, and no task called `name` runs on afterwards."""
    stopping = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({stopping}, timeout=HANG)
    assert stopping in done, f"aclose() never returned: {name} lost its cancellation"
    stopping.result()
    left = [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]
    assert not left, f"{name} still runs after aclose(): {left}"


async def test_outbox_worker_woken_as_the_gateway_stops_still_stops(
    sqlite_url: str, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(sqlite_url)
    worker = OutboxWorker(engine, {}, clock, poll_interval=60.0)
    try:
        await worker.start()
        await wait_until(lambda: worker.passes >= 1, what="the worker's first pass")
        worker.wake()  # a reply committed just now ...
        await stops(worker.aclose(), "outbox-worker")  # ... as the gateway stops
    finally:
        await engine.dispose()
    assert "did not stop" not in caplog.text


async def test_shared_registrations_woken_as_the_gateway_stops_still_stop(
    sqlite_url: str, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(sqlite_url)
    agents = AgentDirectory([AgentConfig(id="12", name="Alice", sip_user="alice",
                                         sip_password="alice-secret-pw")],  # type: ignore[arg-type]
                            clock)
    shared = SharedRegistrations(engine, agents, clock, interval=60.0, holder="gw-a")
    try:
        await shared.start()
        alice = agents.by_sip_user("alice")
        assert alice is not None
        agents.register(alice, "sip:alice@10.0.0.5:5062", 120, ("192.0.2.9", 5060), "udp")
        await stops(shared.aclose(), "shared-registrations")  # as the gateway stops
    finally:
        await engine.dispose()
    assert "did not stop" not in caplog.text


async def test_a_task_that_swallows_its_cancellation_is_named_and_cancelled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    swallowed = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.set()  # a bug: goes on as if nothing happened
        await asyncio.Event().wait()

    task: asyncio.Task[Any] = asyncio.create_task(stubborn(), name="stubborn-loop")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="gateway.tasks"):
        await stops(cancel_and_wait(task, warn_after=0.05), "stubborn-loop")
    assert swallowed.is_set() and task.cancelled()
    assert "stubborn-loop did not stop" in caplog.text and "stubborn" in caplog.text
