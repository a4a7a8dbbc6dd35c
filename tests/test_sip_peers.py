"""The SIP edge against real peers: SIPp as caller and as agent, baresip and pyVoIP as phones.

Each test starts a gateway on an ephemeral SIP port and the peers it needs, and stops them
by PID (tests/peers.py). The caller's WhatsApp chat is in the core first, so the agent's
context link must bring it back. Retransmission is tested with a relay that loses the first
INVITE on either leg.
"""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningGateway
from tests.helpers import wait_until, whatsapp
from tests.peers import (
    SIPP_SCENARIOS,
    UAS_CHECK_CONTEXT_HEADERS,
    UAS_RING_UNTIL_CANCEL,
    Baresip,
    SippUas,
    free_udp_port,
    run_sipp_uac,
)
from tests.sip_client import DroppingRelay

pytestmark = pytest.mark.peers

PUBLIC_URL = "https://gw.example"
CALLER = "+14155550100"
SERVICE = "support"
ALICE = {"id": "12", "name": "Alice", "sip_user": "alice", "sip_password": "alice-secret"}

# Scenarios in tests/sipp/: the built-in uac with the caller's number in From (-key caller
# +1…), the caller hanging up; the same caller when the agent hangs up; an agent's phone that
# answers, waits a moment and hangs up (BYE along the Record-Route); the peers' CANCEL
# scenario calling from the caller's number.
UAC_FROM_NUMBER = SIPP_SCENARIOS / "uac_from_number.xml"
UAC_AGENT_HANGS_UP = SIPP_SCENARIOS / "uac_agent_hangs_up.xml"
UAS_ANSWER_THEN_HANG_UP = SIPP_SCENARIOS / "uas_answer_then_hang_up.xml"
UAC_CANCEL_FROM_NUMBER = SIPP_SCENARIOS / "uac_cancel_from_number.xml"


