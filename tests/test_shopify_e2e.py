"""End to end on real worker processes: a Shopify shop that throttles, and orders whose webhooks never came.

- A shop on a small plan's cost bucket, with the sandbox's throttle dial turned, is synced twice while
  top-ups are pushed: the fleet's cost bucket starts from the standard plan's figures and learns the
  shop's from every answer's ``throttleStatus``; ``THROTTLED`` answers are waited out, never retried
  blindly.  Every row ends equal to the shop, every push lands, nothing reaches the dead letters.
- A cancellation restocks or not as the shop says for that order, whatever the account's default: on an
  account set to restock, a cancellation without restock is a local change the fleet pushes; on one set
  not to, a cancellation with restock is the shop's own (pushing it too would count it twice).
- Orders and a cancellation the shop never announced (no webhook) are found by the order poll, sent
  the way an operator does (``stocksync poll-orders``) and the way the scheduler does (``each_account``
  fanning out ``poll_orders``), and land on the rows the sync keeps; a sync after them changes nothing.
- A shop synced through a bulk operation (``SHOPIFY_BULK_MIN_VARIANTS`` 0): its file read in pages with no
  credential sent to the file's host, every row equal to the shop, the ledger invariant kept; then an
  operation that ends FAILED fails its run with Shopify's error code and changes no row.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import text

from db.engine import session_factory
from db.ledger import check_invariant
from runtime.broker import build_broker
from runtime.local_servers import wait_until
from runtime.settings import Settings
from sandbox.server import serve_in_thread
from tests.fleet import ROOT, WorkerFleet, fleet_env
from tests.sides import ShopifySide
from tests.test_race_e2e import QUEUES, TOKEN, last_run, local, quiet, send, sync

pytestmark = pytest.mark.e2e


class Shop(ShopifySide):
    """200 variants at two locations, on the standard plan's bucket (2000 points, 100 a second) unless told;
    ``options``: the account's (``restock_on_cancel``)."""

    def __init__(self, bucket: dict | None = None, options: dict | None = None, *, bulk: bool = False) -> None:
        self.options = options or {}
        super().__init__(restocks=True, products=100, locations=2, seed=5, token=TOKEN, bulk=bulk,
                         bucket=bucket or {"cost_maximum": 2000, "cost_restore_rate": 100})

    def env(self, url: str) -> dict:
        # The fleet starts from the standard plan's bucket (production defaults): the shop's answers correct it.
        # Pages of 50 variants: the throttled test's bucket (400 points) cannot hold a page of 100 at two locations.
        return {"backmarket_url": "http://127.0.0.1:9", "backmarket_token": "", "accounts_allow_loopback": "true",
                "stocksync_account_shop_token": TOKEN, "shopify_page_size": 50, **self.bulk_env()}


@pytest.fixture
def shop(tmp_path, redis_url, database_url, request):
    side = Shop(**getattr(request, "param", {}))
    side.sandbox.configure(bulk_startup_s=0.5, bulk_objects_per_s=400)  # 200 variants: exported in 1 s
    server = serve_in_thread(side.app())
    sessions = session_factory(database_url)
    side.add_account(sessions, server.url)
    env = fleet_env(redis_url=redis_url, database_url=database_url, token=TOKEN, **side.env(server.url))
    fleet = WorkerFleet(env, processes=2, threads=4, log_path=tmp_path / "fleet.log").start()
    broker = build_broker(Settings(redis_url=redis_url))
    from actors import accounts, events, stock_sync  # message factories only: the fleet does the work

    try:
        yield {"side": side, "sessions": sessions, "broker": broker, "events": events, "sync": stock_sync,
               "accounts": accounts, "redis": redis_lib.Redis.from_url(redis_url), "env": env}
    finally:
        fleet.stop()
        broker.close()
        server.stop()


def dead_letters(world) -> int:
    client = world["redis"]
    return sum(client.zcard(f"dramatiq:{queue}.XQ") for queue in (*QUEUES, "orders"))


