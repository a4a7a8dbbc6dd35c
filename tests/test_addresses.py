"""Address normalisation: one spelling per number, mailbox and JID (property-tested)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.addresses import AddressError, make_address, normalise_phone, parse_address


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+14155550100", "+14155550100"),
        ("14155550100", "+14155550100"),  # WhatsApp wa_id: no '+'
        ("whatsapp:+1 (415) 555-0100", "+14155550100"),
        ("551187654321", "+5511987654321"),  # Brazil mobile without the ninth digit
        ("+5511987654321", "+5511987654321"),
        ("+551133334444", "+551133334444"),  # Brazil landline: no ninth digit added
        ("5215512345678", "+525512345678"),  # Mexico's old +521 mobile prefix
        ("+447700900123", "+447700900123"),
    ],
)
def test_phone_numbers_normalise_to_e164(raw: str, e164: str) -> None:
    assert normalise_phone(raw) == e164


@pytest.mark.parametrize("raw", ["", "abc", "+", "++1", "12", "+999999999999999999999"])
def test_garbage_is_not_a_phone_number(raw: str) -> None:
    with pytest.raises(AddressError):
        normalise_phone(raw)


def test_other_channels_normalise() -> None:
    assert str(parse_address("email:Ann@Example.ORG")) == "email:Ann@example.org"
    assert str(parse_address("xmpp:Ann@Example.org/phone")) == "xmpp:ann@example.org"
    assert str(parse_address("sip:<sip:alice@PBX.example.org;transport=udp>")) == (
        "sip:alice@pbx.example.org")
    assert str(make_address("whatsapp-user", "US.13491208655302741918")) == (
        "whatsapp-user:US.13491208655302741918")


@pytest.mark.parametrize("text", ["nochannel", "fax:+14155550100", "email:not-an-email",
                                  "sms:hello"])
def test_bad_addresses_say_why(text: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    assert str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_parse_address_never_raises_anything_but_address_error(text: str) -> None:
    try:
        address = parse_address(text)
    except AddressError:
        return
    assert parse_address(str(address)) == address  # normal form is a fixed point


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["1", "44", "49", "55", "52", "81"]),
       st.integers(min_value=2_000_000_000, max_value=9_999_999_999))
def test_every_spelling_of_a_number_is_the_same_address(cc: str, national: int) -> None:
    try:
        e164 = normalise_phone(f"+{cc}{national}")
    except AddressError:
        return
    digits = e164[1:]
    spaced = f"+{digits[:2]} {digits[2:5]}-{digits[5:]}"
    for spelling in (digits, f"whatsapp:{e164}", spaced, f"tel:{e164}"):
        assert normalise_phone(spelling) == e164
