"""The fleet under faults, end to end: real ``dramatiq workers.fleet`` processes, real Redis and PostgreSQL.

Each test runs the production defaults of the broker (heartbeat 60 s, maintenance chance 0.1%,
recovery every 5 s, outages ridden out for 30 minutes) unless it says why not.  The PostgreSQL outage
and the Redis restart run one fleet on several accounts at once (Back Market, Refurbed, Shopify: the
sides of ``tests/sides.py``; in the outage a second shop whose sync walks a bulk export), each ending
at its own true count and its marketplace's.  The SIGKILLed cursor chain (Refurbed, Shopify's pages
and its bulk file) runs the production page size and quota too: the sandbox's latency alone keeps a
fetch in flight to kill.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import pytest
import redis
from sqlalchemy import text

from db.engine import get_engine, session_factory
from db.ledger import check_invariant
from runtime.broker import build_broker
from runtime.local_servers import wait_until
from runtime.settings import Settings
from sandbox.backmarket import BackMarketSandbox
from sandbox.server import serve_in_thread
from tests.fleet import WorkerFleet, fleet_env
from tests.sides import (BackMarketSide, RefurbedSide, ShopifySide, Side, local_by_sku, off_by, seed_from, send_order,
                         send_topup, settled, sides_env)
from tests.test_e2e_stock_sync import TOKEN, local_stock, run_row, start_sync, wait_finished

pytestmark = pytest.mark.e2e

def default(name: str):
    """A setting's production default (whatever this process's environment says)."""
    return Settings.model_fields[name].default


#: The broker settings of production, which tests/fleet.py lowers for the other e2e tests.
PRODUCTION_BROKER = {name: str(default(name)) for name in (
    "dramatiq_heartbeat_timeout_ms", "dramatiq_maintenance_chance", "dramatiq_recovery_interval_s")}
#: What the README states: heartbeat timeout + one recovery interval + an idle consumer's poll (1 s).
RECOVERY_BOUND_S = default("dramatiq_heartbeat_timeout_ms") / 1000 + default("dramatiq_recovery_interval_s") + 1


@pytest.fixture
def sandbox():
    sandbox = BackMarketSandbox(listings=5000, seed=21, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    sandbox.url = server.url
    yield sandbox
    server.stop()


def unacked(client: redis.Redis, queue: str = "*") -> int:
    """Messages fetched by some worker and not acked yet, over every queue (or ``queue`` alone)."""
    return sum(client.scard(key) for key in client.scan_iter(f"dramatiq:__acks__.*.{queue}"))


def waiting(client: redis.Redis) -> int:
    """Messages not done yet, over every queue and delay queue: Redis keeps each in ``.msgs`` until acked."""
    return sum(client.hlen(key) for key in client.scan_iter("dramatiq:*.msgs") if b".XQ." not in key)


def dead_letters(client: redis.Redis) -> dict[str, int]:
    return {key.decode(): client.zcard(key) for key in client.scan_iter("dramatiq:*.XQ")}


def booked_orders(sessions) -> int:
    with sessions() as session:
        return session.execute(text("SELECT count(*) FROM stock_ledger WHERE change_type = 'order_created'")).scalar()


def test_sigkilled_worker_group_mid_sync_its_messages_come_back_within_the_bound(tmp_path, redis_url, database_url,
                                                                                   sandbox):
    # Latency and a quota of 20 pages a second keep the walk going for seconds (its fan-out due a window at a
    # time), so the victim has fetches in hand and delayed ones held when it is killed, however busy the machine.
    sandbox.configure(latency_s=0.05)
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=sandbox.url, token=TOKEN,
                    quota_requests=20, quota_window_s=1.0, **PRODUCTION_BROKER)
    victim = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "victim.log").start()
    survivor = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "survivor.log")
    sessions = session_factory(database_url)
    client = redis.Redis.from_url(redis_url)
    try:
        assert start_sync(env).returncode == 0
        wait_until(lambda: (row := run_row(sessions)) is not None and row["pages_done"] >= 15, 120,
                   interval=0.05, what="the sync to be under way")
        # Every message fetched so far is in the victim's hands; the survivor starts before the kill.
        held = unacked(client)
        survivor.start()
        victim.kill()
        killed_at = time.monotonic()
        assert held > 0 and run_row(sessions)["status"] == "running"
        run = wait_finished(sessions, RECOVERY_BOUND_S + 60)
        took = time.monotonic() - killed_at
        assert run["status"] == "succeeded", run["error"]
        assert run["pages_done"] == run["total_pages"] == 100
        # Every page left after the kill is a few seconds of work: the wait was the recovery.
        assert took <= RECOVERY_BOUND_S + 10, f"the sync finished {took:.0f} s after the kill"
        assert "message(s) of dead workers back on queue stock-" in (tmp_path / "survivor.log").read_text()
        assert local_stock(sessions) == sandbox.quantities()
        with sessions() as session:
            assert check_invariant(session) == []
        wait_until(lambda: unacked(client) == 0, 10, what="no message left unacked")
        print(f"sync finished {took:.1f} s after the SIGKILL (bound {RECOVERY_BOUND_S:.0f} s)")
    finally:
        victim.kill()
        survivor.stop()


def fleet_on_accounts(tmp_path, redis_url: str, database_url: str, sides: list, **settings):
    """Serve each side's sandbox, add and seed its account, start one fleet (2 processes x 8 threads) on them all.

    Returns the servers, the fleet's environment and the fleet; the caller stops the fleet and the servers.
    """
    servers = [serve_in_thread(side.app()) for side in sides]
    sessions = session_factory(database_url)
    for side, server in zip(sides, servers):
        side.add_account(sessions, server.url)
        seed_from(sessions, side)
    env = fleet_env(redis_url=redis_url, database_url=database_url,
                    **sides_env([(side, server.url) for side, server in zip(sides, servers)]),
                    **settings, **PRODUCTION_BROKER)
    return servers, env, WorkerFleet(env, processes=2, threads=8, log_path=tmp_path / "workers.log").start()


def account_run(sessions, account: str):
    with sessions() as session:
        return session.execute(text("SELECT * FROM sync_runs WHERE target = :a ORDER BY id DESC LIMIT 1"),
                               {"a": account}).mappings().first()


def lines_booked(sessions) -> tuple[int, int]:
    """Order events booked: ledger rows, and distinct (account, order line)s among them."""
    with sessions() as session:
        return tuple(session.execute(text(
            "SELECT count(*), count(DISTINCT (marketplace_id, order_line_id)) FROM stock_ledger "
            "WHERE change_type = 'order_created'")).one())


def assert_true_counts(sessions, sides: list, expected: dict[str, dict[str, int]]) -> None:
    """Every account's rows and its marketplace both at the true count (0 above, 0 below, printed)."""
    for side in sides:
        above, below = off_by(local_by_sku(sessions, side.account), expected[side.account])
        shown_above, shown_below = off_by(side.truth(), expected[side.account])
        print(f"{side.account}: {len(expected[side.account])} rows; local {len(above)} above, {len(below)} below; "
              f"marketplace {len(shown_above)} above, {len(shown_below)} below")
        assert (above, below) == ({}, {}), f"{side.account} rows (local, truth) above / below the true count"
        assert (shown_above, shown_below) == ({}, {}), f"{side.account} marketplace (shown, truth) off the true count"


