"""A gateway process for the crash tests: the real app, with a channel that delivers each
outbound message as an HTTP POST to a sink the test runs (so the test can count sends).

It listens on ephemeral ports (HTTP and SIP) and prints "ready <http port>" once serving."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from config.settings import load_settings
from gateway.app import build_app, setup_runner
from gateway.channels import ChannelInfo, InboundSink, OutboundMessage, SendError, SendReceipt
from gateway.cli import serve  # noqa: F401  (same process shape as `gateway serve`)


class HttpSink:
    """A channel that sends by POSTing to the test's sink."""

    name = "http-sink"
    channels = frozenset({"sms", "whatsapp", "email", "xmpp", "web", "voice"})

    def __init__(self, url: str) -> None:
        self.url = url
        self.session: aiohttp.ClientSession | None = None

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return ()

    def describe(self) -> ChannelInfo:
        return ChannelInfo(self.name, (("sink", self.url),))

    async def start(self, sink: InboundSink) -> None:
        self.session = aiohttp.ClientSession()

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, message: OutboundMessage) -> SendReceipt:
        assert self.session is not None
        try:
            async with self.session.post(self.url, json={
                    "id": message.id, "to": message.to,
                    "text": getattr(message, "text", None)}) as resp:
                if resp.status >= 400:
                    raise SendError(f"sink answered {resp.status}", permanent=resp.status < 500)
                return SendReceipt("sink", (await resp.json())["sid"])
        except aiohttp.ClientError as exc:
            raise SendError(str(exc), permanent=False) from exc


async def main() -> None:
    settings = load_settings(http_port=0, sip_port=0)
    app = build_app(settings, extra_channels=[HttpSink(os.environ["SINK_URL"])])
    runner = web.AppRunner(app, access_log=None)
    await setup_runner(runner)
    site = web.TCPSite(runner, settings.http_host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"ready {port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
