"""log frontier: the right frontier of each member's log tree beside its checkpoint; records by member; staged entries of long pulls

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Left empty for the checkpoints already stored: Store computes a member's frontier from
    # its leaf hashes the first time it needs it, once, in the transaction of its next append.
    with op.batch_alter_table('checkpoints') as batch:
        batch.add_column(sa.Column('frontier', sa.LargeBinary(), nullable=True))
    op.create_index('ix_records_member_name', 'records', ['member', 'name'])
    op.create_table(
        'staged_entries',
        sa.Column('stage', sa.String(length=32), nullable=False),
        sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('member', sa.String(length=16), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('envelope', sa.LargeBinary(), nullable=False),
        sa.Column('leaf_hash', sa.LargeBinary(length=32), nullable=False),
        sa.Column('publish_time', sa.DateTime(timezone=True), nullable=True),
        sa.Column('members_only', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('stage', 'seq'),
    )


def downgrade() -> None:
    op.drop_table('staged_entries')
    op.drop_index('ix_records_member_name', table_name='records')
    with op.batch_alter_table('checkpoints') as batch:
        batch.drop_column('frontier')