#: Longer than the longest retry budget of the messages a sync and a burst send (a stock event: 10 retries
#: from 200 ms doubling up to 30 s, jitter up to 2x: about 141 s), as in the outage seen in production.
OUTAGE_S = 150


@pytest.mark.timeout(480)  # the outage alone is 150 s, then four accounts' syncs and pushes catch up
def test_postgres_down_longer_than_every_retry_budget_mid_sync_and_mid_burst_loses_nothing(
        tmp_path, redis_url, database_url, pg_server):
    # Four accounts in one outage (one 150-s run, not four): each sync still walking when PostgreSQL stops --
    # Back Market 30 pages at 2 a second, Refurbed a chain of 15 at 1 a second, Shopify 30 pages of 10 variants
    # at 32 points each from a bucket of 100 refilled at 40 a second, and the seller's second shop (the same
    # SKUs: one variation, a row on each shop) a bulk export of 600 variants, read 10 lines a page: its last
    # sync listed at least SHOPIFY_BULK_MIN_VARIANTS (560, the production default), the first shop's fewer.
    sides = [BackMarketSide(listings=1500, seed=5, token=TOKEN), RefurbedSide(offers=1500, seed=6, token=TOKEN),
             ShopifySide(products=150, seed=7, token=TOKEN, bucket=ShopifySide.SMALL_PLAN),
             ShopifySide(products=300, seed=8, token=TOKEN, bucket=ShopifySide.SMALL_PLAN, account="shop-2")]
    catalogue = {"backmarket": "pages", "refurbed": "pages", "shop": "pages", "shop-2": "bulk"}
    servers, env, fleet = fleet_on_accounts(
        tmp_path, redis_url, database_url, sides, quota_requests=2, quota_window_s=1.0, refurbed_quota_requests=1,
        refurbed_quota_window_s=1.0, shopify_page_size=10)
    sessions = session_factory(database_url)
    broker = build_broker(Settings(redis_url=redis_url))
    client = redis.Redis.from_url(redis_url)
    from actors import stock_sync

    expected = {side.account: side.truth() for side in sides}
    # 40 stocked rows of each account, spread over its pages; half sold before the outage, half during it.
    sold = {side.account: [sku for sku, quantity in sorted(expected[side.account].items()) if quantity][::5][:40]
            for side in sides}
    topped = {side.account: sold[side.account][::8] for side in sides}  # 5 deliveries each, pushed

    def sell(half: slice) -> None:
        for side in sides:
            for sku in sold[side.account][half]:
                send_order(broker, side, sku)
                expected[side.account][sku] -= 1

    try:
        before = {side.account: account_run(sessions, side.account)["id"] for side in sides}
        for side in sides:
            broker.enqueue(stock_sync.start_stock_sync.message_with_options(
                kwargs=dict(marketplace=side.account, force=True, trigger="manual")))
        sell(slice(0, 20))
        wait_until(lambda: all((run := account_run(sessions, side.account))["id"] != before[side.account]
                               and run["pages_done"] >= 3 for side in sides), 60, interval=0.05,
                   what="every account's sync under way")
        runs = {side.account: account_run(sessions, side.account) for side in sides}
        assert all(run["status"] == "running" for run in runs.values())
        pg_server.stop()
        stopped_at = time.monotonic()
        sell(slice(20, None))  # the second half of the burst, and the deliveries, arrive while PostgreSQL is down
        for side in sides:
            for n, sku in enumerate(topped[side.account]):
                send_topup(broker, side, sku, 2, f"PO-outage-{n}")
                expected[side.account][sku] += 2
        # The outage itself: the fleet keeps failing on the database meanwhile.
        wait_until(lambda: time.monotonic() - stopped_at >= OUTAGE_S, OUTAGE_S + 10, interval=1,
                   what="the end of the outage")
        assert dead_letters(client) == {}
        pg_server.start()
        get_engine(database_url).dispose()  # this process's pooled connections died with the server
        wait_until(lambda: all(account_run(sessions, side.account)["status"] != "running" for side in sides), 120,
                   interval=0.2, what="every sync to finish")
        for side in sides:
            run = account_run(sessions, side.account)
            assert run["status"] == "succeeded", (side.account, run["error"])
            assert run["pages_done"] == run["total_pages"] and run["items"] == len(expected[side.account]), \
                (side.account, dict(run))
            assert run["details"]["catalogue"] == catalogue[side.account], side.account
        orders = sum(map(len, sold.values()))
        wait_until(lambda: booked_orders(sessions) == orders and waiting(client) == 0 and settled(sessions), 120,
                   what="every event booked and every push sent")
        assert lines_booked(sessions) == (orders, orders)
        assert dead_letters(client) == {}
        assert_true_counts(sessions, sides, expected)
        with sessions() as session:
            assert check_invariant(session) == []
        assert "without spending a retry" in (tmp_path / "workers.log").read_text()
        print("pages applied when PostgreSQL stopped:", {account: run["pages_done"] for account, run in runs.items()})
    finally:
        if pg_server.process.poll() is not None:
            pg_server.start()
        fleet.stop()
        broker.close()
        for server in servers:
            server.stop()


