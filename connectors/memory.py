"""An in-memory channel: a connector that keeps what it sends, for the demo and core tests.

Real channels live beside it (`connectors/twilio.py`, `connectors/whatsapp.py`, `connectors/sip`).
"""

from __future__ import annotations

import asyncio
import secrets

from gateway.channels import OutboundMessage, SendError, SendReceipt


class MemoryChannel:
    def __init__(self, channels: frozenset[str] = frozenset({"sms", "whatsapp", "voice",
                                                            "email", "xmpp", "web"})) -> None:
        self.channels = channels
        self.sent: list[OutboundMessage] = []
        self.fail_next: list[SendError] = []
        self._arrived = asyncio.Condition()

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

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
