"""The registrar (RFC 3261 section 10) and the digest checks agents' phones pass.

Agents' phones REGISTER here with digest authentication (RFC 8760: SHA-256 offered first, MD5
for older phones); passwords come from configuration through the `AgentDirectory`, whose
bindings this module changes. `DigestAuth` is shared with the proxy, which challenges an
INVITE that claims to come from an agent (407). Pure over messages: a REGISTER and its source
in, the response out; nonces are self-validating (`NonceIssuer`), so nothing is remembered.

Not done: the Call-ID/CSeq ordering check of RFC 3261 10.3 step 7 (a replayed older REGISTER
within the nonce lifetime could restore a binding the phone just removed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from enum import Enum

from connectors.sip.answers import make_response
from connectors.sip.digest import (
    AuthOutcome,
    Credentials,
    NonceIssuer,
    NonceStatus,
    check_credentials,
)
from connectors.sip.errors import RemoteProtocolError
from connectors.sip.grammar import unescape
from connectors.sip.message import SipRequest, SipResponse
from connectors.sip.transport import Peer
from gateway.agents import Agent, AgentDirectory
from gateway.clock import Clock

__all__ = ["AuthResult", "DigestAuth", "Registrar", "RegistrarPolicy"]


class AuthResult(Enum):
    OK = "ok"
    CHALLENGE = "challenge"  # no (usable) credentials: send a challenge
    STALE = "stale"  # right password, old nonce: challenge again with stale=true
    FORBIDDEN = "forbidden"  # wrong password, or credentials for someone else


class DigestAuth:
    """Digest checks against agents' configured passwords, for one realm."""

    def __init__(self, issuer: NonceIssuer, realm: str, algorithms: tuple[str, ...]) -> None:
        self.issuer = issuer
        self.realm = realm
        self.algorithms = algorithms

    def challenges(self, *, stale: bool = False) -> list[str]:
        """One challenge per algorithm, strongest first (RFC 8760 section 2.4)."""
        return [
            self.issuer.challenge(self.realm, algorithm=a, stale=stale).to_header()
            for a in self.algorithms
        ]

    def check(self, request: SipRequest, header: str, agent: Agent) -> AuthResult:
        """Check the `header` (Authorization or Proxy-Authorization) credentials of our realm
        against `agent`'s password. Malformed credentials raise RemoteProtocolError (400)."""
        credentials = None
        for value in request.headers.get_all(header):
            try:
                parsed = Credentials.parse(value)
            except RemoteProtocolError as exc:
                if exc.status_hint == 401:  # another scheme: answer with our challenge
                    continue
                raise
            if parsed.realm == self.realm:
                credentials = parsed
                break
        if credentials is None:
            return AuthResult.CHALLENGE
        if agent.password is None or agent.sip_user is None:
            return AuthResult.FORBIDDEN
        if credentials.username.lower() != agent.sip_user.lower():
            return AuthResult.FORBIDDEN  # RFC 3261 10.3 step 6: only your own AOR
        base = credentials.algorithm.upper().removesuffix("-SESS")
        if base not in self.algorithms:
            return AuthResult.CHALLENGE
        if self.issuer.check(credentials.nonce) is NonceStatus.INVALID:
            return AuthResult.CHALLENGE  # not ours (or from before a restart): a fresh nonce
        outcome = check_credentials(
            credentials, issuer=self.issuer, realm=self.realm, method=request.method,
            password=agent.password, body=request.body,
        )
        if outcome is AuthOutcome.ACCEPTED:
            return AuthResult.OK
        return AuthResult.STALE if outcome is AuthOutcome.STALE else AuthResult.FORBIDDEN


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600


class Registrar:
    """REGISTER -> response, updating the agents' bindings (RFC 3261 10.3)."""

    def __init__(
        self, agents: AgentDirectory, auth: DigestAuth, policy: RegistrarPolicy, clock: Clock
    ) -> None:
        self.agents = agents
        self.auth = auth
        self.policy = policy
        self.clock = clock

    def handle(self, request: SipRequest, source: Peer) -> SipResponse:
        """The answer to one REGISTER received from `source`."""
        aor = request.to_addr.sip_uri()
        user = unescape(aor.user) if aor.user is not None else None
        agent = self.agents.by_sip_user(user) if user else None
        if agent is None:
            # Challenge strangers too (so user names cannot be probed), refuse them after.
            if request.headers.get("Authorization") is None:
                return self._challenge(request)
            return make_response(request, 403, "Forbidden")
        result = self.auth.check(request, "Authorization", agent)
        if result is AuthResult.CHALLENGE:
            return self._challenge(request)
        if result is AuthResult.STALE:
            return self._challenge(request, stale=True)
        if result is AuthResult.FORBIDDEN:
            return make_response(request, 403, "Forbidden")
        return self._update(request, agent, source)

    def _challenge(self, request: SipRequest, *, stale: bool = False) -> SipResponse:
        return make_response(
            request, 401,
            extra_headers=[("WWW-Authenticate", c) for c in self.auth.challenges(stale=stale)],
        )

    def _update(self, request: SipRequest, agent: Agent, source: Peer) -> SipResponse:
        contacts = request.contacts
        header = request.headers.get("Expires")
        default = self.policy.default_expires
        if header is not None:
            default = _seconds(header, default)
        if any(c.uri == "*" for c in contacts):
            # RFC 3261 10.3 step 6: "*" only alone and only with Expires: 0
            if len(contacts) != 1 or header is None or _seconds(header, -1) != 0:
                return make_response(request, 400, "Wildcard Contact Needs Expires 0")
            self.agents.unregister_all(agent)
            return self._ok(request, agent)
        wanted: list[tuple[str, int]] = []
        for contact in contacts:
            param = contact.param("expires")
            expires = default if param is None else _seconds(param, default)
            if 0 < expires < self.policy.min_expires:
                return make_response(
                    request, 423,
                    extra_headers=[("Min-Expires", str(self.policy.min_expires))],
                )
            wanted.append((contact.uri, min(expires, self.policy.max_expires)))
        for uri, expires in wanted:
            self.agents.register(
                agent, uri, expires, (source.host, source.port), source.transport.lower()
            )
        return self._ok(request, agent)

    def _ok(self, request: SipRequest, agent: Agent) -> SipResponse:
        now = self.clock.now()
        extra = [
            ("Contact", f"<{c.uri}>;expires={_remaining(c.expires_at, now)}")
            for c in agent.registrations.values()
            if c.expires_at is not None and c.expires_at > now
        ]
        extra.append(("Date", format_datetime(now, usegmt=True)))
        return make_response(request, 200, extra_headers=extra)


def _seconds(text: str, default: int) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        return default
    return int(text)


def _remaining(expires_at: datetime, now: datetime) -> int:
    return max(0, round((expires_at - now).total_seconds()))
