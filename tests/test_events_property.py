"""Property test (hypothesis): the SQL booking does what the pure model of the rules does, step by step,
and any interleaving ends at the true count with the ledger invariant intact.

The world (tests/booking_model.py) plays the marketplace and keeps the truth (initial − orders +
cancellations + top-ups and adjustments): orders lower the marketplace's count at once, a
cancellation gives the units back there or not (both worlds are drawn, and the rules are told
which), deliveries are late, repeated and in any order (cancellations before their order too),
pages are applied late and out of order, and pushes are in flight across other steps (their
answer may be lost).  Each step runs on PostgreSQL (db/events.py, db/snapshot.py) and on the model
(core/booking.py alone); after each, every row must be the same in both.  At the quiet end, every
row equals the true count — never above, never below — and the marketplace shows it.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from db.engine import session_factory
from core.events import StockEvent
from db.events import (PushClaim, claim_push, find_stock_id, finish_push, read_for_push,
                       record_stock_events)
from db.ledger import check_invariant
from db.snapshot import PageItem, apply_page, ensure_marketplace
from db.syncs import SyncPolicy, begin_run
from tests.booking_model import OPERATIONS, BookingModel, Event, ModelBackend, World

SKEW = timedelta(seconds=2)
POLICY = SyncPolicy(cooldown_scheduled_s=0, cooldown_manual_s=0, stale_after_s=900)
LEASE = timedelta(minutes=10)
#: Examples per run: bounded for the suite; ``STOCKSYNC_PROPERTY_EXAMPLES=5000`` for a soak.
EXAMPLES = int(os.environ.get("STOCKSYNC_PROPERTY_EXAMPLES", "100"))


class SqlBackend:
    """The world's backend on PostgreSQL: the production booking, page, push functions."""

    def __init__(self, sessions, restocks: bool) -> None:
        self.sessions = sessions
        self.not_restocking = () if restocks else ("backmarket",)
        self.restocks = restocks
        self.sync_id: int | None = None
        self.page = 0
        self.claims: dict[str, PushClaim] = {}

    def book(self, event: Event, now: datetime) -> str:
        common = dict(marketplace="backmarket", sku=event.sku, event_time=event.moment, now=now)
        if event.kind in ("order_created", "order_cancelled"):
            stock_event = StockEvent.of(event.kind, quantity=event.quantity, order_id=f"O{event.line}",
                                        order_line_id=event.line, source="webhook", **common)
        elif event.kind == "topup":
            stock_event = StockEvent.of("stock_topup", quantity=event.quantity, reference=event.key, actor="anna",
                                        **common)
        else:
            stock_event = StockEvent.of("manual_adjustment", change=event.quantity, reference=event.key, actor="anna",
                                        **common)
        with self.sessions() as session:
            result = record_stock_events(session, [stock_event], now=now, skew=SKEW,
                                         not_restocking=self.not_restocking)[0]
            session.commit()
        return result.outcome

    def snapshot(self, quantities: dict[str, int], fetched_at: datetime, now: datetime) -> None:
        # Every page is a page of one run that never closes (a closed run flags unseen listings missing).
        with self.sessions() as session:
            marketplace_id = ensure_marketplace(session, "backmarket")
            session.commit()
            if self.sync_id is None:
                self.sync_id = begin_run(session, kind="stock", target="backmarket", trigger="manual",
                                         policy=POLICY, force=True).id
            self.page += 1
            apply_page(session, marketplace_id=marketplace_id, sync_id=self.sync_id, page=self.page,
                       fetched_at=fetched_at, skew=SKEW, now=now, restocks_on_cancel=self.restocks,
                       items=[PageItem(f"uuid-{sku}", None, sku, None, q, 2, None, None)
                              for sku, q in quantities.items()])
            session.commit()

    def claim(self, sku: str, owner: str, now: datetime) -> bool:
        with self.sessions() as session:
            claim = claim_push(session, find_stock_id(session, "backmarket", sku), owner, lease=LEASE, now=now)
            session.commit()
        if claim is None or not claim.needed:
            return False
        self.claims[sku] = claim
        return True

    def read_for_push(self, sku: str, owner: str, fetched_at: datetime, quantity: int, now: datetime):
        with self.sessions() as session:
            plan = read_for_push(session, self.claims[sku], fetched_at=fetched_at, quantity=quantity, skew=SKEW,
                                 now=now, restocks_on_cancel=self.restocks)
            session.commit()
        return None if plan is None else (plan.quantity, plan.post)

    def confirm(self, sku: str, owner: str, now: datetime) -> None:
        with self.sessions() as session:
            finish_push(session, self.claims.pop(sku), now=now)
            session.commit()

    def holds(self, sku: str, owner: str) -> bool:
        with self.sessions() as session:
            return session.execute(text(
                "SELECT s.push_lease_owner = :o FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
                "WHERE v.sku = :sku"), {"o": owner, "sku": sku}).scalar() is True

    def rows(self) -> dict[str, tuple]:
        with self.sessions() as session:
            return {row.sku: (row.listed, row.pending, row.needs_recheck, row.unpushed) for row in session.execute(text(
                "SELECT v.sku, s.listed, s.push_state IN ('pending', 'failed') AS pending, s.needs_recheck, "
                "s.unpushed FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id"))}

    def state(self) -> dict[str, tuple[int, bool, bool]]:
        return {sku: (listed, bool(pending), flagged) for sku, (listed, pending, flagged, _) in self.rows().items()}


