"""The channel interface as the composition root uses it: one lifecycle per channel, started
in order and closed in reverse (also when one fails to start), the in-memory channel as a
whole channel, and what `gateway serve` says about each channel at start-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from config.settings import Settings, load_settings
from connectors.email import EmailChannel
from gateway.app import CHANNELS, GATEWAY, build_app, setup_runner
from gateway.batching import BatcherClosed
from gateway.channels import (
    Channel,
    ChannelDeps,
    ChannelError,
    ChannelInfo,
    InboundSink,
    OutboundMessage,
    SendReceipt,
)
from gateway.cli import channel_report
from tests.conftest import AGENT_TOKEN, Gateways
from tests.helpers import whatsapp

ROOT = Path(__file__).resolve().parent.parent


class Recorder:
    """A channel that writes down what happens to it; `fail` makes its start raise."""

    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name = name
        self.channels: frozenset[str] = frozenset()
        self._log = log
        self._fail = fail

    def routes(self) -> Sequence[web.AbstractRouteDef]:
        return ()

    def describe(self) -> ChannelInfo:
        return ChannelInfo(self.name)

    async def start(self, sink: InboundSink) -> None:
        self._log.append(f"start {self.name}")
        if self._fail:
            raise ChannelError(f"{self.name}: the server refused our login")

    async def aclose(self) -> None:
        self._log.append(f"close {self.name}")

    async def send(self, message: OutboundMessage) -> SendReceipt:
        raise AssertionError("not used")


def factory(name: str, log: list[str], fail: bool = False) -> Any:
    class Factory:
        @classmethod
        def from_settings(cls, settings: Settings, deps: ChannelDeps) -> Channel:
            return Recorder(name, log, fail)

        @classmethod
        def why_off(cls, settings: Settings) -> str:
            return ""

    Factory.name = name  # type: ignore[attr-defined]
    return Factory


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/gw.db",
                         agent_token=AGENT_TOKEN, sip_port=0, log_format="text", **overrides)


async def test_channels_start_in_order_and_close_in_reverse(tmp_path: Path) -> None:
    log: list[str] = []
    app = build_app(settings(tmp_path), registry=[factory("a", log), factory("b", log)])
    runner = web.AppRunner(app)
    await setup_runner(runner)
    assert app[GATEWAY].started and log == ["start a", "start b"]
    await runner.cleanup()
    assert log == ["start a", "start b", "close b", "close a"]


async def test_a_channel_that_fails_to_start_stops_the_ones_before_it(tmp_path: Path) -> None:
    log: list[str] = []
    app = build_app(settings(tmp_path), registry=[
        factory("a", log), factory("b", log, fail=True), factory("c", log)])
    runner = web.AppRunner(app)
    with pytest.raises(ChannelError, match="refused our login"):
        await setup_runner(runner)
    assert log == ["start a", "start b", "close b", "close a"]  # c never started
    assert not app[GATEWAY].started
    with pytest.raises(BatcherClosed):  # the store was closed too
        await app[GATEWAY].core.ingest(whatsapp("+14155550100", "too late"))


async def test_the_memory_channel_takes_a_message_in_and_sends_the_reply_out(
    start_gateway: Gateways,
) -> None:
    gw = await start_gateway()
    memory = gw.memory
    assert memory is not None and gw.gw.channels["memory"] is memory
    stored = await memory.receive("ann-web-42", "hello from the web")
    status, body = await gw.api("POST", f"/api/v1/conversations/{stored.conversation_id}/messages",
                                json={"text": "hello back", "agent": "12"})
    assert status == 202 and body["channel"] == "web"
    [sent] = await memory.wait_for(1)
    assert (sent.to, getattr(sent, "text", None)) == ("web:ann-web-42", "hello back")
    again = await memory.receive("ann-web-42", "hello from the web", provider_id="mem-in-1")
    assert again.duplicate


async def test_the_start_up_report_names_each_channel_its_urls_and_what_turns_the_rest_on(
    tmp_path: Path,
) -> None:
    app = build_app(settings(tmp_path, public_url="https://gw.example.com",
                             twilio_account_sid="AC" + "1" * 32, twilio_auth_token="t" * 32))
    report = channel_report(app[GATEWAY].report())
    assert "twilio     on" in report
    assert "https://gw.example.com/webhooks/twilio/messaging" in report
    assert "https://gw.example.com/webhooks/twilio/voice" in report
    assert "whatsapp   off  set GATEWAY_WHATSAPP_APP_SECRET" in report
    assert "sip        on" in report
    assert "email      off  set GATEWAY_EMAIL_ADDRESS" in report
    assert "xmpp       off  set GATEWAY_XMPP_JID" in report
    assert [c.name for c in CHANNELS] == ["twilio", "whatsapp", "email", "xmpp", "sip"]


def test_gateway_serve_prints_the_channels_with_their_webhook_urls(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gw.db",
           "GATEWAY_HTTP_PORT": "0", "GATEWAY_SIP_PORT": "0", "GATEWAY_LOG_LEVEL": "WARNING",
           "GATEWAY_AGENT_TOKEN": AGENT_TOKEN, "GATEWAY_PUBLIC_URL": "https://gw.example.com",
           "GATEWAY_WHATSAPP_APP_SECRET": "app-secret-0123456789"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("  twilio"):  # the last one: off, after the mounted ones
                break
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    text = "\n".join(lines)
    assert "whatsapp   on" in text
    assert "https://gw.example.com/webhooks/whatsapp" in text
    assert "sip        on" in text and "sip:127.0.0.1:" in text and ":0\n" not in text
    assert "twilio     off  set GATEWAY_TWILIO_ACCOUNT_SID" in text
    assert proc.returncode == 0


@pytest.mark.parametrize(("key", "value"), [
    ("GATEWAY_AGENT_TOKEN", "change-me"),
    ("GATEWAY_AGENT_TOKEN", "too-short"),
    ("GATEWAY_AGENTS", '[{"id": "12", "xmpp": "a@b.org", "token_sha256": "change-me"}]'),
])
def test_gateway_serve_refuses_placeholder_tokens_naming_the_key(
    tmp_path: Path, key: str, value: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", key: value,
           "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gw.db"}
    proc = subprocess.run([sys.executable, "-m", "gateway", "serve"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert key in proc.stderr and value not in proc.stderr  # a secret is never echoed
    assert not (tmp_path / "gw.db").exists()


async def test_a_registry_without_sip_mounts_only_the_callers_channels(
    start_gateway: Gateways,
) -> None:
    gw = await start_gateway(sip=False)
    assert sorted(gw.gw.channels) == ["memory"]
    assert gw.gw.off == {"twilio": "set GATEWAY_TWILIO_ACCOUNT_SID and GATEWAY_TWILIO_AUTH_TOKEN",
                         "whatsapp": "set GATEWAY_WHATSAPP_APP_SECRET (and the verify and "
                                     "access tokens)",
                         "email": EmailChannel.why_off(gw.gw.settings),
                         "xmpp": "set GATEWAY_XMPP_JID and GATEWAY_XMPP_PASSWORD (the "
                                 "gateway's own account)"}
