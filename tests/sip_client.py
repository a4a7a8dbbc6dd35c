"""A tiny SIP endpoint for tests: raw requests out, parsed messages in, over UDP or TCP.

Plays a caller, an agent's phone or a hostile peer against the gateway's SIP edge with
exact control over every header (SIPp and baresip cover the real-peer side). Built on the
project's own parser and digest code, which have their own tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from connectors.sip.answers import make_response
from connectors.sip.digest import Challenge, authorize
from connectors.sip.errors import RemoteProtocolError
from connectors.sip.framing import StreamFramer, parse_datagram
from connectors.sip.grammar import new_branch, new_tag
from connectors.sip.headers import Headers
from connectors.sip.message import SipMessage, SipRequest, SipResponse

LOOPBACK = "127.0.0.1"


class SipTestClient:
    """One socket on 127.0.0.1: `send()` bytes, `expect()` the next matching message."""

    def __init__(self, transport: str = "UDP", user: str = "tester", host: str = LOOPBACK
                 ) -> None:
        self.transport = transport.upper()
        self.user = user
        self.host = host  # the source address: any 127.0.0.0/8 address plays another peer
        self.port = 0
        self.inbox: asyncio.Queue[SipMessage] = asyncio.Queue()
        self.raw: list[bytes] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._seen: list[SipMessage] = []
        self.cseq = 0

    async def __aenter__(self) -> SipTestClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self, gateway_port: int | None = None) -> SipTestClient:
        """Bind (UDP) or connect to the gateway (TCP)."""
        loop = asyncio.get_running_loop()
        if self.transport == "UDP":
            client = self

            class _Proto(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    client._got(data)

            self._udp, _ = await loop.create_datagram_endpoint(
                _Proto, local_addr=(self.host, 0)
            )
            self.port = self._udp.get_extra_info("sockname")[1]
        else:
            assert gateway_port is not None
            reader, self._writer = await asyncio.open_connection(
                LOOPBACK, gateway_port, local_addr=(self.host, 0))
            self.port = self._writer.get_extra_info("sockname")[1]
            self._reader_task = asyncio.create_task(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        framer = StreamFramer()
        with contextlib.suppress(ConnectionError, RemoteProtocolError):
            while data := await reader.read(65536):
                self.raw.append(data)
                framer.feed(data)
                for event in framer:
                    if isinstance(event, (SipRequest, SipResponse)):
                        self.inbox.put_nowait(event)

    def _got(self, data: bytes) -> None:
        self.raw.append(data)
        try:
            self.inbox.put_nowait(parse_datagram(data))
        except RemoteProtocolError:
            pass

    @property
    def closed(self) -> bool:
        """For TCP: the gateway closed the connection."""
        return self._reader_task is not None and self._reader_task.done()

    async def close(self) -> None:
        await _close(self._udp, self._writer, self._reader_task)

    def send(self, data: bytes | str | SipMessage, port: int) -> None:
        if isinstance(data, (SipRequest, SipResponse)):
            data = data.to_bytes()
        elif isinstance(data, str):
            data = data.encode()
        if self._udp is not None:
            self._udp.sendto(data, (LOOPBACK, port))
        else:
            assert self._writer is not None
            self._writer.write(data)

    async def expect(
        self, match: Callable[[SipMessage], bool] | int | str | None = None,
        timeout: float = 3.0,
    ) -> SipMessage:
        """The next message that matches (a status, a method, or a predicate); messages
        skipped on the way stay available to later `expect` calls."""
        predicate = _matcher(match)
        for i, message in enumerate(self._seen):
            if predicate(message):
                return self._seen.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no message matching {match!r}; got {self._seen!r}")
            try:
                message = await asyncio.wait_for(self.inbox.get(), remaining)
            except TimeoutError:
                raise TimeoutError(f"no message matching {match!r}; got {self._seen!r}") from None
            if predicate(message):
                return message
            self._seen.append(message)

    def received(self) -> list[SipMessage]:
        """Everything that arrived and was not taken by `expect` yet (kept for it)."""
        while not self.inbox.empty():
            self._seen.append(self.inbox.get_nowait())
        return list(self._seen)

    async def silence(self, match: Callable[[SipMessage], bool] | int | str | None = None,
                      seconds: float = 0.5) -> None:
        """Assert that nothing (matching) arrives for `seconds`."""
        try:
            message = await self.expect(match, timeout=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected silence, got {message!r}")

    # ---- building requests ----------------------------------------------------------------

    def request(
        self, method: str, uri: str, *, to: str | None = None, from_: str | None = None,
        call_id: str | None = None, cseq: int | None = None, branch: str | None = None,
        headers: Iterable[tuple[str, str]] = (), body: bytes = b"", from_tag: str | None = None,
    ) -> SipRequest:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        lines = [
            ("Via", f"SIP/2.0/{self.transport} {self.host}:{self.port};branch="
                    f"{branch or new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", from_ or f"<sip:{self.user}@{self.host}:{self.port}>;tag="
                              f"{from_tag or new_tag()}"),
            ("To", to or f"<{uri}>"),
            ("Call-ID", call_id or f"{secrets.token_hex(8)}@{LOOPBACK}"),
            ("CSeq", f"{cseq} {method}"),
            ("Contact", f"<sip:{self.user}@{self.host}:{self.port};transport="
                        f"{self.transport.lower()}>"),
            *headers,
        ]
        if body:
            lines.append(("Content-Type", "application/sdp"))
        return SipRequest(method, uri, Headers(lines), body)

    def cancel_of(self, invite: SipRequest) -> SipRequest:
        """The CANCEL of an INVITE we sent: its Request-URI, Call-ID, From, To, CSeq number
        and top Via branch (RFC 3261 9.1)."""
        return self.request("CANCEL", invite.uri, cseq=invite.cseq.number,
                            branch=invite.top_via.branch, from_=invite.headers.get("From"),
                            to=invite.headers.get("To"), call_id=invite.call_id)

    def answer(self, request: SipRequest, status: int, *, to_tag: str | None = None,
               headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> SipResponse:
        """A response to `request` (for playing the agent's phone); 2xx get our Contact
        and copy the Record-Route, as a UAS must (RFC 3261 12.1.1)."""
        extra = list(headers)
        if 200 <= status < 300:
            extra += [("Record-Route", rr) for rr in request.headers.get_all("Record-Route")]
            extra.append(("Contact", f"<sip:{self.user}@{self.host}:{self.port}>"))
        if body:
            extra.append(("Content-Type", "application/sdp"))
        return make_response(request, status, to_tag=to_tag, extra_headers=extra, body=body)

    async def register(
        self, gateway_port: int, user: str, password: str, *, expires: int = 60,
        algorithm: str = "SHA-256", contact: str | None = None,
    ) -> SipResponse:
        """REGISTER as `user`, answering the gateway's challenge for `algorithm`."""
        uri = f"sip:{LOOPBACK}:{gateway_port}"
        call_id = f"{secrets.token_hex(8)}@{LOOPBACK}"
        tag = new_tag()
        contact = contact or f"<sip:{user}@{self.host}:{self.port}>"
        common = dict(
            to=f"<sip:{user}@{LOOPBACK}:{gateway_port}>",
            from_=f"<sip:{user}@{LOOPBACK}:{gateway_port}>;tag={tag}", call_id=call_id,
        )
        extra = [("Expires", str(expires))]
        first = self.request("REGISTER", uri, headers=extra, **common)
        first.headers.set("Contact", contact)
        self.send(first, gateway_port)
        challenge = await self.expect(401)
        assert isinstance(challenge, SipResponse)
        offered = [Challenge.parse(v) for v in challenge.headers.get_all("WWW-Authenticate")]
        chosen = next(c for c in offered if c.algorithm == algorithm)
        credentials = authorize(chosen, username=user, password=password, method="REGISTER",
                                uri=uri)
        second = self.request("REGISTER", uri, headers=[
            *extra, ("Authorization", credentials.to_header())], **common)
        second.headers.set("Contact", contact)
        self.send(second, gateway_port)
        final = await self.expect(lambda m: isinstance(m, SipResponse) and m.status >= 200)
        assert isinstance(final, SipResponse)
        return final


async def _close(udp: asyncio.DatagramTransport | None, writer: asyncio.StreamWriter | None,
                 reader_task: asyncio.Task[None] | None) -> None:
    if udp is not None:
        udp.close()
    if writer is not None:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if reader_task is not None:
        reader_task.cancel()
        with contextlib.suppress(BaseException):
            await reader_task


def _matcher(match: Callable[[SipMessage], bool] | int | str | None
             ) -> Callable[[SipMessage], bool]:
    if match is None:
        return lambda m: True
    if isinstance(match, int):
        return lambda m: isinstance(m, SipResponse) and m.status == match
    if isinstance(match, str):
        return lambda m: isinstance(m, SipRequest) and m.method == match
    return match


SDP = (
    b"v=0\r\no=agent 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


class DroppingRelay:
    """A UDP relay on 127.0.0.1 in front of `target` that loses chosen datagrams.

    What anyone sends to the relay goes to `target`; what `target` sends back goes to whoever
    spoke last. The first `drop` datagrams towards the target that start with `prefix` are
    lost on the way, as a congested network would lose them.
    """

    def __init__(self, target_port: int, *, prefix: bytes = b"INVITE ", drop: int = 1) -> None:
        self.target = (LOOPBACK, target_port)
        self.prefix = prefix
        self.to_drop = drop
        self.dropped: list[bytes] = []
        self.forwarded = 0
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._client: Any = None

    async def __aenter__(self) -> DroppingRelay:
        relay = self

        class _Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                relay._relay(data, addr)

        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            _Proto, local_addr=(LOOPBACK, 0))
        self.port = self._transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            self._transport.close()

    def _relay(self, data: bytes, addr: Any) -> None:
        assert self._transport is not None
        if tuple(addr[:2]) == self.target:
            if self._client is not None:
                self._transport.sendto(data, self._client)
            return
        self._client = addr
        if self.to_drop and data.startswith(self.prefix):
            self.to_drop -= 1
            self.dropped.append(data)
            return
        self.forwarded += 1
        self._transport.sendto(data, self.target)


_STATUS = re.compile(rb"^SIP/2\.0 (\d{3}) ")
_CALL_ID = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)")


