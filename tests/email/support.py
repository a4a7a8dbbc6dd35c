"""Test doubles and helpers for the email tests: a fake core sink, an SMTP server (aiosmtpd)
in the test's own loop, a TCP proxy that can cut a connection, and mail builders.

The fake sink implements the `InboundSink` calls the email channel makes, with the core's
semantics: dedupe by (provider, provider_id), the checkpoint stored atomically with the
message that carries it (also when that message is a duplicate), statuses recorded.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.smtp import SMTP as SmtpServerProtocol
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from gateway.channels import ReplyThread
from gateway.events import DeliveryStatus, InboundMessage
from tests.helpers import wait_until

OUR_ADDRESS = "support@gw.test"


class FakeSink:
    """What the core offers the channel, in memory (see the module docstring)."""

    def __init__(self) -> None:
        self.stored: dict[tuple[str, str], InboundMessage] = {}
        self.order: list[InboundMessage] = []
        self.calls = 0
        self.checkpoints: dict[str, str] = {}
        self.statuses: list[DeliveryStatus] = []
        self.fail: Callable[[InboundMessage], bool] = lambda _e: False
        self.threads: dict[str, ReplyThread] = {}  # what reply_thread answers, by outbox id
        self._lock = asyncio.Lock()

    async def ingest(self, event: InboundMessage) -> dict[str, Any]:
        async with self._lock:  # one "transaction": dedupe, store, checkpoint
            await asyncio.sleep(0)
            if self.fail(event):
                raise RuntimeError(f"refused {event.provider_id} (test)")
            self.calls += 1
            key = (event.provider, event.provider_id)
            duplicate = key in self.stored
            if not duplicate:
                self.stored[key] = event
                self.order.append(event)
            if event.checkpoint is not None:
                self.checkpoints[event.checkpoint[0]] = event.checkpoint[1]
            return {"duplicate": duplicate}

    async def checkpoint(self, key: str) -> str | None:
        return self.checkpoints.get(key)

    async def delivery_status(self, event: DeliveryStatus) -> str | None:
        self.statuses.append(event)
        return event.status

    async def check_thread_token(self, token: str) -> str | None:
        return None

    async def reply_thread(self, outbox_id: str) -> ReplyThread:
        return self.threads.get(outbox_id, ReplyThread(token=None))

    def by_subject(self, subject: str) -> InboundMessage:
        return next(e for e in self.order if e.extra.get("subject") == subject)


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    @property
    def message(self) -> EmailMessage:
        """The mail as the recipient's client reads it."""
        parsed = message_from_bytes(self.content, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def text(self) -> str:
        body = self.message.get_body(preferencelist=("plain",))
        return str(body.get_content()) if body is not None else ""  # type: ignore[attr-defined]


@dataclass
class SmtpBehaviour:
    """How the test SMTP server answers (all default to accepting)."""

    rcpt_reply: str | None = None  # e.g. "550 5.1.1 no such user"
    data_reply: str | None = None  # e.g. "451 4.3.0 try again later"
    drop_after_data: bool = False  # close the connection instead of answering the DATA
    on_message: Callable[[Received], Any] | None = None


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_RCPT(self, smtp: Any, session: Session, envelope: Envelope,
                          address: str, options: list[str]) -> str:
        if self.server.behaviour.rcpt_reply:
            return self.server.behaviour.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: Any, session: Session, envelope: Envelope) -> str:
        behaviour = self.server.behaviour
        if behaviour.drop_after_data:
            smtp.transport.abort()
            return "250 OK"
        if behaviour.data_reply:
            return behaviour.data_reply
        got = Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
        self.server.received.append(got)
        if behaviour.on_message is not None:
            result = behaviour.on_message(got)
            if asyncio.iscoroutine(result):
                await result
        return "250 2.0.0 queued"


@dataclass
class SmtpServer:
    """aiosmtpd on 127.0.0.1, port 0, in the running loop."""

    behaviour: SmtpBehaviour = field(default_factory=SmtpBehaviour)
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    async def start(self, *, tls: ssl.SSLContext | None = None, implicit_tls: bool = False,
                    login: tuple[str, str] | None = None) -> SmtpServer:
        handler = _Handler(self)

        def authenticate(_server: Any, _session: Any, _envelope: Any, mechanism: str,
                         data: Any) -> AuthResult:
            ok = isinstance(data, LoginPassword) and login is not None and (
                data.login.decode(), data.password.decode()) == login
            return AuthResult(success=ok, handled=False)

        def protocol() -> SmtpServerProtocol:
            return SmtpServerProtocol(
                handler, hostname="smtp.test", tls_context=None if implicit_tls else tls,
                require_starttls=tls is not None and not implicit_tls,
                authenticator=authenticate if login else None, auth_required=bool(login),
                auth_require_tls=tls is not None and not implicit_tls,
                auth_exclude_mechanism=["LOGIN"])

        self._server = await asyncio.get_running_loop().create_server(
            protocol, "127.0.0.1", 0, ssl=tls if implicit_tls else None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Until `count` mails were received in all; all of them, oldest first."""
        await wait_until(lambda: len(self.received) >= count, timeout=timeout,
                         what=f"{count} mail(s) at the SMTP server")
        return list(self.received)


class CuttingProxy:
    """A TCP proxy to the IMAP server that can abort a connection mid-stream: after
    `cut_after` bytes from the server on the next connection, both sides are reset
    (`on_cut`, when set, is called first: a test may kill the client process there)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.cut_after: int | None = None
        self.on_cut: Callable[[], None] | None = None
        self.connections = 0
        self.cuts = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cut, self.cut_after = self.cut_after, None
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       limit: int | None) -> None:
            sent = 0
            try:
                while data := await src.read(16384):
                    if limit is not None and sent + len(data) > limit:
                        if self.on_cut is not None:
                            self.on_cut()
                        dst.write(data[: limit - sent])
                        await dst.drain()
                        self.cuts += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    dst.write(data)
                    await dst.drain()
                    sent += len(data)
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        tasks = [asyncio.create_task(pipe(reader, up_writer, None)),
                 asyncio.create_task(pipe(up_reader, writer, cut))]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)


def mail(subject: str, *, sender: str = "Ann Example <ann@example.org>", to: str = OUR_ADDRESS,
         body: str = "Hello, where is my order?", message_id: str | None = None,
         headers: dict[str, str] | None = None, date: datetime | None = None) -> bytes:
    """A customer's mail as bytes (built with EmailMessage, as a mail client would)."""
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = (date or datetime(2026, 11, 30, 9, 0, tzinfo=UTC)).strftime(
        "%a, %d %b %Y %H:%M:%S +0000")
    if message_id is not False:  # type: ignore[comparison-overlap]
        slug = re.sub(r"[^a-z0-9]+", "-", subject.lower()).strip("-")
        msg["Message-ID"] = f"<{message_id or slug}@example.org>"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()