def test_an_undecodable_message_is_dead_lettered_raw_and_its_neighbours_are_booked(tmp_path, redis_url,
                                                                                    database_url):
    side = BackMarketSide(listings=10, seed=6, token=TOKEN)
    sandbox = side.sandbox
    server = serve_in_thread(sandbox.build_app())
    sessions = session_factory(database_url)
    seed_from(sessions, side)
    broker = build_broker(Settings(redis_url=redis_url))
    client = redis.Redis.from_url(redis_url)
    listings = [sandbox.listing(i) for i in range(10)]
    # Queued before the worker starts: one fetch (prefetch 16) takes the bad payload with its 10 neighbours.
    for listing in listings[:5]:
        send_order(broker, side, listing["sku"])
    raw = b"\xff{not json at all"
    client.hset("dramatiq:stock-events.msgs", "raw-1", raw)
    client.rpush("dramatiq:stock-events", "raw-1")
    for listing in listings[5:]:
        send_order(broker, side, listing["sku"])
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=server.url, token=TOKEN,
                    **PRODUCTION_BROKER)
    fleet = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "workers.log").start()
    try:
        wait_until(lambda: booked_orders(sessions) == 10 and waiting(client) == 0, 60,
                   what="the 10 valid events booked")
        assert dead_letters(client) == {"dramatiq:stock-events.XQ": 1}
        assert client.hget("dramatiq:stock-events.XQ.msgs", "raw-1") == raw
        from runtime.dlq import DeadLetterQueues

        [letter] = DeadLetterQueues(client).select(queue="stock-events")
        assert letter.message is None and letter.payload == raw
        assert letter.error.startswith("DecodeError: undecodable message payload")
        assert unacked(client) == 0
        assert local_stock(sessions) == sandbox.quantities()
    finally:
        fleet.stop()
        broker.close()
        server.stop()


