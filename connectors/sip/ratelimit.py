"""Limits on what one SIP source can try: scanners, refusals collected, failed authentication.

The SIP edge asks these before it creates any state for a request:
- `ScannerLimiter`: messages whose User-Agent names a known scanner pass at a small rate per
  source; the rest are dropped without an answer, so a sweep learns nothing.
- `TokenBuckets` as the probe throttle: every refusal the edge sends a source (401, 403, 404,
  407, 416, 481) takes a token, whatever its User-Agent; a source without tokens gets a
  final "too many" answer until its bucket refills.
- `AuthThrottle`: failed digest authentications per source and per user, so passwords
  cannot be guessed online; a user's limit spares the addresses that user authenticated
  from before, so an attack from elsewhere does not lock the agent's own phone out.
Pure: the clock is injected, so tests move time by hand.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Final

__all__ = ["AuthThrottle", "LogGate", "SCANNER_USER_AGENTS", "ScannerLimiter", "TokenBuckets"]

SCANNER_USER_AGENTS: Final = re.compile(
    r"friendly-scanner|sipvicious|sipcli|sip-scan|vaxsipuseragent|sundayddr|iwar|sipsak",
    re.IGNORECASE,
)
"""User-Agent fragments of well-known SIP scanners and war-dialers (case-insensitive)."""

_MAX_KEYS: Final = 10_000  # buckets kept; beyond this the idle ones are forgotten
_LOG_EVERY: Final = 60.0


class TokenBuckets:
    """A token bucket per key (a source IP, a user): `rate` tokens a second, `burst` at most.

    At most `max_keys` buckets are kept; full ones are forgotten first (they lose nothing by
    it). When every bucket is in use, a new key gets no token: a flood from many sources
    at once is refused rather than allowed to grow the table.
    """

    __slots__ = ("rate", "burst", "max_keys", "_clock", "_buckets")

    def __init__(self, rate: float, burst: int, *, max_keys: int = _MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def _tokens(self, key: str, now: float) -> float:
        known = self._buckets.get(key)
        if known is None:
            return float(self.burst)
        tokens, last = known
        return min(float(self.burst), tokens + (now - last) * self.rate)

    def exhausted(self, key: str) -> bool:
        """Whether `key` has used its tokens up (cheap for keys never seen: the hot path)."""
        known = self._buckets.get(key)
        if known is None:
            return False
        tokens, last = known
        return tokens + (self._clock() - last) * self.rate < 1.0

    def has(self, key: str) -> bool:
        """Whether `key` has a token now (nothing is taken)."""
        return self._tokens(key, self._clock()) >= 1.0

    def take(self, key: str) -> bool:
        """Take one token for `key`; False when its bucket is empty (or no room is left)."""
        now = self._clock()
        buckets = self._buckets
        if key not in buckets and len(buckets) >= self.max_keys and not self._prune(now):
            return False
        tokens = self._tokens(key, now)
        allowed = tokens >= 1.0
        buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed

    def _prune(self, now: float) -> bool:
        """Forget buckets that have refilled; True when there is room again."""
        refill = self.burst / self.rate if self.rate > 0 else float("inf")
        buckets = self._buckets
        for key in [k for k, (_, t) in buckets.items() if now - t >= refill]:
            del buckets[key]
        return len(buckets) < self.max_keys


class LogGate:
    """True at most once a minute per key: a flood must not become a log flood."""

    __slots__ = ("_clock", "_logged")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logged: dict[str, float] = {}

    def __call__(self, key: str) -> bool:
        now = self._clock()
        last = self._logged.get(key)
        if last is not None and now - last < _LOG_EVERY:
            return False
        if len(self._logged) >= _MAX_KEYS:
            self._logged.clear()
        self._logged[key] = now
        return True


class ScannerLimiter:
    """A token bucket per source IP for scanner traffic: `rate` per second, `burst` at once."""

    __slots__ = ("_buckets", "should_log", "dropped")

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._buckets = TokenBuckets(rate, burst, clock=clock)
        self.should_log = LogGate(clock)
        self.dropped = 0

    @property
    def rate(self) -> float:
        return self._buckets.rate

    @property
    def burst(self) -> int:
        return self._buckets.burst

    @staticmethod
    def is_scanner(user_agent: str) -> bool:
        return SCANNER_USER_AGENTS.search(user_agent) is not None

    def allow(self, source: str) -> bool:
        """Take one token for `source`; False (and counted) when its bucket is empty."""
        allowed = self._buckets.take(source)
        if not allowed:
            self.dropped += 1
        return allowed


class AuthThrottle:
    """Failed digest authentications, limited per source IP and per user.

    `allowed(source, user)` before checking a password; `failed` or `succeeded` after. A
    user's bucket does not apply to a source that authenticated as that user within
    `remember` seconds (the agent's own phone keeps working while someone elsewhere
    guesses); a source's bucket always applies.
    """

    __slots__ = ("_sources", "_users", "_good", "remember", "_clock", "limited")

    def __init__(self, per_minute: float, burst: int, *, remember: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._sources = TokenBuckets(per_minute / 60.0, burst, clock=clock)
        self._users = TokenBuckets(per_minute / 60.0, burst, clock=clock)
        self._good: dict[tuple[str, str], float] = {}  # (user, source) -> last success
        self.remember = remember
        self._clock = clock
        self.limited = 0

    def allowed(self, source: str, user: str | None) -> bool:
        ok = self._sources.has(source) and (
            user is None or self._users.has(user.lower()) or self._known(user, source))
        if not ok:
            self.limited += 1
        return ok

    def _known(self, user: str, source: str) -> bool:
        at = self._good.get((user.lower(), source))
        return at is not None and self._clock() - at < self.remember

    def failed(self, source: str, user: str | None) -> None:
        self._sources.take(source)
        if user is not None:
            self._users.take(user.lower())

    def succeeded(self, source: str, user: str) -> None:
        good = self._good
        if len(good) >= _MAX_KEYS:
            deadline = self._clock() - self.remember
            for key in [k for k, t in good.items() if t < deadline]:
                del good[key]
            if len(good) >= _MAX_KEYS:
                good.clear()
        good[(user.lower(), source)] = self._clock()
