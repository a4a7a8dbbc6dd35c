"""Authentication-Results (RFC 8601): what the mailbox's own server said about DKIM, SPF, DMARC.

Evidence only: a pass never verifies a customer (the trust rules). Any sender can write such a
header into a mail, so only the topmost one counts: the one the receiving server added last,
on delivery to our mailbox. Pure, fuzzed; unknown syntax gives fewer fields, never an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_METHOD = re.compile(r"^\s*([A-Za-z0-9_.-]+)(?:/\d+)?\s*=\s*([A-Za-z0-9_.-]+)(.*)$", re.S)
_PROP = re.compile(r"([A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+)\s*=\s*(\"[^\"]*\"|[^\s;]+)")


@dataclass(frozen=True, slots=True)
class AuthResults:
    authserv_id: str
    dkim: str | None = None  # the best DKIM result: pass when any signature passed
    dkim_domain: str | None = None  # header.d of that signature
    spf: str | None = None
    dmarc: str | None = None
    dmarc_domain: str | None = None  # header.from

    def as_extra(self) -> dict[str, str]:
        out = {"auth_serv_id": self.authserv_id}
        for key in ("dkim", "dkim_domain", "spf", "dmarc", "dmarc_domain"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return out


def _strip_comments(text: str) -> str:
    """Drop RFC 5322 comments `( … )`, nested, outside quoted strings."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if depth == 0:
                out.append(ch)
            continue
        if quoted:
            if ch == '"':
                quoted = False
            out.append(ch)
        elif ch == '"' and depth == 0:
            quoted = True
            out.append(ch)
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def parse_authentication_results(value: str | None) -> AuthResults | None:
    """The results in one Authentication-Results value; None when it names no server."""
    if not value:
        return None
    pieces = _strip_comments(value[:4000]).split(";")
    head = pieces[0].split()
    if not head:
        return None
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for piece in pieces[1:]:
        match = _METHOD.match(piece)
        if match is None:
            continue
        method, result, rest = match.group(1).lower(), match.group(2).lower(), match.group(3)
        props = {k.lower(): v.strip('"') for k, v in _PROP.findall(rest)}
        if method == "dkim" and method in found and found[method][0] == "pass":
            continue  # keep the passing signature when there are several
        found[method] = (result, props)
    dkim = found.get("dkim")
    dmarc = found.get("dmarc")
    spf = found.get("spf")
    return AuthResults(
        authserv_id=head[0][:200],
        dkim=dkim[0] if dkim else None,
        dkim_domain=(dkim[1].get("header.d") or None) if dkim else None,
        spf=spf[0] if spf else None,
        dmarc=dmarc[0] if dmarc else None,
        dmarc_domain=(dmarc[1].get("header.from") or None) if dmarc else None,
    )
