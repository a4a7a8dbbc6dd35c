"""A gateway process for the crash tests: the real app, with a connector that delivers each
outbound message as an HTTP POST to a sink the test runs (so the test can count sends)."""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp

from config.settings import load_settings
from gateway.app import build_app
from gateway.channels import OutboundMessage, SendError, SendReceipt
from gateway.cli import serve  # noqa: F401  (same process shape as `gateway serve`)


class HttpSink:
    channels = frozenset({"sms", "whatsapp", "email", "xmpp", "web", "voice"})

    def __init__(self, url: str) -> None:
        self.url = url
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, message: OutboundMessage) -> SendReceipt:
        assert self.session is not None
        try:
            async with self.session.post(self.url, json={"id": message.id, "to": message.to,
                                                         "text": message.text}) as resp:
                if resp.status >= 400:
                    raise SendError(f"sink answered {resp.status}", permanent=resp.status < 500)
                return SendReceipt("sink", (await resp.json())["sid"])
        except aiohttp.ClientError as exc:
            raise SendError(str(exc), permanent=False) from exc


async def main() -> None:
    from aiohttp import web

    settings = load_settings()
    app = build_app(settings, extra_connectors=[HttpSink(os.environ["SINK_URL"])])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.http_host, settings.http_port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
