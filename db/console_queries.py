"""Read-only queries of the operator console's pages (each one indexed statement, plain rows out)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class VariationRow:
    """A variation found by a SKU search."""

    id: int
    sku: str
    title: str | None
    total_stock: int
    updated_at: datetime


@dataclass(frozen=True)
class StockRow:
    """One marketplace's stock of a variation, with its push and flag state."""

    id: int
    marketplace: str
    marketplace_name: str
    listed: int
    locked: int
    available: int
    last_api_quantity: int | None
    last_synced_at: datetime | None
    push_state: str | None
    pushed_at: datetime | None
    pushed_quantity: int | None
    push_error: str | None
    needs_recheck: bool
    recheck_since: datetime | None
    oversold_since: datetime | None
    listings: int


@dataclass(frozen=True)
class LedgerRow:
    """One ledger row of a variation, as the stock page lists it."""

    id: int
    marketplace: str
    change_type: str
    quantity_before: int
    quantity_after: int
    change: int
    order_id: str | None
    order_line_id: str | None
    reference: str | None
    actor: str | None
    note: str | None
    sync_id: int | None
    event_time: datetime
    created_at: datetime


def escape_like(prefix: str) -> str:
    """``prefix`` with LIKE's wildcards escaped, followed by ``%``: matches the SKUs that start with it."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search_variations(session: Session, prefix: str, limit: int = 50) -> list[VariationRow]:
    """Variations whose SKU starts with ``prefix``, by SKU (the pattern index answers it)."""
    rows = session.execute(text(
        "SELECT id, sku, title, total_stock, updated_at FROM variations WHERE sku LIKE :pattern ESCAPE '\\' "
        "ORDER BY sku LIMIT :limit"), {"pattern": escape_like(prefix), "limit": limit})
    return [VariationRow(**row._mapping) for row in rows]


def get_variation(session: Session, variation_id: int) -> VariationRow | None:
    """Variation ``variation_id`` (None if there is none)."""
    row = session.execute(text("SELECT id, sku, title, total_stock, updated_at FROM variations WHERE id = :id"),
                          {"id": variation_id}).first()
    return VariationRow(**row._mapping) if row is not None else None


def variation_id_by_sku(session: Session, sku: str) -> int | None:
    """The id of the variation whose SKU is exactly ``sku``."""
    return session.execute(text("SELECT id FROM variations WHERE sku = :sku"), {"sku": sku}).scalar()


def stock_rows(session: Session, variation_id: int) -> list[StockRow]:
    """The variation's stock per marketplace, by marketplace code."""
    rows = session.execute(text(
        "SELECT s.id, m.code AS marketplace, m.name AS marketplace_name, s.listed, s.locked, "
        "s.listed - s.locked AS available, s.last_api_quantity, s.last_synced_at, s.push_state, s.pushed_at, "
        "s.pushed_quantity, s.push_error, s.needs_recheck, s.recheck_since, s.oversold_since, "
        "(SELECT count(*) FROM listings l WHERE l.variation_id = s.variation_id AND l.marketplace_id = s.marketplace_id "
        " AND l.missing_since IS NULL) AS listings "
        "FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id WHERE s.variation_id = :v "
        "ORDER BY m.code"), {"v": variation_id})
    return [StockRow(**row._mapping) for row in rows]


def ledger_page(session: Session, variation_id: int, *, before_id: int | None = None,
                limit: int = 50) -> tuple[list[LedgerRow], bool]:
    """The variation's ledger newest first: ``limit`` rows older than ``before_id``, and whether more follow.

    Keyset paging on (variation_id, id): any page costs one index range, however deep.
    """
    rows = session.execute(text(
        "SELECT l.id, m.code AS marketplace, l.change_type, l.quantity_before, l.quantity_after, l.change, "
        "l.order_id, l.order_line_id, l.reference, l.actor, l.note, l.sync_id, l.event_time, l.created_at "
        "FROM stock_ledger l JOIN marketplaces m ON m.id = l.marketplace_id "
        "WHERE l.variation_id = :v AND (CAST(:before AS bigint) IS NULL OR l.id < :before) "
        "ORDER BY l.id DESC LIMIT :limit"), {"v": variation_id, "before": before_id, "limit": limit + 1})
    found = [LedgerRow(**row._mapping) for row in rows]
    return found[:limit], len(found) > limit


def marketplace_codes(session: Session) -> list[str]:
    """Every marketplace code, sorted."""
    return list(session.execute(text("SELECT code FROM marketplaces ORDER BY code")).scalars())


def last_runs_per_target(session: Session) -> list:
    """The latest sync run of each (kind, target), by kind and target (``SyncRun`` rows)."""
    from sqlalchemy import select

    from db.models import SyncRun

    latest = text("SELECT DISTINCT ON (kind, target) id FROM sync_runs ORDER BY kind, target, id DESC")
    ids = list(session.execute(latest).scalars())
    return list(session.scalars(select(SyncRun).where(SyncRun.id.in_(ids)).order_by(SyncRun.kind, SyncRun.target)))


def stock_attention(session: Session) -> dict[str, int]:
    """Stock rows an operator should look at: pushes failed or pending, rows waiting for a re-check."""
    row = session.execute(text(
        "SELECT (SELECT count(*) FROM marketplace_stock WHERE push_state = 'failed') AS push_failed, "
        "(SELECT count(*) FROM marketplace_stock WHERE push_state = 'pending') AS push_pending, "
        "(SELECT count(*) FROM marketplace_stock WHERE needs_recheck) AS needs_recheck")).one()
    return dict(row._mapping)


__all__ = ["LedgerRow", "StockRow", "VariationRow", "escape_like", "get_variation", "last_runs_per_target",
           "ledger_page", "marketplace_codes", "search_variations", "stock_attention", "stock_rows",
           "variation_id_by_sku"]
