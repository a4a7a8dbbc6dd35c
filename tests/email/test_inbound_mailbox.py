"""The channel against a real Dovecot: every mail handed to the core once, whatever happens
to the connection, the server's UIDs or the gateway itself."""

from __future__ import annotations

import logging
import ssl
from dataclasses import replace

import pytest

from gateway.channels import ChannelError as ChannelStartError
from tests.dovecot import Account, Dovecot
from tests.helpers import wait_until
from tests.email.support import CuttingProxy, FakeSink, mail

pytestmark = pytest.mark.peers


async def test_mail_in_the_mailbox_reaches_the_core_once_with_its_position(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel) -> None:
    await dovecot.append(mailbox, [mail(f"Order {i}") for i in range(3)])
    channel = await start_channel(sink)
    await wait_until(lambda: len(sink.stored) == 3, what="3 mails stored", timeout=15)
    assert [e.extra["subject"] for e in sink.order] == ["Order 0", "Order 1", "Order 2"]
    first = sink.order[0]
    assert str(first.sender) == "email:ann@example.org" and first.provider == "imap"
    assert first.provider_id == "order-0@example.org" and first.attested is False
    validity = dovecot.status(mailbox)["uidvalidity"]
    assert sink.checkpoints[channel.config.follow.checkpoint_key] == f"{validity}:3"
    assert sink.calls == 3


async def test_new_mail_arrives_through_idle_and_through_polling(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel) -> None:
    idle = await start_channel(sink)
    await wait_until(lambda: idle.follower is not None and idle.follower.connected.is_set(),
                     timeout=15)
    dovecot.save(mailbox, mail("Pushed by IDLE"))
    await wait_until(lambda: len(sink.stored) == 1, what="the IDLE push", timeout=15)
    await idle.aclose()

    polling = await start_channel(sink, email_idle=False, email_poll_seconds=0.2)
    dovecot.save(mailbox, mail("Found by polling"))
    await wait_until(lambda: len(sink.stored) == 2, what="the poll", timeout=15)
    assert sink.calls == 2  # the poller resumed from the checkpoint, not from the start
    assert polling.follower is not None and polling.follower.sessions == 1


async def test_a_connection_cut_mid_fetch_loses_nothing_and_stores_nothing_twice(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel) -> None:
    body = "A line of a longer mail.\n" * 40  # ~1 KB each: the cut lands inside a FETCH
    await dovecot.append(mailbox, [mail(f"Batch mail {i}", body=body) for i in range(240)])
    proxy = await CuttingProxy(dovecot.host, dovecot.port).start()
    try:
        channel = await start_channel(sink, imap_port=proxy.port, email_batch=50,
                                      start=False)
        # The first session logs in and catches up; 120 KB into the server's answers
        # (inside the third FETCH) the connection is reset under it.
        proxy.cut_after = 120_000
        await channel.start(sink)
        await wait_until(lambda: len(sink.stored) == 240, what="all 240 mails after the cut",
                         timeout=15)
    finally:
        await proxy.stop()
    assert proxy.cuts == 1 and proxy.connections == 2
    assert sorted(e.extra["subject"] for e in sink.order) == sorted(
        f"Batch mail {i}" for i in range(240))
    # At most the batches in flight were fetched again: the position held across the cut
    # (starting over would hand over the 100 mails before the cut a second time).
    assert 240 <= sink.calls < 240 + 100


# With batches of 8, mail 12 is inside the second batch and mail 7 closes the first one (it
# carries the position, and is committed while the second batch's others are).
@pytest.mark.parametrize("refused_id", ["mail-12@example.org", "mail-7@example.org"])
async def test_a_core_that_fails_mid_batch_gets_the_mail_again_and_stores_it_once(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel,
        refused_id: str) -> None:
    await dovecot.append(mailbox, [mail(f"Mail {i}") for i in range(20)])
    refused: list[str] = []

    def fail_once(event) -> bool:  # type: ignore[no-untyped-def]
        if event.provider_id == refused_id and not refused:
            refused.append(event.provider_id)
            return True
        return False

    sink.fail = fail_once
    channel = await start_channel(sink, email_batch=8)
    await wait_until(lambda: len(sink.stored) == 20, what="all 20 mails", timeout=15)
    assert refused == [refused_id]
    validity = dovecot.status(mailbox)["uidvalidity"]
    assert sink.checkpoints[channel.config.follow.checkpoint_key] == f"{validity}:20"


