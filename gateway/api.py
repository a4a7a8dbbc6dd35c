"""The agent API, the context capability URL, health, metrics and the console page.

JSON in and out; every error is `{"error": "…"}` with its status. Everything under /api/v1
needs a bearer token (the service's GATEWAY_AGENT_TOKEN or an agent's own; `gateway/auth.py`),
except the context URL, whose token is itself the capability, and the OpenAPI description.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.addresses import AddressError, parse_address
from gateway.auth import acting_agent  # workspace (#11): the token's agent authors
from gateway.console import console_routes  # workspace (#11): console page with CSP
from gateway.core import Core
from gateway.domain import (
    CodeChecked,
    Conflict,
    EscalationIssued,
    NotFound,
    OutboxState,
    ReplyQueued,
    VerificationStarted,
    iso,
)
from gateway.identity import IdentityError
from gateway.metrics import Metrics
from gateway.openapi import OPENAPI

log = logging.getLogger("gateway.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Domain errors become their status; anything unexpected is a logged 500, not a trace."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json" and (
            request.path.startswith("/api/")
        ):
            return error(exc.status, exc.reason)
        raise
    except NotFound as exc:
        return error(404, str(exc))
    except (Conflict, IdentityError) as exc:
        return error(409, str(exc))
    except AddressError as exc:
        return error(400, str(exc))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal error; the gateway logged the details")


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(reason="the body is not valid JSON") from None
    except RecursionError:  # nested deeper than the parser goes: bad input, not our error
        raise web.HTTPBadRequest(reason="the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise web.HTTPBadRequest(reason=f"{name!r} is required")
        return None
    if not isinstance(value, str):
        raise web.HTTPBadRequest(reason=f"{name!r} must be a string")
    return value


# ---- typed results as the contract shows them ------------------------------------------------


def reply_json(result: ReplyQueued) -> dict[str, Any]:
    return {"id": result.id, "status": result.status, "leg_id": result.leg_id,
            "channel": result.channel, "to": result.to}


def verification_json(result: VerificationStarted) -> dict[str, Any]:
    return {"challenge_id": result.challenge_id, "address": result.address,
            "expires_at": iso(result.expires_at), "outbox_id": result.outbox_id}


def code_checked_json(result: CodeChecked) -> dict[str, Any]:
    """The step-up's answer: `outcome` passed | wrong | locked | expired; on `passed` the
    verification the leg now carries (its context link then returns the full bundle)."""
    verification = None
    if result.outcome == "passed":
        verification = {"method": result.method, "address": result.address,
                        "verified_at": iso(result.verified_at),
                        "expires_at": iso(result.expires_at)}
    return {"outcome": result.outcome, "challenge_id": result.challenge_id,
            "leg_id": result.leg_id, "verified": result.outcome == "passed",
            "attempts_left": result.attempts_left, "verification": verification}


def escalation_json(result: EscalationIssued) -> dict[str, Any]:
    out: dict[str, Any] = {"id": result.id, "channel": result.channel, "mode": result.mode,
                           "expires_at": iso(result.expires_at),
                           "carries_verification": result.carries_verification,
                           "outbox_id": result.outbox_id}
    if result.mode == "dial-in":
        out["sent_to"] = result.sent_to
    else:
        out["calling"] = result.calling
    return out


def outbox_json(state: OutboxState) -> dict[str, Any]:
    return {"id": state.id, "channel": state.channel, "kind": state.kind, "to": state.to,
            "status": state.status, "attempts": state.attempts,
            "provider_id": state.provider_id, "last_error": state.last_error,
            "conversation_id": state.conversation_id, "leg_id": state.leg_id,
            "created_at": iso(state.created_at), "updated_at": iso(state.updated_at)}


class AgentApi:
    def __init__(self, core: Core, metrics: Metrics, health: Callable[[], dict[str, Any]]) -> None:
        self.core = core
        self.metrics = metrics
        self.health = health

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/metrics", self.metrics_text),
            *console_routes(),  # workspace (#11)
            web.get("/api/v1/openapi.json", self.openapi),
            web.get("/api/v1/contexts/{token}", self.context_bundle),
            web.get("/api/v1/customers", self.customer),
            web.post("/api/v1/customers/merges", self.merge),
            web.delete("/api/v1/customers/merges/{merge_id}", self.undo_merge),
            web.get("/api/v1/conversations/{id}", self.conversation),
            web.post("/api/v1/conversations/{id}/messages", self.reply),
            web.post("/api/v1/conversations/{id}/verifications", self.verify),
            web.post("/api/v1/conversations/{id}/verifications/{challenge_id}/check",
                     self.check_code),
            web.post("/api/v1/conversations/{id}/escalations", self.escalate),
            web.post("/api/v1/conversations/{id}/close", self.close),
            web.get("/api/v1/outbox/{id}", self.outbox_message),
        ]

    async def healthz(self, request: web.Request) -> web.Response:
        state = self.health()
        return web.json_response(state, status=200 if state.get("status") == "ok" else 503)

    async def metrics_text(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def context_bundle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        token = request.match_info["token"]
        bundle = await self.core.bundle(token) if 20 <= len(token) <= 100 else None
        self.metrics.http_latency.labels("context").observe(time.perf_counter() - started)
        if bundle is None:
            self.metrics.bundles.labels("not-found").inc()
            return error(404, "unknown or expired context token")
        self.metrics.bundles.labels("ok").inc()
        return ok(bundle)

    async def customer(self, request: web.Request) -> web.Response:
        raw = request.query.get("address")
        if not raw:
            return error(400, "give ?address=channel:value, e.g. whatsapp:+14155550100")
        # A '+' in a query string arrives as a space unless encoded; the phone
        # normaliser reads "sms: 1415…" as international format, which it is.
        address = parse_address(raw)
        customer = await self.core.customer_by_address(address)
        if customer is None:
            return error(404, f"no customer with address {address}")
        return ok(customer)

    async def conversation(self, request: web.Request) -> web.Response:
        return ok(await self.core.conversation(request.match_info["id"]))

    async def reply(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        text = _field(body, "text")
        assert text is not None
        if len(text) > 4096:
            return error(400, "text is longer than 4096 characters")
        agent = acting_agent(request, _field(body, "agent", False))  # workspace (#11)
        result = await self.core.reply(request.match_info["id"], text, agent)
        return ok(reply_json(result), status=202)

    async def verify(self, request: web.Request) -> web.Response:
        body = await _json_body(request) if request.body_exists else {}
        result = await self.core.start_verification(
            request.match_info["id"], _field(body, "address", False)
        )
        return ok(verification_json(result), status=202)

    async def check_code(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        code, leg_id = _field(body, "code"), _field(body, "leg_id")
        assert code is not None and leg_id is not None
        result = await self.core.check_code(request.match_info["id"],
                                            request.match_info["challenge_id"], code, leg_id)
        self.metrics.step_ups.labels(result.outcome).inc()
        return ok(code_checked_json(result))

    async def escalate(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        result = await self.core.escalate(
            request.match_info["id"], _field(body, "channel") or "", _field(body, "mode") or ""
        )
        return ok(escalation_json(result), status=201)

    async def close(self, request: web.Request) -> web.Response:
        await self.core.close_conversation(request.match_info["id"])
        return ok({"id": request.match_info["id"], "status": "closed"})

    async def merge(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        merge_id = await self.core.merge_customers(
            _field(body, "survivor_id") or "", _field(body, "merged_id") or "",
            acting_agent(request, _field(body, "agent", False)),  # workspace (#11)
        )
        return ok({"id": merge_id}, status=201)

    async def undo_merge(self, request: web.Request) -> web.Response:
        await self.core.undo_merge(request.match_info["merge_id"])
        return ok({"id": request.match_info["merge_id"], "undone": True})

    async def outbox_message(self, request: web.Request) -> web.Response:
        return ok(outbox_json(await self.core.outbox_message(request.match_info["id"])))
