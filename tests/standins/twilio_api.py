"""A loopback stand-in for Twilio's REST API (2010-04-01 Messages and Calls), plus
builders for the signed webhooks Twilio sends to the gateway.

The stand-in checks each request as Twilio does (HTTP basic auth with AccountSid and
auth token, required form fields, E.164 or `whatsapp:` addresses) and answers with
Twilio's documented JSON, so the real `twilio` library can talk to it:

    standin = TwilioStandin(sid, token); base_url = await standin.start()
    client = Client(sid, token, http_client=AsyncTwilioHttpClient())
    client.api.base_url = base_url        # a plain attribute in twilio 9
    await client.messages.create_async(to=..., from_=..., body=...)
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from urllib.parse import urlencode

from aiohttp import web

from tests.standins.server import StandinServer
from twilio.request_validator import RequestValidator

__all__ = [
    "RecordedRequest",
    "TwilioStandin",
    "new_twilio_sid",
    "twilio_error",
    "twilio_sign",
    "twilio_sms_form",
    "twilio_status_form",
    "twilio_voice_form",
    "twilio_webhook_request",
]

API_VERSION = "2010-04-01"
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_ADDRESS = re.compile(r"^(whatsapp:|messenger:|rcs:)?\+[1-9]\d{6,14}$")
_CALL_TO = re.compile(r"^(\+[1-9]\d{6,14}|sip:\S+@\S+|client:\S+)$")
# GSM 03.38 basic set (+ the extension table, which costs two septets).
_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXT = set("^{}\\[~]|€\f")

_ERROR_TEXT = {
    400: (20001, "Bad Request"),
    401: (20003, "Authenticate"),
    403: (20403, "Forbidden"),
    404: (20404, "The requested resource was not found"),
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
    502: (20500, "Bad Gateway"),
    503: (20503, "Service Unavailable"),
}


def new_twilio_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two-letter prefix and 32 lower-case hex digits."""
    return prefix + secrets.token_hex(16)