async def test_a_uidvalidity_change_rescans_the_mailbox_and_dedupes_by_message_id(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel,
        caplog: pytest.LogCaptureFixture) -> None:
    await dovecot.append(mailbox, [mail(f"Before {i}") for i in range(5)])
    first = await start_channel(sink)
    await wait_until(lambda: len(sink.stored) == 5, timeout=15)
    await first.aclose()
    old = dovecot.status(mailbox)["uidvalidity"]
    dovecot.set_uidvalidity(mailbox, old + 1000)  # a restore or rebuild on the server
    await dovecot.append(mailbox, [mail(f"After {i}") for i in range(2)])

    caplog.set_level(logging.WARNING, logger="connectors.email")
    second = await start_channel(sink)
    await wait_until(lambda: len(sink.stored) == 7, what="the 2 new mails after the rescan",
                     timeout=15)
    assert second.follower is not None and second.follower.handed_over == 7  # all re-read
    assert len(sink.stored) == 7  # … and none stored twice
    assert sink.checkpoints[second.config.follow.checkpoint_key] == f"{old + 1000}:7"
    assert any("UIDVALIDITY" in r.getMessage() and "changed" in r.getMessage()
               for r in caplog.records)


async def test_a_thousand_mails_that_arrive_while_the_channel_is_down_are_all_handed_over_once(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel) -> None:
    before = await start_channel(sink)
    dovecot.save(mailbox, mail("Before the outage"))
    await wait_until(lambda: len(sink.stored) == 1, timeout=15)
    await before.aclose()

    # Delivered as a delivery agent does (files into the Maildir), the fast way for 1,000.
    dovecot.drop(mailbox, (mail(f"While down {i}") for i in range(1000)))
    after = await start_channel(sink, email_batch=100)
    await wait_until(lambda: len(sink.stored) == 1001, timeout=60, what="1,000 mails")
    assert sink.calls == 1001  # each handed over exactly once: none re-read, none skipped
    assert after.follower is not None and after.follower.handed_over == 1000
    validity = dovecot.status(mailbox)["uidvalidity"]
    assert sink.checkpoints[after.config.follow.checkpoint_key] == f"{validity}:1001"


async def test_the_worker_process_parser_gives_the_same_result(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel) -> None:
    await dovecot.append(mailbox, [mail(f"Parsed elsewhere {i}") for i in range(30)])
    await start_channel(sink, email_parse_workers=1)
    await wait_until(lambda: len(sink.stored) == 30, timeout=30, what="30 mails via the pool")
    assert {e.extra["subject"] for e in sink.order} == {f"Parsed elsewhere {i}"
                                                        for i in range(30)}


async def test_the_mailbox_is_never_changed_by_the_gateway(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel) -> None:
    await dovecot.append(mailbox, [mail(f"Keep {i}") for i in range(4)])
    await start_channel(sink)
    await wait_until(lambda: len(sink.stored) == 4, timeout=15)
    assert dovecot.status(mailbox)["messages"] == 4
    flags = dovecot.doveadm("fetch", "-u", mailbox.user, "flags", "mailbox", "INBOX", "all")
    assert "\\Seen" not in flags and "\\Deleted" not in flags  # read with BODY.PEEK only


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_tls_and_starttls_to_a_server_we_trust(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel,
        trust: ssl.SSLContext, security: str) -> None:
    port = dovecot.tls_port if security == "tls" else dovecot.port
    dovecot.save(mailbox, mail(f"Over {security}"))
    await start_channel(sink, imap_security=security, imap_port=port, imap_host="localhost",
                        tls=trust)
    await wait_until(lambda: len(sink.stored) == 1, what=f"a mail over {security}", timeout=15)


async def test_tls_to_a_server_we_do_not_trust_fails_start_with_a_clear_reason(
        dovecot: Dovecot, sink: FakeSink, start_channel) -> None:
    with pytest.raises(ChannelStartError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
        await start_channel(sink, imap_security="tls", imap_port=dovecot.tls_port,
                            imap_host="localhost")


async def test_a_wrong_password_fails_start_naming_the_account(
        dovecot: Dovecot, mailbox: Account, sink: FakeSink, start_channel) -> None:
    with pytest.raises(ChannelStartError, match=f"login as '{mailbox.user}'.*refused"):
        await start_channel(sink, account=replace(mailbox, password="wrong-password"))

