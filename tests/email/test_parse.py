"""Reading inbound mail: what the transcript gets from the bytes, and that bad bytes never crash."""

from __future__ import annotations

import base64
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import SMTP
from email.utils import parseaddr

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.email import ids, parse
from connectors.email.authres import parse_authentication_results
from connectors.email.parse import ParseConfig, Parsed, ParsedMail, Rejected, parse_mail
from connectors.email.trim import trim_reply
from tests.email.support import OUR_ADDRESS, mail

CONFIG = ParseConfig(OUR_ADDRESS, languages=("en", "de", "fr", "es"))
TOKEN = "abcdefghijklmnopqrstuvwx23"


def parsed(raw: bytes) -> ParsedMail:
    result = parse_mail(raw, CONFIG)
    assert isinstance(result, Parsed), result
    return result.mail


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("latin-1")


# ---- bodies -------------------------------------------------------------------------------


def test_html_only_mail_is_read_as_text_and_the_original_kept_by_reference() -> None:
    msg = EmailMessage()
    msg["From"] = "ann@example.org"
    msg["Subject"] = "HTML"
    msg.set_content("<html><body><p>Hello <b>support</b>,</p><ul><li>order 42</li></ul>"
                    "<script>alert(1)</script></body></html>", subtype="html")
    result = parse_mail(msg.as_bytes(), CONFIG)
    assert isinstance(result, Parsed)
    assert "Hello support," in result.mail.text and "order 42" in result.mail.text
    assert "<b>" not in result.mail.text and "alert" not in result.mail.text
    # The original stays in the mailbox, named by its IMAP section, and is not copied.
    assert result.mail.html_section == result.mail.text_section == "1" and not result.blobs


def test_plain_alternative_is_preferred_over_html() -> None:
    msg = EmailMessage()
    msg["From"] = "ann@example.org"
    msg.set_content("plain words")
    msg.add_alternative("<p>html words</p>", subtype="html")
    found = parsed(msg.as_bytes())
    # The HTML alternative is not what the transcript shows: it stays in the mailbox (the
    # entry's IMAP URL names the mail), and is not copied into the store.
    assert found.text == "plain words" and found.part("html") is None


