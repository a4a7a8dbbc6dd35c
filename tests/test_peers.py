"""The real peers start, answer and stop: PostgreSQL, SIPp, Kamailio, baresip.

Each test skips (or fails with GATEWAY_REQUIRE_PEERS=1) when its binary is absent.
"""

from __future__ import annotations

import os

import pytest

from tests.peers import (
    SIPP_SCENARIOS,
    UAC_INVITE_THEN_CANCEL,
    UAC_WITH_CONTEXT_HEADERS,
    UAS_ANSWER_WITHOUT_RINGING,
    UAS_CHECK_CONTEXT_HEADERS,
    UAS_RING_UNTIL_CANCEL,
    Baresip,
    Kamailio,
    PostgresServer,
    SippUas,
    context_header_keys,
    free_tcp_port,
    free_udp_port,
    run_sipp_uac,
    sip_options_ping,
    udp_port_bound,
)

pytestmark = pytest.mark.peers

CONTEXT_URL = "http://127.0.0.1:8080/api/v1/contexts/Zm9vYmFyYmF6cXV4cXV1eA"


def test_free_ports_are_bindable_and_distinct_from_used_ones() -> None:
    tcp, udp = free_tcp_port(), free_udp_port()
    assert 1024 < tcp < 65536 and 1024 < udp < 65536
    assert not udp_port_bound(udp)


async def test_postgres_accepts_the_gateway_role_and_makes_fresh_databases() -> None:
    asyncpg = pytest.importorskip("asyncpg")
    with PostgresServer() as server:
        assert server.url.startswith("postgresql+asyncpg://gateway:gateway@127.0.0.1:")
        conn = await asyncpg.connect(server.dsn)
        try:
            assert await conn.fetchval("SELECT 1") == 1
            assert await conn.fetchval("SELECT current_user") == "gateway"
        finally:
            await conn.close()

        first, second = server.create_database(), server.create_database()
        assert first != second
        dsn = second.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE t (id int)")  # owned by gateway: it may create
            assert await conn.fetchval("SELECT count(*) FROM t") == 0
        finally:
            await conn.close()
        pid, directory = server._child.pid, server.directory
    assert not os.path.exists(directory)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_sipp_uac_completes_calls_against_sipp_uas() -> None:
    async with SippUas() as uas:
        result = await run_sipp_uac(uas.address, calls=5, rate=20)
        assert result.ok, result.describe()
        assert (result.successful, result.failed) == (5, 0)
        assert "INVITE sip:service@" in result.messages
        assert "SIP/2.0 200 OK" in uas.messages()
        await uas.stop(grace=0.5)  # the built-in uas lingers 4 s in timewait after each call


async def test_uas_checking_context_headers_accepts_them_and_logs_them() -> None:
    async with SippUas(UAS_CHECK_CONTEXT_HEADERS, calls=2) as uas:
        result = await run_sipp_uac(
            uas.address,
            calls=2,
            rate=20,
            scenario_xml=UAC_WITH_CONTEXT_HEADERS,
            extra_args=context_header_keys(CONTEXT_URL, "conv-42"),
        )
        assert result.ok, result.describe()
        uas_result = await uas.wait(timeout=10)
    assert (uas_result.successful, uas_result.failed) == (2, 0), uas_result.describe()
    assert f"Call-Info: <{CONTEXT_URL}>;purpose=info" in uas_result.logs
    assert "X-Conversation-Id: conv-42" in uas_result.logs
    assert "X-Conversation-Id: conv-42" in uas_result.messages


async def test_uas_checking_context_headers_rejects_an_invite_without_them() -> None:
    async with SippUas(UAS_CHECK_CONTEXT_HEADERS) as uas:
        result = await run_sipp_uac(uas.address, calls=1, rate=10)  # plain INVITE
        assert (result.successful, result.failed) == (0, 1)
        assert "400 Missing Context Headers" in result.errors
        uas_result = await uas.stop()
    assert uas_result.failed == 1
    assert "Failed regexp match: header Call-Info: not found" in uas_result.errors


async def test_uac_cancels_a_ringing_call() -> None:
    async with SippUas(UAS_RING_UNTIL_CANCEL, calls=2) as uas:
        result = await run_sipp_uac(
            uas.address, calls=2, rate=20, scenario_xml=UAC_INVITE_THEN_CANCEL, call_length_ms=50
        )
        assert result.ok, result.describe()
        assert "SIP/2.0 487 Request Terminated" in result.messages
        uas_result = await uas.wait(timeout=10)
    assert (uas_result.successful, uas_result.failed) == (2, 0), uas_result.describe()


async def test_kamailio_relays_calls_statelessly() -> None:
    async with SippUas(UAS_ANSWER_WITHOUT_RINGING) as uas, Kamailio(uas.port) as relay:
        assert relay.port != uas.port and udp_port_bound(relay.port)
        result = await run_sipp_uac(relay.address, calls=5, rate=50, call_length_ms=10)
        assert result.ok, result.describe()
        # Kamailio added its own Via on the way to the UAS.
        assert f"Via: SIP/2.0/UDP 127.0.0.1:{relay.port};branch=" in uas.messages()
        main_pid = relay._child.pid
    with pytest.raises(ProcessLookupError):
        os.kill(main_pid, 0)


async def test_baresip_starts_answers_options_and_stops() -> None:
    async with Baresip("alice") as phone:
        assert udp_port_bound(phone.sip_port)
        status = await sip_options_ping(phone.sip_port, user="alice")
        assert status is not None and status.startswith("SIP/2.0 200"), status
        answer = await phone.command("callstat")
        assert answer["ok"] is True
        pid, directory = phone._child.pid, phone.directory
    assert "baresip is ready." in phone.final_log
    assert not os.path.exists(directory)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_baresip_auto_answers_and_shows_the_context_headers_it_received() -> None:
    async with Baresip("alice") as phone:
        result = await run_sipp_uac(
            phone.address,
            service="alice",
            calls=1,
            rate=1,
            call_length_ms=200,
            scenario_xml=UAC_WITH_CONTEXT_HEADERS,
            extra_args=context_header_keys(CONTEXT_URL, "conv-7"),
        )
        assert result.ok, result.describe() + phone.log()[-3000:]
        invites = phone.received_invites()
        assert len(invites) == 1
        assert f"Call-Info: <{CONTEXT_URL}>;purpose=info" in invites[0]
        assert "X-Conversation-Id: conv-7" in invites[0]
        await phone.wait_for_log(r"Call established")


REGISTRAR_ACCEPTING_ANYONE = SIPP_SCENARIOS / "registrar_accepting_anyone.xml"


async def test_baresip_registers_its_account_with_the_given_registrar() -> None:
    async with SippUas(REGISTRAR_ACCEPTING_ANYONE) as registrar:
        async with Baresip("bob", "pw", registrar=registrar.address) as phone:
            await phone.wait_for_log(r"bob@127\.0\.0\.1.*200 OK")
            sent = [
                (dst, raw) for _src, dst, raw in phone.sip_trace() if raw.startswith("REGISTER")
            ]
            assert sent and sent[0][0] == registrar.address
            assert f"To: <sip:bob@{registrar.address}>" in sent[0][1]
            assert "REGISTER sip:" in registrar.messages()
