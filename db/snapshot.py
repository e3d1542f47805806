"""Set-based apply of marketplace snapshots (pages, re-checks, a push's read) to PostgreSQL.

One page = one transaction and a handful of statements, whatever the page size.  Each row's
state and new quantity follow :func:`core.booking.decide_snapshot`, computed here in SQL for the
whole page at once: a row becomes *the marketplace's quantity + its unpushed local changes +
its marketplace events after the fetch*, unless the snapshot cannot be trusted for it (stale, a
push of another owner in flight or just landed, a marketplace event within the clock skew:
then it is left, and an ambiguous one flagged for a re-check).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterable, Mapping, Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from core.booking import SNAPSHOT_STATES
from db import syncs
from core.booking import DEFAULT_CLOCK_SKEW

#: Ledger change types a snapshot replaces rather than keeps on top (they *are* snapshots).
SNAPSHOT_CHANGE_TYPES = ("sync", "reconciliation", "recheck")

#: Where a read came from (``listing_reads.source``), by the ledger change type its snapshot books.
READ_SOURCES = {"sync": "page", "recheck": "single", "reconciliation": "reconcile"}

#: What :func:`apply_snapshot` did with a row: applied it, or left it (see the module docstring).
ROW_STATES = SNAPSHOT_STATES


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
    #: Stock rows left as they were (stale, unpushed or ambiguous), and of those, flagged for a re-check.
    deferred: int = 0
    rechecks: int = 0
    #: The run's pages done and total after this page (for the caller's progress metrics).
    pages_done: int = 0
    total_pages: int | None = None


@dataclass(frozen=True)
class SnapshotRow:
    """One stock row of a snapshot: its state (:data:`ROW_STATES`), stock before and after, and
    what the marketplace said.  ``after`` is what the row would be if it were applied."""

    stock_id: int
    state: str
    before: int
    after: int
    marketplace: int


def ensure_marketplace(session: Session, code: str, name: str | None = None) -> int:
    """The id of marketplace ``code``, created on first use.  Does not commit."""
    session.execute(text("INSERT INTO marketplaces (code, name) VALUES (:c, :n) ON CONFLICT (code) DO NOTHING"),
                    {"c": code, "n": name or code})
    return session.execute(text("SELECT id FROM marketplaces WHERE code = :c"), {"c": code}).scalar_one()


def plan_for_small_batches(session: Session) -> None:
    """Tell the planner, for this transaction only, that its statements touch a page's rows, not tables.

    A page is 50 rows against tables of 100,000s: the right plan is always nested-loop index
    lookups.  On young tables (a first sync) the statistics lag behind the rows, and the planner
    picks hash joins, or a nested loop over a whole-table scan, that grow with every page (a first
    sync of 20,000 listings went from 8 to 29 ms a page until autovacuum's ANALYZE caught up,
    measured); with these off, every page costs the same few index lookups.
    """
    transaction = session.get_transaction()
    if transaction is not None and session.info.get(_PLANNED) is transaction:
        return  # already told in this transaction (a page runs several statements that need it)
    session.execute(text("SELECT set_config('enable_hashjoin', 'off', true), "
                         "set_config('enable_mergejoin', 'off', true), set_config('enable_seqscan', 'off', true)"))
    session.info[_PLANNED] = session.get_transaction()


_PLANNED = "stocksync.small_batch_plans"


def _dedupe(items: Iterable[PageItem]) -> list[PageItem]:
    # A listing can show up twice when the catalogue shifts under page/offset pagination.
    return list({item.external_id: item for item in items}.values())


def apply_page(session: Session, *, marketplace_id: int, sync_id: int, page: int, fetched_at: datetime,
               items: Iterable[PageItem], language: str = "fr-fr", total_pages: int | None = None,
               total_items: int | None = None, skew: timedelta | None = None, now: datetime | None = None,
               restocks_on_cancel: bool = True, next_cursor: str | None = None, keep_reads: bool = True
               ) -> PageResult:
    """Apply one page of listings in the caller's transaction (the caller commits).

    Idempotent per (sync_id, page): a re-delivered page finds its ``sync_pages`` row and changes
    nothing.  When this page completes the run, the run is finished here too (same transaction),
    so "all pages applied" never depends on a message that could be lost.  Rows the page cannot
    be trusted for are left as they are (:func:`apply_snapshot`; ``skew`` defaults to
    :data:`core.booking.DEFAULT_CLOCK_SKEW`).  ``next_cursor``: a cursor walk's way to the next page,
    kept with this one so a resume starts after the last page applied.  ``keep_reads``: write the
    page's changed reads to ``listing_reads`` (off only to measure what they cost).
    """
    items = _dedupe(items)
    claimed = session.execute(
        text("INSERT INTO sync_pages (sync_id, page, items, fetched_at, next_cursor) VALUES (:s, :p, :n, :t, :c) "
             "ON CONFLICT DO NOTHING RETURNING page"),
        {"s": sync_id, "p": page, "n": len(items), "t": fetched_at, "c": next_cursor},
    ).first()
    if claimed is None:
        return PageResult(applied=False)

    changed = deferred = rechecks = 0
    if items:
        upsert_catalogue(session, marketplace_id=marketplace_id, sync_id=sync_id, fetched_at=fetched_at, items=items,
                         language=language)
        rows = apply_snapshot(session, marketplace_id=marketplace_id, fetched_at=fetched_at,
                              skus=[i.sku for i in items], quantities=[i.quantity for i in items],
                              key_prefix=f"sync:{sync_id}:{page}:", sync_id=sync_id, skew=skew, now=now,
                              restocks_on_cancel=restocks_on_cancel, keep_reads=keep_reads)
        changed = sum(row.state == "apply" and row.after != row.before for row in rows)
        deferred = sum(row.state != "apply" for row in rows)
        rechecks = sum(row.state == "ambiguous" for row in rows)

    stock_rows = len({i.sku for i in items})
    progress = syncs.record_page(session, sync_id, items=len(items), changed=changed, unchanged=stock_rows - changed,
                                 total_pages=total_pages, total_items=total_items)
    finished = False
    status = progress.status
    # The sync_runs row lock serialises this check: exactly one page sees the last increment.
    if progress.total_pages is not None and progress.pages_done >= progress.total_pages:
        status = finish_run(session, sync_id=sync_id, marketplace_id=marketplace_id)
        finished = True
    return PageResult(applied=True, items=len(items), changed=changed, unchanged=stock_rows - changed,
                      finished=finished, status=status, deferred=deferred, rechecks=rechecks,
                      pages_done=progress.pages_done, total_pages=progress.total_pages)


def upsert_catalogue(session: Session, *, marketplace_id: int, sync_id: int, fetched_at: datetime,
                     items: Sequence[PageItem], language: str = "fr-fr") -> None:
    """Upsert a page's variations and listings and create missing stock rows (at 0).  Does not commit."""
    plan_for_small_batches(session)
    params = {
        "ext": [i.external_id for i in items], "legacy": [i.legacy_id for i in items],
        "sku": [i.sku for i in items], "title": [i.title for i in items],
        "qty": [i.quantity for i in items], "pstate": [i.publication_state for i in items],
        "price": [i.price for i in items], "cur": [i.currency for i in items],
        "mp": marketplace_id, "sync": sync_id, "t": fetched_at, "lang": language,
    }
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


