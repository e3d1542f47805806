"""Store integrations: adapters against their sandboxes, the sync (real PostgreSQL), the actors and the CLI.

Real PostgreSQL (``database_url``) and real Redis (``redis_url``, for the fleet-wide limiter a
Shopify 429 penalizes); the actors run on the in-process stub broker.
"""
from __future__ import annotations

import asyncio

import aiohttp
import dramatiq
import pytest
import redis.asyncio
from click.testing import CliRunner
from sqlalchemy import text

from clients.backmarket import BackMarketClient
from clients.errors import Unauthorized
from clients.ratelimit import FleetRateLimiter
from clients.refurbed import RefurbedClient
from clients.shopify import ShopifyClient
from clients.stores import BackMarketStoreAdapter, RefurbedStoreAdapter, ShopifyStoreAdapter
from db import stores
from db.ledger import check_invariant
from db.syncs import SyncRefused
from pipelines.stores import begin_store_sync, sync_store_now
from runtime import resources
from runtime.settings import get_settings
from sandbox.backmarket import BackMarketSandbox
from sandbox.refurbed import RefurbedSandbox
from sandbox.server import serve_in_thread
from sandbox.shopify import ShopifySandbox

SECRET = "shpat_0123456789abcdef-very-secret"


@pytest.fixture
def shop():
    sandbox = ShopifySandbox(products=30, variants_per_product=2, locations=2, token=SECRET, no_sku_every=7,
                             bucket_size=6, leak_per_s=20.0)
    server = serve_in_thread(sandbox.build_app())
    yield sandbox, server.url
    server.stop()


@pytest.fixture
def refurbed():
    sandbox = RefurbedSandbox(token="rb-token")
    for number in range(230):
        sandbox.add_offer("" if number % 10 == 9 else f"RB-{number:04d}", number % 4)
    server = serve_in_thread(sandbox.build_app())
    yield sandbox, server.url
    server.stop()


