"""Set-based page apply on a real PostgreSQL: idempotency, deltas, flags, totals, the invariant."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from db.engine import session_factory
from db.ledger import check_invariant
from db.snapshot import PageItem, apply_page, ensure_marketplace
from db.syncs import SyncPolicy, begin_run

POLICY = SyncPolicy(cooldown_scheduled_s=0, cooldown_manual_s=0, stale_after_s=900)


def items(quantities: dict[int, int]) -> list[PageItem]:
    return [PageItem(f"uuid-{i}", i, f"SKU-{i}", f"item {i}", q, 2, "10.00", "EUR") for i, q in quantities.items()]


@pytest.fixture
def sessions(database_url):
    return session_factory(database_url)


def new_run(sessions) -> tuple[int, int]:
    with sessions() as session:
        marketplace_id = ensure_marketplace(session, "backmarket")
        session.commit()
        return marketplace_id, begin_run(session, kind="stock", target="backmarket", trigger="manual",
                                         policy=POLICY, force=True).id


def stock(sessions) -> dict[str, int]:
    with sessions() as session:
        return dict(session.execute(text(
            "SELECT v.sku, s.listed FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id")).all())


def test_first_page_creates_rows_and_ledger_and_totals(sessions):
    marketplace_id, sync_id = new_run(sessions)
    now = datetime.now(timezone.utc)
    with sessions() as session:
        result = apply_page(session, marketplace_id=marketplace_id, sync_id=sync_id, page=1, fetched_at=now,
                            items=items({1: 5, 2: 0, 3: 7}), total_pages=1)
        session.commit()
    assert (result.applied, result.items, result.changed, result.unchanged) == (True, 3, 2, 1)
    assert result.finished and result.status == "succeeded"
    assert stock(sessions) == {"SKU-1": 5, "SKU-2": 0, "SKU-3": 7}
    with sessions() as session:
        ledger = session.execute(text("SELECT change_type, quantity_before, quantity_after, change FROM stock_ledger "
                                      "ORDER BY id")).all()
        assert sorted(tuple(r) for r in ledger) == [("sync", 0, 5, 5), ("sync", 0, 7, 7)]
        totals = dict(session.execute(text("SELECT sku, total_stock FROM variations")).all())
        assert totals == {"SKU-1": 5, "SKU-2": 0, "SKU-3": 7}
        assert check_invariant(session) == []


def test_redelivered_page_changes_nothing(sessions):
    marketplace_id, sync_id = new_run(sessions)
    now = datetime.now(timezone.utc)
    for attempt in range(2):
        with sessions() as session:
            result = apply_page(session, marketplace_id=marketplace_id, sync_id=sync_id, page=1, fetched_at=now,
                                items=items({1: 5 + attempt}), total_pages=2)
            session.commit()
        assert result.applied is (attempt == 0)
    assert stock(sessions) == {"SKU-1": 5}
    with sessions() as session:
        assert session.execute(text("SELECT count(*) FROM stock_ledger")).scalar() == 1
        assert session.execute(text("SELECT pages_done, items FROM sync_runs")).one() == (1, 1)


def test_unchanged_quantity_writes_no_ledger_row(sessions):
    for _ in range(2):
        marketplace_id, sync_id = new_run(sessions)
        with sessions() as session:
            apply_page(session, marketplace_id=marketplace_id, sync_id=sync_id, page=1,
                       fetched_at=datetime.now(timezone.utc), items=items({1: 4, 2: 9}), total_pages=1)
            session.commit()
    with sessions() as session:
        assert session.execute(text("SELECT count(*) FROM stock_ledger")).scalar() == 2
        assert session.execute(text("SELECT changed, unchanged FROM sync_runs ORDER BY id")).all() == [(2, 0), (0, 2)]


def test_local_event_after_fetch_time_stays_on_top(sessions):
    marketplace_id, sync_id = new_run(sessions)
    t0 = datetime.now(timezone.utc)
    with sessions() as session:
        apply_page(session, marketplace_id=marketplace_id, sync_id=sync_id, page=1, fetched_at=t0,
                   items=items({1: 10}), total_pages=1)
        session.commit()
        # An order lands after the next page was fetched (the marketplace's page still says 10).
        stock_id = session.execute(text("SELECT id FROM marketplace_stock")).scalar()
        session.execute(text("UPDATE marketplace_stock SET listed = listed - 2 WHERE id = :id"), {"id": stock_id})
        session.execute(text(
            "INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, quantity_after, "
            "change, change_type, idempotency_key, event_time) SELECT id, variation_id, marketplace_id, 10, 8, -2, "
            "'order_created', 'order:1', :t FROM marketplace_stock WHERE id = :id"),
            {"id": stock_id, "t": t0 + timedelta(seconds=20)})
        session.commit()
    _, sync_2 = new_run(sessions)
    with sessions() as session:
        result = apply_page(session, marketplace_id=marketplace_id, sync_id=sync_2, page=1,
                            fetched_at=t0 + timedelta(seconds=10), items=items({1: 10}), total_pages=1)
        session.commit()
        assert result.changed == 0
        assert stock(sessions) == {"SKU-1": 8}
        assert check_invariant(session) == []


def test_last_page_flags_listings_not_seen(sessions):
    marketplace_id, sync_1 = new_run(sessions)
    with sessions() as session:
        apply_page(session, marketplace_id=marketplace_id, sync_id=sync_1, page=1,
                   fetched_at=datetime.now(timezone.utc), items=items({1: 1, 2: 2, 3: 3}), total_pages=1)
        session.commit()
    marketplace_id, sync_2 = new_run(sessions)
    with sessions() as session:
        apply_page(session, marketplace_id=marketplace_id, sync_id=sync_2, page=1,
                   fetched_at=datetime.now(timezone.utc), items=items({1: 1, 3: 3}), total_pages=1)
        session.commit()
        flagged = session.execute(text("SELECT sku FROM listings WHERE missing_since IS NOT NULL")).scalars().all()
        assert flagged == ["SKU-2"]
        assert session.execute(text("SELECT missing FROM sync_runs WHERE id = :s"), {"s": sync_2}).scalar() == 1


def test_pages_applied_concurrently_finish_exactly_once(sessions):
    marketplace_id, sync_id = new_run(sessions)
    pages = {page: items({page * 100 + i: (page + i) % 9 for i in range(50)}) for page in range(1, 21)}
    now = datetime.now(timezone.utc)

    def apply(page: int):
        with sessions() as session:
            result = apply_page(session, marketplace_id=marketplace_id, sync_id=sync_id, page=page, fetched_at=now,
                                items=pages[page], total_pages=20 if page == 1 else None)
            session.commit()
            return result

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(apply, pages))
    assert sum(r.finished for r in results) == 1
    expected = {item.sku: item.quantity for page in pages.values() for item in page}
    assert stock(sessions) == expected
    with sessions() as session:
        assert session.execute(text("SELECT status, pages_done, items FROM sync_runs")).one() == ("succeeded", 20, 1000)
        assert check_invariant(session) == []


def test_failed_run_is_not_closed_as_succeeded(sessions):
    from db.syncs import fail_run

    marketplace_id, sync_id = new_run(sessions)
    with sessions() as session:
        assert fail_run(session, sync_id, "page 2 failed for good: boom")
        result = apply_page(session, marketplace_id=marketplace_id, sync_id=sync_id, page=1,
                            fetched_at=datetime.now(timezone.utc), items=items({1: 1}), total_pages=1)
        session.commit()
        assert result.status == "failed"
        assert session.execute(text("SELECT status, error FROM sync_runs")).one() == (
            "failed", "page 2 failed for good: boom")
