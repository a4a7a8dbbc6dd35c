"""Errors of the SIP protocol core that say who broke the protocol, after h11's `_util.py`.

Raised by the pure parsers, transactions and digest code in `connectors/sip/`; the SIP edge
translates them: a `RemoteProtocolError` becomes a SIP answer (its `status_hint`) or a drop.
"""

from __future__ import annotations


class SipProtocolError(Exception):
    """Base of both errors; never raised itself.

    `status_hint` is the SIP status the edge can answer with when an answer is possible
    (400 Bad Request for malformed input, 505 for an unknown SIP version, ...).
    """

    status_hint: int

    def __init__(self, message: str, status_hint: int = 400) -> None:
        if type(self) is SipProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError, not the base")
        super().__init__(message)
        self.status_hint = status_hint


class LocalProtocolError(SipProtocolError):
    """We (the gateway or its TU) tried to do something the protocol forbids.

    Examples: a header value with a line break, a second final response on one transaction.
    A bug on our side, so the default hint is 500 Server Internal Error.
    """

    def __init__(self, message: str, status_hint: int = 500) -> None:
        super().__init__(message, status_hint)


class RemoteProtocolError(SipProtocolError):
    """The peer sent something malformed or out of protocol; answer `status_hint` or drop it."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message, status_hint)