@pytest.fixture
def env(monkeypatch, database_url):
    """The in-process fleet (stub broker, fakeredis) on this test's PostgreSQL."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.setenv("SHOP_EU_TOKEN", SECRET)
    monkeypatch.setenv("REFURBED_STORE_TOKEN", "rb-token")
    monkeypatch.setenv("BM_STORE_TOKEN", "bm-token")
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    yield resources.sessions()
    get_settings.cache_clear()
    resources.database_url.cache_clear()


def run(coroutine_function):
    async def go():
        async with aiohttp.ClientSession() as http:
            return await coroutine_function(http)
    return asyncio.run(go())


def add(sessions, platform, name, env_name, base_url, **flags):
    with sessions() as session:
        integration = stores.add_integration(session, platform=platform, name=name, credentials_env=env_name,
                                             base_url=base_url, **flags)
        session.commit()
        return integration.id


def stock(sessions, name) -> dict[str, int]:
    with sessions() as session:
        return dict(session.execute(text(
            "SELECT v.sku, s.listed FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :c"), {"c": name}).all())


def ledger_rows(sessions) -> int:
    with sessions() as session:
        return session.execute(text("SELECT count(*) FROM stock_ledger")).scalar_one()


def log_row(sessions, log_id):
    with sessions() as session:
        return session.execute(text("SELECT * FROM store_sync_logs WHERE id = :i"), {"i": log_id}).mappings().one()


# -- adapters against their sandboxes ---------------------------------------------------------------


def test_shopify_pages_by_link_header_and_slows_down_before_the_bucket_is_full(shop):
    sandbox, url = shop
    client_box = {}

    async def walk(http):
        client = ShopifyClient(http, base_url=url, token=SECRET, leak_per_s=20.0, headroom=2)
        client_box["client"] = client
        return [item async for item in ShopifyStoreAdapter(client, limit=7).items()]

    items = run(walk)
    assert dict(item for item in items if item[0]) == sandbox.truth()
    assert sum(1 for sku, _ in items if not sku) == len([v for v in sandbox.variants() if not v["sku"]]) > 0
    stats = sandbox.stats()
    # 60 variants = 30 products: 5 pages of 7; 1 locations call; 120 levels: 18 pages of 7.
    assert stats["requests"] == {"products.json": 5, "locations.json": 1, "inventory_levels.json": 18}
    assert stats["by_status"] == {200: 24}  # a bucket of 6: without the call-limit header it would overflow
    assert client_box["client"].throttled_s > 0


def test_shopify_429_waits_retry_after_and_penalizes_the_fleet(shop, redis_url):
    sandbox, url = shop
    sandbox.rate_limit_next(2)
    statuses = []

    async def walk(http):
        limiter = FleetRateLimiter(redis.asyncio.Redis.from_url(redis_url), "shopify:test", 100, 1.0)
        client = ShopifyClient(http, base_url=url, token=SECRET, limiter=limiter, attempts=4,
                               on_request=lambda record: statuses.append(record.status))
        started = asyncio.get_running_loop().time()
        locations = await client.list_locations()
        elapsed = asyncio.get_running_loop().time() - started
        await limiter.redis.aclose()
        return locations, elapsed

    locations, elapsed = run(walk)
    assert [location["id"] for location in locations] == sandbox.location_ids()
    assert statuses == [429, 429, 200]
    assert sandbox.stats()["by_status"] == {429: 2, 200: 1}
    # Each 429 paused the fleet-wide limiter (every worker on this shop) for at least one leak (0.5 s).
    assert elapsed >= 0.95


def test_shopify_refuses_a_wrong_token_without_showing_it(shop):
    sandbox, url = shop

    async def walk(http):
        await ShopifyClient(http, base_url=url, token="wrong-" + SECRET).list_locations()

    with pytest.raises(Unauthorized) as error:
        run(walk)
    assert SECRET not in str(error.value) and "Invalid API key" in str(error.value)


def test_refurbed_offers_page_with_has_more(refurbed):
    sandbox, url = refurbed
    pages = []

    async def walk(http):
        adapter = RefurbedStoreAdapter(RefurbedClient(http, base_url=url, token="rb-token"), limit=100)
        async for batch in adapter.batches():
            pages.append(batch)

    run(walk)
    assert [len(batch.items) for batch in pages] == [100, 100, 30]
    seen = {item.external_id: (item.sku, item.quantity) for batch in pages for item in batch.items}
    assert seen == {offer["id"]: (offer["sku"], offer["stock"]) for offer in sandbox.offers()}
    assert sandbox.stats()["requests"] == {"ListOffers": 3}


def test_backmarket_listings_walk_every_page_once():
    sandbox = BackMarketSandbox(listings=120, seed=3, token="bm-token", quota_requests=None, quota_window_s=None)
    server = serve_in_thread(sandbox.build_app())
    try:
        async def walk(http):
            client = BackMarketClient(http, base_url=server.url, token="bm-token", user_agent="test;ops@example.com")
            return [batch async for batch in BackMarketStoreAdapter(client, page_size=50).batches()]

        batches = run(walk)
    finally:
        server.stop()
    assert [len(batch.items) for batch in batches] == [50, 50, 20]
    assert {item.external_id: item.quantity for batch in batches for item in batch.items} == sandbox.quantities()
    assert sandbox.listing_page_requests() == 3


# -- syncing an integration -----------------------------------------------------------------------------


def test_a_sync_applies_and_logs_counts_and_a_second_sync_changes_nothing(env, shop):
    sessions, (sandbox, url) = env, shop
    integration_id = add(sessions, "shopify", "shop-eu", "SHOP_EU_TOKEN", url)
    truth = sandbox.truth()
    no_sku = len([v for v in sandbox.variants() if not v["sku"]])

    first = sync_store_now(sessions, integration_id)
    log = log_row(sessions, first.log_id)
    assert (log["status"], log["items"], log["created"], log["updated"], log["skipped"]) == \
        ("succeeded", 60, len(truth), 0, no_sku)
    assert stock(sessions, "shop-eu") == truth
    assert ledger_rows(sessions) == sum(1 for quantity in truth.values() if quantity)
    with sessions() as session:
        assert check_invariant(session) == []
        run_row = session.execute(text("SELECT kind, target, status FROM sync_runs WHERE id = :i"),
                                  {"i": log["sync_run_id"]}).one()
    assert tuple(run_row) == ("store", "shop-eu", "succeeded")

    second = sync_store_now(sessions, integration_id)
    log = log_row(sessions, second.log_id)
    assert (log["status"], log["created"], log["updated"], log["skipped"]) == ("succeeded", 0, 0, 60)
    assert ledger_rows(sessions) == sum(1 for quantity in truth.values() if quantity)

    sku = sorted(truth)[3]
    sandbox.set_available(sku, truth[sku] + 5)
    third = sync_store_now(sessions, integration_id)
    log = log_row(sessions, third.log_id)
    assert (log["created"], log["updated"], log["skipped"]) == (0, 1, 59)
    assert stock(sessions, "shop-eu") == sandbox.truth() != truth
    with sessions() as session:
        assert check_invariant(session) == []


def test_a_refurbed_sync_skips_offers_without_sku(env, refurbed):
    sessions, (sandbox, url) = env, refurbed
    integration_id = add(sessions, "refurbed", "refurbed-at", "REFURBED_STORE_TOKEN", url)
    result = sync_store_now(sessions, integration_id, "scheduled")
    log = log_row(sessions, result.log_id)
    with_sku = {offer["sku"]: offer["stock"] for offer in sandbox.offers() if offer["sku"]}
    assert (log["items"], log["created"], log["updated"], log["skipped"]) == (230, len(with_sku), 0, 23)
    assert stock(sessions, "refurbed-at") == with_sku
    # A scheduled sync inside the cooldown is refused; a manual one is not.
    with pytest.raises(SyncRefused, match="cooldown"):
        sync_store_now(sessions, integration_id, "scheduled")
    assert sync_store_now(sessions, integration_id, "manual").counts.updated == 0


def test_a_sync_does_not_overlap_itself(env, shop):
    sessions, (_, url) = env, shop
    integration_id = add(sessions, "shopify", "shop-eu", "SHOP_EU_TOKEN", url)
    begin_store_sync(sessions, integration_id)
    with pytest.raises(SyncRefused, match="already running"):
        begin_store_sync(sessions, integration_id, force=True)


def test_a_failed_sync_changes_no_stock_and_logs_its_error_without_the_secret(env, shop, monkeypatch):
    sessions, (sandbox, url) = env, shop
    integration_id = add(sessions, "shopify", "shop-eu", "SHOP_EU_TOKEN", url)
    sync_store_now(sessions, integration_id)
    before = stock(sessions, "shop-eu")
    sandbox.set_available(sorted(before)[0], 99)
    sandbox.configure(token="rotated-token")  # the store refuses our credential from now on
    with pytest.raises(Unauthorized):
        sync_store_now(sessions, integration_id)
    assert stock(sessions, "shop-eu") == before
    with sessions() as session:
        log = stores.recent_logs(session, integration_id, 1)[0]
    assert log.status == "failed" and "HTTP 401" in log.errors and SECRET not in log.errors
    # A credential variable missing in the worker's environment fails for good, naming the variable only.
    monkeypatch.delenv("SHOP_EU_TOKEN")
    with pytest.raises(stores.StoreError, match="SHOP_EU_TOKEN is not set") as error:
        sync_store_now(sessions, integration_id)
    assert error.value.permanent


def test_credentials_are_refused_unless_named_and_set(env):
    sessions = env
    with sessions() as session:
        with pytest.raises(stores.StoreError, match="unknown platform 'ebay'"):
            stores.add_integration(session, platform="ebay", name="x", credentials_env="SHOP_EU_TOKEN")
        with pytest.raises(stores.StoreError, match="never as the secret itself") as error:
            stores.add_integration(session, platform="shopify", name="x", credentials_env=SECRET)
        assert SECRET not in str(error.value)
        with pytest.raises(stores.StoreError, match="NOT_EXPORTED_TOKEN is not set"):
            stores.add_integration(session, platform="shopify", name="x", credentials_env="NOT_EXPORTED_TOKEN")


# -- actors and the CLI ---------------------------------------------------------------------------------


def test_sync_all_stores_enqueues_only_active_auto_sync_ones(env, shop):
    sessions, (_, url) = env, shop
    from actors import stores as store_actors

    broker = store_actors.sync_store.broker
    broker.flush_all()
    wanted = add(sessions, "shopify", "a-auto", "SHOP_EU_TOKEN", url)
    add(sessions, "shopify", "b-inactive", "SHOP_EU_TOKEN", url, active=False)
    add(sessions, "shopify", "c-manual", "SHOP_EU_TOKEN", url, auto_sync=False)
    store_actors.sync_all_stores.fn("scheduled")
    queue = broker.queues[store_actors.QUEUE]
    messages = []
    while not queue.empty():
        messages.append(dramatiq.Message.decode(queue.get_nowait()))
        queue.task_done()  # or a later broker.join() on this queue would wait for it forever
    assert [(m.actor_name, m.args) for m in messages] == [("sync_store", (wanted, "scheduled"))]
    # The scheduler enqueues it by name: the fleet must define it.
    from workers.scheduler import JOBS_BY_NAME

    assert broker.get_actor(JOBS_BY_NAME["all_stores_sync"].actor) is store_actors.sync_all_stores
    broker.flush_all()


def test_cli_add_list_sync_disable(env, shop):
    sessions, (sandbox, url) = env, shop
    from workers.cli import main

    runner = CliRunner()
    added = runner.invoke(main, ["stores", "add", "shopify", "shop-eu", "--credentials-env", "SHOP_EU_TOKEN",
                                 "--base-url", url])
    assert added.exit_code == 0, added.output
    assert "initial sync of shop-eu enqueued" in added.output
    with sessions() as session:
        integration = stores.find_integration(session, "shop-eu")
        logs = stores.recent_logs(session, integration.id)
        row = session.execute(text("SELECT * FROM store_integrations")).mappings().one()
    # The initial sync ran on the in-process worker (no REDIS_URL), triggered by the creation.
    assert [(log.trigger, log.status) for log in logs] == [("created", "succeeded")]
    assert stock(sessions, "shop-eu") == sandbox.truth()
    assert row["credentials_env"] == "SHOP_EU_TOKEN" and SECRET not in str(dict(row))

    quiet = runner.invoke(main, ["stores", "add", "refurbed", "quiet", "--credentials-env", "REFURBED_STORE_TOKEN",
                                 "--no-auto-sync"])
    assert quiet.exit_code == 0 and "initial sync" not in quiet.output

    listed = runner.invoke(main, ["stores", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    assert "shop-eu" in listed.output and "succeeded" in listed.output and "$SHOP_EU_TOKEN (set)" in listed.output
    assert "quiet" in listed.output and SECRET not in listed.output

    synced = runner.invoke(main, ["stores", "sync", "shop-eu", "--wait"], env={"COLUMNS": "250"})
    assert synced.exit_code == 0, synced.output
    with sessions() as session:
        latest = stores.recent_logs(session, integration.id, 1)[0]
    assert (latest.trigger, latest.status, latest.created, latest.updated) == ("manual", "succeeded", 0, 0)

    disabled = runner.invoke(main, ["stores", "disable", "shop-eu"])
    assert disabled.exit_code == 0 and "disabled" in disabled.output
    refused = runner.invoke(main, ["stores", "sync", "shop-eu"])
    assert refused.exit_code == 1 and "store shop-eu is disabled" in refused.output
    assert runner.invoke(main, ["stores", "sync"]).exit_code == 2  # neither NAME nor --all

    for output in (added.output, quiet.output, listed.output, synced.output):
        assert SECRET not in output


def test_cli_add_refuses_bad_platform_and_env_names(env):
    from workers.cli import main

    runner = CliRunner()
    bad_platform = runner.invoke(main, ["stores", "add", "ebay", "x", "--credentials-env", "SHOP_EU_TOKEN"])
    assert bad_platform.exit_code == 2 and "unknown platform 'ebay'" in bad_platform.output
    unset = runner.invoke(main, ["stores", "add", "shopify", "x", "--credentials-env", "NOT_EXPORTED_TOKEN"])
    assert unset.exit_code == 2 and "NOT_EXPORTED_TOKEN is not set" in unset.output
    secret = runner.invoke(main, ["stores", "add", "shopify", "x", "--credentials-env", SECRET])
    assert secret.exit_code == 2 and "never as the secret itself" in secret.output
    assert SECRET not in secret.output
    with resources.sessions()() as session:
        assert stores.list_integrations(session) == []
