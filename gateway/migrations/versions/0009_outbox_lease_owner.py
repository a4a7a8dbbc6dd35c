"""outbox leases are owned by a gateway instance

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 00:25:00.000000

Every gateway sends the outbox (issue 12, point 3). A row being sent names the instance that
leased it (`lease_owner`), so recovery at another gateway's start touches only rows whose
owner is gone or whose lease ran out, never a live peer's sends. Rows claimed before this
revision have no owner; recovery treats them by `lease_until` alone. Adds a column only: old
gateways keep running beside it (they neither write nor read it).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("lease_owner")
