"""push log: every push of a stock row, its state, the quantity read and the quantity sent

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 18:30:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

# Written out (not imported from core.push_log): a migration keeps the schema of its day.
_STATES = "'waiting', 'sent', 'confirmed', 'superseded', 'refused', 'failed', 'retried'"
_OPEN = "'waiting', 'sent', 'retried'"


def upgrade() -> None:
    op.create_table(
        'push_log',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('stock_id', sa.BigInteger(), nullable=False),
        sa.Column('marketplace_id', sa.Integer(), nullable=False),
        sa.Column('sku', sa.String(length=200), nullable=False),
        sa.Column('listings', postgresql.ARRAY(sa.String(length=64)), server_default=sa.text("'{}'"),
                  nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('quantity_read', sa.Integer(), nullable=True),
        sa.Column('quantity_sent', sa.Integer(), nullable=True),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('note', sa.String(length=300), nullable=True),
        sa.Column('owner', sa.String(length=64), nullable=True),
        sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.CheckConstraint(f"state IN ({_STATES})", name='ck_push_log_state'),
        sa.ForeignKeyConstraint(['marketplace_id'], ['marketplaces.id']),
        sa.ForeignKeyConstraint(['stock_id'], ['marketplace_stock.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_push_log_account', 'push_log', ['marketplace_id', 'id'])
    op.create_index('ix_push_log_state', 'push_log', ['state', 'id'])
    op.create_index('ix_push_log_started', 'push_log', ['started_at'])
    op.create_index('ix_push_log_stock', 'push_log', ['stock_id', 'id'])
    op.create_index('ix_push_log_open', 'push_log', ['stock_id'], postgresql_where=sa.text(f"state IN ({_OPEN})"))


def downgrade() -> None:
    for name in ('ix_push_log_open', 'ix_push_log_stock', 'ix_push_log_started', 'ix_push_log_state',
                 'ix_push_log_account'):
        op.drop_index(name, table_name='push_log')
    op.drop_table('push_log')