@pytest.mark.parametrize("charset,text", [
    ("iso-8859-1", "Grüße aus Köln, où est ma commande ?"),
    ("windows-1252", "Smart “quotes” – and € signs"),
    ("koi8-r", "Где мой заказ?"),
    ("shift_jis", "注文はどこですか"),
    ("iso-2022-jp", "注文はどこですか"),
])
def test_legacy_charsets_are_decoded(charset: str, text: str) -> None:
    raw = (f"From: ann@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: text/plain; charset={charset}\r\n"
           f"Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + text.encode(charset) + b"\r\n"
    assert parsed(raw).text == text


def test_raw_8bit_headers_and_a_lying_charset_do_not_lose_the_text() -> None:
    raw = (b"From: =?iso-8859-1?q?Ren=E9?= <rene@example.org>\r\n"
           b"Subject: Bestellung f\xfcr M\xfcller\r\n"  # raw latin-1, no RFC 2047
           b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
           b"caf\xe9 au lait\r\n")  # says utf-8, is latin-1
    found = parsed(raw)
    assert found.subject == "Bestellung für Müller" and found.sender_name == "René"
    assert found.text.startswith("caf") and "lait" in found.text


def test_an_unknown_charset_falls_back_instead_of_failing() -> None:
    raw = (b"From: ann@example.org\r\nContent-Type: text/plain; charset=x-no-such-thing\r\n\r\n"
           b"hello \xe9\r\n")
    assert parsed(raw).text.startswith("hello")


def test_rfc2047_and_rfc2231_names_are_decoded() -> None:
    raw = crlf(
        "From: =?utf-8?b?w4Vzc2Ugw5ZzdGVyYmVyZw==?= <asse@example.org>\n"
        "Subject: =?utf-8?q?R=C3=BCckgabe?= =?utf-8?q?_bitte?=\n"
        "MIME-Version: 1.0\n"
        "Content-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: text/plain\n\nsee attached\n"
        "--b\nContent-Type: application/pdf\n"
        "Content-Disposition: attachment; filename*=utf-8''Rechnung%20M%C3%A4rz.pdf\n"
        "Content-Transfer-Encoding: base64\n\n" + base64.b64encode(b"%PDF-1.4 ...").decode()
        + "\n--b--\n")
    found = parsed(raw)
    assert found.sender_name == "Åsse Österberg" and found.subject == "Rückgabe bitte"
    (attachment,) = found.attachments
    assert attachment.name == "Rechnung März.pdf" and attachment.size == len(b"%PDF-1.4 ...")
    assert attachment.content_type == "application/pdf" and attachment.role == "attachment"


def test_attachments_are_references_the_entry_only_names_them() -> None:
    msg = EmailMessage()
    msg["From"] = "ann@example.org"
    data = bytes(range(256)) * 4096  # 1 MiB
    msg.add_attachment(data, maintype="application", subtype="octet-stream",
                       filename="dump.bin")
    result = parse_mail(msg.as_bytes(), CONFIG)
    assert isinstance(result, Parsed)
    (part,) = result.mail.attachments
    assert part.size == len(data) and result.blobs[part.sha256] == data
    assert result.mail.text == "[1 attachment: dump.bin]"
    assert len(repr(result.mail)) < 3000  # the parsed mail never carries the bytes


# ---- trimming -----------------------------------------------------------------------------


def test_quoted_history_and_signature_are_trimmed_and_the_full_body_kept() -> None:
    body = ("Thanks, that fixed it.\n\nAnn\n-- \nAnn Example\nACME Corp, +1 415 555 0100\n\n"
            "On Mon, Nov 30, 2026 at 9:00 AM Support <support@gw.test> wrote:\n"
            "> Please restart the router.\n")
    result = parse_mail(mail("Re: router", body=body), CONFIG)
    assert isinstance(result, Parsed)
    assert result.mail.text == "Thanks, that fixed it.\n\nAnn" and result.mail.text_trimmed
    # The full body is the mail's own text part, in the mailbox: named, never copied (the
    # only body text the gateway stores is the transcript's, and that passes the core).
    assert result.mail.text_section == "1" and not result.blobs


def test_body_parts_are_named_by_their_imap_section() -> None:
    msg = EmailMessage()
    msg["From"] = "ann@example.org"
    msg.set_content("plain words")
    msg.add_alternative("<p>html words</p>", subtype="html")
    msg.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="a.pdf")
    found = parsed(msg.as_bytes())  # mixed(alternative(plain, html), pdf)
    assert (found.text_section, found.html_section) == ("1.1", None)
    html_only = EmailMessage()
    html_only["From"] = "ann@example.org"
    html_only.set_content("<p>html body</p>", subtype="html")
    html_only.add_attachment(b"%PDF", maintype="application", subtype="pdf", filename="a.pdf")
    found = parsed(html_only.as_bytes())  # mixed(html, pdf)
    assert (found.text_section, found.html_section) == ("1", "1")
    assert found.text == "html body"


@pytest.mark.parametrize("body,expected", [
    ("Danke!\n\nAm 30.11.2026 um 09:00 schrieb Support <support@gw.test>:\n> Hallo\n",
     "Danke!"),
    ("Merci !\n\nLe lun. 30 nov. 2026 à 09:00, Support <support@gw.test> a écrit :\n> Bonjour\n",
     "Merci !"),
    ("Thanks\n\n-----Original Message-----\nFrom: Support\nSent: Monday\nSubject: x\n\nHi\n",
     "Thanks"),
    ("Thanks\n\nFrom: Support <support@gw.test>\nSent: Monday, November 30, 2026 9:00 AM\n"
     "To: Ann\nSubject: RE: order\n\nHi Ann\n", "Thanks"),
    ("Hi,\nThanks, but order 12345 did not arrive.\n\nSent from my iPhone\n",
     "Hi,\nThanks, but order 12345 did not arrive."),
    ("123456\n\n> Your verification code is 123456.\n", "123456"),
    ("- one\n- two\nthat is the list", "- one\n- two\nthat is the list"),
])
def test_trimming_in_the_configured_languages(body: str, expected: str) -> None:
    assert trim_reply(body, CONFIG.languages) == expected


