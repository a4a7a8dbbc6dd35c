"""The core's three flows on SQLite and on a real PostgreSQL: inbound, new legs, outbound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from connectors.memory import MemoryChannel
from gateway.addresses import make_address, parse_address
from gateway.batching import WriteBatcher
from gateway.clock import FrozenClock
from gateway.context import bundle_for_leg
from gateway.core import Core, Policy
from gateway.events import IncomingCall
from gateway.models import OtpChallenge, ProcessedEvent, TranscriptEntry
from gateway.outbox import OutboxWorker
from tests.helpers import call, code_from, email, latest_code, sms, whatsapp

NUMBER = "+14155550100"


@pytest_asyncio.fixture
async def phone(core: Core, clock: FrozenClock) -> AsyncIterator[tuple[MemoryChannel, OutboxWorker]]:
    """What the customer's devices receive: the outbox drained into an in-memory channel."""
    memory = MemoryChannel()
    worker = OutboxWorker(core.engine, {c: memory for c in memory.channels}, clock)
    yield memory, worker
    await worker.aclose()


async def verify_on_whatsapp(core: Core, phone: tuple[MemoryChannel, OutboxWorker]) -> str:
    memory, worker = phone
    first = await core.ingest(whatsapp(NUMBER, "I lost my card"))
    await core.start_verification(first.conversation_id, None)
    await worker.drain()
    result = await core.ingest(whatsapp(NUMBER, latest_code(memory.sent, "code is")))
    assert result.otp == "passed"
    return first.conversation_id


async def test_same_number_on_sms_whatsapp_and_voice_is_one_customer(core: Core) -> None:
    a = await core.ingest(whatsapp("14155550100", "hello"))  # wa_id form: no '+'
    b = await core.ingest(sms("+1 (415) 555-0100", "it's me again"))
    route = await core.open_call(call(NUMBER))
    assert a.customer_id == b.customer_id == route.customer_id
    assert a.conversation_id == b.conversation_id == route.conversation_id
    customer = await core.customer_by_address(make_address("sms", NUMBER))
    evidence = {x["address"]: x["evidence"] for x in customer["addresses"]}
    assert evidence == {
        f"whatsapp:{NUMBER}": "attested",
        f"sms:{NUMBER}": "same-number",
        f"voice:{NUMBER}": "same-number",
    }


async def test_whatsapp_quirks_find_the_same_customer(core: Core) -> None:
    br_old = await core.ingest(whatsapp("551187654321", "oi"))  # Brazil, no ninth digit
    br_new = await core.ingest(sms("+5511987654321", "oi de novo"))
    mx_old = await core.ingest(whatsapp("5215512345678", "hola"))  # Mexico's +521
    mx_new = await core.ingest(sms("+525512345678", "hola otra vez"))
    assert br_old.customer_id == br_new.customer_id
    assert mx_old.customer_id == mx_new.customer_id
    assert br_old.customer_id != mx_old.customer_id


async def test_transcript_is_one_ordered_list_across_legs(core: Core) -> None:
    await core.ingest(whatsapp(NUMBER, "one"))
    await core.ingest(sms(NUMBER, "two"))
    route = await core.open_call(call(NUMBER))
    await core.ingest(whatsapp(NUMBER, "three"))
    conv = await core.conversation(route.conversation_id)
    texts = [e["text"] for e in conv["transcript"]]
    assert texts == ["one", "two", f"incoming call from voice:{NUMBER}", "three"]
    assert [leg["channel"] for leg in conv["legs"]] == ["whatsapp", "sms", "voice"]


async def test_idle_conversation_closes_and_the_next_bundle_shows_it(
    core: Core, clock: FrozenClock
) -> None:
    first = await core.ingest(whatsapp(NUMBER, "my router is broken"))
    clock.advance(hours=73)
    second = await core.ingest(whatsapp(NUMBER, "still broken"))
    assert second.conversation_id != first.conversation_id
    route = await core.open_call(call(NUMBER))
    bundle = await core.bundle(route.context_token)
    assert bundle["conversation_id"] == second.conversation_id
    earlier = bundle["earlier_conversations"]
    assert [c["id"] for c in earlier] == [first.conversation_id]
    assert earlier[0]["status"] == "closed"
    assert earlier[0]["last_message"] == "my router is broken"


async def test_same_event_twice_is_stored_once(core: Core) -> None:
    event = whatsapp(NUMBER, "once", provider_id="wamid.dup")
    first = await core.ingest(event)
    again = await core.ingest(event)
    assert not first.duplicate and again.duplicate
    conv = await core.conversation(first.conversation_id)
    assert [e["text"] for e in conv["transcript"]] == ["once"]


