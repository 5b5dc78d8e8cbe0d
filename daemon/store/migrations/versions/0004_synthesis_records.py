"""synthesis records

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('synth_records',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('chunk_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('text_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('questions', sa.Integer(), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('input_tokens', sa.Integer(), nullable=False),
    sa.Column('output_tokens', sa.Integer(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.Column('error', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('synth_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_synth_records_chunk_id'), ['chunk_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_synth_records_created_at'), ['created_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('synth_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_synth_records_created_at'))
        batch_op.drop_index(batch_op.f('ix_synth_records_chunk_id'))

    op.drop_table('synth_records')
