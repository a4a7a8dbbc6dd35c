"""guess limits shared by every gateway on one database

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 05:40:00.000000

The escalation PIN's failure limits (per source and for everybody) were token buckets in each
gateway's memory, so N gateways on one PostgreSQL let a guesser N times the attempts (a SIP
INVITE is dispatched by Call-ID, which the caller picks). The buckets now live in
`guess_buckets`, taken and given back in the transaction that checks the PIN. Adds a table
only: an old gateway beside it keeps its own in-memory limits.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guess_buckets",
        sa.Column("key", sa.String(length=200), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_guess_buckets_at", "guess_buckets", ["at"])


def downgrade() -> None:
    op.drop_index("ix_guess_buckets_at", table_name="guess_buckets")
    op.drop_table("guess_buckets")
