"""email threads: Message-ID anchors of conversations (gateway/threads.py)

Thread tokens live in the core's thread_tokens (0003). Follows the console's 0004_inbox_order.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa
import gateway.models


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('mail_anchors',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('message_id', sa.String(length=255), nullable=False),
    sa.Column('conversation_id', sa.String(length=40), nullable=False),
    sa.Column('leg_id', sa.String(length=40), nullable=True),
    sa.Column('direction', sa.String(length=5), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=True),
    sa.Column('refs', sa.Text(), nullable=True),
    sa.Column('at', gateway.models.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['conversation_id'], ['conversations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('message_id', 'conversation_id', name='uq_mail_anchor')
    )
    with op.batch_alter_table('mail_anchors', schema=None) as batch_op:
        batch_op.create_index('ix_mail_anchors_conversation', ['conversation_id', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('mail_anchors', schema=None) as batch_op:
        batch_op.drop_index('ix_mail_anchors_conversation')
    op.drop_table('mail_anchors')
