"""initial schema: stock, ledger, sync runs

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 08:29:59.470049
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('marketplaces',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('code')
    )
    op.create_table('sync_runs',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('forced', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('dry_run', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('total_pages', sa.Integer(), nullable=True),
    sa.Column('pages_done', sa.Integer(), server_default='0', nullable=False),
    sa.Column('total_items', sa.Integer(), nullable=True),
    sa.Column('items', sa.Integer(), server_default='0', nullable=False),
    sa.Column('changed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('unchanged', sa.Integer(), server_default='0', nullable=False),
    sa.Column('missing', sa.Integer(), server_default='0', nullable=False),
    sa.Column('api_calls', sa.Integer(), server_default='0', nullable=False),
    sa.Column('retries', sa.Integer(), server_default='0', nullable=False),
    sa.Column('errors', sa.Integer(), server_default='0', nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_sync_runs_kind_target_finished', 'sync_runs', ['kind', 'target', 'finished_at'], unique=False)
    op.create_index('uq_sync_runs_running', 'sync_runs', ['kind', 'target'], unique=True, postgresql_where=sa.text("status = 'running'"))
    op.create_table('variations',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('sku', sa.String(length=200), nullable=False),
    sa.Column('title', sa.Text(), nullable=True),
    sa.Column('total_stock', sa.Integer(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sku')
    )
    op.create_table('listings',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('marketplace_id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.String(length=64), nullable=False),
    sa.Column('legacy_id', sa.BigInteger(), nullable=True),
    sa.Column('variation_id', sa.BigInteger(), nullable=False),
    sa.Column('sku', sa.String(length=200), nullable=False),
    sa.Column('title', sa.Text(), nullable=True),
    sa.Column('publication_state', sa.Integer(), nullable=True),
    sa.Column('prices', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('api_quantity', sa.Integer(), nullable=True),
    sa.Column('last_seen_sync_id', sa.BigInteger(), nullable=True),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('missing_since', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['marketplace_id'], ['marketplaces.id'], ),
    sa.ForeignKeyConstraint(['variation_id'], ['variations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('marketplace_id', 'external_id')
    )
    op.create_index('ix_listings_marketplace_sync', 'listings', ['marketplace_id', 'last_seen_sync_id'], unique=False)
    op.create_index(op.f('ix_listings_variation_id'), 'listings', ['variation_id'], unique=False)
    op.create_table('marketplace_stock',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('variation_id', sa.BigInteger(), nullable=False),
    sa.Column('marketplace_id', sa.Integer(), nullable=False),
    sa.Column('listed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('locked', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_api_quantity', sa.Integer(), nullable=True),
    sa.Column('last_synced_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['marketplace_id'], ['marketplaces.id'], ),
    sa.ForeignKeyConstraint(['variation_id'], ['variations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('variation_id', 'marketplace_id')
    )
    op.create_table('sync_pages',
    sa.Column('sync_id', sa.BigInteger(), nullable=False),
    sa.Column('page', sa.Integer(), nullable=False),
    sa.Column('items', sa.Integer(), nullable=False),
    sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('applied_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['sync_id'], ['sync_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sync_id', 'page')
    )
    op.create_table('stock_ledger',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('stock_id', sa.BigInteger(), nullable=False),
    sa.Column('variation_id', sa.BigInteger(), nullable=False),
    sa.Column('marketplace_id', sa.Integer(), nullable=False),
    sa.Column('quantity_before', sa.Integer(), nullable=False),
    sa.Column('quantity_after', sa.Integer(), nullable=False),
    sa.Column('change', sa.Integer(), nullable=False),
    sa.Column('change_type', sa.String(length=32), nullable=False),
    sa.Column('order_id', sa.String(length=64), nullable=True),
    sa.Column('order_line_id', sa.String(length=64), nullable=True),
    sa.Column('reference', sa.String(length=200), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('sync_id', sa.BigInteger(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=300), nullable=False),
    sa.Column('event_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['stock_id'], ['marketplace_stock.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('idempotency_key')
    )
    op.create_index('ix_stock_ledger_stock_event', 'stock_ledger', ['stock_id', 'event_time'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_stock_ledger_stock_event', table_name='stock_ledger')
    op.drop_table('stock_ledger')
    op.drop_table('sync_pages')
    op.drop_table('marketplace_stock')
    op.drop_index(op.f('ix_listings_variation_id'), table_name='listings')
    op.drop_index('ix_listings_marketplace_sync', table_name='listings')
    op.drop_table('listings')
    op.drop_table('variations')
    op.drop_index('uq_sync_runs_running', table_name='sync_runs', postgresql_where=sa.text("status = 'running'"))
    op.drop_index('ix_sync_runs_kind_target_finished', table_name='sync_runs')
    op.drop_table('sync_runs')
    op.drop_table('marketplaces')
