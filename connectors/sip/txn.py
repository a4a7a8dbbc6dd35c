"""A transaction as the SIP edge runs it: the sans-IO state machine (`transaction.py`), the
network flows its messages come from and go to, its running timers, and the proxy's state.

The edge (`edge.py`) files these under their transaction keys and feeds them events; the
proxy (`proxy.py`) reads and sets `forward`, its typed per-request state. Nothing here does I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectors.sip.message import SipRequest
from connectors.sip.transaction import ClientTransaction, ServerTransaction, Timer
from connectors.sip.transport import Peer

if TYPE_CHECKING:
    from connectors.sip.proxy import Forward

__all__ = ["ClientTxn", "ServerTxn"]


class ServerTxn:
    """A server transaction and what the edge keeps beside it."""

    __slots__ = ("txn", "source", "peer", "timers", "forward")

    def __init__(self, txn: ServerTransaction, source: Peer, peer: Peer) -> None:
        self.txn = txn
        self.source = source  # where the request came from (the caller's flow)
        self.peer = peer  # where responses go (RFC 3261 18.2.2, RFC 3581)
        self.timers: dict[Timer, int] = {}  # running timers -> the token their firing carries
        self.forward: Forward | None = None  # set when the proxy relays this request

    @property
    def request(self) -> SipRequest:
        return self.txn.request


class ClientTxn:
    """A client transaction and what the edge keeps beside it."""

    __slots__ = ("txn", "peer", "timers", "forward")

    def __init__(self, txn: ClientTransaction, peer: Peer, forward: Forward | None) -> None:
        self.txn = txn
        self.peer = peer
        self.timers: dict[Timer, int] = {}
        # The relay this transaction carries; None for requests the proxy sends on its own
        # behalf (a CANCEL, the BYE for a late answer), whose answers need nothing.
        self.forward = forward
