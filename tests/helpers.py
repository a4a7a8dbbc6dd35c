"""Small helpers shared by the tests: `wait_until` (the one way to wait for a condition),
and typed events as an edge would hand them to the core."""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Awaitable, Callable

from gateway.addresses import make_address
from gateway.events import IncomingCall, InboundMessage

_ids = itertools.count(1)


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], *, timeout: float = 5.0,
                     interval: float = 0.02, fail: bool = True, what: str = "") -> bool:
    """Wait for `condition` (a function, sync or async) to hold; check it every `interval`.

    After `timeout` seconds: an AssertionError naming `what` (or, with `fail=False`, False,
    for callers that assert on what they read themselves)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return True
        if loop.time() >= deadline:
            if fail:
                raise AssertionError(f"timed out after {timeout} s waiting for "
                                     f"{what or getattr(condition, '__name__', 'a condition')}")
            return False
        await asyncio.sleep(interval)
BUSINESS = "+18005550000"


def whatsapp(number: str, text: str, provider_id: str | None = None) -> InboundMessage:
    return InboundMessage(
        sender=make_address("whatsapp", number), recipient=BUSINESS, text=text,
        provider="meta", provider_id=provider_id or f"wamid.{next(_ids)}",
        thread_key=f"meta:{BUSINESS}:{number}", attested=True,
    )


def sms(number: str, text: str, provider_id: str | None = None) -> InboundMessage:
    return InboundMessage(
        sender=make_address("sms", number), recipient=BUSINESS, text=text,
        provider="twilio", provider_id=provider_id or f"SM{next(_ids):032x}",
        thread_key=f"twilio:{BUSINESS}:{number}", attested=False,
    )


def email(addr: str, text: str, thread_token_ok: bool = False) -> InboundMessage:
    return InboundMessage(
        sender=make_address("email", addr), recipient="support@gw.test", text=text,
        provider="imap", provider_id=f"<{next(_ids)}@mail.test>", thread_key="<root@gw.test>",
        attested=False, thread_token_ok=thread_token_ok,
    )


def call(number: str | None, pin: str | None = None, token: str | None = None,
         call_ref: str | None = None, *, provider: str = "sip", source: str | None = None,
         attestation: str | None = None) -> IncomingCall:
    """A call as an edge hands it over: SIP by default (its Call-ID binds nothing); with
    `provider="twilio"` a CallSid from a signed webhook (it finds its own live leg)."""
    return IncomingCall(
        caller=make_address("voice", number) if number else None, callee="support",
        call_ref=call_ref or f"call-{next(_ids)}@test", provider=provider, pin=pin,
        escalation_token=token, call_ref_signed=provider == "twilio", source=source,
        attestation=attestation,
    )


def code_from(text: str) -> str:
    """The six digits of an OTP or PIN message as the customer reads it."""
    import re

    match = re.search(r"(?:code is|PIN) (\d{6})", text)
    assert match, f"no code in {text!r}"
    return match.group(1)


def latest_code(sent: list, marker: str = "PIN") -> str:  # type: ignore[type-arg]
    """The newest code the customer received whose text says `marker` ("PIN" or "code is").

    The outbox sends concurrently, so the newest message is not always the one wanted."""
    for message in reversed(sent):
        if message.text and marker in message.text:
            return code_from(message.text)
    raise AssertionError(f"no message with {marker!r} among {[m.text for m in sent]}")
