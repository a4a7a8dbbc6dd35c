"""one customer per new number, one open conversation per customer, in the database

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:40:00.000000

Several gateways on one database must not make two customers of one new number, nor two
open conversations of one customer (issue 12, point 2). Two unique indexes say so:
`customers.identity_key` (the number or address a customer was created for) and a partial
one on `conversations(customer_id) WHERE status = 'open'`.

Data written before this revision may break them. The migration does not refuse; it does
what one gateway would have done had it seen both rows, and loses nothing:
- a customer with several open conversations keeps the most recently active one open; the
  others are closed (closed_at = now). Their transcripts stay; bundles list them as earlier
  conversations.
- customers get the key of their first address; where two customers share one (a number that
  raced into two customers), the older keeps it. They are NOT merged: a merge is an agent's
  decision, with an undo (DESIGN.md "Identity"). Their count is logged; the query in
  docs/scale-out.md lists them for an agent to merge.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from gateway.models import UtcDateTime

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
OPEN = sa.text("status = 'open'")

# Window functions and WITH ... UPDATE run on PostgreSQL and on SQLite 3.25+ alike.
_BACKFILL_KEYS = sa.text("""
WITH firsts AS (
    SELECT a.customer_id, c.created_at,
           CASE WHEN a.channel IN ('sms', 'whatsapp', 'voice') THEN 'tel:' || a.value
                ELSE a.address END AS k,
           ROW_NUMBER() OVER (PARTITION BY a.customer_id
                              ORDER BY a.linked_at, a.address) AS nth_address
    FROM addresses a JOIN customers c ON c.id = a.customer_id
), owners AS (
    SELECT customer_id, k,
           ROW_NUMBER() OVER (PARTITION BY k ORDER BY created_at, customer_id) AS nth_customer
    FROM firsts WHERE nth_address = 1
)
UPDATE customers SET identity_key = (
    SELECT k FROM owners WHERE owners.customer_id = customers.id AND nth_customer = 1)
""")

_SHARED_NUMBERS = sa.text("""
SELECT count(*) FROM (
    SELECT value FROM addresses WHERE channel IN ('sms', 'whatsapp', 'voice')
    GROUP BY value HAVING count(DISTINCT customer_id) > 1) AS shared
""")


def _close_extra_open_conversations(conn: sa.Connection) -> int:
    conversations = sa.table("conversations", sa.column("id"), sa.column("customer_id"),
                             sa.column("status"), sa.column("last_activity_at"),
                             sa.column("opened_at"), sa.column("closed_at", UtcDateTime()))
    c = conversations.c
    doubled = conn.execute(
        sa.select(c.customer_id).where(c.status == "open")
        .group_by(c.customer_id).having(sa.func.count() > 1)).scalars().all()
    now = datetime.now(UTC)
    closed = 0
    for customer_id in doubled:
        ids = conn.execute(
            sa.select(c.id).where(c.customer_id == customer_id, c.status == "open")
            .order_by(c.last_activity_at.desc(), c.opened_at.desc(), c.id.desc())
        ).scalars().all()
        conn.execute(sa.update(conversations).where(c.id.in_(ids[1:]))
                     .values(status="closed", closed_at=now))
        closed += len(ids) - 1
    return closed


def upgrade() -> None:
    conn = op.get_bind()
    closed = _close_extra_open_conversations(conn)
    if closed:
        log.warning("scale_unique: closed %d open conversation(s) beside a newer open one of "
                    "the same customer (one open conversation per customer from now on)", closed)
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.create_index('uq_conversations_one_open', ['customer_id'], unique=True,
                              postgresql_where=OPEN, sqlite_where=OPEN)
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('identity_key', sa.String(length=330), nullable=True))
    conn.execute(_BACKFILL_KEYS)
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index('uq_customers_identity_key', ['identity_key'], unique=True)
    shared = conn.execute(_SHARED_NUMBERS).scalar_one()
    if shared:
        log.warning("scale_unique: %d phone number(s) belong to more than one customer; they are "
                    "not merged automatically (see docs/scale-out.md to list them)", shared)


def downgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index('uq_customers_identity_key')
        batch_op.drop_column('identity_key')
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('uq_conversations_one_open')
