"""Reconciliation as plain functions: check the ledger, walk the marketplace's pages in bulk, correct.

A ledger that does not add up is never corrected from the marketplace: the run fails and raises
the ``ledger_invariant`` alert.  Every difference is kept in ``reconciliation_reports`` with its
cause (drift explained, :mod:`core.drift`), counted per cause in ``stocksync_drift_total``; more
than the threshold raise ``reconciliation_discrepancies``.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

from db import reconcile, syncs
from core.platforms import CURSOR, NUMBERED
from pipelines import events
from pipelines.orders import unbooked_order_lines
from pipelines.stock_sync import page_items
from runtime import accounts, metrics, resources, sync_stats
from runtime.alert_hooks import raise_alert
from runtime.clients import catalogue_adapter
from runtime.settings import get_settings

logger = logging.getLogger(__name__)


def run_reconciliation(marketplace: str, *, dry_run: bool, threshold: int | None = None,
                       trigger: str = "manual") -> reconcile.ReconciliationSummary:
    """Reconcile ``marketplace``: invariant check, bulk page walk, report, corrections unless ``dry_run``.

    Runs in the calling thread (the CLI, or the ``reconcile_stock`` actor).  Raises
    :class:`db.syncs.SyncRefused` when a reconciliation of ``marketplace`` is already running.
    """
    accounts.account(marketplace, "paging")  # the same walk as its sync, in compare mode
    settings = get_settings()
    threshold = settings.reconcile_alert_threshold if threshold is None else threshold
    sessions = resources.sessions()
    with sessions() as session:
        run = reconcile.begin_reconciliation(session, marketplace, dry_run=dry_run, trigger=trigger,
                                             stale_after_s=settings.sync_stale_after_s)
        metrics.ledger_broken_rows(marketplace, int(run.details.get("invariant_violations") or 0))
        if run.status != "running":
            summary = reconcile.summarize(session, run.id)
            if run.details.get("invariant_violations"):
                raise_alert("ledger_invariant", f"{marketplace}: {run.error}",
                            {"run_id": run.id, "violations": run.details.get("violations", [])})
            return summary
        marketplace_id = run.details["marketplace_id"]
    try:
        unbooked = _unbooked_orders(marketplace)
        api_calls = resources.run_on_worker_loop(lambda: _walk(marketplace, run.id, marketplace_id, dry_run,
                                                               unbooked))
    except BaseException as error:
        with sessions() as session:
            syncs.fail_run(session, run.id, f"reconciliation walk failed: {type(error).__name__}: {error}")
        raise
    with sessions() as session:
        syncs.add_counts(session, run.id, **api_calls)
        session.commit()
        summary = reconcile.finish_reconciliation(session, run.id, threshold=threshold)
    metrics.discrepancies(marketplace, summary.discrepancies)
    for cause, count in summary.causes.items():
        metrics.drift(marketplace, cause, count)
    if summary.alert:
        what = "would correct" if summary.dry_run else "corrected"
        raise_alert("reconciliation_discrepancies",
                    f"{marketplace}: {summary.discrepancies} stock rows differ from the marketplace (threshold "
                    f"{summary.threshold}); {what} them in run {summary.run_id}",
                    {"run_id": summary.run_id, "discrepancies": summary.discrepancies,
                     "corrected": summary.corrected, "threshold": summary.threshold, "alert": True})
    return summary


async def _walk(marketplace: str, run_id: int, marketplace_id: int, dry_run: bool,
                unbooked: dict[str, list[dict]]) -> dict[str, int]:
    """Walk the account's catalogue as its sync does, comparing each page in its own transaction.

    Numbered pages: page 1 first (for the count), then the rest at once, paced by the fleet-wide
    limiter.  Cursor pages: one after the other.  Returns the API counters.
    """
    settings = get_settings()
    view = accounts.account(marketplace)
    counts = {"api_calls": 0, "retries": 0, "errors": 0}

    async def compare(page: int, cursor: str | None = None):
        records = []
        try:
            result = await catalogue_adapter(view, on_request=records.append).list_page(page, cursor)
        finally:
            sync_stats.add_counts(counts, sync_stats.count_attempts(records))
        fetched_at = datetime.now(timezone.utc) - timedelta(seconds=records[-1].elapsed_s if records else 0)
        numbered_first = view.platform.paging == NUMBERED and page == 1
        await asyncio.to_thread(_compare_page, marketplace, run_id, marketplace_id, page, fetched_at,
                                page_items(result.items), dry_run, result.total_pages,
                                result.count if numbered_first else None, unbooked)
        return result

    first = await compare(1)
    if view.platform.paging == CURSOR:
        page, result = 1, first
        while result.next_cursor is not None:
            page += 1
            result = await compare(page, result.next_cursor)
        return counts
    await asyncio.to_thread(_set_total_pages, run_id, first.total_pages)
    gate = asyncio.Semaphore(settings.reconcile_concurrency)

    async def bounded(page: int) -> None:
        async with gate:
            await compare(page)

    await asyncio.gather(*(bounded(page) for page in range(2, first.total_pages + 1)))
    return counts


def _unbooked_orders(marketplace: str) -> dict[str, list[dict]]:
    """The intake's order lines not booked yet, by SKU; none when Redis cannot say (the evidence is missing,
    the reconciliation still runs: such rows are then told apart from hand edits no more)."""
    try:
        return unbooked_order_lines(marketplace)
    except Exception as error:
        logger.warning("reconciliation of %s: cannot read the unbooked orders (%s): unbooked orders will show as "
                       "hand edits", marketplace, type(error).__name__)
        return {}


def _compare_page(marketplace, run_id, marketplace_id, page, fetched_at, items, dry_run, total_pages,
                  total_items, unbooked) -> None:
    with resources.sessions()() as session:
        reconcile.compare_page(session, run_id=run_id, marketplace_id=marketplace_id, page=page,
                               fetched_at=fetched_at, items=items, dry_run=dry_run, total_pages=total_pages,
                               total_items=total_items, language=get_settings().backmarket_language,
                               skew=events.skew(), restocks_on_cancel=events.restocks(marketplace),
                               unbooked_orders=unbooked)
        session.commit()


def _set_total_pages(run_id: int, total_pages: int) -> None:
    with resources.sessions()() as session:
        syncs.set_totals(session, run_id, total_pages=total_pages)
        session.commit()
