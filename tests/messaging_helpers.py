"""Gateways on loopback wired to the Twilio and Meta stand-ins, for the messaging tests.

Unlike conftest's `start_gateway`, each gateway here can be stopped on its own (the restart
tests stop one and start another on the same database), and no in-memory channel is added:
every send goes to a stand-in over real HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest_asyncio
from aiohttp import ClientSession, web
from sqlalchemy import func, select

from config.settings import load_settings
from gateway.app import GATEWAY, Gateway, build_app
from gateway.models import ProcessedEvent, TranscriptEntry
from tests.conftest import AGENT_TOKEN
from tests.standins import (
    MetaGraphStandin,
    TwilioStandin,
    meta_webhook_request,
    twilio_sign,
)

PUBLIC_URL = "https://gw.example.com"  # what Twilio/Meta call; tests reach us via loopback
BUSINESS_SMS = "+15005550006"
BUSINESS_WHATSAPP = "whatsapp:+14155238886"
APP_SECRET = "meta-app-secret-0123456789abcdef"
VERIFY_TOKEN = "verify-token-ÄÖ-42"


@dataclass
class Gw:
    url: str
    app: web.Application
    http: ClientSession
    runner: web.AppRunner
    stopped: bool = False

    @property
    def gw(self) -> Gateway:
        return self.app[GATEWAY]

    async def api(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {AGENT_TOKEN}"}
        async with self.http.request(method, self.url + path, headers=headers,
                                     **kwargs) as resp:
            return resp.status, await resp.json()

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]
                   ) -> tuple[int, bytes, str]:
        async with self.http.post(self.url + path, data=body, headers=dict(headers)) as resp:
            return resp.status, await resp.read(), resp.headers.get("Content-Type", "")

    async def twilio(self, path: str, form: Mapping[str, str], auth_token: str,
                     *, extra_headers: Mapping[str, str] | None = None,
                     idempotency_token: str | None = None) -> tuple[int, bytes, str]:
        """POST `form` as Twilio does: signed for PUBLIC_URL + path, sent to loopback."""
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_sign(auth_token, PUBLIC_URL + path, form),
            "User-Agent": "TwilioProxy/1.1",
        }
        if idempotency_token:
            headers["I-Twilio-Idempotency-Token"] = idempotency_token
        headers.update(extra_headers or {})
        return await self.post(path, urlencode(form).encode(), headers)

    async def meta(self, payload: Mapping[str, Any], secret: str = APP_SECRET
                   ) -> tuple[int, bytes, str]:
        body, headers = meta_webhook_request(secret, payload)
        return await self.post("/webhooks/whatsapp", body, headers)

    async def counts(self) -> tuple[int, int]:
        """(transcript entries, processed provider events) in the database."""
        async with self.gw.core.engine.connect() as conn:
            entries = (await conn.execute(select(func.count()).select_from(TranscriptEntry))
                       ).scalar_one()
            events = (await conn.execute(select(func.count()).select_from(ProcessedEvent))
                      ).scalar_one()
        return int(entries), int(events)

    async def customer(self, address: str) -> dict[str, Any]:
        status, body = await self.api("GET", "/api/v1/customers", params={"address": address})
        assert status == 200, body
        return body

    async def transcript(self, address: str) -> list[dict[str, Any]]:
        customer = await self.customer(address)
        status, conv = await self.api("GET",
                                      f"/api/v1/conversations/{customer['conversations'][0]['id']}")
        assert status == 200, conv
        return conv["transcript"]

    async def outbox(self, message_id: str) -> dict[str, Any]:
        status, body = await self.api("GET", f"/api/v1/outbox/{message_id}")
        assert status == 200, body
        return body

    async def wait_outbox(self, message_id: str, predicate: Callable[[dict[str, Any]], bool],
                          timeout: float = 5.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            row = await self.outbox(message_id)
            if predicate(row) or asyncio.get_running_loop().time() > deadline:
                return row
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.http.close()
            await self.runner.cleanup()


@dataclass
class Gateways:
    """Starts gateways on loopback; the fixture stops whatever is still running."""

    database_url: str
    running: list[Gw] = field(default_factory=list)

    async def start(self, *, clock: Any = None, twilio: TwilioStandin | None = None,
                    meta: MetaGraphStandin | None = None, **overrides: Any) -> Gw:
        overrides.setdefault("database_url", self.database_url)
        overrides.setdefault("agent_token", AGENT_TOKEN)
        overrides.setdefault("log_format", "text")
        overrides.setdefault("public_url", PUBLIC_URL)
        if twilio is not None:
            overrides.setdefault("twilio_account_sid", twilio.account_sid)
            overrides.setdefault("twilio_auth_token", twilio.auth_token)
            overrides.setdefault("twilio_api_url", twilio.base_url)
            overrides.setdefault("twilio_from_number", BUSINESS_SMS)
        if meta is not None:
            overrides.setdefault("whatsapp_app_secret", APP_SECRET)
            overrides.setdefault("whatsapp_verify_token", VERIFY_TOKEN)
            overrides.setdefault("whatsapp_access_token", meta.access_token)
            overrides.setdefault("whatsapp_api_url", meta.base_url + "/v21.0")
            overrides.setdefault("whatsapp_phone_number_id", meta.phone_number_id)
        app = build_app(load_settings(**overrides), clock=clock, enable_sip=False)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        gw = Gw(f"http://127.0.0.1:{port}", app, ClientSession(), runner)
        self.running.append(gw)
        return gw


@pytest_asyncio.fixture
async def gateways(tmp_path: Any) -> AsyncIterator[Gateways]:
    """Gateways on a fresh SQLite file."""
    pool = Gateways(f"sqlite+aiosqlite:///{tmp_path}/gw.db")
    try:
        yield pool
    finally:
        for gw in reversed(pool.running):
            await gw.stop()


@pytest_asyncio.fixture
async def gateways_any_db(database_url: str) -> AsyncIterator[Gateways]:
    """Gateways on a fresh database, SQLite and then a real PostgreSQL (conftest's
    `database_url`; skipped where PostgreSQL is not installed)."""
    pool = Gateways(database_url)
    try:
        yield pool
    finally:
        for gw in reversed(pool.running):
            await gw.stop()

