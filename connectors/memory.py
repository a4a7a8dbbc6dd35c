"""The in-memory channel: the smallest complete channel, for the core's tests and the demo.

It is the worked example of docs/architecture.md ("Adding a channel"): `receive` turns
"a customer wrote" into the core's typed event and hands it to the sink, as a webhook or a
mail reader would; `send` is what the outbox calls for each outbound message, and here it
only keeps the message. It mounts no routes and reads no settings: tests and the demo build
it themselves and pass it to `build_app(extra_channels=…)`.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.addresses import make_address
from gateway.channels import (
    ChannelDeps,
    ChannelInfo,
    InboundSink,
    OutboundMessage,
    SendError,
    SendReceipt,
)
from gateway.domain import IngestResult
from gateway.events import InboundMessage

if TYPE_CHECKING:
    from config.settings import Settings

ALL = frozenset({"sms", "whatsapp", "voice", "email", "xmpp", "web"})


class MemoryChannel:
    name = "memory"

    def __init__(self, channels: frozenset[str] = ALL, *, name: str = "memory") -> None:
        self.name = name
        self.channels = channels
        self.sent: list[OutboundMessage] = []
        self.fail_next: list[SendError] = []  # raised by the next sends, in order
        self._sink: InboundSink | None = None
        self._arrived = asyncio.Condition()
        self._ids = itertools.count(1)

    # ---- what the composition root calls -------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings, deps: ChannelDeps) -> MemoryChannel | None:
        return None  # never built from settings: a test or the demo builds one

    @classmethod
    def why_off(cls, settings: Settings) -> str:
        return "built by tests and the demo only"

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return ()

    def describe(self) -> ChannelInfo:
        sends = ", ".join(sorted(self.channels))
        return ChannelInfo(self.name, (), (f"keeps what it sends ({sends})",))

    async def start(self, sink: InboundSink) -> None:
        self._sink = sink

    async def aclose(self) -> None:
        self._sink = None

    # ---- in: the customer's side ----------------------------------------------------------

    async def receive(self, sender: str, text: str, *, channel: str = "web",
                      recipient: str = "memory", provider_id: str | None = None
                      ) -> IngestResult:
        """A customer wrote `text` from `sender` on `channel`; stored once, after the commit."""
        if self._sink is None:
            raise RuntimeError("the memory channel is not started")
        event = InboundMessage(
            sender=make_address(channel, sender), recipient=recipient, text=text,
            provider="memory", provider_id=provider_id or f"mem-in-{next(self._ids)}",
            thread_key=f"memory:{recipient}:{channel}:{sender}", attested=False)
        return await self._sink.ingest(event)

    # ---- out: what the outbox hands us ----------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendReceipt:
        if self.fail_next:
            raise self.fail_next.pop(0)
        async with self._arrived:
            self.sent.append(message)
            self._arrived.notify_all()
        return SendReceipt("memory", f"mem_{secrets.token_hex(8)}", "sent")

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[OutboundMessage]:
        """Wait until `count` messages were sent in all; return them."""
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: len(self.sent) >= count), timeout
            )
        return list(self.sent)
