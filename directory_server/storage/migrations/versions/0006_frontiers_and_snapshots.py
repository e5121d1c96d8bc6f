"""log frontiers and state snapshots: the right frontier of each member's log tree at every multiple of 256 leaves, for consistency proofs in O(log n + change); each member's state trees, for a first append in a process in O(change)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Left empty for the logs already stored: Store computes a member's frontiers from its
    # leaf hashes the first time a consistency proof needs them, once.
    op.create_table(
        'log_frontiers',
        sa.Column('member', sa.String(length=16), nullable=False),
        sa.Column('size', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('frontier', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('member', 'size'),
    )
    op.create_table(
        'state_snapshots',
        sa.Column('member', sa.String(length=16), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('everything', sa.LargeBinary(), nullable=False),
        sa.Column('public', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('member'),
    )


def downgrade() -> None:
    op.drop_table('state_snapshots')
    op.drop_table('log_frontiers')
