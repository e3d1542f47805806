"""Set-based apply of one marketplace page to PostgreSQL (DESIGN.md §3, step 3 and 4).

One page = one transaction and a handful of statements, whatever the page size: no per-row ORM
round trips.  A page is applied as a *delta against the balance as of its fetch time* (§5 "no
stale snapshot"): the new listed quantity is the marketplace's quantity plus every local event
(orders, top-ups, manual changes) recorded with an event time after the fetch, so an order that
landed while the page was in flight stays on top.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Mapping

from sqlalchemy import text
from sqlalchemy.orm import Session

#: Ledger change types a snapshot replaces rather than keeps on top (they *are* snapshots).
SNAPSHOT_CHANGE_TYPES = ("sync", "reconciliation")


@dataclass(frozen=True)
class PageItem:
    """One listing of a page, as needed to apply it."""

    external_id: str
    legacy_id: int | None
    sku: str
    title: str | None
    quantity: int
    publication_state: int | None
    price: str | None
    currency: str | None


@dataclass(frozen=True)
class PageResult:
    """What applying a page did."""

    applied: bool
    items: int = 0
    changed: int = 0
    unchanged: int = 0
    #: True when this page was the last one of its run and the run was closed in this transaction.
    finished: bool = False
    status: str | None = None


def ensure_marketplace(session: Session, code: str, name: str | None = None) -> int:
    """The id of marketplace ``code``, created on first use.  Does not commit."""
    session.execute(text("INSERT INTO marketplaces (code, name) VALUES (:c, :n) ON CONFLICT (code) DO NOTHING"),
                    {"c": code, "n": name or code})
    return session.execute(text("SELECT id FROM marketplaces WHERE code = :c"), {"c": code}).scalar_one()


def _dedupe(items: Iterable[PageItem]) -> list[PageItem]:
    # A listing can show up twice when the catalogue shifts under page/offset pagination.
    return list({item.external_id: item for item in items}.values())


def apply_page(session: Session, *, marketplace_id: int, sync_id: int, page: int, fetched_at: datetime,
               items: Iterable[PageItem], language: str = "fr-fr", total_pages: int | None = None,
               total_items: int | None = None) -> PageResult:
    """Apply one page of listings in the caller's transaction (the caller commits).

    Idempotent per (sync_id, page): a re-delivered page finds its ``sync_pages`` row and changes
    nothing.  When this page completes the run, the run is finished here too (same transaction),
    so "all pages applied" never depends on a message that could be lost.
    """
    items = _dedupe(items)
    # A page is 50 rows against tables of 100,000s: the right plan is always nested-loop index
    # lookups.  On young tables (a first sync) the statistics lag and the planner picks hash
    # joins over whole-table scans, 10x slower; this transaction alone is told not to.
    session.execute(text("SELECT set_config('enable_hashjoin', 'off', true), "
                         "set_config('enable_mergejoin', 'off', true)"))
    claimed = session.execute(
        text("INSERT INTO sync_pages (sync_id, page, items, fetched_at) VALUES (:s, :p, :n, :t) "
             "ON CONFLICT DO NOTHING RETURNING page"),
        {"s": sync_id, "p": page, "n": len(items), "t": fetched_at},
    ).first()
    if claimed is None:
        return PageResult(applied=False)

    changed = 0
    if items:
        columns = {
            "ext": [i.external_id for i in items], "legacy": [i.legacy_id for i in items],
            "sku": [i.sku for i in items], "title": [i.title for i in items],
            "qty": [i.quantity for i in items], "pstate": [i.publication_state for i in items],
            "price": [i.price for i in items], "cur": [i.currency for i in items],
        }
        params = {**columns, "mp": marketplace_id, "sync": sync_id, "page": page, "t": fetched_at, "lang": language}
        session.execute(text(
            "INSERT INTO variations (sku, title) SELECT DISTINCT ON (sku) sku, title "
            "FROM unnest(CAST(:sku AS text[]), CAST(:title AS text[])) AS t(sku, title) "
            "ORDER BY sku ON CONFLICT (sku) DO NOTHING"), params)
        # A new statement, a new snapshot: sees variations committed by concurrent pages too.
        session.execute(text(_UPSERT_LISTINGS), params)
        session.execute(text(
            "INSERT INTO marketplace_stock (variation_id, marketplace_id, listed) "
            "SELECT DISTINCT v.id, :mp, 0 FROM variations v WHERE v.sku = ANY(CAST(:sku AS text[])) "
            "ORDER BY v.id ON CONFLICT (variation_id, marketplace_id) DO NOTHING"), params)
        # Lock the page's stock rows first (in id order: no deadlocks between pages), so the next
        # statement's snapshot sees every event that committed before we got the locks.
        session.execute(text(
            "SELECT s.id FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "WHERE s.marketplace_id = :mp AND v.sku = ANY(CAST(:sku AS text[])) ORDER BY s.id FOR UPDATE OF s"),
            params)
        changed = session.execute(text(_APPLY_STOCK), {**params, "snapshot_types": list(SNAPSHOT_CHANGE_TYPES)}
                                  ).scalar_one()

    stock_rows = len({i.sku for i in items})
    progress = session.execute(text(
        "UPDATE sync_runs SET pages_done = pages_done + 1, items = items + :n, changed = changed + :c, "
        "unchanged = unchanged + :u, heartbeat_at = now(), total_pages = COALESCE(:tp, total_pages), "
        "total_items = COALESCE(:ti, total_items) WHERE id = :s "
        "RETURNING pages_done, total_pages, status"),
        {"n": len(items), "c": changed, "u": stock_rows - changed, "tp": total_pages, "ti": total_items,
         "s": sync_id}).one()
    finished = False
    status = progress.status
    # The sync_runs row lock serialises this check: exactly one page sees the last increment.
    if progress.total_pages is not None and progress.pages_done >= progress.total_pages:
        status = finish_run(session, sync_id=sync_id, marketplace_id=marketplace_id)
        finished = True
    return PageResult(applied=True, items=len(items), changed=changed, unchanged=stock_rows - changed,
                      finished=finished, status=status)


def finish_run(session: Session, *, sync_id: int, marketplace_id: int) -> str:
    """Close a run whose pages are all applied: flag listings it did not see.  Does not commit.

    A run that already failed (a page went to the dead letters) stays failed, and flags nothing:
    it did not see the whole catalogue.
    """
    status = session.execute(text("SELECT status FROM sync_runs WHERE id = :s FOR UPDATE"),
                             {"s": sync_id}).scalar_one()
    if status != "running":
        return status
    missing = session.execute(text(
        "UPDATE listings SET missing_since = now() WHERE marketplace_id = :mp "
        "AND last_seen_sync_id IS DISTINCT FROM :s AND missing_since IS NULL"),
        {"mp": marketplace_id, "s": sync_id}).rowcount
    session.execute(text(
        "UPDATE sync_runs SET status = 'succeeded', finished_at = now(), missing = :m WHERE id = :s"),
        {"m": missing, "s": sync_id})
    return "succeeded"


_UPSERT_LISTINGS = """
INSERT INTO listings (marketplace_id, external_id, legacy_id, variation_id, sku, title, publication_state,
                      prices, api_quantity, last_seen_sync_id, last_seen_at, missing_since)
