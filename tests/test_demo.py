"""`gateway demo` tells the whole story over real protocols and exits 0, as the contract says;
`gateway demo --keep` leaves a running gateway that the console can be opened on."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.helpers import wait_until


def test_demo_places_a_sip_call_and_prints_what_the_agent_sees(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gateway", "demo"], capture_output=True,
                          check=False, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    # The agent's phone got a real SIP INVITE with the context link, twice.
    assert len(re.findall(r"INVITE sip:alice@127\.0\.0\.1:\d+", out)) == 2, out
    assert len(re.findall(r"Call-Info: <…/api/v1/contexts/…\S{6}>;purpose=info", out)) == 2
    # The PIN call carries Ann's WhatsApp verification; the caller-ID call does not.
    assert "verified by whatsapp-otp" in out and "[verified-via-escalation]" in out
    assert "identified by caller ID, not verified" in out and "[caller-id-only]" in out
    assert "incoming call from voice:+14155550199 (with escalation PIN)" in out
    assert "call ended after" in out  # the first call was answered and hung up over SIP
    assert "Hi, my card was stolen" in out
    # The forged caller ID gets the limited bundle: the story's replies are withheld there.
    forged = out[out.index("identified by caller ID, not verified"):]
    assert "disclosure: limited" in forged and "(withheld)" in forged
    assert "Thank you, you are verified." not in forged
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # its database is gone without --keep


async def _line(stdout: asyncio.StreamReader, pattern: str, seen: list[str]) -> re.Match[str]:
    """Read the demo's output up to the first line matching `pattern`."""
    async def find() -> re.Match[str]:
        while line := (await stdout.readline()).decode():
            seen.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError("the demo ended early:\n" + "".join(seen))

    return await asyncio.wait_for(find(), 60)


async def test_demo_keep_leaves_the_gateway_running_for_the_console(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", "--keep", cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []
    try:
        url = (await _line(proc.stdout, r"console:\s+(http://127\.0\.0\.1:\d+)/console$",
                           seen)).group(1)
        token = (await _line(proc.stdout, r"agent token:\s+(\S+)$", seen)).group(1)
        database = Path((await _line(proc.stdout, r"database:\s+(\S+)$", seen)).group(1))
        env_line = (await _line(proc.stdout, r"GATEWAY_PUBLIC_URL=", seen)).string
        env_line += (await _line(proc.stdout, r"GATEWAY_WHATSAPP_PHONE_NUMBER_ID=", seen)).string
        send = (await _line(proc.stdout, r"gateway send whatsapp (.*)$", seen)).group(1)
        env = dict(re.findall(r"(GATEWAY_[A-Z_]+)=(\S+)", env_line))
        assert database.exists() and database.is_relative_to(tmp_path)

        agent = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/console") as resp:
                assert resp.status == 200 and "text/html" in resp.content_type
            async with http.get(url + "/api/v1/me", headers=agent) as resp:
                me = await resp.json()
                assert resp.status == 200 and me["agent_id"] == "12", me
            async with http.get(url + "/api/v1/conversations?status=open",
                                headers=agent) as resp:
                inbox = await resp.json()
            story = inbox["items"][0]
            assert {"whatsapp", "voice"} <= set(story["channels"]), story

            # The command the demo printed signs a webhook this gateway accepts.
            sent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "send", "whatsapp", *shlex.split(send),
                env={**os.environ, **env}, cwd=tmp_path, stdout=subprocess.PIPE)
            out, _ = await sent.communicate()
            assert sent.returncode == 0, out

            async def on_top() -> bool:
                async with http.get(url + "/api/v1/conversations?status=open",
                                    headers=agent) as resp:
                    items = (await resp.json())["items"]
                return bool(items) and items[0]["id"] == story["id"] \
                    and items[0]["last_text"] == "Thanks, the card is blocked"

            await wait_until(on_top, what="the sent message at the top of the inbox")

            # A reply from the console's API reaches Ann's phone, which the demo keeps.
            async with http.post(url + f"/api/v1/conversations/{story['id']}/messages",
                                 headers=agent, json={"text": "Glad to help, Ann"}) as resp:
                assert resp.status in (200, 201, 202), await resp.text()
            await _line(proc.stdout, r"Ann's phone shows: 'Glad to help, Ann'", seen)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        rest, errors = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, errors.decode()
    assert "gateway stopped; the database stays at" in rest.decode()
    assert database.exists()
    assert b"Traceback" not in errors
