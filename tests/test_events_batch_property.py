"""A batch booked in one go (``record_stock_events``) does exactly what booking its events one by one does.

Hypothesis draws a burst of orders, cancellations (some before their order), re-deliveries,
top-ups and adjustments (some for SKUs never seen, some with a key reused for another SKU), with
event times around a page fetch so that the snapshot rules absorb, flag or keep them.  Each burst
is booked twice on real PostgreSQL, side by side under two SKU prefixes: once event by event
(``record_stock_event``, the path the single-event actors take), once as one batch.  Results,
ledger rows, stock rows and variation totals must be the same, and the ledger invariant hold.
"""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from db.engine import session_factory
from core.events import StockEvent
from db.events import record_stock_event, record_stock_events
from db.ledger import check_invariant
from db.snapshot import PageItem, apply_page, ensure_marketplace
from db.syncs import SyncPolicy, begin_run

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
FETCHED = T0 + timedelta(seconds=60)
NOW = T0 + timedelta(seconds=120)
SKEW = timedelta(seconds=2)
SKUS = ("S0", "S1", "S2")
_bursts = itertools.count()

event_specs = st.lists(st.tuples(
    st.sampled_from(["order_created", "order_cancelled", "topup", "manual"]),
    st.sampled_from(SKUS + ("NEW",)),       # NEW: a SKU no page has listed
    st.integers(0, 5),                      # which order line / reference: repeats are re-deliveries
    st.integers(1, 4),                      # quantity (or adjustment size)
    st.sampled_from([-30, -3, -1, 0, 1, 3, 30]),  # seconds from the page's fetch: before, close, after
    st.booleans(),                          # an adjustment's sign
), min_size=1, max_size=25)


def build(prefix: str, spec) -> StockEvent:
    kind, sku, number, quantity, offset, negative = spec
    when = FETCHED + timedelta(seconds=offset)
    common = {"marketplace": "backmarket", "sku": f"{prefix}-{sku}", "event_time": when}
    if kind in ("order_created", "order_cancelled"):
        return StockEvent.of(kind, quantity=quantity, order_id=f"{prefix}-o{number}",
                             order_line_id=f"{prefix}-l{number}", source="webhook", **common)
    if kind == "topup":
        return StockEvent.of("stock_topup", quantity=quantity, reference=f"{prefix}-r{number}", **common)
    return StockEvent.of("manual_adjustment", change=-quantity if negative else quantity,
                         reference=f"{prefix}-m{number}", **common)


def page(sessions, prefixes: list[str]) -> None:
    with sessions() as session:
        marketplace_id = ensure_marketplace(session, "backmarket")
        session.commit()
        sync_id = begin_run(session, kind="stock", target="backmarket", trigger="manual",
                            policy=SyncPolicy(0, 0, 900), force=True).id
        items = [PageItem(f"uuid-{prefix}-{sku}", None, f"{prefix}-{sku}", None, 10, 2, None, None)
                 for prefix in prefixes for sku in SKUS]
        apply_page(session, marketplace_id=marketplace_id, sync_id=sync_id, page=1, fetched_at=FETCHED, items=items,
                   total_pages=1, skew=SKEW)
        session.commit()


def snapshot(sessions, prefix: str) -> dict:
    """Everything booked under ``prefix``, with the prefix taken out so the two sides compare."""
    def strip(value):
        return value.replace(prefix, "P") if isinstance(value, str) else value

    with sessions() as session:
        ledger = session.execute(text(
            "SELECT v.sku, l.quantity_before, l.quantity_after, l.change, l.change_type, l.idempotency_key, l.note "
            "FROM stock_ledger l JOIN variations v ON v.id = l.variation_id "
            "WHERE v.sku LIKE :p AND l.change_type <> 'sync' ORDER BY l.id"), {"p": f"{prefix}-%"}).all()
        stock = session.execute(text(
            "SELECT v.sku, s.listed, s.push_state, s.push_seq, s.needs_recheck, s.oversold_since IS NULL, "
            "v.total_stock FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "WHERE v.sku LIKE :p ORDER BY v.sku"), {"p": f"{prefix}-%"}).all()
    return {"ledger": [tuple(map(strip, row)) for row in ledger], "stock": [tuple(map(strip, row)) for row in stock]}


def outcome(result) -> tuple:
    return (result.status, result.before, result.after, result.change, result.oversold, result.absorbed,
            result.needs_recheck, result.push_requested, result.created)


@pytest.fixture(scope="module")
def sessions(pg_server):
    return session_factory(pg_server.create_database("events_batch_property", template="stocksync_template"))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(specs=event_specs)
def test_a_batch_books_exactly_what_its_events_book_one_by_one(sessions, specs):
    burst = next(_bursts)
    one_by_one, batched = f"A{burst}", f"B{burst}"
    page(sessions, [one_by_one, batched])
    singles = [build(one_by_one, spec) for spec in specs]
    batch = [build(batched, spec) for spec in specs]

    # One by one, in the order a batch books them: by SKU, the given order within a SKU.
    order = sorted(range(len(singles)), key=lambda index: singles[index].sku)
    single_results = [None] * len(singles)
    with sessions() as session:
        for index in order:
            single_results[index] = record_stock_event(session, singles[index], now=NOW, skew=SKEW)
        session.commit()
    with sessions() as session:
        batch_results = record_stock_events(session, batch, now=NOW, skew=SKEW)
        session.commit()

    assert [outcome(r) for r in batch_results] == [outcome(r) for r in single_results]
    assert snapshot(sessions, batched) == snapshot(sessions, one_by_one)
    with sessions() as session:
        assert check_invariant(session) == []
