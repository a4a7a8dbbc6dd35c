"""The console in headless Chromium against a running gateway: sign in, a live inbox fed by
signed webhooks, reply, send and check a code, the screen pop of a call offered to the
signed-in agent, customer HTML shown as text, and the 400 px layout. README screenshots come
from here (GATEWAY_SAVE_SCREENSHOTS=1 writes them to docs/img/)."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio

from tests.browser import screenshot_path
from gateway.demo_phone import SoftPhone
from tests.conftest import PUBLIC_URL, Gateways
from tests.console.server import ALICE_TOKEN, WorkspaceGateway, start_workspace
from tests.helpers import code_from
from tests.standins import TwilioStandin, new_twilio_sid

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.peers]
expect: Any = None  # playwright.async_api.expect, imported once the browser exists
ZONE = "Asia/Kolkata"  # +05:30: local times differ from UTC in the minutes too
HTML = '<img src=x onerror="document.title=\'pwned\'"><b id="injected">bold</b><script>window.pwned=1</script>'


@pytest_asyncio.fixture(loop_scope="session")
async def twilio() -> AsyncIterator[TwilioStandin]:
    async with TwilioStandin(new_twilio_sid("AC"), secrets.token_hex(16)) as standin:
        yield standin


@pytest_asyncio.fixture(loop_scope="session")
async def ws(sqlite_url: str, twilio: TwilioStandin) -> AsyncIterator[WorkspaceGateway]:
    # The conftest's gateway pool, in the session loop the browser lives in.
    server = await start_workspace(Gateways(sqlite_url), twilio=twilio, heartbeat=1.0)
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def console_pages(chromium: Any, server: WorkspaceGateway) -> AsyncIterator[Any]:
    """`page = await open_console(token=…, width=…)`: a signed-in console on `server` in a
    fresh context. Fails the test on an uncaught script error or a Content-Security-Policy
    violation."""
    global expect
    from playwright.async_api import expect as playwright_expect

    expect = playwright_expect
    contexts: list[Any] = []
    problems: list[str] = []

    async def open_console(token: str | None = ALICE_TOKEN, width: int = 1200,
                           height: int = 800) -> Any:
        context = await chromium.new_context(viewport={"width": width, "height": height},
                                             locale="en-GB", timezone_id=ZONE)
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
        page.on("console", lambda msg: problems.append(msg.text)
                if "Content Security Policy" in msg.text else None)
        await page.goto(server.url + "/console")
        if token is not None:
            await sign_in(page, token)
        return page

    try:
        yield open_console
    finally:
        for context in contexts:
            await context.close()
    assert problems == []


@pytest_asyncio.fixture(loop_scope="session")
async def console(chromium: Any, ws: WorkspaceGateway) -> AsyncIterator[Callable[..., Any]]:
    async with console_pages(chromium, ws) as open_console:
        yield open_console


async def sign_in(page: Any, token: str) -> None:
    await page.fill("#token", token)
    await page.click("#signin-form button[type=submit]")
    await expect(page.locator("#live")).to_have_attribute("data-state", "on")


def inbox_row(page: Any, n: int = 0) -> Any:
    return page.locator("#inbox li").nth(n)


async def no_horizontal_overflow(page: Any) -> None:
    width, client = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert width <= client, f"the page is {width}px wide in a {client}px viewport"


async def test_sign_in_keeps_the_token_in_the_tab_never_in_a_url(
    console: Any, ws: WorkspaceGateway
) -> None:
    await ws.sms("+14155550201", "Where is order 1234?")
    page = await console(token=None)
    await page.fill("#token", "not-a-token-of-this-gateway")
    await page.click("#signin-form button[type=submit]")
    await expect(page.locator("#signin-error")).to_contain_text("not an agent token")
    await sign_in(page, ALICE_TOKEN)
    await expect(page.locator("#who")).to_have_text("Alice Agent (alice)")
    await expect(inbox_row(page)).to_contain_text("Where is order 1234?")
    assert ALICE_TOKEN not in page.url
    assert await page.evaluate("sessionStorage.getItem('gateway.agent-token')") == ALICE_TOKEN
    await page.reload()  # the same tab: still signed in, the stream back
    await expect(page.locator("#live")).to_have_attribute("data-state", "on")
    await expect(inbox_row(page)).to_contain_text("Where is order 1234?")
    await page.click("#sign-out")
    await expect(page.locator("#signin")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_the_inbox_moves_live_when_a_signed_webhook_arrives(
    console: Any, ws: WorkspaceGateway
) -> None:
    await ws.sms("+14155550211", "first customer")
    await ws.sms("+14155550212", "second customer")
    page = await console()
    await expect(inbox_row(page)).to_contain_text("second customer")
    assert await ws.sms("+14155550211", "first customer again") == 200
    await expect(inbox_row(page)).to_contain_text("first customer again")
    await expect(inbox_row(page, 1)).to_contain_text("second customer")
    await expect(inbox_row(page).locator(".chip.waiting")).to_have_text("2")
    # A customer nobody has seen yet appears on top, without a reload.
    assert await ws.sms("+14155550213", "brand new", whatsapp=True, profile_name="Nia") == 200
    await expect(inbox_row(page)).to_contain_text("Nia")
    await expect(inbox_row(page)).to_contain_text("brand new")
    await expect(page.locator("#inbox li")).to_have_count(3)


async def test_reply_send_a_code_and_check_the_code_a_caller_reads_out(
    console: Any, ws: WorkspaceGateway, twilio: TwilioStandin, tmp_path: Path
) -> None:
    number = "+14155550221"
    await ws.sms(number, "I need to change my delivery address")
    page = await console()
    await inbox_row(page).click()
    await expect(page.locator("#badge")).to_contain_text("the customer has not completed a verification")
    await expect(page.locator("#disclosure")).to_have_text("disclosure: limited")
    await page.fill("#reply-text", "Happy to help. I will send you a code first.")
    await page.click("#reply-send")
    await expect(page.locator("#action-notice")).to_contain_text(f"Reply queued on sms to sms:{number}")
    sent = await twilio.wait_for_messages(1)
    assert sent[0]["Body"] == "Happy to help. I will send you a code first."
    reply = page.locator("#timeline li.out").last
    await expect(reply).to_contain_text("agent:alice")
    await expect(reply.locator(".status")).to_have_text(
        re.compile(r"pending|sending|sent|queued|accepted"))
    # Send a code: the SMS goes out, the timeline shows that a code was sent (not the code).
    await page.click("#code-send")
    await expect(page.locator("#action-notice")).to_contain_text(f"Code sent to sms:{number}")
    sent = await twilio.wait_for_messages(2)
    code = code_from(sent[1]["Body"])
    await expect(page.locator("#timeline li.code")).to_contain_text("[verification code sent to")
    assert code not in await page.locator("#timeline").inner_text()
    # That refresh shows where the reply stands by now: handed to Twilio.
    await expect(reply.locator(".status")).to_have_text(re.compile(r"sent|queued|accepted"))
    # The customer calls; the agent types the code the caller reads out.
    route = await ws.offer_call(number, "alice")
    await expect(page.locator("#pop")).to_be_visible()
    await expect(page.locator("#check-send")).to_be_enabled()
    await page.fill("#check-code", f"{code[:3]} {code[3:]}")
    await page.click("#check-send")
    await expect(page.locator("#action-notice")).to_contain_text("the call is verified")
    # The real endpoint (branch `trust`): the call's own context link is now full.
    async with ws.http.get(route.context_url.replace(ws.gw.settings.public_url,
                                                     ws.url)) as resp:
        bundle = await resp.json()
    assert bundle["leg"]["id"] == route.leg_id and bundle["disclosure"] == "full"
    assert bundle["verification"] is not None
    # Times are the agent's: this context runs in Asia/Kolkata.
    first = page.locator("#timeline li time").first
    iso = await first.get_attribute("datetime")
    local = datetime.fromisoformat(iso).astimezone(ZoneInfo(ZONE))
    assert await first.inner_text() == local.strftime("%d/%m/%Y, %H:%M:%S")
    await page.screenshot(path=screenshot_path("conversation.png", tmp_path))


@pytest_asyncio.fixture(loop_scope="session")
async def sip_ws(sqlite_url: str, twilio: TwilioStandin) -> AsyncIterator[WorkspaceGateway]:
    """The workspace gateway with its SIP edge: Alice's and Bob's phones REGISTER there."""
    server = await start_workspace(Gateways(sqlite_url), twilio=twilio, heartbeat=1.0,
                                   sip=True)
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def sip_console(chromium: Any, sip_ws: WorkspaceGateway
                      ) -> AsyncIterator[Callable[..., Any]]:
    async with console_pages(chromium, sip_ws) as open_console:
        yield open_console


@pytest_asyncio.fixture(loop_scope="session")
async def phones(sip_ws: WorkspaceGateway) -> AsyncIterator[Callable[..., Any]]:
    """`await phones(user)`: a softphone at `sip_ws`'s SIP edge (an agent's registers)."""
    opened: list[SoftPhone] = []

    async def open_phone(user: str) -> SoftPhone:
        opened.append(await sip_ws.phone(user))
        return opened[-1]

    try:
        yield open_phone
    finally:
        for phone in opened:
            phone.close()


async def test_screen_pop_opens_the_context_of_the_sip_call_ringing_the_agents_phone(
    sip_console: Any, sip_ws: WorkspaceGateway, twilio: TwilioStandin, phones: Any,
    tmp_path: Path
) -> None:
    ws, number = sip_ws, "+14155550231"
    alice_phone, bob_phone = await phones("alice"), await phones("bob")
    # The story: a WhatsApp customer proves their number, then calls with the dial-in PIN.
    await ws.sms(number, "My card was charged twice for order 5512", whatsapp=True,
                 profile_name="Ann Lee")
    page = await sip_console()
    await expect(inbox_row(page)).to_contain_text("Ann Lee")
    status, found = await ws.api("GET", "/api/v1/customers",
                                 params={"address": f"whatsapp:{number}"})
    assert status == 200, found
    cid = found["conversations"][0]["id"]
    await ws.api("POST", f"/api/v1/conversations/{cid}/messages", token=ALICE_TOKEN,
                 json={"text": "Sorry about that. Let me verify you first."})
    await ws.api("POST", f"/api/v1/conversations/{cid}/verifications", token=ALICE_TOKEN,
                 json={})
    code = code_from((await twilio.wait_for_messages(2))[1]["Body"])
    await ws.sms(number, code, whatsapp=True, profile_name="Ann Lee")
    await ws.api("POST", f"/api/v1/conversations/{cid}/escalations", token=ALICE_TOKEN,
                 json={"channel": "voice", "mode": "dial-in"})
    sent = await twilio.wait_for_messages(4)
    pin = code_from(next(m["Body"] for m in sent if "PIN" in m["Body"]))
    # Someone dials Bob's own SIP user: Bob's phone rings and he takes the call. It does
    # not pop on Alice's console; Bob stays on it, so Alice is the least busy agent.
    other = await phones("other-caller")
    dialling_bob = asyncio.create_task(other.dial("bob", "+14155550299"))
    bob_invite = await bob_phone.ringing(timeout=15)
    bob_dialog = await bob_phone.pick_up(bob_invite)
    other_dialog = await dialling_bob
    await ws.sms("+14155550232", "marker after bob's call")
    # Anywhere in the inbox, not first: Bob's call's answer is recorded after its 200, so
    # under load it can commit after the marker and put that call's conversation on top.
    # The console has heard the offer to Bob either way (it came before the 200).
    await expect(page.locator("#inbox")).to_contain_text("marker after bob's call")
    assert await page.locator("#pop").is_hidden()
    # Ann dials the support line with her PIN from a softphone; the gateway sends the INVITE
    # to Alice's registered phone: the context opens by itself while it rings.
    ann = await phones("ann")
    started = time.monotonic()
    dialling = asyncio.create_task(ann.dial(f"support*{pin}", "+14155550298"))
    invite = await alice_phone.ringing(timeout=15)
    await expect(page.locator("#pop-title")).to_have_text("Incoming call")
    print(f"screen pop after {1000 * (time.monotonic() - started):.0f} ms")
    assert not dialling.done()  # still ringing: nobody has picked up
    await expect(page.locator("#pop-customer")).to_have_text("Ann Lee")
    await expect(page.locator("#pop-badge")).to_contain_text("verified by whatsapp-otp")
    await expect(page.locator("#pop-timeline")).to_contain_text("My card was charged twice")
    await expect(page.locator("#pop-timeline")).not_to_contain_text(code)
    # The pop is the context of the very call ringing Alice's phone: its Call-ID, the
    # conversation its X-Conversation-Id names, and the bundle its Call-Info links to.
    assert invite.headers.get("X-Conversation-Id") == cid
    await expect(page.locator("#pop")).to_have_attribute("data-call-ref", invite.call_id)
    link = re.fullmatch(r"<([^>]+)>;purpose=info", invite.headers.get("Call-Info") or "")
    assert link, invite.headers.get("Call-Info")
    async with ws.http.get(link.group(1).replace(PUBLIC_URL, ws.url)) as resp:
        bundle = await resp.json()
    assert resp.status == 200 and bundle["customer"]["id"] == found["id"], bundle
    await expect(inbox_row(page)).to_contain_text("Ann Lee")
    await page.screenshot(path=screenshot_path("screen-pop.png", tmp_path))
    await page.click("#pop-open")
    await expect(page.locator("#conversation .legs")).to_contain_text("escalation")
    # Alice picks up; Ann hangs up (BYE): the pop says so and the timeline gets the end.
    answered = await alice_phone.pick_up(invite)
    ann_dialog = await dialling
    await asyncio.gather(ann.hang_up(ann_dialog), alice_phone.hung_up())
    await expect(page.locator("#pop-title")).to_have_text("Call context (ended)")
    await expect(page.locator("#conversation")).to_contain_text(
        re.compile(r"call ended after \d+ (min )?\d* ?s with agent alice"))
    await page.click("#pop-dismiss")
    await expect(page.locator("#pop")).to_be_hidden()
    # Bob's call ends too; nothing pops for Alice.
    await asyncio.gather(other.hang_up(other_dialog), bob_phone.hung_up())
    assert answered.call_id == invite.call_id and bob_dialog.call_id == bob_invite.call_id
    await ws.sms("+14155550233", "marker after bob hung up")
    await expect(inbox_row(page)).to_contain_text("marker after bob hung up")
    assert await page.locator("#pop").is_hidden()
    await page.screenshot(path=screenshot_path("inbox.png", tmp_path))


async def test_screen_pop_of_a_twilio_voice_call_dialled_to_the_agent(
    console: Any, ws: WorkspaceGateway
) -> None:
    number = "+14155550235"
    await ws.sms(number, "Calling you about my refund")
    page = await console()
    await expect(inbox_row(page)).to_contain_text("Calling you about my refund")
    # Twilio Voice: the caller skips the PIN (#); the gateway answers <Dial><Sip> to an agent's
    # phone (if Bob's first, he does not answer and the <Dial action> moves on to Alice's).
    call = await ws.twilio_call(number, None, "alice")
    await expect(page.locator("#pop-title")).to_have_text("Incoming call")
    await expect(page.locator("#pop")).to_have_attribute("data-call-ref", call.form["CallSid"])
    await expect(page.locator("#pop-timeline")).to_contain_text("Calling you about my refund")
    await call.hang_up()
    await expect(page.locator("#pop-title")).to_have_text("Call context (ended)")


async def test_customer_html_is_shown_as_text(console: Any, ws: WorkspaceGateway) -> None:
    await ws.sms("+14155550241", HTML, whatsapp=True, profile_name='<i id="name-injected">Eve</i>')
    page = await console()
    await expect(inbox_row(page)).to_contain_text('<b id="injected">bold</b>')
    await expect(inbox_row(page)).to_contain_text('<i id="name-injected">Eve</i>')
    await inbox_row(page).click()
    await expect(page.locator("#timeline li").first).to_contain_text(HTML)
    await ws.offer_call("+14155550241", "alice")
    await expect(page.locator("#pop-timeline")).to_contain_text(HTML)
    injected = await page.evaluate(
        "[document.querySelectorAll('#injected, #name-injected, img, script:not([src])').length,"
        " document.title, typeof window.pwned]")
    assert injected == [0, "Agent console", "undefined"]


async def test_usable_at_400_px(console: Any, ws: WorkspaceGateway, tmp_path: Path) -> None:
    long = "x" * 30 + " " + "averyveryverylongwordwithoutanyspaceatallthatwouldoverflow" * 2
    await ws.sms("+14155550251", long)
    page = await console(width=400, height=860)
    await expect(inbox_row(page)).to_be_visible()
    await no_horizontal_overflow(page)
    await page.screenshot(path=screenshot_path("console-400px-inbox.png", tmp_path))
    await inbox_row(page).click()
    await expect(page.locator("#timeline li").first).to_contain_text("averyvery")
    await expect(page.locator("#inbox-pane")).to_be_hidden()  # one column: the conversation
    await no_horizontal_overflow(page)
    await ws.offer_call("+14155550251", "alice")
    await expect(page.locator("#pop")).to_be_visible()
    await no_horizontal_overflow(page)
    await page.screenshot(path=screenshot_path("console-400px.png", tmp_path), full_page=True)
    await page.click(".back")
    await expect(page.locator("#inbox-pane")).to_be_visible()
    await page.click("#nav-reports")
    await expect(page.locator("#report-table tbody tr").first).to_be_visible()
    await no_horizontal_overflow(page)


async def test_the_journeys_page_shows_a_table_and_a_chart(
    console: Any, ws: WorkspaceGateway
) -> None:
    await ws.sms("+14155550261", "one")
    await ws.sms("+14155550262", "two", whatsapp=True)
    page = await console()
    await page.click("#nav-reports")
    await page.select_option("#r-period", "month")
    await page.click("#report-form button[type=submit]")
    totals = page.locator("#report-totals")
    await expect(totals).to_contain_text("2conversations")
    row = page.locator("#report-table tbody tr").last
    await expect(row.locator("td").nth(1)).to_have_text("2")
    await expect(row.locator("td").nth(2)).to_have_text("sms 1, whatsapp 1")
    width = await page.locator("#report-chart .seg.conv").last.evaluate("e => e.style.width")
    assert width == "100%"
