"""Provider signature checks for the webhook routes: Twilio's `X-Twilio-Signature` and Meta's
`X-Hub-Signature-256`.

Each route checks the signature over exactly what arrived (the raw body, the URL the provider
called) before anything becomes an event. Comparisons are constant-time. Secrets come in at
construction; a check object without its secret cannot be built, so nothing fails open.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from urllib.parse import parse_qs, urlsplit, urlunsplit

from multidict import MultiDict
from twilio.request_validator import (
    HMAC_SHA1,
    RequestValidator,
    get_signature_algorithm,
)

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


def form_params(pairs: Sequence[tuple[str, str]]) -> Mapping[str, str] | MultiDict[str]:
    """The parameters as RequestValidator wants them: a dict, or a MultiDict when a name repeats.

    Twilio signs every parameter it sends, including ones it added last week, so the whole
    body goes into the signature, never a fixed list of known names.
    """
    params = dict(pairs)
    if len(params) == len(pairs):
        return params
    return MultiDict(pairs)


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


@dataclass(frozen=True, slots=True)
class TwilioSignature:
    """Checks `X-Twilio-Signature` against GATEWAY_PUBLIC_URL + the raw request target.

    The URL is the public one (what was pasted into the Twilio console), never the Host
    header: behind a proxy or tunnel the Host is the proxy's idea, not Twilio's. We compute
    the expected signature with `RequestValidator.compute_signature` once and compare with
    `hmac.compare_digest` instead of calling `RequestValidator.validate`, which parses the
    URL and computes the HMAC twice (with and without the port) on every request: on the
    webhook hot path that doubles the signing cost for nothing (see BASELINES.md).
    """

    auth_token: str
    public_url: str
    shared_key: str | None = None  # a Twilio Webhooks SharedKey secret, when rules use one

    def __post_init__(self) -> None:
        if not self.auth_token:
            raise ValueError("a Twilio auth token is required to check webhook signatures")

    def check(
        self,
        raw_path: str,
        pairs: Sequence[tuple[str, str]],
        body: bytes,
        signature: str | None,
        settings_header: str | None = None,
    ) -> Verdict:
        if not signature:
            return Verdict.MISSING
        if settings_header:
            # A Webhook Rule signs with a SharedKey and names its algorithm in this header.
            algorithm = get_signature_algorithm(settings_header).upper()
            if algorithm not in ("HMAC_SHA1", "HMAC_SHA256"):
                return Verdict.UNSUPPORTED
            if not self.shared_key:
                return Verdict.NO_SHARED_KEY
            secret = self.shared_key
        else:
            algorithm, secret = HMAC_SHA1, self.auth_token
        validator = RequestValidator(secret)
        params: Mapping[str, str] | MultiDict[str] = form_params(pairs)
        query = urlsplit(raw_path).query
        if "bodySHA256" in query:
            # JSON webhooks sign the URL only; the body is bound by its hash in the query.
            given_hash = parse_qs(query).get("bodySHA256", [""])[0]
            if not hmac.compare_digest(_ascii(given_hash),
                                       hashlib.sha256(body).hexdigest().encode()):
                return Verdict.WRONG
            params = {}
        given = _ascii(signature.strip())
        expected = validator.compute_signature(self.public_url + raw_path, params, algorithm)
        if hmac.compare_digest(expected.encode(), given):
            return Verdict.OK
        twin = _default_port_twin(self.public_url)
        if twin is not None:
            expected = validator.compute_signature(twin + raw_path, params, algorithm)
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

