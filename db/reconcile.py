"""Reconciliation: compare the marketplace's listing pages with the stock table.

A reconciliation is a ``sync_runs`` row of kind ``reconciliation``.  It first checks the ledger
invariant (a broken ledger is not corrected from the marketplace: the run fails and alerts), then
takes the same bulk page walk as a stock sync (never one call per listing) and applies each page
with the rules of :func:`db.snapshot.apply_snapshot` in compare mode: every row that differs is
written to ``reconciliation_reports`` (local, marketplace, difference) and, unless it is a dry
run, corrected by one ``reconciliation`` ledger entry.  Rows the page cannot be trusted for (a
push pending, an order too close to the fetch time) are counted as deferred, not as differences.
More differences than the threshold raise an alert (:mod:`runtime.alert_hooks`).  Each difference
is explained (:func:`core.drift.explain`): its cause and evidence are kept on its report row, and
the run's ``details.causes`` counts them.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Sequence

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.drift import CAUSES, RESTOCK_LOOKBACK, DriftFacts, explain
from db import syncs
from db.event_models import ReconciliationReport
from db.ledger import check_invariant
from db.snapshot import PageItem, apply_snapshot, ensure_marketplace, upsert_catalogue

logger = logging.getLogger(__name__)

#: ``sync_runs.kind`` of a reconciliation.
KIND = "reconciliation"


@dataclass(frozen=True)
class ComparedPage:
    """What comparing one page found (``applied`` False: the page was already compared in this run)."""

    applied: bool
    discrepancies: int = 0
    corrected: int = 0
    deferred: int = 0
    #: Differences per cause (:class:`core.drift.DriftCause`).
    causes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ReconciliationSummary:
    """A finished (or refused) reconciliation run, for the CLI, the logs and the alert."""

    run_id: int
    marketplace: str
    status: str
    dry_run: bool
    pages: int
    listings: int
    discrepancies: int
    corrected: int
    deferred: int
    threshold: int
    alert: bool
    error: str | None = None
    #: Differences per cause, every cause listed.
    causes: dict[str, int] = field(default_factory=dict)


def begin_reconciliation(session: Session, marketplace: str, *, dry_run: bool, trigger: str = "manual",
                         stale_after_s: float = 15 * 60) -> syncs.SyncRun:
    """Open a reconciliation run of ``marketplace`` and check the ledger invariant.  Commits.

    At most one runs per marketplace (the run lock of :mod:`db.syncs`; raises
    :class:`db.syncs.SyncRefused`).  When the invariant is broken the run is returned already
    ``failed`` (with the violations in ``details``; the caller raises the alert): the marketplace is
    not compared with a ledger that does not add up.
    """
    marketplace_id = ensure_marketplace(session, marketplace)
    session.commit()
    policy = syncs.SyncPolicy(cooldown_scheduled_s=0, cooldown_manual_s=0, stale_after_s=stale_after_s)
    run = syncs.begin_run(session, kind=KIND, target=marketplace, trigger=trigger, policy=policy, force=True,
                          dry_run=dry_run, details={"marketplace_id": marketplace_id})
    violations = check_invariant(session, marketplace_id)
    if violations:
        shown = [{"stock_id": v.stock_id, "problem": v.problem} for v in violations[:20]]
        error = f"the ledger invariant is broken on {len(violations)} stock rows: nothing compared or corrected"
        syncs.set_totals(session, run.id, details={"invariant_violations": len(violations), "violations": shown,
                                                   "alert": True})
        session.commit()
        syncs.fail_run(session, run.id, error)
        session.refresh(run)
    return run


def compare_page(session: Session, *, run_id: int, marketplace_id: int, page: int, fetched_at: datetime,
                 items: Sequence[PageItem], dry_run: bool, total_pages: int | None = None,
                 total_items: int | None = None, language: str = "fr-fr", skew=None,
                 restocks_on_cancel: bool = True, unbooked_orders: Mapping[str, list[dict]] | None = None
                 ) -> ComparedPage:
    """Compare one page with the stock table, record its differences, correct them unless ``dry_run``.

    Each difference gets its cause and evidence (:func:`core.drift.explain`); ``unbooked_orders``:
    the marketplace's order lines the ledger has not booked, by SKU (the intake's memo).

    One transaction (the caller commits); idempotent per (run, page) like a sync's page.  A
    listing the stock table does not know yet is a difference from 0; a real run creates its rows
    (as a sync would) and books the marketplace's quantity.
    """
    items = list({item.external_id: item for item in items}.values())
    claimed = session.execute(text(
        "INSERT INTO sync_pages (sync_id, page, items, fetched_at) VALUES (:s, :p, :n, :t) "
        "ON CONFLICT DO NOTHING RETURNING page"), {"s": run_id, "p": page, "n": len(items), "t": fetched_at}).first()
    if claimed is None:
        return ComparedPage(applied=False)
    listing_of = {item.sku: item.external_id for item in items}
    reports: list[dict] = []
    deferred = 0
    if items:
        if dry_run:
            known = set(session.execute(text(
                "SELECT v.sku FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
                "WHERE s.marketplace_id = :mp AND v.sku = ANY(CAST(:sku AS text[]))"),
                {"mp": marketplace_id, "sku": list(listing_of)}).scalars())
            new = {}
            for item in items:
                if item.sku not in known:
                    new[item.sku] = new.get(item.sku, 0) + item.quantity
            reports += [{"stock_id": None, "sku": sku, "local": 0, "marketplace": quantity, "difference": quantity}
                        for sku, quantity in new.items() if quantity != 0]
        else:
            upsert_catalogue(session, marketplace_id=marketplace_id, sync_id=run_id, fetched_at=fetched_at,
                             items=items, language=language)
        rows = apply_snapshot(session, marketplace_id=marketplace_id, fetched_at=fetched_at,
                              skus=[i.sku for i in items], quantities=[i.quantity for i in items],
                              key_prefix=f"reconciliation:{run_id}:{page}:", change_type="reconciliation",
                              sync_id=run_id, actor="reconciliation", dry_run=dry_run, skew=skew,
                              restocks_on_cancel=restocks_on_cancel)
        sku_of = dict(session.execute(text(
            "SELECT s.id, v.sku FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "WHERE s.id = ANY(CAST(:ids AS bigint[]))"), {"ids": [row.stock_id for row in rows]}).all())
        deferred = sum(row.state != "apply" for row in rows)
        reports += [{"stock_id": row.stock_id, "sku": sku_of[row.stock_id], "local": row.before,
                     "marketplace": row.marketplace, "difference": row.after - row.before}
                    for row in rows if row.state == "apply" and row.after != row.before]
    causes = _explain(session, reports, fetched_at, unbooked_orders or {})
    if reports:
        session.execute(text(
            "INSERT INTO reconciliation_reports (run_id, marketplace_id, stock_id, listing, sku, local, marketplace, "
            "difference, corrected, cause, evidence) VALUES (:run, :mp, :stock_id, :listing, :sku, :local, "
            ":marketplace, :difference, :corrected, :cause, CAST(:evidence AS jsonb))"),
            [{**report, "run": run_id, "mp": marketplace_id, "listing": listing_of.get(report["sku"]),
              "corrected": not dry_run} for report in reports])
    corrected = 0 if dry_run else len(reports)
    syncs.record_page(session, run_id, items=len(items), changed=len(reports),
                      unchanged=len({i.sku for i in items}) - len(reports), total_pages=total_pages,
                      total_items=total_items, counters={"deferred": deferred, **{f"cause_{c}": n
                                                                                  for c, n in causes.items()}})
    return ComparedPage(applied=True, discrepancies=len(reports), corrected=corrected, deferred=deferred,
                        causes=dict(causes))


def _explain(session: Session, reports: list[dict], fetched_at: datetime,
             unbooked_orders: Mapping[str, list[dict]]) -> Counter[str]:
    """Set each report's ``cause`` and ``evidence`` (JSON text); the count per cause."""
    facts = drift_facts(session, [r["stock_id"] for r in reports if r["stock_id"] is not None], fetched_at)
    causes: Counter[str] = Counter()
    for report in reports:
        found = facts.get(report["stock_id"], {})
        cause, evidence = explain(DriftFacts(report["difference"], report["marketplace"], fetched_at,
                                             unbooked_orders=list(unbooked_orders.get(report["sku"], ())), **found))
        report.update(cause=cause.value, evidence=json.dumps(evidence, default=str))
        causes[cause.value] += 1
    return causes