class SideBySide:
    """Runs each step on PostgreSQL and on the model; the rows must agree after every step."""

    def __init__(self, sql: SqlBackend, model: ModelBackend) -> None:
        self.sql, self.model = sql, model

    def _same(self, what: str) -> None:
        model = {sku: (row.listed, row.pending, row.needs_recheck, row.unpushed)
                 for sku, row in self.model.model.rows.items()}
        sql = {sku: (listed, bool(pending), flagged, unpushed)
               for sku, (listed, pending, flagged, unpushed) in self.sql.rows().items()}
        assert sql == model, f"after {what}: SQL {sql} but the rules say {model}"

    def book(self, event, now):
        outcome = self.sql.book(event, now)
        assert outcome == self.model.book(event, now), event
        self._same(f"booking {event}")
        return outcome

    def snapshot(self, quantities, fetched_at, now):
        self.sql.snapshot(quantities, fetched_at, now)
        self.model.snapshot(quantities, fetched_at, now)
        self._same(f"a read at {fetched_at} of {quantities}")

    def claim(self, sku, owner, now):
        claimed = self.sql.claim(sku, owner, now)
        assert claimed == self.model.claim(sku, owner, now)
        return claimed

    def read_for_push(self, sku, owner, fetched_at, quantity, now):
        plan = self.sql.read_for_push(sku, owner, fetched_at, quantity, now)
        assert plan == self.model.read_for_push(sku, owner, fetched_at, quantity, now)
        self._same(f"the push read of {sku}")
        return plan

    def confirm(self, sku, owner, now):
        self.sql.confirm(sku, owner, now)
        self.model.confirm(sku, owner, now)
        self._same(f"the push confirmation of {sku}")

    def holds(self, sku, owner):
        assert self.sql.holds(sku, owner) == self.model.holds(sku, owner)
        return self.model.holds(sku, owner)

    def state(self):
        return self.model.state()


@pytest.fixture(scope="module")
def sessions(pg_server):
    url = pg_server.create_database("events_property", template="stocksync_template")
    yield session_factory(url)
    from db.engine import get_engine

    get_engine.cache_clear()


def _reset(sessions) -> None:
    with sessions() as session:
        session.execute(text("TRUNCATE stock_ledger, sync_pages, reconciliation_reports, sync_runs, listings, "
                             "marketplace_stock, variations, marketplaces RESTART IDENTITY CASCADE"))
        # The account the events book on: a Back Market one, whose local changes wait for a push.
        session.execute(text("INSERT INTO marketplaces (code, name, platform) VALUES ('backmarket', 'Back Market', "
                             "'backmarket')"))
        session.commit()


@settings(max_examples=EXAMPLES, deadline=None, phases=[p for p in Phase if p != Phase.shrink or not os.environ.get("NO_SHRINK")], suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data(), restocks=st.booleans(), initial=st.lists(st.integers(0, 6), min_size=3, max_size=3),
       operations=st.lists(st.sampled_from(OPERATIONS), min_size=5, max_size=45))
def test_sql_books_as_the_rules_say_and_any_interleaving_ends_at_the_true_count(sessions, data, restocks, initial,
                                                                                operations):
    _reset(sessions)
    from db import events as db_events

    db_events._marketplace_ids.clear()  # the marketplace ids restart with the TRUNCATE
    backend = SideBySide(SqlBackend(sessions, restocks),
                         ModelBackend(BookingModel(skew=SKEW, restocks_on_cancel=restocks)))
    world = World(backend, ["A", "B", "C"], initial, restocks_on_cancel=restocks, skew=SKEW)

    def draw(label, options):
        return data.draw(st.sampled_from(list(options)), label=label)

    world.start()
    for operation in operations:
        world.clock += 0.1
        world.step(draw, operation)
    world.settle(draw)
    world.check()
    with sessions() as session:
        assert check_invariant(session) == [], "\n".join(world.log)
        assert session.execute(text(
            "SELECT count(*) FROM variations v WHERE total_stock <> "
            "(SELECT COALESCE(sum(listed), 0) FROM marketplace_stock s WHERE s.variation_id = v.id)")).scalar() == 0
