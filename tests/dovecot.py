"""A real Dovecot IMAP server for the email tests and the email benchmark.

One server per test session (a child process with a throwaway config in /tmp, on a free
loopback port, stopped by its PID); each test gets its own fresh account (`new_account`), so
tests never see each other's mail. Mail goes in the way it reaches a real mailbox: IMAP APPEND,
`doveadm save`, or files dropped into the Maildir (what a delivery agent does; used for bulk).
Follows the recipe in shared/PEERS.md. Importable without pytest (bench/email_ingest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.peers import LOOPBACK, PeerStartError, free_tcp_port, peer_missing

NOBODY = 65534  # Dovecot refuses uid 0 for mail; the accounts' files belong to nobody


@dataclass(frozen=True, slots=True)
class Account:
    user: str
    password: str
    home: Path

    @property
    def maildir(self) -> Path:
        return self.home / "Maildir"


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for localhost and 127.0.0.1 (cert.pem, key.pem)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    key.chmod(0o644)
    return cert, key


class Dovecot:
    """`with Dovecot() as server:` starts it; `server.new_account()` gives a fresh mailbox.

    With `tls=(cert, key)` the plain port also offers STARTTLS and `tls_port` speaks
    implicit TLS (IMAPS)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.tls_port = 0
        self._tls = tls
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._accounts = itertools.count(1)
        self._spare: list[Account] = []
        self._uid = NOBODY if os.geteuid() == 0 else os.getuid()
        self._gid = NOBODY if os.geteuid() == 0 else os.getgid()

    def __enter__(self) -> Dovecot:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def config(self) -> Path:
        assert self.directory is not None
        return self.directory / "dovecot.conf"

    def start(self) -> Dovecot:
        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not os.access(binary, os.X_OK) or not shutil.which("doveadm"):
            peer_missing("dovecot", "no `dovecot`/`doveadm` binary (Debian dovecot-imapd)")
        self.directory = Path(tempfile.mkdtemp(prefix="gateway-dovecot-", dir="/tmp"))
        self.directory.chmod(0o755)  # auth and imap run as other users
        for sub in ("base", "state", "mail"):
            (self.directory / sub).mkdir()
        (self.directory / "passwd").write_text("")
        (self.directory / "passwd").chmod(0o644)
        try:
            for _attempt in range(3):
                self.port = free_tcp_port()
                self.tls_port = free_tcp_port() if self._tls else 0
                self.config.write_text(self._config_text())
                out = open(self.directory / "dovecot.out", "wb")
                self._proc = subprocess.Popen(
                    [binary, "-c", str(self.config), "-F"], stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                out.close()
                if self._wait_ready():
                    return self
                self._kill()
            raise PeerStartError(f"dovecot did not come up:\n{self.log()[-3000:]}")
        except BaseException:
            self.stop()
            raise

    def _config_text(self) -> str:
        d = self.directory
        me = "" if os.geteuid() == 0 else (
            f"default_login_user = {_username()}\ndefault_internal_user = {_username()}\n")
        if self._tls:
            dh = "/usr/share/dovecot/dh.pem"
            ssl = (f"ssl = yes\nssl_cert = <{self._tls[0]}\nssl_key = <{self._tls[1]}\n"
                   + (f"ssl_dh = <{dh}\n" if os.path.exists(dh) else ""))
        else:
            ssl = "ssl = no\n"
        return f"""\
base_dir = {d}/base
state_dir = {d}/state
log_path = {d}/dovecot.log
instance_name = gateway-test-{os.getpid()}-{self.port}
protocols = imap
listen = {self.host}
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:~/Maildir
mailbox_idle_check_interval = 1 secs
mail_fsync = never
{me}passdb {{
  driver = passwd-file
  args = username_format=%n {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {d}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.tls_port}
  }}
}}
"""

    def _wait_ready(self, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=1) as sock:
                if sock.recv(200).startswith(b"* OK"):
                    return True
            time.sleep(0.02)
        return False

    def log(self) -> str:
        if self.directory is None:
            return ""
        text = ""
        for name in ("dovecot.out", "dovecot.log"):
            with contextlib.suppress(OSError):
                text += (self.directory / name).read_text(errors="replace")
        return text

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGKILL is instant and Dovecot's children exit by themselves (PEERS.md).
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        self._kill()
        if self.directory is not None and os.environ.get("GATEWAY_KEEP_PEER_DIRS") != "1":
            shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    # -- accounts and mail

    def new_account(self) -> Account:
        """A fresh user with an empty INBOX."""
        if not self._spare:
            self._add_accounts(32)
        return self._spare.pop(0)

    def _add_accounts(self, count: int) -> None:
        # Dovecot re-reads the passwd-file when its mtime or size changed, but looks at most
        # once per wall-clock second: accounts are added in bunches, and a new bunch is used
        # only once the clock has moved on to a second Dovecot has not looked in yet.
        assert self.directory is not None
        path = self.directory / "passwd"
        lines = []
        for _ in range(count):
            user = f"user{next(self._accounts)}"
            password = secrets.token_urlsafe(12)
            home = self.directory / "mail" / user
            home.mkdir()
            os.chown(home, self._uid, self._gid)
            lines.append(f"{user}:{{PLAIN}}{password}:{self._uid}:{self._gid}::{home}\n")
            self._spare.append(Account(user, password, home))
        with open(path, "a") as passwd:
            passwd.writelines(lines)
        time.sleep(1.0 - time.time() % 1.0 + 0.01)

    def doveadm(self, *args: str, stdin: bytes | None = None) -> str:
        result = subprocess.run(["doveadm", "-c", str(self.config), *args], input=stdin,
                                capture_output=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"doveadm {' '.join(args)} failed: "
                               f"{result.stderr.decode(errors='replace')}")
        return result.stdout.decode(errors="replace")

    def save(self, account: Account, raw: bytes, mailbox: str = "INBOX") -> None:
        """Deliver one message with `doveadm save` (as the server's own delivery does)."""
        self.doveadm("save", "-u", account.user, "-m", mailbox, stdin=raw)

    def drop(self, account: Account, messages: Iterable[bytes]) -> int:
        """Bulk delivery: write each message into Maildir/new like an MDA (tmp, then rename).

        Dovecot gives them UIDs on its next look at the folder (the next SELECT or `sync`)."""
        new, tmp = account.maildir / "new", account.maildir / "tmp"
        for folder in (account.maildir, new, tmp, account.maildir / "cur"):
            folder.mkdir(exist_ok=True)
            os.chown(folder, self._uid, self._gid)
        count = 0
        stamp = int(time.time())
        for count, raw in enumerate(messages, 1):
            name = f"{stamp}.M{count}P{os.getpid()}.gateway-test,S={len(raw)}"
            (tmp / name).write_bytes(raw)
            os.chown(tmp / name, self._uid, self._gid)
            os.rename(tmp / name, new / name)
        return count

    def sync(self, account: Account, mailbox: str = "INBOX") -> dict[str, int]:
        """Make Dovecot index the folder now; return its status (messages, uidnext, …)."""
        return self.status(account, mailbox)

    def status(self, account: Account, mailbox: str = "INBOX") -> dict[str, int]:
        out = self.doveadm("mailbox", "status", "-u", account.user,
                           "messages uidnext uidvalidity", mailbox)
        fields = dict(part.split("=", 1) for part in out.split()[1:])
        return {key: int(value) for key, value in fields.items()}

    def set_uidvalidity(self, account: Account, value: int, mailbox: str = "INBOX") -> None:
        """What a server restore or a mailbox rebuild does: every UID the client knew is void."""
        self.doveadm("mailbox", "update", "-u", account.user, "--uid-validity", str(value),
                     mailbox)

    def create_mailbox(self, account: Account, mailbox: str) -> None:
        self.doveadm("mailbox", "create", "-u", account.user, mailbox)

    async def append(self, account: Account, messages: Iterable[bytes],
                     mailbox: str = "INBOX") -> int:
        """IMAP APPEND over one connection, in order (UIDs follow the order given)."""
        import aioimaplib

        client = aioimaplib.IMAP4(self.host, self.port, timeout=30)
        await client.wait_hello_from_server()
        await client.login(account.user, account.password)
        count = 0
        try:
            for raw in messages:
                response = await client.append(raw, mailbox=mailbox)
                if response.result != "OK":
                    raise RuntimeError(f"APPEND refused: {response.lines}")
                count += 1
        finally:
            await client.logout()
        return count


def _username() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name