def test_robot_mail_is_not_trimmed() -> None:
    raw = mail("Automatic reply: order", body="I am away.\n\nOn Monday you wrote:\n> x\n",
               headers={"Auto-Submitted": "auto-replied"})
    assert "On Monday you wrote" in parsed(raw).text


# ---- classification ---------------------------------------------------------------------


@pytest.mark.parametrize("headers,subject,reason", [
    ({"Auto-Submitted": "auto-replied"}, "Re: order", "Auto-Submitted: auto-replied"),
    ({"Auto-Submitted": "auto-generated; owner-email=x@y"}, "Notice", "Auto-Submitted"),
    ({"X-Autoreply": "yes"}, "Re: order", "X-Autoreply"),
    ({"Precedence": "bulk"}, "Newsletter", "Precedence: bulk"),
    ({"Precedence": "auto_reply"}, "Re: order", "Precedence: auto_reply"),
    ({"Precedence": "list"}, "Digest", "Precedence: list"),
    ({"List-Id": "<users.lists.example.org>"}, "Digest", "mailing list"),
    ({}, "Out of Office: Re: order", "out-of-office subject"),
    ({}, "Automatic reply: order", "out-of-office subject"),
    ({}, "Abwesenheitsnotiz: Ihre Anfrage", "out-of-office subject"),
    ({}, "Réponse automatique : commande", "out-of-office subject"),
])
def test_auto_replies_are_recognised(headers: dict[str, str], subject: str,
                                     reason: str) -> None:
    found = parsed(mail(subject, headers=headers))
    assert found.kind == "auto-reply" and reason in (found.kind_reason or "")


@pytest.mark.parametrize("headers,subject", [
    ({"Auto-Submitted": "no"}, "Re: order"),
    ({}, "I was out of office, where is my parcel?"),
    ({"Precedence": "first-class"}, "order"),
])
def test_people_are_not_taken_for_robots(headers: dict[str, str], subject: str) -> None:
    assert parsed(mail(subject, headers=headers)).kind == "message"


def dsn(*, action: str = "failed", status: str = "5.1.1", original_id: str,
        headers_only: bool = False) -> bytes:
    returned = (f"From: support@gw.test\nTo: nobody@example.org\nSubject: Re: order\n"
                f"Message-ID: <{original_id}>\n")
    returned_part = (
        "Content-Type: text/rfc822-headers\n\n" + returned if headers_only
        else "Content-Type: message/rfc822\n\n" + returned + "\nYour order ships today.\n")
    return crlf(
        "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\n"
        "To: support@gw.test\nSubject: Undelivered Mail Returned to Sender\n"
        "Message-ID: <dsn-1@mx.example.org>\nAuto-Submitted: auto-replied\nMIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=r\n\n"
        "--r\nContent-Type: text/plain\n\nI'm sorry to have to inform you...\n"
        "--r\nContent-Type: message/delivery-status\n\n"
        "Reporting-MTA: dns; mx.example.org\nArrival-Date: Mon, 30 Nov 2026 09:00:00 +0000\n\n"
        f"Final-Recipient: rfc822; nobody@example.org\nAction: {action}\nStatus: {status}\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.org>: Recipient address rejected\n"
        "\n--r\n" + returned_part + "--r--\n")


def test_a_delivery_status_report_is_a_bounce_naming_our_message() -> None:
    ours = ids.our_message_id("out_1a2b", TOKEN, OUR_ADDRESS)
    found = parsed(dsn(original_id=ours))
    assert found.kind == "bounce" and found.bounce is not None
    assert found.bounce.original_message_id == ours and found.bounce.failed
    assert found.bounce.status == "5.1.1" and found.bounce.recipient == "nobody@example.org"
    assert "Recipient address rejected" in (found.bounce.diagnostic or "")
    assert found.thread_refs[0] == ours and found.thread_token == TOKEN


