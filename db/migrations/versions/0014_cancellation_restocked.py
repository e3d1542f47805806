"""stock_ledger.restocked: what the marketplace said it restocked of a cancellation

A cancellation's row keeps how many of its units the marketplace gave back itself (Shopify says per
order, in its refund lines); a line restocked in part is two rows, the restocked part and the rest
(``<line key>:not_restocked``).  NULL on older rows and other kinds: the account's default decides.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 22:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('stock_ledger', sa.Column('restocked', sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column('stock_ledger', 'restocked')
