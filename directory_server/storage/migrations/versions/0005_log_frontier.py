"""log frontier: the right frontier of each member's log tree beside its checkpoint; records by member

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


def downgrade() -> None:
    op.drop_index('ix_records_member_name', table_name='records')
    with op.batch_alter_table('checkpoints') as batch:
        batch.drop_column('frontier')
