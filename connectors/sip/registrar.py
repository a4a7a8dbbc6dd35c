"""The registrar (RFC 3261 section 10) and the digest checks agents' phones pass.

Agents' phones REGISTER here with digest authentication (RFC 8760: SHA-256 offered first, MD5
for older phones); passwords come from configuration through the `AgentDirectory`, whose
bindings this module changes. `DigestAuth` is shared with the proxy, which challenges an
INVITE that claims to come from an agent (407). Pure over messages: a REGISTER and its source
in, the response out. Nonces are self-validating (`NonceIssuer`); the `NonceLedger` remembers
which were used (and their counts) so a captured Authorization cannot be replayed, the digest
`uri` must name the Request-URI, and failed attempts are limited per source and per user
(`AuthThrottle`): a limited source gets `403 Too Many Failed Attempts` without a check.

Not done: the Call-ID/CSeq ordering check of RFC 3261 10.3 step 7 (replays are refused by
the ledger instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from enum import Enum
from typing import Final

from connectors.sip.answers import make_response
from connectors.sip.digest import (
    AuthOutcome,
    Credentials,
    NonceIssuer,
    NonceLedger,
    NonceStatus,
    check_credentials,
)
from connectors.sip.errors import RemoteProtocolError
from connectors.sip.grammar import SipUri, unescape
from connectors.sip.message import SipRequest, SipResponse
from connectors.sip.ratelimit import AuthThrottle
from connectors.sip.transport import Peer
from gateway.agents import Agent, AgentDirectory
from gateway.clock import Clock

__all__ = ["AuthResult", "DigestAuth", "Registrar", "RegistrarPolicy", "TOO_MANY_ATTEMPTS"]

TOO_MANY_ATTEMPTS: Final = "Too Many Failed Attempts"
"""The reason phrase of the 403 a source or user gets once its failed attempts are limited."""


class AuthResult(Enum):
    OK = "ok"
    CHALLENGE = "challenge"  # no (usable) credentials: send a challenge
    STALE = "stale"  # right password, old or already used nonce: challenge with stale=true
    FORBIDDEN = "forbidden"  # wrong password, or credentials for someone else
    BAD_URI = "bad-uri"  # the digest was computed for another URI (RFC 2617 3.2.2.5: 400)
    LIMITED = "limited"  # too many failures from this source or for this user: not checked


class DigestAuth:
    """Digest checks against agents' configured passwords, for one realm: replays refused
    (`NonceLedger`), failures limited (`AuthThrottle`)."""

    def __init__(self, issuer: NonceIssuer, realm: str, algorithms: tuple[str, ...], *,
                 throttle: AuthThrottle | None = None, ledger: NonceLedger | None = None
                 ) -> None:
        self.issuer = issuer
        self.realm = realm
        self.algorithms = algorithms
        self.throttle = throttle if throttle is not None else AuthThrottle(6.0, 10)
        self.ledger = ledger if ledger is not None else NonceLedger(
            issuer.lifetime + issuer.max_skew)

    def challenges(self, *, stale: bool = False) -> list[str]:
        """One challenge per algorithm, strongest first (RFC 8760 section 2.4)."""
        return [
            self.issuer.challenge(self.realm, algorithm=a, stale=stale).to_header()
            for a in self.algorithms
        ]

    def check(self, request: SipRequest, header: str, agent: Agent, source: str) -> AuthResult:
        """Check the `header` (Authorization or Proxy-Authorization) credentials of our realm
        against `agent`'s password, for a request from the IP address `source`. Malformed
        credentials raise RemoteProtocolError (400)."""
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
        user = agent.sip_user
        throttle = self.throttle
        if not throttle.allowed(source, user):
            return AuthResult.LIMITED
        if agent.password is None or user is None:
            throttle.failed(source, user)
            return AuthResult.FORBIDDEN
        if credentials.username.lower() != user.lower():
            throttle.failed(source, user)
            return AuthResult.FORBIDDEN  # RFC 3261 10.3 step 6: only your own AOR
        base = credentials.algorithm.upper().removesuffix("-SESS")
        if base not in self.algorithms:
            return AuthResult.CHALLENGE
        if self.issuer.check(credentials.nonce) is NonceStatus.INVALID:
            return AuthResult.CHALLENGE  # not ours (or from before a restart): a fresh nonce
        if not same_uri(credentials.uri, request.uri):
            throttle.failed(source, user)
            return AuthResult.BAD_URI
        outcome = check_credentials(
            credentials, issuer=self.issuer, realm=self.realm, method=request.method,
            password=agent.password, body=request.body,
        )
        if outcome is AuthOutcome.REJECTED:
            throttle.failed(source, user)
            return AuthResult.FORBIDDEN
        if outcome is AuthOutcome.STALE:
            return AuthResult.STALE
        if not self.ledger.use(credentials.nonce, credentials.nc if credentials.qop else None):
            return AuthResult.STALE  # a replay, or a client reusing a nonce: a fresh one
        throttle.succeeded(source, user)
        return AuthResult.OK

    def refusal(self, request: SipRequest, result: AuthResult, header: str,
                status: int) -> SipResponse:
        """The answer to a request whose credentials were not OK: a challenge (`status` 401
        or 407 with `header`), 400 for a digest of another URI, 403 otherwise."""
        if result is AuthResult.CHALLENGE or result is AuthResult.STALE:
            challenges = self.challenges(stale=result is AuthResult.STALE)
            return make_response(request, status, extra_headers=[(header, c) for c in challenges])
        if result is AuthResult.BAD_URI:
            return make_response(request, 400, "Bad Request (digest uri is not the Request-URI)")
        if result is AuthResult.LIMITED:
            return make_response(request, 403, TOO_MANY_ATTEMPTS)
        return make_response(request, 403, "Forbidden")


def same_uri(digest_uri: str, request_uri: str) -> bool:
    """Whether the digest `uri` names the Request-URI (RFC 2617 3.2.2.5): the same text, or
    the same scheme, user, host and port (phones add `;transport=` to one of them)."""
    if digest_uri == request_uri:
        return True
    try:
        a, b = SipUri.parse(digest_uri), SipUri.parse(request_uri)
    except RemoteProtocolError:
        return False
    return (a.scheme, a.user, a.host.lower(), a.port or 5060) == (
        b.scheme, b.user, b.host.lower(), b.port or 5060)


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

    def handle(self, request: SipRequest, source: Peer, client: str | None = None
               ) -> SipResponse:
        """The answer to one REGISTER received from `source`; failures are limited by
        `client` (the phone's address behind a trusted relay), else by the source's host."""
        client = client or source.host
        aor = request.to_addr.sip_uri()
        user = unescape(aor.user) if aor.user is not None else None
        agent = self.agents.by_sip_user(user) if user else None
        if agent is None:
            # Challenge strangers too (so user names cannot be probed), refuse them after.
            if request.headers.get("Authorization") is None:
                return self._challenge(request)
            throttle = self.auth.throttle
            if not throttle.allowed(client, None):
                return make_response(request, 403, TOO_MANY_ATTEMPTS)
            throttle.failed(client, None)
            return make_response(request, 403, "Forbidden")
        result = self.auth.check(request, "Authorization", agent, client)
        if result is AuthResult.OK:
            return self._update(request, agent, source)
        return self.auth.refusal(request, result, "WWW-Authenticate", 401)

    def _challenge(self, request: SipRequest) -> SipResponse:
        return self.auth.refusal(request, AuthResult.CHALLENGE, "WWW-Authenticate", 401)

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
