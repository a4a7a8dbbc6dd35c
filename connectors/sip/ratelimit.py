"""Throttling of SIP scanners (friendly-scanner, sipvicious, sipcli, ...) by source IP.

The SIP edge asks `ScannerLimiter` before it creates any state for a request: messages whose
User-Agent names a known scanner pass at a small rate per source (token bucket) and the rest
are dropped without an answer, so a sweep learns nothing and costs us almost nothing.
Pure: the clock is injected, so tests move time by hand.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Final

__all__ = ["SCANNER_USER_AGENTS", "ScannerLimiter"]

SCANNER_USER_AGENTS: Final = re.compile(
    r"friendly-scanner|sipvicious|sipcli|sip-scan|vaxsipuseragent|sundayddr|iwar|sipsak",
    re.IGNORECASE,
)
"""User-Agent fragments of well-known SIP scanners and war-dialers (case-insensitive)."""

_MAX_SOURCES: Final = 10_000  # buckets kept; beyond this the idle ones are forgotten
_LOG_EVERY: Final = 60.0


class ScannerLimiter:
    """A token bucket per source IP for scanner traffic: `rate` per second, `burst` at once."""

    __slots__ = ("rate", "burst", "_clock", "_buckets", "_logged", "dropped")

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, last refill)
        self._logged: dict[str, float] = {}
        self.dropped = 0

    @staticmethod
    def is_scanner(user_agent: str) -> bool:
        return SCANNER_USER_AGENTS.search(user_agent) is not None

    def allow(self, source: str) -> bool:
        """Take one token for `source`; False (and counted) when its bucket is empty."""
        now = self._clock()
        buckets = self._buckets
        if source not in buckets and len(buckets) >= _MAX_SOURCES and not self._prune(now):
            self.dropped += 1  # too many scanning sources at once: new ones get nothing
            return False
        tokens, last = buckets.get(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        if not allowed:
            self.dropped += 1
        return allowed

    def should_log(self, source: str) -> bool:
        """True at most once a minute per source: a flood must not become a log flood."""
        now = self._clock()
        last = self._logged.get(source)
        if last is not None and now - last < _LOG_EVERY:
            return False
        if len(self._logged) >= _MAX_SOURCES:
            self._logged.clear()
        self._logged[source] = now
        return True

    def _prune(self, now: float) -> bool:
        """Forget sources whose buckets have refilled (they lose nothing by it); True when
        there is room again."""
        refill = self.burst / self.rate if self.rate > 0 else float("inf")
        buckets = self._buckets
        for ip in [ip for ip, (_, t) in buckets.items() if now - t >= refill]:
            del buckets[ip]
        return len(buckets) < _MAX_SOURCES
