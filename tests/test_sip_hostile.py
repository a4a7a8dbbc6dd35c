"""Hostile traffic against the SIP edge: it answers 400 (or drops), throttles scanners, and
keeps answering everyone else.

RFC 4475 torture messages go over UDP to a running gateway (their top Via pointed at the test
socket, the rest untouched); garbage goes over UDP and TCP; scanner user agents meet the
token bucket; and hypothesis feeds random and mutated datagrams through the whole receive
path (transport, transactions, registrar, proxy) of an edge in-process, where no handler may
ever fail (the catch-all's counter must stay at zero).
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.settings import AgentConfig
from connectors.sip.edge import SipConfig, SipEdge
from connectors.sip.message import SipResponse
from connectors.sip.transaction import TimerConfig
from connectors.sip.transport import Peer
from gateway.agents import AgentDirectory
from gateway.channels import CallOffer
from gateway.clock import SystemClock
from gateway.metrics import Metrics
from tests import test_sip_torture as torture
from tests.sip_client import SDP, SipTestClient

PUBLIC_URL = "https://gw.example"


def counter(gw_or_metrics: Any, kind: str) -> float:
    metrics = getattr(gw_or_metrics, "metrics", gw_or_metrics)
    return metrics.sip_messages.labels(kind)._value.get()


@pytest.fixture
async def edge_port(start_gateway: Any) -> tuple[Any, int]:
    gw = await start_gateway(public_url=PUBLIC_URL, sip_port=0,
                             agents=[{"id": "12", "contact": "sip:agent@127.0.0.1:9"}])
    return gw, gw.gw.channels["sip"].edge.port


async def options_answered(port: int, transport: str = "UDP") -> bool:
    async with await SipTestClient(transport).open(port) as probe:
        probe.send(probe.request("OPTIONS", f"sip:127.0.0.1:{port}"), port)
        try:
            return (await probe.expect(200, timeout=2)).status == 200
        except TimeoutError:
            return False


_FIRST_VIA = re.compile(
    rb"(?im)^((?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*[\d.]+[ \t]*/[ \t]*UDP[ \t]+)([^;\s,]+)")


def aimed_at(data: bytes, port: int) -> bytes:
    """The message with its top Via sent-by pointing at our socket, nothing else changed."""
    return _FIRST_VIA.sub(rb"\g<1>127.0.0.1:" + str(port).encode(), data, count=1)


# name, message, the answer it must get (None: dropped, no answer can be formed)
TORTURE = [
    ("mismatch01", torture.MISMATCH01, 400),
    ("mismatch02", torture.MISMATCH02, 400),
    ("ltgtruri", torture.LTGTRURI, 400),
    ("lwsruri", torture.LWSRURI, 400),
    ("escruri", torture.ESCRURI, 400),
    ("multi01", torture.MULTI01, 400),
    ("ncl", torture.NCL, 400),
    ("clerr", torture.CLERR, 400),
    ("mcl01", torture.MCL01, 400),
    ("scalar02", torture.SCALAR02, None),  # its CSeq is unusable: nothing to answer with
    ("quotbal", torture.QUOTBAL, 400),
    ("badaspec", torture.BADASPEC, 400),
    ("baddn", torture.BADDN.replace(b"l: 0\r\n", b"l: 0\r\n\r\n"), 400),
    ("badinv01", torture.BADINV01, None),
    ("insuf", torture.INSUF, None),
    ("scalarlg", torture.SCALARLG, None),
    ("bigcode", torture.BIGCODE, None),
]


async def test_rfc4475_torture_messages_get_400_or_silence_and_the_edge_keeps_answering(
    edge_port: tuple[Any, int],
) -> None:
    gw, port = edge_port
    async with await SipTestClient().open() as client:
        for name, data, _ in TORTURE:
            client.send(aimed_at(data, client.port), port)
        await asyncio.sleep(0.5)
        finals = [m for m in client.received() if isinstance(m, SipResponse) and m.status >= 200]
    by_call = {m.call_id: m.status for m in finals}
    for name, data, expected in TORTURE:
        call_id = re.search(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*(\S+)", data)
        if expected is None:
            assert call_id is None or call_id.group(1).decode() not in by_call, name
        else:
            assert call_id is not None
            assert by_call.get(call_id.group(1).decode()) == expected, (name, by_call)
    assert await options_answered(port)
    assert counter(gw.gw, "internal-error") == 0


async def test_unknown_sip_version_gets_505(edge_port: tuple[Any, int]) -> None:
    _, port = edge_port
    badvers = (
        "OPTIONS sip:t.watson@example.org SIP/7.0\r\n"
        "Via:     SIP/7.0/UDP 127.0.0.1:{port};branch=z9hG4bKkdjuw\r\n"
        "Max-Forwards:     70\r\nFrom:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe\r\n"
        "To:      T. Watson <sip:t.watson@example.org>\r\n"
        "Call-ID: badvers.31417@c.example.com\r\nCSeq:    1 OPTIONS\r\nl: 0\r\n\r\n"
    )
    async with await SipTestClient().open() as client:
        client.send(badvers.format(port=client.port), port)
        await asyncio.sleep(0.3)
        # Our parser (rightly) refuses the answer's SIP/7.0 Via, so look at the bytes.
        assert [r.split(b"\r\n", 1)[0] for r in client.raw] == [
            b"SIP/2.0 505 Version Not Supported"]


async def test_garbage_over_udp_is_dropped_and_keepalives_ignored(
    edge_port: tuple[Any, int],
) -> None:
    gw, port = edge_port
    async with await SipTestClient().open() as client:
        for junk in (b"", b"\r\n\r\n", b"\x00" * 100, secrets.token_bytes(1400),
                     b"SIP/2.0 200 OK\r\n\r\n", b"INVITE\r\n\r\n", b"A" * 60000,
                     b"OPTIONS sip:x SIP/2.0\r\nVia: garbage\r\n\r\n"):
            client.send(junk, port)
        await client.silence(seconds=0.3)
    assert await options_answered(port)
    assert counter(gw.gw, "keepalive") >= 1
    assert counter(gw.gw, "malformed-dropped") >= 5
    assert counter(gw.gw, "internal-error") == 0


async def test_tcp_garbage_closes_only_that_connection(edge_port: tuple[Any, int]) -> None:
    _, port = edge_port
    async with await SipTestClient("TCP").open(port) as bad:
        bad.send(b"\r\n\r\n", port)  # a keep-alive ping gets its pong
        await asyncio.sleep(0.2)
        assert b"".join(bad.raw) == b"\r\n"
        bad.send(b"NOTSIP garbage without any framing\r\n\r\n", port)
        for _ in range(50):
            if bad.closed:
                break
            await asyncio.sleep(0.02)
        assert bad.closed
    assert await options_answered(port, "TCP")


async def test_tcp_malformed_message_in_a_good_frame_gets_400_and_the_stream_goes_on(
    edge_port: tuple[Any, int],
) -> None:
    _, port = edge_port
    async with await SipTestClient("TCP").open(port) as client:
        request = client.request("OPTIONS", f"sip:127.0.0.1:{port}")
        broken = request.to_bytes().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
        client.send(broken, port)
        assert (await client.expect(400)).status == 400
        client.send(client.request("OPTIONS", f"sip:127.0.0.1:{port}"), port)
        assert (await client.expect(200)).status == 200


@pytest.mark.parametrize("user_agent", ["friendly-scanner", "sipvicious 0.3.4", "sipcli/v1.8"])
async def test_scanners_are_throttled_per_source_and_others_still_served(
    edge_port: tuple[Any, int], user_agent: str
) -> None:
    gw, port = edge_port
    async with await SipTestClient().open() as scanner:
        for _ in range(20):
            scanner.send(scanner.request("OPTIONS", f"sip:100@127.0.0.1:{port}",
                                         headers=[("User-Agent", user_agent)]), port)
        await asyncio.sleep(0.3)
        answered = [m for m in scanner.received() if isinstance(m, SipResponse)]
        # The burst (5) passes, maybe one more token refilled meanwhile; the rest get nothing.
        assert 5 <= len(answered) <= 6
        assert counter(gw.gw, "scanner-dropped") >= 14
        # The same address with an honest User-Agent is not punished for it.
        scanner.send(scanner.request("OPTIONS", f"sip:127.0.0.1:{port}",
                                     headers=[("User-Agent", "baresip v1.0")]), port)
        assert (await scanner.expect(200)).status == 200


# ---- the whole receive path under hypothesis ---------------------------------------------------

UAC = ("127.0.0.1", 5071)
UAS = ("127.0.0.1", 5072)


class _Route:
    context_url = "https://gw.example/api/v1/contexts/t0ken"
    conversation_id = "conv_fuzz"
    leg_id = "leg_fuzz"


class _Sink:
    """A core that stores nothing; the edge's agent directory is its router."""

    def __init__(self, router: AgentDirectory) -> None:
        self.router = router

    async def open_call(self, call: Any) -> _Route:
        return _Route()

    async def offer_call(self, route: _Route, tried: Any = (), *, agent_id: Any = None,
                         exclude: Any = ()) -> CallOffer | None:
        target = self.router.offer(route.leg_id, (*tried, *exclude), agent_id)
        if target is None:
            return None
        return CallOffer(target.agent_id, target, route)  # type: ignore[arg-type]

    async def call_event(self, event: Any) -> bool:
        return True


