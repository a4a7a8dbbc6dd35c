"""SIP over UDP and TCP on one port: the thin asyncio layer under the SIP edge.

Datagrams and stream bytes come in here, become typed messages through the sans-IO parser
(`parse_datagram`, `StreamFramer`) and go to the edge's sink with the `Peer` they came from.
Malformed input is answered 400 (`error_response_for`) when an answer can be formed and is
dropped otherwise; nothing a peer sends raises out of this module. Sending is synchronous for
UDP and open TCP connections; a connection to a new TCP peer is opened by a task owned here.

TCP slots are limited: at most `max_per_source` accepted connections per source IP (peers
`exempt` says so, the trusted trunks, are not counted), and a connection that takes longer
than `message_timeout` to send a complete message (its first one, or one it has begun) is
closed, so idle or trickling connections cannot hold the slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from connectors.sip.answers import error_response_for
from connectors.sip.errors import RemoteProtocolError
from connectors.sip.framing import (
    KeepAlive,
    MalformedMessage,
    StreamFramer,
    is_keepalive,
    parse_datagram,
)
from connectors.sip.message import SipMessage

__all__ = ["Peer", "SipTransport"]

log = logging.getLogger("gateway.sip.transport")

SOCKET_BUFFER: Final = 4 * 1024 * 1024  # bursts of thousands of datagrams must not be dropped
MAX_TCP_CONNECTIONS: Final = 4096
MAX_TCP_PER_SOURCE: Final = 32
TCP_MESSAGE_TIMEOUT: Final = 10.0
TCP_IDLE_SECONDS: Final = 600.0  # RFC 5626 keep-alives come every ~2 min; silence is a leak
CONNECT_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from or goes to. For TCP, (host, port) names the connection."""

    transport: str  # "UDP" or "TCP"
    host: str
    port: int

    @property
    def reliable(self) -> bool:
        return self.transport != "UDP"

    def __str__(self) -> str:
        return f"{self.transport.lower()}:{self.host}:{self.port}"


MessageSink = Callable[[SipMessage, Peer], None]
SendFailed = Callable[[Peer, str], None]


class SipTransport:
    """One UDP socket and one TCP listener on the same host and port."""

    def __init__(
        self,
        host: str,
        port: int,
        sink: MessageSink,
        *,
        count: Callable[[str], None] = lambda kind: None,
        on_send_failed: SendFailed = lambda peer, reason: None,
        tcp_idle_seconds: float = TCP_IDLE_SECONDS,
        max_per_source: int = MAX_TCP_PER_SOURCE,
        message_timeout: float = TCP_MESSAGE_TIMEOUT,
        exempt: Callable[[str], bool] = lambda host: False,
    ) -> None:
        self.host = host
        self.port = port
        self._sink = sink
        self._count = count
        self._on_send_failed = on_send_failed
        self._tcp_idle = tcp_idle_seconds
        self.max_per_source = max_per_source
        self.message_timeout = message_timeout
        self._exempt = exempt
        self._per_source: dict[str, int] = {}  # accepted connections open, by source IP
        self._refused_logged: dict[str, float] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._conns: dict[tuple[str, int], _TcpConnection] = {}
        self._connecting: dict[tuple[str, int], list[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> int:
        """Bind UDP and TCP on host:port (port 0: one port free on both); returns the port."""
        loop = asyncio.get_running_loop()
        attempts = 20 if self.port == 0 else 1
        for attempt in range(attempts):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, self.port)
            )
            port = udp.get_extra_info("sockname")[1]
            try:
                server = await loop.create_server(
                    lambda: _TcpConnection(self), self.host, port, reuse_address=True
                )
            except OSError:
                udp.close()
                if attempt + 1 == attempts:
                    raise
                continue
            self._udp, self._server, self.port = udp, server, port
            break
        assert self._udp is not None
        sock = self._udp.get_extra_info("socket")
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        self._sweeper = loop.call_later(30.0, self._sweep)
        return self.port

    async def aclose(self) -> None:
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns.values()):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    # ---- sending ------------------------------------------------------------------------

    def send(self, data: bytes, peer: Peer) -> None:
        """Send now (UDP, open TCP connection) or once the connection to `peer` is up."""
        if self._closing:
            return
        if peer.transport == "UDP":
            if self._udp is not None:
                self._udp.sendto(data, (peer.host, peer.port))
            return
        key = (peer.host, peer.port)
        conn = self._conns.get(key)
        if conn is not None and not conn.closing:
            conn.write(data)
            return
        queued = self._connecting.get(key)
        if queued is not None:
            queued.append(data)
            return
        self._connecting[key] = [data]
        task = asyncio.get_running_loop().create_task(
            self._connect(peer), name=f"sip-connect {peer}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connected(self, peer: Peer) -> bool:
        """Whether a TCP connection to (or from) `peer` is open now (UDP: always true)."""
        if peer.transport == "UDP":
            return True
        conn = self._conns.get((peer.host, peer.port))
        return conn is not None and not conn.closing

    async def _connect(self, peer: Peer) -> None:
        key = (peer.host, peer.port)
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _TcpConnection(self, outbound=True),
                                       peer.host, peer.port),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            self._connecting.pop(key, None)
            log.info("SIP: cannot connect to %s: %s", peer, exc)
            self._on_send_failed(peer, f"connect failed: {exc}")
            return
        for data in self._connecting.pop(key, []):
            conn.write(data)

    # ---- receiving ----------------------------------------------------------------------

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if is_keepalive(data):
            self._count("keepalive")
            return
        peer = Peer("UDP", addr[0], addr[1])
        try:
            message = parse_datagram(data)
        except RemoteProtocolError as exc:
            self._malformed(data, exc, peer, lambda out: self.send(out, peer))
            return
        except Exception:  # the parser is fuzzed to raise only the above; never trust that
            log.exception("SIP: parser failed on a datagram from %s; dropped", peer)
            self._count("malformed-dropped")
            return
        self._deliver(message, peer)

    def _deliver(self, message: SipMessage, peer: Peer) -> None:
        try:
            self._sink(message, peer)
        except Exception:
            log.exception("SIP: handling a message from %s failed; dropped", peer)
            self._count("internal-error")

    def _malformed(
        self, data: bytes, exc: RemoteProtocolError, peer: Peer, reply: Callable[[bytes], None]
    ) -> None:
        try:
            answer = error_response_for(data, exc)
            out = answer.to_bytes() if answer is not None else None
        except Exception:
            out = None
        if out is None:
            self._count("malformed-dropped")
            log.debug("SIP: dropped malformed message from %s: %s", peer, exc)
            return
        self._count("malformed-answered")
        log.debug("SIP: answered %d to malformed message from %s: %s", exc.status_hint, peer, exc)
        reply(out)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self._tcp_idle
        for conn in list(self._conns.values()):
            if conn.last_active < deadline:
                log.info("SIP: closing idle TCP connection %s", conn.peer)
                conn.close()
        self._sweeper = loop.call_later(30.0, self._sweep)


