"""Guess limits: token buckets per source and one for everybody, in memory.

A bucket holds `burst` tokens and refills at `per_minute`; an attempt takes a token before
it is checked (so a hundred attempts arriving at once cannot all pass the check before the
first failure is counted) and gets it back when it succeeded: what is limited is failures.
The escalation PIN check in `gateway/calls.py` uses one `Throttle` per source and a global
one. Pure apart from the clock it is given; the table of sources is bounded (the oldest
entries go first), so a flood of sources costs bounded memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

MAX_SOURCES = 65536


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class Bucket:
    """One token bucket."""

    __slots__ = ("burst", "rate", "_state", "_clock")

    def __init__(self, burst: int, per_minute: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._state = _Bucket(self.burst, clock())

    def _refill(self, state: _Bucket, now: float) -> None:
        state.tokens = min(self.burst, state.tokens + (now - state.at) * self.rate)
        state.at = now

    def take(self) -> bool:
        self._refill(self._state, self._clock())
        if self._state.tokens < 1.0:
            return False
        self._state.tokens -= 1.0
        return True

    def give_back(self) -> None:
        self._state.tokens = min(self.burst, self._state.tokens + 1.0)

    @property
    def tokens(self) -> float:
        self._refill(self._state, self._clock())
        return self._state.tokens


class Buckets:
    """A token bucket per key (a source address), created full on first use."""

    __slots__ = ("burst", "rate", "_clock", "_buckets", "_max")

    def __init__(self, burst: int, per_minute: float,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_SOURCES
                 ) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._max = max_keys
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _state(self, key: str, now: float) -> _Bucket:
        state = self._buckets.get(key)
        if state is None:
            state = self._buckets[key] = _Bucket(self.burst, now)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            state.tokens = min(self.burst, state.tokens + (now - state.at) * self.rate)
            state.at = now
            self._buckets.move_to_end(key)
        return state

    def take(self, key: str) -> bool:
        state = self._state(key, self._clock())
        if state.tokens < 1.0:
            return False
        state.tokens -= 1.0
        return True

    def give_back(self, key: str) -> None:
        state = self._buckets.get(key)
        if state is not None:
            state.tokens = min(self.burst, state.tokens + 1.0)

    def tokens(self, key: str) -> float:
        return self._state(key, self._clock()).tokens


class Limited(StrEnum):
    """Which limit refused an attempt."""

    SOURCE = "source"  # this source failed too often
    GLOBAL = "global"  # everybody together failed too often (distributed guessing)


class Throttle:
    """Failed attempts limited per source and for everybody together."""

    __slots__ = ("per_source", "everyone")

    def __init__(self, *, source_burst: int, source_per_minute: float, global_burst: int,
                 global_per_minute: float, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.per_source = Buckets(source_burst, source_per_minute, clock)
        self.everyone = Bucket(global_burst, global_per_minute, clock)

    def attempt(self, source: str) -> Limited | None:
        """Take a token for an attempt from `source`: None when it may be checked, else the
        limit that refuses it (then nothing was taken)."""
        if not self.per_source.take(source):
            return Limited.SOURCE
        if not self.everyone.take():
            self.per_source.give_back(source)
            return Limited.GLOBAL
        return None

    def succeeded(self, source: str) -> None:
        """The attempt was right: it does not count against anyone."""
        self.per_source.give_back(source)
        self.everyone.give_back()
