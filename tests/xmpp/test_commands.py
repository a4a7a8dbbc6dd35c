"""Agent chat commands: parsed without raising, anything unknown answered with help."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.xmpp.commands import HELP, Command, Help, Reply, parse


@pytest.mark.parametrize(("text", "expected"), [
    ("/take", Command("take")),
    ("/take 3", Command("take", "3")),
    ("/take #3", Command("take", "3")),
    ("/TAKE conv_ab12", Command("take", "conv_ab12")),
    ("/next", Command("next")),
    ("  /close  ", Command("close")),
    ("/call", Command("call", "callback")),
    ("/call dial-in", Command("call", "dial-in")),
    ("/call dialin", Command("call", "dial-in")),
    ("/verify", Command("verify")),
    ("/verify sms:+14155550100", Command("verify", "sms:+14155550100")),
    ("/who", Command("who")),
    ("/release", Command("release")),
    ("hello there", Reply("hello there")),
    ("//etc/hosts", Reply("/etc/hosts")),
])
def test_commands(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("/frobnicate", "Unknown command /frobnicate"),
    ("/", "Unknown command /"),
    ("/next please", "/next takes no argument"),
    ("/take a b", "one argument"),
    ("/take <script>", "/take wants"),
    ("/call maybe", "/call wants callback or dial-in"),
    ("/verify my-number", "/verify wants an address"),
])
def test_anything_else_gets_help_with_the_reason(text, why):
    answer = parse(text)
    assert isinstance(answer, Help)
    assert why in answer.text and HELP in answer.text


def test_help_is_a_command_of_its_own():
    assert parse("/help") == Command("help")


@given(st.text(max_size=400))
def test_parse_never_raises_and_plain_text_is_kept_exactly(text):
    result = parse(text)
    assert isinstance(result, (Command, Reply, Help))
    if not text.strip().startswith("/"):
        assert result == Reply(text)
    if isinstance(result, Help):
        assert result.text.isprintable() or "\n" in result.text


@given(st.sampled_from(["take", "next", "close", "call", "verify", "who", "release"]),
       st.sampled_from(["", " ", "   "]))
def test_known_commands_parse_with_any_spacing(name, space):
    assert isinstance(parse(f"{space}/{name}{space}"), Command)