def drift_facts(session: Session, stock_ids: list[int], fetched_at: datetime) -> dict[int, dict[str, Any]]:
    """Per stock row, the facts :func:`core.drift.explain` reads: ledger rows booked after the read (with an
    event time before it), the last push, the cancellations of :data:`core.drift.RESTOCK_LOOKBACK`."""
    if not stock_ids:
        return {}
    facts: dict[int, dict[str, Any]] = {sid: {"booked_after_read": [], "cancellations": []} for sid in stock_ids}
    for row in session.execute(text(
            "SELECT stock_id, id, change_type, change, created_at AS booked_at, event_time FROM stock_ledger "
            "WHERE stock_id = ANY(CAST(:ids AS bigint[])) AND event_time >= :since AND event_time <= :read "
            "AND change_type NOT IN ('sync', 'recheck', 'reconciliation') ORDER BY id"),
            {"ids": stock_ids, "since": fetched_at - RESTOCK_LOOKBACK, "read": fetched_at}).mappings():
        entry = {key: row[key] for key in ("id", "change_type", "change", "booked_at")}
        if row["booked_at"] > fetched_at:
            facts[row["stock_id"]]["booked_after_read"].append(entry)
    for row in session.execute(text(
            "SELECT stock_id, id, order_id, order_line_id, change, restocked, event_time FROM stock_ledger "
            "WHERE stock_id = ANY(CAST(:ids AS bigint[])) AND change_type = 'order_cancelled' "
            "AND event_time BETWEEN :since AND :read ORDER BY event_time DESC"),
            {"ids": stock_ids, "since": fetched_at - RESTOCK_LOOKBACK, "read": fetched_at}).mappings():
        facts[row["stock_id"]]["cancellations"].append(
            {key: row[key] for key in ("id", "order_id", "order_line_id", "change", "restocked", "event_time")})
    for row in session.execute(text(
            "SELECT DISTINCT ON (stock_id) stock_id, id, state, quantity_read, quantity_sent, error, updated_at AS at "
            "FROM push_log WHERE stock_id = ANY(CAST(:ids AS bigint[])) AND started_at <= :read "
            "ORDER BY stock_id, id DESC"), {"ids": stock_ids, "read": fetched_at}).mappings():
        facts[row["stock_id"]]["last_push"] = {key: row[key] for key in
                                               ("id", "state", "quantity_read", "quantity_sent", "error", "at")}
    return facts


