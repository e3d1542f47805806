"""drift explained: each reconciliation difference's cause and its evidence

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 18:30:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('reconciliation_reports', sa.Column('cause', sa.String(length=32), nullable=True))
    op.add_column('reconciliation_reports', sa.Column('evidence', postgresql.JSONB(), nullable=True))


def downgrade() -> None:
    op.drop_column('reconciliation_reports', 'evidence')
    op.drop_column('reconciliation_reports', 'cause')