def _seed_messages(port: int) -> list[bytes]:
    me = f"127.0.0.1:{port}"
    common = ("Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKseed1;rport\r\n"
              "From: <sip:+14155550100@127.0.0.1>;tag=f1\r\nCall-ID: seed@127.0.0.1\r\n"
              "Max-Forwards: 70\r\nContact: <sip:caller@127.0.0.1:5071>\r\n")
    sdp = SDP.decode()
    return [m.encode() for m in (
        f"INVITE sip:support@{me} SIP/2.0\r\n{common}To: <sip:support@{me}>\r\n"
        f"CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n"
        f"{sdp}",
        f"CANCEL sip:support@{me} SIP/2.0\r\n{common}To: <sip:support@{me}>\r\n"
        "CSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        f"ACK sip:agent@127.0.0.1:5072 SIP/2.0\r\n{common}To: <sip:support@{me}>;tag=a1\r\n"
        f"Route: <sip:{me};lr>\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        f"BYE sip:agent@127.0.0.1:5072 SIP/2.0\r\n{common}To: <sip:support@{me}>;tag=a1\r\n"
        f"Route: <sip:{me};lr>\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        f"INFO sip:agent@127.0.0.1:5072 SIP/2.0\r\n{common}To: <sip:support@{me}>;tag=a1\r\n"
        f"Route: <sip:{me};lr;dlg=00112233aabbccdd.0123456789abcdef>\r\n"
        "Route: <sip:127.0.0.1:5099;lr>\r\nCSeq: 3 INFO\r\nContent-Length: 0\r\n\r\n",
        f"REGISTER sip:{me} SIP/2.0\r\n{common}To: <sip:alice@{me}>\r\nCSeq: 1 REGISTER\r\n"
        'Authorization: Digest username="alice", realm="gateway", nonce="x", uri="sip:x", '
        'response="00", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c"\r\n'
        "Expires: 60\r\nContent-Length: 0\r\n\r\n",
        f"OPTIONS sip:{me} SIP/2.0\r\n{common}To: <sip:{me}>\r\nCSeq: 1 OPTIONS\r\n"
        "User-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n",
        f"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKnope;rport\r\n"
        f"{common.split(chr(10), 1)[1]}To: <sip:support@{me}>;tag=a1\r\nCSeq: 1 INVITE\r\n"
        "Content-Length: 0\r\n\r\n",
    )]


