"""The stock-sync actors in one process: stub broker, fakeredis limiter, real PostgreSQL, sandbox.

Fast checks of the pipeline's logic without worker processes; the end-to-end tests repeat the
important ones on real ``dramatiq`` processes and a real Redis.
"""
from __future__ import annotations

import dramatiq
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from actors import stock_sync
from actors.retry import MalformedMessage, transient_only
from db.syncs import SyncRefused, get_run
from runtime import resources
from runtime.settings import get_settings
from sandbox.backmarket import BackMarketSandbox
from sandbox.server import serve_in_thread
from workers.cli import main

TOKEN = "unit-token"


@pytest.fixture
def pipeline(monkeypatch, database_url):
    sandbox = BackMarketSandbox(listings=730, seed=4, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    for name, value in {"DATABASE_URL": database_url, "REDIS_URL": "", "BACKMARKET_BASE_URL": server.url,
                        "BACKMARKET_TOKEN": TOKEN, "BACKMARKET_QUOTA_REQUESTS": "1000",
                        "BACKMARKET_QUOTA_WINDOW_S": "1"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    broker = stock_sync.fetch_listings_page.broker
    broker.flush_all()
    resources.sync_redis().flushall()  # per-run counters are keyed by run id, and every test's ids start at 1
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    yield sandbox, broker
    worker.stop()
    broker.flush_all()
    server.stop()
    get_settings.cache_clear()
    resources.database_url.cache_clear()


def run_to_end(broker) -> None:
    for _ in range(3):  # fan-out enqueues more work while the first messages run
        for queue in ("stock-sync", "stock-fetch", "stock-apply"):
            broker.join(queue, fail_fast=False, timeout=60_000)


def test_sync_pages_fan_out_and_close_the_run(pipeline):
    sandbox, broker = pipeline
    sync_id = stock_sync.begin_stock_sync("backmarket", trigger="manual")
    run_to_end(broker)
    with resources.sessions()() as session:
        run = get_run(session, sync_id)
        local = dict(session.execute(text("SELECT l.external_id, s.listed FROM listings l JOIN marketplace_stock s "
                                          "ON s.variation_id = l.variation_id")).all())
    assert (run.status, run.total_pages, run.pages_done, run.items) == ("succeeded", 15, 15, 730)
    assert run.api_calls == 15 and run.retries == 0
    assert local == sandbox.quantities()


def test_cooldown_and_overlap_refused_with_clear_reason(pipeline):
    _, broker = pipeline
    stock_sync.begin_stock_sync("backmarket", trigger="manual")
    with pytest.raises(SyncRefused, match="already running"):
        stock_sync.begin_stock_sync("backmarket", trigger="manual", force=True)
    run_to_end(broker)
    with pytest.raises(SyncRefused, match="cooldown"):
        stock_sync.begin_stock_sync("backmarket", trigger="manual")
    # The scheduled actor logs the refusal instead of failing (no retries, no dead letter).
    assert stock_sync.start_stock_sync("backmarket", trigger="scheduled") is None


def test_5xx_bursts_are_retried_and_counted(pipeline):
    sandbox, broker = pipeline
    sandbox.configure(error_rate=0.3)
    sync_id = stock_sync.begin_stock_sync("backmarket", trigger="manual")
    run_to_end(broker)
    with resources.sessions()() as session:
        run = get_run(session, sync_id)
    assert run.status == "succeeded"
    assert run.retries > 0 and run.api_calls == 15 + run.retries
    assert sandbox.listing_page_requests() == run.api_calls


def test_message_items_are_validated_naming_the_field():
    with pytest.raises(MalformedMessage, match="item 1 of the page is malformed: quantity must be an integer"):
        stock_sync.page_items([{"id": "a", "sku": "A", "quantity": 1},
                               {"id": "b", "sku": "B", "quantity": "12"}])
    with pytest.raises(MalformedMessage, match="missing field 'sku'"):
        stock_sync.page_items([{"id": "a", "quantity": 1}])


def test_an_unknown_account_is_refused_naming_it(pipeline):
    with pytest.raises(MalformedMessage, match="no account 'ebay'"):
        stock_sync.check_account("ebay")


def test_permanent_errors_are_never_retried():
    retry_when = transient_only(3)
    assert retry_when(0, RuntimeError("db down")) and not retry_when(3, RuntimeError("db down"))
    assert not retry_when(0, MalformedMessage("bad"))


@pytest.fixture
def accounts_only(monkeypatch, database_url):
    """The accounts' database, and no worker of the test's own: the CLI starts its in-process worker itself
    (a second worker on the same broker would leave its event loop thread running)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", "")
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    yield
    get_settings.cache_clear()
    resources.database_url.cache_clear()


def test_cli_refuses_an_unknown_marketplace_clearly(accounts_only):
    result = CliRunner().invoke(main, ["sync", "ebay"])
    assert result.exit_code == 2
    assert "no account 'ebay'" in result.output


def test_a_fan_out_makes_each_page_due_when_the_quota_frees_its_slot(pipeline, monkeypatch):
    """All due at once, a walk's fetches held every worker thread waiting on the limiter (the other
    accounts' pages, the applies, events and pushes waited behind them: bench/accounts_sync.py)."""
    sandbox, broker = pipeline
    sandbox.configure(quota_requests=5, quota_window_s=1.0)  # the vendor refuses anything beyond the quota
    monkeypatch.setenv("BACKMARKET_QUOTA_REQUESTS", "5")
    get_settings.cache_clear()
    window_ms = (1 + get_settings().rate_limit_margin_s) * 1000
    sent = {}  # page -> delay when first enqueued (the worker enqueues a delayed message again once due)
    enqueue = broker.enqueue

    def spy(message, *, delay=None):
        if message.actor_name == "fetch_listings_page":
            sent.setdefault(message.args[1], delay)
        return enqueue(message, delay=delay)

    monkeypatch.setattr(broker, "enqueue", spy)
    sync_id = stock_sync.begin_stock_sync("backmarket", trigger="manual")
    run_to_end(broker)
    # Page 1 took a slot: pages 2-5 go with it, then five a window, as the sliding window frees them.
    assert sent == {1: None, **{page: int((page - 1) // 5 * window_ms) or None for page in range(2, 16)}}
    with resources.sessions()() as session:
        run = get_run(session, sync_id)
    assert (run.status, run.pages_done, run.retries) == ("succeeded", 15, 0)
    assert sandbox.stats()["rate_limited"] == 0 and sandbox.max_in_any_window(1.0) <= 5
