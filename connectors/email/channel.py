"""The email channel: a support mailbox read over IMAP, replies sent over SMTP.

Implements `gateway.channels.Channel`. Inbound: `MailboxFollower` (connectors/email/inbound.py)
hands each mail to the core's `InboundSink` as an `InboundMessage` (provider "imap", provider
id the Message-ID). Outbound: the outbox calls `send`, which composes the mail
(connectors/email/compose.py) with our Message-ID `<outbox-id.TOKEN@domain>`, the thread's
In-Reply-To/References and the per-conversation Reply-To `local+TOKEN@domain` from the
message's payload, and sends it (connectors/email/smtp.py). The receipt's provider id is that
Message-ID, which is also what a bounce names.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import ssl
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from connectors.email import ids
from connectors.email.compose import ComposeError, compose
from connectors.email.imap import LOOPBACK_HOSTS, ImapConfig, ImapError, ImapSession
from connectors.email.inbound import FollowConfig, MailboxFollower
from connectors.email.parse import ParseConfig
from connectors.email.smtp import SmtpConfig, send_mail
from gateway.channels import ChannelInfo, InboundSink, OutboundMessage, SendError, SendReceipt
from gateway.clock import Clock, SystemClock

if TYPE_CHECKING:
    from aiohttp import web

    from config.settings import Settings

log = logging.getLogger("connectors.email")


class ChannelStartError(RuntimeError):
    """The mailbox cannot be reached or logged in to; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class EmailConfig:
    address: str  # GATEWAY_EMAIL_ADDRESS
    follow: FollowConfig
    smtp: SmtpConfig
    from_name: str | None = None
    parse_workers: int = 1


def email_config(settings: Settings) -> EmailConfig | None:
    """The channel's settings, checked; None when GATEWAY_EMAIL_ADDRESS is not set."""
    from config.settings import ConfigError

    address = settings.email_address
    if not address:
        return None
    for key in ("imap_host", "smtp_host"):
        if not getattr(settings, key):
            raise ConfigError(f"configuration error: GATEWAY_{key.upper()}: required when "
                              "GATEWAY_EMAIL_ADDRESS is set")
    if settings.imap_password is None or not settings.imap_password.get_secret_value():
        raise ConfigError("configuration error: GATEWAY_IMAP_PASSWORD: required when "
                          "GATEWAY_EMAIL_ADDRESS is set")
    if (settings.smtp_user is None) != (settings.smtp_password is None):
        missing = "GATEWAY_SMTP_PASSWORD" if settings.smtp_password is None else \
            "GATEWAY_SMTP_USER"
        raise ConfigError(f"configuration error: {missing}: required when the other SMTP "
                          "credential is set")
    imap_host, smtp_host = str(settings.imap_host), str(settings.smtp_host)
    for protocol, host, security in (("IMAP", imap_host, settings.imap_security),
                                     ("SMTP", smtp_host, settings.smtp_security)):
        if security == "none" and host not in LOOPBACK_HOSTS:
            log.warning("email: GATEWAY_%s_SECURITY=none for %s: mail and the password cross "
                        "the network in clear; use tls or starttls", protocol, host)
    timeout = settings.email_timeout_seconds
    imap = ImapConfig(
        host=imap_host, port=settings.imap_port, user=settings.imap_user or address,
        password=settings.imap_password.get_secret_value(), mailbox=settings.imap_mailbox,
        security=settings.imap_security, timeout=timeout)
    follow = FollowConfig(
        imap=imap,
        parse=ParseConfig(our_address=address, languages=tuple(settings.email_reply_languages),
                          keep_raw=settings.email_keep_raw),
        store_dir=settings.email_store_dir, batch=settings.email_batch,
        max_message_bytes=int(settings.email_max_message_mb * 1024 * 1024),
        idle=settings.email_idle, poll_seconds=settings.email_poll_seconds)
    smtp = SmtpConfig(
        host=smtp_host, port=settings.smtp_port, security=settings.smtp_security,
        user=settings.smtp_user,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        timeout=timeout, helo_name=ids.split_address(address)[1])
    return EmailConfig(address=address, follow=follow, smtp=smtp,
                       from_name=settings.email_from_name,
                       parse_workers=settings.email_parse_workers)


