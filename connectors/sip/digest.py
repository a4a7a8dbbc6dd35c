"""HTTP Digest authentication as SIP uses it (RFC 3261 22.4; RFC 2617, RFC 7616, RFC 8760).

Sits beside the SIP edge's registrar, which challenges agents and checks their REGISTERs,
and its outbound UAC, which answers other servers' challenges. Pure functions over header
text; nonces carry their own timestamp signed with the gateway's secret, so any worker can
check one without shared state and tell a stale nonce (answer `stale=true`) from a forged one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from connectors.sip.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ALGORITHMS",
    "AuthOutcome",
    "Challenge",
    "Credentials",
    "NonceIssuer",
    "NonceLedger",
    "NonceStatus",
    "authorize",
    "check_credentials",
    "choose_challenge",
    "compute_response",
    "ha1",
    "verify",
]

_HASHES: Final[dict[str, Callable[[bytes], str]]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}
ALGORITHMS: Final = ("SHA-256", "SHA-256-sess", "MD5", "MD5-sess")
"""Supported algorithms, strongest first (RFC 8760 asks for SHA-256 ahead of MD5)."""


def _canonical_algorithm(name: str) -> str | None:
    for known in ALGORITHMS:
        if known.lower() == name.lower():
            return known
    return None


def _hasher(algorithm: str) -> Callable[[bytes], str]:
    known = _canonical_algorithm(algorithm)
    if known is None:
        raise RemoteProtocolError(f"unsupported digest algorithm {algorithm!r}", 401)
    return _HASHES[known.removesuffix("-sess")]


# --- header syntax ------------------------------------------------------------------------

_TOKEN: Final = r"[A-Za-z0-9!#$%&'*+.^_`|~\-]+"
_SCHEME: Final = re.compile(rf"[ \t]*({_TOKEN})(?:[ \t]+|$)")
_AUTH_PARAM: Final = re.compile(
    rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*("(?:[^"\\]|\\[\s\S])*"|{_TOKEN}|[^\s,"]+)[ \t]*(,|$)'
)
_UNPAIR: Final = re.compile(r"\\([\s\S])")
_NC: Final = re.compile(r"[0-9A-Fa-f]{8}")


def _parse(value: str, what: str) -> dict[str, str]:
    """`Digest a=b, c="d"` -> {"a": "b", "c": "d"} (names lower-cased, quotes removed)."""
    m = _SCHEME.match(value)
    if m is None:
        raise RemoteProtocolError(f"{what} has no scheme")
    if m.group(1).lower() != "digest":
        # RFC 4475 regaut01: an unknown scheme is answered with a fresh Digest challenge
        raise RemoteProtocolError(f"{what} uses scheme {m.group(1)!r}, not Digest", 401)
    params: dict[str, str] = {}
    pos, end = m.end(), len(value)
    while pos < end:
        p = _AUTH_PARAM.match(value, pos)
        if p is None:
            raise RemoteProtocolError(f"malformed {what} near {value[pos:pos + 30]!r}")
        name, raw = p.group(1).lower(), p.group(2)
        if name in params:
            raise RemoteProtocolError(f"{what} repeats {name}")
        params[name] = _UNPAIR.sub(r"\1", raw[1:-1]) if raw[:1] == '"' else raw
        pos = p.end()
        if not p.group(3) and pos < end:
            raise RemoteProtocolError(f"malformed {what} near {value[pos:pos + 30]!r}")
    return params


def _quote(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise LocalProtocolError("a digest parameter cannot hold CR or LF")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """A `WWW-Authenticate` / `Proxy-Authenticate` Digest challenge."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ("auth",)  # () is the RFC 2069 form, without qop
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def parse(cls, value: str) -> Challenge:
        p = _parse(value, "challenge")
        if "realm" not in p or "nonce" not in p:
            raise RemoteProtocolError("challenge lacks realm or nonce")
        qop = tuple(q.strip() for q in p.get("qop", "").split(",") if q.strip())
        return cls(
            realm=p["realm"], nonce=p["nonce"], algorithm=p.get("algorithm", "MD5"), qop=qop,
            opaque=p.get("opaque"), stale=p.get("stale", "").lower() == "true",
        )

    def to_header(self) -> str:
        parts = [f"Digest realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        if self.stale:
            parts.append("stale=true")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """An `Authorization` / `Proxy-Authorization` Digest answer."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> Credentials:
        p = _parse(value, "Authorization")
        missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in p]
        if missing:
            raise RemoteProtocolError(f"Authorization lacks {', '.join(missing)}")
        qop = p.get("qop")
        if qop is not None:
            if "cnonce" not in p or not _NC.fullmatch(p.get("nc", "")):
                raise RemoteProtocolError("Authorization with qop needs cnonce and an 8-hex nc")
        return cls(
            username=p["username"], realm=p["realm"], nonce=p["nonce"], uri=p["uri"],
            response=p["response"], algorithm=p.get("algorithm", "MD5"), qop=qop,
            nc=p.get("nc"), cnonce=p.get("cnonce"), opaque=p.get("opaque"),
        )

    def to_header(self) -> str:
        parts = [
            f"Digest username={_quote(self.username)}", f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}", f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}", f"algorithm={self.algorithm}",
        ]
        if self.qop is not None:
            parts += [f"qop={self.qop}", f"nc={self.nc}", f"cnonce={_quote(self.cnonce or '')}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        return ", ".join(parts)


# --- the computation ----------------------------------------------------------------------


def ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password), what a registrar may store instead of the password."""
    return _hasher(algorithm)(f"{username}:{realm}:{password}".encode())


def compute_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    nonce: str,
    method: str,
    uri: str,
    password: str | None = None,
    stored_ha1: str | None = None,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest of RFC 7616 3.4.1 (RFC 2617 3.2.2; no qop: RFC 2069)."""
    h = _hasher(algorithm)
    if stored_ha1 is None:
        if password is None:
            raise LocalProtocolError("give the password or the stored HA1")
        stored_ha1 = h(f"{username}:{realm}:{password}".encode())
    a1 = stored_ha1
    if algorithm.lower().endswith("-sess"):
        a1 = h(f"{stored_ha1}:{nonce}:{cnonce or ''}".encode())
    if qop == "auth-int":
        a2 = h(f"{method}:{uri}:{h(body)}".encode())
    elif qop in (None, "auth"):
        a2 = h(f"{method}:{uri}".encode())
    else:
        raise RemoteProtocolError(f"unsupported qop {qop!r}", 401)
    if qop is None:
        return h(f"{a1}:{nonce}:{a2}".encode())
    return h(f"{a1}:{nonce}:{nc}:{cnonce}:{qop}:{a2}".encode())


def verify(
    credentials: Credentials,
    *,
    method: str,
    password: str | None = None,
    stored_ha1: str | None = None,
    body: bytes = b"",
) -> bool:
    """True when `credentials.response` is right for this password (or stored HA1).

    Compared in constant time. An unsupported algorithm or qop is simply not right.
    """
    try:
        expected = compute_response(
            algorithm=credentials.algorithm, username=credentials.username,
            realm=credentials.realm, nonce=credentials.nonce, method=method,
            uri=credentials.uri, password=password, stored_ha1=stored_ha1,
            qop=credentials.qop, nc=credentials.nc, cnonce=credentials.cnonce, body=body,
        )
    except RemoteProtocolError:
        return False
    return hmac.compare_digest(expected.encode(), credentials.response.lower().encode())


def authorize(
    challenge: Challenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    cnonce: str | None = None,
    nc: int = 1,
    body: bytes = b"",
) -> Credentials:
    """The client's answer to `challenge` (prefers qop=auth, as RFC 3261 22.4 asks)."""
    qop = "auth" if "auth" in challenge.qop else "auth-int" if "auth-int" in challenge.qop else None
    if challenge.qop and qop is None:
        raise RemoteProtocolError(f"no supported qop in {challenge.qop!r}", 401)
    algorithm = _canonical_algorithm(challenge.algorithm) or challenge.algorithm
    nc_text = cnonce_text = None
    if qop is not None:
        nc_text = f"{nc:08x}"
        cnonce_text = cnonce or secrets.token_hex(8)
    response = compute_response(
        algorithm=algorithm, username=username, realm=challenge.realm, nonce=challenge.nonce,
        method=method, uri=uri, password=password, qop=qop, nc=nc_text, cnonce=cnonce_text,
        body=body,
    )
    return Credentials(
        username=username, realm=challenge.realm, nonce=challenge.nonce, uri=uri,
        response=response, algorithm=algorithm, qop=qop, nc=nc_text, cnonce=cnonce_text,
        opaque=challenge.opaque,
    )


def choose_challenge(values: Iterable[str]) -> Challenge:
    """Of several challenges (RFC 8760: one per algorithm), the strongest we support."""
    best: tuple[int, Challenge] | None = None
    for value in values:
        try:
            challenge = Challenge.parse(value)
        except RemoteProtocolError:
            continue
        known = _canonical_algorithm(challenge.algorithm)
        if known is not None:
            rank = ALGORITHMS.index(known)
            if best is None or rank < best[0]:
                best = (rank, challenge)
    if best is None:
        raise RemoteProtocolError("no usable Digest challenge", 401)
    return best[1]


# --- self-validating nonces ---------------------------------------------------------------


class NonceStatus(StrEnum):
    VALID = "valid"
    STALE = "stale"  # ours, but older than the lifetime: re-challenge with stale=true
    INVALID = "invalid"  # not ours (forged, garbled, or from the future)


class NonceIssuer:
    """Issues nonces = base64url(timestamp, 8 random octets, HMAC-SHA256 of both).

    Any process holding `secret` can check a nonce without remembering it; whether it was
    used already is the `NonceLedger`'s business (per process).
    """

    __slots__ = ("_secret", "lifetime", "max_skew")

    def __init__(self, secret: bytes, *, lifetime: float = 300.0, max_skew: float = 5.0) -> None:
        if len(secret) < 16:
            raise LocalProtocolError("the nonce secret needs at least 16 octets")
        self._secret = secret
        self.lifetime = lifetime
        self.max_skew = max_skew

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]

    def issue(self, now: float | None = None) -> str:
        stamp = time.time() if now is None else now
        payload = struct.pack(">Q", int(stamp * 1000)) + secrets.token_bytes(8)
        return base64.urlsafe_b64encode(payload + self._mac(payload)).decode().rstrip("=")

    def check(self, nonce: str, now: float | None = None) -> NonceStatus:
        stamp = time.time() if now is None else now
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (ValueError, TypeError):
            return NonceStatus.INVALID
        if len(raw) != 32 or not hmac.compare_digest(raw[16:], self._mac(raw[:16])):
            return NonceStatus.INVALID
        age = stamp - struct.unpack(">Q", raw[:8])[0] / 1000
        if age < -self.max_skew:
            return NonceStatus.INVALID
        return NonceStatus.STALE if age > self.lifetime else NonceStatus.VALID

    def challenge(
        self,
        realm: str,
        *,
        algorithm: str = "SHA-256",
        stale: bool = False,
        opaque: str | None = None,
        now: float | None = None,
    ) -> Challenge:
        if _canonical_algorithm(algorithm) is None:
            raise LocalProtocolError(f"unsupported digest algorithm {algorithm!r}")
        return Challenge(
            realm=realm, nonce=self.issue(now), algorithm=algorithm, qop=("auth",),
            opaque=opaque, stale=stale,
        )