class Stage:
    """A gateway plus what the tests read from it."""

    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw
        self.port: int = gw.gw.channels["sip"].edge.port
        self.address = f"127.0.0.1:{self.port}"

    async def chat(self) -> str:
        """The caller's earlier WhatsApp chat; its conversation id."""
        result = await self.gw.gw.core.ingest(
            whatsapp(CALLER, "Hi, my parcel 4711 never arrived"))
        assert result.conversation_id is not None
        return result.conversation_id

    async def bundle(self, call_info: str) -> dict[str, Any]:
        url = re.search(r"<(https?://[^>]+)>;purpose=info", call_info)
        assert url, call_info
        path = url.group(1).removeprefix(PUBLIC_URL)
        async with self.gw.http.get(self.gw.url + path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def transcript(self, conversation_id: str, until: str, timeout: float = 10.0
                         ) -> list[str]:
        return await self.gw.conversation_texts(conversation_id, until, timeout)

    async def registered(self, user: str, timeout: float = 10.0) -> None:
        agent = self.gw.gw.agents.by_sip_user(user)
        assert agent is not None
        await wait_until(lambda: bool(agent.registrations), timeout=timeout,
                         what=f"{user} to register")

    async def caller(self, scenario: Path = UAC_FROM_NUMBER, *, target: str | None = None,
                     calls: int = 1, call_length_ms: int = 100, transport: str = "u1") -> Any:
        return await run_sipp_uac(
            target or self.address, service=SERVICE, calls=calls, rate=10,
            scenario_xml=scenario, call_length_ms=call_length_ms, transport=transport,
            extra_args=["-key", "caller", CALLER], timeout=30,
        )


async def stage(start_gateway: Any, **overrides: Any) -> Stage:
    overrides.setdefault("sip_timer_t1_ms", 100)
    gw = await start_gateway(public_url=PUBLIC_URL, sip_port=0, sip_service_users=[SERVICE],
                             **overrides)
    return Stage(gw)


def sipp_agent(uas: SippUas) -> dict[str, str]:
    return {"id": "12", "name": "Agent 12", "contact": f"sip:agent@{uas.address}"}


async def test_sipp_caller_reaches_sipp_agent_with_the_chat_behind_call_info(
    start_gateway: Any,
) -> None:
    async with SippUas(UAS_CHECK_CONTEXT_HEADERS, calls=1) as uas:
        s = await stage(start_gateway, agents=[sipp_agent(uas)])
        conversation_id = await s.chat()
        result = await s.caller()
        assert result.ok, result.describe()
        agent_side = await uas.wait(timeout=10)
    assert (agent_side.successful, agent_side.failed) == (1, 0), agent_side.describe()
    assert f"X-Conversation-Id: {conversation_id}" in agent_side.logs
    call_info = next(line for line in agent_side.logs.splitlines() if "Call-Info" in line)
    bundle = await s.bundle(call_info)
    assert bundle["conversation_id"] == conversation_id
    texts = [e["text"] or "" for e in bundle["transcript"]]
    assert "Hi, my parcel 4711 never arrived" in texts
    assert any(t == f"incoming call from voice:{CALLER}" for t in texts)
    assert "parcel" not in agent_side.messages  # the chat travels by link, never in headers
    story = await s.transcript(conversation_id, until="call ended")
    assert "answered by agent 12" in story
    assert story[-1].startswith("call ended after") and "with agent 12 (caller hung up)" in \
        story[-1]


async def test_agent_side_bye_ends_the_call(start_gateway: Any) -> None:
    async with SippUas(UAS_ANSWER_THEN_HANG_UP, calls=1) as uas:
        s = await stage(start_gateway, agents=[sipp_agent(uas)])
        conversation_id = await s.chat()
        result = await s.caller(UAC_AGENT_HANGS_UP)
        assert result.ok, result.describe()
        agent_side = await uas.wait(timeout=10)
    assert agent_side.successful == 1, agent_side.describe()
    assert f"Route: <sip:127.0.0.1:{s.port};lr;dlg=" in agent_side.messages  # BYE came via us
    story = await s.transcript(conversation_id, until="call ended")
    assert ["call ringing", "answered by agent 12"] == [
        t for t in story if t in ("call ringing", "answered by agent 12")]
    assert story[-1].endswith("with agent 12 (agent hung up)")


async def test_caller_cancels_before_the_agent_answers(start_gateway: Any) -> None:
    async with SippUas(UAS_RING_UNTIL_CANCEL, calls=1) as uas:
        s = await stage(start_gateway, agents=[sipp_agent(uas)])
        conversation_id = await s.chat()
        result = await s.caller(UAC_CANCEL_FROM_NUMBER, call_length_ms=200)
        assert result.ok, result.describe()
        assert "SIP/2.0 487 Request Terminated" in result.messages
        agent_side = await uas.wait(timeout=10)
    assert agent_side.successful == 1, agent_side.describe()
    story = await s.transcript(conversation_id, until="call ended")
    assert "call ringing" in story
    assert story[-1].endswith("(caller hung up before answer)")
    assert s.gw.gw.agents.get("12").active_calls == 0  # type: ignore[union-attr]


async def test_lost_invite_towards_the_agent_is_retransmitted(start_gateway: Any) -> None:
    async with SippUas(UAS_CHECK_CONTEXT_HEADERS, calls=1) as uas, \
            DroppingRelay(uas.port) as relay:
        s = await stage(start_gateway, agents=[
            {"id": "12", "contact": f"sip:agent@127.0.0.1:{relay.port}"}])
        result = await s.caller()
        assert result.ok, result.describe()
        agent_side = await uas.wait(timeout=10)
    assert len(relay.dropped) == 1 and relay.forwarded >= 1
    assert (agent_side.successful, agent_side.failed) == (1, 0), agent_side.describe()


async def test_lost_invite_from_the_caller_is_retransmitted_by_it(start_gateway: Any) -> None:
    async with SippUas(UAS_CHECK_CONTEXT_HEADERS, calls=1) as uas:
        s = await stage(start_gateway, agents=[sipp_agent(uas)])
        async with DroppingRelay(s.port) as relay:
            result = await s.caller(target=f"127.0.0.1:{relay.port}")
            assert result.ok, result.describe()
        agent_side = await uas.wait(timeout=10)
    assert len(relay.dropped) == 1
    assert (agent_side.successful, agent_side.failed) == (1, 0)


async def test_sipp_caller_over_tcp(start_gateway: Any) -> None:
    async with SippUas(UAS_CHECK_CONTEXT_HEADERS, calls=2) as uas:
        s = await stage(start_gateway, agents=[sipp_agent(uas)])
        result = await s.caller(calls=2, transport="t1")
        assert result.ok, result.describe()
        assert "SIP/2.0/TCP" in result.messages
        agent_side = await uas.wait(timeout=10)
    assert (agent_side.successful, agent_side.failed) == (2, 0)


async def test_baresip_registers_with_digest_and_answers_a_routed_call(
    start_gateway: Any,
) -> None:
    # baresip 1.0 (libre 1.x) gives up on a challenge list that holds SHA-256, so the
    # gateway is told to offer MD5 only (GATEWAY_SIP_DIGEST_ALGORITHMS, docs/sip.md).
    s = await stage(start_gateway, agents=[ALICE], sip_digest_algorithms=["MD5"])
    conversation_id = await s.chat()
    async with Baresip("alice", "alice-secret", registrar=s.address) as phone:
        await s.registered("alice")
        result = await s.caller(call_length_ms=300)
        assert result.ok, result.describe() + phone.log()[-2000:]
        await phone.wait_for_log(r"X-Conversation-Id")
        # The INVITE as baresip logged it (-s trace), headers up to the blank line. Read
        # from the log itself: a log line between two traced messages can hide the second
        # from Baresip.received_invites().
        invites = re.findall(r"^INVITE sip:alice.*?(?=^\s*$)", phone.log(), re.M | re.S)
    assert len(invites) == 1
    assert f"X-Conversation-Id: {conversation_id}" in invites[0]
    bundle = await s.bundle(invites[0])
    assert "Hi, my parcel 4711 never arrived" in [e["text"] for e in bundle["transcript"]]
    story = await s.transcript(conversation_id, until="call ended")
    assert "answered by agent 12" in story


class PyVoipPhone:
    """pyVoIP 1.6.8 as an agent's phone: its threads run beside the loop, never on it.

    pyVoIP quirks (BASELINES.md): `import pyVoIP.VoIP` before anything else from it, it
    REGISTERs on start, answers through a Timer thread ~1 s after the INVITE, and sends its
    answers to the configured server (the gateway), which is what a registered phone does.
    """

    def __init__(self, gateway_port: int, user: str, password: str) -> None:
        import pyVoIP.VoIP  # noqa: F401  (first: pyVoIP.SIP imports it circularly)
        from pyVoIP.VoIP import VoIPPhone

        self.invites: list[dict[str, Any]] = []
        self.answered = threading.Event()
        rtp = free_udp_port()
        self.phone = VoIPPhone(
            "127.0.0.1", gateway_port, user, password, myIP="127.0.0.1",
            callCallback=self._on_call, sipPort=free_udp_port(), rtpPortLow=rtp,
            rtpPortHigh=rtp + 10,
        )

    def _on_call(self, call: Any) -> None:  # runs in a pyVoIP thread
        self.invites.append(dict(call.request.headers))
        call.answer()
        self.answered.set()

    async def __aenter__(self) -> PyVoipPhone:
        await asyncio.to_thread(self.phone.start)  # blocks until REGISTER is answered
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.phone.stop)


async def test_pyvoip_phone_registers_and_answers_a_routed_call(start_gateway: Any) -> None:
    s = await stage(start_gateway, agents=[ALICE])  # SHA-256 and MD5 offered: it uses MD5
    conversation_id = await s.chat()
    async with PyVoipPhone(s.port, "alice", "alice-secret") as phone:
        await s.registered("alice")
        result = await s.caller(call_length_ms=200)
        assert result.ok, result.describe()
        assert await asyncio.to_thread(phone.answered.wait, 5)
    headers = phone.invites[0]
    assert headers["X-Conversation-Id"] == conversation_id
    bundle = await s.bundle(headers["Call-Info"])
    assert bundle["conversation_id"] == conversation_id
    story = await s.transcript(conversation_id, until="call ended")
    assert "answered by agent 12" in story
    assert story[-1].endswith("with agent 12 (caller hung up)")
