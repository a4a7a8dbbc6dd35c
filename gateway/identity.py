"""Identity linking: which customer an address belongs to, and the evidence for it.

Every link records how it was learned (DESIGN.md "Identity"); links are upgraded, never
silently downgraded; merges are recorded with what they moved so that undo restores both
customers exactly. Functions take an open connection: the caller owns the transaction.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from gateway.addresses import PHONE_CHANNELS, Address
from gateway.conversations import insert_ignore
from gateway.domain import AddressLink, CustomerId
from gateway.models import Conversation, Customer, CustomerAddress, IdentityLink, Merge
from gateway.store import Prepared, new_id


class Evidence(StrEnum):
    PROVED = "proved"
    ATTESTED = "attested"
    SAME_NUMBER = "same-number"
    CLAIMED = "claimed"
    AGENT = "agent"


# Strength for upgrades: a link only ever moves up this list by itself.
STRENGTH = {
    Evidence.PROVED: 5,
    Evidence.ATTESTED: 4,
    Evidence.AGENT: 3,
    Evidence.SAME_NUMBER: 2,
    Evidence.CLAIMED: 1,
}


class IdentityError(Exception):
    """An identity operation cannot be done; the message says why, for a person."""


CUSTOMERS = Customer.__table__
ADDRESSES = CustomerAddress.__table__
LINKS = IdentityLink.__table__
MERGES = Merge.__table__
CONVERSATIONS = Conversation.__table__
# Built once; the columns come from the parameters given at execution.
INSERT_LINKS = insert(LINKS)


_FIND = Prepared(select(ADDRESSES.c.customer_id, ADDRESSES.c.evidence).where(
    ADDRESSES.c.address == bindparam("a")
))


def find_customer(conn: Connection, address: Address) -> AddressLink | None:
    """Whom the address belongs to (following merges) and on what evidence; None when
    unknown."""
    rows = _FIND.execute(conn, {"a": str(address)})
    return AddressLink(rows[0][0], rows[0][1]) if rows else None


def identity_key(address: Address) -> str:
    """What makes a new customer unique: the number for every phone channel, else the address.

    The key is written on the customer created for it, under a unique index: a second gateway
    meeting the same new number at the same moment (an SMS at one, a WhatsApp message at the
    other) cannot create a second customer; it waits for the first and joins it."""
    return f"tel:{address.value}" if address.is_phone else str(address)


_KEY_OWNER = Prepared(select(CUSTOMERS.c.id, CUSTOMERS.c.merged_into).where(
    CUSTOMERS.c.identity_key == bindparam("k")))


def resolve(
    conn: Connection,
    address: Address,
    evidence: Evidence,
    now: datetime,
    detail: str | None = None,
    display_name: str | None = None,
) -> tuple[CustomerId, bool]:
    """The customer for `address`, creating or linking one. Returns (customer_id, created).

    Same E.164 on sms/whatsapp/voice joins the existing customer with `same-number` evidence:
    it identifies them, it does not verify them. Safe across gateways: the customer is
    inserted only if no customer holds the address's `identity_key` (insert-or-get); one
    that lost that race finds the winner's rows (committed by then) on the second look.
    """
    key = identity_key(address)
    for _look in range(2):
        found = find_customer(conn, address)
        if found is not None:
            if STRENGTH[evidence] > STRENGTH[Evidence(found.evidence)]:
                _relink(conn, address, found.customer_id, evidence, now, detail)
            return found.customer_id, False
        if address.is_phone:
            siblings = [str(address.on(ch)) for ch in sorted(PHONE_CHANNELS - {address.channel})]
            row = (
                conn.execute(
                    select(ADDRESSES.c.customer_id)
                    .where(ADDRESSES.c.address.in_(siblings))
                    .order_by(ADDRESSES.c.linked_at)
                    .limit(1)
                )
            ).first()
            if row is not None:
                # The link is by number, whatever the channel says about the sender.
                link(conn, address, row[0], Evidence.SAME_NUMBER, now, detail)
                return CustomerId(row[0]), False
        customer_id = CustomerId(new_id("cus"))
        created = conn.execute(insert_ignore(conn, CUSTOMERS), dict(
            id=customer_id, display_name=display_name, created_at=now, identity_key=key))
        if created.rowcount == 1:
            link(conn, address, customer_id, evidence, now, detail)
            return customer_id, True
    # The key's customer holds no address of this number any more (an agent moved them):
    # it is still the customer this number first made, so the address joins it.
    owner = _key_owner(conn, key)
    link(conn, address, owner, Evidence.SAME_NUMBER if address.is_phone else evidence, now,
         detail)
    return owner, False


def _key_owner(conn: Connection, key: str) -> CustomerId:
    """The customer created for `key`, following merges to the one that survived."""
    rows = _KEY_OWNER.execute(conn, {"k": key})
    if not rows:
        raise IdentityError(f"no customer holds {key}")
    customer_id, merged_into = rows[0]
    seen = {customer_id}
    while merged_into is not None and merged_into not in seen:
        customer_id = merged_into
        seen.add(customer_id)
        merged_into = conn.execute(select(CUSTOMERS.c.merged_into)
                                   .where(CUSTOMERS.c.id == customer_id)).scalar_one_or_none()
    return CustomerId(customer_id)


def link(
    conn: Connection,
    address: Address,
    customer_id: str,
    evidence: Evidence,
    now: datetime,
    detail: str | None = None,
    merge_id: str | None = None,
) -> None:
    """Link a new address to a customer. An address already linked is an IdentityError.

    Safe across gateways: the address row is inserted only if it is new; one that another
    gateway inserted a moment ago (committed by then) is decided on as if it had been there."""
    for _look in range(2):
        found = find_customer(conn, address)
        if found is not None:
            if found.customer_id == customer_id:
                if STRENGTH[evidence] > STRENGTH[Evidence(found.evidence)]:
                    _relink(conn, address, customer_id, evidence, now, detail)
                return
            if evidence is Evidence.CLAIMED:
                # Two customers are never merged on a claim; the claim is recorded, not applied.
                conn.execute(INSERT_LINKS, dict(
                        address=str(address),
                        customer_id=customer_id,
                        evidence="claimed-conflict",
                        detail=detail,
                        at=now,
                    ))
                return
            raise IdentityError(f"{address} already belongs to customer {found.customer_id}")
        inserted = conn.execute(insert_ignore(conn, ADDRESSES), dict(
                address=str(address),
                channel=address.channel,
                value=address.value,
                customer_id=customer_id,
                evidence=str(evidence),
                detail=detail,
                linked_at=now,
            ))
        if inserted.rowcount == 1:
            break
    else:
        raise IdentityError(f"{address} is being linked elsewhere; try again")
    conn.execute(INSERT_LINKS, dict(
            address=str(address),
            customer_id=customer_id,
            evidence=str(evidence),
            detail=detail,
            at=now,
            merge_id=merge_id,
        ))


def _relink(
    conn: Connection,
    address: Address,
    customer_id: str,
    evidence: Evidence,
    now: datetime,
    detail: str | None,
) -> None:
    conn.execute(
        update(ADDRESSES)
        .where(ADDRESSES.c.address == str(address))
        .values(evidence=str(evidence), detail=detail, linked_at=now)
    )
    conn.execute(INSERT_LINKS, dict(
            address=str(address), customer_id=customer_id, evidence=str(evidence),
            detail=detail, at=now,
        ))


def mark_proved(
    conn: Connection, address: Address, customer_id: str, now: datetime, how: str
) -> None:
    link(conn, address, customer_id, Evidence.PROVED, now, detail=how)


def merge(
    conn: Connection, survivor_id: str, merged_id: str, agent: str | None, now: datetime
) -> str:
    """An agent merges `merged_id` into `survivor_id`. Returns the merge id for undo."""
    if survivor_id == merged_id:
        raise IdentityError("cannot merge a customer with itself")
    rows = (
        conn.execute(
            select(CUSTOMERS.c.id, CUSTOMERS.c.merged_into).where(
                CUSTOMERS.c.id.in_([survivor_id, merged_id])
            )
        )
    ).all()
    known = {r[0]: r[1] for r in rows}
    for cid in (survivor_id, merged_id):
        if cid not in known:
            raise IdentityError(f"no customer {cid}")
        if known[cid] is not None:
            raise IdentityError(f"customer {cid} was already merged into {known[cid]}")
    addrs = (
        conn.execute(
            select(ADDRESSES.c.address, ADDRESSES.c.evidence).where(
                ADDRESSES.c.customer_id == merged_id
            )
        )
    ).all()
    convs = (
        conn.execute(
            select(CONVERSATIONS.c.id).where(CONVERSATIONS.c.customer_id == merged_id)
        )
    ).scalars().all()
    merge_id = new_id("mrg")
    # One open conversation per customer (a unique index): when both have one, the merged
    # customer's is closed (its transcript stays) and reopened by undo.
    survivor_open = conn.execute(select(CONVERSATIONS.c.id).where(
        CONVERSATIONS.c.customer_id == survivor_id, CONVERSATIONS.c.status == "open")).first()
    closed = [] if survivor_open is None else list(conn.execute(
        update(CONVERSATIONS)
        .where(CONVERSATIONS.c.customer_id == merged_id, CONVERSATIONS.c.status == "open")
        .values(status="closed", closed_at=now).returning(CONVERSATIONS.c.id)).scalars())
    moved = {"addresses": {a: e for a, e in addrs}, "conversations": list(convs),
             "closed": closed}
    conn.execute(
        insert(MERGES).values(
            id=merge_id, survivor_id=survivor_id, merged_id=merged_id, agent=agent, at=now,
            undone_at=None, moved=moved,
        )
    )
    conn.execute(
        update(ADDRESSES)
        .where(ADDRESSES.c.customer_id == merged_id)
        .values(customer_id=survivor_id, evidence=str(Evidence.AGENT), linked_at=now)
    )
    for address in moved["addresses"]:
        conn.execute(INSERT_LINKS, dict(
                address=address, customer_id=survivor_id, evidence=str(Evidence.AGENT),
                detail=f"merged by {agent or 'an agent'}", at=now, merge_id=merge_id,
            ))
    conn.execute(
        update(CONVERSATIONS)
        .where(CONVERSATIONS.c.customer_id == merged_id)
        .values(customer_id=survivor_id)
    )
    conn.execute(
        update(CUSTOMERS).where(CUSTOMERS.c.id == merged_id).values(merged_into=survivor_id)
    )
    return merge_id


def undo_merge(conn: Connection, merge_id: str, now: datetime) -> None:
    row = (
        conn.execute(
            select(MERGES.c.survivor_id, MERGES.c.merged_id, MERGES.c.moved, MERGES.c.undone_at)
            .where(MERGES.c.id == merge_id)
        )
    ).first()
    if row is None:
        raise IdentityError(f"no merge {merge_id}")
    survivor_id, merged_id, moved, undone_at = row
    if undone_at is not None:
        raise IdentityError(f"merge {merge_id} was already undone")
    for address, evidence in moved["addresses"].items():
        conn.execute(
            update(ADDRESSES)
            .where(ADDRESSES.c.address == address, ADDRESSES.c.customer_id == survivor_id)
            .values(customer_id=merged_id, evidence=evidence, linked_at=now)
        )
        conn.execute(INSERT_LINKS, dict(
                address=address, customer_id=merged_id, evidence=evidence,
                detail="merge undone", at=now, merge_id=merge_id,
            ))
    if moved["conversations"]:
        conn.execute(
            update(CONVERSATIONS)
            .where(CONVERSATIONS.c.id.in_(moved["conversations"]))
            .values(customer_id=merged_id)
        )
    if moved.get("closed"):
        conn.execute(
            update(CONVERSATIONS)
            .where(CONVERSATIONS.c.id.in_(moved["closed"]))
            .values(status="open", closed_at=None)
        )
    conn.execute(
        update(CUSTOMERS).where(CUSTOMERS.c.id == merged_id).values(merged_into=None)
    )
    conn.execute(update(MERGES).where(MERGES.c.id == merge_id).values(undone_at=now))
