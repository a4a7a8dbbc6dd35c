"""Configuring the email channel: the contract's keys, clear errors naming them, safe defaults."""

from __future__ import annotations

import logging

import pytest

from config.settings import ConfigError, load_settings
from connectors.email import EmailChannel
from gateway.agents import AgentDirectory
from gateway.channels import Channel, ChannelDeps
from gateway.clock import SystemClock
from gateway.metrics import Metrics

DEPS = ChannelDeps(clock=SystemClock(), metrics=Metrics(),
                   router=AgentDirectory((), SystemClock()))
BASE = dict(email_address="Support@Example.ORG", imap_host="imap.example.org",
            imap_password="app-password-123", smtp_host="smtp.example.org")


def test_without_an_address_there_is_no_email_channel(settings_env: pytest.MonkeyPatch) -> None:
    assert EmailChannel.from_settings(load_settings(), DEPS) is None
    assert "GATEWAY_EMAIL_ADDRESS" in EmailChannel.why_off(load_settings())


def test_contract_names_and_defaults(settings_env: pytest.MonkeyPatch) -> None:
    for key, value in {"GATEWAY_EMAIL_ADDRESS": "support@example.org",
                       "GATEWAY_IMAP_HOST": "imap.example.org",
                       "GATEWAY_IMAP_PASSWORD": "app-password-123",
                       "GATEWAY_SMTP_HOST": "smtp.example.org",
                       "GATEWAY_SMTP_USER": "support@example.org",
                       "GATEWAY_SMTP_PASSWORD": "smtp-password-456"}.items():
        settings_env.setenv(key, value)
    channel = EmailChannel.from_settings(load_settings(), DEPS)
    assert channel is not None and isinstance(channel, Channel)
    imap, smtp = channel.config.follow.imap, channel.config.smtp
    assert (imap.port, imap.security, imap.mailbox, imap.user) == (
        993, "tls", "INBOX", "support@example.org")  # the user defaults to the address
    assert (smtp.port, smtp.security, smtp.user, smtp.helo_name) == (
        587, "starttls", "support@example.org", "example.org")
    assert channel.channels == frozenset({"email"}) and channel.routes() == ()
    assert channel.send_timeout > 11 * smtp.timeout  # the outbox outwaits the SMTP path
    assert any("imap.example.org:993 (tls)" in note for note in channel.describe().notes)


def test_the_address_is_normalised_and_checked(settings_env: pytest.MonkeyPatch) -> None:
    channel = EmailChannel.from_settings(load_settings(**BASE), DEPS)
    assert channel is not None and channel.config.address == "Support@example.org"
    for bad in ("not-an-address", "a@b", "Support <s@example.org>", "support+x@example.org"):
        with pytest.raises(ConfigError, match="GATEWAY_EMAIL_ADDRESS"):
            load_settings(**{**BASE, "email_address": bad})


@pytest.mark.parametrize("missing,key", [
    ("imap_host", "GATEWAY_IMAP_HOST"), ("smtp_host", "GATEWAY_SMTP_HOST"),
    ("imap_password", "GATEWAY_IMAP_PASSWORD")])
def test_a_missing_key_fails_start_naming_it(settings_env: pytest.MonkeyPatch, missing: str,
                                             key: str) -> None:
    values = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigError, match=key):
        EmailChannel.from_settings(load_settings(**values), DEPS)


def test_half_smtp_credentials_fail_naming_the_other(settings_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_SMTP_PASSWORD"):
        EmailChannel.from_settings(load_settings(**BASE, smtp_user="support@example.org"),
                                   DEPS)


def test_bad_security_values_fail_naming_the_key(settings_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_IMAP_SECURITY"):
        load_settings(**BASE, imap_security="ssl")
    with pytest.raises(ConfigError, match="GATEWAY_SMTP_SECURITY"):
        load_settings(**BASE, smtp_security="plain")


def test_no_tls_to_a_remote_host_is_allowed_but_warned_about(
        settings_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="connectors.email")
    EmailChannel.from_settings(load_settings(**BASE, imap_security="none",
                                             smtp_security="none"), DEPS)
    warned = [r.getMessage() for r in caplog.records]
    assert any("GATEWAY_IMAP_SECURITY=none" in m and "imap.example.org" in m for m in warned)
    assert any("GATEWAY_SMTP_SECURITY=none" in m for m in warned)
    caplog.clear()
    EmailChannel.from_settings(load_settings(**{**BASE, "imap_host": "127.0.0.1",
                                                "smtp_host": "localhost"},
                                             imap_security="none", smtp_security="none"),
                               DEPS)
    assert not caplog.records  # loopback (tests, a local relay): nothing to warn about
