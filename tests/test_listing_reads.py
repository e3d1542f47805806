"""What the marketplaces' reads said, kept compactly (``listing_reads``): pages, single reads, reconciliation,
and the retention prune, on a real PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from db.engine import session_factory
from db.reconcile import compare_page
from db.snapshot import PageItem, apply_page, apply_recheck, ensure_marketplace
from db.syncs import SyncPolicy, begin_run
from db.timeline import prune_reads

POLICY = SyncPolicy(cooldown_scheduled_s=0, cooldown_manual_s=0, stale_after_s=900)
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)


def items(quantities: dict[int, int]) -> list[PageItem]:
    return [PageItem(f"uuid-{i}", i, f"SKU-{i}", f"item {i}", q, 2, "10.00", "EUR") for i, q in quantities.items()]


@pytest.fixture
def sessions(database_url):
    return session_factory(database_url)


def sync(sessions, quantities: dict[int, int], fetched_at: datetime, **options) -> int:
    with sessions() as session:
        marketplace_id = ensure_marketplace(session, "backmarket")
        session.commit()
        run = begin_run(session, kind="stock", target="backmarket", trigger="manual", policy=POLICY, force=True)
        apply_page(session, marketplace_id=marketplace_id, sync_id=run.id, page=1, fetched_at=fetched_at,
                   items=items(quantities), total_pages=1, **options)
        session.commit()
        return run.id


def reads(sessions) -> list[tuple]:
    with sessions() as session:
        return [tuple(row) for row in session.execute(text(
            "SELECT v.sku, r.quantity, r.read_at, r.source FROM listing_reads r "
            "JOIN variations v ON v.id = r.variation_id ORDER BY r.read_at, v.sku"))]


def test_only_changed_reads_are_kept_with_their_source(sessions):
    sync(sessions, {1: 5, 2: 3}, T0)
    sync(sessions, {1: 5, 2: 3}, T0 + timedelta(hours=1))  # nothing moved: nothing written
    sync(sessions, {1: 4, 2: 3}, T0 + timedelta(hours=2))
    with sessions() as session:
        apply_recheck(session, marketplace_id=1, fetched_at=T0 + timedelta(hours=3), quantities={"SKU-1": 2})
        apply_recheck(session, marketplace_id=1, fetched_at=T0 + timedelta(hours=4), quantities={"SKU-1": 2})
        session.commit()
    assert reads(sessions) == [("SKU-1", 5, T0, "page"), ("SKU-2", 3, T0, "page"),
                               ("SKU-1", 4, T0 + timedelta(hours=2), "page"),
                               ("SKU-1", 2, T0 + timedelta(hours=3), "single")]


def test_a_read_the_rules_leave_is_kept_too_and_an_older_read_compares_with_its_own_past(sessions):
    sync(sessions, {1: 5}, T0 + timedelta(hours=2))
    # A page fetched before the one applied is stale for the row, but the marketplace did say 7 then.
    sync(sessions, {1: 7}, T0 + timedelta(hours=1))
    sync(sessions, {1: 7}, T0)  # earlier still, same number as its successor: a change from nothing before it
    assert reads(sessions) == [("SKU-1", 7, T0, "page"), ("SKU-1", 7, T0 + timedelta(hours=1), "page"),
                               ("SKU-1", 5, T0 + timedelta(hours=2), "page")]
    with sessions() as session:
        assert session.execute(text("SELECT listed FROM marketplace_stock")).scalar() == 5


def test_reconciliation_pages_are_reads_and_a_dry_run_writes_none(sessions):
    sync(sessions, {1: 5}, T0)
    with sessions() as session:
        for dry_run, quantity, hours in ((True, 9, 1), (False, 6, 2)):
            run = begin_run(session, kind="reconciliation", target="backmarket", trigger="manual", policy=POLICY,
                            force=True, dry_run=dry_run)
            compare_page(session, run_id=run.id, marketplace_id=1, page=1,
                         fetched_at=T0 + timedelta(hours=hours), items=items({1: quantity}), dry_run=dry_run)
            session.execute(text("UPDATE sync_runs SET status = 'succeeded' WHERE id = :id"), {"id": run.id})
            session.commit()
    assert reads(sessions) == [("SKU-1", 5, T0, "page"), ("SKU-1", 6, T0 + timedelta(hours=2), "reconcile")]


def test_keep_reads_off_writes_none(sessions):
    sync(sessions, {1: 5}, T0, keep_reads=False)
    assert reads(sessions) == []


def test_prune_keeps_the_window_and_each_rows_latest_read(sessions):
    for day, quantity in enumerate((1, 2, 3, 4)):
        sync(sessions, {1: quantity, 2: 10 + (day == 0)}, T0 + timedelta(days=day))
    with sessions() as session:
        deleted = prune_reads(session, T0 + timedelta(days=2, hours=1), batch=1)
        deleted += prune_reads(session, T0 + timedelta(days=2, hours=1), batch=10)
        session.commit()
    assert deleted == 4
    # SKU-1 keeps what is within the window; SKU-2's latest read is older than it, and kept.
    assert reads(sessions) == [("SKU-2", 10, T0 + timedelta(days=1), "page"),
                               ("SKU-1", 4, T0 + timedelta(days=3), "page")]


def test_the_scheduled_prune_uses_the_retention_setting(sessions, database_url, monkeypatch):
    from pipelines.timeline import prune_reads as scheduled_prune
    from runtime import resources
    from runtime.settings import get_settings
    from workers.scheduler import JOBS_BY_NAME

    for day, quantity in enumerate((1, 2, 3)):
        sync(sessions, {1: quantity}, T0 + timedelta(days=day))
    hour = 3_600_000
    with sessions() as session:  # two rolled-up chart columns of an hour: one ended before the cut, one after
        for moment in (T0, T0 + timedelta(days=1)):
            session.execute(text(
                "INSERT INTO chart_cells (stock_id, source, width_ms, cell, first_at, n, low, high, last, id_sum) "
                "SELECT id, 'read', :w, :c, :t, 1, 1, 1, 1, 1 FROM marketplace_stock LIMIT 1"),
                {"w": hour, "c": int(moment.timestamp() * 1000) // hour, "t": moment})
        session.commit()
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("LISTING_READS_RETENTION_DAYS", "2")
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    try:
        assert scheduled_prune(now=T0 + timedelta(days=2, hours=1), batch=1) == 1  # only day 0 is past 2 days
    finally:
        get_settings.cache_clear()
        resources.database_url.cache_clear()
    assert [q for _, q, _, _ in reads(sessions)] == [2, 3]
    with sessions() as session:  # the column of day 0 went with its reads
        assert session.execute(text("SELECT first_at FROM chart_cells")).scalars().all() == [T0 + timedelta(days=1)]
    assert JOBS_BY_NAME["listing_reads_prune"].actor == "prune_listing_reads"
