"""The inbox over HTTP: most recent activity first, filters, opaque keyset cursors, and the
timeline of one conversation. On SQLite and on a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from gateway.clock import FrozenClock
from gateway.events import CallEvent
from tests.console.server import WorkspaceGateway
from tests.helpers import call, code_from, sms, whatsapp


@pytest.fixture
async def ws(start_ws: Any, database_url: str, clock: FrozenClock) -> WorkspaceGateway:
    return await start_ws(database_url, clock=clock)


async def inbox(ws: WorkspaceGateway, **params: Any) -> dict[str, Any]:
    status, body = await ws.api("GET", "/api/v1/conversations",
                                params={k: str(v) for k, v in params.items()})
    assert status == 200, body
    return body


async def test_inbox_lists_open_conversations_most_recent_first(
    ws: WorkspaceGateway, clock: FrozenClock
) -> None:
    first = await ws.core.ingest(whatsapp("+14155550101", "where is my parcel?"))
    clock.advance(seconds=5)
    second = await ws.core.ingest(sms("+14155550102", "hello from sms"))
    clock.advance(seconds=5)
    page = await inbox(ws)
    assert [i["id"] for i in page["items"]] == [second.conversation_id, first.conversation_id]
    assert page["next_cursor"] is None
    top = page["items"][0]
    assert top["customer_id"] == second.customer_id and top["status"] == "open"
    assert top["channels"] == ["sms"] and top["last_text"] == "hello from sms"
    assert top["customer_address"] == "sms:+14155550102" and top["waiting"] == 1
    assert top["last_at"].endswith("Z")
    # A new message moves the older conversation to the top; a reply clears "waiting".
    await ws.core.ingest(whatsapp("+14155550101", "any news?"))
    await ws.core.reply(first.conversation_id, "It left the depot.", "alice")
    page = await inbox(ws)
    assert [i["id"] for i in page["items"]] == [first.conversation_id, second.conversation_id]
    assert page["items"][0]["last_text"] == "It left the depot."
    assert page["items"][0]["waiting"] == 0 and page["items"][0]["last_direction"] == "out"


async def test_status_channel_and_agent_filters(ws: WorkspaceGateway, clock: FrozenClock) -> None:
    wa = await ws.core.ingest(whatsapp("+14155550111", "wa"))
    clock.advance(seconds=1)
    text_msg = await ws.core.ingest(sms("+14155550112", "sms"))
    clock.advance(seconds=1)
    route = await ws.core.open_call(call("+14155550113", call_ref="call-filter@test"))
    await ws.core.call_event(CallEvent(call_ref="call-filter@test", kind="answered",
                                       provider="sip", agent_id="bob", leg_id=route.leg_id))
    await ws.core.close_conversation(text_msg.conversation_id)

    ids = lambda page: {i["id"] for i in page["items"]}
    assert ids(await inbox(ws)) == {wa.conversation_id, route.conversation_id}
    assert ids(await inbox(ws, status="closed")) == {text_msg.conversation_id}
    assert ids(await inbox(ws, status="all")) == {wa.conversation_id, text_msg.conversation_id,
                                                  route.conversation_id}
    assert ids(await inbox(ws, status="all", channel="sms")) == {text_msg.conversation_id}
    assert ids(await inbox(ws, channel="voice")) == {route.conversation_id}
    by_bob = await inbox(ws, agent="bob")
    assert ids(by_bob) == {route.conversation_id} and by_bob["items"][0]["agents"] == ["bob"]
    assert ids(await inbox(ws, agent="alice")) == set()
    closed = (await inbox(ws, status="closed"))["items"][0]
    assert closed["status"] == "closed" and closed["closed_at"]


async def test_cursor_pages_cover_everything_once_even_with_equal_times(
    ws: WorkspaceGateway, clock: FrozenClock
) -> None:
    made = []
    for n in range(7):
        if n % 3 == 0:
            clock.advance(seconds=1)  # groups of equal last-activity times: ties go by id
        made.append((await ws.core.ingest(sms(f"+1415555020{n}", f"m{n}"))).conversation_id)
    expected = (await inbox(ws, limit=50))["items"]
    assert len(expected) == 7
    seen, cursor, pages = [], None, 0
    while True:
        page = await inbox(ws, limit=3, **({"cursor": cursor} if cursor else {}))
        pages += 1
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert "=" not in cursor and len(page["items"]) == 3
    assert pages == 3
    assert [i["id"] for i in seen] == [i["id"] for i in expected]
    assert sorted(i["id"] for i in seen) == sorted(made)
    times = [i["last_at"] for i in seen]
    assert times == sorted(times, reverse=True)


async def test_bad_parameters_get_a_sentence(ws: WorkspaceGateway) -> None:
    for params, word in (({"status": "pending"}, "status"), ({"limit": "0"}, "limit"),
                         ({"limit": "many"}, "limit"), ({"cursor": "bm9wZQ"}, "cursor"),
                         ({"cursor": "%%%"}, "cursor")):
        status, body = await ws.api("GET", "/api/v1/conversations", params=params)
        assert status == 400 and word in body["error"], (params, body)
    status, _ = await ws.api("GET", "/api/v1/conversations", token=None)
    assert status == 401


async def test_codes_never_show_as_last_text(ws: WorkspaceGateway) -> None:
    first = await ws.core.ingest(whatsapp("+14155550121", "please verify me"))
    started = await ws.core.start_verification(first.conversation_id, None)
    assert ws.memory is not None
    sent = await ws.memory.wait_for(1)
    code = code_from(sent[0].text or "")
    await ws.core.ingest(whatsapp("+14155550121", code))
    await ws.memory.wait_for(2)
    page = await inbox(ws, status="all")
    assert all(code not in (i["last_text"] or "") for i in page["items"])
    status, view = await ws.api("GET", f"/api/v1/conversations/{first.conversation_id}/timeline")
    assert status == 200
    assert all(code not in (e.get("text") or "") for e in view["timeline"])
    codes = [e for e in view["timeline"] if e["type"] == "code"]
    assert codes and codes[0]["text"].startswith("[verification code sent")
    assert view["challenges"][0]["id"] == started.challenge_id
    assert view["challenges"][0]["status"] == "passed"
    # The leg that proved the code carries the verification now: badge and full disclosure.
    leg = view["legs"][0]
    assert leg["verification"]["method"] == "whatsapp-otp" and leg["disclosure"] == "full"


async def test_timeline_across_channels_with_delivery_calls_and_escalations(
    ws: WorkspaceGateway, clock: FrozenClock
) -> None:
    number = "+14155550131"
    first = await ws.core.ingest(whatsapp(number, "my card was charged twice"))
    reply = await ws.core.reply(first.conversation_id, "Let us call you.", "alice")
    assert ws.memory is not None
    await ws.memory.wait_for(1)
    escalation = await ws.core.escalate(first.conversation_id, "voice", "dial-in")
    pin = code_from((await ws.memory.wait_for(2))[1].text or "")
    clock.advance(seconds=30)
    # The SIP edge names its call by the leg the core returned, never by the Call-ID.
    leg = (await ws.core.open_call(call("+14155550199", pin=pin, call_ref="call-tl@test"))
           ).leg_id
    await ws.core.call_event(CallEvent(call_ref="call-tl@test", kind="answered",
                                       provider="sip", agent_id="alice", leg_id=leg))
    clock.advance(seconds=125)
    await ws.core.call_event(CallEvent(call_ref="call-tl@test", kind="ended", provider="sip",
                                       agent_id="alice", leg_id=leg))
    status, view = await ws.api("GET", f"/api/v1/conversations/{first.conversation_id}/timeline")
    assert status == 200
    assert [leg["channel"] for leg in view["legs"]] == ["whatsapp", "voice"]
    assert view["reply_leg_id"] == view["legs"][0]["id"]
    kinds = [(i["type"], i.get("channel")) for i in view["timeline"]]
    assert kinds[0] == ("entry", "whatsapp") and ("escalation", "voice") in kinds
    out = next(i for i in view["timeline"] if i.get("data") and
               i["data"].get("outbox_id") == reply.id)
    assert out["delivery"]["status"] in ("sent", "pending", "sending")
    ended = [i for i in view["timeline"] if (i.get("data") or {}).get("event") == "ended"]
    assert ended[0]["data"]["duration_seconds"] == 125.0
    assert ended[0]["data"]["agent_id"] == "alice"
    esc = next(i for i in view["timeline"] if i["type"] == "escalation")
    assert esc["id"] == escalation.id and esc["mode"] == "dial-in" and esc["used_at"]
    voice = view["legs"][1]
    assert voice["verification"] is None and voice["disclosure"] == "limited"
    assert voice["verification_reason"] == "no-verification"
    assert view["customer"]["addresses"][0]["evidence"] == "attested"
    status, body = await ws.api("GET", "/api/v1/conversations/conv_nope/timeline")
    assert status == 404 and "conv_nope" in body["error"]


async def test_sqlite_pages_the_inbox_on_its_index(start_ws: Any, sqlite_url: str) -> None:
    ws = await start_ws(sqlite_url)
    async with ws.core.engine.connect() as conn:
        plan = (await conn.execute(text(
            "EXPLAIN QUERY PLAN SELECT id FROM conversations WHERE status = 'open' "
            "AND (last_activity_at < '2026-01-01' OR (last_activity_at = '2026-01-01' "
            "AND id < 'x')) ORDER BY last_activity_at DESC, id DESC LIMIT 51"))).all()
    detail = " ".join(str(row[-1]) for row in plan)
    assert "ix_conversations_status_activity" in detail and "TEMP B-TREE" not in detail
