"""Accounts on real PostgreSQL: every account synced through the one pipeline against its sandbox, the
scheduler's fan-out over accounts, the credential and host rules, and the `stocksync accounts` CLI.

The actors run on the in-process stub broker (no REDIS_URL) with worker threads, as in
``test_stock_sync_inprocess.py``; the sandboxes serve on loopback (``ACCOUNTS_ALLOW_LOOPBACK``).
"""
from __future__ import annotations

import dramatiq
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from actors import accounts as account_actors
from actors import stock_sync
from actors.retry import MalformedMessage
from core.accounts import AccountError
from db import accounts as account_rows
from db.ledger import check_invariant
from db.syncs import SyncRefused, get_run
from runtime import accounts, resources
from runtime.settings import get_settings
from sandbox.refurbed import RefurbedSandbox
from sandbox.server import serve_in_thread
from sandbox.shopify import ShopifySandbox
from workers.cli import main

SHOP_SECRET = "shpat_0123456789abcdef-very-secret"
REFURBED_SECRET = "rb-token-0f9e8d7c"
SHOP_ENV, REFURBED_ENV = "STOCKSYNC_ACCOUNT_SHOP_EU_TOKEN", "STOCKSYNC_ACCOUNT_REFURBED_AT_TOKEN"


@pytest.fixture
def env(monkeypatch, database_url):
    """The in-process fleet (stub broker, fakeredis) on this test's PostgreSQL, loopback accounts allowed."""
    for name, value in {"DATABASE_URL": database_url, "REDIS_URL": "", "ACCOUNTS_ALLOW_LOOPBACK": "true",
                        SHOP_ENV: SHOP_SECRET, REFURBED_ENV: REFURBED_SECRET, "BACKMARKET_TOKEN": "bm-token",
                        "REFURBED_TOKEN": "", "SHOPIFY_TOKEN": "", "REFURBED_QUOTA_REQUESTS": "1000"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    accounts.forget()
    broker = stock_sync.fetch_listings_page.broker
    broker.flush_all()
    resources.sync_redis().flushall()
    yield resources.sessions()
    broker.flush_all()
    accounts.forget()
    get_settings.cache_clear()
    resources.database_url.cache_clear()


@pytest.fixture
def worker(env):
    broker = stock_sync.fetch_listings_page.broker
    running = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    running.start()
    yield broker
    running.stop()


@pytest.fixture
def shop():
    sandbox = ShopifySandbox(products=30, variants_per_product=2, locations=2, token=SHOP_SECRET, no_sku_every=7,
                             bucket_size=40, leak_per_s=40.0)
    server = serve_in_thread(sandbox.build_app())
    yield sandbox, server.url
    server.stop()


@pytest.fixture
def refurbed():
    sandbox = RefurbedSandbox(token=REFURBED_SECRET)
    for number in range(230):
        sandbox.add_offer("" if number % 10 == 9 else f"RB-{number:04d}", number % 4)
    server = serve_in_thread(sandbox.build_app())
    yield sandbox, server.url
    server.stop()


def add(sessions, platform, code, credentials_env=None, base_url=None, **flags):
    with sessions() as session:
        account_rows.add_account(session, platform=platform, code=code, credentials_env=credentials_env,
                                 base_url=base_url, allow_loopback=True, **flags)
        session.commit()
    accounts.forget()


def stock(sessions, code) -> dict[str, int]:
    with sessions() as session:
        return dict(session.execute(text(
            "SELECT v.sku, s.listed FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :c"), {"c": code}).all())


def run_to_end(broker) -> None:
    for _ in range(3):  # a cursor chain enqueues its next page while the previous messages run
        for queue in ("stock-sync", "stock-fetch", "stock-apply", "stock-recheck"):
            broker.join(queue, fail_fast=False, timeout=60_000)


def drain(broker, queue_name: str) -> list[tuple[str, tuple, dict]]:
    queue = broker.queues.get(queue_name)
    messages = []
    while queue is not None and not queue.empty():
        message = dramatiq.Message.decode(queue.get_nowait())
        queue.task_done()  # or a later broker.join() on this queue would wait for it forever
        messages.append((message.actor_name, message.args, message.kwargs))
    return messages


# -- the scheduler's fan-out -------------------------------------------------------------------------


def test_each_account_runs_its_actor_for_every_ready_account_and_no_other(env):
    sessions = env
    add(sessions, "refurbed", "refurbed-at", REFURBED_ENV, "https://api.refurbed.com")
    add(sessions, "shopify", "shop-eu", SHOP_ENV, "https://shop-eu.myshopify.com", auto_sync=False)
    add(sessions, "shopify", "shop-off", SHOP_ENV, "https://shop-off.myshopify.com", enabled=False)
    add(sessions, "shopify", "shop-unset", "STOCKSYNC_ACCOUNT_NOT_EXPORTED", "https://shop-unset.myshopify.com")
    add(sessions, "manual", "counter")
    broker = account_actors.each_account.broker

    def fan_out(*args, **kwargs):
        codes = account_actors.each_account.fn(*args, **kwargs)
        return codes, drain(broker, {"start_stock_sync": "stock-sync", "resume_stalled_syncs": "stock-sync",
                                     "poll_orders": "orders", "reconcile_stock": "reconcile",
                                     "sweep_stock": "stock-recheck"}[args[0]])

    # The main refurbed and shopify rows have no credential here (REFURBED_TOKEN, SHOPIFY_TOKEN unset): skipped.
    codes, sent = fan_out("start_stock_sync", "paging", [False, "scheduled"], {}, True)
    assert codes == ["backmarket", "refurbed-at"]  # shop-eu is not auto-synced; off, unset and manual never
    assert sent == [("start_stock_sync", ("backmarket", False, "scheduled"), {}),
                    ("start_stock_sync", ("refurbed-at", False, "scheduled"), {})]
    assert fan_out("resume_stalled_syncs", "paging")[0] == ["backmarket", "refurbed-at", "shop-eu"]
    assert fan_out("poll_orders", "poll_orders")[0] == ["backmarket", "refurbed-at"]  # Refurbed's walk too
    codes, sent = fan_out("reconcile_stock", "read_one", [], {"trigger": "scheduled"})
    assert sent == [("reconcile_stock", ("backmarket",), {"trigger": "scheduled"})]
    assert fan_out("sweep_stock", ["push", "read_one"])[0] == ["backmarket"]

    with sessions() as session:  # a disabled account drops out of every job at its next fire
        account_rows.set_enabled(session, "refurbed-at", False)
        session.commit()
    accounts.forget()
    assert fan_out("poll_orders", "poll_orders")[0] == ["backmarket"]


@pytest.mark.parametrize("args, error", [
    (("push_stock", "push"), "actor must be one of"),
    (("sweep_stock", "fly"), "capability must be one of"),
    (("sweep_stock", []), "capability must be one of"),
    (("sweep_stock", "push", "backmarket"), "args must be a list"),
])
def test_each_account_refuses_a_malformed_message_naming_what_is_wrong(args, error):
    with pytest.raises(MalformedMessage, match=error):
        account_actors.each_account.fn(*args)
