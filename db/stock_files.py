"""Queries of stock as files: the exports' pages (keyset on id, so a file of any size is read a page at a
time, never held whole) and what a goods-received import checks its lines against."""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

_STOCK_PAGE = text(
    "SELECT s.id, m.code AS account, v.sku, s.listed AS quantity, "
    "(SELECT string_agg(l.external_id, ' ' ORDER BY l.external_id) FROM listings l "
    " WHERE l.variation_id = s.variation_id AND l.marketplace_id = s.marketplace_id AND l.missing_since IS NULL"
    ") AS listing, s.last_synced_at "
    "FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id JOIN variations v ON v.id = s.variation_id "
    "WHERE s.id > :after AND (CAST(:account AS text) IS NULL OR m.code = :account) "
    "AND (CAST(:sku AS text) IS NULL OR v.sku = :sku) ORDER BY s.id LIMIT :limit")

_LEDGER_PAGE = text(
    "SELECT l.id, m.code AS account, v.sku, l.change_type, l.quantity_before, l.quantity_after, l.change, "
    "l.order_id, l.order_line_id, l.reference, l.actor, l.note, l.sync_id, l.event_time, l.created_at "
    "FROM stock_ledger l JOIN marketplaces m ON m.id = l.marketplace_id JOIN variations v ON v.id = l.variation_id "
    "WHERE l.id > :after AND (CAST(:since AS timestamptz) IS NULL OR l.event_time >= :since) "
    "AND (CAST(:until AS timestamptz) IS NULL OR l.event_time < :until) "
    "AND (CAST(:account AS text) IS NULL OR m.code = :account) "
    # a SKU's rows through its stock rows: the (stock_id, event_time) index, not a walk of the whole ledger
    "AND (CAST(:sku AS text) IS NULL OR l.stock_id IN (SELECT s.id FROM marketplace_stock s JOIN variations sv "
    "     ON sv.id = s.variation_id WHERE sv.sku = :sku)) "
    "ORDER BY l.id LIMIT :limit")


def stock_page(session: Session, *, after_id: int = 0, limit: int = 1000, account: str | None = None,
               sku: str | None = None) -> list[dict]:
    """Stock rows (account, SKU, quantity, its live listings' ids, last synced) with an id past ``after_id``."""
    rows = session.execute(_STOCK_PAGE, {"after": after_id, "limit": limit, "account": account, "sku": sku})
    return [dict(row._mapping) for row in rows]


def ledger_page(session: Session, *, after_id: int = 0, limit: int = 1000, since: datetime | None = None,
                until: datetime | None = None, account: str | None = None, sku: str | None = None) -> list[dict]:
    """Ledger rows with an id past ``after_id``, event time in [``since``, ``until``), of ``account`` and ``sku``."""
    rows = session.execute(_LEDGER_PAGE, {"after": after_id, "limit": limit, "since": since, "until": until,
                                          "account": account, "sku": sku})
    return [dict(row._mapping) for row in rows]


def known_skus(session: Session, skus: Iterable[str]) -> set[str]:
    """Those of ``skus`` that a variation has."""
    wanted = sorted(set(skus))
    if not wanted:
        return set()
    return set(session.execute(text("SELECT sku FROM variations WHERE sku = ANY(:skus)"), {"skus": wanted}).scalars())


__all__ = ["known_skus", "ledger_page", "stock_page"]
