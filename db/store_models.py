"""Tables of store integrations: the stores the seller connects, and their sync logs.

A store integration is one account on one platform (Back Market, Refurbed, Shopify) whose stock
is read in bulk into its own marketplace's stock rows (``marketplaces.code`` = the integration's
name).  Its credential is never stored: the row names the *environment variable* that holds it,
and the worker reads that variable when it syncs.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text,
                        func)
from sqlalchemy.orm import Mapped, mapped_column

from db.models import Base

#: The platforms an integration may be on (each has an adapter in ``clients/stores.py``).
PLATFORMS = ("backmarket", "refurbed", "shopify")

#: States of a store sync log: running, then succeeded or failed.
LOG_STATUSES = ("running", "succeeded", "failed")


class StoreIntegration(Base):
    """One connected store: its platform, its name (also its marketplace code) and how to reach it.

    ``credentials_env`` is the NAME of the environment variable holding the API token, never the
    token.  ``base_url`` overrides the platform's default host (a sandbox, a Shopify shop).  Only
    ``active`` integrations sync; of those, the ``auto_sync`` ones are synced by the schedule.
    """

    __tablename__ = "store_integrations"
    __table_args__ = (
        CheckConstraint("platform IN ('backmarket', 'refurbed', 'shopify')", name="ck_store_integrations_platform"),
        CheckConstraint("credentials_env ~ '^[A-Z_][A-Z0-9_]*$'", name="ck_store_integrations_credentials_env"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: The name of the environment variable that holds the credential (e.g. ``SHOPIFY_EU_TOKEN``).
    credentials_env: Mapped[str] = mapped_column(String(128))
    base_url: Mapped[str | None] = mapped_column(String(500))
    marketplace_id: Mapped[int] = mapped_column(ForeignKey("marketplaces.id"))
    active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    auto_sync: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StoreSyncLog(Base):
    """One sync of one integration: when, how it ended and what it did to the stock rows.

    ``created``: stock rows the sync created; ``updated``: existing rows whose quantity it changed
    (each with a ledger row); ``skipped``: rows left unchanged (same quantity, or deferred by the
    no-stale-snapshot rules) plus items without a SKU.  ``items`` is every item the store returned.
    ``sync_run_id`` is the ``sync_runs`` row (kind ``store``) that locked the integration meanwhile.
    """

    __tablename__ = "store_sync_logs"
    __table_args__ = (Index("ix_store_sync_logs_integration", "integration_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    integration_id: Mapped[int] = mapped_column(ForeignKey("store_integrations.id", ondelete="CASCADE"))
    sync_run_id: Mapped[int | None] = mapped_column(ForeignKey("sync_runs.id", ondelete="SET NULL"))
    trigger: Mapped[str] = mapped_column(String(16))
    #: running, succeeded, failed.
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    items: Mapped[int] = mapped_column(Integer, server_default="0")
    created: Mapped[int] = mapped_column(Integer, server_default="0")
    updated: Mapped[int] = mapped_column(Integer, server_default="0")
    skipped: Mapped[int] = mapped_column(Integer, server_default="0")
    api_calls: Mapped[int] = mapped_column(Integer, server_default="0")
    errors: Mapped[str | None] = mapped_column(Text)


__all__ = ["LOG_STATUSES", "PLATFORMS", "StoreIntegration", "StoreSyncLog"]
