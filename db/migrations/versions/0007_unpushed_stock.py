"""unpushed stock: the local change the marketplace does not know yet, and a push's read

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 09:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_STOCK_COLUMNS = (
    sa.Column('unpushed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('push_read_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('push_read_quantity', sa.Integer(), nullable=True),
    sa.Column('push_read_seq', sa.BigInteger(), nullable=True),
    sa.Column('push_planned', sa.Integer(), nullable=True),
    sa.Column('push_claimed_unpushed', sa.Integer(), server_default='0', nullable=False),
)


def upgrade() -> None:
    for column in _STOCK_COLUMNS:
        op.add_column('marketplace_stock', column)
    # A row waiting for a push: what the marketplace lacks is our count less what it last had from us.
    op.execute("UPDATE marketplace_stock SET unpushed = listed - COALESCE(pushed_quantity, last_api_quantity, listed) "
               "WHERE push_state IN ('pending', 'failed')")


def downgrade() -> None:
    for column in reversed(_STOCK_COLUMNS):
        op.drop_column('marketplace_stock', column.name)