class EmailChannel:
    """`Channel` for email. `EmailChannel.from_settings(settings)`; `await start(sink)`."""

    name = "email"
    channels = frozenset({"email"})

    def __init__(self, config: EmailConfig, clock: Clock | None = None,
                 imap_tls: ssl.SSLContext | None = None,
                 smtp_tls: ssl.SSLContext | None = None) -> None:
        # Custom trust (a private CA, the tests' self-signed servers) is injected, not set.
        if imap_tls is not None:
            config = replace(config, follow=replace(config.follow, imap=replace(
                config.follow.imap, ssl_context=imap_tls)))
        if smtp_tls is not None:
            config = replace(config, smtp=replace(config.smtp, ssl_context=smtp_tls))
        self.config = config
        self._clock = clock or SystemClock()
        self._task: asyncio.Task[None] | None = None
        self._parser: Executor | None = None
        self.follower: MailboxFollower | None = None
        self._sending = asyncio.Semaphore(4)  # concurrent SMTP connections

    @classmethod
    def from_settings(cls, settings: Settings, deps: Any = None) -> EmailChannel | None:
        config = email_config(settings)
        if config is None:
            return None
        clock = getattr(deps, "clock", None)
        return cls(config, clock=clock)

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return ()

    def describe(self) -> ChannelInfo:
        imap, smtp = self.config.follow.imap, self.config.smtp
        return ChannelInfo("email", notes=(
            f"mailbox {imap.user} on {imap.host}:{imap.port} ({imap.security}), "
            f"folder {imap.mailbox}",
            f"replies from {self.config.address} via {smtp.host}:{smtp.port} "
            f"({smtp.security})",
        ))

    async def start(self, sink: InboundSink) -> None:
        """Log in and select the mailbox now (a wrong password stops start-up with a clear
        line); then follow it in the background, reconnecting as needed."""
        try:
            first = await ImapSession.open(self.config.follow.imap)
        except ImapError as exc:
            raise ChannelStartError(f"email: {exc}") from None
        if self.config.parse_workers > 0:
            # spawn, not fork: the gateway has threads (the SQLite writer) by now.
            self._parser = ProcessPoolExecutor(self.config.parse_workers,
                                               mp_context=multiprocessing.get_context("spawn"))
        self.follower = MailboxFollower(self.config.follow, sink, self._parser)
        self._task = asyncio.create_task(self.follower.run(first), name="email-inbound")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        parser, self._parser = self._parser, None
        if parser is not None:
            await asyncio.to_thread(parser.shutdown, True, cancel_futures=True)

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Send one outbox row. Payload keys (all optional, written by the core):
        `thread_token`, `subject`, `in_reply_to`, `references` (oldest first), `to_name`,
        `from_name`, `auto_submitted` (gateway-written mail: codes, notices); kind "otp" is
        always auto-submitted."""
        payload = message.payload
        token = payload.get("thread_token")
        if token is not None and not ids.is_thread_token(str(token)):
            raise SendError("payload thread_token is not a gateway thread token", permanent=True)
        message_id = ids.our_message_id(message.id, token, self.config.address)
        auto = message.kind == "otp" or bool(payload.get("auto_submitted"))
        try:
            mail = compose(
                our_address=self.config.address,
                to=message.to,
                text=message.text or "",
                message_id=message_id,
                date=self._clock.now(),
                subject=payload.get("subject") or (
                    "Your verification code" if message.kind == "otp" else None),
                is_reply=message.kind != "otp" and bool(
                    payload.get("in_reply_to") or payload.get("subject")),
                from_name=payload.get("from_name") or self.config.from_name,
                to_name=payload.get("to_name"),
                reply_to=ids.reply_address(self.config.address, token) if token else None,
                in_reply_to=payload.get("in_reply_to"),
                references=list(payload.get("references") or ()),
                auto_submitted=auto,
            )
        except ComposeError as exc:
            raise SendError(f"email not sent: {exc}", permanent=True) from None
        async with self._sending:
            answer = await send_mail(self.config.smtp, mail)
        log.info("email: %s sent to %s as <%s>: %s", message.id, mail.envelope.recipients[0],
                 mail.message_id, answer)
        return SendReceipt("email", mail.message_id, "sent")