def test_a_sync_whose_queued_pages_vanish_from_redis_is_resumed_from_postgres(tmp_path, redis_url, database_url):
    # 2 pages a second across the fleet: the 30 pages are mostly still queued when they are flushed.
    sandbox = BackMarketSandbox(listings=1500, seed=7, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    sessions = session_factory(database_url)
    # SYNC_RESUME_AFTER_S is 180 s in production; 10 s here, since the wait itself tests nothing:
    # what is tested is that the missing pages are found in PostgreSQL and fetched again.
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=server.url, token=TOKEN,
                    quota_requests=2, quota_window_s=1.0, sync_resume_after_s="10", **PRODUCTION_BROKER)
    fleet = WorkerFleet(env, processes=1, threads=2, log_path=tmp_path / "workers.log").start()
    broker = build_broker(Settings(redis_url=redis_url))
    client = redis.Redis.from_url(redis_url)
    try:
        assert start_sync(env).returncode == 0
        wait_until(lambda: (row := run_row(sessions)) is not None and row["pages_done"] >= 5, 60,
                   interval=0.05, what="the sync to be under way")
        # A worker crash and a Redis restart without persistence together: the fan-out's pages (due a
        # quota window at a time, so mostly delayed messages in the worker's hands) are gone everywhere.
        fleet.kill()
        for queue in ("stock-fetch", "stock-apply"):
            for name in (queue, f"{queue}.DQ"):
                client.delete(f"dramatiq:{name}", f"dramatiq:{name}.msgs")
        client.delete(*client.keys("dramatiq:__acks__.*") or ["-"])
        fleet = WorkerFleet(env, processes=1, threads=2, log_path=tmp_path / "workers-after.log").start()
        def stalled() -> bool:
            with sessions() as session:
                return session.execute(text(
                    "SELECT clock_timestamp() - heartbeat_at > interval '10 seconds' FROM sync_runs WHERE id = :s"),
                    {"s": run_row(sessions)["id"]}).scalar()

        wait_until(stalled, 60, interval=0.5, what="the sync to stall")
        assert run_row(sessions)["status"] == "running" and run_row(sessions)["pages_done"] < 30
        from actors import stock_sync  # what the scheduler's stock_sync_resume job sends every minute

        broker.enqueue(stock_sync.resume_stalled_syncs.message("backmarket"))
        run = wait_finished(sessions, 90)
        assert run["status"] == "succeeded", run["error"]
        assert run["pages_done"] == run["total_pages"] == 30
        assert local_stock(sessions) == sandbox.quantities()
        with sessions() as session:
            assert session.execute(text("SELECT count(*) FROM sync_pages WHERE sync_id = :s"),
                                   {"s": run["id"]}).scalar() == 30
            assert session.execute(text("SELECT details->>'resumes' FROM sync_runs WHERE id = :s"),
                                   {"s": run["id"]}).scalar() == "1"
            assert check_invariant(session) == []
    finally:
        fleet.stop()
        broker.close()
        server.stop()


#: Each platform's side with 10 listings: a one-row push (Back Market), a batch push (Refurbed), a compare-and-set
#: push (Shopify).
SMALL = {"backmarket": lambda: BackMarketSide(listings=10, seed=8, token=TOKEN),
         "refurbed": lambda: RefurbedSide(offers=10, seed=8, token=TOKEN),
         "shopify": lambda: ShopifySide(products=5, seed=8, token=TOKEN)}