@pytest.mark.parametrize("batched", [True, False], ids=["group-commit", "own-transactions"])
async def test_duplicate_appended_concurrently_from_ten_tasks_is_stored_once(
    database_url: str, clock: FrozenClock, batched: bool
) -> None:
    from gateway.store import make_engine

    # Ten separate engines: ten connections, ten transactions racing on the unique key.
    engines = [make_engine(database_url) for _ in range(10)]
    cores = [Core(e, clock, Policy(public_url="http://gw.test"), WriteBatcher(e))
             for e in engines]
    if batched:
        for c in cores:
            await c.batcher.start()
    event = whatsapp(NUMBER, "same message", provider_id="wamid.race")
    try:
        results = await asyncio.gather(*(c.ingest(event) for c in cores))
        assert sum(not r.duplicate for r in results) == 1
        async with engines[0].connect() as conn:
            stored = (await conn.execute(select(func.count()).select_from(
                TranscriptEntry.__table__))).scalar()
            claimed = (await conn.execute(select(func.count()).select_from(
                ProcessedEvent.__table__))).scalar()
        assert stored == 1 and claimed == 1
    finally:
        for c in cores:
            await c.aclose()
        for e in engines:
            await e.dispose()


async def test_otp_code_is_stored_hashed_and_never_in_the_transcript(
    core: Core, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    conversation_id = await verify_on_whatsapp(core, phone)
    memory, _ = phone
    code = code_from(memory.sent[0].text)
    async with core.engine.connect() as conn:
        hashes = (await conn.execute(select(OtpChallenge.__table__.c.code_hash))).scalars().all()
    assert hashes and all(code not in h for h in hashes)
    transcript = (await core.conversation(conversation_id))["transcript"]
    assert all(code not in e["text"] for e in transcript)
    assert "[verification code]" in [e["text"] for e in transcript]


async def test_otp_locks_after_too_many_wrong_codes(
    core: Core, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    memory, worker = phone
    first = await core.ingest(sms(NUMBER, "help"))
    await core.start_verification(first.conversation_id, None)
    await worker.drain()
    real = latest_code(memory.sent, "code is")
    wrong = f"{(int(real) + 1) % 1_000_000:06d}"
    outcomes = [(await core.ingest(sms(NUMBER, wrong))).otp for _ in range(5)]
    assert outcomes == ["wrong"] * 4 + ["locked"]
    assert (await core.ingest(sms(NUMBER, real))).otp is None  # nothing pending any more
    customer = await core.customer_by_address(make_address("sms", NUMBER))
    assert customer["latest_verification"] is None


async def test_expired_otp_does_not_verify(
    core: Core, clock: FrozenClock, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    memory, worker = phone
    first = await core.ingest(sms(NUMBER, "help"))
    await core.start_verification(first.conversation_id, None)
    await worker.drain()
    clock.advance(minutes=11)
    assert (await core.ingest(sms(NUMBER, latest_code(memory.sent, "code is")))).otp == "expired"


async def test_code_sent_by_sms_and_typed_in_whatsapp_proves_the_sms_number(
    core: Core, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    memory, worker = phone
    chat = await core.ingest(whatsapp(NUMBER, "hi"))
    await core.ingest(sms(NUMBER, "this is my phone"))
    await core.start_verification(chat.conversation_id, f"sms:{NUMBER}")
    await worker.drain()
    assert memory.sent[-1].to == f"sms:{NUMBER}" and memory.sent[-1].kind == "otp"
    assert (await core.ingest(whatsapp(NUMBER, latest_code(memory.sent, "code is")))).otp == "passed"
    customer = await core.customer_by_address(parse_address(f"sms:{NUMBER}"))
    assert customer["latest_verification"]["method"] == "sms-otp"
    evidence = {x["address"]: x["evidence"] for x in customer["addresses"]}
    assert evidence[f"sms:{NUMBER}"] == "proved"


async def test_whatsapp_customer_escalates_to_call_with_pin_and_agent_sees_verified(
    core: Core, clock: FrozenClock, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    memory, worker = phone
    conversation_id = await verify_on_whatsapp(core, phone)
    await core.escalate(conversation_id, "voice", "dial-in")
    await worker.drain()
    pin = latest_code(memory.sent)
    clock.advance(minutes=4)
    route = await core.open_call(call("+442071838750", pin=pin))  # from another phone
    bundle = await core.bundle(route.context_token)
    assert bundle["verification"]["summary"] == "verified by whatsapp-otp, 4 min ago"
    assert bundle["verification_reason"] == "verified-via-escalation"
    assert bundle["conversation_id"] == conversation_id
    assert "I lost my card" in [e["text"] for e in bundle["transcript"]]


async def test_pin_works_once(core: Core, phone: tuple[MemoryChannel, OutboxWorker]) -> None:
    memory, worker = phone
    conversation_id = await verify_on_whatsapp(core, phone)
    await core.escalate(conversation_id, "voice", "dial-in")
    await worker.drain()
    pin = latest_code(memory.sent)
    await core.open_call(call(NUMBER, pin=pin))
    replay = await core.open_call(call(NUMBER, pin=pin))
    bundle = await core.bundle(replay.context_token)
    assert bundle["verification"] is None
    assert bundle["verification_reason"] == "escalation-invalid"


async def test_a_pin_calls_answer_and_end_reported_at_once_use_the_pin_in_that_order(
    core: Core, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    """An edge reports the answer and, a moment later, the end (a short call) without waiting
    for either to be stored: the end must not overtake the answer, or the PIN would be given
    back as for a call nobody took, and the transcript would end the call before its answer."""
    from gateway.events import CallEvent

    memory, worker = phone
    conversation_id = await verify_on_whatsapp(core, phone)
    await core.escalate(conversation_id, "voice", "dial-in")
    await worker.drain()
    pin = latest_code(memory.sent)
    route = await core.open_call(call(NUMBER, pin=pin, call_ref="short@test"))
    leg = route.leg_id
    answered = asyncio.ensure_future(core.call_event(
        CallEvent("short@test", "sip", "answered", agent_id="12", leg_id=leg)))
    ended = asyncio.ensure_future(core.call_event(
        CallEvent("short@test", "sip", "ended", agent_id="12", leg_id=leg)))
    assert await asyncio.gather(answered, ended) == [True, True]
    replay = await core.open_call(call(NUMBER, pin=pin, call_ref="again@test"))
    assert (await core.bundle(replay.context_token))["verification_reason"] == \
        "escalation-invalid"  # used by the answered call, not given back
    texts = [e["text"] for e in (await core.conversation(conversation_id))["transcript"]]
    assert texts.index("answered by agent 12") < texts.index(
        next(t for t in texts if t.startswith("call ended after")))


async def test_callback_placed_by_the_gateway_carries_the_verification(
    core: Core, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    memory, worker = phone
    conversation_id = await verify_on_whatsapp(core, phone)
    await core.escalate(conversation_id, "voice", "callback")
    await worker.drain()
    placed = next(m for m in reversed(memory.sent) if m.kind == "call")
    assert placed.kind == "call" and placed.to == f"voice:{NUMBER}"
    route = await core.open_call(call(NUMBER, token=placed.escalation_token))
    bundle = await core.bundle(route.context_token)
    assert bundle["verification_reason"] == "verified-via-callback"
    assert bundle["verification"]["address"] == f"whatsapp:{NUMBER}"


async def test_caller_id_of_the_verified_number_identifies_but_never_verifies(
    core: Core, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    conversation_id = await verify_on_whatsapp(core, phone)
    # A stranger spoofing the customer's number: same caller ID, no PIN.
    route = await core.open_call(call(NUMBER))
    bundle = await core.bundle(route.context_token)
    assert bundle["conversation_id"] == conversation_id  # identified: same customer
    assert bundle["verification"] is None
    assert bundle["verification_reason"] == "caller-id-only"


async def test_wrong_pin_from_the_verified_number_does_not_verify(
    core: Core, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    memory, worker = phone
    conversation_id = await verify_on_whatsapp(core, phone)
    await core.escalate(conversation_id, "voice", "dial-in")
    await worker.drain()
    pin = latest_code(memory.sent)
    guess = f"{(int(pin) + 1) % 1_000_000:06d}"
    bundle = await core.bundle((await core.open_call(call(NUMBER, pin=guess))).context_token)
    assert bundle["verification"] is None
    assert bundle["verification_reason"] == "escalation-invalid"


async def test_expired_grant_is_shown_as_expired(
    core: Core, clock: FrozenClock, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    await verify_on_whatsapp(core, phone)
    clock.advance(hours=2)
    later = await core.ingest(whatsapp(NUMBER, "back again"))
    route = await core.open_call(call(NUMBER))
    bundle = await core.bundle(route.context_token)
    assert later.conversation_id == bundle["conversation_id"]
    assert bundle["verification"] is None
    assert bundle["verification_reason"] == "verification-expired"
    assert bundle["verification_expired_at"] is not None


async def test_pin_after_the_grant_expired_does_not_verify(
    core: Core, clock: FrozenClock, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    memory, worker = phone
    conversation_id = await verify_on_whatsapp(core, phone)
    clock.advance(minutes=50)
    await core.escalate(conversation_id, "voice", "dial-in")
    await worker.drain()
    pin = latest_code(memory.sent)
    clock.advance(minutes=14)  # PIN still valid, grant (60 min) is not
    bundle = await core.bundle((await core.open_call(call(NUMBER, pin=pin))).context_token)
    assert bundle["verification"] is None
    assert bundle["verification_reason"] == "verification-expired"


async def test_whatsapp_grant_does_not_carry_to_an_sms_leg_of_the_same_number(
    core: Core, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    conversation_id = await verify_on_whatsapp(core, phone)
    result = await core.ingest(sms(NUMBER, "texting now"))
    bundle = await core.reader.run(bundle_for_leg, result.leg_id, core.clock.now())
    assert bundle["conversation_id"] == conversation_id
    assert bundle["verification"] is None
    assert bundle["verification_reason"] == "address-not-attested"


async def test_new_whatsapp_leg_from_the_verified_wa_id_carries_the_grant(
    core: Core, clock: FrozenClock, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    await verify_on_whatsapp(core, phone)
    event = whatsapp(NUMBER, "new thread")
    moved = type(event)(**{**{f: getattr(event, f) for f in event.__dataclass_fields__},
                           "thread_key": "meta:+18005550001:" + NUMBER,
                           "recipient": "+18005550001"})
    result = await core.ingest(moved)
    assert result.new_leg
    bundle = await core.reader.run(bundle_for_leg, result.leg_id, clock.now())
    assert bundle["verification_reason"] == "verified"


async def test_email_from_the_verified_address_without_thread_token_is_not_verified(
    core: Core, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    memory, worker = phone
    first = await core.ingest(email("ann@example.org", "hello"))
    await core.start_verification(first.conversation_id, None)
    await worker.drain()
    assert (await core.ingest(email("ann@example.org", latest_code(memory.sent, "code is"),
                                    thread_token_ok=True))).otp == "passed"
    forged = await core.ingest(InboundMessageFactory.new_thread(email("ann@EXAMPLE.org", "hi")))
    bundle = await core.reader.run(bundle_for_leg, forged.leg_id, core.clock.now())
    assert bundle["verification_reason"] == "address-not-attested"


class InboundMessageFactory:
    @staticmethod
    def new_thread(event):  # type: ignore[no-untyped-def]
        fields = {f: getattr(event, f) for f in event.__dataclass_fields__}
        fields["thread_key"] = "<other-root@mail.test>"
        return type(event)(**fields)


async def test_verification_of_one_customer_never_reaches_another(
    core: Core, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    memory, worker = phone
    await verify_on_whatsapp(core, phone)
    stranger = await core.ingest(whatsapp("+14155550199", "hi"))
    await core.escalate(stranger.conversation_id, "voice", "dial-in")
    await worker.drain()
    pin = latest_code(memory.sent)
    # The stranger's PIN, dialled from the verified customer's number:
    bundle = await core.bundle((await core.open_call(call(NUMBER, pin=pin))).context_token)
    assert bundle["customer"]["id"] == stranger.customer_id
    assert bundle["verification"] is None
    assert bundle["verification_reason"] == "no-verification"


async def test_merge_and_undo_restore_both_customers(core: Core) -> None:
    a = await core.ingest(whatsapp(NUMBER, "from whatsapp"))
    b = await core.ingest(email("ann@example.org", "from email"))
    assert a.customer_id != b.customer_id
    merge_id = await core.merge_customers(a.customer_id, b.customer_id, "agent-7")
    merged = await core.customer_by_address(make_address("email", "ann@example.org"))
    assert merged["id"] == a.customer_id
    assert {c["id"] for c in merged["conversations"]} == {a.conversation_id, b.conversation_id}
    await core.undo_merge(merge_id)
    back = await core.customer_by_address(make_address("email", "ann@example.org"))
    assert back["id"] == b.customer_id
    assert [x["evidence"] for x in back["addresses"]] == ["claimed"]
    assert [c["id"] for c in back["conversations"]] == [b.conversation_id]
    first = await core.customer_by_address(make_address("whatsapp", NUMBER))
    assert [c["id"] for c in first["conversations"]] == [a.conversation_id]


async def test_call_events_tell_the_next_leg_who_answered_and_for_how_long(
    core: Core, clock: FrozenClock
) -> None:
    from gateway.events import CallEvent

    route = await core.open_call(call(NUMBER, call_ref="abc@test"))
    leg = route.leg_id  # the SIP edge names its call by the leg the core returned
    await core.call_event(CallEvent("abc@test", "sip", "ringing", agent_id="12", leg_id=leg))
    await core.call_event(CallEvent("abc@test", "sip", "answered", agent_id="12", leg_id=leg))
    clock.advance(minutes=6, seconds=3)
    await core.call_event(CallEvent("abc@test", "sip", "ended", leg_id=leg))
    await core.call_event(CallEvent("abc@test", "sip", "ended", leg_id=leg))  # the other BYE
    # A Call-ID alone (the caller chose it) names no leg.
    assert not await core.call_event(CallEvent("abc@test", "sip", "answered", agent_id="13"))
    chat = await core.ingest(whatsapp(NUMBER, "following up on my call"))
    assert chat.conversation_id == route.conversation_id
    texts = [e["text"] for e in (await core.conversation(route.conversation_id))["transcript"]]
    assert "answered by agent 12" in texts
    assert texts.count("call ended after 6 min 3 s with agent 12") == 1


async def test_context_token_is_long_random_and_expires(core: Core, clock: FrozenClock) -> None:
    route = await core.open_call(call(NUMBER))
    other = await core.open_call(call(NUMBER))
    assert len(route.context_token) >= 22 and route.context_token != other.context_token
    assert route.context_url == f"http://gw.test/api/v1/contexts/{route.context_token}"
    assert await core.bundle(route.context_token) is not None
    clock.advance(minutes=15, seconds=1)
    assert await core.bundle(route.context_token) is None
    assert await core.bundle("x" * 32) is None


async def test_a_retried_signed_call_setup_reuses_its_live_leg_and_nothing_else_does(
    core: Core,
) -> None:
    from gateway.events import CallEvent

    # A Twilio CallSid in a signed webhook: the retried (or next) webhook finds its leg.
    first = await core.open_call(call(NUMBER, call_ref="CAsame", provider="twilio"))
    again = await core.open_call(call(NUMBER, call_ref="CAsame", provider="twilio"))
    assert first.leg_id == again.leg_id and first.context_token != again.context_token
    # The same reference as a SIP Call-ID (the caller picks it) is another call, twice.
    sip_a = await core.open_call(call(NUMBER, call_ref="CAsame"))
    sip_b = await core.open_call(call(NUMBER, call_ref="CAsame"))
    assert len({first.leg_id, sip_a.leg_id, sip_b.leg_id}) == 3
    # An ended leg is never reopened, not even by its own provider-signed reference.
    await core.call_event(CallEvent("CAsame", "twilio", "ended"))
    later = await core.open_call(call(NUMBER, call_ref="CAsame", provider="twilio"))
    assert later.leg_id not in (first.leg_id, sip_a.leg_id, sip_b.leg_id)
    conv = await core.conversation(first.conversation_id)
    assert len(conv["legs"]) == 4


def test_policy_defaults_match_the_contract() -> None:
    policy = Policy(public_url="http://x")
    assert policy.context_token_ttl == timedelta(minutes=15)


async def test_a_call_presenting_a_live_context_token_keeps_its_leg(
    core: Core, clock: FrozenClock, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    memory, worker = phone
    conversation_id = await verify_on_whatsapp(core, phone)
    await core.escalate(conversation_id, "voice", "dial-in")
    await worker.drain()
    upstream = await core.open_call(call(NUMBER, pin=latest_code(memory.sent)))
    # The same call reaches the SIP edge with the upstream's token (Twilio's X-Context).
    relayed = await core.open_call(IncomingCall(
        caller=make_address("voice", NUMBER), callee="alice", call_ref="sip-call-id@twilio",
        provider="sip", context_token=upstream.context_token))
    assert (relayed.leg_id, relayed.context_token) == (upstream.leg_id, upstream.context_token)
    bundle = await core.bundle(relayed.context_token)
    assert bundle["verification_reason"] == "verified-via-escalation"


async def test_a_forged_or_expired_context_token_binds_nothing(
    core: Core, clock: FrozenClock, phone: tuple[MemoryChannel, OutboxWorker]
) -> None:
    await verify_on_whatsapp(core, phone)
    forged = await core.open_call(IncomingCall(
        caller=make_address("voice", NUMBER), callee="alice", call_ref="forged@test",
        provider="sip", context_token="A" * 32))
    bundle = await core.bundle(forged.context_token)
    assert forged.context_token != "A" * 32
    assert bundle["verification_reason"] == "caller-id-only"
    old = await core.open_call(call(NUMBER))
    clock.advance(minutes=16)
    late = await core.open_call(IncomingCall(
        caller=make_address("voice", NUMBER), callee="alice", call_ref="late@test",
        provider="sip", context_token=old.context_token))
    assert late.leg_id != old.leg_id
