"""timeline indexes: a stock row's bookings by time, and its reads' ids and quantities beside their times

A SKU's timeline and chart read a window of a stock row's bookings and reads by time, and check the
chart's rolled-up columns against their rows' count and id sum on every draw.  With the ids (and
the reads' quantities) in the index that check, and a read roll-up, are index-only scans of the
window; the bookings by ``(stock_id, created_at)`` read the window's rows, not every row of the
variation.  Built CONCURRENTLY: the fleet goes on writing while a large table is indexed.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08 01:10:00
"""
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_stock_ledger_stock_created", "stock_ledger", ["stock_id", "created_at"],
                        postgresql_include=["id"], postgresql_concurrently=True, if_not_exists=True)
        op.create_index("ix_listing_reads_stock_read_ids", "listing_reads", ["stock_id", "read_at"],
                        postgresql_include=["id", "quantity"], postgresql_concurrently=True, if_not_exists=True)
        op.drop_index("ix_listing_reads_stock_read", table_name="listing_reads", postgresql_concurrently=True,
                      if_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_listing_reads_stock_read", "listing_reads", ["stock_id", "read_at"],
                        postgresql_concurrently=True, if_not_exists=True)
        op.drop_index("ix_listing_reads_stock_read_ids", table_name="listing_reads", postgresql_concurrently=True,
                      if_exists=True)
        op.drop_index("ix_stock_ledger_stock_created", table_name="stock_ledger", postgresql_concurrently=True,
                      if_exists=True)
