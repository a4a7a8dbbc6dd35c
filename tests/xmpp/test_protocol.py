"""The pure XMPP decisions: dedupe keys, presence, outbound ids, archive positions, back-off."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.xmpp.protocol import (
    MAX_PROVIDER_ID,
    ArchiveCursor,
    ArchivePosition,
    StanzaIds,
    aggregate_presence,
    dedupe_key,
    format_checkpoint,
    parse_checkpoint,
    reconnect_delay,
    resource_presence,
)
from gateway.channels import Presence

ids = st.text(min_size=1, max_size=300)
jids = st.from_regex(r"[a-z0-9]{1,20}@[a-z0-9.]{1,20}", fullmatch=True)


def key(full: str, origin: str | None = None, mid: str | None = None,
        archive: str | None = None) -> str:
    return dedupe_key(sender_full=full, sender_bare=full.split("/")[0], origin_id=origin,
                      message_id=mid, archive_id=archive)


def test_origin_id_is_one_message_across_resources_and_copies():
    assert key("ann@x.org/phone", "o1", "m1", "a1") == key("ann@x.org/laptop", "o1", "m9", "a7")
    assert key("ann@x.org/phone", "o1") != key("bob@x.org/phone", "o1")


def test_a_plain_id_is_scoped_by_the_full_jid_and_the_archive_id_comes_last():
    assert key("ann@x.org/phone", mid="7") != key("ann@x.org/laptop", mid="7")
    assert key("ann@x.org/phone", mid="7", archive="a1") == key("ann@x.org/phone", mid="7")
    assert key("ann@x.org/phone", archive="a1") == "archive:a1"
    assert key("ann@x.org/phone") != key("ann@x.org/phone")  # nothing to recognise it by


@given(jids, jids, ids)
def test_one_sender_cannot_collide_with_another(a, b, origin):
    if a != b:
        assert key(f"{a}/r", origin) != key(f"{b}/r", origin)


@given(st.text(max_size=1100), ids, ids)
def test_keys_fit_the_column_and_are_stable(resource, origin, mid):
    for made in (key(f"ann@x.org/{resource}", origin), key(f"ann@x.org/{resource}", mid=mid)):
        assert len(made) <= MAX_PROVIDER_ID
    assert key(f"a@b/{resource}", mid=mid) == key(f"a@b/{resource}", mid=mid)


def test_presence_maps_xmpp_show_values():
    assert resource_presence("", "") is Presence.AVAILABLE
    assert resource_presence("", "chat") is Presence.AVAILABLE
    assert resource_presence("", "away") is Presence.AWAY
    assert resource_presence("", "xa") is Presence.AWAY
    assert resource_presence("", "dnd") is Presence.DND
    assert resource_presence("", "sleeping") is Presence.AVAILABLE  # unknown show: ignored
    assert resource_presence("unavailable", "") is Presence.OFFLINE
    assert resource_presence("error", "") is Presence.OFFLINE
    for other in ("subscribe", "subscribed", "unsubscribe", "probe"):
        assert resource_presence(other, "") is None


def test_an_agent_is_as_available_as_their_most_available_resource():
    assert aggregate_presence([]) is Presence.OFFLINE
    assert aggregate_presence([Presence.AWAY, Presence.AVAILABLE]) is Presence.AVAILABLE
    assert aggregate_presence([Presence.AWAY, Presence.DND]) is Presence.DND


def test_stanza_ids_verify_only_for_the_recipient():
    made = StanzaIds(b"k").make("out_123", "ann@x.org")
    assert StanzaIds(b"k").verify(made, "ann@x.org")
    assert not StanzaIds(b"k").verify(made, "mallory@x.org")
    assert not StanzaIds(b"other").verify(made, "ann@x.org")
    assert StanzaIds(b"k").make("out_123", "ann@x.org") == made  # same on every retry
    assert len(made) <= MAX_PROVIDER_ID


@given(st.text(max_size=300) | st.builds(lambda a, b: f"gw1.{a}.{b}", st.text(), st.text()),
       jids)
def test_nothing_a_stranger_makes_up_verifies(text, jid):
    assert StanzaIds(b"k").verify(text, jid) is False


def test_checkpoints_round_trip_and_garbage_reads_as_none():
    position = ArchivePosition("Xy-1", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert parse_checkpoint(format_checkpoint(position)) == position
    for garbage in (None, "", "only-an-id", "id not-a-date"):
        assert parse_checkpoint(garbage) is None


@settings(max_examples=120)
@given(st.integers(min_value=1, max_value=40), st.randoms(use_true_random=False),
       st.lists(st.booleans(), min_size=40, max_size=40))
def test_a_stored_position_never_passes_a_message_not_committed(n, rnd, positioned):
    """Whatever order messages commit in, the position one of them stores is never past a
    message that has not committed yet (a crash then would skip it)."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    cursor = ArchiveCursor()
    tickets = []
    pending = list(range(n))
    submitted = 0
    committed: set[int] = set()
    while pending or submitted < n:
        if submitted < n and (not pending or rnd.random() < 0.5):
            pos = ArchivePosition(f"{submitted:04d}", base + timedelta(seconds=submitted)) \
                if positioned[submitted] else None
            tickets.append((submitted, cursor.submit(pos)))
            submitted += 1
            continue
        live = [i for i in pending if i < submitted]
        if not live:
            continue
        i = rnd.choice(live)
        pending.remove(i)
        ticket = tickets[i][1]
        stored = ticket.checkpoint
        committed.add(i)  # this message and its checkpoint commit together
        if stored is not None:
            upto = int(stored.archive_id)
            assert all(j in committed for j in range(upto + 1) if positioned[j])
        cursor.done(ticket)
    assert cursor.pending == 0


def test_back_off_grows_with_jitter_up_to_the_cap():
    rng = random.Random(1)
    delays = [reconnect_delay(a, 1.0, 60.0, rng) for a in range(12)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(30.0 <= d <= 60.0 for d in delays[7:])
    assert len(set(delays)) == len(delays)
