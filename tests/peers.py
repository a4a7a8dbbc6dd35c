"""Real peer processes for tests and benchmarks: PostgreSQL, SIPp, baresip, Kamailio.

Each peer is a child process with its own temporary directory under /tmp, listening
on 127.0.0.1 on a free port, with stdout/stderr in files in that directory. It is
stopped by its PID (also when the test fails) and its directory removed, after its
output has been read into memory. A missing binary skips the test that needs it, or
fails it when GATEWAY_REQUIRE_PEERS=1 (`peer_missing`). GATEWAY_KEEP_PEER_DIRS=1
keeps the directories for a post-mortem.

tests/conftest.py re-exports the fixtures at the bottom (`postgres_server`,
`postgres_url`, `sipp_uas`).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

try:
    import pytest
    import pytest_asyncio
except ImportError:  # benchmarks may import this module without the test extras
    pytest = None  # type: ignore[assignment]
    pytest_asyncio = None  # type: ignore[assignment]

__all__ = [
    "LOOPBACK",
    "SIPP_BUFF_SIZE",
    "UAC_INVITE_THEN_CANCEL",
    "UAC_WITH_CONTEXT_HEADERS",
    "UAS_ANSWER_WITHOUT_RINGING",
    "UAS_CHECK_CONTEXT_HEADERS",
    "UAS_RING_UNTIL_CANCEL",
    "Baresip",
    "Kamailio",
    "PeerStartError",
    "PostgresServer",
    "SippResult",
    "SippUas",
    "context_header_keys",
    "free_tcp_port",
    "free_udp_port",
    "peer_missing",
    "peers_required",
    "postgres_server",
    "postgres_url",
    "run_sipp_uac",
    "sip_options_ping",
    "sipp_command",
    "sipp_uas",
    "udp_port_bound",
]

LOOPBACK = "127.0.0.1"
SIPP_BUFF_SIZE = 2097152  # SIPp's default 64 KB socket buffer drops packets at load

_READY_TIMEOUT = 15.0


class PeerStartError(RuntimeError):
    """A peer binary exists but did not come up; the message quotes its output."""


# ---------------------------------------------------------------------------
# Ports, skipping, child processes


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago (bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _port_free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _free_port_where(*extra: tuple[int, int]) -> int:
    """A free UDP port P such that each (offset, socket kind) in `extra` is free too."""
    for _ in range(200):
        port = free_udp_port()
        if port + max((o for o, _ in extra), default=0) > 65535:
            continue
        if all(_port_free(port + offset, kind) for offset, kind in extra):
            return port
    raise PeerStartError("could not find a free port group on 127.0.0.1")


def udp_port_bound(port: int, host: str = LOOPBACK) -> bool:
    """Whether some process has a UDP socket bound to host:port (Linux /proc/net/udp)."""
    wanted = {f"{_proc_hex_ip(host)}:{port:04X}", f"00000000:{port:04X}"}
    try:
        with open("/proc/net/udp") as table:
            next(table)
            return any(line.split()[1] in wanted for line in table)
    except OSError:  # not Linux: fall back to trying to bind it
        return not _port_free(port, socket.SOCK_DGRAM)


def _proc_hex_ip(host: str) -> str:
    return "".join(f"{int(part):02X}" for part in reversed(host.split(".")))


def peers_required() -> bool:
    """GATEWAY_REQUIRE_PEERS=1 turns a missing peer into a failure (CI that installed them)."""
    return os.environ.get("GATEWAY_REQUIRE_PEERS") == "1"


def peer_missing(name: str, reason: str) -> NoReturn:
    """Skip the current test because peer `name` is unavailable; fail instead when required."""
    message = f"peer {name} unavailable: {reason} (scripts/install-peers.sh installs it)"
    if pytest is None:
        raise RuntimeError(message)
    if peers_required():
        pytest.fail(f"{message}; GATEWAY_REQUIRE_PEERS=1", pytrace=False)
    pytest.skip(message)


def _which(name: str, *candidates: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    peer_missing(name, f"no `{name}` binary on PATH")


def _make_peer_dir(name: str) -> Path:
    # Not under pytest's 0700 tmp base: postgres and dovecot-like peers drop privileges.
    directory = Path(tempfile.mkdtemp(prefix=f"gateway-{name}-", dir="/tmp"))
    directory.chmod(0o755)
    return directory


def _remove_peer_dir(directory: Path | None) -> None:
    if directory is None or os.environ.get("GATEWAY_KEEP_PEER_DIRS") == "1":
        return
    shutil.rmtree(directory, ignore_errors=True)


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a PID apart from a later process reusing it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _children_of(pid: int) -> list[tuple[int, str]]:
    children = []
    for entry in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(entry).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append((int(entry.split("/")[2]), fields[19]))
    return children


class _Child:
    """One child process started by us; output goes to files; every stop is by PID."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        directory: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.stdout_path = directory / f"{name}.stdout.log"
        self.stderr_path = directory / f"{name}.stderr.log"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=cwd or directory,
                env=env,
                start_new_session=True,  # no terminal signals from the test runner's group
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        return _read(self.stdout_path) + _read(self.stderr_path)

    def send(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Poll until exit; True when it exited within `timeout`."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    async def wait_async(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        """Send `sig`, wait `grace`, then SIGKILL; reap children it left behind (by PID)."""
        if not self.alive():
            return
        children = _children_of(self.pid)
        self.send(sig)
        if sig != signal.SIGKILL and not self.wait(grace):
            self.send(signal.SIGKILL)
        self.wait(5.0)
        self._kill_leftovers(children)

    async def stop_async(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        if not self.alive():
            return
        children = _children_of(self.pid)
        self.send(sig)
        if sig != signal.SIGKILL and not await self.wait_async(grace):
            self.send(signal.SIGKILL)
        await self.wait_async(5.0)
        self._kill_leftovers(children)

    @staticmethod
    def _kill_leftovers(children: list[tuple[int, str]]) -> None:
        for pid, started in children:
            if _start_time(pid) == started:  # still the process we started, not a reuse
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def _wait_until(
    predicate: Callable[[], bool], child: _Child, what: str, timeout: float = _READY_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if not child.alive():
            raise PeerStartError(
                f"{child.name} exited with {child.returncode} before {what}:\n"
                f"$ {' '.join(child.argv)}\n{_tail(child.output())}"
            )
        if time.monotonic() > deadline:
            raise PeerStartError(
                f"{child.name} not ready after {timeout:.0f}s ({what}):\n"
                f"$ {' '.join(child.argv)}\n{_tail(child.output())}"
            )
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------
# PostgreSQL


def _postgres_bindir() -> Path | None:
    override = os.environ.get("GATEWAY_PG_BINDIR")
    candidates = [Path(override)] if override else []

    def version(path: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([\d.]+)/bin", path)
        return tuple(int(p) for p in match.group(1).split(".")) if match else (0,)

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    ]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for bindir in candidates:
        if all(
            os.access(bindir / tool, os.X_OK)
            for tool in ("initdb", "postgres", "pg_isready", "psql")
        ):
            return bindir
    return None


_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with role and database `gateway`.

    Use as a context manager (or start()/stop()). `url` is the SQLAlchemy asyncpg URL of
    database `gateway`; `create_database()` makes a fresh database per test and returns
    its URL. Runs as user `postgres` via setpriv when we are root (initdb refuses root).
    """

    user = "gateway"
    password = "gateway"
    database = "gateway"

    def __init__(self, *, max_connections: int = 200, durable: bool = False) -> None:
        self.max_connections = max_connections
        self.durable = durable  # True: fsync, synchronous_commit, full_page_writes as shipped
        self.host = LOOPBACK
        self.port = 0
        self.directory: Path | None = None
        self.bindir: Path | None = None
        self.log_text = ""
        self._child: _Child | None = None
        self._as_postgres: list[str] = []
        self._counter = itertools.count(1)

    # -- URLs
    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @property
    def dsn(self) -> str:
        """libpq/asyncpg form of `url` (asyncpg.connect(dsn))."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def url_for(self, database: str) -> str:
        return (
            f"postgresql+asyncpg://{self.user}:{self.password}@{self.host}:{self.port}/{database}"
        )

    # -- lifecycle
    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> PostgresServer:
        bindir = _postgres_bindir()
        if bindir is None:
            peer_missing(
                "postgresql", "no initdb/postgres under /usr/lib/postgresql/*/bin or on PATH"
            )
        self.bindir = bindir
        if os.geteuid() == 0:
            try:
                pg = pwd.getpwnam("postgres")
            except KeyError:
                peer_missing(
                    "postgresql", "running as root but there is no `postgres` user to run it as"
                )
            setpriv = _which("setpriv", "/usr/bin/setpriv")
            self._as_postgres = [setpriv, "--reuid=postgres", "--regid=postgres", "--init-groups"]
        self.directory = _make_peer_dir("postgres")
        try:
            if os.geteuid() == 0:
                os.chown(self.directory, pg.pw_uid, pg.pw_gid)
            self._initdb()
            self._start_server()
            self._psql(
                f"CREATE ROLE {self.user} LOGIN CREATEDB PASSWORD '{self.password}'",
                f"CREATE DATABASE {self.database} OWNER {self.user}",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _initdb(self) -> None:
        assert self.directory is not None and self.bindir is not None
        base = [
            *self._as_postgres,
            str(self.bindir / "initdb"),
            "-D",
            str(self.directory / "data"),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
        attempts = [[*base, "--locale=C.UTF-8"], [*base, "--no-locale"]]
        for argv in attempts:
            done = subprocess.run(
                argv, cwd=self.directory, capture_output=True, text=True, timeout=60
            )
            if done.returncode == 0:
                return
            shutil.rmtree(self.directory / "data", ignore_errors=True)
        raise PeerStartError(
            f"initdb failed:\n$ {' '.join(argv)}\n{_tail(done.stdout + done.stderr)}"
        )

    def _start_server(self) -> None:
        assert self.directory is not None and self.bindir is not None
        for _attempt in range(3):
            self.port = free_tcp_port()
            argv = [
                *self._as_postgres,
                str(self.bindir / "postgres"),
                "-D",
                str(self.directory / "data"),
                "-p",
                str(self.port),
                "-k",
                str(self.directory),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                f"max_connections={self.max_connections}",
            ]
            if not self.durable:  # tests need speed, not crash safety of the cluster
                argv += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                         "-c", "full_page_writes=off"]
            self._child = _Child("postgres", argv, self.directory)
            deadline = time.monotonic() + _READY_TIMEOUT
            while time.monotonic() < deadline and self._child.alive():
                ready = subprocess.run(
                    [str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
                    capture_output=True,
                    timeout=10,
                )
                if ready.returncode == 0:
                    return
                time.sleep(0.05)
            output = self._child.output()
            self._child.stop(signal.SIGINT)
            if "could not bind" not in output:  # lost a port race: try another port
                raise PeerStartError(
                    f"postgres did not become ready:\n$ {' '.join(argv)}\n{_tail(output)}"
                )
        raise PeerStartError("postgres could not bind a free port three times")

    def _psql(self, *statements: str, database: str = "postgres") -> str:
        assert self.bindir is not None
        argv = [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
        ]
        for statement in statements:
            argv += ["-c", statement]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {statements!r}: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str | None = None, *, template: str = "template0") -> str:
        """CREATE DATABASE (owner `gateway`) copied from `template`; returns its asyncpg URL.

        For a migrated schema, create one database, migrate it, and pass its name as
        `template` afterwards (it must have no open connections while being copied).
        """
        name = name or f"test_{next(self._counter)}_{secrets.token_hex(3)}"
        for identifier in (name, template):
            if not _DB_NAME.match(identifier):
                raise ValueError(f"not a plain database name: {identifier!r}")
        self._psql(f"CREATE DATABASE {name} OWNER {self.user} TEMPLATE {template}")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        if not _DB_NAME.match(name):
            raise ValueError(f"not a plain database name: {name!r}")
        self._psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """SIGINT (fast shutdown: does not wait for leaked client pools), then remove the dir."""
        if self._child is not None:
            self._child.stop(signal.SIGINT, grace=10.0)
            self.log_text = self._child.output()
            self._child = None
        _remove_peer_dir(self.directory)
        self.directory = None


# ---------------------------------------------------------------------------
# SIPp

_SIPP_BUILTIN = {
    "uac",
    "uas",
    "regexp",
    "3pcc-C-A",
    "3pcc-C-B",
    "3pcc-A",
    "3pcc-B",
    "branchc",
    "branchs",
    "uac_pcap",
    "ooc_default",
}


@dataclass
class SippResult:
    """What one SIPp run did. The text fields are read from its trace files at exit."""

    returncode: int | None
    successful: int
    failed: int
    argv: list[str]
    stats: str = ""  # the -trace_stat CSV (semicolon separated)
    screen: str = ""  # final screens (-trace_screen): per-message counters
    messages: str = ""  # every SIP message sent and received (-trace_msg), when traced
    logs: str = ""  # lines written by <log> actions in the scenario
    errors: str = ""  # unexpected messages and failed checks (-trace_err)
    output: str = ""  # stdout + stderr

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failed == 0 and self.successful > 0

    def describe(self) -> str:
        """A failure message worth reading: counts, command line, errors, screen."""
        return (
            f"sipp exit {self.returncode}: {self.successful} successful, {self.failed} failed\n"
            f"$ {' '.join(self.argv)}\n{_tail(self.errors, 40)}\n{_tail(self.screen, 30)}"
            f"\n{_tail(self.output, 10)}"
        )


def _parse_sipp_stats(csv_text: str) -> tuple[int, int]:
    lines = [line for line in csv_text.splitlines() if line.strip()]
    if len(lines) < 2:
        return 0, 0
    header = lines[0].split(";")
    last = lines[-1].split(";")
    try:
        return int(last[header.index("SuccessfulCall(C)")]), int(
            last[header.index("FailedCall(C)")]
        )
    except (ValueError, IndexError):
        return 0, 0


def _parse_sipp_screen(screen: str) -> tuple[int, int]:
    successful = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", screen)
    failed = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", screen)
    return (int(successful[-1]) if successful else 0), (int(failed[-1]) if failed else 0)


def sipp_command(
    scenario: str | Path,
    *,
    local_port: int,
    control_port: int,
    media_port: int,
    target: str | None = None,
    service: str | None = None,
    calls: int | None = None,
    rate: float | None = None,
    call_length_ms: int | None = None,
    transport: str = "u1",
    trace_dir: Path | None = None,
    trace_messages: bool = False,
    recv_timeout_ms: int | None = None,
    global_timeout_s: float | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """A SIPp command line bound to 127.0.0.1 on the given ports.

    `scenario` is a built-in name (`uac`, `uas`) or the path of an XML file. With
    `trace_dir`, statistics (every second), screens, errors and <log> lines go to files
    there; `trace_messages` adds every SIP message (slow at high rates).
    """
    argv = [_which("sipp", "/usr/bin/sipp")]
    if target:
        argv.append(target)
    if isinstance(scenario, str) and scenario in _SIPP_BUILTIN:
        argv += ["-sn", scenario]
    else:
        argv += ["-sf", str(scenario)]
    argv += [
        "-i",
        LOOPBACK,
        "-p",
        str(local_port),
        "-t",
        transport,
        "-ci",
        LOOPBACK,
        "-cp",
        str(control_port),
        "-mi",
        LOOPBACK,
        "-mp",
        str(media_port),
        "-nostdin",
        "-buff_size",
        str(SIPP_BUFF_SIZE),
    ]
    if service is not None:
        argv += ["-s", service]
    if calls is not None:
        argv += ["-m", str(calls)]
    if rate is not None:
        argv += ["-r", f"{rate:g}"]
    if call_length_ms is not None:
        argv += ["-d", str(call_length_ms)]
    if recv_timeout_ms is not None:
        argv += ["-recv_timeout", str(recv_timeout_ms)]
    if global_timeout_s is not None:
        argv += ["-timeout", f"{global_timeout_s:g}s", "-timeout_error"]
    if trace_dir is not None:
        argv += [
            "-trace_stat",
            "-stf",
            str(trace_dir / "stat.csv"),
            "-fd",
            "1",
            "-trace_screen",
            "-screen_file",
            str(trace_dir / "screen.log"),
            "-trace_err",
            "-error_file",
            str(trace_dir / "errors.log"),
            "-trace_logs",
            "-log_file",
            str(trace_dir / "actions.log"),
        ]
        if trace_messages:
            argv += ["-trace_msg", "-message_file", str(trace_dir / "messages.log")]
    argv += list(extra_args)
    return argv


def _sipp_ports() -> tuple[int, int, int]:
    """Local SIP port, control port, media port (SIPp binds media P and P+2)."""
    local = _free_port_where((0, socket.SOCK_DGRAM), (0, socket.SOCK_STREAM))
    control = free_udp_port()
    media = _free_port_where((0, socket.SOCK_DGRAM), (2, socket.SOCK_DGRAM))
    return local, control, media


def _scenario_arg(scenario: str | Path, directory: Path, name: str) -> str | Path:
    """Built-in name or path as given; XML text is written into the peer's directory."""
    if isinstance(scenario, str) and scenario.lstrip().startswith("<"):
        path = directory / f"{name}.xml"
        path.write_text(scenario)
        return path
    return scenario


def _collect_sipp(child: _Child, directory: Path) -> SippResult:
    stats = _read(directory / "stat.csv")
    screen = _read(directory / "screen.log")
    successful, failed = _parse_sipp_stats(stats)
    if not stats:
        successful, failed = _parse_sipp_screen(screen)
    return SippResult(
        returncode=child.returncode,
        successful=successful,
        failed=failed,
        argv=child.argv,
        stats=stats,
        screen=screen,
        messages=_read(directory / "messages.log"),
        logs=_read(directory / "actions.log"),
        errors=_read(directory / "errors.log"),
        output=child.output(),
    )


def context_header_keys(context_url: str, conversation_id: str) -> list[str]:
    """`-key` arguments that fill UAC_WITH_CONTEXT_HEADERS's [context_url]/[conversation_id]."""
    return ["-key", "context_url", context_url, "-key", "conversation_id", conversation_id]


async def run_sipp_uac(
    target_host_port: str,
    service: str = "service",
    calls: int = 1,
    rate: float = 10,
    scenario_xml: str | Path | None = None,
    extra_args: Sequence[str] = (),
    *,
    call_length_ms: int = 0,
    transport: str = "u1",
    trace_messages: bool = True,
    recv_timeout_ms: int = 10_000,
    timeout: float = 60.0,
) -> SippResult:
    """Place `calls` calls to `target_host_port` at `rate` per second and wait for SIPp.

    `scenario_xml` (a file in tests/sipp/, or XML text) replaces the built-in `uac`. Returns exit code and the
    successful/failed counts from SIPp's statistics file; the messages SIPp sent and
    received are in `.messages` (with `trace_messages`). A SIPp that outlives `timeout`
    is killed and TimeoutError raised.
    """
    directory = _make_peer_dir("sipp-uac")
    child: _Child | None = None
    try:
        for _attempt in range(3):
            local, control, media = _sipp_ports()
            scenario = _scenario_arg(scenario_xml, directory, "uac") if scenario_xml else "uac"
            argv = sipp_command(
                scenario,
                local_port=local,
                control_port=control,
                media_port=media,
                target=target_host_port,
                service=service,
                calls=calls,
                rate=rate,
                call_length_ms=call_length_ms,
                transport=transport,
                trace_dir=directory,
                trace_messages=trace_messages,
                recv_timeout_ms=recv_timeout_ms,
                global_timeout_s=timeout,
                extra_args=extra_args,
            )
            child = _Child("sipp", argv, directory)
            if not await child.wait_async(timeout + 5.0):
                await child.stop_async(signal.SIGKILL)
                result = _collect_sipp(child, directory)
                raise TimeoutError(
                    f"sipp uac still running after {timeout:.0f}s\n{result.describe()}"
                )
            result = _collect_sipp(child, directory)
            if result.returncode == 254:  # -2: could not bind a socket (lost a port race)
                continue
            return result
        return result
    finally:
        if child is not None:
            await child.stop_async(signal.SIGKILL)
        _remove_peer_dir(directory)


class SippUas:
    """A SIPp UAS on 127.0.0.1:`port` (UDP): the built-in `uas` or a scenario.

    ```
    async with SippUas(UAS_CHECK_CONTEXT_HEADERS, calls=1) as uas:
        ... make the gateway call uas.address ...
        result = await uas.wait()          # exits by itself after `calls` calls
    ```
    `stop()` asks SIPp to quit (SIGUSR1), then kills it, and returns the SippResult.
    `messages()` / `logs()` read the traces while it runs; after stop, `.result` has them.
    """

    def __init__(
        self,
        scenario: str | Path = "uas",
        *,
        calls: int | None = None,
        transport: str = "u1",
        trace_messages: bool = True,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.scenario = scenario
        self.calls = calls
        self.transport = transport
        self.trace_messages = trace_messages
        self.extra_args = list(extra_args)
        self.port = 0
        self.directory: Path | None = None
        self.result: SippResult | None = None
        self._child: _Child | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    async def __aenter__(self) -> SippUas:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> int:
        self.directory = _make_peer_dir("sipp-uas")
        try:
            scenario = _scenario_arg(self.scenario, self.directory, "uas")
            for attempt in range(3):
                local, control, media = _sipp_ports()
                argv = sipp_command(
                    scenario,
                    local_port=local,
                    control_port=control,
                    media_port=media,
                    calls=self.calls,
                    transport=self.transport,
                    trace_dir=self.directory,
                    trace_messages=self.trace_messages,
                    extra_args=self.extra_args,
                )
                self._child = _Child("sipp", argv, self.directory)
                try:
                    await _wait_until(
                        lambda port=local: udp_port_bound(port), self._child, f"UDP {local} bound"
                    )
                except PeerStartError:
                    if self._child.returncode == 254 and attempt < 2:
                        continue
                    raise
                self.port = local
                return local
        except BaseException:
            await self.stop()
            raise
        raise AssertionError("unreachable")

    def messages(self) -> str:
        """Every SIP message SIPp sent and received so far (-trace_msg)."""
        return self.result.messages if self.result else _read(self._path("messages.log"))

    def logs(self) -> str:
        """Lines written by the scenario's <log> actions so far."""
        return self.result.logs if self.result else _read(self._path("actions.log"))

    def _path(self, name: str) -> Path | None:
        return self.directory / name if self.directory else None

    async def wait(self, timeout: float = 30.0) -> SippResult:
        """Wait for SIPp to exit by itself (after `calls` calls) and return the result."""
        assert self._child is not None, "start() first"
        if not await self._child.wait_async(timeout):
            raise TimeoutError(f"sipp uas did not finish {self.calls} calls in {timeout:.0f}s")
        return await self.stop()

    async def stop(self, grace: float = 3.0) -> SippResult | None:
        """Quit SIPp and return its result; calls still running after `grace` count neither
        as successful nor as failed (use `calls=` and wait() for exact counts)."""
        if self._child is not None and self.directory is not None:
            # SIGUSR1 is SIPp's smooth quit: no new calls, wait for running ones (so they
            # are counted), write the final statistics (~1.2 s even when idle). SIGINT
            # quits without waiting for calls, still writing statistics.
            self._child.send(signal.SIGUSR1)
            if not await self._child.wait_async(grace):
                await self._child.stop_async(signal.SIGINT, grace=3.0)
            self.result = _collect_sipp(self._child, self.directory)
            self._child = None
        _remove_peer_dir(self.directory)
        self.directory = None
        return self.result


# Scenarios: XML files in tests/sipp/ ([service], [remote_ip] etc. are SIPp keywords; see
# `sipp -sd uac`).
SIPP_SCENARIOS = Path(__file__).resolve().parent / "sipp"
UAS_ANSWER_WITHOUT_RINGING = SIPP_SCENARIOS / "uas_answer_without_ringing.xml"
UAS_CHECK_CONTEXT_HEADERS = SIPP_SCENARIOS / "uas_check_context_headers.xml"
UAS_RING_UNTIL_CANCEL = SIPP_SCENARIOS / "uas_ring_until_cancel.xml"
UAC_INVITE_THEN_CANCEL = SIPP_SCENARIOS / "uac_invite_then_cancel.xml"
UAC_WITH_CONTEXT_HEADERS = SIPP_SCENARIOS / "uac_with_context_headers.xml"


async def sip_options_ping(
    port: int, host: str = LOOPBACK, *, user: str | None = None, timeout: float = 2.0
) -> str | None:
    """Send one SIP OPTIONS over UDP to sip:[user@]host:port; return the response's
    status line, or None on silence."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bytes] = loop.create_future()

    class _Protocol(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not answer.done():
                answer.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(_Protocol, local_addr=(LOOPBACK, 0))
    try:
        local_port = transport.get_extra_info("sockname")[1]
        tag, call_id, branch = secrets.token_hex(4), secrets.token_hex(8), secrets.token_hex(6)
        uri = f"sip:{user + '@' if user else ''}{host}:{port}"
        request = (
            f"OPTIONS {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{local_port};branch=z9hG4bK{branch};rport\r\n"
            f"From: <sip:probe@{LOOPBACK}:{local_port}>;tag={tag}\r\n"
            f"To: <{uri}>\r\n"
            f"Call-ID: {call_id}@{LOOPBACK}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nAccept: application/sdp\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        transport.sendto(request.encode(), (host, port))
        try:
            data = await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            return None
        return data.split(b"\r\n", 1)[0].decode(errors="replace")
    finally:
        transport.close()


# ---------------------------------------------------------------------------
# baresip

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TRACE_HEAD = re.compile(r"^(UDP|TCP|TLS) (\S+) -> (\S+)$")


class Baresip:
    """baresip 1.x as an auto-answering agent phone, all config in its own directory.

    Registers `user`/`password` to `registrar` ("host:port", UDP) when given; without a
    registrar it only listens (regint=0) and still answers INVITEs sent to `contact`.
    Runs with SIP trace (-s), so its log holds every SIP message it sent and received;
    `received_requests("INVITE")` returns the raw INVITEs it got, headers included.
    `command()` talks to its ctrl_tcp module (menu commands: callstat, reginfo, ...).
    Stopped with SIGKILL: on SIGTERM it un-REGISTERs and waits ~32 s for a gone registrar.
    """

    def __init__(
        self,
        user: str = "alice",
        password: str = "secret",
        registrar: str | None = None,
        *,
        answermode: str = "auto",
        regint: int = 60,
    ) -> None:
        self.user = user
        self.password = password
        self.registrar = registrar
        self.answermode = answermode
        self.regint = regint
        self.sip_port = 0
        self.ctrl_port = 0
        self.directory: Path | None = None
        self.log_path: Path | None = None
        self.final_log = ""
        self._child: _Child | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.sip_port}"

    @property
    def contact(self) -> str:
        """A URI that reaches this phone directly (baresip answers it, registered or not)."""
        return f"sip:{self.user}@{LOOPBACK}:{self.sip_port}"

    async def __aenter__(self) -> Baresip:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _write_config(self) -> None:
        assert self.directory is not None
        (self.directory / "config").write_text(
            "poll_method\t\tepoll\n"
            f"sip_listen\t\t{LOOPBACK}:{self.sip_port}\n"
            f"net_interface\t\t{LOOPBACK}\n"
            "audio_player\t\taubridge,null\n"
            "audio_alert\t\taubridge,null\n"
            "audio_source\t\taubridge,null\n"
            "module_path\t\t/usr/lib/baresip/modules\n"
            "module\t\t\tg711.so\n"
            "module\t\t\taubridge.so\n"
            "module_tmp\t\taccount.so\n"
            "module_app\t\tmenu.so\n"
            "module_app\t\tctrl_tcp.so\n"
            f"ctrl_tcp_listen\t\t{LOOPBACK}:{self.ctrl_port}\n"
        )
        if self.registrar:
            aor = f"<sip:{self.user}@{self.registrar};transport=udp>"
            params = f";auth_pass={self.password};answermode={self.answermode};regint={self.regint}"
        else:
            aor = f"<sip:{self.user}@{LOOPBACK}:{self.sip_port};transport=udp>"
            params = f";answermode={self.answermode};regint=0"
        (self.directory / "accounts").write_text(aor + params + "\n")
        (self.directory / "contacts").write_text("")

    async def start(self) -> int:
        binary = _which("baresip", "/usr/bin/baresip")
        if not os.path.isdir("/usr/lib/baresip/modules"):
            peer_missing("baresip", "no /usr/lib/baresip/modules")
        self.directory = _make_peer_dir("baresip")
        try:
            for attempt in range(3):
                # sip_listen P takes UDP P, TCP P and TLS on TCP P+1.
                self.sip_port = _free_port_where(
                    (0, socket.SOCK_DGRAM), (0, socket.SOCK_STREAM), (1, socket.SOCK_STREAM)
                )
                self.ctrl_port = free_tcp_port()
                while self.ctrl_port in (self.sip_port, self.sip_port + 1):
                    self.ctrl_port = free_tcp_port()
                self._write_config()
                self._child = _Child(
                    "baresip",
                    [binary, "-f", str(self.directory), "-s"],
                    self.directory,
                    env={**os.environ, "HOME": str(self.directory)},
                )
                self.log_path = self._child.stdout_path
                try:
                    await _wait_until(
                        self._ready, self._child, "'baresip is ready.' and ports bound"
                    )
                except PeerStartError:
                    if "in use" in self._child.output() and attempt < 2:
                        await self._child.stop_async(signal.SIGKILL)
                        continue
                    raise
                return self.sip_port
        except BaseException:
            await self.stop()
            raise
        raise AssertionError("unreachable")

    def _ready(self) -> bool:
        return "baresip is ready." in self.log() and udp_port_bound(self.sip_port)

    def log(self) -> str:
        """baresip's output so far (after stop: all of it), colour codes removed."""
        if self._child is None:
            return self.final_log
        return _ANSI.sub("", self._child.output())

    def sip_trace(self) -> list[tuple[str, str, str]]:
        """(source, destination, raw message) for every SIP message in the log."""
        messages: list[tuple[str, str, str]] = []
        lines = self.log().splitlines()
        i = 0
        while i < len(lines):
            head = _TRACE_HEAD.match(lines[i].strip())
            if head and i > 0 and lines[i - 1].strip() == "#":
                body: list[str] = []
                i += 1
                blank_run = 0
                while i < len(lines) and not (lines[i].strip() == "#" and blank_run):
                    blank_run = blank_run + 1 if not lines[i].strip() else 0
                    body.append(lines[i])
                    i += 1
                messages.append((head.group(2), head.group(3), "\n".join(body).strip() + "\n"))
                continue
            i += 1
        return messages

    def received_requests(self, method: str | None = None) -> list[str]:
        """Raw SIP requests that reached this phone, oldest first (optionally one method)."""
        mine = f"{LOOPBACK}:{self.sip_port}"
        found = []
        for _src, dst, raw in self.sip_trace():
            if dst != mine or raw.startswith("SIP/2.0"):
                continue
            if method is None or raw.startswith(method + " "):
                found.append(raw)
        return found

    def received_invites(self) -> list[str]:
        return self.received_requests("INVITE")

    async def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the log matches the regular expression `pattern`."""
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log())
            if match:
                return match
            if time.monotonic() > deadline:
                raise TimeoutError(f"baresip log never matched {pattern!r}:\n{_tail(self.log())}")
            await asyncio.sleep(0.05)

    async def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict:
        """Run a baresip command over ctrl_tcp (JSON in netstrings); returns the response."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, self.ctrl_port), timeout
        )
        try:
            token = secrets.token_hex(4)
            body = json.dumps({"command": command, "params": params, "token": token}).encode()
            writer.write(b"%d:%s," % (len(body), body))
            await writer.drain()
            while True:  # events may arrive on the same connection before the response
                length = int((await asyncio.wait_for(reader.readuntil(b":"), timeout))[:-1])
                payload = json.loads(
                    (await asyncio.wait_for(reader.readexactly(length + 1), timeout))[:-1]
                )
                if payload.get("response") and payload.get("token") == token:
                    return payload
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def stop(self) -> None:
        if self._child is not None:
            await self._child.stop_async(signal.SIGKILL)
            self.final_log = _ANSI.sub("", self._child.output())
            self._child = None
        _remove_peer_dir(self.directory)
        self.directory = None


# ---------------------------------------------------------------------------
# Kamailio

_kamailio_tlsf: bool | None = None


def _kamailio_supports_tlsf(binary: str, config: Path, env: dict[str, str] | None = None
                            ) -> bool:
    """Whether `-x tlsf` (the fast shared-memory allocator) is accepted by this build."""
    global _kamailio_tlsf
    if _kamailio_tlsf is None:
        done = subprocess.run(
            [binary, "-f", str(config), "-c", "-x", "tlsf"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        _kamailio_tlsf = done.returncode == 0
    return _kamailio_tlsf


class Kamailio:
    """Kamailio as a stateless UDP relay: every request is forward()ed to `forward_to`,
    replies go back statelessly along the Via headers.

    `forward_to` is "host:port" or a port on 127.0.0.1. `children=2` with `-x tlsf` is
    the tuned baseline of BASELINES.md.
    """

    def __init__(self, forward_to: str | int, *, children: int = 2, tlsf: bool = True) -> None:
        if isinstance(forward_to, int):
            self.forward_host, self.forward_port = LOOPBACK, forward_to
        else:
            host, _, port = forward_to.rpartition(":")
            self.forward_host, self.forward_port = host or LOOPBACK, int(port)
        self.children = children
        self.tlsf = tlsf
        self.port = 0
        self.directory: Path | None = None
        self.final_log = ""
        self.used_tlsf = False
        self._child: _Child | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    async def __aenter__(self) -> Kamailio:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    memory: tuple[str, ...] = ()  # Kamailio's -m (shared MB): the default 64 do for forward()

    def _prepare(self, directory: Path) -> tuple[Path, dict[str, str] | None]:
        """The config file to run (and its environment) for `self.port`."""
        config = directory / "kamailio.cfg"
        config.write_text(self._config())
        return config, None

    def _config(self) -> str:
        return (
            "#!KAMAILIO\n"
            "debug=2\n"
            "log_stderror=yes\n"
            f"children={self.children}\n"
            f"listen=udp:{LOOPBACK}:{self.port}\n"
            "disable_tcp=yes\n"
            "auto_aliases=no\n"
            "dns=no\n"
            "rev_dns=no\n"
            "request_route {\n"
            f'    forward("{self.forward_host}", {self.forward_port});\n'
            "}\n"
        )

    async def start(self) -> int:
        binary = _which("kamailio", "/usr/sbin/kamailio")
        self.directory = _make_peer_dir("kamailio")
        try:
            for attempt in range(3):
                self.port = _free_port_where((0, socket.SOCK_DGRAM))
                config, env = self._prepare(self.directory)
                argv = [binary, "-f", str(config), "-DD", "-E", "-Y", str(self.directory),
                        *self.memory]
                self.used_tlsf = self.tlsf and _kamailio_supports_tlsf(binary, config, env)
                if self.used_tlsf:
                    argv += ["-x", "tlsf"]
                self._child = _Child("kamailio", argv, self.directory, env=env)
                child, port = self._child, self.port
                try:
                    await _wait_until(
                        lambda child=child, port=port: (
                            udp_port_bound(port) and "processes (at least)" in child.output()
                        ),
                        child,
                        f"UDP {port} bound",
                    )
                except PeerStartError:
                    if "in use" in self._child.output() and attempt < 2:
                        continue
                    raise
                return self.port
        except BaseException:
            await self.stop()
            raise
        raise AssertionError("unreachable")

    def log(self) -> str:
        return self._child.output() if self._child is not None else self.final_log

    async def stop(self) -> None:
        """SIGTERM to the main process (it stops its workers, ~1.5 s), SIGKILL after 5 s."""
        if self._child is not None:
            await self._child.stop_async(signal.SIGTERM, grace=5.0)
            self.final_log = self._child.output()
            self._child = None
        _remove_peer_dir(self.directory)
        self.directory = None


class KamailioDispatcher(Kamailio):
    """Kamailio with the repository's own config (config/kamailio/kamailio.cfg): a stateful
    dispatcher in front of `gateways` ("host:port" SIP addresses), as docker-compose runs it."""

    CONFIG = Path(__file__).resolve().parents[1] / "config" / "kamailio" / "kamailio.cfg"
    # Transactions stay 5 s after they end (tm's wait timer): at 1,000 CPS the default 64 MB
    # of shared memory runs out.
    memory = ("-m", "512")

    def __init__(self, gateways: Sequence[str], *, children: int = 2, tlsf: bool = True,
                 probe: bool = True) -> None:
        super().__init__(0, children=children, tlsf=tlsf)
        self.gateways = list(gateways)
        self.flags = " 8" if probe else ""  # 8: pinged with OPTIONS (a SIPp UAS answers none)

    def _prepare(self, directory: Path) -> tuple[Path, dict[str, str] | None]:
        listing = directory / "dispatcher.list"
        listing.write_text("".join(f"1 sip:{g}{self.flags}\n" for g in self.gateways))
        return self.CONFIG, {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                             "KAMAILIO_LISTEN": f"udp:{LOOPBACK}:{self.port}",
                             "KAMAILIO_DISPATCHER": str(listing),
                             "KAMAILIO_CHILDREN": str(self.children),
                             "KAMAILIO_CTL": f"unix:{directory}/ctl"}


# ---------------------------------------------------------------------------
# pytest fixtures (re-exported by tests/conftest.py)

if pytest is not None:

    @pytest.fixture(scope="session")
    def postgres_server() -> Iterator[PostgresServer]:
        """One PostgreSQL cluster for the whole session (skips when PostgreSQL is absent)."""
        with PostgresServer() as server:
            yield server

    @pytest.fixture
    def postgres_url(postgres_server: PostgresServer) -> str:
        """A fresh, empty database on the session's cluster: its postgresql+asyncpg URL."""
        return postgres_server.create_database()

    @pytest_asyncio.fixture
    async def sipp_uas() -> AsyncIterator[SippUas]:
        """A running built-in SIPp UAS; `sipp_uas.address` is its "127.0.0.1:port"."""
        async with SippUas("uas") as uas:
            yield uas