@pytest.mark.parametrize("platform", sorted(SMALL))
def test_a_topup_whose_push_message_vanished_is_pushed_by_the_sweep(tmp_path, redis_url, database_url, platform):
    side = SMALL[platform]()
    server = serve_in_thread(side.app())
    sessions = session_factory(database_url)
    side.add_account(sessions, server.url)
    seed_from(sessions, side)
    broker = build_broker(Settings(redis_url=redis_url))
    client = redis.Redis.from_url(redis_url)
    env = fleet_env(redis_url=redis_url, database_url=database_url, **sides_env([(side, server.url)]),
                    **PRODUCTION_BROKER)
    sku = side.items()[3]["sku"]
    expected = side.truth()
    expected[sku] += 4
    from actors import events

    # Only the events queue is consumed: the booking's push message waits on stock-push, and vanishes there.
    booker = WorkerFleet(env, processes=1, threads=2, queues=("stock-events",),
                         log_path=tmp_path / "booker.log").start()
    fleet = None
    try:
        send_topup(broker, side, sku, 4, "PO-lost-push")
        wait_until(lambda: client.hlen("dramatiq:stock-push.msgs") == 1, 60, what="the booking and its push message")
        booker.stop()
        client.delete("dramatiq:stock-push", "dramatiq:stock-push.msgs")  # a Redis restart without persistence
        with sessions() as session:
            # The sweep leaves a push alone for its first minute (its message may still be on its way): aged by
            # hand rather than waited for.
            session.execute(text(
                "UPDATE marketplace_stock SET push_requested_at = push_requested_at - interval '2 minutes' "
                "WHERE push_state = 'pending'"))
            session.commit()
        fleet = WorkerFleet(env, processes=1, threads=4, log_path=tmp_path / "workers.log").start()
        broker.enqueue(events.sweep_stock.message(side.account))  # the scheduler's stock_sweep job
        wait_until(lambda: side.quantity(sku) == expected[sku], 60, what="the push")
        wait_until(lambda: settled(sessions), 30, what="the row pushed")
        assert side.truth() == expected and local_by_sku(sessions, side.account) == expected
    finally:
        booker.stop()
        if fleet:
            fleet.stop()
        broker.close()
        server.stop()


def test_a_page_dead_lettered_while_postgres_is_down_still_fails_its_run(tmp_path, redis_url, database_url,
                                                                         pg_server):
    # Page 30 of 30 is malformed: its fetch fails for good (no database needed), its run must become failed.
    sandbox = BackMarketSandbox(listings=1500, seed=9, token=TOKEN, quota_requests=0, malformed_pages={30})
    server = serve_in_thread(sandbox.build_app())
    sessions = session_factory(database_url)
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=server.url, token=TOKEN,
                    quota_requests=5, quota_window_s=1.0, **PRODUCTION_BROKER)
    fleet = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "workers.log").start()
    client = redis.Redis.from_url(redis_url)
    log = tmp_path / "workers.log"
    try:
        assert start_sync(env).returncode == 0
        wait_until(lambda: (row := run_row(sessions)) is not None and row["pages_done"] >= 2, 60,
                   interval=0.05, what="the sync to be under way")
        sync_id = run_row(sessions)["id"]
        pg_server.stop()
        wait_until(lambda: client.zcard("dramatiq:stock-fetch.XQ") == 1, 60, what="page 30 dead-lettered")
        wait_until(lambda: "dead-letter handler of message" in log.read_text(), 30, what="the handler to fail")
        pg_server.start()
        get_engine(database_url).dispose()  # this process's pooled connections died with the server
        run = wait_finished(sessions, 60)
        assert run["id"] == sync_id and run["status"] == "failed"
        assert "page 30 failed for good" in run["error"]
        assert "deferred dead-letter handler of message" in log.read_text()
        # The lock is free at once: a forced sync starts (it would have been refused for 15 minutes).
        assert start_sync(env, "--force").returncode == 0
    finally:
        if pg_server.process.poll() is not None:
            pg_server.start()
        fleet.stop()
        server.stop()