def apply_snapshot(session: Session, *, marketplace_id: int, fetched_at: datetime, skus: Sequence[str],
                   quantities: Sequence[int], key_prefix: str, change_type: str = "sync", sync_id: int | None = None,
                   actor: str = "stock_sync", skew: timedelta | None = None, dry_run: bool = False,
                   now: datetime | None = None, lease_owner: str | None = None, restocks_on_cancel: bool = True,
                   keep_reads: bool = True) -> list[SnapshotRow]:
    """Apply the marketplace's quantities (by SKU, as of ``fetched_at``) to existing stock rows.

    Each row becomes what :func:`core.booking.decide_snapshot` says, with one ledger row
    (``change_type``, key ``key_prefix || stock id``) per change and the variation total moved by
    the same delta; a row left ``ambiguous`` is flagged for a re-check.  ``lease_owner``: the
    push whose own read this is (its lease does not make the row ``unpushed``).  Quantities of one
    SKU are summed (several listings of one variation).  What the marketplace said of each row is
    kept in ``listing_reads`` (whatever the row's state) when it differs from the row's previous
    read, unless ``keep_reads`` is off.  With ``dry_run`` nothing is locked or written: the rows
    say what would happen.  Does not commit.
    """
    plan_for_small_batches(session)
    params = {"sku": list(skus), "qty": list(quantities), "mp": marketplace_id, "t": fetched_at,
              "skew": DEFAULT_CLOCK_SKEW if skew is None else skew,
              "restocks": restocks_on_cancel,
              "now": now or datetime.now(timezone.utc), "owner": None if lease_owner is None else lease_owner[:64]}
    if not params["sku"]:
        return []
    if dry_run:
        rows = session.execute(text(_SNAPSHOT_TARGET + _COMPARE_ONLY), params)
    else:
        # Lock the rows first (in id order: no deadlocks between pages), so the next statement's
        # snapshot sees every event that committed before we got the locks.
        session.execute(_LOCK_PAGE_ROWS, params)
        rows = session.execute(text(_SNAPSHOT_TARGET + _APPLY_TARGET), {
            **params, "change_type": change_type, "key_prefix": key_prefix, "sync": sync_id, "actor": actor,
            "source": READ_SOURCES[change_type] if keep_reads else None})
    return [SnapshotRow(row.id, row.state, row.before, row.after, row.api_quantity) for row in rows]


