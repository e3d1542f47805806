"""End to end: stock events on real ``dramatiq workers.fleet`` processes, real Redis and PostgreSQL.

- a re-delivered message and a re-sent event each leave the stock unchanged (counted duplicates);
- 2 worker processes × 8 threads moving one stock row give the exact result;
- a top-up is pushed as one read and one POST; a push drain that keeps failing is retried,
  dead-lettered, and its row says ``failed``;
- a worker SIGKILLed during a burst of events loses and doubles none of them.

The first and the last run on every platform (Back Market, Refurbed, Shopify: ``tests/sides.py``); the
pushes' tests count Back Market's endpoints.
"""
from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone

import pytest
import redis as redis_lib
from sqlalchemy import text

from db.engine import session_factory
from db.ledger import check_invariant
from db.snapshot import PageItem, apply_page, ensure_marketplace
from db.syncs import SyncPolicy, begin_run
from runtime.broker import build_broker
from runtime.local_servers import wait_until
from runtime.settings import Settings
from sandbox.server import serve_in_thread
from tests.fleet import WorkerFleet, fleet_env
from tests.sides import SIDES, BackMarketSide, RefurbedSide, ShopifySide, seed_from, sides_env

pytestmark = pytest.mark.e2e
TOKEN = "e2e-events-token"
LISTINGS = 10
QUEUES = ("stock-events", "stock-push")
POST_LISTING = "POST /ws/listings/{listingId}"
GET_LISTING = "GET /ws/listings/{listingId}"
_lines = itertools.count(1)


