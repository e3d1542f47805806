"""accounts: every place the seller sells is a row of marketplaces, with its platform and how to reach it

Store integrations become accounts (their marketplace row gains the platform, the credential variable,
the base URL and the flags); the main accounts of the settings (backmarket, refurbed, shopify) get
their rows; a code booked before accounts existed becomes a ``manual`` account (no API).  Cursor walks
keep the next page's cursor with each applied page.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 15:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_COLUMNS = (
    sa.Column('platform', sa.String(32), server_default='manual', nullable=False),
    sa.Column('credentials_env', sa.String(128), nullable=True),
    sa.Column('base_url', sa.String(500), nullable=True),
    sa.Column('options', postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('enabled', sa.Boolean(), server_default='true', nullable=False),
    sa.Column('auto_sync', sa.Boolean(), server_default='true', nullable=False),
)

_MAIN_ACCOUNTS = (('backmarket', 'Back Market'), ('refurbed', 'Refurbed'), ('shopify', 'Shopify'))


def upgrade() -> None:
    for column in _COLUMNS:
        op.add_column('marketplaces', column)
    for code, name in _MAIN_ACCOUNTS:
        op.execute(sa.text("INSERT INTO marketplaces (code, name) VALUES (:c, :n) ON CONFLICT (code) DO NOTHING")
                   .bindparams(c=code, n=name))
        op.execute(sa.text("UPDATE marketplaces SET platform = :c WHERE code = :c").bindparams(c=code))
    op.execute("UPDATE marketplaces m SET platform = s.platform, credentials_env = s.credentials_env, "
               "base_url = s.base_url, enabled = s.active, auto_sync = s.auto_sync "
               "FROM store_integrations s WHERE s.marketplace_id = m.id")
    op.create_check_constraint('ck_marketplaces_platform', 'marketplaces',
                               "platform IN ('backmarket', 'refurbed', 'shopify', 'manual')")
    op.create_check_constraint('ck_marketplaces_credentials_env', 'marketplaces',
                               "credentials_env ~ '^[A-Z_][A-Z0-9_]*$'")
    op.add_column('sync_pages', sa.Column('next_cursor', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('sync_pages', 'next_cursor')
    op.drop_constraint('ck_marketplaces_credentials_env', 'marketplaces')
    op.drop_constraint('ck_marketplaces_platform', 'marketplaces')
    for column in reversed(_COLUMNS):
        op.drop_column('marketplaces', column.name)
