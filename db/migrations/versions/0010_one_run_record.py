"""one run record: the store syncs' logs fold into sync_runs; store_sync_logs and store_integrations go

Every account is synced by the one catalogue pipeline now (kind ``stock``), so the runs of the
store syncs of before accounts become ``stock`` runs of their account: a run still ``running`` can
never finish (its actor is gone) and is abandoned first, so no two running rows of one account
meet; each log's own counts (created, updated, skipped) are kept in the run's ``details``.  A log
whose run was deleted becomes a run of its own.  The integrations themselves became accounts in 0008.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 09:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_REPLACED = "the store sync was replaced by the account's stock sync (migration 0010)"


def upgrade() -> None:
    op.execute(sa.text(
        "UPDATE sync_runs SET status = 'abandoned', finished_at = now(), error = coalesce(error, :e) "
        "WHERE kind = 'store' AND status = 'running'").bindparams(e=_REPLACED))
    op.execute("UPDATE store_sync_logs SET status = 'failed', finished_at = coalesce(finished_at, now()) "
               "WHERE status = 'running'")
    # A log whose run is gone gets a run of its own, then every log's counts go into its run's details.
    op.execute(
        "WITH orphans AS (SELECT l.id AS log_id, s.name AS target, l.trigger, l.status, l.started_at, "
        "l.finished_at, l.items, l.created, l.updated, l.skipped, l.api_calls, l.errors "
        "FROM store_sync_logs l JOIN store_integrations s ON s.id = l.integration_id WHERE l.sync_run_id IS NULL), "
        "created AS (INSERT INTO sync_runs (kind, target, trigger, status, started_at, heartbeat_at, finished_at, "
        "items, total_items, changed, unchanged, api_calls, errors, error, details) "
        "SELECT 'store', target, CASE WHEN trigger = 'scheduled' THEN 'scheduled' ELSE 'manual' END, status, "
        "started_at, coalesce(finished_at, started_at), finished_at, items, items, created + updated, skipped, "
        "api_calls, CASE WHEN errors IS NULL THEN 0 ELSE 1 END, errors, jsonb_build_object('store_log_id', log_id) "
        "FROM orphans RETURNING id, (details->>'store_log_id')::bigint AS log_id) "
        "UPDATE store_sync_logs l SET sync_run_id = created.id FROM created WHERE l.id = created.log_id")
    op.execute(
        "UPDATE sync_runs r SET details = r.details || jsonb_build_object('store_sync', jsonb_build_object("
        "'log_id', l.id, 'trigger', l.trigger, 'items', l.items, 'created', l.created, 'updated', l.updated, "
        "'skipped', l.skipped, 'api_calls', l.api_calls)) FROM store_sync_logs l WHERE l.sync_run_id = r.id")
    op.execute("UPDATE sync_runs SET kind = 'stock' WHERE kind = 'store'")
    op.drop_index('ix_store_sync_logs_integration', table_name='store_sync_logs')
    op.drop_table('store_sync_logs')
    op.drop_table('store_integrations')


def downgrade() -> None:
    # The tables come back empty: the accounts (0008) and the runs (kind 'stock') keep what they held.
    op.create_table(
        'store_integrations',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('platform', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('credentials_env', sa.String(length=128), nullable=False),
        sa.Column('base_url', sa.String(length=500), nullable=True),
        sa.Column('marketplace_id', sa.Integer(), nullable=False),
        sa.Column('active', sa.Boolean(), server_default='true', nullable=False),
        sa.Column('auto_sync', sa.Boolean(), server_default='true', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.CheckConstraint("platform IN ('backmarket', 'refurbed', 'shopify')", name='ck_store_integrations_platform'),
        sa.CheckConstraint("credentials_env ~ '^[A-Z_][A-Z0-9_]*$'", name='ck_store_integrations_credentials_env'),
        sa.ForeignKeyConstraint(['marketplace_id'], ['marketplaces.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'))
    op.create_table(
        'store_sync_logs',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('integration_id', sa.Integer(), nullable=False),
        sa.Column('sync_run_id', sa.BigInteger(), nullable=True),
        sa.Column('trigger', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('items', sa.Integer(), server_default='0', nullable=False),
        sa.Column('created', sa.Integer(), server_default='0', nullable=False),
        sa.Column('updated', sa.Integer(), server_default='0', nullable=False),
        sa.Column('skipped', sa.Integer(), server_default='0', nullable=False),
        sa.Column('api_calls', sa.Integer(), server_default='0', nullable=False),
        sa.Column('errors', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['integration_id'], ['store_integrations.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['sync_run_id'], ['sync_runs.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_store_sync_logs_integration', 'store_sync_logs', ['integration_id', 'id'], unique=False)
