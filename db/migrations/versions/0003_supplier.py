"""supplier products (Ingram Micro) and supplier sync batches

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 09:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('supplier_products',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('supplier', sa.String(length=32), nullable=False),
    sa.Column('part_number', sa.String(length=64), nullable=False),
    sa.Column('sku', sa.String(length=200), nullable=True),
    sa.Column('variation_id', sa.BigInteger(), nullable=True),
    sa.Column('vendor_part_number', sa.String(length=100), nullable=True),
    sa.Column('customer_part_number', sa.String(length=100), nullable=True),
    sa.Column('upc', sa.String(length=32), nullable=True),
    sa.Column('vendor_name', sa.String(length=200), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('price', sa.Numeric(precision=14, scale=4), nullable=True),
    sa.Column('retail_price', sa.Numeric(precision=14, scale=4), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=True),
    sa.Column('available', sa.Boolean(), nullable=True),
    sa.Column('total_availability', sa.Integer(), nullable=True),
    sa.Column('warehouses', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"),
              nullable=False),
    sa.Column('status', sa.String(length=64), nullable=True),
    sa.Column('product_class', sa.String(length=4), nullable=True),
    sa.Column('status_code', sa.String(length=16), nullable=True),
    sa.Column('status_message', sa.Text(), nullable=True),
    sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('details_status', sa.String(length=8), nullable=True),
    sa.Column('details_fetched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('details_sync_id', sa.BigInteger(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('error_code', sa.String(length=32), nullable=True),
    sa.Column('error_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_seen_sync_id', sa.BigInteger(), nullable=True),
    sa.Column('last_changed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['variation_id'], ['variations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('supplier', 'part_number')
    )
    op.create_index(op.f('ix_supplier_products_variation_id'), 'supplier_products', ['variation_id'], unique=False)
    op.create_table('supplier_sync_batches',
    sa.Column('sync_id', sa.BigInteger(), nullable=False),
    sa.Column('batch', sa.Integer(), nullable=False),
    sa.Column('products', sa.Integer(), nullable=False),
    sa.Column('changed', sa.Integer(), nullable=False),
    sa.Column('errors', sa.Integer(), nullable=False),
    sa.Column('detail_parts', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('fetched_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('applied_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['sync_id'], ['sync_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sync_id', 'batch')
    )


def downgrade() -> None:
    op.drop_table('supplier_sync_batches')
    op.drop_index(op.f('ix_supplier_products_variation_id'), table_name='supplier_products')
    op.drop_table('supplier_products')
