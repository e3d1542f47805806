"""End to end: messages put straight on the queues with a bad field, on real worker processes.

Each goes to the dead letters after its one attempt, with the field named in its error, and
changes no stock: no variation appears for a SKU only a malformed message named.  The workers
run with the production retry settings (the actors' own, nothing overridden).
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import dramatiq
import pytest
import redis as redis_lib
from sqlalchemy import text

from db.engine import session_factory
from db.snapshot import PageItem, apply_page, ensure_marketplace
from db.syncs import SyncPolicy, begin_run
from runtime.broker import build_broker
from runtime.dlq import DeadLetterQueues
from runtime.local_servers import wait_until
from runtime.settings import Settings
from tests.fleet import WorkerFleet, fleet_env

pytestmark = pytest.mark.e2e

GOOD_ORDER = {"marketplace": "backmarket", "order_id": "O-1", "order_line_id": "L-1", "sku": "SKU-REAL",
              "quantity": 1, "event_time": "2026-11-23T09:35:24Z", "source": "api"}
GOOD_TOPUP = {"marketplace": "backmarket", "sku": "SKU-REAL", "quantity": 2, "reference": "PO-1"}
TEN_MB = "x" * (10 * 1024 * 1024)

#: (queue, actor, args, kwargs, words the dead letter's error must hold)
MALFORMED = [
    ("stock-events", "order_created", (), {**GOOD_ORDER, "quantity": 10**6},
     "quantity: must be an integer in 1..100000"),
    ("stock-events", "stock_topup", (), {**GOOD_TOPUP, "note": TEN_MB}, "note: must be at most 2000 characters"),
    ("stock-events", "stock_topup", (), {**GOOD_TOPUP, "quantity": -4}, "quantity: must be an integer in 1.."),
    ("stock-events", "manual_adjustment", (), {**GOOD_TOPUP, "quantity": 5}, "change: is required"),
    ("stock-events", "order_created", (), {k: v for k, v in GOOD_ORDER.items() if k != "order_line_id"},
     "order_line_id: is required"),
    ("stock-events", "order_cancelled", (), {**GOOD_ORDER, "colour": "red"}, "colour: is not a field"),
    ("stock-events", "order_created", ("backmarket", "O-2"), {}, "order_line_id: is required"),
    ("stock-events", "order_created", tuple(range(9)), {}, "at most 7 positional"),
    ("stock-events", "stock_events_batch", ([{"kind": "order_created", "fields": GOOD_ORDER},
                                             {"kind": "order_refunded", "fields": GOOD_ORDER}],), {},
     "event 1: kind must be one of"),
    ("stock-events", "stock_events_batch", ([{"kind": "stock_topup", "fields": GOOD_TOPUP}, ["stock_topup"]],), {},
     "event 1 must be an object"),
    ("stock-events", "stock_events_batch", ([{"kind": "order_created", "fields": {**GOOD_ORDER, "sku": "PHANTOM-1"}},
                                             {"kind": "order_created",
                                              "fields": {**GOOD_ORDER, "order_line_id": "L-9", "quantity": 0}}],), {},
     "event 1 (order_created): quantity"),
    ("stock-events", "stock_events_batch", (), {"events": "all of them"}, "events must be a non-empty list"),
    ("stock-events", "order_created", (), {**GOOD_ORDER, "sku": "PHANTOM-2", "event_time": "yesterday"},
     "event_time: must be an ISO 8601 time"),
]


@pytest.fixture
def world(tmp_path, redis_url, database_url):
    sessions = session_factory(database_url)
    with sessions() as session:
        marketplace_id = ensure_marketplace(session, "backmarket", "Back Market")
        session.commit()
        run = begin_run(session, kind="stock", target="backmarket", trigger="manual", policy=SyncPolicy(0, 0, 900))
        apply_page(session, marketplace_id=marketplace_id, sync_id=run.id, page=1,
                   fetched_at=datetime.now(timezone.utc) - timedelta(hours=1), total_pages=1,
                   items=[PageItem("uuid-real", 1, "SKU-REAL", "Real phone", 29, 2, "100.00", "EUR")])
        session.commit()
        page_run = begin_run(session, kind="stock", target="backmarket", trigger="manual",
                             policy=SyncPolicy(0, 0, 900), force=True)
    broker = build_broker(Settings(redis_url=redis_url))
    # Only the backmarket base URL is needed by the settings; no message here reaches an API.
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url="http://127.0.0.1:9", token="t")
    fleet = WorkerFleet(env, processes=1, threads=4, log_path=tmp_path / "workers.log",
                        queues=("stock-events", "stock-apply")).start()
    try:
        yield {"sessions": sessions, "broker": broker, "redis": redis_lib.Redis.from_url(redis_url),
               "page_run": page_run.id, "log": tmp_path / "workers.log"}
    finally:
        fleet.stop()
        broker.close()


def stock_state(sessions) -> dict:
    with sessions() as session:
        return {
            "variations": session.execute(text("SELECT sku, total_stock FROM variations ORDER BY sku")).all(),
            "listed": session.execute(text("SELECT listed FROM marketplace_stock")).scalars().all(),
            "ledger": session.execute(text("SELECT count(*) FROM stock_ledger")).scalar(),
        }


def test_malformed_messages_go_to_the_dead_letters_at_once_naming_the_field(world):
    before = stock_state(world["sessions"])
    assert before["variations"] == [("SKU-REAL", 29)]
    sent = {}
    for queue, actor, args, kwargs, words in MALFORMED:
        message = dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs=kwargs, options={})
        sent[world["broker"].enqueue(message).message_id] = (actor, words)
    page = dramatiq.Message(queue_name="stock-apply", actor_name="apply_listings_batch", kwargs={}, options={},
                            args=(world["page_run"], 1, datetime.now(timezone.utc).isoformat(),
                                  [{"id": "uuid-phantom", "sku": "PHANTOM-3", "quantity": -1}], "backmarket", 1, 1))
    sent[world["broker"].enqueue(page).message_id] = ("apply_listings_batch", "quantity must be in 0..")

    letters = DeadLetterQueues(world["redis"])

    def dead() -> dict:
        return {letter.message_id: letter for letter in letters.select()}

    wait_until(lambda: set(sent) <= set(dead()), 120, what="every malformed message in the dead letters")
    found = dead()
    for message_id, (actor, words) in sent.items():
        letter = found[message_id]
        assert letter.actor_name == actor and words in letter.error, (actor, letter.error[:300])
        # One attempt, no retry: a permanent error (MalformedMessage) is not retried.
        assert letter.attempts == 1, (actor, letter.attempts)
        assert len(letter.error) < 1000  # the 10 MB note is not copied into the error
    after = stock_state(world["sessions"])
    assert after == before  # no stock moved, no ledger row, no phantom variation
    with world["sessions"]() as session:
        status = session.execute(text("SELECT status FROM sync_runs WHERE id = :r"), {"r": world["page_run"]}).scalar()
    assert status == "failed"  # the dead page failed its run, as a dead page does


def test_a_good_message_after_the_bad_ones_is_still_booked(world):
    ledger_before = stock_state(world["sessions"])["ledger"]
    bad = dramatiq.Message(queue_name="stock-events", actor_name="order_created", args=(),
                           kwargs={**GOOD_ORDER, "quantity": -1}, options={})
    good = dramatiq.Message(queue_name="stock-events", actor_name="order_created", args=(),
                            kwargs={**GOOD_ORDER, "order_line_id": f"L-{uuid.uuid4().hex[:8]}",
                                    "event_time": datetime.now(timezone.utc).isoformat()}, options={})
    world["broker"].enqueue(bad)
    world["broker"].enqueue(good)
    # After the page an hour ago: the order is booked, not absorbed as already counted.
    wait_until(lambda: stock_state(world["sessions"])["listed"] == [28], 60, what="the good order booked")
    assert stock_state(world["sessions"])["ledger"] == ledger_before + 1  # the order's row; the bad one wrote none