#: The events tests run on every platform's side; the pushes' own tests are Back Market's (its endpoints).
PLATFORMS = pytest.mark.parametrize("world", sorted(SIDES), indirect=True)
#: Each platform's side with 10 listings.
MADE = {"backmarket": lambda: BackMarketSide(listings=LISTINGS, seed=41, token=TOKEN),
        "refurbed": lambda: RefurbedSide(offers=LISTINGS, seed=41, token=TOKEN),
        "shopify": lambda: ShopifySide(products=LISTINGS // 2, seed=41, token=TOKEN)}


@pytest.fixture
def world(tmp_path, redis_url, database_url, request):
    side = MADE[getattr(request, "param", "backmarket")]()
    server = serve_in_thread(side.app())
    sessions = session_factory(database_url)
    side.add_account(sessions, server.url)
    # The catalogue as a stock sync left it, an hour ago: the events below come well after the page.
    seed_from(sessions, side)
    listings = side.items()
    broker = build_broker(Settings(redis_url=redis_url))
    from actors import events  # message factories only: the test process enqueues, the fleet works

    env = fleet_env(redis_url=redis_url, database_url=database_url, **sides_env([(side, server.url)]),
                    backmarket_http_attempts=1, stock_push_min_backoff_ms=100, stock_push_max_backoff_ms=300,
                    stock_push_max_retries=2)
    fleets: list[WorkerFleet] = []

    def start(name: str, processes: int = 1, threads: int = 8) -> WorkerFleet:
        fleet = WorkerFleet(env, processes=processes, threads=threads, log_path=tmp_path / f"{name}.log").start()
        fleets.append(fleet)
        return fleet

    try:
        yield {"side": side, "sandbox": side.sandbox, "listings": listings, "sessions": sessions, "broker": broker,
               "events": events, "redis": redis_lib.Redis.from_url(redis_url), "start": start, "logs": tmp_path}
    finally:
        for fleet in fleets:
            fleet.stop()
        broker.close()
        server.stop()


def send(world, actor_name: str, **kwargs):
    message = getattr(world["events"], actor_name).message_with_options(kwargs=kwargs)
    return world["broker"].enqueue(message)


def order(world, sku: str, quantity: int = 1, line: str | None = None):
    line = line or f"line-{next(_lines)}"
    return send(world, "order_created", marketplace=world["side"].account, order_id=f"order-{line}", order_line_id=line,
                sku=sku, quantity=quantity, event_time=datetime.now(timezone.utc).isoformat(), source="webhook")


def drained(world) -> bool:
    """No message of ours waiting, delayed (a retry) or in flight: Redis keeps each in ``.msgs`` until acked."""
    client = world["redis"]
    return all(client.hlen(f"dramatiq:{q}.msgs") == 0 and client.hlen(f"dramatiq:{q}.DQ.msgs") == 0 for q in QUEUES)


def stock_row(world, sku: str):
    with world["sessions"]() as session:
        return session.execute(text(
            "SELECT s.*, v.total_stock FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "WHERE v.sku = :sku"), {"sku": sku}).mappings().one()


def ledger_count(world, change_type: str | None = None) -> int:
    with world["sessions"]() as session:
        return session.execute(text("SELECT count(*) FROM stock_ledger WHERE CAST(:t AS text) IS NULL "
                                    "OR change_type = :t"), {"t": change_type}).scalar()


def assert_ledger_whole(world) -> None:
    with world["sessions"]() as session:
        assert check_invariant(session) == []
        assert session.execute(text(
            "SELECT count(*) FROM variations v WHERE total_stock <> "
            "(SELECT COALESCE(sum(listed), 0) FROM marketplace_stock s WHERE s.variation_id = v.id)")).scalar() == 0


@PLATFORMS
def test_redelivered_message_and_resent_event_leave_stock_unchanged(world):
    world["start"]("w")
    sku = world["listings"][0]["sku"]
    before = stock_row(world, sku)["listed"]
    first = order(world, sku, 2, line="L-dup")
    wait_until(lambda: ledger_count(world, "order_created") == 1 and drained(world), 60, what="the order")
    assert stock_row(world, sku)["listed"] == before - 2
    # The same message again (what Dramatiq does after a crash), and the same event in a new
    # message (a webhook re-sent by the marketplace).
    world["broker"].enqueue(first)
    order(world, sku, 2, line="L-dup")
    log = world["logs"] / "w.log"
    duplicate = f"duplicate stock event {world['side'].account}:L-dup:order_created skipped"
    wait_until(lambda: log.read_text().count(duplicate) == 2
               and drained(world), 60, what="both duplicates")
    assert stock_row(world, sku)["listed"] == before - 2
    assert ledger_count(world, "order_created") == 1
    assert_ledger_whole(world)


def event_rows(world) -> int:
    with world["sessions"]() as session:
        return session.execute(text("SELECT count(*) FROM stock_ledger WHERE change_type IN "
                                    "('order_created', 'order_cancelled', 'topup', 'manual')")).scalar()


def test_two_processes_eight_threads_on_one_row_give_the_exact_result(world):
    listing = world["listings"][1]
    sku, sandbox = listing["sku"], world["sandbox"]
    orders, topups, adjustments = 240, 60, [(-1) ** i * (1 + i % 3) for i in range(60)]
    # The row as a page read it, with room for every order: the orders are placed on the marketplace,
    # which lowers its own stock, then their events are sent.
    sandbox.set_quantity(listing["id"], 300)
    with world["sessions"]() as session:
        run = begin_run(session, kind="stock", target="backmarket", trigger="manual", policy=SyncPolicy(0, 0, 900),
                        force=True)
        apply_page(session, marketplace_id=ensure_marketplace(session, "backmarket"), sync_id=run.id, page=1,
                   fetched_at=datetime.now(timezone.utc) - timedelta(minutes=30),
                   items=[PageItem(listing["id"], listing["listing_id"], sku, listing["title"], 300, 2,
                                   listing["price"], listing["currency"])])
        session.commit()
    start = stock_row(world, sku)["listed"]
    assert start == 300
    # Enqueued before the workers start, so that all 16 threads find work at once.
    for _ in range(orders):
        placed = sandbox.orders.place_order([(listing["id"], 1)])
        line = placed["orderlines"][0]
        send(world, "order_created", marketplace="backmarket", order_id=str(placed["order_id"]),
             order_line_id=str(line["id"]), sku=sku, quantity=1, event_time=placed["date_creation"],
             source="webhook")
    for i in range(topups):
        send(world, "stock_topup", marketplace="backmarket", sku=sku, quantity=2, reference=f"PO-{i}")
    for i, change in enumerate(adjustments):
        send(world, "manual_adjustment", marketplace="backmarket", sku=sku, change=change, reference=f"count-{i}")
    world["start"]("w", processes=2, threads=8)
    expected = start - orders + 2 * topups + sum(adjustments)
    events = orders + topups + len(adjustments)
    wait_until(lambda: event_rows(world) == events and drained(world), 120, what="every event booked")
    row = stock_row(world, sku)
    assert (row["listed"], row["total_stock"]) == (expected, expected)
    assert_ledger_whole(world)
    # Pushes ran concurrently with the events, one at a time per row, each from a fresh read: the
    # marketplace's orders are never overwritten, and the last push carries every local change.
    wait_until(lambda: stock_row(world, sku)["push_state"] == "pushed" and drained(world), 60,
               what="the pushes to settle")
    assert world["sandbox"].quantity(world["listings"][1]["id"]) == max(expected, 0)


def test_topup_is_pushed_as_one_absolute_post(world):
    world["start"]("w")
    listing = world["listings"][2]
    before = stock_row(world, listing["sku"])["listed"]
    world["sandbox"].reset_stats()
    send(world, "stock_topup", marketplace="backmarket", sku=listing["sku"], quantity=7, reference="PO-7",
         actor="anna", note="delivery 7")
    wait_until(lambda: stock_row(world, listing["sku"])["push_state"] == "pushed", 60, what="the push")
    row = stock_row(world, listing["sku"])
    assert (row["listed"], row["pushed_quantity"], row["push_error"]) == (before + 7, before + 7, None)
    stats = world["sandbox"].stats()["by_endpoint"]
    assert stats == {GET_LISTING: 1, POST_LISTING: 1}  # one read, then one POST
    assert world["sandbox"].quantity(listing["id"]) == before + 7


def test_push_that_keeps_failing_is_retried_then_dead_lettered_and_marked_failed(world):
    world["sandbox"].configure(error_rate=1.0)
    world["start"]("w")
    listing = world["listings"][3]
    world["sandbox"].reset_stats()
    send(world, "stock_topup", marketplace="backmarket", sku=listing["sku"], quantity=1, reference="PO-fail")
    wait_until(lambda: stock_row(world, listing["sku"])["push_state"] == "failed", 60, what="the push to fail")
    row = stock_row(world, listing["sku"])
    assert "ServerError" in row["push_error"] and row["push_lease_owner"] is None
    # The first attempt and 2 retries, each stopped at its read: nothing is sent on a read that failed.
    assert world["sandbox"].stats()["by_endpoint"] == {GET_LISTING: 3}
    # The marketplace's push drain went to the dead letters, and marked the row it held failed.
    dead = [json.loads(raw) for raw in world["redis"].hvals("dramatiq:stock-push.XQ.msgs")]
    assert [(m["actor_name"], m["args"]) for m in dead] == [("drain_pushes", ["backmarket"])]
    # Once the marketplace answers again, the next push (an operator's retry) sets it right.
    world["sandbox"].configure(error_rate=0.0)
    send(world, "push_stock", marketplace="backmarket", sku=listing["sku"])
    wait_until(lambda: stock_row(world, listing["sku"])["push_state"] == "pushed", 60, what="the retried push")
    assert world["sandbox"].quantity(listing["id"]) == row["listed"]


@PLATFORMS
def test_sigkilled_worker_during_an_event_burst_loses_and_doubles_nothing(world):
    skus = [listing["sku"] for listing in world["listings"][4:9]]
    start = {sku: stock_row(world, sku)["listed"] for sku in skus}
    per_sku = 120
    for i in range(per_sku):
        for sku in skus:
            order(world, sku)
    victim = world["start"]("victim")
    world["start"]("survivor")
    wait_until(lambda: ledger_count(world, "order_created") >= 100, 60, interval=0.01, what="the burst under way")
    victim.kill()
    assert ledger_count(world, "order_created") < per_sku * len(skus)
    # The victim's messages come back after the heartbeat timeout to the survivor: 3 s here, not production's
    # 60 s, since what is tested is that none is lost or doubled (the recovery bound at production defaults is
    # test_e2e_faults's), and three platforms would wait it out three times.
    wait_until(lambda: ledger_count(world, "order_created") == per_sku * len(skus) and drained(world), 120,
               what="every event booked once")
    for sku in skus:
        assert stock_row(world, sku)["listed"] == start[sku] - per_sku
    with world["sessions"]() as session:
        assert session.execute(text("SELECT count(DISTINCT order_line_id) FROM stock_ledger "
                                    "WHERE change_type = 'order_created'")).scalar() == per_sku * len(skus)
    assert_ledger_whole(world)
