"""pending pairs: committed batches whose training pairs are merged in memory, not yet upserted

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pending_pairs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('cursor_id', sa.Integer(), nullable=False),
    sa.Column('first_event_id', sa.BigInteger(), nullable=False),
    sa.Column('last_event_id', sa.BigInteger(), nullable=False),
    sa.Column('start_offset', sa.BigInteger(), nullable=False),
    sa.Column('end_offset', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    if op.get_bind().scalar(sa.text("SELECT count(*) FROM pending_pairs")):
        raise RuntimeError("pending_pairs names events whose pairs are not yet in training_pairs; run `ragloop "
                           "ingest` (every pass folds them) with this version before downgrading")
    op.drop_table('pending_pairs')
