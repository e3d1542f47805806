"""The stock rules of core/booking.py, without PostgreSQL: each rule, then any interleaving against the truth."""
from __future__ import annotations

import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import booking
from tests.booking_model import OPERATIONS, T0, BookingModel, ModelBackend, World

SKEW = timedelta(seconds=2)
EXAMPLES = int(os.environ.get("STOCKSYNC_PROPERTY_EXAMPLES", "400"))


def at(seconds: float):
    return T0 + timedelta(seconds=seconds)


def decide(kind, quantity, moment, synced, **options):
    return booking.decide_event(kind, quantity, at(moment), None if synced is None else at(synced), skew=SKEW,
                                **options)


@pytest.mark.parametrize("moment, outcome, change, recheck", [
    (50, "absorbed", 0, False),     # long before the page: the marketplace counted it
    (99, "uncertain", -2, True),    # within the skew: the lower stock, read again
    (101, "uncertain", -2, True),
    (150, "applied", -2, False),    # after the page
])
def test_an_order_is_booked_unless_the_last_read_counted_it(moment, outcome, change, recheck):
    decision = decide("order_created", 2, moment, 100)
    assert (decision.outcome, decision.change, decision.recheck, decision.push, decision.local) == (
        outcome, change, recheck, False, 0)


def test_an_order_before_any_read_is_applied():
    assert decide("order_created", 1, 10, None).change == -1


@pytest.mark.parametrize("moment, outcome, change, recheck", [
    (50, "absorbed", 0, False), (100, "uncertain", 0, True), (150, "applied", 3, False)])
def test_a_restocking_marketplace_counts_its_cancellations_itself_and_is_not_pushed(moment, outcome, change,
                                                                                     recheck):
    decision = decide("order_cancelled", 3, moment, 100, other_half=at(10))
    assert (decision.outcome, decision.change, decision.recheck, decision.push) == (outcome, change, recheck, False)


@pytest.mark.parametrize("moment", [50, 100, 150])
def test_without_restock_a_cancellation_is_a_local_change_pushed_whenever_it_happened(moment):
    decision = decide("order_cancelled", 3, moment, 100, other_half=at(10), restocks_on_cancel=False)
    assert (decision.outcome, decision.change, decision.local, decision.push, decision.recheck) == (
        "applied", 3, 3, True, False)


def test_a_cancellation_before_its_order_waits_and_the_order_settles_it_by_each_ones_time():
    waiting = decide("order_cancelled", 2, 150, 100)
    assert (waiting.outcome, waiting.change, waiting.push, waiting.recheck) == ("waiting", 0, False, False)
    # The order at 50 was counted by the read at 100; the cancellation at 150 was not: +2 in all.
    order = decide("order_created", 2, 50, 100, other_half=at(150))
    assert (order.change, order.settles.change, order.total) == (0, 2, 2)
    # Both after the read: they net to nothing.
    assert decide("order_created", 2, 120, 100, other_half=at(150)).total == 0
    # Both counted: nothing either.
    assert decide("order_created", 2, 20, 100, other_half=at(50)).total == 0


@pytest.mark.parametrize("quantity, restocked, default, parts", [
    (2, None, True, (2, 0)), (2, None, False, (0, 2)),      # the marketplace says nothing: the account decides
    (2, 2, False, (2, 0)), (2, 0, True, (0, 2)),            # it says: its fact wins over the default
    (2, 1, True, (1, 1)), (3, 1, False, (1, 2)),            # a line restocked in part
    (2, 5, True, (2, 0)),                                   # never more than the line
])
def test_a_cancellation_is_split_by_what_the_marketplace_restocked(quantity, restocked, default, parts):
    assert booking.cancellation_parts(quantity, restocked, default) == parts


@pytest.mark.parametrize("moment", [50, 100, 150])
def test_a_cancellation_the_marketplace_did_not_restock_is_local_on_a_restocking_account(moment):
    decision = decide("order_cancelled", 2, moment, 100, other_half=at(10), restocked=0)
    assert (decision.outcome, decision.change, decision.local, decision.push, decision.recheck,
            decision.restocked, decision.kept) == ("applied", 2, 2, True, False, 0, None)
    assert [suffix for suffix, _ in decision.rows()] == [""]


@pytest.mark.parametrize("moment, outcome, change, recheck", [
    (50, "absorbed", 0, False), (100, "uncertain", 0, True), (150, "applied", 2, False)])
def test_a_cancellation_the_marketplace_restocked_is_its_own_on_a_keeping_account(moment, outcome, change, recheck):
    decision = decide("order_cancelled", 2, moment, 100, other_half=at(10), restocks_on_cancel=False, restocked=2)
    assert (decision.outcome, decision.change, decision.local, decision.push, decision.recheck,
            decision.restocked) == (outcome, change, 0, False, recheck, 2)


