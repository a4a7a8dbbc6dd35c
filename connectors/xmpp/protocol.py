"""Pure XMPP decisions the channel makes on every stanza: dedupe keys, presence, ids, positions.

Nothing here touches a socket or slixmpp: the asyncio layer (`session.py`, `channel.py`)
asks these functions and small classes, and the tests drive them directly (hypothesis for the
key and id functions). Clocks are injected.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from gateway.channels import Presence

__all__ = [
    "MAX_PROVIDER_ID",
    "ArchiveCursor",
    "ArchivePosition",
    "StanzaIds",
    "aggregate_presence",
    "dedupe_key",
    "format_checkpoint",
    "parse_checkpoint",
    "reconnect_delay",
    "resource_presence",
    "since",
]

MAX_PROVIDER_ID: Final = 200  # processed_events.event_id and transcript.provider_id columns


# ---- dedupe ---------------------------------------------------------------------------------


def dedupe_key(
    *,
    sender_full: str,
    sender_bare: str,
    origin_id: str | None,
    message_id: str | None,
    archive_id: str | None,
) -> str:
    """The provider_id of an inbound message: what is the same for every copy of it.

    - origin-id (XEP-0359) is chosen by the sender's client to be unique and is kept on a
      resend, so it is scoped by the sender's bare JID only (a resend from a new session,
      with a new resource, is still the same message). Scoped at all, so one sender cannot
      make another's message look like a duplicate.
    - the stanza `id` is older and weaker (some clients count per session), so it is scoped by
      the full JID: the copies we see (live, offline storage, archive, stream-management
      resend) all keep the full `from`.
    - with neither, the server's archive id is the same for our live, offline and archived
      copies (only a resend by the sender gets a new one).
    - with nothing at all, the message cannot be recognised again: a random key.
    Keys longer than the column are hashed (same input, same key).
    """
    if origin_id:
        key = f"origin:{sender_bare}:{origin_id}"
    elif message_id:
        key = f"id:{sender_full}:{message_id}"
    elif archive_id:
        key = f"archive:{archive_id}"
    else:
        return f"anon:{secrets.token_hex(16)}"
    if len(key) <= MAX_PROVIDER_ID:
        return key
    kind = key.split(":", 1)[0]
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{kind}#sha256:{digest}"


# ---- presence -------------------------------------------------------------------------------

_SHOW: Final = {
    "": Presence.AVAILABLE, "chat": Presence.AVAILABLE, "away": Presence.AWAY,
    "xa": Presence.AWAY, "dnd": Presence.DND,
}
# Which presence an agent has when resources disagree: any available resource makes the agent
# available (the router's rule); an explicit dnd outranks the automatic away of an idle device.
_RANK: Final = {Presence.AVAILABLE: 3, Presence.DND: 2, Presence.AWAY: 1, Presence.OFFLINE: 0}


def resource_presence(stanza_type: str, show: str) -> Presence | None:
    """One resource's presence from a <presence/> `type` attribute and its <show/> text.

    None for stanzas that say nothing about availability (subscribe, probe, ...). An error
    presence (the agent's server cannot reach them) counts as offline. An unknown <show/>
    value is ignored, as RFC 6121 4.7.2.1 asks: the resource is available.
    """
    stanza_type = stanza_type.strip()
    if stanza_type in ("unavailable", "error"):
        return Presence.OFFLINE
    if stanza_type not in ("", "available"):
        return None
    return _SHOW.get(show.strip(), Presence.AVAILABLE)


def aggregate_presence(values: Iterable[Presence]) -> Presence:
    """An agent's presence over all their online resources (none: offline)."""
    return max(values, key=_RANK.__getitem__, default=Presence.OFFLINE)


# ---- outbound stanza ids ---------------------------------------------------------------------


class StanzaIds:
    """Ids of outbound messages that say who they were sent to.

    `make(outbox_id, to)` is the outbox id plus a MAC over (outbox id, recipient's bare JID),
    so the same outbox row gets the same stanza id on every retry (a client that dedupes by id
    shows it once) and a receipt, marker or bounce is applied only when it comes from the JID
    the message went to: a stranger can neither move another customer's message forward nor
    fill the store with statuses for ids that never existed.
    """

    PREFIX: Final = "gw1."

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("StanzaIds needs a non-empty key")
        self._key = key

    def _mac(self, outbox_id: str, to_bare: str) -> str:
        digest = hmac.new(self._key, f"{outbox_id}\n{to_bare}".encode("utf-8", "surrogatepass"),
                          hashlib.sha256)
        return digest.hexdigest()[:20]

    def make(self, outbox_id: str, to_bare: str) -> str:
        return f"{self.PREFIX}{outbox_id}.{self._mac(outbox_id, to_bare)}"

    def verify(self, stanza_id: str, from_bare: str) -> bool:
        """True when `stanza_id` is one of ours and was sent to `from_bare`."""
        if not stanza_id.startswith(self.PREFIX) or len(stanza_id) > MAX_PROVIDER_ID:
            return False
        outbox_id, dot, mac = stanza_id[len(self.PREFIX):].rpartition(".")
        if not dot or not outbox_id:
            return False
        return hmac.compare_digest(mac.encode("utf-8", "surrogatepass"),
                                   self._mac(outbox_id, from_bare).encode())


# ---- archive positions (XEP-0313) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArchivePosition:
    """Where in the server's archive a message is: its archive id, and about when."""

    archive_id: str
    at: datetime


def format_checkpoint(position: ArchivePosition) -> str:
    return f"{position.archive_id} {position.at.isoformat()}"


def parse_checkpoint(value: str | None) -> ArchivePosition | None:
    """The stored checkpoint, or None when there is none or it cannot be read."""
    if not value:
        return None
    archive_id, _, stamp = value.strip().partition(" ")
    if not archive_id or not stamp:
        return None
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return ArchivePosition(archive_id, at)


@dataclass(eq=False, slots=True)
class _Ticket:
    position: ArchivePosition | None
    checkpoint: ArchivePosition | None
    done: bool = False


@dataclass
class ArchiveCursor:
    """The archive position that is safe to store with each inbound message.

    Messages are handed in (`submit`) in archive order and committed in any order. The stored
    position must never pass a message that is not committed yet, or a crash right after would
    skip it. So each message carries the position of the newest message before which every
    message is committed, as it stands when the message is submitted: it lags a little and
    is never ahead. A message submitted without a position (a live message that arrives while
    the catch-up of older ones runs: it is newer than messages not fetched yet) is waited for
    like any other but moves nothing.
    """

    committed: ArchivePosition | None = None
    _tickets: deque[_Ticket] = field(default_factory=deque)

    def submit(self, position: ArchivePosition | None) -> _Ticket:
        # With nothing pending before it, a message may carry its own position: its own
        # transaction is the one that makes everything up to it committed.
        own = position is not None and not self._tickets
        ticket = _Ticket(position, position if own else self.committed)
        self._tickets.append(ticket)
        return ticket

    def done(self, ticket: _Ticket) -> None:
        """The message's transaction committed (or it needed none)."""
        ticket.done = True
        tickets = self._tickets
        while tickets and tickets[0].done:
            head = tickets.popleft()
            if head.position is not None:
                self.committed = head.position

    @property
    def pending(self) -> int:
        return len(self._tickets)


# ---- reconnecting ---------------------------------------------------------------------------


def reconnect_delay(
    attempt: int, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Exponential back-off with equal jitter: half the step fixed, half random, so gateways
    that lost the same server do not all come back in the same instant."""
    step = min(cap, base * (2 ** min(max(attempt, 0), 30)))
    return step / 2 + (rng or random).uniform(0, step / 2)


def since(position: ArchivePosition | None, margin: timedelta) -> datetime | None:
    """Where a catch-up by time starts when the archive no longer knows our id."""
    return None if position is None else position.at - margin
