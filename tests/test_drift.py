"""Drift explained: a reconciliation names each difference's cause with its evidence.  Each scenario's cause
is made by the test itself on the Back Market sandbox (a hand edit, a push that did not land, an order the
ledger has not booked, a cancellation restocked on our side only); real PostgreSQL, the sandbox over HTTP.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

from click.testing import CliRunner
from prometheus_client import REGISTRY
from sqlalchemy import text

from core.drift import DriftCause, DriftFacts, explain
from core.events import StockEvent
from db.reconcile import discrepancy_report
from pipelines import events as pipeline
from pipelines.orders import IntakeState, _unconfirmed
from runtime import resources
from runtime.settings import get_settings
from tests.test_reconcile import book, local, reconcile, world  # noqa: F401


def drift_count(cause: str) -> float:
    return REGISTRY.get_sample_value("stocksync_drift_total", {"marketplace": "backmarket", "cause": cause}) or 0.0


def test_each_difference_gets_its_cause_and_evidence(world):
    sandbox = world["sandbox"]
    hand, pushed, sold, cancelled = world["listings"][:4]
    quantities = local(world)
    now = datetime.now(timezone.utc)

    # A hand edit: the count moves on the marketplace, no order, no push.
    sandbox.set_quantity(hand["id"], quantities[hand["id"]] + 3)

    # A lost push: a top-up pushed and confirmed, then the marketplace shows again what the push read.
    book(world, StockEvent.of("stock_topup", marketplace="backmarket", sku=pushed["sku"], quantity=2,
                              event_time=now - timedelta(minutes=20), reference="PO-1"))
    (outcome,) = pipeline.push_rows("backmarket", [pushed["sku"]], "push-1", lease=pipeline.push_lease())
    assert outcome.status == "pushed"
    assert sandbox.quantity(pushed["id"]) == quantities[pushed["id"]] + 2
    sandbox.set_quantity(pushed["id"], quantities[pushed["id"]])
    # The push was ten minutes ago: the rules do not trust a page read within the clock skew of a push.
    with world["sessions"]() as session:
        session.execute(text("UPDATE marketplace_stock s SET pushed_at = pushed_at - interval '10 minutes' "
                             "FROM variations v WHERE v.id = s.variation_id AND v.sku = :sku"), {"sku": pushed["sku"]})
        session.commit()

    # An order the marketplace took and the intake saw (its events sent), which the ledger has not booked.
    sandbox.set_quantity(sold["id"], quantities[sold["id"]] - 1)
    order = StockEvent.of("order_created", marketplace="backmarket", sku=sold["sku"], quantity=1, order_id="O-7",
                          order_line_id="OL-7", event_time=now - timedelta(minutes=3))
    memo = IntakeState(None, get_settings().redis_namespace, "backmarket").unconfirmed_key
    resources.sync_redis().hset(memo, "O-7:OL-7:order_created", _unconfirmed([order], time.time(), sends=1))

    # A cancellation restocked on our side only: the marketplace kept the unit out.
    sandbox.set_quantity(cancelled["id"], quantities[cancelled["id"]] - 1)
    for kind, minutes in (("order_created", 30), ("order_cancelled", 10)):
        book(world, StockEvent.of(kind, marketplace="backmarket", sku=cancelled["sku"], quantity=1, order_id="O-9",
                                  order_line_id="OL-9", event_time=now - timedelta(minutes=minutes)))

    before = {cause.value: drift_count(cause.value) for cause in DriftCause}
    summary = reconcile(dry_run=True, threshold=100)
    assert summary.discrepancies == 4
    assert summary.causes == {"stale_read": 0, "push_lost": 1, "unbooked_order": 1, "one_sided_restock": 1,
                              "hand_edit": 1}
    with world["sessions"]() as session:
        found = {row.listing: row for row in discrepancy_report(session, summary.run_id)}
    causes = {key: found[listing["id"]].cause for key, listing in
              {"hand": hand, "pushed": pushed, "sold": sold, "cancelled": cancelled}.items()}
    assert causes == {"hand": "hand_edit", "pushed": "push_lost", "sold": "unbooked_order",
                      "cancelled": "one_sided_restock"}
    assert found[hand["id"]].difference == 3 and found[hand["id"]].evidence["marketplace"] == quantities[hand["id"]] + 3
    lost = found[pushed["id"]].evidence
    assert (lost["push"]["state"], lost["push"]["quantity_read"], lost["push"]["quantity_sent"]) == (
        "confirmed", quantities[pushed["id"]], quantities[pushed["id"]] + 2)
    assert "still shows what the last push read" in lost["why"]
    assert found[sold["id"]].evidence["orders"] == [{"order_id": "O-7", "order_line_id": "OL-7", "quantity": 1}]
    restock = found[cancelled["id"]].evidence
    assert restock["cancellation"]["order_id"] == "O-9" and restock["restocked"] == "ours"
    assert restock["booked_by"].startswith("the account's restock_on_cancel")  # Back Market says nothing
    assert {cause: drift_count(cause) - before[cause] for cause in before} == summary.causes

    # Booked at last, the order is no longer unbooked evidence: the same difference is then the sync's to make.
    book(world, order)
    again = reconcile(dry_run=False, threshold=100)
    assert again.causes["unbooked_order"] == 0 and again.discrepancies == 3


def test_the_cli_prints_the_counts_per_cause_and_each_rows_cause(world):
    from workers.cli import main

    world["sandbox"].set_quantity(world["listings"][5]["id"], 0)
    result = CliRunner().invoke(main, ["reconcile", "backmarket", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "hand_edit" in result.output and "cause" in result.output


def test_the_rules_in_order():
    read = datetime(2026, 12, 7, 18, tzinfo=timezone.utc)
    push = {"id": 1, "state": "confirmed", "quantity_read": 4, "quantity_sent": 6, "error": None, "at": read}
    cancellation = {"id": 9, "order_id": "O", "order_line_id": "L", "change": 1, "event_time": read}
    late = [{"id": 3, "change_type": "order_created", "change": -1, "booked_at": read + timedelta(seconds=2)}]
    cases = [
        (DriftFacts(-1, 3, read, booked_after_read=late, last_push=push), DriftCause.STALE_READ),
        (DriftFacts(-2, 4, read, last_push=push), DriftCause.PUSH_LOST),
        (DriftFacts(-2, 5, read, last_push={**push, "state": "failed"}), DriftCause.PUSH_LOST),
        (DriftFacts(-1, 5, read, last_push=push, unbooked_orders=[{"quantity": 1}]), DriftCause.UNBOOKED_ORDER),
        (DriftFacts(2, 8, read, unbooked_orders=[{"quantity": 1}]), DriftCause.HAND_EDIT),  # more, not fewer
        (DriftFacts(-1, 5, read, cancellations=[cancellation]), DriftCause.ONE_SIDED_RESTOCK),
        (DriftFacts(1, 7, read, cancellations=[{**cancellation, "change": 0}]), DriftCause.ONE_SIDED_RESTOCK),
        (DriftFacts(-3, 5, read, cancellations=[cancellation]), DriftCause.HAND_EDIT),
        (DriftFacts(5, 9, read), DriftCause.HAND_EDIT),
    ]
    for facts, cause in cases:
        found, evidence = explain(facts)
        assert found == cause, (facts, found)
        json.dumps(evidence, default=str)  # evidence is kept as JSON


def test_a_one_sided_restock_says_whether_the_marketplaces_word_or_the_accounts_default_was_booked():
    read = datetime(2026, 12, 7, 18, tzinfo=timezone.utc)
    base = {"id": 9, "order_id": "O", "order_line_id": "L", "change": 1, "event_time": read}
    said = {restocked: explain(DriftFacts(-1, 5, read, cancellations=[{**base, "restocked": restocked}]))[1]
            for restocked in (None, 0, 1)}
    assert {restocked: evidence["booked_by"].split(":")[0] for restocked, evidence in said.items()} == {
        None: "the account's restock_on_cancel (the marketplace said nothing of this cancellation)",
        0: "the marketplace's word", 1: "the marketplace's word"}
    assert "did not restock" in said[0]["booked_by"] and "restocked 1 unit(s)" in said[1]["booked_by"]

