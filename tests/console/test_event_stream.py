"""`GET /api/v1/events` over real HTTP: delivery, resume with Last-Event-ID, heartbeats,
per-agent filtering, authentication, a dropped subscriber, and a server that stops while
streams are open."""

from __future__ import annotations


import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gateway.bus import QUEUE, REPLAY, CallEnded, ConversationAssigned
from gateway.domain import LegId
from tests.conftest import AGENT_TOKEN, BUSINESS_SMS
from tests.console.server import ALICE_TOKEN, BOB_TOKEN, SseReader, WorkspaceGateway
from tests.console.test_openapi import checker
from tests.helpers import whatsapp
from tests.standins import TwilioStandin, twilio_status_form


@pytest.fixture
async def ws(start_ws: Any, sqlite_url: str) -> WorkspaceGateway:
    return await start_ws(sqlite_url, heartbeat=0.2)


@asynccontextmanager
async def stream(ws: WorkspaceGateway, token: str | None = AGENT_TOKEN,
                 last_event_id: str | None = None) -> AsyncIterator[SseReader]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    async with ws.http.get(ws.url + "/api/v1/events", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        reader = SseReader(resp)
        # The stream is subscribed once its first bytes (retry + a comment) arrived.
        while "connected" not in reader.comments:
            await _one_line(reader)
        yield reader


async def _one_line(reader: SseReader) -> None:
    line = (await asyncio.wait_for(reader.response.content.readline(), 5)).decode().strip()
    if line.startswith(":"):
        reader.comments.append(line[1:].strip())


async def test_a_committed_message_arrives_as_a_message_event(ws: WorkspaceGateway) -> None:
    async with stream(ws) as events:
        result = await ws.core.ingest(whatsapp("+14155550141", "is anyone there?"))
        event = await events.until(lambda e: e.event == "message")
    assert event.id is not None and int(event.id) >= 1
    assert event.data["conversation_id"] == result.conversation_id
    entry = event.data["entry"]
    assert entry["text"] == "is anyone there?" and entry["direction"] == "in"
    assert entry["channel"] == "whatsapp" and entry["id"] == result.entry_id


async def test_resume_with_last_event_id_misses_nothing(ws: WorkspaceGateway) -> None:
    async with stream(ws) as events:
        await ws.core.ingest(whatsapp("+14155550142", "one"))
        first = await events.until(lambda e: e.event == "message")
    # Disconnected: two more are committed meanwhile.
    await ws.core.ingest(whatsapp("+14155550142", "two"))
    await ws.core.ingest(whatsapp("+14155550142", "three"))
    async with stream(ws, last_event_id=first.id) as events:
        got = [await events.next(), await events.next()]
    assert [e.data["entry"]["text"] for e in got] == ["two", "three"]
    assert [int(e.id or 0) for e in got] == [int(first.id or 0) + 1, int(first.id or 0) + 2]
    assert all(e.event == "message" for e in got)


async def test_a_gap_the_bus_cannot_fill_says_resync(ws: WorkspaceGateway) -> None:
    first = await ws.core.ingest(whatsapp("+14155550143", "m0"))
    # More than the bus holds for resume goes by: event 1 and those after it are gone.
    ws.bus.publish([ConversationAssigned(first.conversation_id, first.customer_id, f"a{n}", None)
                    for n in range(REPLAY)])
    await ws.core.ingest(whatsapp("+14155550143", "m1"))
    async with stream(ws, last_event_id="1") as events:
        resync = await events.next()
        after = await events.next()
    assert resync.event == "resync" and resync.data["last_event_id"] == 1
    assert after.event == "assigned" and after.id == str(ws.bus.last_seq - REPLAY + 1)
    # An id from before a restart (larger than anything this bus sent) also resyncs.
    async with stream(ws, last_event_id=str(ws.bus.last_seq + 100)) as events:
        event = await events.next()
    assert event.event == "resync" and "restarted" in event.data["reason"]


async def test_heartbeats_keep_an_idle_stream_alive(ws: WorkspaceGateway) -> None:
    async with stream(ws) as events:
        while events.comments.count("heartbeat") < 2:
            await _one_line(events)
    assert events.comments[0] == "connected"


async def test_agents_get_their_own_calls_and_every_message(ws: WorkspaceGateway) -> None:
    async with stream(ws, ALICE_TOKEN) as alice, stream(ws, BOB_TOKEN) as bob, \
            stream(ws) as service:
        await ws.offer_call("+14155550144", "bob")
        alices = await ws.offer_call("+14155550145", "alice")
        # The end of a call nobody was offered (its own leg; calls are matched by leg id).
        ws.bus.publish([CallEnded(alices.conversation_id, alices.customer_id,
                                  LegId("leg_unoffered"), None, "unanswered-ref")])
        ws.bus.publish([ConversationAssigned(alices.conversation_id, alices.customer_id,
                                             "alice", None)])
        await ws.core.ingest(whatsapp("+14155550146", "last one"))
        is_last = lambda e: e.event == "message" and e.data["entry"]["text"] == "last one"

        async def collect(reader: SseReader) -> list[Any]:
            seen = []
            while True:
                event = await reader.next()
                assert event is not None
                seen.append(event)
                if is_last(event):
                    return seen

        got = {name: await collect(reader)
               for name, reader in (("alice", alice), ("bob", bob), ("service", service))}
    calls = {name: [e.data["agent_id"] for e in seen if e.event == "call"]
             for name, seen in got.items()}
    assert calls == {"alice": ["alice"], "bob": ["bob"], "service": ["bob", "alice"]}
    alice_call = next(e for e in got["alice"] if e.event == "call")
    assert alice_call.data["context_url"] == alices.context_url
    assert alice_call.data["leg_id"] == alices.leg_id
    # Everyone sees the messages (the inbox is shared) and the assignment.
    for seen in got.values():
        texts = [e.data["entry"]["text"] for e in seen if e.event == "message"]
        assert any("incoming call" in t for t in texts) and texts[-1] == "last one"
        assert [e.event for e in seen].count("assigned") == 1
    # A call's end goes to whom the call went; one nobody was offered goes to the service.
    assert [e.event for e in got["service"]].count("call-ended") == 1
    assert "call-ended" not in [e.event for e in got["alice"]]
    assert "call-ended" not in [e.event for e in got["bob"]]


async def test_the_end_of_an_offered_call_follows_the_offer(ws: WorkspaceGateway) -> None:
    async with stream(ws, ALICE_TOKEN) as alice:
        route = await ws.offer_call("+14155550147", "alice")
        offered = await alice.until(lambda e: e.event == "call")
        ws.bus.publish([CallEnded(route.conversation_id, route.customer_id, route.leg_id,
                                  None, offered.data["call_ref"])])
        ended = await alice.until(lambda e: e.event == "call-ended")
    assert ended.data["call_ref"] == offered.data["call_ref"]


async def test_the_stream_needs_a_token_and_a_sane_last_event_id(ws: WorkspaceGateway) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {ALICE_TOKEN}"}):
        async with ws.http.get(ws.url + "/api/v1/events", headers=headers) as resp:
            assert resp.status == 401 and (await resp.json())["error"]
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with ws.http.get(ws.url + "/api/v1/events", headers={
            "Authorization": f"Bearer {ALICE_TOKEN}", "Last-Event-ID": "x1"}) as resp:
        assert resp.status == 400 and "Last-Event-ID" in (await resp.json())["error"]


async def test_a_subscriber_dropped_for_falling_behind_resumes_without_loss(
    ws: WorkspaceGateway
) -> None:
    result = await ws.core.ingest(whatsapp("+14155550148", "start"))
    burst = [ConversationAssigned(result.conversation_id, result.customer_id, f"a{n}", None)
             for n in range(QUEUE + 50)]
    received: list[Any] = []
    async with stream(ws) as events:
        ws.bus.publish(burst)  # in one go: more than a subscriber's queue holds
        while (event := await events.next()) is not None:
            received.append(event)
    assert len(received) == QUEUE  # then the stream ended: the bus dropped this subscriber
    async with stream(ws, last_event_id=received[-1].id) as events:
        while len(received) < len(burst):
            event = await events.next()
            assert event is not None and event.event == "assigned"
            received.append(event)
        assert ws.bus.subscribers == 1  # the dropped subscription is gone, this one is live
    assert [e.data["agent_id"] for e in received] == [e.agent_id for e in burst]


async def test_open_streams_do_not_hold_up_a_stopping_server(ws: WorkspaceGateway) -> None:
    async with stream(ws) as events:
        assert ws.workspace.stream is not None and ws.workspace.stream.open_streams == 1
        await asyncio.wait_for(ws.stop_server(), 10)
        assert await events.next() is None
    assert ws.bus.subscribers == 0


async def test_delivery_status_moves_reach_the_stream(start_ws: Any, sqlite_url: str,
                                                      twilio: TwilioStandin) -> None:
    ws = await start_ws(sqlite_url, twilio=twilio)
    number = "+14155550149"
    assert await ws.sms(number, "where is my parcel?") == 200
    status, customer = await ws.api("GET", "/api/v1/customers", params={"address": f"sms:{number}"})
    cid = customer["conversations"][0]["id"]
    async with stream(ws, ALICE_TOKEN) as events:
        status, reply = await ws.api("POST", f"/api/v1/conversations/{cid}/messages",
                                     token=ALICE_TOKEN, json={"text": "On its way."})
        assert status == 202, reply
        handed = await events.until(lambda e: e.event == "delivery")
        assert handed.data == {"conversation_id": cid, "outbox_id": reply["id"],
                               "status": handed.data["status"], "error": None,
                               "published_at": handed.data["published_at"]}
        assert handed.data["status"] in ("queued", "sent", "accepted")
        sid = (await ws.running.outbox(reply["id"]))["provider_id"]
        form = twilio_status_form(account_sid=twilio.account_sid, message_sid=sid,
                                  from_=BUSINESS_SMS, to=number, status="delivered")
        assert (await ws.running.twilio("/webhooks/twilio/status", form,
                                        twilio.auth_token))[0] == 200
        delivered = await events.until(lambda e: e.event == "delivery")
        # The same callback again moves nothing, so says nothing; a later one does.
        assert (await ws.running.twilio("/webhooks/twilio/status", form,
                                        twilio.auth_token))[0] == 200
        form["MessageStatus"] = form["SmsStatus"] = "read"
        assert (await ws.running.twilio("/webhooks/twilio/status", form,
                                        twilio.auth_token))[0] == 200
        read = await events.next()  # nothing came of the repeated callback
    assert read is not None and read.event == "delivery"
    assert (delivered.data["outbox_id"], delivered.data["status"]) == (reply["id"], "delivered")
    assert read.data["status"] == "read" and int(read.id or 0) > int(delivered.id or 0)
    assert not list(checker("DeliveryEvent").iter_errors(delivered.data))