def settled(world, what: str, timeout_s: float = 120) -> None:
    wait_until(lambda: quiet(world) and not world["redis"].hlen("dramatiq:orders.msgs"), timeout_s, interval=0.3,
               what=what)


def ledger_rows(world, change_type: str, source: str | None = None) -> int:
    with world["sessions"]() as session:
        return session.execute(text(
            "SELECT count(*) FROM stock_ledger WHERE change_type = :kind AND order_id IS NOT NULL"
            + (" AND actor = :source" if source else "")), {"kind": change_type, "source": source}).scalar_one()


#: A fifth of the standard plan's bucket and half its rate, so that throttling comes within seconds (the orders
#: query, about 800 points, is not run here: it needs the standard plan's 2000).
@pytest.mark.parametrize("shop", [{"bucket": {"cost_maximum": 400, "cost_restore_rate": 50}}], indirect=True)
def test_a_throttled_shop_slows_the_fleet_and_loses_nothing(shop):
    world, sandbox = shop, shop["side"].sandbox
    sandbox.throttle_next(5)  # on top of the bucket: the first answers are THROTTLED whatever it holds
    sync(world)
    settled(world, "the first sync")
    assert last_run(world)["status"] == "succeeded"
    assert local(world) == sandbox.truth() and len(local(world)) == 200

    # Twenty top-ups and a second sync at once, the shop's bucket nearly empty and its dial turned again.
    skus = sorted(sandbox.truth())[::10]
    expected = dict(sandbox.truth())
    sandbox.throttle_next(8)
    for number, sku in enumerate(skus):
        send(world, world["events"].stock_topup, marketplace="shop", sku=sku, quantity=2, reference=f"PO-T{number}",
             event_time=datetime.now(timezone.utc).isoformat())
        expected[sku] += 2
    sync(world)
    settled(world, "the pushes and the second sync")
    assert last_run(world)["status"] == "succeeded"
    assert sandbox.truth() == expected and local(world) == expected
    with world["sessions"]() as session:
        states = session.execute(text("SELECT push_state, count(*) FROM marketplace_stock GROUP BY 1")).all()
        assert check_invariant(session) == []
    assert "pending" not in dict(states) and "failed" not in dict(states)
    stats = sandbox.stats()
    print(f"throttled shop: {stats['throttled']} THROTTLED answers, {stats['total_requests']} requests, "
          f"writes {stats['inventory_writes']}")
    assert stats["throttled"] >= 13 and stats["inventory_writes"]["applied"] >= len(skus)
    assert dead_letters(world) == 0


def test_orders_missed_by_their_webhooks_are_found_by_the_poll_and_meet_the_sync(shop):
    world, sandbox = shop, shop["side"].sandbox
    sync(world)
    settled(world, "the first sync")
    assert local(world) == sandbox.truth()
    in_stock = [sku for sku, units in sorted(sandbox.truth().items()) if units >= 2]

    # No webhook for any of these: an order, and an order cancelled (the shop restocks it).
    kept = sandbox.place_order({in_stock[0]: 1}, notify=False)
    cancelled = sandbox.place_order({in_stock[1]: 2}, notify=False)
    sandbox.cancel_order(cancelled["id"], restock=True, notify=False)
    poll = subprocess.run([str(Path(sys.executable).with_name("stocksync")), "poll-orders", "shop"], cwd=ROOT,
                          env={**os.environ, **world["env"]}, capture_output=True, text=True, timeout=120)
    assert poll.returncode == 0, poll.stderr
    assert "order poll of shop enqueued" in poll.stdout
    settled(world, "the operator's poll")
    assert local(world) == sandbox.truth()
    assert (ledger_rows(world, "order_created", "poll"), ledger_rows(world, "order_cancelled", "poll")) == (2, 1)

    # Later, the kept order is cancelled, and a new one placed, still without webhooks: the scheduler's
    # fan-out polls every account that can be polled (only this one has its credential here).
    sandbox.cancel_order(kept["id"], restock=True, notify=False)
    sandbox.place_order({in_stock[2]: 1}, notify=False)
    send(world, world["accounts"].each_account, actor_name="poll_orders", capability="poll_orders")
    settled(world, "the scheduled poll")
    assert local(world) == sandbox.truth()
    assert (ledger_rows(world, "order_created"), ledger_rows(world, "order_cancelled")) == (3, 2)

    # The sync finds the rows as the polls left them: it changes nothing.
    sync(world)
    settled(world, "the sync after the polls")
    assert local(world) == sandbox.truth()
    with world["sessions"]() as session:
        moved = session.execute(text("SELECT count(*) FROM stock_ledger WHERE sync_id = :run AND change <> 0"),
                                {"run": last_run(world)["id"]}).scalar_one()
        assert check_invariant(session) == []
    assert moved == 0 and dead_letters(world) == 0


