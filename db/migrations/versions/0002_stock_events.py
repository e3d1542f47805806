"""stock events: push state and re-check flags on marketplace_stock, reconciliation reports

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 10:00:00

A branch from 0001: ``db.migrate.upgrade`` upgrades every head.
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_STOCK_COLUMNS = (
    sa.Column('push_state', sa.String(length=16), nullable=True),
    sa.Column('push_seq', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('push_requested_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('push_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pushed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('pushed_quantity', sa.Integer(), nullable=True),
    sa.Column('push_error', sa.Text(), nullable=True),
    sa.Column('push_lease_owner', sa.String(length=64), nullable=True),
    sa.Column('push_lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('needs_recheck', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('recheck_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('oversold_since', sa.DateTime(timezone=True), nullable=True),
)


def upgrade() -> None:
    for column in _STOCK_COLUMNS:
        op.add_column('marketplace_stock', column)
    # Small partial indexes: the rows a sweep or an operator looks for are few.
    op.create_index('ix_marketplace_stock_recheck', 'marketplace_stock', ['marketplace_id'], unique=False,
                    postgresql_where=sa.text('needs_recheck'))
    op.create_index('ix_marketplace_stock_push', 'marketplace_stock', ['marketplace_id', 'push_state'], unique=False,
                    postgresql_where=sa.text("push_state IN ('pending', 'failed')"))
    op.create_table('reconciliation_reports',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('run_id', sa.BigInteger(), nullable=False),
    sa.Column('marketplace_id', sa.Integer(), nullable=False),
    sa.Column('stock_id', sa.BigInteger(), nullable=True),
    sa.Column('listing', sa.String(length=64), nullable=True),
    sa.Column('sku', sa.String(length=200), nullable=False),
    sa.Column('local', sa.Integer(), nullable=False),
    sa.Column('marketplace', sa.Integer(), nullable=False),
    sa.Column('difference', sa.Integer(), nullable=False),
    sa.Column('corrected', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['sync_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_reconciliation_reports_run_id'), 'reconciliation_reports', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_reconciliation_reports_run_id'), table_name='reconciliation_reports')
    op.drop_table('reconciliation_reports')
    op.drop_index('ix_marketplace_stock_push', table_name='marketplace_stock')
    op.drop_index('ix_marketplace_stock_recheck', table_name='marketplace_stock')
    for column in reversed(_STOCK_COLUMNS):
        op.drop_column('marketplace_stock', column.name)
