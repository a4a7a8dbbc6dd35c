"""trust (issue 7): PIN look-up key, call attestation, the server's own secrets

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 10:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import gateway.models


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pin_lookup', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_escalations_pin_lookup'), ['pin_lookup'],
                              unique=False)
    with op.batch_alter_table('legs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attestation', sa.String(length=40), nullable=True))
    op.create_table('server_secrets',
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('value', sa.String(length=200), nullable=False),
    sa.Column('created_at', gateway.models.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('server_secrets')
    with op.batch_alter_table('legs', schema=None) as batch_op:
        batch_op.drop_column('attestation')
    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_escalations_pin_lookup'))
        batch_op.drop_column('pin_lookup')