@pytest.mark.parametrize("shop", [{"bulk": True}], indirect=True)
def test_a_sync_through_a_bulk_operation_ends_equal_to_the_shop_and_a_failed_one_fails_its_run(shop):
    world, sandbox = shop, shop["side"].sandbox
    sync(world)
    settled(world, "the bulk sync")
    run = last_run(world)
    assert (run["status"], run["details"]["catalogue"]) == ("succeeded", "bulk")
    assert local(world) == sandbox.truth() and len(local(world)) == 200
    with world["sessions"]() as session:
        assert check_invariant(session) == []
    stats = sandbox.stats()
    costs = stats["query_costs"]
    assert costs["StocksyncBulkRun"]["answers"] == 1 and "StocksyncVariants" not in costs
    # The file, 200 lines in pages of 50, from the storage host, which never saw the access token.
    assert stats["storage"] == {"requests": 4, "with_token": 0}
    assert run["pages_done"] == 5  # page 1 started the export; 4 pages of its file

    # An order after the export: the next bulk sync finds it; then an export that fails fails its run.
    sku = next(sku for sku, units in sorted(sandbox.truth().items()) if units > 0)
    sandbox.place_order({sku: 1}, notify=False)
    sync(world)
    settled(world, "the second bulk sync")
    assert last_run(world)["status"] == "succeeded" and local(world) == sandbox.truth()
    before = local(world)
    sandbox.fail_next_bulk("INTERNAL_SERVER_ERROR")
    sync(world)
    settled(world, "the failed bulk sync")
    failed = last_run(world)
    assert failed["status"] == "failed" and "FAILED (INTERNAL_SERVER_ERROR)" in failed["error"], failed["error"]
    assert local(world) == before and dead_letters(world) == 1


@pytest.mark.parametrize("shop, restock", [({}, False), ({"options": {"restock_on_cancel": False}}, True)],
                         indirect=["shop"], ids=["restocking-account-kept", "keeping-account-restocked"])
def test_a_cancellation_restocks_or_not_as_the_shop_says(shop, restock):
    world, sandbox = shop, shop["side"].sandbox
    sync(world)
    settled(world, "the first sync")
    sku = next(sku for sku in sorted(sandbox.truth()) if (sandbox.available(sku) or 0) >= 3)
    before = sandbox.truth()[sku]  # the row is the sum of the shop's locations; the order takes from the first

    # Two units ordered, then the order cancelled against the account's default; no webhook: the poll finds both.
    order = sandbox.place_order({sku: 2}, notify=False)
    sandbox.cancel_order(order["id"], restock=restock, notify=False)
    send(world, world["accounts"].each_account, actor_name="poll_orders", capability="poll_orders")
    settled(world, "the poll and what it pushes")
    # The units are back on both sides: given back by the shop, or pushed by the fleet, never both.
    assert (local(world)[sku], sandbox.truth()[sku]) == (before, before)
    assert local(world) == sandbox.truth()
    assert ledger_rows(world, "order_cancelled", "poll") == 1

    # A sync after it changes nothing.
    sync(world)
    settled(world, "the sync after the poll")
    assert local(world) == sandbox.truth() and local(world)[sku] == before
    with world["sessions"]() as session:
        assert check_invariant(session) == []
    assert dead_letters(world) == 0