def test_a_bounce_with_only_the_returned_headers_still_names_the_message() -> None:
    found = parsed(dsn(original_id="out_9@gw.test", headers_only=True))
    assert found.bounce is not None and found.bounce.original_message_id == "out_9@gw.test"


def test_a_delay_warning_is_a_bounce_but_not_a_failure() -> None:
    found = parsed(dsn(action="delayed", status="4.4.7", original_id="out_2@gw.test"))
    assert found.kind == "bounce" and found.bounce is not None and not found.bounce.failed


def test_a_non_standard_bounce_is_recognised_by_its_sender_and_subject() -> None:
    raw = crlf("From: postmaster@mail.example.org\nTo: support@gw.test\n"
               "Subject: Delivery Status Notification (Failure)\n\n"
               "Delivery to nobody@example.org failed.\n\n----- original -----\n"
               "Message-ID: <out_3.x@gw.test>\nSubject: Re: order\n")
    found = parsed(raw)
    assert found.kind == "bounce" and found.bounce is not None
    assert found.bounce.original_message_id == "out_3.x@gw.test" and found.bounce.failed


# ---- identity evidence, threads and ids ---------------------------------------------------


def test_only_the_topmost_authentication_results_count() -> None:
    # The receiving server prepends its own header; a sender's forged one sits below it.
    raw = crlf("Authentication-Results: mx.gw.test; dkim=fail header.d=example.org; "
               "spf=softfail; dmarc=fail header.from=example.org\n"
               "From: ann@example.org\nSubject: x\n"
               "Authentication-Results: mx.gw.test; dkim=pass header.d=example.org; "
               "dmarc=pass header.from=example.org\n\nbody\n")
    found = parsed(raw)
    assert found.auth is not None and found.auth.authserv_id == "mx.gw.test"
    assert (found.auth.dkim, found.auth.dmarc, found.auth.spf) == ("fail", "fail", "softfail")
    top = parse_authentication_results(
        "mx.gw.test 1; dkim=pass (2048-bit key; unprotected) header.d=example.org "
        "header.s=s1; spf=pass smtp.mailfrom=ann@example.org; dmarc=pass (p=REJECT) "
        "header.from=example.org")
    assert top is not None and (top.dkim, top.dkim_domain, top.spf, top.dmarc,
                                top.dmarc_domain) == ("pass", "example.org", "pass", "pass",
                                                      "example.org")
    several = parse_authentication_results(
        "mx; dkim=fail header.d=bad.test; dkim=pass header.d=example.org")
    assert several is not None and (several.dkim, several.dkim_domain) == ("pass",
                                                                            "example.org")


def test_thread_refs_newest_first_and_our_token_found_in_to_or_references() -> None:
    ours = ids.our_message_id("out_7", TOKEN, OUR_ADDRESS)
    raw = mail("Re: order", message_id="reply-3", headers={
        "In-Reply-To": f"<{ours}>",
        "References": f"<root@example.org> <x@example.org> <{ours}>"})
    found = parsed(raw)
    assert found.thread_refs == (ours, "x@example.org", "root@example.org")
    assert found.thread_root == "root@example.org" and found.thread_token == TOKEN
    plus = parsed(mail("Re: order", to=f"Support <support+{TOKEN}@GW.TEST>"))
    assert plus.thread_token == TOKEN


def test_a_mixed_case_token_keeps_its_case_and_to_wins_over_delivery_headers() -> None:
    token = "Qx3_fZ-9aBcDeFgHiJkLmNoPqRsTuVwX"  # what secrets.token_urlsafe(24) gives
    raw = mail("Re: order", to=f"Support <support+{token}@gw.test>")
    folded = raw.replace(b"From:", f"Delivered-To: support+{token.lower()}@gw.test\r\nFrom:"
                         .encode(), 1)
    assert parsed(folded).thread_token == token


def test_tokens_of_other_domains_or_shapes_are_not_ours() -> None:
    for to in (f"support+{TOKEN}@evil.test", f"sales+{TOKEN}@gw.test", "support+short@gw.test"):
        assert parsed(mail("x", to=to)).thread_token is None
    assert parsed(mail("x", headers={"References": f"<out_1.{TOKEN}@evil.test>"})
                  ).thread_token is None