def test_rechecks_waiting_on_the_catalog_quota_leave_threads_to_order_booking(tmp_path, redis_url, database_url):
    side = BackMarketSide(listings=40, seed=10, token=TOKEN)
    sandbox = side.sandbox
    server = serve_in_thread(sandbox.build_app())
    sessions = session_factory(database_url)
    seed_from(sessions, side)
    flagged = [sandbox.listing(i) for i in range(12)]
    with sessions() as session:
        session.execute(text(
            "UPDATE marketplace_stock s SET needs_recheck = true, recheck_since = now() - interval '1 hour' "
            "FROM variations v WHERE v.id = s.variation_id AND v.sku = ANY(:skus)"),
            {"skus": [listing["sku"] for listing in flagged]})
        session.commit()
    broker = build_broker(Settings(redis_url=redis_url))
    from actors import events

    # One catalog call every 2 s across the fleet: 12 re-checks need 24 s of quota.
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=server.url, token=TOKEN,
                    quota_requests=1, quota_window_s=2.0, **PRODUCTION_BROKER)
    for listing in flagged:
        broker.enqueue(events.recheck_stock.message("backmarket", listing["sku"]))
    ordered = [sandbox.listing(i) for i in range(20, 40)]
    for listing in ordered:
        send_order(broker, side, listing["sku"])
    fleet = WorkerFleet(env, processes=1, threads=4, log_path=tmp_path / "workers.log").start()

    def rechecks_left() -> int:
        with sessions() as session:
            return session.execute(text("SELECT count(*) FROM marketplace_stock WHERE needs_recheck")).scalar()

    try:
        wait_until(lambda: booked_orders(sessions) == len(ordered), 60, what="the orders booked")
        # Booked while most re-checks still wait for quota: they held 2 of the 4 threads, not all.
        assert rechecks_left() >= 6
        wait_until(lambda: rechecks_left() == 0, 90, what="the re-checks done")
        assert local_stock(sessions) == sandbox.quantities()
    finally:
        fleet.stop()
        broker.close()
        server.stop()


class PersistentRedis:
    """A redis-server of our own with the production persistence (deploy/redis/redis.conf), restartable in place."""

    def __init__(self, folder) -> None:
        import shutil

        from runtime.local_servers import free_port
        from tests.fleet import ROOT

        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = [shutil.which("redis-server"), str(ROOT / "deploy/redis/redis.conf"), "--port", str(self.port),
                     "--dir", str(folder), "--bind", "127.0.0.1"]
        self.client = redis.Redis.from_url(self.url)
        self.process = None

    def start(self) -> "PersistentRedis":
        import subprocess

        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: _pings(self.client), 15, what="redis-server")
        return self

    def restart(self, while_down=None) -> None:
        """A clean restart (SIGTERM): the append-only file keeps every key; ``while_down()`` runs in between."""
        self.process.terminate()
        self.process.wait(30)
        if while_down is not None:
            while_down()
        self.start()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)


def test_delayed_messages_a_live_worker_held_survive_a_redis_restart(tmp_path, database_url):
    server = PersistentRedis(tmp_path).start()
    client = server.client
    side = BackMarketSide(listings=10, seed=11, token=TOKEN)
    sandbox = side.sandbox
    http = serve_in_thread(sandbox.build_app())
    sessions = session_factory(database_url)
    seed_from(sessions, side)
    broker = build_broker(Settings(redis_url=server.url))
    from actors import events

    env = fleet_env(redis_url=server.url, database_url=database_url, backmarket_url=http.url, token=TOKEN,
                    **PRODUCTION_BROKER)
    fleet = WorkerFleet(env, processes=1, threads=2, log_path=tmp_path / "workers.log").start()
    try:
        for i in range(5):  # re-checks due in 20 s (rows not flagged: each is done as soon as it runs)
            broker.enqueue(events.recheck_stock.message("backmarket", sandbox.listing(i)["sku"]), delay=20_000)
        wait_until(lambda: unacked(client) == 5, 30, what="the delayed re-checks in the worker's hands")
        log = tmp_path / "workers.log"
        # Down until the delay queue's consumer has met the outage (it then drops what it held).
        server.restart(while_down=lambda: wait_until(
            lambda: any("ConsumerThread(stock-recheck.DQ)" in line and "Consumer encountered a connection error" in line
                        for line in log.read_text().splitlines()),
            30, what="the delay queue's consumer to lose its connection"))
        assert unacked(client) == 5
        wait_until(lambda: waiting(client) == 0 and unacked(client) == 0, 60,
                   what="the delayed re-checks to run after the restart")
        assert "put 5 delayed message(s) it held back on the queue" in log.read_text()
    finally:
        fleet.stop()
        broker.close()
        http.stop()
        server.kill()


