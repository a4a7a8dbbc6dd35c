"""agent desk assignment, thread tokens, channel checkpoints

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 20:30:00.000000
"""
from alembic import op
import sqlalchemy as sa
import gateway.models


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('agent_id', sa.String(length=100), nullable=True))
        batch_op.create_index('ix_conversations_agent', ['agent_id', 'status'],
                              unique=False)
    op.create_table('thread_tokens',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('leg_id', sa.String(length=40), nullable=False),
    sa.Column('conversation_id', sa.String(length=40), nullable=False),
    sa.Column('created_at', gateway.models.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['leg_id'], ['legs.id'], ),
    sa.PrimaryKeyConstraint('token_hash')
    )
    with op.batch_alter_table('thread_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_thread_tokens_leg_id'), ['leg_id'], unique=False)
    op.create_table('checkpoints',
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('value', sa.String(length=400), nullable=False),
    sa.Column('updated_at', gateway.models.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )


def downgrade() -> None:
    op.drop_table('checkpoints')
    with op.batch_alter_table('thread_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_thread_tokens_leg_id'))
    op.drop_table('thread_tokens')
    with op.batch_alter_table('conversations', schema=None) as batch_op:
        batch_op.drop_index('ix_conversations_agent')
        batch_op.drop_column('agent_id')