def apply_recheck(session: Session, *, marketplace_id: int, fetched_at: datetime, quantities: Mapping[str, int],
                  skew: timedelta | None = None, now: datetime | None = None, restocks_on_cancel: bool = True
                  ) -> list[SnapshotRow]:
    """Apply a fresh read of a few flagged rows (SKU -> the marketplace's quantity).  Does not commit.

    The same rules as a page: a row still ambiguous stays flagged, to be read again later.
    """
    return apply_snapshot(session, marketplace_id=marketplace_id, fetched_at=fetched_at, skus=list(quantities),
                          quantities=list(quantities.values()), key_prefix=f"recheck:{uuid.uuid4().hex}:",
                          change_type="recheck", actor="recheck", skew=skew, now=now,
                          restocks_on_cancel=restocks_on_cancel)


def marketplace_changes_since(session: Session, stock_id: int, since: datetime, restocks_on_cancel: bool = True
                              ) -> int:
    """The sum of a row's marketplace events after ``since`` (what the marketplace did by itself since)."""
    return session.execute(text(
        "SELECT COALESCE(sum(l.change), 0)::int FROM stock_ledger l WHERE l.stock_id = :sid AND l.event_time > :t "
        "AND " + _MARKETPLACE_ROW),
        {"sid": stock_id, "t": since, "restocks": restocks_on_cancel}).scalar_one()


#: A ledger row ``l`` the marketplace counts by itself (``core.booking.counted_by_marketplace``): an order, or a
#: cancellation it restocked by the row's own fact, else by the account's default (``:restocks``).
_MARKETPLACE_ROW = ("(l.change_type = 'order_created' OR (l.change_type = 'order_cancelled' "
                    "AND COALESCE(l.restocked > 0, CAST(:restocks AS boolean))))")


def finish_run(session: Session, *, sync_id: int, marketplace_id: int) -> str:
    """Close a run whose pages are all applied: flag listings it did not see.  Does not commit.

    A run that already failed (a page went to the dead letters) stays failed, and flags nothing:
    it did not see the whole catalogue.
    """
    status = syncs.lock_status(session, sync_id)
    if status != "running":
        return status
    missing = session.execute(text(
        "UPDATE listings SET missing_since = now() WHERE marketplace_id = :mp "
        "AND last_seen_sync_id IS DISTINCT FROM :s AND missing_since IS NULL"),
        {"mp": marketplace_id, "s": sync_id}).rowcount
    syncs.succeed_run(session, sync_id, missing=missing)
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

# Each stock row of the snapshot: its new quantity (snapshot + local events after the fetch) and
# whether the snapshot may be applied to it at all (see the module docstring).
_SNAPSHOT_TARGET = """
WITH incoming AS (
    SELECT v.id AS variation_id, sum(t.qty)::int AS api_quantity
    FROM unnest(CAST(:sku AS text[]), CAST(:qty AS int[])) AS t(sku, qty)
    JOIN variations v ON v.sku = t.sku
    GROUP BY v.id
), target AS (
    SELECT s.id, s.variation_id, s.listed AS before, i.api_quantity,
           -- core.booking.decide_snapshot: a 0 for a row owing units agrees with it unless it waits for a re-check.
           CASE WHEN i.api_quantity = 0 AND s.listed - s.unpushed - newer.change < 0 AND NOT s.needs_recheck
                THEN s.listed
                ELSE i.api_quantity + s.unpushed + newer.change END AS after,
           CASE
               WHEN s.last_synced_at > :t THEN 'stale'
               WHEN (s.push_lease_until > :now AND s.push_lease_owner IS DISTINCT FROM CAST(:owner AS text))
                    OR (CAST(:owner AS text) IS NULL AND s.pushed_at >= :t - CAST(:skew AS interval))
                   THEN 'unpushed'
               WHEN close.events > 0 THEN 'ambiguous'
               ELSE 'apply'
           END AS state
    FROM incoming i
    -- One index lookup per incoming row, whatever the statistics say: OFFSET 0 keeps the planner
    -- from flattening this into a join it may run as a scan of the marketplace's every row.
    CROSS JOIN LATERAL (
        SELECT * FROM marketplace_stock s1 WHERE s1.variation_id = i.variation_id AND s1.marketplace_id = :mp
        OFFSET 0
    ) s
    CROSS JOIN LATERAL (
        SELECT COALESCE(sum(l.change), 0)::int AS change FROM stock_ledger l
        WHERE l.stock_id = s.id AND l.event_time > :t AND """ + _MARKETPLACE_ROW + """
    ) newer
    -- An order or cancellation within the skew of the fetch (a lateral count, not EXISTS: the
    -- planner may run an EXISTS as one scan of every ledger row in the window, for all rows).
    CROSS JOIN LATERAL (
        SELECT count(*) AS events FROM (
            SELECT 1 FROM stock_ledger l
            WHERE l.stock_id = s.id
              AND """ + _MARKETPLACE_ROW + """
              AND l.event_time BETWEEN :t - CAST(:skew AS interval) AND :t + CAST(:skew AS interval)
            LIMIT 1) one
    ) close
)"""