def test_redis_restarted_mid_burst_loses_doubles_and_strands_nothing(tmp_path, database_url):
    server = PersistentRedis(tmp_path).start()
    client = server.client
    sides = [BackMarketSide(listings=100, seed=12, token=TOKEN), RefurbedSide(offers=100, seed=13, token=TOKEN),
             ShopifySide(products=50, seed=14, token=TOKEN)]
    sessions = session_factory(database_url)
    broker = build_broker(Settings(redis_url=server.url))
    expected = {side.account: side.truth() for side in sides}
    # 3 orders on each row that has them, and a delivery on every fifth, pushes racing the orders' events.
    sold = {side.account: [sku for sku, quantity in sorted(expected[side.account].items()) if quantity >= 3] * 3
            for side in sides}
    servers, env, fleet = fleet_on_accounts(tmp_path, server.url, database_url, sides)
    fleets = [fleet, WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "w2.log").start()]
    orders = sum(map(len, sold.values()))
    try:
        for side in sides:
            for n, sku in enumerate(sold[side.account]):
                send_order(broker, side, sku)
                expected[side.account][sku] -= 1
                if n % 5 == 0:
                    send_topup(broker, side, sku, 2, f"PO-restart-{n}")
                    expected[side.account][sku] += 2
        wait_until(lambda: booked_orders(sessions) >= orders // 5, 60, interval=0.01, what="the burst under way")
        at_restart = booked_orders(sessions)
        assert at_restart < orders
        server.restart()
        wait_until(lambda: booked_orders(sessions) == orders and waiting(client) == 0 and settled(sessions), 120,
                   what="every event booked and every push sent")
        assert lines_booked(sessions) == (orders, orders)
        with sessions() as session:
            assert check_invariant(session) == []
        wait_until(lambda: unacked(client) == 0, 30, what="nothing left unacked")
        assert dead_letters(client) == {}
        assert_true_counts(sessions, sides, expected)
        print(f"{orders} orders on 3 accounts, {at_restart} booked when Redis restarted")
    finally:
        for fleet in fleets:
            fleet.stop()
        broker.close()
        for http in servers:
            http.stop()
        server.kill()


def _pings(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


@dataclass(frozen=True)
class Chain:
    """A cursor walk to SIGKILL: its side, the rows it lists (100 a page), pages applied before the kill, its catalogue.

    A bulk walk has one page more: page 1 starts the export and reads nothing, page 2 reads the file's first lines.
    """

    make: Callable[[], Side]
    listed: int
    kill_after: int
    catalogue: str = "pages"

    @property
    def first_read(self) -> int:
        """The first page that reads the marketplace's catalogue (a page or the file)."""
        return 2 if self.catalogue == "bulk" else 1

    @property
    def pages(self) -> int:
        return self.listed // 100 + self.first_read - 1


#: The cursor walks under a SIGKILL, at the production page size (100) and quota / cost bucket: Refurbed's 3000
#: offers (30 pages, 10 calls a second), Shopify's 1000 variants (10 pages of about 300 points, from a bucket of
#: 2000 refilled at 100 a second: 6 pages at once, then one every 3 s).  The sandbox's latency keeps a page's
#: fetch in flight to kill; the bucket refills while the messages wait for recovery, so the rest is quick.
#: ``shopify-bulk``: the same 1000 variants as a bulk export's file (11 pages of 1 point each, its reads from a
#: byte offset); SHOPIFY_BULK_MIN_VARIANTS 0 so that this first sync is bulk and writes every row itself (a
#: seeded catalogue would equal the shop already), polled every 0.5 s of the 2 s the sandbox takes to export.
CHAINS = {"refurbed": Chain(lambda: RefurbedSide(offers=3000, seed=31, latency_s=0.1), 3000, 8),
          "shopify": Chain(lambda: ShopifySide(products=500, seed=31, latency_s=0.1), 1000, 4),
          "shopify-bulk": Chain(lambda: ShopifySide(products=500, seed=32, latency_s=0.1, bulk=True,
                                                    bulk_objects_per_s=1000), 1000, 4, "bulk")}


@pytest.mark.parametrize("platform", sorted(CHAINS))
def test_sigkilled_worker_group_mid_cursor_chain_resumes_after_the_last_applied_page(tmp_path, redis_url,
                                                                                      database_url, platform):
    chain = CHAINS[platform]
    listed, kill_after, pages = chain.listed, chain.kill_after, chain.pages
    side = chain.make()
    server = serve_in_thread(side.app())
    sessions = session_factory(database_url)
    side.add_account(sessions, server.url)
    env = fleet_env(redis_url=redis_url, database_url=database_url, **sides_env([(side, server.url)]),
                    **PRODUCTION_BROKER)
    victim = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "victim.log").start()
    restarted = None
    client = redis.Redis.from_url(redis_url)
    broker = build_broker(Settings(redis_url=redis_url))
    from actors import stock_sync  # a message factory only: the fleet does the work

    def applied(sync_id: int) -> dict[int, str | None]:
        with sessions() as session:
            return dict(session.execute(text("SELECT page, next_cursor FROM sync_pages WHERE sync_id = :s"),
                                        {"s": sync_id}).all())

    try:
        broker.enqueue(stock_sync.start_stock_sync.message_with_options(
            kwargs=dict(marketplace=side.account, force=True, trigger="manual")))
        # A fetch in hand, not only an apply (one applied but not acked yet would come back to no effect).
        wait_until(lambda: (row := run_row(sessions)) is not None and row["pages_done"] >= kill_after
                   and unacked(client, "stock-fetch"), 120, interval=0.02,
                   what="the walk under way with a fetch in hand")
        victim.kill()
        killed_at = time.monotonic()
        run_id = run_row(sessions)["id"]
        at_kill = applied(run_id)
        fetched_before = len(side.walk_cursors())
        assert run_row(sessions)["status"] == "running" and len(at_kill) < pages
        # The group comes back (its supervisor restarts it); the messages the dead one held come back
        # to it once their worker's heartbeat is older than the timeout.
        restarted = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "restarted.log").start()
        run = wait_finished(sessions, RECOVERY_BOUND_S + 60)
        took = time.monotonic() - killed_at
        assert run["status"] == "succeeded", run["error"]
        assert (run["pages_done"], run["total_pages"], run["items"]) == (pages, pages, listed)
        assert run["details"]["catalogue"] == chain.catalogue
        # The rest of the walk is a few seconds of work: the wait was the recovery.
        assert took <= RECOVERY_BOUND_S + 15, f"the sync finished {took:.0f} s after the SIGKILL"

        # Every page applied once (sync_pages), and each stock row written by at most one of them.
        done = applied(run_id)
        assert sorted(done) == list(range(1, pages + 1)) and done[pages] is None
        with sessions() as session:
            assert session.execute(text("SELECT sum(items) FROM sync_pages WHERE sync_id = :s"),
                                   {"s": run_id}).scalar() == listed
            assert session.execute(text(
                "SELECT count(*) FROM (SELECT stock_id FROM stock_ledger WHERE sync_id = :s GROUP BY stock_id "
                "HAVING count(*) > 1) twice"), {"s": run_id}).scalar() == 0
            assert check_invariant(session) == []
        # The chain went on from the cursor stored with the last page applied before the kill: no page
        # applied by then was fetched again, and only a page in flight at the kill was fetched twice.
        # The cursor each page is fetched from is the one stored with the page before it (cursors.index
        # raises on any other): a resumed fetch starts from PostgreSQL's cursor, not from a guess.
        # A bulk walk's cursors are its file reads (operation, Range offset): page 1 starts the export, reads none.
        cursors = [None] + [done[page] for page in range(1, pages)]
        walked = side.walk_cursors()
        before_kill = [cursors.index(cursor) + 1 for cursor in walked[:fetched_before]]
        after_kill = [cursors.index(cursor) + 1 for cursor in walked[fetched_before:]]
        last_applied = max(at_kill)
        # Resumed between the last page applied and the first page never fetched.
        assert after_kill and last_applied < min(after_kill) <= max(before_kill) + 1, (last_applied, after_kill)
        fetches = Counter(before_kill + after_kill)
        assert set(fetches) == set(range(chain.first_read, pages + 1))
        twice = sorted(page for page, count in fetches.items() if count > 1)
        assert all(page > last_applied for page in twice) and max(fetches.values()) <= 2, twice
        # Every row equals the marketplace.
        assert local_by_sku(sessions, side.account) == side.truth()
        wait_until(lambda: unacked(client) == 0, 10, what="no message left unacked")
        print(f"{platform} cursor walk finished {took:.1f} s after the SIGKILL (bound {RECOVERY_BOUND_S:.0f} s + "
              f"15 s); {len(at_kill)} page(s) applied before it, fetched twice: {twice}")
    finally:
        victim.kill()
        if restarted is not None:
            restarted.stop()
        broker.close()
        server.stop()
