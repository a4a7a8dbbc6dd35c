"""A small SIP softphone over UDP for `gateway demo`: the customer's phone that dials in and
the agent's phone that REGISTERs and rings. Pure Python on the gateway's own SIP parser and
digest code, so the demo needs no SIP peer installed (SIPp and baresip are the tests' peers).

It speaks just enough RFC 3261 for one call at a time: REGISTER with digest, INVITE / 100 /
180 / 200 / ACK, BYE, and the in-dialog routing the gateway's Record-Route asks for. It keeps
no media: the SDP offers a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connectors.sip.answers import make_response
from connectors.sip.digest import Challenge, authorize
from connectors.sip.errors import RemoteProtocolError
from connectors.sip.framing import parse_datagram
from connectors.sip.grammar import new_branch, new_tag
from connectors.sip.headers import Headers
from connectors.sip.message import SipMessage, SipRequest, SipResponse

HOST = "127.0.0.1"
TIMEOUT = 5.0
RINGING = 180.0  # how long a ringing call may wait for its answer (RFC 3261 Timer C)


def _sdp(user: str) -> bytes:
    return (f"v=0\r\no={user} 1 1 IN IP4 {HOST}\r\ns=demo\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            "m=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()


class PhoneError(Exception):
    """The gateway answered something a phone would show the user as a failed call."""


@dataclass
class Dialog:
    """One established call as the phone that placed or took it keeps it."""

    call_id: str
    local: str  # our From/To header value, with our tag
    remote: str  # theirs
    remote_target: str  # their Contact: the Request-URI of in-dialog requests
    route: list[str]  # the route set (Record-Route), towards the remote party
    cseq: int = 1


class SoftPhone:
    """One UDP socket on loopback and a SIP identity; `await phone.open()` first."""

    def __init__(self, user: str, gateway_port: int) -> None:
        self.user = user
        self.gateway = (HOST, gateway_port)
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._inbox: asyncio.Queue[SipMessage] = asyncio.Queue()
        self._held: list[SipMessage] = []
        self._cseq = 0
        self._tag = ""  # our To tag on the INVITE that is ringing

    async def open(self) -> SoftPhone:
        phone = self

        class _Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                try:
                    phone._inbox.put_nowait(parse_datagram(data))
                except RemoteProtocolError:
                    pass  # not SIP: a phone ignores it

        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(_Proto, local_addr=(HOST, 0))
        self.port = self._udp.get_extra_info("sockname")[1]
        return self

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()

    @property
    def contact(self) -> str:
        return f"<sip:{self.user}@{HOST}:{self.port}>"

    # ---- the wire ------------------------------------------------------------------------

    def _send(self, message: SipMessage) -> None:
        assert self._udp is not None, "open() the phone first"
        self._udp.sendto(message.to_bytes(), self.gateway)

    async def _next(self, wanted: Callable[[SipMessage], bool],
                    timeout: float = TIMEOUT) -> SipMessage:
        """The next message that `wanted`; others are kept for later calls."""
        for i, message in enumerate(self._held):
            if wanted(message):
                return self._held.pop(i)

        async def find() -> SipMessage:
            while True:
                message = await self._inbox.get()
                if wanted(message):
                    return message
                self._held.append(message)

        return await asyncio.wait_for(find(), timeout)

    async def _final(self, request: SipRequest) -> SipResponse:
        """The final response to `request` (UDP: resent until something answers)."""
        branch = request.top_via.branch

        def answers(m: SipMessage) -> bool:
            return isinstance(m, SipResponse) and m.top_via.branch == branch

        deadline = asyncio.get_running_loop().time() + TIMEOUT
        interval, proceeding = 0.5, False
        self._send(request)
        while True:
            try:
                response = await self._next(answers, interval)
            except TimeoutError:
                if asyncio.get_running_loop().time() > deadline:
                    raise PhoneError(f"no answer to {request.method}") from None
                if request.method != "ACK" and not proceeding:
                    self._send(request)  # lost on the way: Timer A/E
                interval = min(interval * 2, 4.0)
                continue
            assert isinstance(response, SipResponse)
            if response.status >= 200:
                return response
            # Provisional (100 Trying, 180 Ringing): the other side is working on it. No more
            # resends, and a phone may ring for as long as its user lets it (Timer C).
            proceeding = True
            interval = TIMEOUT
            deadline = max(deadline, asyncio.get_running_loop().time() + RINGING)

    def _request(self, method: str, uri: str, *, from_: str, to: str, call_id: str,
                 cseq: int, extra: list[tuple[str, str]] | None = None,
                 body: bytes = b"") -> SipRequest:
        headers = Headers([
            ("Via", f"SIP/2.0/UDP {HOST}:{self.port};branch={new_branch()};rport"),
            ("Max-Forwards", "70"), ("From", from_), ("To", to), ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"), ("Contact", self.contact), *(extra or []),
        ])
        if body:
            headers.add("Content-Type", "application/sdp")
        return SipRequest(method, uri, headers, body)

    # ---- the agent's phone ----------------------------------------------------------------

    async def register(self, password: str, expires: int = 3600) -> None:
        """REGISTER at the gateway as `user`, answering its digest challenge."""
        uri = f"sip:{HOST}:{self.gateway[1]}"
        aor = f"<sip:{self.user}@{HOST}:{self.gateway[1]}>"
        call_id, tag = f"{secrets.token_hex(8)}@{HOST}", new_tag()
        extra: list[tuple[str, str]] = [("Expires", str(expires))]
        for _ in range(2):
            self._cseq += 1
            answer = await self._final(self._request(
                "REGISTER", uri, from_=f"{aor};tag={tag}", to=aor, call_id=call_id,
                cseq=self._cseq, extra=extra))
            if answer.status == 200:
                return
            if answer.status != 401:
                break
            challenge = Challenge.parse(answer.headers.get_all("WWW-Authenticate")[0])
            credentials = authorize(challenge, username=self.user, password=password,
                                    method="REGISTER", uri=uri)
            extra = [("Expires", str(expires)), ("Authorization", credentials.to_header())]
        raise PhoneError(f"REGISTER {self.user}: {answer.status} {answer.reason}")

    async def ringing(self, timeout: float = TIMEOUT) -> SipRequest:
        """The next INVITE: answered 180 Ringing at once, as a phone does."""
        invite = await self._next(
            lambda m: isinstance(m, SipRequest) and m.method == "INVITE", timeout)
        assert isinstance(invite, SipRequest)
        self._tag = new_tag()
        self._send(make_response(invite, 180, to_tag=self._tag))
        return invite

    async def pick_up(self, invite: SipRequest) -> Dialog:
        """Answer the ringing INVITE with 200 and wait for the caller's ACK."""
        ok = make_response(invite, 200, to_tag=self._tag, extra_headers=[
            *[("Record-Route", rr) for rr in invite.headers.get_all("Record-Route")],
            ("Contact", self.contact), ("Content-Type", "application/sdp")],
            body=_sdp(self.user))
        self._send(ok)
        try:
            await self._next(lambda m: isinstance(m, SipRequest) and m.method == "ACK"
                             and m.call_id == invite.call_id, 1.0)
        except TimeoutError:  # the 200 or the ACK was lost: send the 200 again (RFC 3261 13.3.1.4)
            self._send(ok)
            await self._next(lambda m: isinstance(m, SipRequest) and m.method == "ACK"
                             and m.call_id == invite.call_id)
        contact = invite.contacts[0].uri if invite.contacts else invite.from_addr.uri
        return Dialog(invite.call_id, ok.headers.get("To") or "", invite.headers.get("From")
                      or "", str(contact), list(invite.headers.get_all("Record-Route")))

    async def hung_up(self, timeout: float = TIMEOUT) -> None:
        """Wait for the other side's BYE and confirm it."""
        bye = await self._next(lambda m: isinstance(m, SipRequest) and m.method == "BYE",
                               timeout)
        assert isinstance(bye, SipRequest)
        self._send(make_response(bye, 200))

    # ---- the customer's phone -------------------------------------------------------------

    async def dial(self, user: str, caller_id: str) -> Dialog:
        """INVITE sip:`user`@gateway from `caller_id` (what the From header claims) until the
        call is answered; ACKs the 200. PhoneError for any other final answer."""
        uri = f"sip:{user}@{HOST}:{self.gateway[1]}"
        local = f"<sip:{caller_id}@{HOST}>;tag={new_tag()}"
        call_id = f"{secrets.token_hex(8)}@{HOST}"
        invite = self._request("INVITE", uri, from_=local, to=f"<{uri}>", call_id=call_id,
                               cseq=1, body=_sdp(self.user))
        answer = await self._final(invite)
        if answer.status != 200:
            raise PhoneError(f"the call to {user} failed: {answer.status} {answer.reason}")
        dialog = Dialog(call_id, local, answer.headers.get("To") or "",
                        str(answer.contacts[0].uri),
                        list(reversed(answer.headers.get_all("Record-Route"))))
        self._send(self._in_dialog("ACK", dialog, cseq=1))
        return dialog

    def _in_dialog(self, method: str, dialog: Dialog, cseq: int) -> SipRequest:
        return self._request(method, dialog.remote_target, from_=dialog.local,
                             to=dialog.remote, call_id=dialog.call_id, cseq=cseq,
                             extra=[("Route", route) for route in dialog.route])

    async def hang_up(self, dialog: Dialog) -> None:
        dialog.cseq += 1
        answer = await self._final(self._in_dialog("BYE", dialog, dialog.cseq))
        if answer.status != 200:
            raise PhoneError(f"BYE: {answer.status} {answer.reason}")
