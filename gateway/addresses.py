"""Addresses: how a customer is reached on one channel, normalised to `channel:value`.

Every edge turns what a provider sent (a Twilio `From`, a WhatsApp `wa_id`, an email From) into
an `Address` here, so two spellings of one number are one address. Phone numbers go through
`phonenumbers`; WhatsApp's historical number quirks (Brazil's ninth digit, Mexico's +521) are
folded into the E.164 form the rest of the world uses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from email.headerregistry import Address as EmailAddress
from email.errors import HeaderParseError
from typing import Final, Literal, NewType, get_args

import phonenumbers

E164 = NewType("E164", str)

Channel = Literal["sms", "whatsapp", "voice", "email", "xmpp", "sip", "whatsapp-user", "web"]
CHANNELS: Final[frozenset[str]] = frozenset(get_args(Channel))
PHONE_CHANNELS: Final[frozenset[str]] = frozenset({"sms", "whatsapp", "voice"})


class AddressError(ValueError):
    """The text cannot be an address on that channel; the message says why."""


@dataclass(frozen=True, slots=True)
class Address:
    channel: str
    value: str

    def __str__(self) -> str:
        return f"{self.channel}:{self.value}"

    @property
    def is_phone(self) -> bool:
        return self.channel in PHONE_CHANNELS

    def on(self, channel: str) -> "Address":
        """The same phone number on another phone channel (same-number siblings)."""
        if not self.is_phone or channel not in PHONE_CHANNELS:
            raise AddressError(f"{self} has no sibling on {channel}")
        return Address(channel, self.value)


def normalise_phone(raw: str, default_region: str | None = None) -> E164:
    """E.164 for a phone number as providers send it (`+1 415…`, `14155550100`, `whatsapp:+…`)."""
    text = raw.strip()
    for prefix in ("whatsapp:", "sms:", "voice:", "tel:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
    digits = "".join(ch for ch in text if ch.isdigit())
    if not digits or len(digits) > 17:
        raise AddressError(f"{raw!r} is not a phone number")
    if not text.startswith("+") and default_region is None:
        # WhatsApp's wa_id and many webhooks send the number without '+': it is still
        # international format (country code first).
        text = "+" + digits
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise AddressError(f"{raw!r} is not a phone number ({exc})") from None
    number = _fold_whatsapp_quirks(number)
    if not phonenumbers.is_possible_number(number):
        raise AddressError(f"{raw!r} is not a possible phone number")
    return E164(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _fold_whatsapp_quirks(number: phonenumbers.PhoneNumber) -> phonenumbers.PhoneNumber:
    national = str(number.national_number)
    if number.country_code == 52 and len(national) == 11 and national.startswith("1"):
        # Mexico dropped the mobile '1' after +52 in 2019; WhatsApp still sends +521….
        return phonenumbers.PhoneNumber(country_code=52, national_number=int(national[1:]))
    if number.country_code == 55 and len(national) == 10 and national[2] in "6789":
        # Brazilian mobiles gained a ninth digit (a leading 9); WhatsApp ids of older
        # accounts still carry the eight-digit form. Area code is the first two digits.
        # Only a real area code makes it a mobile (+55 90… gets no ninth digit): else the
        # folded form would not read back as itself.
        folded = phonenumbers.PhoneNumber(
            country_code=55, national_number=int(national[:2] + "9" + national[2:])
        )
        return folded if phonenumbers.is_valid_number(folded) else number
    return number


# Pure and called for every inbound mail (sender, recipients): the RFC 5322 grammar walk of
# headerregistry.Address costs ~0.1 ms, a tenth of parsing a small mail; senders repeat.
@functools.lru_cache(maxsize=4096)
def normalise_email(raw: str) -> str:
    text = raw.strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    try:
        parsed = EmailAddress(addr_spec=text)
    except (HeaderParseError, ValueError, IndexError) as exc:
        raise AddressError(f"{raw!r} is not an email address ({exc})") from None
    if not parsed.username or not parsed.domain or "." not in parsed.domain:
        raise AddressError(f"{raw!r} is not an email address")
    return f"{parsed.username}@{parsed.domain.lower()}"


def normalise_jid(raw: str) -> str:
    """Bare JID, lower-cased (nodeprep and nameprep fold case); the resource is dropped."""
    text = raw.strip().removeprefix("xmpp:")
    bare = text.split("/", 1)[0]
    node, sep, domain = bare.rpartition("@")
    if not domain or (sep and not node) or any(c.isspace() for c in bare):
        raise AddressError(f"{raw!r} is not a JID")
    return f"{node.lower()}@{domain.lower()}" if sep else domain.lower()


def normalise_sip(raw: str) -> str:
    text = raw.strip().strip("<>")
    if text.lower().startswith("sip:"):
        text = text[4:]
    text = text.split(";", 1)[0].split("?", 1)[0]
    user, sep, host = text.rpartition("@")
    if not sep or not user or not host:
        raise AddressError(f"{raw!r} is not a SIP address of a user")
    return f"{user}@{host.lower()}"


def parse_address(text: str, default_region: str | None = None) -> Address:
    """Parse `channel:value` as written in the API and normalise it."""
    channel, sep, value = text.partition(":")
    channel = channel.strip().lower()
    if not sep or channel not in CHANNELS:
        raise AddressError(
            f"{text!r} is not an address: write channel:value, channel one of "
            + ", ".join(sorted(CHANNELS))
        )
    return make_address(channel, value, default_region)


def make_address(channel: str, value: str, default_region: str | None = None) -> Address:
    if channel in PHONE_CHANNELS:
        return Address(channel, normalise_phone(value, default_region))
    if channel == "email":
        return Address(channel, normalise_email(value))
    if channel == "xmpp":
        return Address(channel, normalise_jid(value))
    if channel == "sip":
        return Address(channel, normalise_sip(value))
    if channel in ("whatsapp-user", "web"):
        value = value.strip()
        if not value or any(c.isspace() for c in value) or len(value) > 128:
            raise AddressError(f"{value!r} is not a {channel} id")
        return Address(channel, value)
    raise AddressError(f"unknown channel {channel!r}")