class RawSip:
    """An attacker's (or a plain peer's) socket that speaks SIP as text, read back with its
    own two regular expressions: nothing of the gateway's parser is involved, so a bug that
    the parser shares with the gateway cannot hide an attack that got through.

    `host` may be any loopback address (127.0.0.2, ...), to play another source.
    """

    def __init__(self, host: str = LOOPBACK, transport: str = "UDP") -> None:
        self.host = host
        self.transport = transport.upper()
        self.port = 0
        self.datagrams: list[bytes] = []
        self._arrived = asyncio.Event()
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    async def open(self, gateway_port: int | None = None) -> RawSip:
        loop = asyncio.get_running_loop()
        if self.transport == "UDP":
            raw = self

            class _Proto(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    raw.datagrams.append(data)
                    raw._arrived.set()

            self._udp, _ = await loop.create_datagram_endpoint(_Proto, local_addr=(self.host, 0))
            self.port = self._udp.get_extra_info("sockname")[1]
        else:
            assert gateway_port is not None
            reader, self._writer = await asyncio.open_connection(
                LOOPBACK, gateway_port, local_addr=(self.host, 0))
            self.port = self._writer.get_extra_info("sockname")[1]
            self._reader_task = asyncio.create_task(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                self.datagrams.append(data)  # a test over TCP sends one request at a time
                self._arrived.set()

    async def __aenter__(self) -> RawSip:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await _close(self._udp, self._writer, self._reader_task)

    @property
    def closed(self) -> bool:
        """Over TCP: the gateway closed the connection."""
        return self._reader_task is not None and self._reader_task.done()

    def send(self, text: str, port: int) -> None:
        """Send `text` with CRLF line ends (write it with plain newlines)."""
        data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        if self._udp is not None:
            self._udp.sendto(data, (LOOPBACK, port))
        else:
            assert self._writer is not None
            self._writer.write(data)

    def finals(self) -> dict[str, int]:
        """Final statuses received so far, by Call-ID."""
        out: dict[str, int] = {}
        for data in self.datagrams:
            status, call_id = _STATUS.match(data), _CALL_ID.search(data)
            if status and call_id and int(status.group(1)) >= 200:
                out.setdefault(call_id.group(1).decode(), int(status.group(1)))
        return out

    async def final(self, call_id: str, timeout: float = 3.0) -> int:
        """The first final status for `call_id`, waiting for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (status := self.finals().get(call_id)) is None:
            self._arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no final answer for {call_id}; got {self.datagrams!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return status

    def response_lines(self, call_id: str) -> list[str]:
        """The status lines (with reason phrases) received for `call_id`."""
        return [d.split(b"\r\n", 1)[0].decode(errors="replace") for d in self.datagrams
                if (m := _CALL_ID.search(d)) and m.group(1).decode() == call_id]

    def request(self, method: str, uri: str, *, call_id: str | None = None,
                from_tag: str | None = None, to: str | None = None, cseq: int = 1,
                branch: str | None = None, headers: Iterable[str] = (), body: str = "",
                from_: str | None = None) -> tuple[str, str]:
        """(call_id, text) of a request from this socket, every header spelled out."""
        call_id = call_id or f"{secrets.token_hex(8)}@{self.host}"
        body = body.replace("\r\n", "\n").replace("\n", "\r\n")  # as send() writes it
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport} {self.host}:{self.port};"
            f"branch={branch or 'z9hG4bK' + secrets.token_hex(8)};rport",
            "Max-Forwards: 70",
            f"From: {from_ or f'<sip:mallory@{self.host}:{self.port}>'};"
            f"tag={from_tag or secrets.token_hex(4)}",
            f"To: {to or f'<{uri}>'}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:mallory@{self.host}:{self.port}>",
            *headers,
            f"Content-Length: {len(body.encode())}",
            "",
            body,
        ]
        return call_id, "\n".join(lines)
