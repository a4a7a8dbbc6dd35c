"""Flow 3's first step: what the core decides to send, written in the deciding transaction.

A text on a leg (an agent's reply, a gateway notice, a code) becomes a transcript entry and an
outbox row that name each other; a code to an address with no leg, or a callback, becomes an
outbox row alone. The worker (`gateway/outbox.py`) sends them later through the channel.
"""

from __future__ import annotations

from gateway import conversations, outbox
from gateway.channels import CallbackRequest, CodeMessage, TextMessage
from gateway.domain import LegRow, OutboxId
from gateway.redaction import mask_cards
from gateway.writes import Tx


def text_on_leg(
    tx: Tx, leg: LegRow, customer_id: str, text: str, author: str, *,
    code: bool = False, challenge_id: str | None = None, transcript_text: str | None = None,
    secret: str | None = None,
) -> OutboxId:
    """Send `text` to the customer on `leg`; the transcript shows `transcript_text` (a code
    never enters it) or the text itself. Card numbers are masked in what is sent and stored
    alike (an agent never sends one in clear). `secret` (a code or PIN in `text`) stays in
    the outbox row only until the send is settled (`outbox.redacted_payload`)."""
    text = mask_cards(text)
    message_id = outbox.new_outbox_id()  # known before either row: each names the other
    entry_id = conversations.append(
        tx, customer_id=customer_id, conversation_id=leg.conversation_id, leg_id=leg.id,
        channel=leg.channel, direction="out", kind="message", author=author,
        text=transcript_text if transcript_text is not None else text,
        data={"outbox_id": message_id},
    )
    common = dict(id=message_id, channel=leg.channel, to=leg.address, from_=leg.local_address,
                  conversation_id=leg.conversation_id, leg_id=leg.id, thread_key=leg.thread_key)
    message = (CodeMessage(text=text, challenge_id=challenge_id, **common) if code
               else TextMessage(text=text, **common))
    outbox.enqueue(tx.conn, message, tx.now, transcript_entry_id=entry_id, secret=secret)
    tx.queued_outbound = True
    return message_id


def code_to_address(tx: Tx, address: str, channel: str, text: str, conversation_id: str,
                    challenge_id: str, secret: str | None = None) -> OutboxId:
    """A code to an address the conversation has no leg for (the outbox row alone)."""
    message = CodeMessage(id=outbox.new_outbox_id(), channel=channel, to=address, text=text,
                          conversation_id=conversation_id, challenge_id=challenge_id)
    tx.queued_outbound = True
    return outbox.enqueue(tx.conn, message, tx.now, secret=secret)


def callback(tx: Tx, number: str, conversation_id: str, escalation_token: str,
             escalation_id: str) -> OutboxId:
    """A call the gateway places to `number` (a `voice:` address)."""
    message = CallbackRequest(id=outbox.new_outbox_id(), channel="voice", to=number,
                              conversation_id=conversation_id,
                              escalation_token=escalation_token, escalation_id=escalation_id)
    tx.queued_outbound = True
    return outbox.enqueue(tx.conn, message, tx.now)
