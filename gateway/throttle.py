"""Guess limits: token buckets per source and one for everybody, in the database.

A bucket holds `burst` tokens and refills at `per_minute`; an attempt takes a token before
it is checked (so a hundred attempts arriving at once cannot all pass the check before the
first failure is counted) and gets it back when it succeeded: what is limited is failures.
`SharedThrottle` keeps the buckets in `guess_buckets`, taken and given back inside the
caller's transaction, so every gateway on one database counts the same failures. The
escalation PIN check in `gateway/calls.py` uses it: with N gateways behind a dispatcher
that spreads INVITEs by Call-ID (which the caller picks), the in-memory buckets it had
before gave a guesser N times the attempts. On PostgreSQL a bucket's row lock orders
concurrent attempts across gateways; the global bucket is always taken first, so two
transactions never wait for each other in a cycle. Full buckets of sources are swept now and
then (a full bucket and no row are the same), so a flood of sources costs bounded rows.
"""

from __future__ import annotations

import itertools
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.engine import Connection


class Limited(StrEnum):
    """Which limit refused an attempt."""

    SOURCE = "source"  # this source failed too often
    GLOBAL = "global"  # everybody together failed too often (distributed guessing)


def _refilled(burst: str, rate: str) -> str:
    """SQL: the stored bucket's tokens at `excluded.at` (the attempt's time), at most `burst`;
    a clock that went back refills nothing."""
    elapsed = ("(CASE WHEN excluded.at > guess_buckets.at "
               "THEN excluded.at - guess_buckets.at ELSE 0 END)")
    value = f"guess_buckets.tokens + {elapsed} * {rate}"
    return f"(CASE WHEN {value} > {burst} THEN {burst} ELSE {value} END)"


_BURST, _RATE = "CAST(:burst AS DOUBLE PRECISION)", "CAST(:rate AS DOUBLE PRECISION)"
# One statement takes a token: a new bucket starts full, less the one taken; a bucket with
# less than one token is left as it is and returns no row (refused).
_TAKE = text(
    "INSERT INTO guess_buckets (key, tokens, at) "
    f"VALUES (:key, {_BURST} - 1, CAST(:now AS DOUBLE PRECISION)) "
    f"ON CONFLICT (key) DO UPDATE SET tokens = {_refilled(_BURST, _RATE)} - 1, "
    "at = CASE WHEN excluded.at > guess_buckets.at THEN excluded.at ELSE guess_buckets.at END "
    f"WHERE {_refilled(_BURST, _RATE)} >= 1 RETURNING tokens")
_GIVE_BACK = text(
    f"UPDATE guess_buckets SET tokens = CASE WHEN tokens + 1 > {_BURST} THEN {_BURST} "
    "ELSE tokens + 1 END WHERE key = :key")
_PEEK = text("SELECT tokens, at FROM guess_buckets WHERE key = :key")
# A bucket untouched for as long as it takes to refill from empty is full: the same as no row.
_FORGET = text("DELETE FROM guess_buckets WHERE key LIKE :prefix AND at < "
               "CAST(:before AS DOUBLE PRECISION)")
FORGET_EVERY = 256  # attempts between two sweeps of full per-source buckets, per process


class SharedThrottle:
    """Failed attempts limited per source and for everybody together, in the database, taken and
    given back in the transaction of `conn`; `now` is the attempt's time in epoch seconds."""

    __slots__ = ("name", "source_burst", "source_rate", "global_burst", "global_rate",
                 "_attempts")

    def __init__(self, name: str, *, source_burst: int, source_per_minute: float,
                 global_burst: int, global_per_minute: float) -> None:
        self.name = name
        self.source_burst, self.source_rate = float(source_burst), source_per_minute / 60.0
        self.global_burst, self.global_rate = float(global_burst), global_per_minute / 60.0
        self._attempts = itertools.count(1)

    def _source(self, source: str) -> str:
        return f"{self.name}:source:{source}"[:200]

    @property
    def _everyone(self) -> str:
        return f"{self.name}:global"

    @staticmethod
    def _take(conn: Connection, key: str, burst: float, rate: float, now: float) -> bool:
        if burst < 1.0:
            return False
        return conn.execute(_TAKE, {"key": key, "burst": burst, "rate": rate, "now": now}
                            ).first() is not None

    def _would_refuse_source(self, conn: Connection, source: str, now: float) -> bool:
        row = conn.execute(_PEEK, {"key": self._source(source)}).first()
        if row is None:
            return self.source_burst < 1.0
        tokens = min(self.source_burst, row[0] + max(0.0, now - row[1]) * self.source_rate)
        return tokens < 1.0

    def attempt(self, conn: Connection, now: float, source: str) -> Limited | None:
        """Take a token for an attempt from `source`: None when it may be checked, else the
        limit that refuses it (then nothing was taken). A source out of tokens is told so
        before the global limit is."""
        if next(self._attempts) % FORGET_EVERY == 0 and self.source_rate > 0:
            conn.execute(_FORGET, {"prefix": f"{self.name}:source:%",
                                   "before": now - self.source_burst / self.source_rate})
        if not self._take(conn, self._everyone, self.global_burst, self.global_rate, now):
            return (Limited.SOURCE if self._would_refuse_source(conn, source, now)
                    else Limited.GLOBAL)
        if not self._take(conn, self._source(source), self.source_burst, self.source_rate,
                          now):
            conn.execute(_GIVE_BACK, {"key": self._everyone, "burst": self.global_burst})
            return Limited.SOURCE
        return None

    def succeeded(self, conn: Connection, source: str) -> None:
        """The attempt was right (or never checked): it does not count against anyone."""
        conn.execute(_GIVE_BACK, {"key": self._source(source), "burst": self.source_burst})
        conn.execute(_GIVE_BACK, {"key": self._everyone, "burst": self.global_burst})
