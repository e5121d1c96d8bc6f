"""access: members-only entries marked, withheld entries, access grants, audit log

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # restricted: the entry is members-only (DESIGN §8); served whole only to member nodes.
    # A withheld entry (kind "withheld", empty envelope) is the leaf hash of one this node
    # was not given; it has no publish time.
    with op.batch_alter_table('entries') as batch:
        batch.add_column(sa.Column('restricted', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.alter_column('publish_time', existing_type=sa.DateTime(timezone=True), nullable=True)
    op.create_index('ix_entries_withheld', 'entries', ['member', 'kind'])
    op.create_table('access_grants',
    sa.Column('token_id', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('issue_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expire_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoke_time', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('token_id')
    )
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('caller', sa.String(length=300), nullable=False),
    sa.Column('method', sa.String(length=64), nullable=False),
    sa.Column('record', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_log_time', 'audit_log', ['time'])


def downgrade() -> None:
    op.drop_index('ix_audit_log_time', table_name='audit_log')
    op.drop_table('audit_log')
    op.drop_table('access_grants')
    op.drop_index('ix_entries_withheld', table_name='entries')
    with op.batch_alter_table('entries') as batch:
        batch.alter_column('publish_time', existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.drop_column('restricted')