SELECT :mp, t.ext, t.legacy, v.id, t.sku, t.title, t.pstate,
       jsonb_build_object(CAST(:lang AS text), jsonb_build_object('price', t.price, 'currency', t.cur)),
       t.qty, :sync, :t, NULL
FROM unnest(CAST(:ext AS text[]), CAST(:legacy AS bigint[]), CAST(:sku AS text[]), CAST(:title AS text[]),
            CAST(:pstate AS int[]), CAST(:price AS text[]), CAST(:cur AS text[]), CAST(:qty AS int[]))
     AS t(ext, legacy, sku, title, pstate, price, cur, qty)
JOIN variations v ON v.sku = t.sku
ORDER BY t.ext
ON CONFLICT (marketplace_id, external_id) DO UPDATE SET
    legacy_id = EXCLUDED.legacy_id, variation_id = EXCLUDED.variation_id, sku = EXCLUDED.sku,
    title = EXCLUDED.title, publication_state = EXCLUDED.publication_state,
    prices = listings.prices || EXCLUDED.prices, api_quantity = EXCLUDED.api_quantity,
    last_seen_sync_id = EXCLUDED.last_seen_sync_id, last_seen_at = EXCLUDED.last_seen_at, missing_since = NULL
"""

# One statement: compute each stock row's new quantity (snapshot + local events after the fetch),
# update the rows that changed, write one ledger row per change, move the variation totals by the
# same delta.  Rows whose quantity did not change get only their sync stamp.
_APPLY_STOCK = """
WITH incoming AS (
    SELECT v.id AS variation_id, sum(t.qty)::int AS api_quantity
    FROM unnest(CAST(:sku AS text[]), CAST(:qty AS int[])) AS t(sku, qty)
    JOIN variations v ON v.sku = t.sku
    GROUP BY v.id
), target AS (
    SELECT s.id, s.variation_id, s.listed AS before, i.api_quantity,
           i.api_quantity + COALESCE((
               SELECT sum(l.change) FROM stock_ledger l
               WHERE l.stock_id = s.id AND l.event_time > :t
                 AND l.change_type <> ALL(CAST(:snapshot_types AS text[]))), 0)::int AS after
    FROM marketplace_stock s JOIN incoming i ON i.variation_id = s.variation_id
    WHERE s.marketplace_id = :mp
), updated AS (
    UPDATE marketplace_stock s
    SET listed = target.after, last_api_quantity = target.api_quantity, last_synced_at = :t, updated_at = now()
    FROM target WHERE s.id = target.id
    RETURNING s.id, s.variation_id, target.before, target.after
), ledger AS (
    INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, quantity_after, change,
                              change_type, sync_id, actor, idempotency_key, event_time)
    SELECT id, variation_id, :mp, before, after, after - before, 'sync', :sync, 'stock_sync',
           'sync:' || :sync || ':' || :page || ':' || id, :t
    FROM updated WHERE after <> before
    ORDER BY id
    RETURNING variation_id, change
), totals AS (
    UPDATE variations v SET total_stock = v.total_stock + d.delta, updated_at = now()
    FROM (SELECT variation_id, sum(change) AS delta FROM ledger GROUP BY variation_id) d
    WHERE v.id = d.variation_id
    RETURNING v.id
)
SELECT count(*) FROM ledger
"""