class NonceLedger:
    """The nonces that authenticated a request, and the highest nonce count of each, so a
    captured Authorization cannot be replayed (RFC 7616 3.3, RFC 3261 22.4).

    With qop the nonce count must grow with every request that uses the nonce; without qop
    (RFC 2069 answers carry no count) a nonce works once. Entries are kept for the nonce
    lifetime (a nonce older than that is stale anyway) and at most `max_entries` of them:
    only requests whose digest was right are recorded, so strangers cannot fill it.
    """

    __slots__ = ("lifetime", "max_entries", "_clock", "_seen")

    def __init__(self, lifetime: float, *, max_entries: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.max_entries = max_entries
        self._clock = clock
        self._seen: dict[str, tuple[int | None, float]] = {}  # nonce -> (last nc, first use)

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, nonce: str, nc: str | None) -> bool:
        """Record one use of `nonce` with count `nc` (hex, or None without qop); False when
        it is a replay (the nonce was used without a count, or with this count or a higher
        one)."""
        count = int(nc, 16) if nc is not None else None
        seen = self._seen
        known = seen.get(nonce)
        now = self._clock()
        if known is not None:
            last, first = known
            if count is None or last is None or count <= last:
                return False
            seen[nonce] = (count, first)
            return True
        if len(seen) >= self.max_entries:
            self._prune(now)
        seen[nonce] = (count, now)
        return True

    def _prune(self, now: float) -> None:
        seen = self._seen
        deadline = now - self.lifetime
        for nonce in [n for n, (_, first) in seen.items() if first < deadline]:
            del seen[nonce]
        while len(seen) >= self.max_entries:  # all young: forget the oldest first uses
            del seen[next(iter(seen))]


class AuthOutcome(StrEnum):
    ACCEPTED = "accepted"
    STALE = "stale"  # right answer to an expired nonce: send a new challenge, stale=true
    REJECTED = "rejected"  # wrong realm, foreign nonce or wrong password: challenge again


def check_credentials(
    credentials: Credentials,
    *,
    issuer: NonceIssuer,
    realm: str,
    method: str,
    password: str | None = None,
    stored_ha1: str | None = None,
    body: bytes = b"",
    now: float | None = None,
) -> AuthOutcome:
    """The registrar's whole check of one Authorization header for `realm`."""
    if credentials.realm != realm:
        return AuthOutcome.REJECTED
    status = issuer.check(credentials.nonce, now)
    if status is NonceStatus.INVALID:
        return AuthOutcome.REJECTED
    if not verify(
        credentials, method=method, password=password, stored_ha1=stored_ha1, body=body
    ):
        return AuthOutcome.REJECTED
    return AuthOutcome.STALE if status is NonceStatus.STALE else AuthOutcome.ACCEPTED
