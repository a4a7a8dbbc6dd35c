"""Answers the SIP edge builds itself (RFC 3261 8.2.6): responses to requests, and the
stateless 400/505 for a request that failed to parse but can still be answered.

Used by the transaction layer (100 Trying), the registrar and proxy (their final answers) and
the transports (malformed datagrams and frames), after h11's split of its error answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from connectors.sip.errors import LocalProtocolError, RemoteProtocolError
from connectors.sip.framing import _head_end, _unfold
from connectors.sip.grammar import (
    CSeq,
    _is_scheme_uri,
    _is_token,
    _name_addr,
    _parse_via,
    _raw_split,
    new_tag,
)
from connectors.sip.headers import _CANON, _REQUIRED, _TRACKED, Headers, _key
from connectors.sip.message import SipRequest, SipResponse

__all__ = ["error_response_for", "make_response", "reason_phrase", "salvage_request"]

_REASONS: Final = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated", 200: "OK", 202: "Accepted",
    204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 412: "Conditional Request Failed",
    413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    428: "Use Identity Header", 429: "Provide Referrer Identity", 433: "Anonymity Disallowed",
    436: "Bad Identity-Info", 437: "Unsupported Certificate", 438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event",
    491: "Request Pending", 493: "Undecipherable", 494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 580: "Precondition Failure", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
    607: "Unwanted", 608: "Rejected",
}


def reason_phrase(status: int) -> str:
    """The RFC's reason phrase for `status`, or a generic one for its class."""
    return _REASONS.get(status) or _REASONS.get(status // 100 * 100, "Unknown")


# --- answering ----------------------------------------------------------------------------


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipResponse:
    """A response to `request` per RFC 3261 8.2.6: Via (all, in order), From, To, Call-ID and
    CSeq copied; a To tag added when the request's To has none (`to_tag`, or a fresh one;
    a 100 Trying gets no tag unless given). Record-Route and Contact are the caller's
    business (`extra_headers`)."""
    h = request.headers
    to = h.get("To")
    if to is None:
        raise LocalProtocolError("cannot answer a request without To")
    if status > 100 or to_tag is not None:
        try:
            has_tag = _name_addr(to).has_param("tag")
        except RemoteProtocolError:
            has_tag = True  # unparseable: copy it untouched rather than make it worse
        if not has_tag:
            # appending keeps the peer's text; valid for both name-addr and addr-spec forms
            to = f"{to};tag={to_tag or new_tag()}"
    entries = [e for e in h._entries if e[0] == "via"]
    for key, name in (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq")):
        value = to if key == "to" else h.get(name)
        if value is not None:
            entries.append((key, name, value))
    if status == 100 and (ts := h.get("Timestamp")) is not None:
        entries.append(("timestamp", "Timestamp", ts))  # RFC 3261 8.2.6.1
    response = SipResponse(
        status, reason if reason is not None else reason_phrase(status), Headers._trusted(entries),
        body,
    )
    for name, value in extra_headers:
        response.headers.add(name, value)
    return response


def salvage_request(data: bytes) -> SipRequest | None:
    """From a request that failed to parse, the part needed to answer it, or None.

    Answering needs a request line that is not ACK, a parseable top Via (where the answer
    goes), a parseable CSeq (what it matches), and From, To and Call-ID to copy; otherwise
    the transport should drop the message (and never answer a response).
    """
    try:
        data = bytes(data).lstrip(b"\r\n")
        end, _ = _head_end(data)
        head = data if end < 0 else data[:end]
        text = head.decode("utf-8", "surrogateescape").replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        if "\n " in text or "\n\t" in text:
            lines = _unfold(lines)
        parts = lines[0].split()
        if len(parts) < 2 or not _is_token(parts[0]) or parts[0] == "ACK":
            return None
        values: dict[str, list[str]] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            key = _key(name.strip(" \t"))
            if sep and key in _TRACKED:
                values.setdefault(key, []).append(value.strip(" \t"))
        for name in _REQUIRED:
            if not values.get(name) or not values[name][0]:
                return None
        if " " in values["call-id"][0] or "\t" in values["call-id"][0]:
            return None
        # a SIP/7.0 request has a SIP/7.0 Via; it still gets its 505
        other_version = len(parts) > 2 and parts[-1].upper() != "SIP/2.0"
        _parse_via(_raw_split(values["via"][0])[0], strict=not other_version)
        CSeq.parse(values["cseq"][0])
    except RemoteProtocolError:
        return None
    entries = [("via", "Via", v) for v in values["via"]]
    entries += [(k, _CANON[k][1], values[k][0]) for k in ("from", "to", "call-id", "cseq")]
    uri = parts[1] if _is_scheme_uri(parts[1]) else "sip:invalid"
    return SipRequest(parts[0], uri, Headers._trusted(entries))


def error_response_for(data: bytes, error: RemoteProtocolError) -> SipResponse | None:
    """The stateless answer to a malformed datagram (`error.status_hint`), or None to drop."""
    request = salvage_request(data)
    if request is None:
        return None
    return make_response(request, error.status_hint)

