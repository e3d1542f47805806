"""End to end: webhooks and polls → ``stocksync serve`` → real Redis → ``dramatiq workers.fleet`` → ledger.

Real processes all the way: the intake (``stocksync serve``), the worker fleet, Redis and
PostgreSQL; the marketplaces are the sandboxes, and Refurbed's sandbox sends its webhook itself,
each notification at least twice.  The point: whatever is delivered again (a webhook re-sent, a
Shopify retry under a new delivery id, a poll reading its overlap), the stock moves once.
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
import redis as redis_lib
from sqlalchemy import text

from db.engine import session_factory
from db.ledger import check_invariant
from db.snapshot import PageItem, apply_page, ensure_marketplace
from db.syncs import SyncPolicy, begin_run
from runtime.broker import build_broker
from runtime.local_servers import free_port, wait_until
from runtime.producer import StockEvents
from runtime.settings import Settings
from sandbox.backmarket import BackMarketSandbox
from sandbox.refurbed import RefurbedSandbox
from sandbox.server import serve_in_thread
from tests.fleet import ROOT, WorkerFleet, fleet_env
from workers.intake import auth

pytestmark = pytest.mark.e2e
TOKEN = "e2e-intake-token"
REFURBED_SECRET = "e2e-refurbed-url-secret"
SHOPIFY_SECRET = "e2e-shopify-secret"


def post(url: str, path: str, body: bytes, headers: dict) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **headers})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def stock(sessions, marketplace: str, sku: str) -> int | None:
    with sessions() as session:
        return session.execute(text(
            "SELECT s.listed FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :m AND v.sku = :s"),
            {"m": marketplace, "s": sku}).scalar()


def ledger_rows(sessions, marketplace: str, change_type: str | None = None) -> int:
    with sessions() as session:
        return session.execute(text(
            "SELECT count(*) FROM stock_ledger l JOIN marketplaces m ON m.id = l.marketplace_id "
            "WHERE m.code = :m AND (CAST(:t AS text) IS NULL OR l.change_type = :t)"),
            {"m": marketplace, "t": change_type}).scalar()


#: The queues these tests feed: order intake, and the events it emits.  Pushes and delayed
#: re-checks that booking schedules are not waited for.
QUEUES = ("orders", "stock-events")


def drained(client: redis_lib.Redis) -> bool:
    """No message of ours waiting or in flight (dead letters aside)."""
    return all(client.llen(f"dramatiq:{queue}") == 0 and client.hlen(f"dramatiq:{queue}.msgs") == 0
               for queue in QUEUES)


def seed_page(sessions, code: str, items: list[PageItem]) -> None:
    """Apply ``items`` as account ``code``'s one page, fetched an hour ago.

    An hour ago: the orders of the tests happen well after the page, as they would between two
    syncs (an event within STOCK_EVENT_SKEW_S of a page is ambiguous and waits for a re-check).
    """
    with sessions() as session:
        marketplace_id = ensure_marketplace(session, code)
        session.commit()
        run = begin_run(session, kind="stock", target=code, trigger="manual", policy=SyncPolicy(0, 0, 900))
        apply_page(session, marketplace_id=marketplace_id, sync_id=run.id, page=1,
                   fetched_at=datetime.now(timezone.utc) - timedelta(hours=1), items=items, total_pages=1,
                   total_items=len(items))
        session.commit()


@pytest.fixture
def world(tmp_path, redis_url, database_url):
    backmarket = BackMarketSandbox(listings=20, seed=31, token=TOKEN, quota_requests=0)
    bm_server = serve_in_thread(backmarket.build_app())
    refurbed = RefurbedSandbox(token=TOKEN, webhook_resends=1, webhook_retry_s=0.05)
    rb_server = serve_in_thread(refurbed.build_app())
    port = free_port()
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=bm_server.url, token=TOKEN,
                    REFURBED_BASE_URL=rb_server.url, REFURBED_TOKEN=TOKEN, REFURBED_WEBHOOK_SECRET=REFURBED_SECRET,
                    REFURBED_QUOTA_REQUESTS=1000, SHOPIFY_WEBHOOK_SECRET=SHOPIFY_SECRET, INTAKE_PORT=port,
                    INTAKE_READ_POOL_SIZE=1)
    intake_url = f"http://127.0.0.1:{port}"
    refurbed.configure(webhook_url=f"{intake_url}/webhooks/refurbed/{REFURBED_SECRET}")
    intake = subprocess.Popen([sys.executable, "-m", "workers.cli", "serve"], cwd=ROOT, env={**os.environ, **env},
                              stdout=open(tmp_path / "intake.log", "ab"), stderr=subprocess.STDOUT)
    fleet = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "workers.log").start()
    sessions = session_factory(database_url)
    # Each account's catalogue is in the database as a stock sync leaves it (Refurbed's and Shopify's
    # one offer each, which the orders below take from).
    refurbed.add_offer("RB-PHONE", 5)
    seed_page(sessions, "backmarket", [
        PageItem(l["id"], l["listing_id"], l["sku"], l["title"], l["quantity"], l["publication_state"], l["price"],
                 l["currency"]) for l in (backmarket.listing(i) for i in range(20))])
    seed_page(sessions, "refurbed", [PageItem(refurbed.offers()[0]["id"], None, "RB-PHONE", "phone", 5, None, None,
                                              None)])
    seed_page(sessions, "shopify", [PageItem("40001", None, "SH-CASE", "case", 10, None, None, None)])
    broker = build_broker(Settings(redis_url=redis_url))
    client = redis_lib.Redis.from_url(redis_url)

    def intake_ready() -> bool:
        assert intake.poll() is None, (tmp_path / "intake.log").read_text()
        try:
            return post(intake_url, "/healthz", b"", {}) in (200, 405)
        except OSError:
            return False

    wait_until(intake_ready, 60, what="stocksync serve")
    try:
        yield {"backmarket": backmarket, "refurbed": refurbed, "intake": intake_url, "sessions": sessions,
               "broker": broker, "redis": client, "events": StockEvents(broker)}
    finally:
        fleet.stop()
        intake.terminate()
        intake.wait(10)
        refurbed.close()
        rb_server.stop()
        bm_server.stop()
        broker.close()


def settle(world, what: str, condition=lambda: True, timeout: float = 60) -> None:
    wait_until(lambda: condition() and drained(world["redis"]), timeout, interval=0.05, what=what)


def test_refurbed_webhook_resent_moves_stock_once(world):
    sessions, refurbed = world["sessions"], world["refurbed"]
    assert stock(sessions, "refurbed", "RB-PHONE") == 5

    order = refurbed.place_order(["RB-PHONE", "RB-PHONE"])  # two units: two items
    refurbed.wait_for_deliveries(30)
    accepted = [d for d in refurbed.deliveries() if d.status == 202]
    assert len(accepted) == 2  # the notification and its re-send, both answered 202
    settle(world, "the order", lambda: stock(sessions, "refurbed", "RB-PHONE") == 3)

    # Re-sent again, and again with the intake's memo gone: the ledger key is the last guard.
    refurbed.notify(int(order["id"]))
    refurbed.wait_for_deliveries(30)
    for key in world["redis"].scan_iter("stocksync:orders:refurbed:sent:*"):
        world["redis"].delete(key)
    refurbed.notify(int(order["id"]))
    refurbed.wait_for_deliveries(30)
    settle(world, "the re-sent webhooks", lambda: refurbed.stats()["requests"]["GetOrder"] == 6)
    assert stock(sessions, "refurbed", "RB-PHONE") == 3
    assert ledger_rows(sessions, "refurbed", "order_created") == 2
    with sessions() as session:
        assert check_invariant(session) == []


def test_shopify_retries_and_replays_move_stock_once(world):
    sessions = world["sessions"]
    assert stock(sessions, "shopify", "SH-CASE") == 10
    body = json.dumps({"id": 450789469, "created_at": datetime.now(timezone.utc).isoformat(),
                       "line_items": [{"id": 1, "sku": "SH-CASE", "quantity": 3}]}).encode()
    headers = {"X-Shopify-Hmac-Sha256": auth.shopify_hmac(SHOPIFY_SECRET, body),
               "X-Shopify-Topic": "orders/create", "X-Shopify-Webhook-Id": "e2e-delivery-1"}
    assert post(world["intake"], "/webhooks/shopify", body, headers) == 202
    assert post(world["intake"], "/webhooks/shopify", body, headers) == 200  # the same delivery: dropped
    assert post(world["intake"], "/webhooks/shopify", body, {**headers, "X-Shopify-Webhook-Id": "e2e-delivery-2"}
                ) == 202  # a new delivery id of the same order: enqueued, and a no-op in the ledger
    settle(world, "the order", lambda: stock(sessions, "shopify", "SH-CASE") == 7)
    assert stock(sessions, "shopify", "SH-CASE") == 7
    assert ledger_rows(sessions, "shopify", "order_created") == 1


def test_a_shopify_cancellation_restocked_in_part_books_each_part_once_by_webhook_retry_and_poll(world):
    from clients.shopify import OrderLine, RefundLine, ShopifyOrder
    from pipelines.orders import send_chains, shopify_polled_events

    sessions = world["sessions"]
    created = datetime.now(timezone.utc) - timedelta(minutes=10)
    cancelled = (created + timedelta(minutes=5)).isoformat()
    # Three units ordered, then cancelled: the merchant restocked one and kept two off (two refund lines).
    order = {"id": 450789470, "created_at": created.isoformat(), "cancelled_at": cancelled,
             "line_items": [{"id": 2, "sku": "SH-CASE", "quantity": 3}],
             "refunds": [{"id": 9, "refund_line_items": [
                 {"id": 1, "line_item_id": 2, "quantity": 1, "restock_type": "cancel"},
                 {"id": 2, "line_item_id": 2, "quantity": 2, "restock_type": "no_restock"}]}]}
    body = json.dumps(order).encode()
    headers = {"X-Shopify-Hmac-Sha256": auth.shopify_hmac(SHOPIFY_SECRET, body),
               "X-Shopify-Topic": "orders/cancelled", "X-Shopify-Webhook-Id": "e2e-cancel-1"}
    assert post(world["intake"], "/webhooks/shopify", body, headers) == 202
    assert post(world["intake"], "/webhooks/shopify", body, {**headers, "X-Shopify-Webhook-Id": "e2e-cancel-2"}) == 202
    # The poll reads the same cancellation from GraphQL: the same word, the same keys.
    polled = ShopifyOrder(str(order["id"]), "#1002", order["created_at"], cancelled, cancelled,
                          [OrderLine("2", "SH-CASE", 3)],
                          [RefundLine("2", 1, "CANCEL"), RefundLine("2", 2, "NO_RESTOCK")])
    send_chains(shopify_polled_events(polled, "shopify"), world["broker"])
    settle(world, "the cancellation, its retry and its poll",
           lambda: ledger_rows(sessions, "shopify", "order_cancelled") >= 2)
    with sessions() as session:
        rows = session.execute(text(
            "SELECT l.idempotency_key, l.change, l.restocked FROM stock_ledger l JOIN marketplaces m "
            "ON m.id = l.marketplace_id WHERE m.code = 'shopify' AND l.order_id IS NOT NULL ORDER BY l.id")).all()
        unpushed = session.execute(text(
            "SELECT s.unpushed FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "WHERE v.sku = 'SH-CASE'")).scalar_one()
        assert check_invariant(session) == []
    assert [tuple(row) for row in rows] == [("shopify:2:order_created", -3, None), ("shopify:2:order_cancelled", 1, 1),
                                            ("shopify:2:order_cancelled:not_restocked", 2, 0)]
    # Back to 10: one unit the shop's own, two ours to push.
    assert (stock(sessions, "shopify", "SH-CASE"), unpushed) == (10, 2)


def test_backmarket_poll_books_orders_and_cancellations_once(world):
    sessions, backmarket, broker = world["sessions"], world["backmarket"], world["broker"]
    from actors.orders import poll_orders

    listing = next(backmarket.listing(i) for i in range(20) if backmarket.listing(i)["quantity"] >= 2)
    before = stock(sessions, "backmarket", listing["sku"])
    assert before == listing["quantity"]
    order = backmarket.orders.place_order([(listing["id"], 2)])
    assert backmarket.quantity(listing["id"]) == before - 2  # Back Market took its own stock down
    broker.enqueue(poll_orders.message("backmarket"))
    settle(world, "the first poll", lambda: stock(sessions, "backmarket", listing["sku"]) == before - 2)

    broker.enqueue(poll_orders.message("backmarket"))  # re-reads the overlap: nothing changes
    settle(world, "the second poll")
    assert stock(sessions, "backmarket", listing["sku"]) == before - 2

    backmarket.orders.set_line_state(order["order_id"], order["orderlines"][0]["id"], 4)
    broker.enqueue(poll_orders.message("backmarket"))
    settle(world, "the cancellation", lambda: stock(sessions, "backmarket", listing["sku"]) == before)
    for key in world["redis"].scan_iter("stocksync:orders:backmarket:sent:*"):
        world["redis"].delete(key)  # memo lost: every event is sent again, and changes nothing
    broker.enqueue(poll_orders.message("backmarket"))
    settle(world, "the poll without memo")
    assert stock(sessions, "backmarket", listing["sku"]) == before
    assert ledger_rows(sessions, "backmarket", "order_created") == 1
    assert ledger_rows(sessions, "backmarket", "order_cancelled") == 1
    with sessions() as session:
        assert check_invariant(session) == []
