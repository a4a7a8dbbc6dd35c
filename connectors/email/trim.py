"""What a mail says now, without the history it quotes or the signature under it.

The transcript shows the trimmed text; the full body is kept by reference. Quoted history
("On … wrote:", Outlook's "From: … Sent: …" block, "-----Original Message-----", in the
languages configured) is found by mail-parser-reply. Signatures are cut only where the sender
marked them (the RFC 3676 "-- " line) or where a phone app added its footer: the library's
own guesses ("Thanks," anywhere starts a signature) would drop what customers write.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any, Final

from mailparser_reply.parser import EmailMessage as ReplyText

MAX_TRIM_INPUT: Final = 64_000  # the quote finder's regexes run on at most this much text
_SIG_DELIMITER = re.compile(r"^--[ \t]?$", re.M)
_PHONE_FOOTER = re.compile(
    r"\n\s*(?:Sent from my [\w .-]{1,40}|Get Outlook for [\w .-]{1,20}|Von meinem [\w .-]{1,40}"
    r" gesendet|Envoyé de mon [\w .-]{1,40}|Enviado desde mi [\w .-]{1,40})\s*$",
    re.I,
)


def trim_reply(text: str, languages: Sequence[str] = ("en",)) -> str:
    """The newest part of a plain-text body: quoted history and signature removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    head, tail = text[:MAX_TRIM_INPUT], text[MAX_TRIM_INPUT:]
    newest = _newest_reply(head, languages)
    if newest is None:
        newest = head + tail
    elif tail and len(newest) >= len(head.strip()) - 1:
        newest = head + tail  # nothing was cut from the part we looked at: keep it all
    newest = _cut_signature(newest)
    newest = _drop_trailing_quote(newest)
    return newest.strip()


def trim_signature(text: str) -> str:
    """For a mail that quotes nothing (no reply headers, no quote marks): only the signature
    goes; the quote finder is not run (it costs more than the rest of parsing)."""
    return _cut_signature(text.replace("\r\n", "\n").replace("\r", "\n")).strip()


class _QuoteFinder(ReplyText):
    """mail-parser-reply's splitter without its signature and disclaimer guesses (we keep a
    reply's whole first part and cut signatures ourselves, see above): measured, those two
    searches and building the patterns again for every mail were most of its cost."""

    def _process_signatures_disclaimers(self, text: str) -> tuple[list[str], str]:
        return [], ""


@functools.lru_cache(maxsize=16)
def _header_pattern(languages: tuple[str, ...]) -> Any:
    return _QuoteFinder(text="", languages=list(languages)).HEADER_REGEX


def _newest_reply(text: str, languages: Sequence[str]) -> str | None:
    try:
        parsed = _QuoteFinder(text=text, languages=list(languages),
                              _header_regex=_header_pattern(tuple(languages))).read()
    except (re.error, RecursionError, ValueError):
        return None  # the caller keeps the whole text: showing too much beats losing it
    if not parsed.replies:
        return None
    return parsed.replies[0].content


def _cut_signature(text: str) -> str:
    match = _SIG_DELIMITER.search(text)
    if match is not None and match.start() > 0:
        text = text[: match.start()]
    return _PHONE_FOOTER.sub("", text)


def _drop_trailing_quote(text: str) -> str:
    """Bottom-quoted history without an attribution line: trailing `>` lines go."""
    lines = text.rstrip().split("\n")
    end = len(lines)
    while end > 0 and (lines[end - 1].lstrip().startswith(">") or not lines[end - 1].strip()):
        end -= 1
    if end == 0:
        return text  # all of it is quoted: keep it rather than show nothing
    return "\n".join(lines[:end])
