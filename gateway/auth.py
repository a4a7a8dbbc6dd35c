"""Who is calling the agent API: the service token, or one agent's own token.

The bearer token is either GATEWAY_AGENT_TOKEN (the service token: integrations, acting for
any agent) or an agent's own token, matched by its hex SHA-256 against the agents'
`token_sha256`, which the agent router (`gateway/agents.py`) holds. The middleware puts the
`Principal` on the request; handlers ask it who the author of a command is
(`acting_agent`), so with an agent's token the body cannot say otherwise. Only hashes of agent tokens are configured; `gateway agent-token` makes one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Paths under /api/ that need no bearer token: the context URL (its token is the capability)
# and the API description.
PUBLIC_API = ("/api/v1/contexts/", "/api/v1/openapi.json")


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: the service, or one agent."""

    agent_id: str | None  # None for the service token
    name: str = ""

    @property
    def is_service(self) -> bool:
        return self.agent_id is None

    def acting_agent(self, requested: str | None) -> str | None:
        """The agent a command is done as: an agent is always themself; the service may
        name anyone (or nobody)."""
        return requested if self.agent_id is None else self.agent_id


SERVICE = Principal(None, "service")
PRINCIPAL = web.RequestKey("principal", Principal)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_agent_token() -> tuple[str, str]:
    """A new random agent token (256 bits) and the SHA-256 to configure for it."""
    token = secrets.token_urlsafe(32)
    return token, token_sha256(token)


class AgentNamed(Protocol):
    id: str
    name: str


class AgentsByToken(Protocol):
    """Who has which token: the agent router (`AgentDirectory.by_token`) is the one source,
    configured from `token_sha256` in GATEWAY_AGENTS."""

    def by_token(self, token: str) -> AgentNamed | None: ...


class Authenticator:
    """Resolves a bearer token to a Principal: the service token compared in constant time,
    an agent's by its SHA-256 through the agent router."""

    def __init__(self, service_token: str, agents: AgentsByToken) -> None:
        if not service_token:
            raise ValueError("a service token is required")
        self._service = service_token.encode("utf-8", "surrogateescape")
        self._agents = agents

    def resolve(self, authorization: str | None) -> Principal | None:
        """The principal of an `Authorization` header value, or None (a 401)."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        given = token.encode("utf-8", "surrogateescape")
        if hmac.compare_digest(given, self._service):
            return SERVICE
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            return None  # undecodable bytes in the header: nobody's token
        agent = self._agents.by_token(token)
        return Principal(agent.id, agent.name or agent.id) if agent is not None else None


def principal_of(request: web.Request) -> Principal:
    """The request's principal (set by `auth_middleware` on every /api/ route that needs
    one); the service for the public ones."""
    return request.get(PRINCIPAL, SERVICE)


def acting_agent(request: web.Request, requested: str | None) -> str | None:
    return principal_of(request).acting_agent(requested)


def unauthorized() -> web.Response:
    return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="gateway"'})


def auth_middleware(
    authenticator: Authenticator, public: tuple[str, ...] = PUBLIC_API
) -> Callable[..., Any]:
    """Everything under /api/ needs a token, except `public` prefixes."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/api/") and not path.startswith(public):
            principal = authenticator.resolve(request.headers.get("Authorization"))
            if principal is None:
                return unauthorized()
            request[PRINCIPAL] = principal
        return await handler(request)

    return authenticate


def print_new_token() -> str:
    """What `gateway agent-token` prints."""
    token, digest = new_agent_token()
    return (
        f"token:        {token}\n"
        f"token_sha256: {digest}\n"
        "Give the token to the agent (it signs in to /console and the API with it; it is not "
        "stored anywhere).\nPut token_sha256 in the agent's GATEWAY_AGENTS entry, e.g. "
        f'{{"id": "alice", "name": "Alice", "contact": "sip:alice@…", "token_sha256": "{digest}"}}'
    )