def _reply_to(request: bytes, status: int) -> bytes:
    """What the agent's phone would answer to a request the edge forwarded to it."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    keep = [line for line in head[1:] if line.split(b":", 1)[0].lower() in
            (b"via", b"from", b"to", b"call-id", b"cseq", b"record-route")]
    keep = [line + b";tag=a1" if line.lower().startswith(b"to:") and b"tag=" not in line
            else line for line in keep]
    return (b"SIP/2.0 %d Whatever\r\n" % status + b"\r\n".join(keep)
            + b"\r\nContact: <sip:agent@127.0.0.1:5072>\r\nContent-Length: 0\r\n\r\n")


@st.composite
def hostile_datagrams(draw: st.DrawFn, seeds: list[bytes], breakage: tuple[int, ...] = (
        0, 0, 1, 2, 3, 4)) -> bytes:
    """A seed message broken the ways attackers and broken stacks break them (`breakage`:
    how many faults to choose from; intact messages are needed to get deep)."""
    token = draw(st.sampled_from([b"seed1", b"seed2", b"seed3"]))  # some repeat: retransmits
    data = bytearray(draw(st.sampled_from(seeds)).replace(b"seed", token))
    for _ in range(draw(st.sampled_from(breakage))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "dup-line", "drop-line"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from(
                [b";", b",", b"<", b">", b'"', b"\r\n", b"\r\n ", b"%", b":", b"\x00",
                 b"tag=", b";rport", b"z9hG4bK", b"\xff\xfe", b"*", b"@", b"sip:"]))
        else:
            lines = bytes(data).split(b"\r\n")
            if len(lines) > 2:
                i = draw(st.integers(1, len(lines) - 2))
                lines[i:i + 1] = [lines[i], lines[i]] if kind == "dup-line" else []
                data = bytearray(b"\r\n".join(lines))
    return bytes(data)


class _FuzzEdge:
    """An edge started on its own loop, with sends captured instead of put on the wire."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        agents = AgentDirectory(
            [AgentConfig(id="12", contact="sip:agent@127.0.0.1:5072"),
             AgentConfig(id="13", sip_user="alice", sip_password="pw")], SystemClock())
        self.metrics = Metrics()
        # Real RFC timers: nothing fires within an example, so each replays the same way.
        self.edge = SipEdge(SipConfig(port=0, timers=TimerConfig()), sink=_Sink(agents),
                            agents=agents, metrics=self.metrics, clock=SystemClock())
        self.loop.run_until_complete(self.edge.start())
        self.sent: list[tuple[bytes, Peer]] = []
        self.edge.transport.send = lambda data, peer: self.sent.append((data, peer))  # type: ignore[method-assign]

    def feed(self, data: bytes, source: tuple[str, int]) -> None:
        self.edge.transport._datagram(data, source)
        self.loop.run_until_complete(asyncio.sleep(0))  # let the routing task run

    def forwarded(self) -> list[bytes]:
        """Requests the edge sent on to the agent's side."""
        return [d for d, peer in self.sent if peer.port == UAS[1] and d[:4] != b"SIP/"]

    def close(self) -> None:
        self.loop.run_until_complete(self.edge.aclose())
        self.loop.close()


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_datagram_makes_a_handler_fail(data: st.DataObject) -> None:
    """Each example is a short exchange on a fresh edge: callers' and phones' messages,
    some of them answers to what the edge forwarded, any of them broken."""
    fuzz = _FuzzEdge()
    try:
        seeds = _seed_messages(fuzz.edge.port)
        for _ in range(data.draw(st.integers(1, 6), label="steps")):
            kind = data.draw(st.sampled_from(["seed", "reply", "reply", "binary"]), label="kind")
            forwarded = fuzz.forwarded()
            if kind == "reply" and forwarded:
                pick = data.draw(st.integers(0, 99), label="which") % len(forwarded)
                status = data.draw(st.sampled_from([100, 180, 183, 200, 486, 487, 503]))
                message = data.draw(hostile_datagrams([_reply_to(forwarded[pick], status)],
                                                      (0, 0, 0, 1, 2)))
                source = UAS
            elif kind == "binary":
                message = data.draw(st.binary(max_size=300))
                source = UAC
            else:
                message = data.draw(hostile_datagrams(seeds))
                source = data.draw(st.sampled_from([UAC, UAS]))
            fuzz.feed(message, source)
            assert counter(fuzz.metrics, "internal-error") == 0
        for sent, _ in fuzz.sent:
            assert b"\r\n\r\n" in sent  # whole messages only
        # And after all that, it still answers.
        port = fuzz.edge.port
        fuzz.feed((f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5099;"
                   "branch=z9hG4bKprobe\r\nFrom: <sip:p@127.0.0.1>;tag=1\r\n"
                   f"To: <sip:127.0.0.1:{port}>\r\nCall-ID: probe\r\n"
                   "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(),
                  ("127.0.0.1", 5099))
        assert any(d.startswith(b"SIP/2.0 200 OK") and peer.port == 5099
                   for d, peer in fuzz.sent)
    finally:
        fuzz.close()
