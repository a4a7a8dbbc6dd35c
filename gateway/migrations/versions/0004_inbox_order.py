"""inbox order: conversations by last activity (keyset pages of the agent inbox)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 10:00:00
"""
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.create_index('ix_conversations_status_activity',
                              ['status', 'last_activity_at', 'id'], unique=False)
        batch_op.create_index('ix_conversations_activity', ['last_activity_at', 'id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('ix_conversations_activity')
        batch_op.drop_index('ix_conversations_status_activity')
