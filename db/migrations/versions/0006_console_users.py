"""operator console: users, their sessions, the audit of their actions; indexes its pages read by

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 09:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('console_users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.Text(), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('active', sa.Boolean(), server_default='true', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("role IN ('viewer', 'operator', 'admin')", name='ck_console_users_role'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('username')
    )
    # The session id in the cookie is never stored: only its SHA-256, so a database read opens no session.
    op.create_table('console_sessions',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['console_users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_hash')
    )
    op.create_index('ix_console_sessions_user', 'console_sessions', ['user_id'], unique=False)
    op.create_index('ix_console_sessions_expires', 'console_sessions', ['expires_at'], unique=False)
    op.create_table('console_audit',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=True),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('arguments', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"),
              nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('address', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_console_audit_username', 'console_audit', ['username', 'id'], unique=False)
    # The stock page: a variation's ledger newest first, one index range per page.
    op.create_index('ix_stock_ledger_variation', 'stock_ledger', ['variation_id', 'id'], unique=False)
    # SKU prefix search whatever the database's collation (LIKE 'abc%' on a pattern index).
    op.create_index('ix_variations_sku_prefix', 'variations', [sa.text('sku varchar_pattern_ops')], unique=False)


def downgrade() -> None:
    op.drop_index('ix_variations_sku_prefix', table_name='variations')
    op.drop_index('ix_stock_ledger_variation', table_name='stock_ledger')
    op.drop_index('ix_console_audit_username', table_name='console_audit')
    op.drop_table('console_audit')
    op.drop_index('ix_console_sessions_expires', table_name='console_sessions')
    op.drop_index('ix_console_sessions_user', table_name='console_sessions')
    op.drop_table('console_sessions')
    op.drop_table('console_users')
