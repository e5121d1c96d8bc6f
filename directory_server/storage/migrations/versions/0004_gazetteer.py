"""gazetteer: place names from members' signed gazetteers beside those authorities mention

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # kind: 0 a municipality an authority's coverage names; 1 a subdivision and 2 a
    # municipality of the member's gazetteer (records members/{member}/places/{place}).
    with op.batch_alter_table('places') as batch:
        batch.add_column(sa.Column('kind', sa.Integer(), nullable=False, server_default='0'))
    op.create_index('ix_places_member_kind', 'places', ['member', 'kind'])


def downgrade() -> None:
    op.drop_index('ix_places_member_kind', table_name='places')
    with op.batch_alter_table('places') as batch:
        batch.drop_column('kind')
