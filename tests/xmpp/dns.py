"""A DNS server on a loopback UDP port for the tests: it answers the SRV records it is
given and NXDOMAIN for anything else, and keeps what it was asked. Just enough of RFC 1035
(one question per query, no compression in what it parses) for c-ares, which slixmpp uses
through aiodns to find an XMPP server by its domain (RFC 6120 3.2.1)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from typing import Any

SRV, IN = 33, 1


def _name(wire: bytes, at: int) -> tuple[str, int]:
    labels = []
    while (size := wire[at]) != 0:
        labels.append(wire[at + 1:at + 1 + size].decode("ascii"))
        at += 1 + size
    return ".".join(labels).lower(), at + 1


def _labels(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.split(".")) + b"\0"


def answer(query: bytes, records: Mapping[str, tuple[str, int]]) -> tuple[str, int, bytes]:
    """(name asked, type asked, the response) for one query; `records`: SRV name ->
    (target host, port)."""
    ident, flags = struct.unpack("!HH", query[:4])
    name, end = _name(query, 12)
    qtype, _qclass = struct.unpack("!HH", query[end:end + 4])
    question = query[12:end + 4]
    found = records.get(name) if qtype == SRV else None
    rd = flags & 0x0100
    if found is None:  # NXDOMAIN, authoritative
        return name, qtype, struct.pack("!HHHHHH", ident, 0x8403 | rd, 1, 0, 0, 0) + question
    target, port = found
    rdata = struct.pack("!HHH", 0, 5, port) + _labels(target)
    record = struct.pack("!HHHIH", 0xC00C, SRV, IN, 60, len(rdata)) + rdata
    return name, qtype, (struct.pack("!HHHHHH", ident, 0x8400 | rd, 1, 1, 0, 0)
                         + question + record)


class SrvServer(asyncio.DatagramProtocol):
    """`async with SrvServer({"_xmpp-client._tcp.localhost": ("localhost", 5222)}) as dns:`
    then ask `dns.address` ("127.0.0.1:port"); `dns.asked` lists (name, type)."""

    def __init__(self, records: Mapping[str, tuple[str, int]]) -> None:
        self.records = dict(records)
        self.asked: list[tuple[str, int]] = []
        self.address = ""
        self._transport: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> SrvServer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self,
                                                           local_addr=("127.0.0.1", 0))
        self._transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("sockname")[:2]
        self.address = f"{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            self._transport.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            name, qtype, response = answer(data, self.records)
        except (IndexError, struct.error, UnicodeDecodeError):
            return  # not a query we understand: no answer, as a real server might
        self.asked.append((name, qtype))
        assert self._transport is not None
        self._transport.sendto(response, addr)
