"""labels that arrive later: feedback_labels, unlabeled events found by request id, kind wide enough for "unlabeled"

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('feedback_labels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_id', sa.String(), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expected_ids', sa.JSON(), nullable=False),
    sa.Column('raw', sa.JSON(), nullable=False),
    sa.Column('source', sa.String(), nullable=True),
    sa.Column('file', sa.String(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('line_no', sa.BigInteger(), nullable=False),
    sa.Column('cursor_id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.BigInteger(), nullable=True),
    sa.Column('joined_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_feedback_labels_waiting', 'feedback_labels', ['id'], unique=False,
                    sqlite_where=sa.text("event_id IS NULL"), postgresql_where=sa.text("event_id IS NULL"))
    with op.batch_alter_table('feedback_events') as batch:
        batch.alter_column('kind', type_=sa.String(length=16), existing_nullable=False)
    with op.batch_alter_table('event_counts') as batch:
        batch.alter_column('kind', type_=sa.String(length=16), existing_nullable=False)
    op.create_index('ix_feedback_events_unlabeled', 'feedback_events', ['request_id'], unique=False,
                    sqlite_where=sa.text("kind = 'unlabeled'"), postgresql_where=sa.text("kind = 'unlabeled'"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.scalar(sa.text("SELECT count(*) FROM feedback_events WHERE kind = 'unlabeled'")) or bind.scalar(
            sa.text("SELECT count(*) FROM feedback_labels WHERE event_id IS NULL")):
        raise RuntimeError("the store holds unlabeled events or labels waiting for their retrieval, which the "
                           "previous schema cannot hold; this revision cannot be downgraded without losing them")
    op.drop_index('ix_feedback_events_unlabeled', table_name='feedback_events')
    op.drop_index('ix_feedback_labels_waiting', table_name='feedback_labels')
    op.drop_table('feedback_labels')
    with op.batch_alter_table('event_counts') as batch:
        batch.alter_column('kind', type_=sa.String(length=8), existing_nullable=False)
    with op.batch_alter_table('feedback_events') as batch:
        batch.alter_column('kind', type_=sa.String(length=8), existing_nullable=False)