def test_a_mail_without_message_id_gets_a_stable_synthetic_one() -> None:
    raw = mail("No id", message_id=False)  # type: ignore[arg-type]
    first, second = parsed(raw), parsed(raw)
    assert first.synthetic_id and first.message_id == second.message_id
    assert first.message_id.endswith("@no-message-id.invalid")


def test_a_huge_message_id_is_named_by_its_hash() -> None:
    found = parsed(mail("x", message_id="a" * 500))
    assert found.message_id.startswith("sha256:") and len(found.message_id) <= 200


def test_a_mail_without_a_sender_is_rejected_not_raised() -> None:
    assert isinstance(parse_mail(b"Subject: who?\r\n\r\nbody", CONFIG), Rejected)
    assert isinstance(parse_mail(b"", CONFIG), Rejected)
    assert isinstance(parse_mail(b"\x00\xff garbage", CONFIG), Rejected)


# ---- fuzz ---------------------------------------------------------------------------------

HEADER_NAMES = st.sampled_from([
    "From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "References", "Date",
    "Content-Type", "Content-Transfer-Encoding", "Content-Disposition", "MIME-Version",
    "Auto-Submitted", "Precedence", "Authentication-Results", "Delivered-To", "Return-Path",
    "Sender", "X-Autoreply"])
TRICKY = st.sampled_from([
    "=?utf-8?q?x=0D=0ABcc:_e@x.org?=", "=?x-unknown?b?////?=", "<a@b>", "<<>>", "\udcff",
    "multipart/mixed; boundary=", "multipart/report; report-type=delivery-status; boundary=b",
    "text/plain; charset=utf-7", "base64", "quoted-printable", "\x00", "\r", "(((", '"\\',
    "ann@example.org", f"support+{TOKEN}@gw.test", "--b", "=?", "?=", "\t ", ";;;", "@",
])
VALUES = st.lists(st.one_of(TRICKY, st.text(max_size=40)), max_size=6).map("".join)
HEADERS = st.lists(st.tuples(HEADER_NAMES, VALUES), max_size=12)
BODY = st.lists(st.one_of(TRICKY, st.text(max_size=60), st.just("\n--b\n")), max_size=10
                ).map("".join)


def _assemble(headers: list[tuple[str, str]], body: str) -> bytes:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return (head + "\r\n" + body).encode("utf-8", "surrogateescape")


def _check(result: Parsed | Rejected) -> None:
    assert isinstance(result, (Parsed, Rejected))
    # Rejecting a mail for what it lacks is fine; an exception caught inside is a bug here.
    assert not (isinstance(result, Rejected) and result.reason.startswith("unparseable")), \
        result.reason
    if isinstance(result, Parsed):
        found = result.mail
        for text in (found.subject, found.sender_name or "", found.sender):
            assert not any(c in text for c in "\r\n\x00")
        assert 0 < len(found.message_id) <= 200 and len(found.thread_refs) <= ids.MAX_REFS
        assert found.kind in ("message", "auto-reply", "bounce")
        assert found.thread_token is None or ids.is_thread_token(found.thread_token)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HEADERS, BODY)
def test_fuzzed_structured_mail_never_raises(headers: list[tuple[str, str]], body: str) -> None:
    _check(parse_mail(_assemble(headers, body), CONFIG))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzzed_bytes_never_raise(raw: bytes) -> None:
    _check(parse_mail(raw, CONFIG))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzzed_authentication_results_and_trimming_never_raise(text: str) -> None:
    parse_authentication_results(text)
    assert isinstance(trim_reply(text, ("en", "de")), str)


def test_composed_mail_round_trips_through_the_parser() -> None:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Ann <ann@example.org>"
    msg["To"] = f"support+{TOKEN}@gw.test"
    msg["Message-ID"] = "<rt@example.org>"
    msg.set_content("round trip")
    found = parsed(msg.as_bytes())
    assert (found.sender, found.sender_name, found.thread_token, found.text) == (
        "ann@example.org", "Ann", TOKEN, "round trip")


