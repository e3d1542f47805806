"""Property test (hypothesis): any interleaving of orders, cancellations, re-deliveries, top-ups,
manual changes, page fetches, pushes and re-checks ends with the stock equal to the sandbox's truth
and the ledger invariant intact.

The sandbox Back Market plays the marketplace through its Python API: an order lowers its stock at
once (as Back Market does); a cancellation restores it or not (both worlds are drawn: we push
after a cancellation either way).  Deliveries reach us late and in any order, pages are applied
late and out of order, a push is three steps (read + lease, the marketplace applying it, our
confirmation) with anything in between.  Time is a logical clock passed to every db call.

Checked at the end, once everything is delivered, pushed and re-checked:
- the sandbox equals our stock (a stock below zero is pushed as 0);
- our stock never exceeds the real one (units received minus units sold): no race makes a unit
  appear twice; a unit may be lost only where the clocks could not tell (it is re-checked);
- every re-delivery was a duplicate that changed nothing; the ledger invariant holds and the
  variation totals equal their stock rows.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from db.engine import session_factory
from core.events import StockEvent
from db.events import claim_push, find_stock_id, finish_push, record_stock_event
from db.ledger import check_invariant
from db.snapshot import PageItem, apply_page, apply_recheck, ensure_marketplace
from db.syncs import SyncPolicy, begin_run
from sandbox.backmarket import BackMarketSandbox

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
SKEW = timedelta(seconds=2)
POLICY = SyncPolicy(cooldown_scheduled_s=0, cooldown_manual_s=0, stale_after_s=900)
LISTINGS = 3
#: Examples per run: bounded for the suite; ``STOCKSYNC_PROPERTY_EXAMPLES=5000`` for a soak.
EXAMPLES = int(os.environ.get("STOCKSYNC_PROPERTY_EXAMPLES", "100"))
LEASE = timedelta(minutes=10)
#: Steps to interleave; repeats weigh them (an order landing while a push is in flight is the rare race).
OPERATIONS = ("tick", "order", "order", "cancel", "deliver", "deliver", "redeliver", "topup", "manual", "fetch",
              "apply", "push_read", "push_read", "push_land", "push_confirm", "recheck")


@dataclass
class World:
    """The marketplace (sandbox), what is on its way to us, and the truth to compare with."""

    sessions: object
    sandbox: BackMarketSandbox
    restores_on_cancel: bool
    skus: list[str]
    uuid_of: dict[str, str]
    real: dict[str, int]
    clock: float = 0.0
    placed: list[StockEvent] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)
    undelivered: list[StockEvent] = field(default_factory=list)
    delivered: list[StockEvent] = field(default_factory=list)
    pages: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    # sku -> [claim, landed?]: a push read our stock and holds the lease; landed once the sandbox applied it.
    pushes: dict[str, list] = field(default_factory=dict)
    references: int = 0
    sync_id: int | None = None
    page: int = 0
    log: list[str] = field(default_factory=list)

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.clock)

    def book(self, event: StockEvent):
        with self.sessions() as session:
            result = record_stock_event(session, event, now=self.now(), skew=SKEW)
            session.commit()
        self.log.append(f"{self.clock:5.1f} book {event.change_type} {event.sku} {event.quantity} "
                        f"E={(event.event_time - T0).total_seconds():.1f} -> {result.status} change={result.change} "
                        f"push={result.push_requested} recheck={result.needs_recheck}")
        return result

    def apply(self, fetched: float, quantities: dict[str, int]) -> None:
        # Every page is a page of one sync run that never closes: a closed run would flag the
        # listings its pages did not show as missing, and a missing listing is not pushed.
        with self.sessions() as session:
            marketplace_id = ensure_marketplace(session, "backmarket")
            session.commit()
            if self.sync_id is None:
                self.sync_id = begin_run(session, kind="stock", target="backmarket", trigger="manual",
                                         policy=POLICY, force=True).id
            self.page += 1
            result = apply_page(session, marketplace_id=marketplace_id, sync_id=self.sync_id, page=self.page,
                                fetched_at=T0 + timedelta(seconds=fetched), skew=SKEW,
                                items=[PageItem(self.uuid_of[sku], None, sku, None, q, 2, None, None)
                                       for sku, q in quantities.items()])
            session.commit()
        self.log.append(f"{self.clock:5.1f} apply page T={fetched:.1f} {quantities} -> changed={result.changed} "
                        f"deferred={result.deferred}")

    def local(self) -> dict[str, tuple[int, str | None, bool]]:
        with self.sessions() as session:
            return {sku: (listed, state, recheck) for sku, listed, state, recheck in session.execute(text(
                "SELECT v.sku, s.listed, s.push_state, s.needs_recheck FROM marketplace_stock s "
                "JOIN variations v ON v.id = s.variation_id"))}

    # -- the steps ---------------------------------------------------------------------------------

    def push_read(self, sku: str) -> None:
        if sku in self.pushes:
            return
        with self.sessions() as session:
            claim = claim_push(session, find_stock_id(session, "backmarket", sku), f"push-{self.clock}", lease=LEASE,
                               now=self.now())
            session.commit()
        if claim is not None and claim.needed:
            self.pushes[sku] = [claim, False]
            self.log.append(f"{self.clock:5.1f} push read {sku} = {claim.quantity}")

    def push_land(self, sku: str) -> None:
        push = self.pushes.get(sku)
        if push and not push[1]:
            self.sandbox.set_quantity(self.uuid_of[sku], push[0].quantity)
            push[1] = True
            self.log.append(f"{self.clock:5.1f} push landed {sku} = {push[0].quantity}")

    def push_confirm(self, sku: str) -> None:
        push = self.pushes.get(sku)
        if push and push[1]:
            with self.sessions() as session:
                finish_push(session, push[0], now=self.now())
                session.commit()
            del self.pushes[sku]
            self.log.append(f"{self.clock:5.1f} push confirmed {sku}")

    def recheck(self, sku: str) -> None:
        with self.sessions() as session:
            apply_recheck(session, marketplace_id=ensure_marketplace(session, "backmarket"), fetched_at=self.now(),
                          quantities={sku: self.sandbox.quantity(self.uuid_of[sku])}, skew=SKEW)
            session.commit()
        self.log.append(f"{self.clock:5.1f} recheck {sku} = {self.sandbox.quantity(self.uuid_of[sku])}")

    def step(self, data, operation: str) -> None:
        draw = data.draw
        sku = draw(st.sampled_from(self.skus))
        if operation == "tick":
            self.clock += draw(st.sampled_from((0.5, 1.0, 2.0, 3.0, 7.0)))
        elif operation == "order":
            quantity = draw(st.integers(1, 3))
            available = self.sandbox.quantity(self.uuid_of[sku])
            if available >= quantity:  # the marketplace sells only what it lists, and lowers its stock itself
                self.sandbox.set_quantity(self.uuid_of[sku], available - quantity)
                self.real[sku] -= quantity
                line = f"L{len(self.placed)}"
                event = StockEvent.of("order_created", marketplace="backmarket", sku=sku, quantity=quantity,
                                      event_time=self.now(), order_id=f"O{line}", order_line_id=line, source="webhook")
                self.placed.append(event)
                self.undelivered.append(event)
                self.log.append(f"{self.clock:5.1f} marketplace order {line} {sku} -{quantity}")
        elif operation == "cancel":
            open_orders = [e for e in self.placed if e.order_line_id not in self.cancelled]
            if open_orders:
                placed = draw(st.sampled_from(open_orders))
                self.cancelled.add(placed.order_line_id)
                self.real[placed.sku] += placed.quantity
                if self.restores_on_cancel:
                    current = self.sandbox.quantity(self.uuid_of[placed.sku])
                    self.sandbox.set_quantity(self.uuid_of[placed.sku], current + placed.quantity)
                event = StockEvent.of("order_cancelled", marketplace="backmarket", sku=placed.sku,
                                      quantity=placed.quantity, event_time=self.now(), order_id=placed.order_id,
                                      order_line_id=placed.order_line_id, source="webhook")
                self.undelivered.append(event)
                self.log.append(f"{self.clock:5.1f} marketplace cancel {placed.order_line_id}")
        elif operation == "deliver" and self.undelivered:
            event = self.undelivered.pop(draw(st.integers(0, len(self.undelivered) - 1)))
            assert self.book(event).status == "applied"
            self.delivered.append(event)
        elif operation == "redeliver" and self.delivered:
            event = draw(st.sampled_from(self.delivered))
            before = self.local()[event.sku][0]
            result = self.book(event)
            assert result.status == "duplicate" and self.local()[event.sku][0] == before == result.after
        elif operation in ("topup", "manual"):
            change = draw(st.integers(1, 5)) if operation == "topup" else draw(st.sampled_from((-2, -1, 1, 2, 3)))
            if self.real[sku] + change >= 0:
                self.real[sku] += change
                self.references += 1
                kind, amount = ("stock_topup", "quantity") if operation == "topup" else ("manual_adjustment", "change")
                self.book(StockEvent.of(kind, marketplace="backmarket", sku=sku, event_time=self.now(),
                                        reference=f"R{self.references}", actor="anna", **{amount: change}))
        elif operation == "fetch":
            chosen = draw(st.lists(st.sampled_from(self.skus), min_size=1, unique=True))
            truth = self.sandbox.quantities()
            self.pages.append((self.clock, {s: truth[self.uuid_of[s]] for s in chosen}))
            self.log.append(f"{self.clock:5.1f} fetch page {self.pages[-1][1]}")
        elif operation == "apply" and self.pages:
            self.apply(*self.pages.pop(draw(st.integers(0, len(self.pages) - 1))))
        elif operation == "push_read":
            self.push_read(sku)
        elif operation == "push_land":
            self.push_land(sku)
        elif operation == "push_confirm":
            self.push_confirm(sku)
        elif operation == "recheck" and self.local()[sku][2]:
            self.recheck(sku)

    def settle(self, data) -> None:
        """Deliver everything, apply the pages left, finish every push and re-check: the quiet end."""
        self.clock += 10
        while self.undelivered:
            event = self.undelivered.pop(data.draw(st.integers(0, len(self.undelivered) - 1)))
            assert self.book(event).status == "applied"
            self.clock += 1
        while self.pages:
            self.apply(*self.pages.pop(data.draw(st.integers(0, len(self.pages) - 1))))
        for _ in range(10):
            for sku in list(self.pushes):
                self.push_land(sku)
                self.clock += 1
                self.push_confirm(sku)
            local = self.local()
            pending = [sku for sku, (_, state, _) in local.items() if state == "pending"]
            for sku in pending:
                self.push_read(sku)
                self.push_land(sku)
                self.clock += 1
                self.push_confirm(sku)
            flagged = [sku for sku, (_, _, recheck) in self.local().items() if recheck]
            if not pending and not flagged:
                return
            self.clock += 10
            for sku in flagged:
                self.recheck(sku)
        raise AssertionError("the world did not settle in 10 rounds")


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
        session.commit()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=st.data(), restores_on_cancel=st.booleans(),
       initial=st.lists(st.integers(0, 6), min_size=LISTINGS, max_size=LISTINGS),
       operations=st.lists(st.sampled_from(OPERATIONS), min_size=5, max_size=45))
def test_any_interleaving_ends_equal_to_the_sandbox_with_the_ledger_whole(sessions, data, restores_on_cancel,
                                                                          initial, operations):
    _reset(sessions)
    sandbox = BackMarketSandbox(listings=LISTINGS, seed=3, quota_requests=0)
    listings = [sandbox.listing(i) for i in range(LISTINGS)]
    for listing, quantity in zip(listings, initial):
        sandbox.set_quantity(listing["id"], quantity)
    world = World(sessions, sandbox, restores_on_cancel, skus=[l["sku"] for l in listings],
                  uuid_of={l["sku"]: l["id"] for l in listings},
                  real={l["sku"]: q for l, q in zip(listings, initial)})
    world.apply(0.0, {l["sku"]: q for l, q in zip(listings, initial)})  # the first sync
    for operation in operations:
        world.clock += 0.1
        world.step(data, operation)
    world.settle(data)

    local = world.local()
    truth = {sku: sandbox.quantity(world.uuid_of[sku]) for sku in world.skus}
    trace = "\n".join(world.log)
    for sku in world.skus:
        listed, state, recheck = local[sku]
        assert truth[sku] == max(listed, 0), f"{sku}: sandbox {truth[sku]}, local {listed}\n{trace}"
        assert listed <= world.real[sku], f"{sku}: local {listed} above the real {world.real[sku]}\n{trace}"
        assert state in (None, "pushed") and not recheck
    with sessions() as session:
        assert check_invariant(session) == [], trace
        assert session.execute(text(
            "SELECT count(*) FROM variations v WHERE total_stock <> "
            "(SELECT COALESCE(sum(listed), 0) FROM marketplace_stock s WHERE s.variation_id = v.id)")).scalar() == 0