class _UdpProtocol(asyncio.DatagramProtocol):
    __slots__ = ("_owner",)

    def __init__(self, owner: SipTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        self._owner._datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from an earlier sendto: UDP cannot tell which message it was;
        # the transaction's timers cover the loss.
        log.debug("SIP: UDP error: %s", exc)


class _TcpConnection(asyncio.Protocol):
    """One TCP connection, accepted or opened; frames messages by Content-Length."""

    def __init__(self, owner: SipTransport, *, outbound: bool = False) -> None:
        self._owner = owner
        self._framer = StreamFramer()
        self._transport: asyncio.Transport | None = None
        self.peer = Peer("TCP", "", 0)
        self.closing = False
        self.last_active = 0.0
        self._outbound = outbound
        self._counted = False  # in the owner's per-source count
        self._deadline: asyncio.TimerHandle | None = None  # for the message being awaited

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer("TCP", host, port)
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        owner = self._owner
        if owner._closing or len(owner._conns) >= MAX_TCP_CONNECTIONS:
            log.warning("SIP: refusing TCP connection from %s (limit or closing)", self.peer)
            self.close()
            return
        if not self._outbound and not owner._exempt(host):
            count = owner._per_source.get(host, 0)
            if count >= owner.max_per_source:
                owner._count("tcp-refused")
                last = owner._refused_logged.get(host)
                if last is None or self.last_active - last >= 60.0:
                    if len(owner._refused_logged) >= 10_000:
                        owner._refused_logged.clear()
                    owner._refused_logged[host] = self.last_active
                    log.warning("SIP: refusing TCP connections from %s beyond %d at once",
                                host, owner.max_per_source)
                self.close()
                return
            owner._per_source[host] = count + 1
            self._counted = True
        owner._conns[(host, port)] = self
        if not self._outbound:  # a caller that connects must say something soon
            self._deadline = loop.call_later(owner.message_timeout, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if not self.closing:
            self._owner._count("tcp-timeout")
            log.info("SIP: closing TCP connection %s: no complete message within %g s",
                     self.peer, self._owner.message_timeout)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        owner = self._owner
        if self._counted:
            self._counted = False
            host = self.peer.host
            left = owner._per_source.get(host, 1) - 1
            if left > 0:
                owner._per_source[host] = left
            else:
                owner._per_source.pop(host, None)
        key = (self.peer.host, self.peer.port)
        if owner._conns.get(key) is self:
            del owner._conns[key]

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closing:
            self._transport.write(data)

    def close(self) -> None:
        self.closing = True
        if self._transport is not None:
            self._transport.close()

    def _rearm(self, complete: bool) -> None:
        """After a read: a complete message stops the clock; bytes of the next one (or the
        first one still not complete) keep it running, never extended by a trickle."""
        deadline = self._deadline
        if complete and deadline is not None:
            deadline.cancel()
            self._deadline = deadline = None
        if self._framer.buffered and deadline is None:
            self._deadline = asyncio.get_running_loop().call_later(
                self._owner.message_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        owner = self._owner
        self.last_active = asyncio.get_running_loop().time()
        framer = self._framer
        try:
            framer.feed(data)
            complete = False
            while (event := framer.next_event()) is not None:
                if isinstance(event, KeepAlive):
                    owner._count("keepalive")
                    self.write(b"\r\n")  # RFC 5626 3.5.1: pong
                else:
                    complete = True
                    if isinstance(event, MalformedMessage):
                        owner._malformed(event.raw, event.error, self.peer, self.write)
                    else:
                        owner._deliver(event, self.peer)
                if self.closing:
                    return
            self._rearm(complete)
        except RemoteProtocolError as exc:
            # Framing is lost (no or bad Content-Length, oversized): nothing after this point
            # can be trusted to start a message, so the connection goes.
            owner._count("malformed-dropped")
            log.info("SIP: closing TCP connection %s: %s", self.peer, exc)
            self.close()
