"""Provider signature checks for the webhook routes: Twilio's `X-Twilio-Signature` and Meta's
`X-Hub-Signature-256`.

Each route checks the signature over exactly what arrived (the raw body, the URL the provider
called) before anything becomes an event. Comparisons are constant-time. Secrets come in at
construction; a check object without its secret cannot be built, so nothing fails open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from urllib.parse import parse_qs, urlsplit, urlunsplit

from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from twilio.request_validator import (
    HMAC_SHA1,
    RequestValidator,
    get_signature_algorithm,
)
from yarl import URL

TWILIO_SIGNATURE = "X-Twilio-Signature"
TWILIO_SIGNATURE_SETTINGS = "X-Twilio-Webhooks-Signature-Settings"
META_SIGNATURE = "X-Hub-Signature-256"


class Verdict(Enum):
    OK = "ok"
    MISSING = "missing"  # no signature header at all
    WRONG = "wrong"  # a signature that does not match (forged, mutated, other URL)
    UNSUPPORTED = "unsupported"  # a signing algorithm we do not know
    NO_SHARED_KEY = "no-shared-key"  # signed with a Twilio SharedKey we were not given


def _ascii(text: str) -> bytes:
    # hmac.compare_digest refuses non-ASCII str; a forged header may be anything.
    return text.encode("utf-8", "surrogateescape")


def parse_form(body: bytes) -> MultiDictProxy[str]:
    """An application/x-www-form-urlencoded body as the provider signed it: every field.

    Twilio signs every parameter it sends, including ones it added last week, so the whole
    body goes into the signature, never a fixed list of known names. yarl's query parser
    decodes exactly as `urllib.parse.parse_qsl(..., keep_blank_values=True)` does (a property
    test checks it) at a third of the cost, and hands back a MultiDict, whose `getall` is
    what `RequestValidator` looks for first (a plain dict costs it two exceptions per field).
    Raises ValueError for a body that is not UTF-8.
    """
    return URL.build(query_string=body.decode("utf-8"), encoded=True).query


def _default_port_twin(url: str) -> str | None:
    """The same base URL with the default port spelled out, or without it.

    Twilio's own `validate()` accepts either form because Twilio has signed both over the
    years; we try the twin only after the configured form failed, so the usual request
    computes one HMAC, not two.
    """
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    if parts.hostname is None or default is None:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port is None:
        netloc = f"{host}:{default}"
    elif parts.port == default:
        netloc = host
    else:
        return None
    if parts.username:
        return None  # credentials in a public URL: keep it exactly as configured
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class TwilioSignature:
    """Checks `X-Twilio-Signature` against GATEWAY_PUBLIC_URL + the raw request target.

    The URL is the public one (what was pasted into the Twilio console), never the Host
    header: behind a proxy or tunnel the Host is the proxy's idea, not Twilio's. We compute
    the expected signature with `RequestValidator.compute_signature` once and compare with
    `hmac.compare_digest` instead of calling `RequestValidator.validate`, which parses the
    URL and computes the HMAC twice (with and without the port) on every request: on the
    webhook hot path that doubles the signing cost for nothing (see BASELINES.md). The
    other port spelling is tried only after the configured one failed.
    """

    def __init__(self, auth_token: str, public_url: str, shared_key: str | None = None) -> None:
        if not auth_token:
            raise ValueError("a Twilio auth token is required to check webhook signatures")
        self.public_url = public_url.rstrip("/")
        self._twin = _default_port_twin(self.public_url)
        self._by_token = RequestValidator(auth_token)
        # A Twilio Webhooks SharedKey secret, for requests a Webhook Rule signed with it.
        self._by_shared_key = RequestValidator(shared_key) if shared_key else None

    def check(
        self,
        raw_path: str,
        params: Mapping[str, str],
        body: bytes,
        signature: str | None,
        settings_header: str | None = None,
    ) -> Verdict:
        """`params` is the parsed form (a MultiDict from `parse_form`; empty if unreadable)."""
        if not signature:
            return Verdict.MISSING
        if settings_header:
            # A Webhook Rule signs with a SharedKey and names its algorithm in this header.
            algorithm = get_signature_algorithm(settings_header).upper()
            if algorithm not in ("HMAC_SHA1", "HMAC_SHA256"):
                return Verdict.UNSUPPORTED
            if self._by_shared_key is None:
                return Verdict.NO_SHARED_KEY
            validator = self._by_shared_key
        else:
            algorithm, validator = HMAC_SHA1, self._by_token
        if "bodySHA256" in raw_path:
            # JSON webhooks sign the URL only; the body is bound by its hash in the query.
            given_hash = parse_qs(urlsplit(raw_path).query).get("bodySHA256", [""])[0]
            if not hmac.compare_digest(_ascii(given_hash),
                                       hashlib.sha256(body).hexdigest().encode()):
                return Verdict.WRONG
            params = {}
        given = _ascii(signature.strip())
        expected = validator.compute_signature(self.public_url + raw_path, params, algorithm)
        if hmac.compare_digest(expected.encode(), given):
            return Verdict.OK
        if self._twin is not None:
            expected = validator.compute_signature(self._twin + raw_path, params, algorithm)
            if hmac.compare_digest(expected.encode(), given):
                return Verdict.OK
        return Verdict.WRONG


@dataclass(frozen=True, slots=True)
class MetaSignature:
    """Checks `X-Hub-Signature-256: sha256=<hex>`: HMAC-SHA256 of the raw body, app secret key.

    Over the bytes as received: re-serialising the JSON would change escapes (emoji, accents
    arrive as \\uXXXX or as UTF-8, Meta's choice) and break the signature.
    """

    app_secret: str

    def __post_init__(self) -> None:
        if not self.app_secret:
            raise ValueError("a WhatsApp app secret is required to check webhook signatures")

    def check(self, body: bytes, header: str | None) -> Verdict:
        if not header:
            return Verdict.MISSING
        scheme, _, given = header.strip().partition("=")
        if scheme.lower() != "sha256" or not given:
            return Verdict.WRONG
        expected = hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()
        return Verdict.OK if hmac.compare_digest(expected.encode(),
                                                 _ascii(given.lower())) else Verdict.WRONG



async def verified_twilio_form(
    request: web.Request, signature: TwilioSignature, rejected: Callable[[str, str], None],
    route: str, log: logging.Logger,
) -> tuple[MultiDictProxy[str] | None, web.Response | None]:
    """The signed form of a Twilio webhook, or the refusal to answer with.

    The signature is checked before anything else is looked at (a malformed body gets 403
    when unsigned, 400 only when signed): a stranger learns nothing. `rejected(route, why)`
    counts refusals.
    """
    body = await request.read()
    try:
        params: MultiDictProxy[str] = parse_form(body)
        bad_form = False
    except ValueError:
        params, bad_form = MultiDictProxy(MultiDict()), True
    verdict = signature.check(
        request.raw_path, params, body, request.headers.get(TWILIO_SIGNATURE),
        request.headers.get(TWILIO_SIGNATURE_SETTINGS),
    )
    if verdict is not Verdict.OK:
        rejected(route, verdict.value)
        if verdict is Verdict.NO_SHARED_KEY:
            # Anyone can send this header: it is a refusal (403), not our failure (500).
            # The warning says what to set if Twilio really signs with a SharedKey.
            log.warning("%s: a request from %s says it is signed with a Twilio Webhooks "
                        "SharedKey, and GATEWAY_TWILIO_WEBHOOK_SHARED_KEY is not set; "
                        "refused, nothing stored", route, request.remote)
            return None, web.Response(status=403, text="invalid signature\n")
        if verdict is Verdict.WRONG:
            # The usual cause: Twilio calls a URL (a tunnel, a proxy) other than ours.
            log.warning("%s: wrong X-Twilio-Signature from %s; nothing stored. Checked "
                        "against %s: if Twilio calls another URL, set GATEWAY_PUBLIC_URL to "
                        "the base of the URL in the Twilio console", route, request.remote,
                        signature.public_url + request.raw_path)
        else:
            log.warning("%s: %s X-Twilio-Signature from %s; nothing stored", route,
                        verdict.value, request.remote)
        return None, web.Response(status=403, text="invalid signature\n")
    if bad_form:
        rejected(route, "bad-form")
        return None, web.Response(status=400, text="the body is not a UTF-8 form\n")
    return params, None
