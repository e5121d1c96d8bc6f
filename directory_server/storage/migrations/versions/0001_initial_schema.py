"""initial schema

Revision ID: 0001
Revises: 
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('checkpoints',
    sa.Column('member', sa.String(length=16), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('root_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('issue_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expire_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('envelope', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('member')
    )
    op.create_table('competences',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('member', sa.String(length=16), nullable=False),
    sa.Column('request_type', sa.String(length=64), nullable=False),
    sa.Column('role', sa.Integer(), nullable=False),
    sa.Column('offence', sa.String(length=64), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('competences', schema=None) as batch_op:
        batch_op.create_index('ix_competences_member_type', ['member', 'request_type'], unique=False)
        batch_op.create_index('ix_competences_name', ['name'], unique=False)

    op.create_table('coverage',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('member', sa.String(length=16), nullable=False),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=2000), nullable=False),
    sa.Column('last', sa.String(length=64), nullable=False),
    sa.Column('subdivision', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('coverage', schema=None) as batch_op:
        batch_op.create_index('ix_coverage_member_level_key', ['member', 'level', 'key'], unique=False)
        batch_op.create_index('ix_coverage_name', ['name'], unique=False)

    op.create_table('entries',
    sa.Column('member', sa.String(length=16), nullable=False),
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('envelope', sa.LargeBinary(), nullable=False),
    sa.Column('leaf_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('publish_time', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('member', 'seq')
    )
    with op.batch_alter_table('entries', schema=None) as batch_op:
        batch_op.create_index('ix_entries_name', ['name'], unique=False)

    op.create_table('federation_documents',
    sa.Column('version', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('envelope', sa.LargeBinary(), nullable=False),
    sa.Column('accepted_time', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('version')
    )
    op.create_table('places',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('member', sa.String(length=16), nullable=False),
    sa.Column('folded', sa.String(length=2000), nullable=False),
    sa.Column('display', sa.String(length=2000), nullable=False),
    sa.Column('subdivision', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('places', schema=None) as batch_op:
        batch_op.create_index('ix_places_member_folded', ['member', 'folded'], unique=False)
        batch_op.create_index('ix_places_name', ['name'], unique=False)

    op.create_table('record_attrs',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('attr', sa.String(length=64), nullable=False),
    sa.Column('value', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('name', 'attr')
    )
    with op.batch_alter_table('record_attrs', schema=None) as batch_op:
        batch_op.create_index('ix_record_attrs_attr_value', ['attr', 'value'], unique=False)

    op.create_table('records',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('member', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('public', sa.Boolean(), nullable=False),
    sa.Column('label', sa.String(length=2000), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('records', schema=None) as batch_op:
        batch_op.create_index('ix_records_kind_member_name', ['kind', 'member', 'name'], unique=False)

    op.create_table('search_terms',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('term', sa.String(length=2000), nullable=False),
    sa.Column('member', sa.String(length=16), nullable=False),
    sa.Column('weight', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('name', 'term')
    )
    with op.batch_alter_table('search_terms', schema=None) as batch_op:
        batch_op.create_index('ix_search_terms_member', ['member'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('search_terms', schema=None) as batch_op:
        batch_op.drop_index('ix_search_terms_member')

    op.drop_table('search_terms')
    with op.batch_alter_table('records', schema=None) as batch_op:
        batch_op.drop_index('ix_records_kind_member_name')

    op.drop_table('records')
    with op.batch_alter_table('record_attrs', schema=None) as batch_op:
        batch_op.drop_index('ix_record_attrs_attr_value')

    op.drop_table('record_attrs')
    with op.batch_alter_table('places', schema=None) as batch_op:
        batch_op.drop_index('ix_places_name')
        batch_op.drop_index('ix_places_member_folded')

    op.drop_table('places')
    op.drop_table('federation_documents')
    with op.batch_alter_table('entries', schema=None) as batch_op:
        batch_op.drop_index('ix_entries_name')

    op.drop_table('entries')
    with op.batch_alter_table('coverage', schema=None) as batch_op:
        batch_op.drop_index('ix_coverage_name')
        batch_op.drop_index('ix_coverage_member_level_key')

    op.drop_table('coverage')
    with op.batch_alter_table('competences', schema=None) as batch_op:
        batch_op.drop_index('ix_competences_name')
        batch_op.drop_index('ix_competences_member_type')

    op.drop_table('competences')
    op.drop_table('checkpoints')
