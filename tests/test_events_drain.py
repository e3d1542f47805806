"""Re-checks and pushes drained from PostgreSQL per marketplace: real PostgreSQL and Redis, the sandbox over HTTP.

The drain messages are handled here in order by a small loop standing in for the broker (a
delayed one runs once its delay has passed), so the test counts every message and log line.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from core.events import StockEvent
from db.events import record_stock_events
from pipelines import drain as drains
from runtime import resources
from runtime.local_servers import wait_until
from runtime.settings import Settings, get_settings
from sandbox.backmarket import BackMarketSandbox
from sandbox.server import serve_in_thread
from tests.fleet import seed_catalogue

TOKEN = "drain-token"
ROWS = 60
BATCH = 10


@pytest.fixture
def world(monkeypatch, database_url, redis_url):
    sandbox = BackMarketSandbox(listings=ROWS, seed=21, token=TOKEN, quota_requests=0, lines_per_window=0)
    server = serve_in_thread(sandbox.build_app())
    settings = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "BACKMARKET_BASE_URL": server.url,
                "BACKMARKET_TOKEN": TOKEN, "BACKMARKET_QUOTA_REQUESTS": "20", "BACKMARKET_QUOTA_WINDOW_S": "1",
                "RATE_LIMIT_MARGIN_S": "0.05", "STOCK_DRAIN_BATCH": str(BATCH), "STOCK_EVENT_SKEW_S": "1"}

    def configure(**more: str) -> None:
        for name, value in {**settings, **more}.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        resources.database_url.cache_clear()

    configure()
    sessions = resources.sessions()
    listings = [sandbox.listing(i) for i in range(ROWS)]
    seed_catalogue(sessions, listings)
    yield {"sandbox": sandbox, "listings": listings, "sessions": sessions, "configure": configure}
    server.stop()
    get_settings.cache_clear()
    resources.database_url.cache_clear()


class Broker:
    """The drain messages asked for, handled one at a time in order (a delayed one once it is due)."""

    def __init__(self) -> None:
        self.waiting: list[tuple[float, str, str]] = []
        self.handled: list[drains.DrainRun] = []
        self.delays: list[int] = []

    def send(self, kind: str, marketplace: str, delay_ms: int) -> None:
        self.delays.append(delay_ms)
        self.waiting.append((time.monotonic() + delay_ms / 1000, kind, marketplace))

    def run(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.waiting:
            self.waiting.sort()
            due, kind, marketplace = self.waiting[0]
            wait_until(lambda: time.monotonic() >= due, max(1.0, deadline - time.monotonic()), interval=0.02,
                       what="the drain message's delay")
            self.waiting.pop(0)
            self.handled.append(drains.drain(kind, marketplace, f"message-{len(self.handled)}", self.send))


def flag(world, listings, *, ago: timedelta = timedelta(hours=1)) -> None:
    with world["sessions"]() as session:
        session.execute(text(
            "UPDATE marketplace_stock s SET needs_recheck = true, recheck_since = :since "
            "FROM variations v WHERE v.id = s.variation_id AND v.sku = ANY(:skus)"),
            {"since": datetime.now(timezone.utc) - ago, "skus": [listing["sku"] for listing in listings]})
        session.commit()


def flagged(world) -> int:
    with world["sessions"]() as session:
        return session.execute(text("SELECT count(*) FROM marketplace_stock WHERE needs_recheck")).scalar()


def topup(world, listing, quantity: int, reference: str) -> None:
    with world["sessions"]() as session:
        record_stock_events(session, [StockEvent.from_message("stock_topup", (), dict(
            marketplace="backmarket", sku=listing["sku"], quantity=quantity, reference=reference))])
        session.commit()


def scale_data_limit(world, lines: int, window_s: float) -> None:
    """The data limit scaled down to ``lines`` per ``window_s``, on our side and the sandbox's, and no drain
    sits out a wait for a line.  With the production margin (the fixture's is smaller, for speed): our
    window and the sandbox's clock see a request at slightly different moments, which is what it is for."""
    world["sandbox"].configure(lines_per_window=lines, lines_window_s=window_s)
    world["configure"](BACKMARKET_PUSH_LINES_PER_HOUR=str(lines), BACKMARKET_PUSH_LINES_WINDOW_S=str(window_s),
                       STOCK_DRAIN_MAX_WAIT_S="0",
                       RATE_LIMIT_MARGIN_S=str(Settings.model_fields["rate_limit_margin_s"].default))


def test_a_burst_of_flagged_rows_is_drained_in_batches_each_row_read_once(world, caplog):
    flag(world, world["listings"])
    broker = Broker()
    caplog.set_level(logging.INFO)
    # Every booking of the burst asks for a drain: one message goes out.
    sent = [drains.request("recheck", "backmarket", broker.send) for _ in range(ROWS)]
    assert sent.count(True) == 1
    world["sandbox"].reset_stats()
    started = time.monotonic()
    broker.run()
    assert flagged(world) == 0
    # Each row read once (one GET each), at the quota's pace: 60 reads at 20 per second.
    assert world["sandbox"].stats()["by_endpoint"] == {"GET /ws/listings/{listingId}": ROWS}
    assert time.monotonic() - started >= (ROWS - 20) / 20 * 0.9
    assert len(broker.handled) <= ROWS // BATCH + 2 and sum(run.rows for run in broker.handled) == ROWS
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "was skipped" not in caplog.text
    # A later request starts a drain again (the marker went with the drain that ended).
    assert drains.request("recheck", "backmarket", broker.send)


def test_a_short_run_hands_over_and_only_one_drain_runs_at_a_time(world, caplog):
    world["configure"](STOCK_DRAIN_RUN_S="0.5")
    flag(world, world["listings"])
    broker = Broker()
    caplog.set_level(logging.INFO)
    drains.request("recheck", "backmarket", broker.send)
    # A second drain while one holds the marketplace's lock does nothing.
    from runtime.locks import LeaderLock

    held = LeaderLock(resources.sync_redis(), "stocksync:drain:recheck:backmarket:lock", 30, token="other")
    assert held.acquire()
    assert drains.drain("recheck", "backmarket", "message-x", broker.send).status == "busy"
    assert held.release()
    broker.run()
    assert flagged(world) == 0
    runs = [run for run in broker.handled if run.rows]
    assert len(runs) >= 2  # each handed over after half a second
    assert len(broker.handled) <= ROWS // BATCH + 2 and sum(run.rows for run in broker.handled) == ROWS
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_an_ambiguous_row_is_read_again_later_not_in_a_loop(world):
    listing = world["listings"][0]
    flag(world, [listing])
    # An order right now: a read now cannot tell whether it counts it.
    with world["sessions"]() as session:
        record_stock_events(session, [StockEvent.from_message("order_created", (), dict(
            marketplace="backmarket", order_id="o-1", order_line_id="l-1", sku=listing["sku"], quantity=1,
            event_time=datetime.now(timezone.utc).isoformat()))])
        session.commit()
    broker = Broker()
    drains.request("recheck", "backmarket", broker.send)
    broker.waiting.pop(0)
    first = drains.drain("recheck", "backmarket", "m-1", broker.send)
    assert first.rows == 1 and first.again_in_ms and first.again_in_ms > 1000
    with world["sessions"]() as session:
        row = session.execute(text("SELECT needs_recheck, recheck_attempts FROM marketplace_stock s JOIN variations v "
                                   "ON v.id = s.variation_id WHERE v.sku = :sku"), {"sku": listing["sku"]}).one()
    assert tuple(row) == (True, 1)
    assert len(broker.waiting) == 1  # the next drain, for when the row is due: nothing in between
    broker.run()
    assert flagged(world) == 0


def test_pushes_beyond_the_data_limit_wait_in_order_and_superseded_ones_merge(world):
    sandbox = world["sandbox"]
    scale_data_limit(world, 5, 2.0)  # 5 lines per 2 seconds
    rows = world["listings"][:12]
    for n, listing in enumerate(rows):
        topup(world, listing, 1, f"PO-{n}")
    for n, listing in enumerate(rows[:4]):  # superseded: the row holds the latest count, one push sends it
        topup(world, listing, 2, f"PO-again-{n}")
    sandbox.reset_stats()
    broker = Broker()
    drains.request("push", "backmarket", broker.send)
    first = broker.waiting.pop(0)
    run = drains.drain(first[1], first[2], "m-0", broker.send)
    assert run.rows == 5 and 1000 <= run.again_in_ms <= 2500  # the data limit is used: the rest waits its window
    found = drains.publish_backlog("backmarket")
    assert (found.rows, found.lines_left) == (7, 0) and found.eta_s > 0
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("stocksync_push_backlog", {"marketplace": "backmarket"}) == 7
    broker.run()
    stats = sandbox.stats()
    assert stats["by_endpoint"]["POST /ws/listings/{listingId}"] == len(rows) and stats["rate_limited"] == 0
    pushed = [change.listing for change in sandbox.stock_changes() if change.cause == "api"]
    assert pushed == [listing["id"] for listing in rows]  # oldest waiting first
    expected = {listing["id"]: listing["quantity"] + 1 + (2 if n < 4 else 0) for n, listing in enumerate(rows)}
    assert {listing: sandbox.quantity(listing) for listing in expected} == expected
    assert drains.publish_backlog("backmarket").rows == 0


def test_the_sandbox_refuses_lines_beyond_its_data_limit():
    import aiohttp
    import asyncio

    sandbox = BackMarketSandbox(listings=3, token=TOKEN, quota_requests=0, lines_per_window=2, lines_window_s=60)
    server = serve_in_thread(sandbox.build_app())

    async def post_three() -> list[int]:
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(3):
                async with http.post(f"{server.url}/ws/listings/{sandbox.listing(0)['id']}", json={"quantity": 4},
                                     headers={"Authorization": f"Basic {TOKEN}", "User-Agent": "t"}) as answer:
                    statuses.append(answer.status)
            return statuses

    try:
        assert asyncio.run(post_three()) == [200, 200, 429]
        assert sandbox.stats()["listing_updates"] == 2
    finally:
        server.stop()