def finish_reconciliation(session: Session, run_id: int, *, threshold: int) -> ReconciliationSummary:
    """Close a run whose pages are all compared; flag it (``details.alert``) when more than
    ``threshold`` rows differ.  Commits.  Raising the alert is the caller's (``summary.alert``).
    """
    run = syncs.get_run(session, run_id)
    discrepancies = run.changed
    alert = discrepancies > threshold
    corrected = 0 if run.dry_run else discrepancies
    counters = run.details or {}
    causes = {cause: int(counters.get(f"cause_{cause}", 0)) for cause in CAUSES}
    details = {"discrepancies": discrepancies, "corrected": corrected, "threshold": threshold, "alert": alert,
               "causes": causes}
    syncs.set_totals(session, run_id, details=details)
    syncs.succeed_run(session, run_id)
    session.commit()
    return summarize(session, run_id)


def summarize(session: Session, run_id: int) -> ReconciliationSummary:
    """The summary of reconciliation run ``run_id`` as it stands."""
    run = syncs.get_run(session, run_id)
    details = run.details or {}
    return ReconciliationSummary(
        run_id=run.id, marketplace=run.target, status=run.status, dry_run=run.dry_run, pages=run.pages_done,
        listings=run.items, discrepancies=run.changed, corrected=0 if run.dry_run else run.changed,
        deferred=int(details.get("deferred", 0)), threshold=int(details.get("threshold", 0)),
        alert=bool(details.get("alert", False)), error=run.error,
        causes={cause: int(details.get(f"cause_{cause}", 0)) for cause in CAUSES})


def discrepancy_report(session: Session, run_id: int, limit: int | None = None) -> list[ReconciliationReport]:
    """The differences a run found, largest first."""
    query = (select(ReconciliationReport).where(ReconciliationReport.run_id == run_id)
             .order_by(text("abs(difference) DESC"), ReconciliationReport.id))
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


