"""Following the support mailbox: catch up from the checkpoint, then wait for new mail.

Flow: IMAP (UID SEARCH above the checkpoint, sizes, FETCH in batches bounded by count and
bytes) -> parse, store parts and build the events (in a thread, or in worker processes:
GATEWAY_EMAIL_PARSE_WORKERS) -> typed `InboundMessage`s -> the core's `InboundSink`. Three
stages with bounded queues between them, so memory stays flat however many mails wait.

Nothing lost, nothing doubled: the position (mailbox, UIDVALIDITY, UID) advances only through
the sink, in one transaction with the whole batch (`ingest_batch`, the core's way), or, mail
by mail, in the transaction of the batch's last message after every earlier message of the
batch was committed (a sink without `ingest_batch`, or a batch the core refused); a cut, a crash or a restart resumes from there, and what is fetched
again is dropped by the core's Message-ID dedupe. A UIDVALIDITY change voids every UID: the
whole mailbox is scanned again, deduplicated the same way, and the log says so. Reconnects
back off exponentially with jitter; this is the one place that does it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import quote

from connectors.email import ids
from connectors.email.blobs import BlobStore
from connectors.email.imap import (
    Fetched,
    ImapConfig,
    ImapError,
    ImapLoginError,
    ImapSession,
    MailboxMissing,
    MailboxState,
)
from connectors.email.parse import ParseConfig, ParsedMail, Rejected, parse_mail
from gateway.addresses import AddressError, make_address
from gateway.channels import InboundSink
from gateway.events import Attachment, DeliveryStatus, InboundMessage

log = logging.getLogger("connectors.email")
PROVIDER: Final = "imap"  # the provider name of inbound mail: dedupe is (imap, Message-ID)
MAX_INGEST_ATTEMPTS: Final = 5  # a mail the core refuses this often is logged and passed over


@dataclass(frozen=True, slots=True)
class FollowConfig:
    imap: ImapConfig
    parse: ParseConfig
    store_dir: str
    batch: int = 100  # messages per FETCH
    batch_bytes: int = 16 * 1024 * 1024  # and at most this much per FETCH
    max_message_bytes: int = 50 * 1024 * 1024  # larger mails: header only, a note says so
    idle: bool = True  # IMAP IDLE when the server offers it; else poll
    idle_seconds: float = 25 * 60  # re-issue IDLE before servers drop it (RFC 2177: 29 min)
    poll_seconds: float = 60.0
    reconnect_base: float = 1.0
    reconnect_cap: float = 300.0

    @property
    def checkpoint_key(self) -> str:
        return f"imap:{self.imap.location}"


@dataclass(frozen=True, slots=True)
class Position:
    uidvalidity: int
    uid: int

    def __str__(self) -> str:
        return f"{self.uidvalidity}:{self.uid}"

    @classmethod
    def parse(cls, text: str | None) -> Position | None:
        validity, sep, uid = (text or "").partition(":")
        if not sep or not validity.isdigit() or not uid.isdigit():
            return None
        return cls(int(validity), int(uid))


class Backoff:
    """Exponential back-off with full jitter (a fleet of gateways never reconnects in step)."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self._rng = rng or random.Random()
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.failures - 1, 30))
        return self._rng.uniform(ceiling / 2, ceiling)


# ---- parse worker (runs in a worker process or a thread) -------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """One fetched mail, ready to hand over: the event, or why it is skipped."""

    uid: int
    event: InboundMessage | None
    skipped: str | None = None  # the reason, for the log
    bounce: DeliveryStatus | None = None  # a failed delivery this mail reports


_WARM_UP = (b"From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: warm-up\r\n"
            b"Message-ID: <warm-up@example.org>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: text/plain\r\n\r\nHello\r\n--b\r\nContent-Type: text/html\r\n"
            b"\r\n<p>Hello</p>\r\n--b--\r\n")


def warm_up() -> None:
    """Run in each parse worker at start: the import of this module (and the parser's
    lazily loaded parts, by one small parse) is paid before the first mail, not with it."""
    parse_mail(_WARM_UP, ParseConfig(our_address="support@example.org"))


