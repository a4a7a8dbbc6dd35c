"""agents' SIP registrations in the database, shared by the gateways behind Kamailio

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 00:20:00.000000

With GATEWAY_SIP_SHARED_REGISTRATIONS a gateway writes the bindings its registrar accepts
here and reads the others' (issue 12, point 4): a phone registered through gateway A takes
calls that enter through gateway B. Only adds a table; old gateways ignore it.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.models import UtcDateTime

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'sip_registrations',
        sa.Column('agent_id', sa.String(length=80), nullable=False),
        sa.Column('contact', sa.String(length=500), nullable=False),
        sa.Column('source_host', sa.String(length=100), nullable=True),
        sa.Column('source_port', sa.Integer(), nullable=True),
        sa.Column('transport', sa.String(length=10), nullable=False),
        sa.Column('expires_at', UtcDateTime(), nullable=False),
        sa.Column('holder', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('agent_id', 'contact'),
    )
    op.create_index(op.f('ix_sip_registrations_expires_at'), 'sip_registrations',
                    ['expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_sip_registrations_expires_at'), table_name='sip_registrations')
    op.drop_table('sip_registrations')
