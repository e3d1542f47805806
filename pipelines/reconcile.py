"""Reconciliation as plain functions: check the ledger, walk the marketplace's pages in bulk, correct.

A ledger that does not add up is never corrected from the marketplace: the run fails and raises
the ``ledger_invariant`` alert.  Every difference is kept in ``reconciliation_reports``; more than
the threshold raise ``reconciliation_discrepancies``.
"""
from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta, timezone

from db import reconcile, syncs
from db.snapshot import PageItem
from pipelines import events
from runtime import accounts, metrics, resources, sync_stats
from runtime.alert_hooks import raise_alert
from runtime.clients import backmarket_client
from runtime.settings import get_settings


def run_reconciliation(marketplace: str, *, dry_run: bool, threshold: int | None = None,
                       trigger: str = "manual") -> reconcile.ReconciliationSummary:
    """Reconcile ``marketplace``: invariant check, bulk page walk, report, corrections unless ``dry_run``.

    Runs in the calling thread (the CLI, or the ``reconcile_stock`` actor).  Raises
    :class:`db.syncs.SyncRefused` when a reconciliation of ``marketplace`` is already running.
    """
    accounts.account(marketplace, "read_one")
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
        api_calls = resources.run_on_worker_loop(lambda: _walk(run.id, marketplace_id, dry_run))
    except BaseException as error:
        with sessions() as session:
            syncs.fail_run(session, run.id, f"reconciliation walk failed: {type(error).__name__}: {error}")
        raise
    with sessions() as session:
        syncs.add_counts(session, run.id, **api_calls)
        session.commit()
        summary = reconcile.finish_reconciliation(session, run.id, threshold=threshold)
    metrics.discrepancies(marketplace, summary.discrepancies)
    if summary.alert:
        what = "would correct" if summary.dry_run else "corrected"
        raise_alert("reconciliation_discrepancies",
                    f"{marketplace}: {summary.discrepancies} stock rows differ from the marketplace (threshold "
                    f"{summary.threshold}); {what} them in run {summary.run_id}",
                    {"run_id": summary.run_id, "discrepancies": summary.discrepancies,
                     "corrected": summary.corrected, "threshold": summary.threshold, "alert": True})
    return summary


async def _walk(run_id: int, marketplace_id: int, dry_run: bool) -> dict[str, int]:
    """Fetch every listing page (page 1 first, for the count; then the rest at once, paced by the
    fleet-wide limiter) and compare each in its own transaction.  Returns the API counters."""
    settings = get_settings()
    page_size = settings.backmarket_page_size
    counts = {"api_calls": 0, "retries": 0, "errors": 0}

    async def compare(page: int, total_pages: int | None = None) -> int:
        records = []
        try:
            result = await backmarket_client(on_request=records.append).get_listings_page(
                page, page_size)
        finally:
            sync_stats.add_counts(counts, sync_stats.count_attempts(records))
        fetched_at = datetime.now(timezone.utc) - timedelta(seconds=records[-1].elapsed_s if records else 0)
        items = [PageItem(external_id=i.id, legacy_id=i.listing_id, sku=i.sku, title=i.title, quantity=i.quantity,
                          publication_state=i.publication_state, price=i.price, currency=i.currency)
                 for i in result.results]
        await asyncio.to_thread(_compare_page, run_id, marketplace_id, page, fetched_at, items, dry_run, total_pages,
                                result.count if page == 1 else None)
        return result.count

    count = await compare(1)
    total_pages = max(1, math.ceil(count / page_size))
    await asyncio.to_thread(_set_total_pages, run_id, total_pages)
    gate = asyncio.Semaphore(settings.reconcile_concurrency)

    async def bounded(page: int) -> None:
        async with gate:
            await compare(page)

    await asyncio.gather(*(bounded(page) for page in range(2, total_pages + 1)))
    return counts


def _compare_page(run_id, marketplace_id, page, fetched_at, items, dry_run, total_pages, total_items) -> None:
    with resources.sessions()() as session:
        reconcile.compare_page(session, run_id=run_id, marketplace_id=marketplace_id, page=page,
                               fetched_at=fetched_at, items=items, dry_run=dry_run, total_pages=total_pages,
                               total_items=total_items, language=get_settings().backmarket_language,
                               skew=events.skew(), restocks_on_cancel=events.restocks("backmarket"))
        session.commit()


def _set_total_pages(run_id: int, total_pages: int) -> None:
    with resources.sessions()() as session:
        syncs.set_totals(session, run_id, total_pages=total_pages)
        session.commit()
