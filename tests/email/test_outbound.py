"""Replies by mail: how they thread, what they refuse to write, and what the outbox is told."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from email import message_from_bytes
from email.policy import default

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.email import ids
from connectors.email.compose import ComposeError, compose, header_text, reply_subject
from connectors.email.smtp import SmtpConfig, send_mail
from gateway.channels import (
    CallbackRequest,
    CodeMessage,
    ReplyThread,
    SendError,
    SendInDoubt,
    TextMessage,
)
from gateway.domain import OutboxId
from tests.email.support import OUR_ADDRESS, SmtpBehaviour, SmtpServer

TOKEN = "0123456789abcdef0123456789abcdef"
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
INJECTIONS = [
    "Ann\r\nBcc: evil@attacker.test",
    "Ann\nBcc: evil@attacker.test",
    "Ann\rBcc: evil@attacker.test",
    "Ann\x00Bcc: evil@attacker.test",
    "=?utf-8?q?Ann=0D=0ABcc:_evil@attacker.test?=",
    "=?utf-8?b?QW5uDQpCY2M6IGV2aWxAYXR0YWNrZXIudGVzdA==?=",
    "=?utf-8?q?=3D=3Futf-8=3Fq=3FAnn=3D0D=3D0ABcc:_evil@attacker.test=3F=3D?=",
    "evil@attacker.test, other@attacker.test",
    '"evil@attacker.test" <evil@attacker.test>, Ann',
    "Ann\u2028Bcc: evil@attacker.test",
]


def headers_of(raw: bytes) -> list[tuple[str, str]]:
    return [(k.lower(), str(v)) for k, v in message_from_bytes(raw, policy=default).items()]


def reply(**overrides: object):  # type: ignore[no-untyped-def]
    values: dict[str, object] = dict(
        our_address=OUR_ADDRESS, to="ann@example.org", text="Your parcel left today.",
        message_id=ids.our_message_id("out_1", TOKEN, OUR_ADDRESS), date=NOW,
        subject="Where is my order?", reply_to=ids.reply_address(OUR_ADDRESS, TOKEN),
        in_reply_to="m2@example.org", references=["m1@example.org", "m2@example.org"])
    values.update(overrides)
    return compose(**values)  # type: ignore[arg-type]


def test_a_reply_threads_in_the_customers_client() -> None:
    out = reply()
    msg = out.message
    assert msg["Message-ID"] == f"<out_1.{TOKEN}@gw.test>" and out.message_id == f"out_1.{TOKEN}@gw.test"
    assert msg["In-Reply-To"] == "<m2@example.org>"
    assert msg["References"] == "<m1@example.org> <m2@example.org>"
    assert msg["Reply-To"] == f"support+{TOKEN}@gw.test" and msg["Subject"] == "Re: Where is my order?"
    assert msg["Auto-Submitted"] == "no"
    raw = msg.as_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only


@pytest.mark.parametrize("subject,expected", [
    ("Re: Re: RE: order", "Re: order"), ("AW: Re: Bestellung", "Re: Bestellung"),
    ("SV:order", "Re: order"), ("Re[2]: order", "Re: order"), ("", "Re: Your message"),
    ("Fwd: order", "Re: Fwd: order"), ("Reorder please", "Re: Reorder please"),
])
def test_the_subject_keeps_exactly_one_re(subject: str, expected: str) -> None:
    assert reply_subject(subject) == expected


def test_gateway_written_mail_says_so_to_other_robots() -> None:
    out = reply(auto_submitted=True)
    assert out.message["Auto-Submitted"] == "auto-replied"
    assert out.message["X-Auto-Response-Suppress"] == "All"


def test_long_reference_chains_keep_the_root_and_the_newest() -> None:
    refs = [f"m{i}@example.org" for i in range(40)]
    out = reply(references=refs, in_reply_to="m39@example.org")
    written = out.message["References"].split()
    assert written[0] == "<m0@example.org>" and written[-1] == "<m39@example.org>"
    assert len(written) == 20


@pytest.mark.parametrize("evil", INJECTIONS)
def test_names_and_subjects_never_inject_headers_or_recipients(evil: str) -> None:
    out = reply(to_name=evil, from_name=evil, subject=evil)
    written = headers_of(out.message.as_bytes())
    names = [k for k, _v in written]
    assert "bcc" not in names and "cc" not in names
    assert sorted(names) == sorted(k.lower() for k in out.message.keys())
    to = message_from_bytes(out.message.as_bytes(), policy=default)["To"]
    assert [a.addr_spec for a in to.addresses] == ["ann@example.org"]
    assert out.envelope.recipients == ("ann@example.org",)
    assert all("\r" not in v and "\n" not in v for _k, v in written)


@pytest.mark.parametrize("to", [
    "ann@example.org\r\nRCPT TO:<evil@attacker.test>", "ann@example.org, evil@attacker.test",
    "Ann <ann@example.org>", "ann@example.org>", "<evil@attacker.test>", "ann@", "ann",
    "ann@localhost", "ann@example.org\x00"])
def test_a_recipient_that_is_not_one_plain_address_is_refused(to: str) -> None:
    with pytest.raises(ComposeError):
        reply(to=to)


@settings(max_examples=120, deadline=None)
@given(name=st.text(max_size=80), subject=st.text(max_size=120))
def test_fuzzed_names_and_subjects_write_only_our_headers(name: str, subject: str) -> None:
    try:
        out = reply(to_name=name, subject=subject, from_name=name)
    except ComposeError:
        return  # refusing is fine; writing something else is not
    written = headers_of(out.message.as_bytes())
    assert sorted(k for k, _ in written) == sorted(k.lower() for k in out.message.keys())
    assert header_text(header_text(subject)) == header_text(subject)


# ---- SMTP against aiosmtpd ----------------------------------------------------------------


def config(server: SmtpServer, **overrides: object) -> SmtpConfig:
    values: dict[str, object] = dict(host="127.0.0.1", port=server.port, security="none",
                                     timeout=5.0, helo_name="gw.test")
    values.update(overrides)
    return SmtpConfig(**values)  # type: ignore[arg-type]


async def test_the_envelope_has_exactly_the_one_recipient_whatever_the_names_say(
        smtp_server: SmtpServer) -> None:
    for evil in INJECTIONS:
        await send_mail(config(smtp_server), reply(to_name=evil, subject=evil))
    assert len(smtp_server.received) == len(INJECTIONS)
    for got in smtp_server.received:
        assert got.mail_from == OUR_ADDRESS and got.rcpt_tos == ["ann@example.org"]
        names = [k for k, _ in headers_of(got.content)]
        assert "bcc" not in names and names.count("to") == 1


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # aiosmtpd: TLS
@pytest.mark.parametrize("mode", ["starttls", "tls"])  # on the socket is invisible to it
async def test_starttls_and_tls_with_authentication(mode: str, server_tls: ssl.SSLContext,
                                                    trust: ssl.SSLContext) -> None:
    server = await SmtpServer().start(tls=server_tls, implicit_tls=mode == "tls",
                                      login=("gw", "s3cret-password"))
    try:
        await send_mail(config(server, host="localhost", security=mode, ssl_context=trust,
                               user="gw", password="s3cret-password"), reply())
        assert len(server.received) == 1
        with pytest.raises(SendError) as refused:
            await send_mail(config(server, host="localhost", security=mode,
                                   ssl_context=trust, user="gw", password="wrong"), reply())
        assert refused.value.permanent and "GATEWAY_SMTP_PASSWORD" in str(refused.value)
    finally:
        await server.stop()


async def test_starttls_to_a_server_we_do_not_trust_is_not_sent(
        server_tls: ssl.SSLContext) -> None:
    server = await SmtpServer().start(tls=server_tls)
    try:
        with pytest.raises(SendError) as failed:
            await send_mail(config(server, host="localhost", security="starttls"), reply())
        assert not failed.value.permanent and server.received == []
    finally:
        await server.stop()


async def test_a_5xx_is_permanent_a_4xx_transient(smtp_server: SmtpServer) -> None:
    smtp_server.behaviour = SmtpBehaviour(rcpt_reply="550 5.1.1 no such user")
    with pytest.raises(SendError) as permanent:
        await send_mail(config(smtp_server), reply())
    assert permanent.value.permanent and "550" in str(permanent.value)
    smtp_server.behaviour = SmtpBehaviour(data_reply="451 4.3.0 try again later")
    with pytest.raises(SendError) as transient:
        await send_mail(config(smtp_server), reply())
    assert not transient.value.permanent and not isinstance(transient.value, SendInDoubt)


async def test_an_unreachable_server_is_transient() -> None:
    with pytest.raises(SendError) as failed:
        await send_mail(SmtpConfig("127.0.0.1", 1, "none", timeout=2.0, helo_name="gw.test"),
                        reply())
    assert not failed.value.permanent


async def test_a_connection_lost_after_the_data_is_in_doubt_and_not_retried(
        smtp_server: SmtpServer) -> None:
    smtp_server.behaviour = SmtpBehaviour(drop_after_data=True)
    with pytest.raises(SendInDoubt) as doubt:
        await send_mail(config(smtp_server), reply())
    # permanent for the outbox: it must not send again what the server may already have
    assert doubt.value.permanent and "not resent" in str(doubt.value)


async def test_the_channel_sends_an_outbox_row_and_reports_our_message_id(
        smtp_server: SmtpServer, start_channel, sink) -> None:  # type: ignore[no-untyped-def]
    channel = await start_channel(sink, smtp_port=smtp_server.port, start=False,
                                  email_from_name="ACME Support")
    channel._sink = sink  # what start() keeps; the mailbox is not needed here
    sink.threads["out_5f3a"] = ReplyThread(
        token=TOKEN, subject="Where is my order?", in_reply_to="m2@example.org",
        references=("m1@example.org", "m2@example.org"), to_name="Ann Example")
    receipt = await channel.send(TextMessage(
        id=OutboxId("out_5f3a"), channel="email", to="email:ann@example.org",
        from_=OUR_ADDRESS, text="Your parcel left today."))
    assert receipt.provider == "email" and receipt.provider_id == f"out_5f3a.{TOKEN}@gw.test"
    (got,) = smtp_server.received
    msg = message_from_bytes(got.content, policy=default)
    assert msg["Message-ID"] == f"<out_5f3a.{TOKEN}@gw.test>"
    assert msg["In-Reply-To"] == "<m2@example.org>"
    assert msg["Reply-To"].addresses[0].addr_spec == f"support+{TOKEN}@gw.test"
    assert msg["From"].addresses[0].display_name == "ACME Support"
    assert msg["To"].addresses[0].display_name == "Ann Example"
    assert msg["References"] == "<m1@example.org> <m2@example.org>"
    assert msg["Auto-Submitted"] == "no" and msg["Subject"] == "Re: Where is my order?"

    await channel.send(CodeMessage(
        id=OutboxId("out_otp1"), channel="email", to="email:ann@example.org",
        text="Your verification code is 482913."))
    code = message_from_bytes(smtp_server.received[1].content, policy=default)
    assert code["Auto-Submitted"] == "auto-replied" and code["Subject"] == "Your verification code"
    assert code["Reply-To"] is None  # no leg, so no thread token: no thread address

    sink.threads["out_n1"] = ReplyThread(token=TOKEN, subject="Order", automated=True)
    await channel.send(TextMessage(id=OutboxId("out_n1"), channel="email",
                                   to="email:ann@example.org", text="That code is not right."))
    notice = message_from_bytes(smtp_server.received[2].content, policy=default)
    assert notice["Auto-Submitted"] == "auto-replied"  # the gateway's own words: robots ignore

    sink.threads["out_x"] = ReplyThread(token="not a token!")
    with pytest.raises(SendError) as bad:
        await channel.send(TextMessage(id=OutboxId("out_x"), channel="email",
                                       to="email:ann@example.org", text="x"))
    assert bad.value.permanent
    with pytest.raises(SendError) as call:
        await channel.send(CallbackRequest(id=OutboxId("out_c"), channel="email",
                                           to="email:ann@example.org", escalation_token="t",
                                           escalation_id="e"))
    assert call.value.permanent and len(smtp_server.received) == 3
