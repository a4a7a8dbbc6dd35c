"""The outbox's `unknown` rule for mail: a gateway killed (SIGKILL) after the SMTP server took
the whole message, before it could record that, never sends it again after a restart; and a
connection lost during DATA is marked `unknown` at once and not retried."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from tests.conftest import AGENT_TOKEN, RunningGateway
from tests.dovecot import Account, Dovecot
from tests.email.conftest import gateway_email_settings
from tests.email.support import Received, SmtpBehaviour, SmtpServer, mail
from tests.email.test_gateway import customer_of, reply
from tests.helpers import wait_until
from tests.test_outbox import GatewayProcess, api

pytestmark = pytest.mark.peers
ANN = "email:ann@example.org"


async def test_killed_after_the_server_took_the_mail_it_is_never_sent_again(
        dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
    settings = gateway_email_settings(dovecot, mailbox, smtp_server, tmp_path / "mail")
    for key, value in settings.items():
        monkeypatch.setenv(f"GATEWAY_{key.upper()}", str(value))
    procs: list[GatewayProcess] = []

    def die_before_the_answer(got: Received) -> None:
        procs[-1].kill()  # the server has every byte; the gateway never hears "250"

    smtp_server.behaviour = SmtpBehaviour(on_message=die_before_the_answer)
    try:
        sending = GatewayProcess(database, "http://127.0.0.1:9/unused", outbox=True)
        procs.append(sending)
        await sending.ready()
        await dovecot.append(mailbox, [mail("Where is my order?", message_id="m1")])
        async with aiohttp.ClientSession() as http:
            async def known() -> bool:
                async with http.get(sending.url + "/api/v1/customers",
                                    params={"address": ANN},
                                    headers={"Authorization": f"Bearer {AGENT_TOKEN}"}
                                    ) as resp:
                    return resp.status == 200

            await wait_until(known, timeout=20, what="the customer's mail stored")
            customer = await api(http, sending, "GET", "/api/v1/customers",
                                 params={"address": ANN})
            queued = await api(http, sending, "POST",
                               f"/api/v1/conversations/{customer['conversations'][0]['id']}"
                               "/messages", json={"text": "It left today."})
            await wait_until(lambda: sending.proc.poll() is not None, timeout=20,
                             what="the gateway killed during the handover")
            assert len(smtp_server.received) == 1

            restarted = GatewayProcess(database, "http://127.0.0.1:9/unused", outbox=True)
            procs.append(restarted)
            smtp_server.behaviour = SmtpBehaviour()
            await restarted.ready()
            await restarted.outbox_idle(http)
            state = await api(http, restarted, "GET", f"/api/v1/outbox/{queued['id']}")
            assert state["status"] == "unknown" and "not resent" in state["last_error"]
            assert len(smtp_server.received) == 1  # never twice
    finally:
        for proc in procs:
            if proc.proc.poll() is None:
                proc.kill()


async def test_a_connection_lost_during_data_is_unknown_and_not_retried(
        mail_gateway, dovecot: Dovecot, mailbox: Account, smtp_server: SmtpServer) -> None:
    gw: RunningGateway = await mail_gateway()
    await dovecot.append(mailbox, [mail("Order", message_id="m1")])
    conv_id = (await customer_of(gw, ANN))["conversations"][0]["id"]
    smtp_server.behaviour = SmtpBehaviour(drop_after_data=True)
    message_id = await reply(gw, conv_id, "It left today.")
    row = await gw.wait_outbox(message_id, lambda r: r["status"] not in ("pending", "sending"))
    assert row["status"] == "unknown" and "not resent" in row["last_error"]
    assert row["attempts"] == 1
    smtp_server.behaviour = SmtpBehaviour()
    await gw.settle()
    assert (await gw.outbox(message_id))["attempts"] == 1 and smtp_server.received == []
