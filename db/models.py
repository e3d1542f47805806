"""SQLAlchemy 2 typed models of the core schema: catalogue, stock, ledger, sync runs.

Schema changes go through Alembic (``db/migrations``); these models are the typed view of it.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint, func, text)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of every stocksync table."""


class Marketplace(Base):
    """One account: a place the seller sells (a Back Market account, a Refurbed store, a Shopify shop).

    ``code`` is its one identity: stock rows, orders, pushes, syncs (``sync_runs.target``), alerts,
    metrics and the console all name the account by it.  What the account can do comes from its
    platform (:data:`core.platforms.PLATFORMS`).  The credential is never stored: ``credentials_env``
    names the environment variable that holds it (``None``: the platform's default setting, the main
    account's).  ``base_url`` ``None``: the platform's default host from the settings.
    """

    __tablename__ = "marketplaces"
    __table_args__ = (
        CheckConstraint("platform IN ('backmarket', 'refurbed', 'shopify', 'manual')", name="ck_marketplaces_platform"),
        CheckConstraint("credentials_env ~ '^[A-Z_][A-Z0-9_]*$'", name="ck_marketplaces_credentials_env"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    platform: Mapped[str] = mapped_column(String(32), server_default="manual")
    credentials_env: Mapped[str | None] = mapped_column(String(128))
    base_url: Mapped[str | None] = mapped_column(String(500))
    #: Per-account choices: ``restock_on_cancel`` (bool), ``webhook_secret_env``, ``shop_domain``, ...
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default="true")
    #: Synced by the schedule (an enabled account may still be synced by hand only).
    auto_sync: Mapped[bool] = mapped_column(Boolean, server_default="true")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


#: An account is a row of ``marketplaces`` (the table keeps its name: every stock row points at it).
Account = Marketplace


class Variation(Base):
    """A sellable variation, keyed by the seller's SKU; ``total_stock`` sums its marketplaces."""

    __tablename__ = "variations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sku: Mapped[str] = mapped_column(String(200), unique=True)
    title: Mapped[str | None] = mapped_column(Text)
    total_stock: Mapped[int] = mapped_column(Integer, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Listing(Base):
    """A marketplace listing as last seen by a sync."""

    __tablename__ = "listings"
    __table_args__ = (UniqueConstraint("marketplace_id", "external_id"),
                      Index("ix_listings_marketplace_sync", "marketplace_id", "last_seen_sync_id"))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    marketplace_id: Mapped[int] = mapped_column(ForeignKey("marketplaces.id"))
    #: The marketplace's preferred id (Back Market: the listing UUID).
    external_id: Mapped[str] = mapped_column(String(64))
    #: The marketplace's legacy integer id (Back Market ``listing_id``).
    legacy_id: Mapped[int | None] = mapped_column(BigInteger)
    variation_id: Mapped[int] = mapped_column(ForeignKey("variations.id"), index=True)
    sku: Mapped[str] = mapped_column(String(200))
    title: Mapped[str | None] = mapped_column(Text)
    publication_state: Mapped[int | None] = mapped_column(Integer)
    #: Price per country, e.g. ``{"fr-fr": {"price": "160.99", "currency": "EUR"}}``.
    prices: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    #: The quantity the marketplace reported on the last sync that saw this listing.
    api_quantity: Mapped[int | None] = mapped_column(Integer)
    last_seen_sync_id: Mapped[int | None] = mapped_column(BigInteger)
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Set when a complete sync did not see the listing any more.
    missing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MarketplaceStock(Base):
    """Stock of one variation on one marketplace; every change has a ledger row."""

    __tablename__ = "marketplace_stock"
    __table_args__ = (UniqueConstraint("variation_id", "marketplace_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    variation_id: Mapped[int] = mapped_column(ForeignKey("variations.id"))
    # No index of its own on marketplace_id: on a young table the planner would pick it over the
    # (variation_id, marketplace_id) key and scan every row of the marketplace for a page of 50.
    marketplace_id: Mapped[int] = mapped_column(ForeignKey("marketplaces.id"))
    #: Listed quantity (may go below zero on an oversell; never clamped).
    listed: Mapped[int] = mapped_column(Integer, server_default="0")
    locked: Mapped[int] = mapped_column(Integer, server_default="0")
    last_api_quantity: Mapped[int | None] = mapped_column(Integer)
    #: Fetch time of the last marketplace snapshot applied to this row (sync, re-check, reconciliation).
    last_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # Pushing the quantity to the marketplace (db/events.py): columns of migration 0002.
    #: None (nothing to push), pending (a local change the marketplace has not got yet), pushed, failed.
    push_state: Mapped[str | None] = mapped_column(String(16))
    #: Bumped by every change that needs a push; a push that read an older value leaves the row pending.
    push_seq: Mapped[int] = mapped_column(BigInteger, server_default="0")
    push_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When the last successful push read the quantity it sent, and when the marketplace confirmed it.
    push_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pushed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pushed_quantity: Mapped[int | None] = mapped_column(Integer)
    push_error: Mapped[str | None] = mapped_column(Text)
    #: One push of a row at a time: who holds it (a message id) and until when.
    push_lease_owner: Mapped[str | None] = mapped_column(String(64))
    push_lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Local changes (top-ups, adjustments, cancellations a marketplace does not restock) it does not know yet.
    unpushed: Mapped[int] = mapped_column(Integer, server_default="0")
    #: The running push's read: when, what it showed, the seq it saw, what it sends, the unpushed part it carries.
    push_read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    push_read_quantity: Mapped[int | None] = mapped_column(Integer)
    push_read_seq: Mapped[int | None] = mapped_column(BigInteger)
    push_planned: Mapped[int | None] = mapped_column(Integer)
    push_claimed_unpushed: Mapped[int] = mapped_column(Integer, server_default="0")
    #: A snapshot or an event could not tell whether the other had seen it: fetch this row again.
    needs_recheck: Mapped[bool] = mapped_column(Boolean, server_default="false")
    recheck_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When the re-check drain may read the row (again): a claim or a backoff; None: ``recheck_since``
    #: plus the skew.  ``recheck_attempts``: reads that could not settle it yet (migration 0008).
    recheck_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    recheck_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    #: Since when the row waits for a push (the first change the marketplace lacks): the push drain's order.
    push_pending_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Set while ``listed`` is below zero (an order took more than was listed).
    oversold_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def available(self) -> int:
        """What can be sold: listed minus locked."""
        return self.listed - self.locked


class StockLedger(Base):
    """One row per change of a stock row: ``after`` of a row is ``before`` of the next."""

    __tablename__ = "stock_ledger"
    __table_args__ = (Index("ix_stock_ledger_stock_event", "stock_id", "event_time"),
                      # A stock row's bookings of a window (a SKU's timeline); the id for the chart's check.
                      Index("ix_stock_ledger_stock_created", "stock_id", "created_at", postgresql_include=["id"]))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    stock_id: Mapped[int] = mapped_column(ForeignKey("marketplace_stock.id"))
    variation_id: Mapped[int] = mapped_column(BigInteger)
    marketplace_id: Mapped[int] = mapped_column(Integer)
    quantity_before: Mapped[int] = mapped_column(Integer)
    quantity_after: Mapped[int] = mapped_column(Integer)
    change: Mapped[int] = mapped_column(Integer)
    #: sync, order_created, order_cancelled, topup, manual, reconciliation.
    change_type: Mapped[str] = mapped_column(String(32))
    order_id: Mapped[str | None] = mapped_column(String(64))
    order_line_id: Mapped[str | None] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(200))
    actor: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    sync_id: Mapped[int | None] = mapped_column(BigInteger)
    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    #: A cancellation's units the marketplace gave back itself (0: none, the row is a local change);
    #: NULL on other kinds and older rows: the account's default (``core.booking.counted_by_marketplace``).
    restocked: Mapped[int | None] = mapped_column(Integer)


class ListingRead(Base):
    """What a marketplace's read said of one stock row, kept only when it differs from the previous read.

    ``source``: a sync's ``page``, a ``single`` read (a re-check, a push's read) or a ``reconcile``
    page.  Written in the apply's own statement (:mod:`db.snapshot`); pruned after
    ``LISTING_READS_RETENTION_DAYS`` except each row's latest read.
    """

    __tablename__ = "listing_reads"
    __table_args__ = (
        CheckConstraint("source IN ('page', 'single', 'reconcile')", name="ck_listing_reads_source"),
        # A stock row's latest read, a window of its reads; ids and quantities for index-only roll-ups.
        Index("ix_listing_reads_stock_read_ids", "stock_id", "read_at", postgresql_include=["id", "quantity"]),
        Index("ix_listing_reads_read_at", "read_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    stock_id: Mapped[int] = mapped_column(ForeignKey("marketplace_stock.id", ondelete="CASCADE"))
    variation_id: Mapped[int] = mapped_column(BigInteger)
    marketplace_id: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(Integer)
    read_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(16))
    sync_id: Mapped[int | None] = mapped_column(BigInteger)


class ChartCell(Base):
    """One closed column of a SKU chart's fixed grid, rolled up: a stock row's bookings (``ledger``) or reads
    (``read``) whose time falls in ``[cell * width_ms, (cell + 1) * width_ms)`` ms since the epoch.

    Derived data, written by the chart (:mod:`pipelines.timeline`) and checked on each draw against
    the rows' count and id sum (``n``, ``id_sum``); ``marks``: change type -> [how many, sum of changes].
    """

    __tablename__ = "chart_cells"
    __table_args__ = (CheckConstraint("source IN ('ledger', 'read')", name="ck_chart_cells_source"),)

    #: No foreign key (a roll-up would check each of its rows); a stock row's id is never reused.
    stock_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(8), primary_key=True)
    width_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    cell: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    first_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    n: Mapped[int] = mapped_column(Integer)
    low: Mapped[int] = mapped_column(Integer)
    high: Mapped[int] = mapped_column(Integer)
    last: Mapped[int] = mapped_column(Integer)
    id_sum: Mapped[int] = mapped_column(BigInteger)
    marks: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class SyncRun(Base):
    """One run of a sync (stock, supplier, store, reconciliation): status, progress and counts."""

    __tablename__ = "sync_runs"
    __table_args__ = (
        # At most one running sync per (kind, target): the database is the lock.
        Index("uq_sync_runs_running", "kind", "target", unique=True, postgresql_where=text("status = 'running'")),
        Index("ix_sync_runs_kind_target_finished", "kind", "target", "finished_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(16))
    forced: Mapped[bool] = mapped_column(Boolean, server_default="false")
    dry_run: Mapped[bool] = mapped_column(Boolean, server_default="false")
    #: running, succeeded, failed, abandoned.
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    total_pages: Mapped[int | None] = mapped_column(Integer)
    pages_done: Mapped[int] = mapped_column(Integer, server_default="0")
    total_items: Mapped[int | None] = mapped_column(Integer)
    items: Mapped[int] = mapped_column(Integer, server_default="0")
    changed: Mapped[int] = mapped_column(Integer, server_default="0")
    unchanged: Mapped[int] = mapped_column(Integer, server_default="0")
    missing: Mapped[int] = mapped_column(Integer, server_default="0")
    api_calls: Mapped[int] = mapped_column(Integer, server_default="0")
    retries: Mapped[int] = mapped_column(Integer, server_default="0")
    errors: Mapped[int] = mapped_column(Integer, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish (None while running)."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class SyncPage(Base):
    """A page applied by a sync: the key that makes a re-delivered page change nothing."""

    __tablename__ = "sync_pages"

    sync_id: Mapped[int] = mapped_column(ForeignKey("sync_runs.id", ondelete="CASCADE"), primary_key=True)
    page: Mapped[int] = mapped_column(Integer, primary_key=True)
    items: Mapped[int] = mapped_column(Integer)
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    #: The cursor of the page after this one (a cursor walk), so a resume restarts from the last applied page.
    next_cursor: Mapped[str | None] = mapped_column(Text)


__all__ = ["Account", "Base", "ListingRead", "Marketplace", "Variation", "Listing", "MarketplaceStock", "StockLedger",
           "SyncRun", "SyncPage"]
