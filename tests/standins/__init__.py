"""Loopback stand-ins for the providers the tests cannot reach (Twilio, Meta's Graph API)
and builders for the signed webhooks those providers send.

tests/conftest.py may re-export the fixtures `twilio_standin` and `meta_graph_standin`
(each a started stand-in with fresh credentials, closed after the test).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

from .meta_graph import (
    GraphRequest,
    MetaGraphStandin,
    graph_error,
    meta_message_payload,
    meta_status_payload,
    meta_verification_params,
    meta_webhook_request,
    new_wamid,
    sign_meta,
)
from .twilio_api import (
    RecordedRequest,
    TwilioStandin,
    new_twilio_sid,
    twilio_error,
    twilio_sign,
    twilio_sms_form,
    twilio_status_form,
    twilio_voice_form,
    twilio_webhook_request,
)

__all__ = [
    "GraphRequest",
    "MetaGraphStandin",
    "RecordedRequest",
    "TwilioStandin",
    "graph_error",
    "meta_graph_standin",
    "meta_message_payload",
    "meta_status_payload",
    "meta_verification_params",
    "meta_webhook_request",
    "new_twilio_sid",
    "new_wamid",
    "sign_meta",
    "twilio_error",
    "twilio_sign",
    "twilio_sms_form",
    "twilio_standin",
    "twilio_status_form",
    "twilio_voice_form",
    "twilio_webhook_request",
]

try:
    import pytest_asyncio
except ImportError:  # importable without the test extras
    pytest_asyncio = None  # type: ignore[assignment]

if pytest_asyncio is not None:

    @pytest_asyncio.fixture
    async def twilio_standin() -> AsyncIterator[TwilioStandin]:
        """A started Twilio stand-in; `.account_sid`, `.auth_token`, `.base_url`."""
        async with TwilioStandin(new_twilio_sid("AC"), secrets.token_hex(16)) as standin:
            yield standin

    @pytest_asyncio.fixture
    async def meta_graph_standin() -> AsyncIterator[MetaGraphStandin]:
        """A started Graph API stand-in; `.access_token`, `.phone_number_id`, `.base_url`."""
        token = "EAAG" + secrets.token_urlsafe(40)
        async with MetaGraphStandin(
            token, str(100000000000000 + secrets.randbelow(10**14))
        ) as standin:
            yield standin
