"""Fixtures of the email tests: one real Dovecot per session (with TLS), a fresh account per
test, an aiosmtpd server per test, channels built from real settings, and whole gateways
(tests/conftest.py's `start_gateway`) with email on, reading that account and sending to
that server."""

from __future__ import annotations

import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from config.settings import load_settings
from connectors.email import EmailChannel, email_config
from tests.dovecot import Account, Dovecot, self_signed_cert
from tests.conftest import Gateways, RunningGateway
from tests.peers import peer_missing
from tests.email.support import OUR_ADDRESS, FakeSink, SmtpServer


@pytest.fixture(scope="session")
def tls_files() -> Iterator[tuple[Path, Path]]:
    if shutil.which("openssl") is None:
        peer_missing("dovecot", "no `openssl` binary to make the test servers' certificate")
    directory = Path(tempfile.mkdtemp(prefix="gateway-tls-", dir="/tmp"))
    directory.chmod(0o755)
    try:
        yield self_signed_cert(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def dovecot(tls_files: tuple[Path, Path]) -> Iterator[Dovecot]:
    """One Dovecot for the session (skips, or fails under GATEWAY_REQUIRE_PEERS=1)."""
    with Dovecot(tls=tls_files) as server:
        yield server


@pytest.fixture
def mailbox(dovecot: Dovecot) -> Account:
    return dovecot.new_account()


@pytest.fixture
def trust(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    """A client context that trusts the test servers' self-signed certificate."""
    return ssl.create_default_context(cafile=str(tls_files[0]))


@pytest.fixture
def server_tls(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls_files[0]), str(tls_files[1]))
    return context


@pytest_asyncio.fixture
async def smtp_server() -> AsyncIterator[SmtpServer]:
    server = await SmtpServer().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


def email_settings(dovecot: Dovecot, account: Account, store: Path, **overrides: Any) -> Any:
    values: dict[str, Any] = dict(
        email_address=OUR_ADDRESS, imap_host=dovecot.host, imap_port=dovecot.port,
        imap_user=account.user, imap_password=account.password, imap_security="none",
        smtp_host="127.0.0.1", smtp_port=1, smtp_security="none",
        email_store_dir=str(store), email_parse_workers=0, email_timeout_seconds=10,
    )
    values.update(overrides)
    return load_settings(**values)


@pytest_asyncio.fixture
async def start_channel(dovecot: Dovecot, mailbox: Account, tmp_path: Path
                        ) -> AsyncIterator[Callable[..., Any]]:
    """`await start_channel(sink, **settings)`: an EmailChannel on this test's mailbox, started;
    all are closed at the end. Reconnects are quick (50 ms base) so tests stay fast."""
    channels: list[EmailChannel] = []

    async def start(sink: Any, *, account: Account | None = None, follow: dict[str, Any] | None
                    = None, tls: ssl.SSLContext | None = None, start: bool = True,
                    **overrides: Any) -> EmailChannel:
        settings = email_settings(dovecot, account or mailbox, tmp_path / "mail-store",
                                  **overrides)
        config = email_config(settings)
        assert config is not None
        config = replace(config, follow=replace(config.follow, reconnect_base=0.05,
                                                reconnect_cap=0.5, **(follow or {})))
        channel = EmailChannel(config, imap_tls=tls, smtp_tls=tls)
        channels.append(channel)
        if start:
            await channel.start(sink)
        return channel

    try:
        yield start
    finally:
        for channel in reversed(channels):
            await channel.aclose()


def gateway_email_settings(dovecot: Dovecot, account: Account, smtp: SmtpServer, store: Path,
                           address: str = OUR_ADDRESS) -> dict[str, Any]:
    """GATEWAY_* email settings for a gateway reading `account` and sending through `smtp`."""
    return dict(
        email_address=address, imap_host=dovecot.host, imap_port=dovecot.port,
        imap_user=account.user, imap_password=account.password, imap_security="none",
        smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_security="none",
        email_store_dir=str(store), email_parse_workers=0, email_timeout_seconds=10,
    )


@pytest_asyncio.fixture
async def mail_gateway(start_gateway: Gateways, dovecot: Dovecot, mailbox: Account,
                       smtp_server: SmtpServer, tmp_path: Path
                       ) -> Callable[..., Any]:
    """`await mail_gateway(**settings)`: a running gateway (no SIP) whose email channel reads
    this test's mailbox and sends through this test's SMTP server; `twilio=`/`meta=` aim it
    at the provider stand-ins as `start_gateway` does."""

    async def start(**overrides: Any) -> RunningGateway:
        settings = gateway_email_settings(dovecot, mailbox, smtp_server, tmp_path / "mail")
        settings.update(overrides)
        settings.setdefault("sip", False)
        return await start_gateway(**settings)

    return start
