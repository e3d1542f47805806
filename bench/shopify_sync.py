"""A Shopify shop synced and pushed to at the standard plan's rate, against the query-cost bound.

    .venv/bin/python bench/shopify_sync.py [--variants 20000] [--pushes 600] [--page-size 100]
        [--processes 2] [--threads 8]
    .venv/bin/python bench/shopify_sync.py --compare 500,1000,2000,5000,20000

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

``--compare SIZES``: paged walks against bulk operations instead.  One shop per size and walk (a fresh
account: its first sync, rows created), each on its own bucket; a fleet whose
``SHOPIFY_BULK_MIN_VARIANTS`` is out of reach walks pages, then one whose threshold is 0 walks bulk
files.  Per size: each walk's wall time (``sync_runs``), its points (what the sandbox charged), the
crossover (the size from which bulk is faster, interpolated between the sizes measured).  A bulk
operation's export time is the sandbox's dial (``bulk_startup_s`` + objects / ``bulk_objects_per_s``,
printed), an assumption where the paged side is Shopify's documented bucket.
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
    parser.add_argument("--compare", help="comma-separated catalogue sizes: paged against bulk at each")
    args = parser.parse_args()
    if args.compare:
        try:
            sizes = sorted({int(size) for size in args.compare.split(",")})
        except ValueError:
            parser.error(f"--compare takes comma-separated integers, got {args.compare!r}")
        if sizes[0] < 2:
            parser.error("--compare sizes must be at least 2")
        compare(sizes, args)
        return
    if args.variants < 2 or not 1 <= args.pushes <= args.variants or not 1 <= args.page_size <= 250:
        parser.error("--variants >= 2, --pushes in 1..variants, --page-size in 1..250")

    folder, pg, redis, url, sessions = stores("bench-shopify-")
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


def stores(prefix: str):
    """Durable PostgreSQL (migrated) and Redis in a new folder: ``(folder, pg, redis, database url, sessions)``."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    pg = PostgresServer(folder / "pg", options=DURABLE).start()
    redis = RedisServer(folder / "redis").start()
    url = pg.create_database("bench_shopify")
    upgrade(url)
    return folder, pg, redis, url, session_factory(url)


def compare(sizes: list[int], args) -> None:
    """Paged walks, then bulk walks, at each size; the crossover."""
    folder, pg, redis, url, sessions = stores("bench-shopify-compare-")
    dials = ShopifySandbox(products=0).dials()
    print(f"machine: {os.cpu_count()} cores; fleet {args.processes} processes x {args.threads} threads; one location, "
          f"pages of {args.page_size}; the standard plan's bucket ({STANDARD_MAXIMUM_AVAILABLE:g} points, "
          f"{STANDARD_RESTORE_RATE:g}/s); the sandbox's bulk export: {dials['bulk_startup_s']:g} s + objects / "
          f"{dials['bulk_objects_per_s']:g} a second; SHOPIFY_BULK_POLL_S 2")
    walls: dict[str, dict[int, float]] = {"paged": {}, "bulk": {}}
    for walk, minimum in (("paged", 10**9), ("bulk", 0)):
        shops, servers, credentials = {}, [], {}
        for size in sizes:
            shop = ShopifySandbox(products=size // 2, variants_per_product=2, locations=1, token=TOKEN, seed=17)
            servers.append(serve_in_thread(shop.build_app()))
            code = f"{walk}-{size}"
            credentials[f"stocksync_account_{walk}_{size}"] = TOKEN
            with sessions() as session:
                account_rows.add_account(session, platform="shopify", code=code,
                                         credentials_env=f"STOCKSYNC_ACCOUNT_{walk.upper()}_{size}",
                                         base_url=servers[-1].url, allow_loopback=True)
                session.commit()
            shops[code] = shop
        env = fleet_env(redis_url=redis.url, database_url=url, backmarket_url="http://127.0.0.1:9", token=TOKEN,
                        backmarket_token="", accounts_allow_loopback="true", shopify_page_size=args.page_size,
                        shopify_bulk_min_variants=minimum, **credentials)
        fleet = WorkerFleet(env, processes=args.processes, threads=args.threads,
                            log_path=folder / f"fleet-{walk}.log").start()
        broker = build_broker(Settings(redis_url=redis.url))
        try:
            for size in sizes:
                code = f"{walk}-{size}"
                done = run_sync(sessions, broker, code)
                wall = (done["finished_at"] - done["started_at"]).total_seconds()
                walls[walk][size] = wall
                found = shops[code].stats()["query_costs"]
                points = sum(each["actual"] for each in found.values())
                calls = sum(each["answers"] for each in found.values())
                print(f"{walk:>5} {size:>6} variants: {done['status']}, {done['catalogue']}, wall {wall:7.1f} s, "
                      f"{done['pages_done']} pages, {calls} GraphQL calls, {points:,.0f} points "
                      f"({points / size:.2f} a variant); bound by the bucket {bound_s(points):.1f} s; every row "
                      f"equal to the shop: {local(sessions, code) == shops[code].truth()}")
        finally:
            fleet.stop()
            broker.close()
            for server in servers:
                server.stop()
            for shop in shops.values():
                shop.close()
    print("size      paged      bulk   bulk/paged")
    for size in sizes:
        print(f"{size:>6} {walls['paged'][size]:8.1f} s {walls['bulk'][size]:7.1f} s   "
              f"{walls['bulk'][size] / walls['paged'][size]:.2f}x")
    print(f"crossover: {crossover(sizes, walls['paged'], walls['bulk'])}")
    redis.stop()
    pg.stop()


def crossover(sizes: list[int], paged: dict[int, float], bulk: dict[int, float]) -> str:
    """From which size bulk is faster: between the two measured sizes where the difference changes sign."""
    gaps = [paged[size] - bulk[size] for size in sizes]
    if all(gap > 0 for gap in gaps):
        return f"bulk is faster at every size measured (from {sizes[0]} variants or fewer)"
    if all(gap <= 0 for gap in gaps):
        return f"paged is faster at every size measured (up to {sizes[-1]} variants)"
    for (low, high), (before, after) in zip(zip(sizes, sizes[1:]), zip(gaps, gaps[1:])):
        if before <= 0 < after:
            at = low + (high - low) * (-before) / (after - before)
            return f"about {at:,.0f} variants (bulk slower at {low}, faster at {high}; linear between them)"
    return "the sizes measured disagree (bulk faster, then slower): measure again"


def run_sync(sessions, broker, account: str) -> dict:
    """Start a sync of ``account`` and wait for it to end: its run, with ``catalogue`` (the walk it took)."""
    broker.enqueue(dramatiq.Message(queue_name=STOCK_SYNC, actor_name="start_stock_sync", args=(),
                                    kwargs={"marketplace": account, "force": True, "trigger": "manual"}, options={}))

    def run():
        with sessions() as session:
            return session.execute(text("SELECT *, details->>'catalogue' AS catalogue FROM sync_runs WHERE target = :t "
                                        "ORDER BY id DESC LIMIT 1"), {"t": account}).mappings().first()

    wait_until(lambda: (found := run()) is not None and found["status"] != "running", 3600, interval=0.5,
               what=f"the sync of {account}")
    return dict(run())


def local(sessions, account: str = ACCOUNT) -> dict[str, int]:
    """SKU -> listed of ``account``'s rows."""
    with sessions() as session:
        return dict(session.execute(text(
            "SELECT v.sku, s.listed FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :code"), {"code": account}).all())


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
