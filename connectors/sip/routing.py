"""What an INVITE asks for, read from its headers: who calls, whom, and with which PIN.

Pure functions used by the SIP proxy before it hands the core an `IncomingCall`. The caller
comes from P-Asserted-Identity, else From, and is an identification only (caller ID never
verifies, CONTRACT.md); the dialled user may carry an escalation PIN (`support*123456`,
`pin-123456`) because a call without media has no DTMF to type one with. What only a trusted
peer may tell us (`TrustedPeers`: X-Context, the STIR/SHAKEN `verstat`) is read here too.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from connectors.sip.errors import RemoteProtocolError
from connectors.sip.grammar import NameAddr, SipUri, split_list, unescape
from connectors.sip.message import SipRequest
from gateway.addresses import Address, AddressError, make_address

__all__ = ["Dialled", "ServiceUsers", "TrustedPeers", "attestation", "caller_address", "dialled",
           "pin_from_header"]

PIN_HEADER: Final = "X-Escalation-Pin"
_PIN: Final = r"(?P<pin>[0-9]{4,12})"
_STAR_PIN: Final = re.compile(rf"(?P<user>.*?)\*{_PIN}")
_PIN_USER: Final = re.compile(rf"pin-{_PIN}", re.IGNORECASE)
_NUMBER: Final = re.compile(r"\+?[0-9][0-9().\- ]{2,30}")
_VISUAL: Final = str.maketrans("", "", "+().- ")


@dataclass(frozen=True, slots=True)
class Dialled:
    """The Request-URI user without its PIN, and the PIN when the user carried one."""

    user: str
    pin: str | None = None


def dialled(user: str) -> Dialled:
    """`support*123456` -> (support, 123456); `pin-123456` -> ("", 123456); else (user, None)."""
    if (m := _PIN_USER.fullmatch(user)) is not None:
        return Dialled("", m.group("pin"))
    if "*" in user and (m := _STAR_PIN.fullmatch(user)) is not None:
        return Dialled(m.group("user"), m.group("pin"))
    return Dialled(user)


def pin_from_header(request: SipRequest) -> str | None:
    """The `X-Escalation-Pin` header's digits, or None when absent or not a PIN."""
    value = request.headers.get(PIN_HEADER)
    if value is None:
        return None
    value = value.strip()
    return value if re.fullmatch(_PIN, value) else None


def _digits(text: str) -> str | None:
    return text.translate(_VISUAL) if _NUMBER.fullmatch(text) else None


class ServiceUsers:
    """Request-URI users that route to any free agent: names (case-insensitive) and numbers
    (compared by digits, so +18005550000 and 18005550000 are one DID); `*` is every user."""

    __slots__ = ("_names", "_numbers", "_any")

    def __init__(self, users: Iterable[str]) -> None:
        self._any = False
        self._names: set[str] = set()
        self._numbers: set[str] = set()
        for user in users:
            if user == "*":
                self._any = True
            elif (digits := _digits(user)) is not None:
                self._numbers.add(digits)
            else:
                self._names.add(user.lower())

    def __contains__(self, user: object) -> bool:
        if not isinstance(user, str):
            return False
        if self._any:
            return True
        if user.lower() in self._names:
            return True
        digits = _digits(user)
        return digits is not None and digits in self._numbers


def _identities(request: SipRequest) -> list[str]:
    """The caller's identities, most trusted first: P-Asserted-Identity values, then From."""
    candidates: list[str] = []
    for value in request.headers.get_all("P-Asserted-Identity"):
        candidates.extend(split_list(value))
    from_ = request.headers.get("From")
    if from_ is not None:
        candidates.append(from_)
    return candidates


def caller_address(request: SipRequest, default_region: str | None = None) -> Address | None:
    """Who is calling, as an address to identify (never verify) a customer by.

    P-Asserted-Identity (a trunk's network-asserted caller ID) comes first, else From. A tel:
    URI or a number in the user part is `voice:+E164`; another sip: user is `sip:user@host`;
    anonymous callers and unreadable values are None.
    """
    for text in _identities(request):
        try:
            found, address = _address_of(NameAddr.parse(text).uri, default_region)
        except RemoteProtocolError:
            continue
        if found:
            return address
    return None


def _address_of(uri: str, default_region: str | None) -> tuple[bool, Address | None]:
    """(usable, address): usable False means "try the next candidate"."""
    scheme = uri.partition(":")[0].lower()
    if scheme == "tel":
        number = uri[4:].split(";", 1)[0]
        return _phone(number, default_region)
    if scheme not in ("sip", "sips"):
        return False, None
    parsed = SipUri.parse(uri)
    if parsed.user is None:
        return False, None
    user = unescape(parsed.user).split(";", 1)[0]  # ;isub=… and friends in a phone user
    host = parsed.host.lower()
    if user.lower() == "anonymous" or host == "anonymous.invalid":
        return True, None
    if parsed.param("user") == "phone" or _digits(user) is not None:
        usable, address = _phone(user, default_region)
        if address is not None:
            return usable, address
    try:
        return True, make_address("sip", f"{user}@{host}")
    except AddressError:
        return False, None


def _phone(number: str, default_region: str | None) -> tuple[bool, Address | None]:
    try:
        return True, make_address("voice", number, default_region)
    except AddressError:
        return False, None


class TrustedPeers:
    """The addresses (IPs and CIDRs, `GATEWAY_SIP_TRUSTED_PEERS`) whose X-Context and caller-ID
    attestation the gateway believes: its trunks and upstream edges. `host in peers`."""

    __slots__ = ("_networks", "_known")

    def __init__(self, peers: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(p, strict=False) for p in peers)
        self._known: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, host: object) -> bool:
        if not self._networks or not isinstance(host, str):
            return False
        known = self._known.get(host)
        if known is None:
            try:
                address = ipaddress.ip_address(host.strip("[]"))
            except ValueError:
                known = False
            else:
                known = any(address in network for network in self._networks)
            if len(self._known) >= 4096:
                self._known.clear()
            self._known[host] = known
        return known


def client_host(request: SipRequest, source: str, trusted: TrustedPeers) -> str:
    """The address a request's sender is limited by (failed digests, PIN guesses): its
    source, or, when a trusted peer relayed it (a Kamailio in front of several gateways), the
    address that peer received it from: the next Via's `received` (RFC 3261 18.2.1), else its
    host. Without this every phone behind the Kamailio would share one limit."""
    if source not in trusted:
        return source
    try:
        vias = request.vias
    except RemoteProtocolError:
        return source
    if len(vias) < 2:
        return source
    return vias[1].param("received") or vias[1].host


_VERSTAT: Final = re.compile(r"[;?&]verstat=([A-Za-z0-9\-]{1,40})", re.IGNORECASE)
_PASSED: Final = re.compile(r"TN-Validation-Passed-([ABC])", re.IGNORECASE)


def attestation(request: SipRequest) -> str | None:
    """The caller-ID attestation a trunk put in the `verstat` parameter (3GPP TS 24.229,
    ATIS-1000074) of P-Asserted-Identity or From: "A", "B" or "C" for
    `TN-Validation-Passed-A/B/C`, else the verstat value as written (`TN-Validation-Passed`,
    `TN-Validation-Failed`, `No-TN-Validation`); None without one. Believe it only from a
    trusted peer: anyone can write it."""
    for text in _identities(request):
        try:
            uri = NameAddr.parse(text).uri
        except RemoteProtocolError:
            continue
        found = _VERSTAT.search(unescape(uri))
        if found is not None:
            value = found.group(1)
            passed = _PASSED.fullmatch(value)
            return passed.group(1).upper() if passed else value
    return None
