"""What never enters the store in clear: payment card numbers and one-time codes.

`redact` is the one function every stored text passes through (`conversations.append`, the
outbox row of an agent's reply; the email channel applies it to the bodies it keeps by
reference). It is pure, total and idempotent (tests/test_redaction.py fuzzes it):

- a card number is 13 to 19 digits, written together or in groups split by single spaces or
  dashes, that passes the Luhn check; it is masked keeping its last four digits and its
  layout ("4111 1111 1111 1111" -> "**** **** **** 1111");
- the codes given (a pending code the text contains, a PIN) are replaced by `CODE_MARK`.

Texts with fewer than 13 digits in a row (nearly all) cost one regular-expression search.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CODE_MARK = "[verification code]"
MASK = "*"
_MIN, _MAX = 13, 19
# Digits with at most one space or dash between them: a run that may hold a card number.
_RUN = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9])*(?![0-9])")
# The cheap gate: thirteen digits with separators between them, somewhere in the text.
_GATE = re.compile(r"[0-9](?:[ -]?[0-9]){12}")
_GROUP = re.compile(r"[0-9]+")


def luhn_ok(digits: str) -> bool:
    """The Luhn check (ISO/IEC 7812-1) of a string of digits."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card_spans(run: str) -> list[tuple[int, int]]:
    """The spans of card numbers inside one run of digit groups: the whole run when it is
    one, else the longest windows of whole groups that are, left to right, never overlapping."""
    digits = run.replace(" ", "").replace("-", "")
    if _MIN <= len(digits) <= _MAX and luhn_ok(digits):
        return [(0, len(run))]
    groups = [(m.start(), m.end()) for m in _GROUP.finditer(run)]
    spans: list[tuple[int, int]] = []
    first = 0
    while first < len(groups):
        found = None
        count = 0
        windows: list[tuple[int, int]] = []
        for last in range(first, len(groups)):
            count += groups[last][1] - groups[last][0]
            if count > _MAX:
                break
            if count >= _MIN:
                windows.append((last, count))
        for last, _count in reversed(windows):  # the longest first
            start, end = groups[first][0], groups[last][1]
            if luhn_ok(run[start:end].replace(" ", "").replace("-", "")):
                found = (last, (start, end))
                break
        if found is None:
            first += 1
            continue
        spans.append(found[1])
        first = found[0] + 1
    return spans


def _mask(number: str) -> str:
    """Every digit but the last four as `MASK`; spaces and dashes stay where they were."""
    keep = 4
    out = []
    for char in reversed(number):
        if char.isdigit():
            out.append(char if keep > 0 else MASK)
            keep -= 1
        else:
            out.append(char)
    return "".join(reversed(out))


def mask_cards(text: str) -> str:
    """`text` with every card number masked but its last four digits."""
    if _GATE.search(text) is None:
        return text
    parts: list[str] = []
    done = 0
    for run in _RUN.finditer(text):
        spans = _card_spans(run.group())
        for start, end in spans:
            start += run.start()
            end += run.start()
            parts.append(text[done:start])
            parts.append(_mask(text[start:end]))
            done = end
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def redact(text: str, codes: Iterable[str] = ()) -> str:
    """What may be stored of `text`: each of `codes` (as written in it: "123456", "123 456")
    replaced by `CODE_MARK` where it stands on its own (not inside a longer number), then
    card numbers masked."""
    for code in codes:
        if code:
            text = re.sub(rf"(?<![0-9]){re.escape(code)}(?![0-9])", CODE_MARK, text)
    return mask_cards(text)