def twilio_error(status: int, code: int | None = None, message: str | None = None) -> dict:
    """Twilio's error body: {"code", "message", "more_info", "status"}."""
    default_code, default_message = _ERROR_TEXT.get(status, (20500, "Error"))
    code = code or default_code
    return {
        "code": code,
        "message": message or default_message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _rfc2822_now() -> str:
    return formatdate(time.time(), usegmt=False).replace("-0000", "+0000")


def _segments(body: str) -> int:
    if not body:
        return 1
    if all(ch in _GSM7 or ch in _GSM7_EXT for ch in body):
        septets = sum(2 if ch in _GSM7_EXT else 1 for ch in body)
        return 1 if septets <= 160 else -(-septets // 153)
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else -(-units // 67)


@dataclass
class RecordedRequest:
    """One request the stand-in received, accepted or not."""

    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]]
    status: int = 0
    response: dict = field(default_factory=dict)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.form.get(name)
        return values[0] if values else default


class TwilioStandin(StandinServer):
    """Twilio's Messages.json and Calls.json on 127.0.0.1 (aiohttp, port 0).

    Accepted sends are in `.messages` / `.calls` (the form fields, single values, plus
    the "Sid" answered); every request, rejected ones too, is in `.requests`.
    `fail_next(n, status)` and `delay_next(seconds)` inject provider trouble.
    """

    def __init__(self, account_sid: str, auth_token: str) -> None:
        if not re.fullmatch(r"AC[0-9a-f]{32}", account_sid):
            raise ValueError(f"not a Twilio Account SID: {account_sid!r}")
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[dict[str, str]] = []
        self.calls: list[dict[str, str]] = []
        self.requests: list[RecordedRequest] = []
        self.resources: dict[str, dict] = {}  # sid -> Message/Call JSON, for GET

    # -- lifecycle
    def _routes(self, app: web.Application) -> None:
        base = "/2010-04-01/Accounts/{account_sid}"
        app.router.add_post(base + "/Messages.json", self._create_message)
        app.router.add_post(base + "/Calls.json", self._create_call)
        app.router.add_get(base + "/Messages/{sid}.json", self._fetch)
        app.router.add_get(base + "/Calls/{sid}.json", self._fetch)

    async def __aenter__(self) -> TwilioStandin:
        await self.start()
        return self

    async def wait_for_messages(self, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
        """Wait until at least `count` messages were accepted."""
        await self._wait_until(lambda: len(self.messages) >= count, timeout)
        return self.messages

    async def wait_for_calls(self, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
        await self._wait_until(lambda: len(self.calls) >= count, timeout)
        return self.calls

    # -- request handling
    async def _prepare(self, request: web.Request) -> tuple[RecordedRequest, web.Response | None]:
        form = await request.post()
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            form={key: [str(v) for v in form.getall(key)] for key in set(form.keys())},
        )
        self.requests.append(recorded)
        fault = await self._next_fault()
        if fault and fault.status:
            return recorded, self._error(recorded, fault.status, fault.code, fault.message)
        if not self._authenticated(request):
            return recorded, self._error(recorded, 401)
        if request.match_info["account_sid"] != self.account_sid:
            return recorded, self._error(
                recorded, 404, 20404, f"The requested resource {request.path} was not found"
            )
        return recorded, None

    def _authenticated(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return secrets.compare_digest(user, self.account_sid) and secrets.compare_digest(
            password, self.auth_token
        )

    def _error(
        self,
        recorded: RecordedRequest,
        status: int,
        code: int | None = None,
        message: str | None = None,
    ) -> web.Response:
        body = twilio_error(status, code, message)
        recorded.status, recorded.response = status, body
        return web.json_response(body, status=status)

    def _created(self, recorded: RecordedRequest, body: dict) -> web.Response:
        recorded.status, recorded.response = 201, body
        self.resources[body["sid"]] = body
        return web.json_response(body, status=201)

    async def _create_message(self, request: web.Request) -> web.Response:
        recorded, rejection = await self._prepare(request)
        if rejection is not None:
            return rejection
        to, from_ = recorded.get("To", ""), recorded.get("From")
        service = recorded.get("MessagingServiceSid")
        body = recorded.get("Body", "")
        media = recorded.form.get("MediaUrl", [])
        content_sid = recorded.get("ContentSid")
        if not to:
            return self._error(recorded, 400, 21604, "A 'To' phone number is required.")
        if not _ADDRESS.match(to):
            return self._error(recorded, 400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not from_ and not service:
            return self._error(recorded, 400, 21603, "A 'From' phone number is required.")
        if from_ and not (_ADDRESS.match(from_) or re.fullmatch(r"[A-Za-z0-9 ]{1,11}", from_)):
            return self._error(recorded, 400, 21212, f"Invalid From Number (caller ID): {from_}")
        if service and not re.fullmatch(r"MG[0-9a-f]{32}", service):
            return self._error(recorded, 400, 21701, "The Messaging Service Sid is invalid.")
        if from_ and to.split(":")[0] != from_.split(":")[0] and (":" in to or ":" in from_):
            return self._error(
                recorded,
                400,
                21910,
                "Invalid From and To pair. From and To should be of the same channel",
            )
        if not body and not media and not content_sid:
            return self._error(recorded, 400, 21602, "Message body is required.")
        if len(body) > 1600:
            return self._error(
                recorded,
                400,
                21617,
                "The concatenated message body exceeds the 1600 character limit.",
            )
        sid = new_twilio_sid("MM" if media else "SM")
        now = _rfc2822_now()
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json"
        message = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": service,
            "num_media": str(len(media)),
            "num_segments": "0" if service and not from_ else str(_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service and not from_ else "queued",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json",
                "feedback": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Feedback.json",
            },
            "to": to,
            "uri": uri,
        }
        self.messages.append({**{k: v[0] for k, v in recorded.form.items()}, "Sid": sid})
        await self._notify()
        return self._created(recorded, message)

    async def _create_call(self, request: web.Request) -> web.Response:
        recorded, rejection = await self._prepare(request)
        if rejection is not None:
            return rejection
        to, from_ = recorded.get("To", ""), recorded.get("From", "")
        if not to:
            return self._error(recorded, 400, 21201, "No 'To' number is specified")
        if not _CALL_TO.match(to):
            return self._error(recorded, 400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not from_:
            return self._error(recorded, 400, 21213, "No 'From' number is specified")
        if not (_E164.match(from_) or from_.startswith("client:")):
            return self._error(recorded, 400, 21212, f"Invalid From Number (caller ID): {from_}")
        url, twiml = recorded.get("Url"), recorded.get("Twiml")
        if not url and not twiml and not recorded.get("ApplicationSid"):
            return self._error(recorded, 400, 21205, "Url parameter is required.")
        if url and not re.match(r"^https?://[^/\s]+", url):
            return self._error(recorded, 400, 21205, f"Url is not a valid URL: {url}")
        sid = new_twilio_sid("CA")
        now = _rfc2822_now()
        base = f"/2010-04-01/Accounts/{self.account_sid}/Calls/{sid}"
        call = {
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": None,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": now,
            "date_updated": now,
            "direction": "outbound-api",
            "duration": None,
            "end_time": None,
            "forwarded_from": None,
            "from": from_,
            "from_formatted": from_,
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": new_twilio_sid("PN"),
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": sid,
            "start_time": None,
            "status": "queued",
            "subresource_uris": {
                "notifications": f"{base}/Notifications.json",
                "recordings": f"{base}/Recordings.json",
                "payments": f"{base}/Payments.json",
                "events": f"{base}/Events.json",
                "siprec": f"{base}/Siprec.json",
                "streams": f"{base}/Streams.json",
                "user_defined_message_subscriptions": (
                    f"{base}/UserDefinedMessageSubscriptions.json"
                ),
                "user_defined_messages": f"{base}/UserDefinedMessages.json",
            },
            "to": to,
            "to_formatted": to,
            "trunk_sid": None,
            "uri": f"{base}.json",
        }
        self.calls.append({**{k: v[0] for k, v in recorded.form.items()}, "Sid": sid})
        await self._notify()
        return self._created(recorded, call)

    async def _fetch(self, request: web.Request) -> web.Response:
        recorded = RecordedRequest(request.method, request.path, dict(request.headers), {})
        self.requests.append(recorded)
        if not self._authenticated(request):
            return self._error(recorded, 401)
        resource = self.resources.get(request.match_info["sid"])
        if request.match_info["account_sid"] != self.account_sid or resource is None:
            return self._error(
                recorded, 404, 20404, f"The requested resource {request.path} was not found"
            )
        recorded.status, recorded.response = 200, resource
        return web.json_response(resource)


# ---------------------------------------------------------------------------
# What Twilio sends to the gateway


def twilio_sign(
    auth_token: str, url: str, params: Mapping[str, str] | Iterable[tuple[str, str]]
) -> str:
    """X-Twilio-Signature for a form POST to `url` (the full URL Twilio requested)."""
    return RequestValidator(auth_token).compute_signature(url, dict(params))


def twilio_webhook_request(
    auth_token: str, url: str, form: Mapping[str, str]
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of Twilio's signed form POST of `form` to `url`."""
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": twilio_sign(auth_token, url, form),
        "User-Agent": "TwilioProxy/1.1",
        "I-Twilio-Idempotency-Token": secrets.token_hex(16),
    }
    return urlencode(form).encode(), headers


def _digits(address: str) -> str:
    return re.sub(r"\D", "", address.split(":")[-1])


def twilio_sms_form(
    *,
    account_sid: str,
    from_: str,
    to: str,
    body: str,
    message_sid: str | None = None,
    messaging_service_sid: str | None = None,
    media: Iterable[tuple[str, str]] = (),
    profile_name: str | None = None,
    wa_id: str | None = None,
) -> dict[str, str]:
    """The form Twilio POSTs to an incoming-message webhook, SMS or WhatsApp.

    WhatsApp is chosen by `from_` starting with "whatsapp:"; it then carries
    ProfileName and WaId (the sender's number without "+") instead of geography.
    `media` is (url, content type) pairs.
    """
    media = list(media)
    sid = message_sid or new_twilio_sid("MM" if media else "SM")
    form = {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "AccountSid": account_sid,
        "From": from_,
        "To": to,
        "Body": body,
        "NumMedia": str(len(media)),
        "NumSegments": str(_segments(body)),
        "SmsStatus": "received",
        "ApiVersion": API_VERSION,
    }
    if messaging_service_sid:
        form["MessagingServiceSid"] = messaging_service_sid
    for i, (url, content_type) in enumerate(media):
        form[f"MediaUrl{i}"] = url
        form[f"MediaContentType{i}"] = content_type
    if from_.startswith("whatsapp:"):
        form["ProfileName"] = profile_name or "Customer"
        form["WaId"] = wa_id or _digits(from_)
        form["MessageType"] = "image" if media else "text"
        form["ChannelMetadata"] = json.dumps(
            {
                "type": "whatsapp",
                "data": {"context": {"ProfileName": form["ProfileName"], "WaId": form["WaId"]}},
            },
            separators=(",", ":"),
        )
    else:
        form.update(
            {
                "FromCity": "SAN FRANCISCO",
                "FromState": "CA",
                "FromZip": "94105",
                "FromCountry": "US",
                "ToCity": "OAKLAND",
                "ToState": "CA",
                "ToZip": "94612",
                "ToCountry": "US",
            }
        )
    return form


def twilio_status_form(
    *,
    account_sid: str,
    message_sid: str,
    from_: str,
    to: str,
    status: str,
    error_code: int | None = None,
    messaging_service_sid: str | None = None,
) -> dict[str, str]:
    """A message status callback (queued, sent, delivered, undelivered, failed, read)."""
    form = {
        "MessageSid": message_sid,
        "SmsSid": message_sid,
        "AccountSid": account_sid,
        "From": from_,
        "To": to,
        "MessageStatus": status,
        "SmsStatus": status,
        "ApiVersion": API_VERSION,
    }
    if messaging_service_sid:
        form["MessagingServiceSid"] = messaging_service_sid
    if error_code is not None:
        form["ErrorCode"] = str(error_code)
    if from_.startswith("whatsapp:"):
        form["ChannelToAddress"] = _digits(to)
        form["ChannelPrefix"] = "whatsapp"
        form["ChannelInstallSid"] = "XE" + secrets.token_hex(16)
    return form


def twilio_voice_form(
    *,
    account_sid: str,
    from_: str,
    to: str,
    call_sid: str | None = None,
    call_status: str = "ringing",
    direction: str = "inbound",
    digits: str | None = None,
) -> dict[str, str]:
    """The form Twilio POSTs to a voice webhook (incoming call; with `digits`, a <Gather>)."""
    form = {
        "CallSid": call_sid or new_twilio_sid("CA"),
        "AccountSid": account_sid,
        "From": from_,
        "To": to,
        "Caller": from_,
        "Called": to,
        "CallStatus": call_status,
        "Direction": direction,
        "ApiVersion": API_VERSION,
        "CallToken": secrets.token_urlsafe(24),
        "FromCity": "SAN FRANCISCO",
        "FromState": "CA",
        "FromZip": "94105",
        "FromCountry": "US",
        "ToCity": "OAKLAND",
        "ToState": "CA",
        "ToZip": "94612",
        "ToCountry": "US",
        "CallerCity": "SAN FRANCISCO",
        "CallerState": "CA",
        "CallerZip": "94105",
        "CallerCountry": "US",
        "CalledCity": "OAKLAND",
        "CalledState": "CA",
        "CalledZip": "94612",
        "CalledCountry": "US",
    }
    if digits is not None:
        form["Digits"] = digits
        form["FinishedOnKey"] = ""
    return form