@pytest.mark.parametrize("moment, restocked_change", [(50, 0), (150, 1)])
def test_a_line_restocked_in_part_books_two_rows_under_two_keys(moment, restocked_change):
    decision = decide("order_cancelled", 2, moment, 100, other_half=at(10), restocked=1)
    rows = dict(decision.rows())
    assert list(rows) == ["", booking.NOT_RESTOCKED_SUFFIX]
    assert (rows[""].change, rows[""].local, rows[""].push, rows[""].restocked) == (restocked_change, 0, False, 1)
    kept = rows[booking.NOT_RESTOCKED_SUFFIX]
    assert (kept.change, kept.local, kept.push, kept.restocked) == (1, 1, True, 0)
    assert decision.total == restocked_change + 1


def test_a_waiting_cancellation_keeps_its_fact_and_its_order_settles_by_it():
    waiting = decide("order_cancelled", 2, 150, 100, restocked=1)
    assert (waiting.outcome, waiting.change, waiting.restocked) == ("waiting", 0, 1)
    # The order comes with what the waiting row recorded: one unit the marketplace's (after the read: +1), one ours.
    order = decide("order_created", 2, 50, 100, other_half=at(150), restocked=waiting.restocked)
    assert [(suffix, part.change, part.local) for suffix, part in order.rows()] == [
        ("", 0, 0), (":settled", 1, 0), (":settled" + booking.NOT_RESTOCKED_SUFFIX, 1, 1)]
    assert (order.total, order.settles.kept.push) == (2, True)


@pytest.mark.parametrize("change_type, restocked, default, counted", [
    ("order_created", None, False, True), ("order_cancelled", None, True, True),
    ("order_cancelled", None, False, False), ("order_cancelled", 0, True, False), ("order_cancelled", 1, False, True),
    ("topup", None, True, False)])
def test_a_ledger_row_is_the_marketplaces_by_its_own_fact_else_the_default(change_type, restocked, default, counted):
    assert booking.counted_by_marketplace(change_type, restocked, default) is counted


def test_local_changes_join_unpushed_and_ask_for_a_push_only_where_stock_is_pushed():
    assert decide("topup", 5, 10, 100) == booking.Booking("applied", 5, local=5, push=True)
    assert decide("manual", -2, 10, 100) == booking.Booking("applied", -2, local=-2, push=True)
    assert decide("topup", 5, 10, 100, pushed=False) == booking.Booking("applied", 5)


def facts(**fields):
    base = dict(listed=10, unpushed=0, synced_at=at(0), needs_recheck=False, other_push=False, fetched_at=at(100),
                quantity=10, newer=0, near=0)
    return booking.SnapshotFacts(**{**base, **fields})


def test_a_read_is_the_marketplace_plus_what_it_does_not_know():
    assert booking.decide_snapshot(facts(quantity=7, unpushed=3, newer=-1)) == ("apply", 9)


@pytest.mark.parametrize("fields, state", [
    (dict(synced_at=at(200)), "stale"), (dict(other_push=True), "unpushed"), (dict(near=1), "ambiguous")])
def test_a_read_that_cannot_be_trusted_leaves_the_row(fields, state):
    assert booking.decide_snapshot(facts(**fields))[0] == state


def test_an_oversold_row_keeps_its_owed_units_unless_it_waits_for_a_recheck():
    assert booking.decide_snapshot(facts(listed=-2, quantity=0)) == ("apply", -2)
    # Flagged: an uncertain booking may have counted the last unit twice; the marketplace's 0 wins.
    assert booking.decide_snapshot(facts(listed=-1, quantity=0, needs_recheck=True)) == ("apply", 0)


def test_a_push_sends_no_less_than_zero_and_knows_a_landed_attempt_by_its_read():
    assert (booking.push_quantity(-3), booking.push_quantity(4)) == (0, 4)
    # It sent 5 over a read of 2; an order of 1 was booked since.
    assert booking.earlier_push_landed(4, planned=5, read_before=2, since=-1, carried=3) is True
    assert booking.earlier_push_landed(1, planned=5, read_before=2, since=-1, carried=3) is False
    # Neither (an order still on its way): the guess with the lower count.
    assert booking.earlier_push_landed(3, planned=5, read_before=2, since=-1, carried=3) is True
    assert booking.earlier_push_landed(3, planned=0, read_before=2, since=-1, carried=-2) is False


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.data_too_large])
@given(data=st.data(), restocks=st.booleans(), initial=st.lists(st.integers(0, 6), min_size=3, max_size=3),
       operations=st.lists(st.sampled_from(OPERATIONS), min_size=5, max_size=60))
def test_any_interleaving_ends_at_the_true_count_in_both_restock_worlds(data, restocks, initial, operations):
    world = World(ModelBackend(BookingModel(skew=SKEW, restocks_on_cancel=restocks)), ["A", "B", "C"], initial,
                  restocks_on_cancel=restocks, skew=SKEW)

    def draw(label, options):
        return data.draw(st.sampled_from(list(options)), label=label)

    world.start()
    for operation in operations:
        world.clock += 0.1
        world.step(draw, operation)
    world.settle(draw)
    world.check()
