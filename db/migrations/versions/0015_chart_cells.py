"""chart_cells: a SKU chart's closed columns, rolled up once (low, high, last per stock row and column)

One row per (stock row, source, column width, column) of the fixed column grid a chart slices its
bookings (``ledger``) or its reads (``read``) into; filled by the chart when it first draws a column that
no longer moves, checked on every draw against its rows' count and id sum (a late row or a pruned one
refills it).  Derived data: dropping the table loses nothing.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 21:30:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chart_cells",
        # No foreign key: a roll-up of a few hundred columns would check each (a stock row's id is never reused).
        sa.Column("stock_id", sa.BigInteger(), primary_key=True),
        sa.Column("source", sa.String(8), primary_key=True),
        sa.Column("width_ms", sa.BigInteger(), primary_key=True),
        sa.Column("cell", sa.BigInteger(), primary_key=True),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("low", sa.Integer(), nullable=False),
        sa.Column("high", sa.Integer(), nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.Column("id_sum", sa.BigInteger(), nullable=False),
        sa.Column("marks", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.CheckConstraint("source IN ('ledger', 'read')", name="ck_chart_cells_source"),
    )


def downgrade() -> None:
    op.drop_table("chart_cells")
