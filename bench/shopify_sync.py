"""A Shopify shop synced and pushed to at the standard plan's rate, against the query-cost bound.

    .venv/bin/python bench/shopify_sync.py [--variants 20000] [--pushes 600] [--page-size 100]
        [--processes 2] [--threads 8]

Real ``redis-server`` and PostgreSQL (durable), one real ``dramatiq workers.fleet``, and the Shopify
GraphQL sandbox on loopback in this process: ``--variants`` variants at one location, the standard
plan's cost bucket (2000 points, 100 restored a second), the fleet's ``SHOPIFY_COST_*`` the same.

1. A first sync of the shop (cursor pages of ``SHOPIFY_PAGE_SIZE``): wall time (``sync_runs``) against
   the cost bound, (total cost − the bucket) / restore rate, with the costs the sandbox itself counted
   (Shopify admits a query on its requested cost and charges the actual one: the bound is on the
   actual, the requested one printed beside it); THROTTLED answers; every row checked against the shop.
2. ``--pushes`` top-ups of distinct SKUs sent at once: pushes per minute sustained, from the first
   top-up sent to the last one shown by the shop, against the bound: a push is a read
   (``inventoryItem``) and a ``inventorySetQuantities``, (pushes × their cost − the bucket) / restore rate.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402
from sqlalchemy import text  # noqa: E402

from db import accounts as account_rows  # noqa: E402
from db.engine import session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from runtime.broker import build_broker  # noqa: E402
from runtime.local_servers import PostgresServer, RedisServer, wait_until  # noqa: E402
from runtime.producer import StockEvents  # noqa: E402
from runtime.queues import STOCK_SYNC  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from sandbox.server import serve_in_thread  # noqa: E402
from sandbox.shopify import ShopifySandbox  # noqa: E402
from sandbox.shopify_cost import STANDARD_MAXIMUM_AVAILABLE, STANDARD_RESTORE_RATE  # noqa: E402
from tests.fleet import WorkerFleet, fleet_env  # noqa: E402

TOKEN = "shpat_bench_token"
ACCOUNT = "shop"
DURABLE = ("synchronous_commit=on",)


def costs(sandbox: ShopifySandbox, *names: str) -> tuple[int, float, float]:
    """(answers, requested, actual) the sandbox ran of the named operations so far."""
    found = sandbox.stats()["query_costs"]
    return (sum(found.get(name, {}).get("answers", 0) for name in names),
            sum(found.get(name, {}).get("requested", 0.0) for name in names),
            sum(found.get(name, {}).get("actual", 0.0) for name in names))


def bound_s(points: float) -> float:
    """The least time the standard plan lets ``points`` be spent in: a full bucket first, then its restore rate."""
    return max(0.0, points - STANDARD_MAXIMUM_AVAILABLE) / STANDARD_RESTORE_RATE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", type=int, default=20_000)
    parser.add_argument("--pushes", type=int, default=600)
    parser.add_argument("--page-size", type=int, default=100, help="SHOPIFY_PAGE_SIZE")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    if args.variants < 2 or not 1 <= args.pushes <= args.variants or not 1 <= args.page_size <= 250:
        parser.error("--variants >= 2, --pushes in 1..variants, --page-size in 1..250")

    folder = Path(tempfile.mkdtemp(prefix="bench-shopify-"))
    pg = PostgresServer(folder / "pg", options=DURABLE).start()
    redis = RedisServer(folder / "redis").start()
    url = pg.create_database("bench_shopify")
    upgrade(url)
    sessions = session_factory(url)
    shop = ShopifySandbox(products=args.variants // 2, variants_per_product=2, locations=1, token=TOKEN, seed=17)
    server = serve_in_thread(shop.build_app())
    with sessions() as session:
        account_rows.add_account(session, platform="shopify", code=ACCOUNT, credentials_env="STOCKSYNC_ACCOUNT_SHOP",
                                 base_url=server.url, allow_loopback=True)
        session.commit()
    env = fleet_env(redis_url=redis.url, database_url=url, backmarket_url="http://127.0.0.1:9", token=TOKEN,
                    backmarket_token="", accounts_allow_loopback="true", stocksync_account_shop=TOKEN,
                    shopify_page_size=args.page_size)
    log = folder / "fleet.log"
    fleet = WorkerFleet(env, processes=args.processes, threads=args.threads, log_path=log).start()
    broker = build_broker(Settings(redis_url=redis.url))
    try:
        print(f"machine: {os.cpu_count()} cores; fleet {args.processes} processes x {args.threads} threads; "
              f"{args.variants} variants at one location, pages of {args.page_size}; the standard plan's bucket "
              f"({STANDARD_MAXIMUM_AVAILABLE:g} points, {STANDARD_RESTORE_RATE:g}/s)")
        sync(shop, sessions, broker)
        pushes(shop, sessions, broker, args.pushes)
        lines = log.read_text(errors="ignore").splitlines()
        print(f"fleet log: {len(lines)} lines, {sum(' ERROR ' in line for line in lines)} ERROR ({log})")
    finally:
        fleet.stop()
        broker.close()
        server.stop()
        redis.stop()
        pg.stop()


def local(sessions) -> dict[str, int]:
    with sessions() as session:
        return dict(session.execute(text(
            "SELECT v.sku, s.listed FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id")).all())


def sync(shop: ShopifySandbox, sessions, broker) -> None:
    broker.enqueue(dramatiq.Message(queue_name=STOCK_SYNC, actor_name="start_stock_sync", args=(),
                                    kwargs={"marketplace": ACCOUNT, "force": True, "trigger": "manual"}, options={}))

    def run():
        with sessions() as session:
            return session.execute(text("SELECT * FROM sync_runs ORDER BY id DESC LIMIT 1")).mappings().first()

    wait_until(lambda: (found := run()) is not None and found["status"] != "running", 3600, interval=0.5,
               what="the sync")
    done = run()
    wall = (done["finished_at"] - done["started_at"]).total_seconds()
    pages, requested, actual = costs(shop, "StocksyncVariants", "StocksyncLocations")
    # Shopify admits a query on its requested cost and charges its actual cost: the bucket drains by the actual.
    bound, by_requested = bound_s(actual), bound_s(requested)
    print(f"sync: {done['status']}, {done['items']} variants in {done['pages_done']} pages, wall {wall:.1f} s; "
          f"cost requested {requested:,.0f}, actual {actual:,.0f} points; bound (actual - "
          f"{STANDARD_MAXIMUM_AVAILABLE:g}) / {STANDARD_RESTORE_RATE:g} = {bound:.1f} s (by requested cost "
          f"{by_requested:.1f} s); wall / bound {wall / bound if bound else float('nan'):.3f}x; "
          f"THROTTLED answers {shop.stats()['throttled']}; "
          f"every row equal to the shop: {local(sessions) == shop.truth()}")


def pushes(shop: ShopifySandbox, sessions, broker, count: int) -> None:
    events = StockEvents(broker)
    skus = sorted(shop.truth())[::max(1, len(shop.truth()) // count)][:count]
    expected = {sku: shop.available(sku) + 2 for sku in skus}
    before = costs(shop, "StocksyncLevel", "StocksyncSetAvailable")
    throttled = shop.stats()["throttled"]
    started = time.monotonic()
    for sku in skus:
        events.stock_topup(ACCOUNT, sku=sku, quantity=2, reference=f"bench-{sku}", actor="bench")
    wait_until(lambda: all(shop.available(sku) == units for sku, units in expected.items()), 3600, interval=0.2,
               what="the pushes")
    wall = time.monotonic() - started
    after = costs(shop, "StocksyncLevel", "StocksyncSetAvailable")
    answers, requested = after[0] - before[0], after[1] - before[1]
    per_push = requested / count
    bound = bound_s(requested)
    sustained = count / wall * 60
    print(f"pushes: {count} top-ups shown by the shop in {wall:.1f} s = {sustained:,.0f} pushes/min; {answers} "
          f"reads and writes, {per_push:.1f} points a push; bound ({requested:,.0f} - "
          f"{STANDARD_MAXIMUM_AVAILABLE:g}) / {STANDARD_RESTORE_RATE:g} = {bound:.1f} s, i.e. "
          f"{count / bound * 60 if bound else float('inf'):,.0f} pushes/min for this many "
          f"({STANDARD_RESTORE_RATE / per_push * 60:,.0f}/min once the bucket is empty); wall / bound "
          f"{wall / bound if bound else float('nan'):.3f}x; THROTTLED answers {shop.stats()['throttled'] - throttled}; "
          f"every row equal to the shop: {local(sessions) == shop.truth()}")


if __name__ == "__main__":
    main()
