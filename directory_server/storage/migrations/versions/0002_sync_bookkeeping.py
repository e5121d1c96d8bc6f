"""sync bookkeeping: per-peer sizes, rejections, equivocation evidence

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('peer_members',
    sa.Column('peer', sa.String(length=255), nullable=False),
    sa.Column('member', sa.String(length=16), nullable=False),
    sa.Column('last_size', sa.BigInteger(), nullable=False),
    sa.Column('last_success_time', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('peer', 'member')
    )
    op.create_table('rejections',
    sa.Column('peer', sa.String(length=255), nullable=False),
    sa.Column('member', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('last_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message', sa.String(length=2000), nullable=False),
    sa.PrimaryKeyConstraint('peer', 'member', 'reason')
    )
    op.create_table('equivocations',
    sa.Column('member', sa.String(length=16), nullable=False),
    sa.Column('offered_sha256', sa.String(length=64), nullable=False),
    sa.Column('peer', sa.String(length=255), nullable=False),
    sa.Column('held_checkpoint', sa.LargeBinary(), nullable=False),
    sa.Column('offered_checkpoint', sa.LargeBinary(), nullable=False),
    sa.Column('detected_time', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('member', 'offered_sha256')
    )


def downgrade() -> None:
    op.drop_table('equivocations')
    op.drop_table('rejections')
    op.drop_table('peer_members')
