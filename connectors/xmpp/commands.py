"""Agent commands typed in an XMPP chat with the gateway: parsing and the help text.

Pure: `parse(text)` turns one chat message from an agent into a `Command`, a `Reply` (plain
text for their current conversation) or a `Help` (anything we do not understand, with the
reason). It never raises; hypothesis fuzzes it. The channel executes commands through the
core's `AgentDesk`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["HELP", "Command", "Help", "Reply", "parse"]

CommandName = Literal["take", "next", "release", "close", "call", "verify", "who", "help"]

HELP: Final = """Gateway commands:
/take [id]      take a conversation (a #number shown here or a conversation id); no id: the next waiting one
/next           take the next waiting conversation
/release        give the current conversation back to the queue
/close          close the current conversation
/call [callback|dial-in]   move the customer to a phone call (default: we call them back)
/verify [address]   send the customer a one-time code (default: their current address)
/who            the context summary of the current conversation again
/help           this text
Anything else you write goes to the customer of your current conversation.
Start a message with // to send a text that begins with / (//etc is sent as /etc)."""

_ALIASES: Final = {
    "take": "take", "t": "take", "next": "next", "n": "next", "release": "release",
    "close": "close", "done": "close", "call": "call", "escalate": "call",
    "verify": "verify", "v": "verify", "who": "who", "whois": "who", "context": "who",
    "help": "help", "h": "help", "?": "help",
}
_CALL_MODES: Final = {"callback": "callback", "call-back": "callback", "back": "callback",
                      "dial-in": "dial-in", "dialin": "dial-in", "dial": "dial-in",
                      "in": "dial-in"}
_CONVERSATION_REF: Final = re.compile(r"#?[A-Za-z0-9_-]{1,64}")
_ADDRESS: Final = re.compile(r"[a-z-]{2,16}:\S{1,300}")
_TAKES_NO_ARGUMENT: Final = frozenset({"next", "release", "close", "who", "help"})


@dataclass(frozen=True, slots=True)
class Command:
    name: CommandName
    arg: str | None = None  # take: conversation ref; call: mode; verify: address


@dataclass(frozen=True, slots=True)
class Reply:
    """Text for the customer of the agent's current conversation."""

    text: str


@dataclass(frozen=True, slots=True)
class Help:
    reason: str | None = None  # why the text was not a command we know; None: asked for help

    @property
    def text(self) -> str:
        return f"{self.reason}\n\n{HELP}" if self.reason else HELP


def parse(text: str) -> Command | Reply | Help:
    stripped = text.strip()
    if stripped.startswith("//"):
        return Reply(stripped[1:])
    if not stripped.startswith("/"):
        return Reply(text)
    word, _, rest = stripped[1:].partition(" ")
    args = rest.split()
    name = _ALIASES.get(word.lower())
    if name is None:
        shown = word[:30] if word.isprintable() else repr(word[:30])
        return Help(f"Unknown command /{shown}.")
    if name in _TAKES_NO_ARGUMENT:
        if args:
            return Help(f"/{name} takes no argument.")
        return Command(name)  # type: ignore[arg-type]
    if len(args) > 1:
        return Help(f"/{name} takes one argument at most.")
    arg = args[0] if args else None
    if name == "take":
        if arg is not None and not _CONVERSATION_REF.fullmatch(arg):
            return Help("/take wants a #number or a conversation id.")
        return Command("take", arg.lstrip("#") if arg else None)
    if name == "call":
        if arg is None:
            return Command("call", "callback")
        mode = _CALL_MODES.get(arg.lower())
        if mode is None:
            return Help("/call wants callback or dial-in.")
        return Command("call", mode)
    # verify
    if arg is not None and not _ADDRESS.fullmatch(arg):
        return Help("/verify wants an address such as sms:+14155550100 or email:ann@example.org.")
    return Command("verify", arg)
