"""The core's knobs, read once from Settings by the composition root."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from gateway.disclosure import Disclosure


@dataclass(frozen=True, slots=True)
class Policy:
    public_url: str
    conversation_idle: timedelta = timedelta(hours=72)
    context_token_ttl: timedelta = timedelta(minutes=15)
    verification_ttl: timedelta = timedelta(hours=1)
    otp_ttl: timedelta = timedelta(minutes=10)
    otp_max_attempts: int = 5
    escalation_ttl: timedelta = timedelta(minutes=15)
    dial_in_number: str | None = None
    max_agents_per_call: int = 3  # after this many agents did not answer, the caller is let go
    # Escalation PIN guesses (gateway/calls.py): failures allowed per source (a SIP peer's
    # address, a Twilio caller's number) and for everybody together, a burst then a rate.
    pin_failure_burst: int = 5
    pin_failures_per_minute: float = 2.0
    pin_global_failure_burst: int = 50
    pin_global_failures_per_minute: float = 20.0
    pin_lookup_secret: bytes | None = None  # None: the key kept in the database
    disclosure: Disclosure = field(default_factory=Disclosure)

    def context_url(self, token: str) -> str:
        return f"{self.public_url}/api/v1/contexts/{token}"
