"""Sending one composed mail over SMTP with aiosmtplib: STARTTLS (default), TLS or none.

The outcome is what the outbox needs to never send twice: a `SendError` that is permanent for
a 5xx answer, transient for a 4xx answer or a connection that failed before the message was
handed over, and `SendInDoubt` when the connection failed *after* the message data was sent
and before the server's answer: the server may have accepted it, so it must not be resent
blindly (the outbox's `unknown` rule; the Message-ID is the same if an agent resends, so the
customer's client shows one mail).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Final, Literal

import aiosmtplib
from aiosmtplib import SMTPResponseException

from connectors.email.compose import OutboundMail
from gateway.channels import SendError, SendInDoubt

Security = Literal["starttls", "tls", "none"]


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    host: str
    port: int
    security: Security = "starttls"
    user: str | None = None
    password: str | None = None
    timeout: float = 30.0
    helo_name: str | None = None  # EHLO name; default: the domain of our address
    ssl_context: ssl.SSLContext | None = None  # None: the system's CAs, hostname checked


def _client(config: SmtpConfig) -> aiosmtplib.SMTP:
    context = config.ssl_context
    if context is None and config.security != "none":
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    return aiosmtplib.SMTP(
        hostname=config.host, port=config.port, timeout=config.timeout,
        use_tls=config.security == "tls", start_tls=config.security == "starttls",
        tls_context=context if config.security != "none" else None,
        username=config.user, password=config.password,
        local_hostname=config.helo_name,
    )


def _refused(stage: str, exc: SMTPResponseException) -> SendError:
    code = exc.code
    permanent = 500 <= code < 600
    hint = ""
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        hint = " (check GATEWAY_SMTP_USER and GATEWAY_SMTP_PASSWORD)"
    return SendError(f"SMTP {stage} refused: {code} {exc.message}{hint}"[:500],
                     permanent=permanent)


# Commands before the message is handed over (connect, greeting, EHLO, STARTTLS, EHLO, AUTH,
# MAIL, RCPT): together they get this many command timeouts, then the send is transient.
_BEFORE_DATA_COMMANDS: Final = 8


def worst_case_seconds(config: SmtpConfig) -> float:
    """How long `send_mail` can take at most: the commands before DATA (bounded together),
    DATA (its 354 and its answer, each bounded by aiosmtplib) and QUIT. The outbox waits
    longer than this, so it never cancels a send halfway through the handover."""
    return config.timeout * (_BEFORE_DATA_COMMANDS + 2 + 1)


async def send_mail(config: SmtpConfig, mail: OutboundMail) -> str:
    """Send `mail` to exactly its envelope recipients; return the server's final answer."""
    smtp = _client(config)
    try:
        stage = "connection"
        try:
            async with asyncio.timeout(config.timeout * _BEFORE_DATA_COMMANDS):
                await smtp.connect()
                envelope = mail.envelope
                stage = "sender"
                await smtp.mail(envelope.sender)
                stage = "recipient"
                for recipient in envelope.recipients:
                    await smtp.rcpt(recipient)
        except SMTPResponseException as exc:
            raise _refused(stage, exc) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            where = (f"SMTP {config.host}:{config.port} ({config.security}) not reachable"
                     if stage == "connection" else
                     "SMTP connection failed before the message was sent")
            raise SendError(f"{where}: {exc or type(exc).__name__}", permanent=False) from None
        try:
            response = await smtp.data(mail.message.as_bytes())
        except SMTPResponseException as exc:
            raise _refused("message", exc) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise SendInDoubt(f"SMTP connection failed while the message was being handed "
                              f"over ({exc or type(exc).__name__}); the server may have "
                              f"accepted it, so it is not resent automatically") from None
        return f"{response.code} {response.message}"[:200]
    finally:
        if smtp.is_connected:
            try:  # the outcome is known by now: QUIT is a courtesy, bounded
                await asyncio.wait_for(smtp.quit(), config.timeout)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                smtp.close()