# ---- the fast paths give the standard parser's answers ---------------------------------------


def _tree(msg: Message) -> list[tuple[object, ...]]:
    """What parse_mail can read of a parsed message: every part's headers, type, payload and
    defects (the top-level boundary, which the stand-in replaces, and the top epilogue after
    the closing delimiter, which nothing reads, left out)."""
    out: list[tuple[object, ...]] = []
    for part in msg.walk():
        headers = [(k, v) for k, v in part.raw_items()
                   if not (part is msg and k.lower() == "content-type")]
        params = [p for p in part.get_params() or [] if not (part is msg and p[0] == "boundary")]
        payload = part.get_payload()
        out.append((headers, part.get_content_type(), params, part.is_multipart(),
                    payload if isinstance(payload, str) else len(payload),
                    [type(d).__name__ for d in part.defects], part.preamble,
                    None if part is msg else part.epilogue, part.get_boundary()
                    if part is not msg else None))
    return out


BOUNDARIES = st.sampled_from(["b", "bm1", "=_abc", "000000000000ab", "gw-parse-boundary-0",
                              "gw-parse-boundary", "a.b+c", "x y", "a:b", "'()+_,./=?-"])
PIECES = st.sampled_from([
    "--{b}\r\n", "--{b}--\r\n", "--{b}  \r\n", "--{b}-- \r\n", "--{b}x\r\n", "--{b}\n",
    "--{b}\r", "--{b}", " --{b}\r\n", "--{b}---\r\n", "--{i}\r\n", "--{i}--\r\n",
    "--gw-parse-boundary-0\r\n", "--gw-parse-boundary-1--\r\n", "Content-Type: text/plain\r\n",
    "Content-Type: text/html\r\n", "Content-Disposition: attachment; filename=a.txt\r\n",
    'Content-Type: multipart/alternative; boundary="{i}"\r\n', "Content-Type: message/rfc822\r\n",
    'Content-Type: multipart/mixed;\r\n boundary="{b}"\r\n',
    "Content-Type: message/delivery-status\r\n",
    "\r\n", "text {b} more\r\n", "hello\r\n", "> quoted\r\n", "From: x@y.org\r\n",
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BOUNDARIES, st.sampled_from(["in", "gw-parse-boundary-0-", "b", "bm1--"]),
       st.sampled_from(['"{b}"', "{b}", '"{b}"; charset=utf-8', '"{b}"; boundary="{b}"',
                        '"{b}"; report-type=delivery-status']),
       st.sampled_from(["multipart/mixed", "multipart/alternative", "multipart/report",
                        "Multipart/Related", "multipart/digest"]),
       st.booleans(), st.sampled_from(["", "Content-Type: text/plain\r\n", "X-A: 1\r\nb\r\n"]),
       st.lists(PIECES, max_size=30))
def test_the_stand_in_boundary_gives_the_tree_the_mail_s_own_boundary_gives(
        boundary: str, inner: str, param: str, ctype: str, folded: bool, before: str,
        body: list[str]) -> None:
    head = (f"From: ann@example.org\r\nSubject: x\r\n{before}Content-Type: {ctype};"
            f"{chr(13) + chr(10) if folded else ''} boundary={param}\r\n\r\n")
    raw = (head + "".join(body)).format(b=boundary, i=inner).encode()
    assert _tree(parse._read(raw)) == _tree(BytesParser(policy=parse.POLICY).parsebytes(raw))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(list("aZ09._+- <>@\"(),;:\\'\t") + ["ann", "example.org", "Ann"]),
                max_size=12).map("".join))
def test_the_plain_address_shortcut_answers_as_parseaddr(text: str) -> None:
    text = " ".join(text.split())
    assert parse._parseaddr(text) == parseaddr(text)
    for plain in (f"{text} <ann@example.org>", f"{text}@example.org", "Ann Lee <a.b+c@x-y.org>"):
        assert parse._parseaddr(plain) == parseaddr(plain)
