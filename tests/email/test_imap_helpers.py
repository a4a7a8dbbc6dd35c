"""The small pure pieces of the IMAP side: UID sets, FETCH answers, names, batch plans,
positions and back-off."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from connectors.email.imap import mailbox_name, parse_fetch, uid_set
from connectors.email.inbound import Backoff, Position, _plan


def test_uid_sets_are_compressed_into_ranges() -> None:
    assert uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"
    assert uid_set([5]) == "5" and uid_set([3, 1, 2, 2]) == "1:3"


@given(st.lists(st.integers(1, 10_000), min_size=1, max_size=200))
def test_uid_sets_name_exactly_the_uids(uids: list[int]) -> None:
    named: set[int] = set()
    for part in uid_set(uids).split(","):
        low, _, high = part.partition(":")
        named.update(range(int(low), int(high or low) + 1))
    assert named == set(uids)


def test_fetch_answers_are_read_with_the_uid_before_or_after_the_literal() -> None:
    lines = [b"1 FETCH (UID 7 RFC822.SIZE 5 BODY[] {5}", bytearray(b"hello"), b")",
             b"2 FETCH (RFC822.SIZE 3 BODY[] {3}", bytearray(b"bye"), b" UID 9)",
             b"3 FETCH (UID 11 RFC822.SIZE 42)", b"Fetch completed (0.001 + 0.000 secs)."]
    found = parse_fetch(lines)
    assert [(f.uid, f.size, f.raw) for f in found] == [(7, 5, b"hello"), (9, 3, b"bye"),
                                                        (11, 42, None)]


def test_mailbox_names_are_quoted_and_utf7_encoded() -> None:
    assert mailbox_name("INBOX") == "INBOX"
    assert mailbox_name("Support Requests") == '"Support Requests"'
    assert mailbox_name("Entwürfe") == "Entw&APw-rfe"
    assert mailbox_name("A&B") == "A&-B"


def test_batches_are_bounded_in_bytes_and_oversized_mail_goes_alone_header_only() -> None:
    sizes = {1: 400, 2: 400, 3: 400, 4: 5000, 5: 100}
    assert _plan([1, 2, 3, 4, 5], sizes, batch_bytes=1000, max_bytes=2000) == [
        ([1, 2], False), ([4], True), ([3, 5], False)]


def test_positions_round_trip_and_garbage_is_no_position() -> None:
    assert Position.parse(str(Position(1796155479, 42))) == Position(1796155479, 42)
    for bad in (None, "", "x:1", "1:", "1-2"):
        assert Position.parse(bad) is None


def test_reconnects_back_off_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(1.0, 60.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(10)]
    ceilings = [min(60.0, 2.0 ** i) for i in range(10)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert len({round(d, 6) for d in delays}) == 10  # jittered: a fleet never reconnects in step
    backoff.reset()
    assert backoff.next_delay() <= 1.0
