"""A real Prosody for tests and benchmarks, and slixmpp clients that act as customers and agents.

`Prosody` runs `prosody -F` as a child process with a throwaway configuration in its own
directory under /tmp, on free loopback ports: c2s (plain text and STARTTLS, with a
self-signed certificate for `localhost`) and direct TLS, with smacks (XEP-0198), mam
(XEP-0313) and offline storage. Accounts are made with `prosodyctl register`. It stops by PID
and can be restarted on the same ports and data (`restart`). A missing `prosody` skips the
test, or fails it under GATEWAY_REQUIRE_PEERS=1 (tests/peers.py `peer_missing`).

`XmppClient` is a real slixmpp client with a small test surface: send messages and raw
stanzas, set presence, wait for what arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from connectors.xmpp.session import shut_down
from tests.peers import (
    LOOPBACK,
    PeerStartError,
    _Child,
    _make_peer_dir,
    _remove_peer_dir,
    _tail,
    _which,
    free_tcp_port,
)

DOMAIN = "localhost"
PASSWORD = "test-password-0123"
_READY = 15.0
_names = itertools.count(1)


def _config(d: Path, c2s: int, direct_tls: int, archive: str, extra: str) -> str:
    return f"""
run_as_root = true
daemonize = false
pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
certificates = "{d}/certs"
admin_socket = "{d}/admin.sock"
log = {{ info = "{d}/prosody.log"; error = "{d}/prosody.err" }}
interfaces = {{ "{LOOPBACK}" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{ {direct_tls} }}
local_interfaces = {{ "{LOOPBACK}" }}
modules_enabled = {{
  "roster"; "saslauth"; "tls"; "disco"; "ping"; "posix"; "carbons"; "register";
  "admin_shell"; "smacks"; "mam"; "offline";
}}
modules_disabled = {{ "s2s" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = {{ default = "internal"; archive = "{archive}" }}
archive_expires_after = "never"
default_archive_policy = true
smacks_hibernation_time = 120
ssl = {{ certificate = "{d}/certs/{DOMAIN}.crt"; key = "{d}/certs/{DOMAIN}.key" }}
{extra}
VirtualHost "{DOMAIN}"
"""


class Prosody:
    """One throwaway Prosody on 127.0.0.1 (virtual host `localhost`)."""

    def __init__(self, *, archive: str = "internal", extra: str = "") -> None:
        """`archive="memory"` keeps archives in memory (benchmarks: cheaper, lost on restart);
        `extra` is more configuration (Lua) for the global section."""
        self.archive = archive
        self.extra = extra
        self.directory: Path | None = None
        self.port = 0  # c2s: plain text, STARTTLS offered
        self.tls_port = 0  # direct TLS (XEP-0368)
        self.final_log = ""
        self._child: _Child | None = None
        self._binary = ""
        self._ctl = ""

    @property
    def ca_file(self) -> str:
        """The self-signed certificate the server presents (trust it to verify TLS)."""
        assert self.directory is not None
        return str(self.directory / "certs" / f"{DOMAIN}.crt")

    @property
    def config_file(self) -> Path:
        assert self.directory is not None
        return self.directory / "prosody.cfg.lua"

    async def __aenter__(self) -> Prosody:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _write_files(self) -> None:
        d = self.directory
        assert d is not None
        (d / "data").mkdir(exist_ok=True)
        certs = d / "certs"
        certs.mkdir(exist_ok=True)
        if not (certs / f"{DOMAIN}.crt").exists():
            done = subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", f"/CN={DOMAIN}", "-addext", f"subjectAltName=DNS:{DOMAIN}",
                 "-keyout", str(certs / f"{DOMAIN}.key"), "-out", str(certs / f"{DOMAIN}.crt")],
                capture_output=True, text=True, timeout=60,
            )
            if done.returncode != 0:
                raise PeerStartError(f"openssl could not make a certificate: {done.stderr}")
        self.config_file.write_text(_config(d, self.port, self.tls_port, self.archive,
                                             self.extra))

    async def start(self) -> None:
        self._binary = _which("prosody", "/usr/bin/prosody")
        self._ctl = _which("prosodyctl", "/usr/bin/prosodyctl")
        if self.directory is None:
            self.directory = _make_peer_dir("prosody")
        try:
            for attempt in range(3):
                if attempt or not self.port:
                    self.port, self.tls_port = free_tcp_port(), free_tcp_port()
                    while self.tls_port == self.port:
                        self.tls_port = free_tcp_port()
                self._write_files()
                if await self._launch():
                    return
            raise PeerStartError(f"prosody could not bind free ports:\n{_tail(self.log())}")
        except BaseException:
            await self.stop()
            raise

    async def _launch(self) -> bool:
        assert self.directory is not None
        self._child = _Child("prosody", [self._binary, "-F", "--config", str(self.config_file)],
                             self.directory)
        deadline = time.monotonic() + _READY
        while time.monotonic() < deadline:
            if not self._child.alive():
                if "in use" in self.log() or "Failed to open server port" in self.log():
                    return False
                raise PeerStartError(f"prosody exited with {self._child.returncode}:\n"
                                     f"{_tail(self.log())}")
            if _accepts(self.port) and _accepts(self.tls_port):
                return True
            await asyncio.sleep(0.02)
        raise PeerStartError(f"prosody not ready after {_READY:.0f}s:\n{_tail(self.log())}")

    def log(self) -> str:
        if self.directory is None:
            return self.final_log
        parts = []
        for name in ("prosody.log", "prosody.err"):
            with contextlib.suppress(OSError):
                parts.append((self.directory / name).read_text(errors="replace"))
        if self._child is not None:
            parts.append(self._child.output())
        return "\n".join(parts)

    async def kill(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server process, keeping its data (accounts, archives, offline messages)."""
        if self._child is not None:
            await self._child.stop_async(sig, grace=5.0)
            self._child = None

    async def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop and start again on the same ports with the same data."""
        await self.kill(sig)
        for _ in range(50):
            if await self._launch():
                return
            await asyncio.sleep(0.1)
        raise PeerStartError(f"prosody did not come back on port {self.port}")

    async def stop(self) -> None:
        self.final_log = self.log()
        await self.kill()
        _remove_peer_dir(self.directory)
        self.directory = None

    async def register(self, user: str, password: str = PASSWORD) -> str:
        """Create the account user@localhost with prosodyctl; returns the bare JID."""
        process = await asyncio.create_subprocess_exec(
            self._ctl, "--config", str(self.config_file), "register", user, DOMAIN, password,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "HOME": str(self.directory)},
        )
        output, _ = await asyncio.wait_for(process.communicate(), 30)
        if process.returncode != 0:
            raise PeerStartError(f"prosodyctl register {user} failed: {output.decode()[-500:]}")
        return f"{user}@{DOMAIN}"

    async def accounts(self, *prefixes: str) -> list[str]:
        """Fresh accounts, one per prefix (unique names, so tests never share one)."""
        tag = f"{next(_names)}{secrets.token_hex(2)}"
        return list(await asyncio.gather(*(self.register(f"{p}{tag}") for p in prefixes)))


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        try:
            sock.connect((LOOPBACK, port))
        except OSError:
            return False
        return True


class XmppClient:
    """A real slixmpp client (a customer or an agent), plain text to the test Prosody."""

    def __init__(self, jid: str, port: int, *, resource: str = "phone",
                 password: str = PASSWORD) -> None:
        self.jid = jid
        self.port = port
        self.client = slixmpp.ClientXMPP(
            f"{jid}/{resource}", password,
            plugin_config={"feature_mechanisms": {"unencrypted_scram": True}})
        self.client.enable_plaintext = True
        self.client.enable_starttls = False
        self.client.enable_direct_tls = False
        self.client.auto_authorize = True
        self.client.auto_subscribe = True
        self.client.register_plugin("xep_0030")
        self.received: list[ET.Element] = []
        self._arrived = asyncio.Condition()
        self.client.register_handler(Callback(
            "test messages", MatchXPath("{jabber:client}message"), self._on_message))
        self._ids = itertools.count(1)

    def _on_message(self, stanza: Any) -> None:
        self.received.append(stanza.xml)
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    async def connect(self, show: str | None = None, presence: bool = True) -> XmppClient:
        started = asyncio.get_running_loop().create_future()

        def ready(_event: Any) -> None:
            if not started.done():
                started.set_result(None)

        self.client.add_event_handler("session_start", ready, disposable=True)
        self.client.connect(LOOPBACK, self.port)
        await asyncio.wait_for(started, 15)
        if presence:
            await self.client.get_roster(timeout=10)
            self.client.send_presence(pshow=show)
        return self

    async def disconnect(self) -> None:
        await shut_down(self.client)

    def set_presence(self, show: str | None = None, ptype: str | None = None) -> None:
        self.client.send_presence(pshow=show, ptype=ptype)

    def send(self, to: str, body: str, *, message_id: str | None = None,
             origin_id: str | None = None, receipt: bool = True, mtype: str = "chat",
             extra: str = "") -> str:
        """Send a chat message; returns its id. `extra` is XML appended inside it."""
        message_id = message_id or f"{self.jid.split('@')[0]}-{next(self._ids)}"
        message = self.client.make_message(mto=to, mbody=body, mtype=mtype)
        message["id"] = message_id
        if origin_id:
            ET.SubElement(message.xml, "{urn:xmpp:sid:0}origin-id", {"id": origin_id})
        if receipt:
            ET.SubElement(message.xml, "{urn:xmpp:receipts}request")
        for child in ET.fromstring(f"<x xmlns='jabber:client'>{extra}</x>") if extra else ():
            message.xml.append(child)
        message.send()
        return message_id

    def send_raw(self, xml: str) -> None:
        """Send XML as written, in order with `send` (through slixmpp's send queue)."""
        self.client.send(xml)

    def bodies(self, sender: str | None = None) -> list[str]:
        return [m.findtext("{jabber:client}body") or "" for m in self.received
                if m.find("{jabber:client}body") is not None
                and (sender is None or (m.get("from") or "").split("/")[0] == sender)]

    async def wait_for(self, predicate: Callable[[ET.Element], bool],
                       timeout: float = 10.0) -> ET.Element:
        """The first message (already received or arriving) for which `predicate` holds."""
        async def found() -> ET.Element:
            async with self._arrived:
                while True:
                    for message in self.received:
                        if predicate(message):
                            return message
                    await self._arrived.wait()

        return await asyncio.wait_for(found(), timeout)

    async def wait_for_body(self, fragment: str, timeout: float = 10.0) -> ET.Element:
        def has(message: ET.Element) -> bool:
            return fragment in (message.findtext("{jabber:client}body") or "")

        try:
            return await self.wait_for(has, timeout)
        except TimeoutError:
            raise AssertionError(f"{self.jid} never got a message with {fragment!r}; got "
                                 f"{self.bodies()!r}") from None