def prepare_batch(fetched: Sequence[Fetched], config: ParseConfig, store_dir: str,
                  location: str) -> list[Prepared]:
    """Parse a batch, write every part it references to the blob store (durably, before
    returning: a reference handed to the core always names a stored file) and build the
    events. Runs in the parse worker (a process, or a thread); pure apart from the store."""
    out: list[Prepared] = []
    blobs: dict[str, bytes] = {}
    for got in fetched:
        if got.raw is None:
            out.append(Prepared(got.uid, None, "the server returned no message (expunged?)"))
            continue
        result = parse_mail(got.raw, config)
        if isinstance(result, Rejected):
            out.append(Prepared(got.uid, None, result.reason))
            continue
        mail = result.mail
        if is_from_us(mail, config.our_address):
            out.append(Prepared(got.uid, None, f"sent from our own address {mail.sender}"))
            continue
        try:
            event = to_inbound(mail, our_address=config.our_address, fetched=got,
                               location=f"{location};UID={got.uid}")
        except (AddressError, ValueError) as exc:
            out.append(Prepared(got.uid, None, str(exc)))
            continue
        blobs.update(result.blobs)
        bounce = None
        if mail.bounce is not None and mail.bounce.failed and mail.bounce.original_message_id:
            bounce = DeliveryStatus(
                provider="email", provider_message_id=mail.bounce.original_message_id,
                status="failed", at=mail.date, event_id=f"bounce:{mail.message_id}",
                error=_bounce_error(mail))
        out.append(Prepared(got.uid, event, bounce=bounce))
    BlobStore(store_dir).put_many(blobs)  # durable, once for the batch
    return out


# ---- handing over ----------------------------------------------------------------------------


def is_from_us(mail: ParsedMail, our_address: str) -> bool:
    """Our own address (or one of its plus-addresses) as the sender: a copy or a loop."""
    local, domain = ids.split_address(mail.sender.lower())
    our_local, our_domain = ids.split_address(our_address.lower())
    return domain == our_domain and local.partition("+")[0] == our_local


def to_inbound(mail: ParsedMail, *, our_address: str, location: str,
               fetched: Fetched | None = None) -> InboundMessage:
    """The typed event for one parsed mail. From identifies the sender and never verifies
    (`attested` stays False); a thread token is passed on for the core to check."""
    extra: dict[str, str] = {"subject": mail.subject, "imap": location}
    if mail.synthetic_id:
        extra["synthetic_message_id"] = "true"
    raw = mail.part("raw")
    if raw is not None:
        extra["raw"] = raw.url
    # The body's own parts stay in the mailbox, named by IMAP URL (RFC 5092): never copied.
    if mail.text_trimmed and mail.text_section:
        extra["full_text"] = f"{location}/;SECTION={mail.text_section}"
    if mail.html_section:
        extra["html"] = f"{location}/;SECTION={mail.html_section}"
    if mail.auth is not None:
        extra.update(mail.auth.as_extra())
    if mail.kind_reason:
        extra["kind_reason"] = mail.kind_reason
    if mail.bounce is not None:
        for key in ("original_message_id", "action", "status", "recipient", "diagnostic"):
            value = getattr(mail.bounce, key)
            if value:
                extra[f"bounce_{key}"] = value
    if mail.dropped_parts:
        extra["dropped_parts"] = str(mail.dropped_parts)
    for key in ("to", "cc"):
        if getattr(mail, key):
            extra[key] = getattr(mail, key)
    text = mail.text
    if fetched is not None and fetched.header_only:
        extra["not_fetched_bytes"] = str(fetched.size)
        text = (f"[message of {fetched.size / 1e6:.1f} MB not fetched: larger than "
                f"GATEWAY_EMAIL_MAX_MESSAGE_MB; it is still in the mailbox]")
    return InboundMessage(
        sender=make_address("email", mail.sender),
        recipient=our_address,
        text=text,
        provider=PROVIDER,
        provider_id=mail.message_id,
        thread_key=mail.thread_root,
        attested=False,
        provider_at=mail.date,
        attachments=tuple(Attachment(url=p.url, content_type=p.content_type, name=p.name,
                                     size=p.size) for p in mail.attachments),
        profile_name=mail.sender_name,
        extra=extra,
        kind=mail.kind,
        thread_refs=mail.thread_refs,
        thread_token=mail.thread_token,
        threaded=True,
    )


# ---- the follower ----------------------------------------------------------------------------


