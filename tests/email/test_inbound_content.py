"""What the core is handed for real mail in a real mailbox: legacy charsets, a 10 MB
attachment by reference, robots and bounces recorded as such, our own copies skipped.
(Through a whole gateway: tests/email/test_gateway.py.)"""

from __future__ import annotations

import hashlib
import os
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest

from connectors.email import ids
from connectors.email.blobs import BlobStore
from tests.dovecot import Account, Dovecot
from tests.helpers import wait_until
from tests.email.support import OUR_ADDRESS, FakeSink, mail
from tests.email.test_parse import dsn

pytestmark = pytest.mark.peers
TOKEN = "0123456789abcdef0123456789abcdef"


async def test_a_legacy_charset_mail_is_stored_as_the_customer_wrote_it(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel) -> None:
    text = "Добрый день! Где мой заказ номер 12345?"
    name = Header("Елена Иванова", "koi8-r").encode()
    subject = Header("Заказ", "koi8-r").encode()
    assert name.startswith("=?koi8-r?")
    raw = (f"From: {name} <elena@example.org>\r\n"
           f"To: support@gw.test\r\nSubject: {subject}\r\n"
           "Message-ID: <koi8@example.org>\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=koi8-r\r\nContent-Transfer-Encoding: 8bit\r\n"
           "\r\n").encode() + text.encode("koi8-r") + b"\r\n"
    latin = (b"From: Jos\xe9 <jose@example.org>\r\nTo: support@gw.test\r\n"
             b"Subject: Pedido n\xba 7 \xbfd\xf3nde est\xe1?\r\nMessage-ID: <latin@example.org>\r\n"
             b"Content-Type: text/plain; charset=windows-1252\r\n\r\n"
             b"\x93Gracias\x94 \x80 50\r\n")
    await dovecot.append(mailbox, [raw, latin])
    await start_channel(sink)
    await wait_until(lambda: len(sink.stored) == 2, timeout=15)
    first, second = sink.order
    assert first.text == text and first.extra["subject"] == "Заказ"
    assert first.profile_name == "Елена Иванова"
    assert second.text == "“Gracias” € 50" and second.profile_name == "José"
    assert second.extra["subject"] == "Pedido nº 7 ¿dónde está?"


async def test_a_10_mb_attachment_is_stored_by_reference_and_the_entry_made(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel,
        tmp_path: Path) -> None:
    data = os.urandom(10 * 1024 * 1024)
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Ann <ann@example.org>"
    msg["To"] = OUR_ADDRESS
    msg["Subject"] = "Photos of the damage"
    msg["Message-ID"] = "<big@example.org>"
    msg.set_content("Here are the photos.")
    msg.add_attachment(data, maintype="application", subtype="zip", filename="photos.zip")
    await dovecot.append(mailbox, [msg.as_bytes()])
    channel = await start_channel(sink, email_keep_raw=True)
    await wait_until(lambda: len(sink.stored) == 1, timeout=30, what="the 10 MB mail")
    (event,) = sink.order
    assert event.text == "Here are the photos."
    (attachment,) = event.attachments
    digest = hashlib.sha256(data).hexdigest()
    assert (attachment.name, attachment.content_type, attachment.size) == (
        "photos.zip", "application/zip", len(data))
    assert attachment.url == f"blob:sha256:{digest}"
    store = BlobStore(channel.config.follow.store_dir)
    assert store.get(attachment.url) == data
    assert store.exists(event.extra["raw"])  # the raw message too, when asked to keep it
    assert event.extra["imap"].startswith(f"imap://{mailbox.user}@")  # and where it lives
    assert len(repr(event)) < 5000  # the transcript entry never holds the bytes


async def test_a_mail_over_the_size_limit_is_noted_not_fetched(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel) -> None:
    await dovecot.append(mailbox, [mail("Huge", body="x" * 200_000), mail("Small")])
    await start_channel(sink, email_max_message_mb=0.1)
    await wait_until(lambda: len(sink.stored) == 2, timeout=15)
    huge = sink.by_subject("Huge")
    assert "not fetched" in huge.text and "GATEWAY_EMAIL_MAX_MESSAGE_MB" in huge.text
    assert int(huge.extra["not_fetched_bytes"]) > 200_000
    assert sink.by_subject("Small").text == "Hello, where is my order?"


async def test_an_auto_reply_and_a_bounce_are_recorded_as_such_and_the_bounce_fails_our_mail(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel) -> None:
    ours = ids.our_message_id("out_7f", TOKEN, OUR_ADDRESS)
    ooo = mail("Out of Office: Re: Your order", sender="ann@example.org",
               headers={"Auto-Submitted": "auto-replied", "In-Reply-To": f"<{ours}>"},
               body="I am away until Monday.")
    await dovecot.append(mailbox, [ooo, dsn(original_id=ours), mail("A real question")])
    await start_channel(sink)
    await wait_until(lambda: len(sink.stored) == 3, timeout=15)
    auto = sink.by_subject("Out of Office: Re: Your order")
    assert auto.kind == "auto-reply" and auto.thread_token == TOKEN
    bounce = sink.by_subject("Undelivered Mail Returned to Sender")
    assert bounce.kind == "bounce" and bounce.thread_refs[0] == ours
    assert bounce.extra["bounce_status"] == "5.1.1" and bounce.attested is False
    (status,) = sink.statuses
    assert (status.provider_message_id, status.status) == (ours, "failed")
    assert "5.1.1" in (status.error or "") and "nobody@example.org" in (status.error or "")
    assert sink.by_subject("A real question").kind == "message"


async def test_mail_from_our_own_address_is_skipped(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel) -> None:
    await dovecot.append(mailbox, [mail("Copy of our reply", sender=f"support+{TOKEN}@gw.test"),
                                   mail("From us", sender=OUR_ADDRESS), mail("From Ann")])
    channel = await start_channel(sink)
    await wait_until(lambda: len(sink.stored) == 1, timeout=15)
    assert sink.order[0].extra["subject"] == "From Ann"
    validity = dovecot.status(mailbox)["uidvalidity"]
    assert sink.checkpoints[channel.config.follow.checkpoint_key] == f"{validity}:3"
