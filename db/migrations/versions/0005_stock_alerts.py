"""stock alerts: alert rules and the alerts' state

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 09:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alert_rules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('variation_id', sa.BigInteger(), nullable=True),
    sa.Column('marketplace_id', sa.Integer(), nullable=True),
    sa.Column('threshold', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('threshold >= 0', name='ck_alert_rules_threshold'),
    sa.ForeignKeyConstraint(['marketplace_id'], ['marketplaces.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['variation_id'], ['variations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    # One rule per scope; NULL (any variation / any marketplace) compares equal through COALESCE.
    op.create_index('uq_alert_rules_scope', 'alert_rules',
                    [sa.text('COALESCE(variation_id, 0)'), sa.text('COALESCE(marketplace_id, 0)')], unique=True)
    op.create_table('stock_alerts',
    sa.Column('id', sa.BigInteger(), nullable=False),
    sa.Column('rule_id', sa.Integer(), nullable=True),
    sa.Column('variation_id', sa.BigInteger(), nullable=False),
    sa.Column('marketplace_id', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('threshold', sa.Integer(), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('resolved_quantity', sa.Integer(), nullable=True),
    sa.Column('fired_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('notified_state', sa.String(length=16), nullable=True),
    sa.Column('last_notified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('notify_attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('notify_error', sa.Text(), nullable=True),
    sa.Column('notify_failed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('firing', 'resolved')", name='ck_stock_alerts_state'),
    sa.ForeignKeyConstraint(['marketplace_id'], ['marketplaces.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rule_id'], ['alert_rules.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['variation_id'], ['variations.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_stock_alerts_state_fired', 'stock_alerts', ['state', 'fired_at'], unique=False)
    # At most one firing alert per scope: two checks at once cannot open two.
    op.create_index('uq_stock_alerts_firing', 'stock_alerts',
                    ['variation_id', sa.text('COALESCE(marketplace_id, 0)')], unique=True,
                    postgresql_where=sa.text("state = 'firing'"))


def downgrade() -> None:
    op.drop_index('uq_stock_alerts_firing', table_name='stock_alerts', postgresql_where=sa.text("state = 'firing'"))
    op.drop_index('ix_stock_alerts_state_fired', table_name='stock_alerts')
    op.drop_table('stock_alerts')
    op.drop_index('uq_alert_rules_scope', table_name='alert_rules')
    op.drop_table('alert_rules')
