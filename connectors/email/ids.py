"""Message-IDs and thread tokens: the names mail carries, and the ones the gateway issues.

Pure functions. A Message-ID is kept canonical (the id between the angle brackets, at most
200 characters so it fits the store's provider-id columns; longer ones are replaced by their
SHA-256). The gateway's own Message-IDs embed the conversation's thread token,
`<out_….TOKEN@our.domain>`, and its reply address carries it too, `support+TOKEN@our.domain`:
a reply that names either came from someone who received our mail. The core issues and checks
tokens; here a token is anything of 16-64 URL-safe characters (the core decides whether it is
one of its own). Ours are best lower-case (`new_thread_token`): mail systems may fold the case
of a local part.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterable
from typing import Final

MAX_ID: Final = 200
TOKEN_RE: Final = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_ID_IN_BRACKETS = re.compile(r"<([^<>\s]{1,998})>")
_BAD_ID_CHARS = re.compile(r"[\s<>\"\\,;()\[\]\x00-\x1f\x7f]")
MAX_REFS: Final = 50  # References can grow without bound; the newest matter


def new_thread_token() -> str:
    """A fresh thread token: 128 random bits, lower-case base32 (26 characters)."""
    return base64.b32encode(secrets.token_bytes(16)).decode("ascii").rstrip("=").lower()


def is_thread_token(text: str) -> bool:
    return bool(TOKEN_RE.match(text))


def canonical_id(raw: str) -> str | None:
    """The id inside `<…>` (or the bare token when a sender left the brackets out); None for
    text that holds no id. Ids longer than MAX_ID are named by their SHA-256."""
    text = raw.strip()
    match = _ID_IN_BRACKETS.search(text)
    value = match.group(1) if match else (text.split()[0] if text.split() else "")
    value = value.strip("<>")
    if not value or _BAD_ID_CHARS.search(value):
        return None
    if len(value) > MAX_ID:
        return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return value


def ids_in(raw: str | None) -> list[str]:
    """Every Message-ID in an In-Reply-To or References value, in order, without repeats."""
    if not raw:
        return []
    out: list[str] = []
    for found in _ID_IN_BRACKETS.findall(raw):
        value = canonical_id(f"<{found}>")
        if value is not None and value not in out:
            out.append(value)
    return out


def thread_refs(in_reply_to: Iterable[str], references: Iterable[str]) -> tuple[str, ...]:
    """What a reply answers, newest first: In-Reply-To, then References from the end."""
    out: list[str] = []
    for value in [*in_reply_to, *reversed(list(references))]:
        if value not in out:
            out.append(value)
    return tuple(out[:MAX_REFS])


def synthetic_id(raw_sha256: str) -> str:
    """A stable id for a mail without a Message-ID: the same bytes give the same id, so a
    re-fetch after a cut or a UIDVALIDITY change is still recognised as a duplicate."""
    return f"{raw_sha256[:40]}@no-message-id.invalid"


# ---- the gateway's own names ----------------------------------------------------------------


def split_address(address: str) -> tuple[str, str]:
    """('support', 'example.org') for 'support@example.org'; the domain lower-cased."""
    local, _, domain = address.rpartition("@")
    return local, domain.lower()


def reply_address(our_address: str, token: str) -> str:
    """The per-conversation reply address, `local+TOKEN@domain` (plus addressing)."""
    local, domain = split_address(our_address)
    return f"{local}+{token}@{domain}"


def our_message_id(outbox_id: str, token: str | None, our_address: str) -> str:
    """The canonical Message-ID of an outbound mail: stable for one outbox row (a resend
    after an in-doubt failure carries the same id, so clients show it once)."""
    _local, domain = split_address(our_address)
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", outbox_id)[:80]
    return f"{safe}.{token}@{domain}" if token else f"{safe}@{domain}"


def token_in_address(address: str, our_address: str) -> str | None:
    """The token of `local+TOKEN@our.domain`, else None (another domain or local part)."""
    local, domain = split_address(address.strip())
    our_local, our_domain = split_address(our_address)
    base, plus, tag = local.partition("+")
    if not plus or base.lower() != our_local.lower() or domain != our_domain:
        return None
    return tag if is_thread_token(tag) else None  # case kept: the core's tokens may need it


def token_in_message_id(message_id: str, our_address: str) -> str | None:
    """The token embedded in one of our own Message-IDs (`….TOKEN@our.domain`), else None."""
    local, domain = split_address(message_id)
    if domain != split_address(our_address)[1]:
        return None
    tail = local.rpartition(".")[2]
    return tail if is_thread_token(tail) else None