class MailboxFollower:
    """Owns the mailbox loop: `run()` until cancelled. Started and stopped by EmailChannel."""

    def __init__(self, config: FollowConfig, sink: InboundSink,
                 parser: Executor | None = None,
                 rng: random.Random | None = None,
                 on_mail: Callable[[InboundMessage], None] | None = None) -> None:
        self.config = config
        self.sink = sink
        self._parser = parser
        self._backoff = Backoff(config.reconnect_base, config.reconnect_cap, rng)
        self._position: Position | None = None  # what is committed, as far as we know
        self._failures: dict[tuple[int, int], int] = {}
        self._on_mail = on_mail or (lambda _event: None)
        self.connected = asyncio.Event()  # set while a session is up (tests wait on it)
        self.handed_over = 0  # messages given to the sink (duplicates included)
        self.sessions = 0

    async def run(self, first: ImapSession | None = None) -> None:
        session = first
        while True:
            try:
                if session is None:
                    session = await ImapSession.open(self.config.imap)
                self.sessions += 1
                self.connected.set()
                await self._follow(session)
            except asyncio.CancelledError:
                raise
            except (ImapError, OSError, TimeoutError) as exc:
                delay = self._backoff.next_delay()
                level = logging.ERROR if isinstance(exc, (ImapLoginError, MailboxMissing)) \
                    else logging.WARNING
                log.log(level, "email: %s; reconnecting in %.1f s", exc, delay)
            except Exception:  # a bug or a refused write: never a dead mailbox loop
                delay = self._backoff.next_delay()
                log.exception("email: mailbox loop failed; restarting in %.1f s", delay)
            finally:
                self.connected.clear()
                if session is not None:
                    await session.close()
                session = None
            await asyncio.sleep(delay)

    async def _start_position(self, state: MailboxState) -> Position:
        known = self._position
        if known is None:
            stored = await self.sink.checkpoint(self.config.checkpoint_key)
            known = Position.parse(stored)
            if stored is not None and known is None:
                log.warning("email: checkpoint %r of %s is not readable; scanning the "
                            "whole mailbox (duplicates are dropped by Message-ID)", stored,
                            self.config.imap.location)
        if known is not None and known.uidvalidity != state.uidvalidity:
            log.warning("email: UIDVALIDITY of %s changed from %d to %d: every UID we knew "
                        "is void; scanning the whole mailbox again (mail already stored is "
                        "recognised by its Message-ID)", self.config.imap.location,
                        known.uidvalidity, state.uidvalidity)
            known = None
        return known or Position(state.uidvalidity, 0)

    async def _follow(self, session: ImapSession) -> None:
        state = session.state or await session.select()
        self._position = await self._start_position(state)
        self._backoff.reset()
        idle = self.config.idle and session.can_idle
        if self.config.idle and not idle:
            log.info("email: %s offers no IDLE; polling every %.0f s", self.config.imap.host,
                     self.config.poll_seconds)
        while True:
            await self._catch_up(session)
            if idle:
                await session.idle(self.config.idle_seconds)
            else:
                await asyncio.sleep(self.config.poll_seconds)
                await session.noop()

    async def _catch_up(self, session: ImapSession) -> None:
        assert self._position is not None
        uids = await session.uids_after(self._position.uid)
        if not uids:
            return
        batches: asyncio.Queue[tuple[int, Any] | None] = asyncio.Queue(2)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._fetch(session, uids, batches))
                tasks.create_task(self._deliver(batches))
        except BaseExceptionGroup as group:
            # The first failure (a cut, a refused write) is what the reconnect loop handles;
            # the other stage was only cancelled because of it.
            raise group.exceptions[0] from None

    async def _fetch(self, session: ImapSession, uids: list[int],
                     out: asyncio.Queue[tuple[int, Any] | None]) -> None:
        """Stage 1 and 2: fetch a batch, start parsing it, fetch the next meanwhile."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        assert self._position is not None
        location = (f"imap://{quote(cfg.imap.user, safe='')}@{cfg.imap.host}/"
                    f"{quote(cfg.imap.mailbox, safe='/')}"
                    f";UIDVALIDITY={self._position.uidvalidity}/")  # RFC 5092
        for start in range(0, len(uids), cfg.batch):
            chunk = uids[start:start + cfg.batch]
            sizes = await session.sizes(chunk)
            for group, header_only in _plan(chunk, sizes, cfg.batch_bytes,
                                            cfg.max_message_bytes):
                fetched = await session.fetch(group, header_only=header_only)
                got = {f.uid for f in fetched}
                fetched += [Fetched(uid, sizes.get(uid, 0), None) for uid in group
                            if uid not in got]  # expunged meanwhile: recorded as skipped
                fetched.sort(key=lambda f: f.uid)
                args = (fetched, cfg.parse, cfg.store_dir, location)
                if self._parser is None:
                    parsing: Any = asyncio.ensure_future(asyncio.to_thread(prepare_batch, *args))
                else:
                    parsing = loop.run_in_executor(self._parser, prepare_batch, *args)
                await out.put((fetched[-1].uid, parsing))
        await out.put(None)

    async def _deliver(self, batches: asyncio.Queue[tuple[int, Any] | None]) -> None:
        """Stage 3: hand each batch to the core; the position follows the commits.

        A sink with `ingest_batch` (the core) takes a batch's mails and its position in one
        write: one transaction, so the position never runs ahead of a mail nor behind it. If
        that write fails (a mail the core refuses), or for a sink without it, the mails go
        one by one, the position with the batch's last (`_deliver_singly`)."""
        batch_ingest = getattr(self.sink, "ingest_batch", None)
        closing: asyncio.Future[Position] | None = None
        try:
            while (item := await batches.get()) is not None:
                last_uid, parsing = item
                prepared: list[Prepared] = await parsing
                for item in prepared:  # a failed delivery is recorded before its bounce
                    if item.bounce is not None:
                        await self.sink.delivery_status(item.bounce)
                head, last = self._events(prepared)
                if closing is not None:
                    self._position = await closing
                    closing = None
                if batch_ingest is not None and await self._ingest_batch(
                        batch_ingest, [*head, *([last] if last else [])], last_uid):
                    continue
                await self._ingest_all(head)
                closing = asyncio.ensure_future(self._close_batch(last, last_uid))
            if closing is not None:
                self._position = await closing
                closing = None
        finally:
            if closing is not None:
                closing.cancel()

    async def _ingest_batch(self, ingest_batch: Callable[..., Any],
                            events: list[tuple[int, InboundMessage]], last_uid: int) -> bool:
        """The batch and its position in one write; False when the core refused it (the
        caller then goes mail by mail, which finds the mail at fault)."""
        assert self._position is not None
        position = Position(self._position.uidvalidity, last_uid)
        try:
            await ingest_batch([event for _uid, event in events],
                               (self.config.checkpoint_key, str(position)))
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            log.warning("email: the batch up to UID %d of %s was refused (%r); storing its "
                        "%d mails one by one", last_uid, self.config.imap.location, exc,
                        len(events))
            return False
        for uid, event in events:
            self.handed_over += 1
            self._failures.pop((position.uidvalidity, uid), None)
            self._on_mail(event)
        self._position = position
        return True

    def _events(self, prepared: list[Prepared]) -> tuple[list[tuple[int, InboundMessage]],
                                                         tuple[int, InboundMessage] | None]:
        events: list[tuple[int, InboundMessage]] = []
        for item in prepared:
            if item.event is None:
                log.warning("email: skipped %s UID %d: %s", self.config.imap.location,
                            item.uid, item.skipped)
                continue
            events.append((item.uid, item.event))
        return (events[:-1], events[-1]) if events else ([], None)

    async def _close_batch(self, last: tuple[int, InboundMessage] | None,
                           last_uid: int) -> Position:
        """The batch's last message with the position: (mailbox, UIDVALIDITY, last UID)."""
        assert self._position is not None
        position = Position(self._position.uidvalidity, last_uid)
        if last is not None:
            uid, event = last
            checkpoint = (self.config.checkpoint_key, str(position))
            await self._ingest_all([(uid, replace(event, checkpoint=checkpoint))])
        return position

    async def _ingest_all(self, events: list[tuple[int, InboundMessage]]) -> None:
        assert self._position is not None
        validity = self._position.uidvalidity
        if not events:
            return
        results = await asyncio.gather(*(self.sink.ingest(e) for _uid, e in events),
                                       return_exceptions=True)
        failed: list[BaseException] = []
        for (uid, event), result in zip(events, results, strict=True):
            if isinstance(result, BaseException):
                key = (validity, uid)
                self._failures[key] = self._failures.get(key, 0) + 1
                if self._failures[key] >= MAX_INGEST_ATTEMPTS:
                    log.error("email: passing over UID %d (%s) after %d refused hand-overs: "
                              "%r; the mail stays in the mailbox", uid, event.provider_id,
                              self._failures[key], result)
                    continue
                failed.append(result)
            else:
                self.handed_over += 1
                self._failures.pop((validity, uid), None)
                self._on_mail(event)
        if failed:
            raise failed[0]


def _plan(uids: list[int], sizes: dict[int, int], batch_bytes: int,
          max_bytes: int) -> list[tuple[list[int], bool]]:
    """Split a chunk into FETCH groups of at most `batch_bytes` (one mail may exceed it);
    mails over `max_bytes` go alone, header only."""
    groups: list[tuple[list[int], bool]] = []
    current: list[int] = []
    total = 0
    for uid in uids:
        size = sizes.get(uid, 0)
        if size > max_bytes:
            groups.append(([uid], True))
            continue
        if current and total + size > batch_bytes:
            groups.append((current, False))
            current, total = [], 0
        current.append(uid)
        total += size
    if current:
        groups.append((current, False))
    return groups


def _bounce_error(mail: ParsedMail) -> str:
    bounce = mail.bounce
    assert bounce is not None
    parts = [f"bounced ({bounce.status or 'no status'})"]
    if bounce.recipient:
        parts.append(f"for {bounce.recipient}")
    if bounce.diagnostic:
        parts.append(f": {bounce.diagnostic}")
    return " ".join(parts)[:500]