# The page's stock rows, locked in id order (no deadlocks between pages): looked up by the
# unique (variation_id, marketplace_id) index from the page's variations, never by a scan.
_LOCK_PAGE_ROWS = text(
    "SELECT s.id FROM marketplace_stock s "
    "WHERE s.marketplace_id = :mp AND s.variation_id = ANY(ARRAY("
    "SELECT v.id FROM variations v WHERE v.sku = ANY(CAST(:sku AS text[])))) "
    "ORDER BY s.id FOR UPDATE")

_COMPARE_ONLY = """
SELECT id, state, before, after, api_quantity FROM target ORDER BY id
"""

# One statement: update the rows that may be applied, write one ledger row per change, move the
# variation totals by the same delta, flag the ambiguous rows.  Rows whose quantity did not change
# get only their sync stamp.
_APPLY_TARGET = """
, updated AS (
    UPDATE marketplace_stock s
    SET listed = target.after, last_api_quantity = target.api_quantity, last_synced_at = :t, updated_at = now(),
        needs_recheck = false, recheck_since = NULL, recheck_due_at = NULL, recheck_attempts = 0,
        oversold_since = CASE WHEN target.after < 0 THEN COALESCE(s.oversold_since, now()) END
    FROM target WHERE s.id = target.id AND target.state = 'apply'
    RETURNING s.id, s.variation_id, target.before, target.after
), flagged AS (
    UPDATE marketplace_stock s
    SET needs_recheck = true, recheck_since = COALESCE(s.recheck_since, now()), last_api_quantity = target.api_quantity
    FROM target WHERE s.id = target.id AND target.state = 'ambiguous'
    RETURNING s.id
), ledger AS (
    INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, quantity_after, change,
                              change_type, sync_id, actor, idempotency_key, event_time)
    SELECT id, variation_id, :mp, before, after, after - before, CAST(:change_type AS text), CAST(:sync AS bigint),
           CAST(:actor AS text), CAST(:key_prefix AS text) || id, :t
    FROM updated WHERE after <> before
    ORDER BY id
    RETURNING variation_id, change
), totals AS (
    UPDATE variations v SET total_stock = v.total_stock + d.delta, updated_at = now()
    FROM (SELECT variation_id, sum(change) AS delta FROM ledger GROUP BY variation_id) d
    WHERE v.id = d.variation_id
    RETURNING v.id
), reads AS (
    -- What the marketplace said, whatever the row's state, when it differs from the row's read just
    -- before this one (the first read of a row always): one index lookup per row, no write otherwise.
    INSERT INTO listing_reads (stock_id, variation_id, marketplace_id, quantity, read_at, source, sync_id)
    SELECT target.id, target.variation_id, :mp, target.api_quantity, :t, CAST(:source AS text), CAST(:sync AS bigint)
    FROM target
    LEFT JOIN LATERAL (
        SELECT r.quantity FROM listing_reads r WHERE r.stock_id = target.id AND r.read_at <= :t
        ORDER BY r.read_at DESC LIMIT 1
    ) previous_read ON true
    WHERE CAST(:source AS text) IS NOT NULL AND previous_read.quantity IS DISTINCT FROM target.api_quantity
    ORDER BY target.id
    RETURNING 1
)
SELECT id, state, before, after, api_quantity FROM target ORDER BY id
"""
