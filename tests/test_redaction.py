"""Redaction (gateway/redaction.py) and the guess-limit buckets (gateway/throttle.py): pure
functions, fuzzed. The attacks over real sockets are in tests/test_trust_attacks.py."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from gateway.redaction import CODE_MARK, luhn_ok, mask_cards, redact
from gateway.throttle import Limited, SharedThrottle
from gateway.verification import codes_in_text


def _with_check_digit(body: str) -> str:
    for digit in "0123456789":
        if luhn_ok(body + digit):
            return body + digit
    raise AssertionError("unreachable")


cards = st.integers(12, 18).flatmap(
    lambda n: st.text("0123456789", min_size=n, max_size=n)).map(_with_check_digit)
separators = st.sampled_from(["", " ", "-"])
words = st.text(st.characters(blacklist_categories=("Nd",)), max_size=30)  # no digits


@given(card=cards, sep=separators, before=words, after=words)
def test_a_card_number_is_masked_keeping_its_last_four_wherever_it_stands(
    card: str, sep: str, before: str, after: str
) -> None:
    written = sep.join(card[i:i + 4] for i in range(0, len(card), 4))
    text = f"{before} {written} {after}"
    masked = mask_cards(text)
    assert card not in re.sub(r"[ -]", "", masked)
    assert masked.endswith(f" {after}") and len(masked) == len(text)
    assert re.sub(r"[^0-9]", "", masked) == card[-4:]  # the last four, and only those


@given(st.text(max_size=200))
def test_redaction_is_total_and_idempotent(text: str) -> None:
    once = redact(text, ("123456",))
    assert redact(once, ("123456",)) == once


def test_what_is_not_a_card_or_a_code_is_kept() -> None:
    assert mask_cards("order 4111 1111 1111 1112 is late") == "order 4111 1111 1111 1112 is late"
    assert mask_cards("call +1 415 555 0100") == "call +1 415 555 0100"
    assert redact("my code is 123 456", ("123 456",)) == f"my code is {CODE_MARK}"
    assert redact("order 1234567 shipped", ("123456",)) == "order 1234567 shipped"


def test_only_a_message_that_is_essentially_a_code_answers_one() -> None:
    assert codes_in_text("123456")[1] and codes_in_text("My code is 123-456, thanks")[1]
    found, answers = codes_in_text("my order 482913 is late")
    assert found[0].code == "482913" and not answers


def test_failures_are_limited_per_source_and_for_everyone_in_the_database() -> None:
    """The database's buckets (here SQLite; PostgreSQL across two gateways in
    tests/test_scale_out_calls.py): per source, for everyone, refilled, forgotten."""
    from sqlalchemy import create_engine, func, select

    from gateway import throttle as module
    from gateway.models import GuessBucket

    engine = create_engine("sqlite://")
    GuessBucket.__table__.create(engine)
    shared = SharedThrottle("pin", source_burst=2, source_per_minute=60, global_burst=3,
                            global_per_minute=0)
    with engine.begin() as conn:
        assert shared.attempt(conn, 0.0, "a") is None and shared.attempt(conn, 0.0, "a") is None
        assert shared.attempt(conn, 0.0, "a") is Limited.SOURCE
        assert shared.attempt(conn, 0.0, "b") is None
        shared.succeeded(conn, "b")  # a right PIN costs nobody anything
        assert shared.attempt(conn, 0.0, "b") is None
        assert shared.attempt(conn, 0.0, "c") is Limited.GLOBAL  # three failures in all
        assert shared.attempt(conn, 0.0, "a") is Limited.SOURCE  # said before the global one
        assert shared.attempt(conn, 1.0, "a") is Limited.GLOBAL  # a refilled, global did not
        # A clock that went back refills nothing.
        many = SharedThrottle("pin2", source_burst=1, source_per_minute=60, global_burst=999,
                              global_per_minute=0)
        assert many.attempt(conn, 10.0, "x") is None
        assert many.attempt(conn, 5.0, "x") is Limited.SOURCE
        assert many.attempt(conn, 11.0, "x") is None  # a second after its last take
        # Sources untouched for as long as they take to refill are forgotten (they were full).
        for n in range(module.FORGET_EVERY - 4):  # 3 attempts above, "late" is the next
            many.attempt(conn, 11.0, f"s{n}")
        assert many.attempt(conn, 100.0, "late") is None  # the sweep runs on this attempt
        left = conn.execute(select(func.count()).select_from(GuessBucket).where(
            GuessBucket.key.like("pin2:source:%"))).scalar_one()
        assert left == 1  # only "late", taken after the sweep
