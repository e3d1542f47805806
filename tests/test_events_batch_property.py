"""A batch booked in one go (``record_stock_events``) does what the rules say for its events one by one.

Hypothesis draws a burst of orders, cancellations (some before their order, some saying what the
marketplace restocked of them: all, none or part, whatever the account's default), re-deliveries,
top-ups and adjustments (some for SKUs never seen, some with a key reused for another SKU), with
event times around a page fetch so that the rules absorb, flag or keep them, for a marketplace
that restocks on cancellation and one that does not.  The burst is booked as one batch on
PostgreSQL and, event by event, on the pure model of the rules (tests/booking_model.py): each
event's outcome and change, and every stock row, must be the same; the ledger invariant holds.
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
from db.events import record_stock_events
from db.ledger import check_invariant
from db.snapshot import PageItem, apply_page, ensure_marketplace
from db.syncs import SyncPolicy, begin_run
from tests.booking_model import BookingModel

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
    st.sampled_from([None, None, True, False, 1, 2]),  # a cancellation's word on its restock (None: the default)
), min_size=1, max_size=25)


def build(prefix: str, spec) -> StockEvent:
    kind, sku, number, quantity, offset, negative, restocked = spec
    when = FETCHED + timedelta(seconds=offset)
    common = {"marketplace": "backmarket", "sku": f"{prefix}-{sku}", "event_time": when}
    if kind == "order_cancelled" and restocked is not None:
        common["restocked"] = restocked if isinstance(restocked, bool) else min(restocked, quantity)
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


def rows(sessions, prefix: str) -> dict:
    with sessions() as session:
        return {row.sku[len(prefix) + 1:]: (row.listed, row.unpushed, row.pending, row.needs_recheck)
                for row in session.execute(text(
                    "SELECT v.sku, s.listed, s.unpushed, "
                    "COALESCE(s.push_state IN ('pending', 'failed'), false) AS pending, "
                    "s.needs_recheck, v.total_stock FROM marketplace_stock s JOIN variations v "
                    "ON v.id = s.variation_id WHERE v.sku LIKE :p"), {"p": f"{prefix}-%"})}


@pytest.fixture(scope="module")
def sessions(pg_server):
    return session_factory(pg_server.create_database("events_batch_property", template="stocksync_template"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(specs=event_specs, restocks=st.booleans())
def test_a_batch_books_what_the_rules_say_event_by_event(sessions, specs, restocks):
    prefix = f"B{next(_bursts)}"
    page(sessions, [prefix])
    batch = [build(prefix, spec) for spec in specs]
    with sessions() as session:
        results = record_stock_events(session, batch, now=NOW, skew=SKEW,
                                      not_restocking=() if restocks else ("backmarket",))
        session.commit()

    model = BookingModel(skew=SKEW, restocks_on_cancel=restocks)
    for sku in SKUS:
        model.snapshot(f"{prefix}-{sku}", FETCHED, 10, NOW)
    expected: list = [None] * len(batch)
    # In the order a batch books them: by SKU, the given order within a SKU.
    for index in sorted(range(len(batch)), key=lambda index: batch[index].sku):
        event = batch[index]
        other = None
        if event.change_type in ("order_created", "order_cancelled"):
            other = event.key.rsplit(":", 1)[0] + (":order_cancelled" if event.change_type == "order_created"
                                                    else ":order_created")
        decision = model.book(event.change_type, event.sku, event.quantity, event.event_time, event.key, other,
                              restocked=event.restocked)
        expected[index] = ("duplicate", 0) if decision is None else (decision.outcome, decision.total)

    assert [(r.outcome, r.change) for r in results] == expected
    assert rows(sessions, prefix) == {sku[len(prefix) + 1:]: (row.listed, row.unpushed, row.pending,
                                                              row.needs_recheck)
                                      for sku, row in model.rows.items()}
    with sessions() as session:
        assert check_invariant(session) == []
        assert session.execute(text(
            "SELECT count(*) FROM variations v WHERE total_stock <> "
            "(SELECT COALESCE(sum(listed), 0) FROM marketplace_stock s WHERE s.variation_id = v.id)")).scalar() == 0
