"""drained re-checks and pushes: when a flagged row is due again, and since when a row waits for a push

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 09:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_STOCK_COLUMNS = (
    sa.Column('recheck_due_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('recheck_attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('push_pending_since', sa.DateTime(timezone=True), nullable=True),
)


def upgrade() -> None:
    for column in _STOCK_COLUMNS:
        op.add_column('marketplace_stock', column)
    # Rows already waiting keep their place in line: the oldest request first.
    op.execute("UPDATE marketplace_stock SET push_pending_since = push_requested_at "
               "WHERE push_state IN ('pending', 'failed')")


def downgrade() -> None:
    for column in reversed(_STOCK_COLUMNS):
        op.drop_column('marketplace_stock', column.name)
