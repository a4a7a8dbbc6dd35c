"""The email channel: a support mailbox read over IMAP, replies sent over SMTP.

Implements `gateway.channels.Channel` (registered in gateway/app.py's CHANNELS). Inbound:
`MailboxFollower` (connectors/email/inbound.py) hands each mail to the core's `InboundSink`
as a threaded `InboundMessage` (provider "imap", provider id the Message-ID); the core places
it (gateway/threads.py). Outbound: the outbox calls `send`; the core's `reply_thread` gives a
fresh thread token for the leg and the thread's ids and subject, and the mail is composed
(connectors/email/compose.py) with our Message-ID `<outbox-id.TOKEN@domain>`, In-Reply-To,
References and the per-conversation Reply-To `local+TOKEN@domain`, then sent
(connectors/email/smtp.py). The receipt's provider id is that Message-ID, which is also
what a bounce names.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import ssl
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from connectors.email import ids
from connectors.email.compose import ComposeError, compose
from connectors.email.imap import LOOPBACK_HOSTS, ImapConfig, ImapError, ImapSession
from connectors.email.inbound import FollowConfig, MailboxFollower, warm_up
from connectors.email.parse import ParseConfig
from connectors.email.smtp import SmtpConfig, send_mail, worst_case_seconds
from gateway.channels import (
    ChannelDeps,
    ChannelError,
    ChannelInfo,
    CodeMessage,
    InboundSink,
    OutboundMessage,
    ReplyThread,
    SendError,
    SendReceipt,
    TextMessage,
)
from gateway.clock import Clock, SystemClock
from gateway.tasks import cancel_and_wait

if TYPE_CHECKING:
    from aiohttp import web

    from config.settings import Settings

log = logging.getLogger("connectors.email")


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
    """`Channel` for email: `EmailChannel.from_settings(settings, deps)`; `await start(sink)`."""

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
        self._sink: InboundSink | None = None
        self.follower: MailboxFollower | None = None
        self._sending = asyncio.Semaphore(4)  # concurrent SMTP connections
        # The outbox waits this long for one send (gateway/outbox.py): above the SMTP path's
        # worst case plus the wait for a connection slot and the core's reply_thread write.
        self.send_timeout = worst_case_seconds(config.smtp) + 3 * config.smtp.timeout + 5

    @classmethod
    def from_settings(cls, settings: Settings, deps: ChannelDeps) -> EmailChannel | None:
        config = email_config(settings)
        if config is None:
            return None
        return cls(config, clock=deps.clock)

    @classmethod
    def why_off(cls, settings: Settings) -> str:
        return ("set GATEWAY_EMAIL_ADDRESS, GATEWAY_IMAP_HOST, GATEWAY_IMAP_PASSWORD and "
                "GATEWAY_SMTP_HOST (README: a mailbox)")

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
            raise ChannelError(f"email: {exc}") from None
        self._sink = sink
        if self.config.parse_workers > 0:
            # spawn, not fork: the gateway has threads (the SQLite writer) by now.
            self._parser = ProcessPoolExecutor(self.config.parse_workers,
                                               mp_context=multiprocessing.get_context("spawn"))
            try:
                await self._start_workers()
            except BaseException:
                await first.close()
                await self.aclose()
                raise
        self.follower = MailboxFollower(self.config.follow, sink, self._parser)
        self._task = asyncio.create_task(self.follower.run(first), name="email-inbound")

    async def _start_workers(self) -> None:
        """Start every parse worker now, each with the parser imported and warmed (measured:
        1-2 s of CPU each, which on the first mail would delay the catch-up that long)."""
        assert self._parser is not None
        loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(loop.run_in_executor(self._parser, warm_up)
                                   for _ in range(self.config.parse_workers)))
        except BrokenProcessPool as exc:
            raise ChannelError(f"email: the parse worker did not start: {exc}") from None

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        parser, self._parser = self._parser, None
        if parser is not None:
            await asyncio.to_thread(parser.shutdown, True, cancel_futures=True)
        self._sink = None

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Send one outbox message: a text (an agent's reply, a gateway notice) or a code.

        Raises SendError (permanent: 5xx, a recipient that is not one plain address; else
        transient) or SendInDoubt (the connection was lost during DATA: never resent)."""
        if not isinstance(message, (TextMessage, CodeMessage)):
            raise SendError(f"email cannot send a {message.kind}", permanent=True)
        sink = self._sink
        if sink is None:
            raise SendError("the email channel is not started", permanent=False)
        try:
            async with asyncio.timeout(self.config.smtp.timeout * 2):
                thread: ReplyThread = await sink.reply_thread(message.id)
        except TimeoutError:
            raise SendError("email not sent: the store did not answer in time",
                            permanent=False) from None
        code = isinstance(message, CodeMessage)
        token = thread.token
        if token is not None and not ids.is_thread_token(token):
            raise SendError("the core's thread token cannot be written in an address",
                            permanent=True)
        message_id = ids.our_message_id(message.id, token, self.config.address)
        try:
            mail = compose(
                our_address=self.config.address,
                to=message.to,
                text=message.text,
                message_id=message_id,
                date=self._clock.now(),
                subject="Your verification code" if code else thread.subject,
                is_reply=not code,
                from_name=self.config.from_name,
                to_name=thread.to_name,
                reply_to=ids.reply_address(self.config.address, token) if token else None,
                in_reply_to=thread.in_reply_to,
                references=thread.references,
                auto_submitted=code or thread.automated,
            )
        except ComposeError as exc:
            raise SendError(f"email not sent: {exc}", permanent=True) from None
        try:
            async with asyncio.timeout(self.config.smtp.timeout):  # a free connection slot
                await self._sending.acquire()
        except TimeoutError:
            raise SendError("email not sent: every SMTP connection was busy",
                            permanent=False) from None
        try:
            answer = await send_mail(self.config.smtp, mail)
        finally:
            self._sending.release()
        log.info("email: %s sent to %s as <%s>: %s", message.id, mail.envelope.recipients[0],
                 mail.message_id, answer)
        return SendReceipt("email", mail.message_id, "sent")
