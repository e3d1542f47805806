"""listing_reads: what each marketplace's reads said of a stock row, kept only when it changed

One row per (stock row, read) whose quantity differs from the previous read of that row (and the
first): a page of a sync, a single read (a re-check, a push's read) or a reconciliation's page.
The timeline of a SKU shows them next to the ledger; ``LISTING_READS_RETENTION_DAYS`` prunes them.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 18:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "listing_reads",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("stock_id", sa.BigInteger(), sa.ForeignKey("marketplace_stock.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("variation_id", sa.BigInteger(), nullable=False),
        sa.Column("marketplace_id", sa.Integer(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("sync_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint("source IN ('page', 'single', 'reconcile')", name="ck_listing_reads_source"),
    )
    # The previous read of a row (the apply's compare) and a SKU's reads (the timeline): one range each.
    op.create_index("ix_listing_reads_stock_read", "listing_reads", ["stock_id", "read_at"])
    # The retention prune walks the oldest rows first.
    op.create_index("ix_listing_reads_read_at", "listing_reads", ["read_at"])


def downgrade() -> None:
    op.drop_table("listing_reads")
