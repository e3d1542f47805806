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
from runtime.settings import Settings, get_settings
from sandbox.refurbed import RefurbedSandbox
from sandbox.server import serve_in_thread
from sandbox.shopify import ShopifySandbox
from tests.in_process import in_process_fleet
from workers.cli import main

SHOP_SECRET = "shpat_0123456789abcdef-very-secret"
REFURBED_SECRET = "rb-token-0f9e8d7c"
SHOP_ENV, REFURBED_ENV = "STOCKSYNC_ACCOUNT_SHOP_EU_TOKEN", "STOCKSYNC_ACCOUNT_REFURBED_AT_TOKEN"


@pytest.fixture
def env(monkeypatch, database_url):
    """The in-process fleet (stub broker, fakeredis) on this test's PostgreSQL, loopback accounts allowed."""
    with in_process_fleet(monkeypatch, {
            "DATABASE_URL": database_url, "REDIS_URL": "", "ACCOUNTS_ALLOW_LOOPBACK": "true", SHOP_ENV: SHOP_SECRET,
            REFURBED_ENV: REFURBED_SECRET, "BACKMARKET_TOKEN": "", "REFURBED_TOKEN": "", "SHOPIFY_TOKEN": "",
            "REFURBED_QUOTA_REQUESTS": "1000"}):
        yield resources.sessions()


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


def test_each_account_runs_its_actor_for_every_ready_account_and_no_other(env, monkeypatch):
    sessions = env
    monkeypatch.setenv("BACKMARKET_TOKEN", "bm-token")  # the main Back Market account is used; the others not
    get_settings.cache_clear()
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
    # Refurbed's walk and the shop's (not auto-synced, but its orders and pushes are kept going).
    assert fan_out("poll_orders", "poll_orders")[0] == ["backmarket", "refurbed-at", "shop-eu"]
    codes, sent = fan_out("reconcile_stock", "paging", [], {"trigger": "scheduled"})
    assert sent == [("reconcile_stock", (code,), {"trigger": "scheduled"}) for code in ("backmarket", "refurbed-at",
                                                                                          "shop-eu")]
    assert fan_out("sweep_stock", ["push", "read_one"])[0] == ["backmarket", "refurbed-at", "shop-eu"]

    with sessions() as session:  # a disabled account drops out of every job at its next fire
        account_rows.set_enabled(session, "refurbed-at", False)
        session.commit()
    accounts.forget()
    assert fan_out("poll_orders", "poll_orders")[0] == ["backmarket", "shop-eu"]


@pytest.mark.parametrize("args, error", [
    (("push_stock", "push"), "actor must be one of"),
    (("sweep_stock", "fly"), "capability must be one of"),
    (("sweep_stock", []), "capability must be one of"),
    (("sweep_stock", "push", "backmarket"), "args must be a list"),
])
def test_each_account_refuses_a_malformed_message_naming_what_is_wrong(args, error):
    with pytest.raises(MalformedMessage, match=error):
        account_actors.each_account.fn(*args)


# The Shopify adapter against its GraphQL sandbox: tests/test_shopify_adapter.py.


# -- every account through the one pipeline ------------------------------------------------------------


def sync(code, **kwargs):
    broker = stock_sync.fetch_listings_page.broker
    sync_id = stock_sync.begin_stock_sync(code, trigger=kwargs.pop("trigger", "manual"), **kwargs)
    run_to_end(broker)
    with resources.sessions()() as session:
        return get_run(session, sync_id)


def test_a_refurbed_account_syncs_its_cursor_pages_and_keeps_the_cooldown(env, worker, refurbed):
    sessions, (sandbox, url) = env, refurbed
    add(sessions, "refurbed", "refurbed-at", REFURBED_ENV, url)
    with_sku = {offer["sku"]: offer["stock"] for offer in sandbox.offers() if offer["sku"]}

    run = sync("refurbed-at")
    assert (run.kind, run.target, run.status, run.pages_done, run.total_pages) == \
        ("stock", "refurbed-at", "succeeded", 3, 3)  # 230 offers, 100 a page: a chain of 3
    assert run.items == len(with_sku)  # the 23 offers without a SKU are never booked
    assert stock(sessions, "refurbed-at") == with_sku
    with sessions() as session:
        assert check_invariant(session) == []
        pages = session.execute(text("SELECT page, next_cursor FROM sync_pages WHERE sync_id = :s ORDER BY page"),
                                {"s": run.id}).all()
    assert [page for page, _ in pages] == [1, 2, 3] and pages[-1].next_cursor is None and pages[0].next_cursor
    assert sandbox.stats()["requests"]["ListOffers"] == 3

    # The one pipeline's cooldowns: a scheduled start inside it is dropped, a forced one runs.
    assert stock_sync.start_stock_sync("refurbed-at", False, "scheduled") is None
    with pytest.raises(SyncRefused, match="cooldown"):
        stock_sync.begin_stock_sync("refurbed-at", trigger="manual")
    sandbox.set_offer_stock("RB-0001", 9)
    again = sync("refurbed-at", force=True)
    assert (again.status, again.changed) == ("succeeded", 1)
    assert stock(sessions, "refurbed-at") == {**with_sku, "RB-0001": 9}


def test_a_shopify_account_syncs_through_the_same_pipeline(env, worker, shop, monkeypatch):
    sessions, (sandbox, url) = env, shop
    # Pages of 10 (a cursor chain of 6); the locations read once for the whole test, not once a page.
    monkeypatch.setenv("SHOPIFY_PAGE_SIZE", "10")
    monkeypatch.setenv("SHOPIFY_LOCATIONS_TTL_S", "3600")
    get_settings.cache_clear()
    add(sessions, "shopify", "shop-eu", SHOP_ENV, url, options={"shop_domain": "shop-eu.myshopify.com"})
    truth = sandbox.truth()

    sandbox.throttle_next(4)  # a throttled shop: the pages wait in its cost bucket, none is lost or failed
    run = sync("shop-eu")
    assert (run.kind, run.target, run.status) == ("stock", "shop-eu", "succeeded")
    assert stock(sessions, "shop-eu") == truth
    second = sync("shop-eu", force=True)
    assert (second.status, second.changed) == ("succeeded", 0)
    sku = sorted(truth)[3]
    sandbox.set_available(sku, truth[sku] + 5)
    third = sync("shop-eu", force=True)
    assert (third.status, third.changed) == ("succeeded", 1)
    assert stock(sessions, "shop-eu") == sandbox.truth() != truth
    with sessions() as session:
        assert check_invariant(session) == []
    costs = sandbox.stats()["query_costs"]
    assert costs["StocksyncVariants"]["answers"] >= 18 and costs["StocksyncLocations"]["answers"] == 1


def test_the_main_shopify_account_takes_its_token_and_shop_from_the_settings(env, worker, shop, monkeypatch, caplog):
    sessions, (sandbox, url) = env, shop
    view = accounts.account("shopify")
    assert view.credentials_env is None and view.base_url is None  # the migration's row: the settings serve it
    with pytest.raises(AccountError, match="SHOPIFY_TOKEN is not set"):
        accounts.credential(view)
    assert not accounts.configured(view)

    # A token without a shop: still not used (the scheduler skips it), and the error says what to set.
    monkeypatch.setenv("SHOPIFY_TOKEN", SHOP_SECRET)
    get_settings.cache_clear()
    with pytest.raises(AccountError, match="set SHOPIFY_SHOP_DOMAIN or SHOPIFY_BASE_URL"):
        accounts.base_url(view)
    assert not accounts.configured(view)
    monkeypatch.setenv("SHOPIFY_SHOP_DOMAIN", "Main-Shop.myshopify.com")
    get_settings.cache_clear()
    assert accounts.base_url(view) == "https://main-shop.myshopify.com" and accounts.configured(view)
    for bad in ("https://main-shop.myshopify.com", "main-shop.example.com", "main-shop.myshopify.com/admin"):
        with pytest.raises(ValueError, match="shopify_shop_domain"):
            Settings(shopify_shop_domain=bad)
    # The base URL, where the token goes, meets the accounts' rules (a sandbox only with ACCOUNTS_ALLOW_LOOPBACK).
    monkeypatch.setenv("SHOPIFY_BASE_URL", "https://main-shop.myshopify.com.evil.example")
    get_settings.cache_clear()
    with pytest.raises(AccountError, match="refused"):
        accounts.base_url(view)

    # Pointed at the sandbox: the main shop syncs through the one pipeline with SHOPIFY_TOKEN.
    monkeypatch.setenv("SHOPIFY_BASE_URL", url)
    get_settings.cache_clear()
    caplog.set_level("DEBUG")
    run = sync("shopify")
    assert (run.status, stock(sessions, "shopify")) == ("succeeded", sandbox.truth())
    assert SHOP_SECRET not in repr(get_settings()) and SHOP_SECRET not in caplog.text
    assert "SHOPIFY_TOKEN" in CliRunner().invoke(main, ["accounts", "list"]).output


def test_a_refused_credential_fails_the_run_naming_the_variable_never_the_secret(env, worker, shop):
    sessions, (sandbox, url) = env, shop
    add(sessions, "shopify", "shop-eu", SHOP_ENV, url)
    sync("shop-eu")
    before = stock(sessions, "shop-eu")
    sandbox.set_available(sorted(before)[0], 99)
    sandbox.configure(token="rotated-token")  # the shop refuses our credential from now on
    failed = sync("shop-eu", force=True)
    assert failed.status == "failed" and "401" in failed.error and SHOP_SECRET not in failed.error
    assert stock(sessions, "shop-eu") == before


def test_a_credential_outside_the_prefix_is_refused_when_added_and_when_used(env, worker, refurbed, monkeypatch):
    sessions, (sandbox, url) = env, refurbed
    with sessions() as session:
        with pytest.raises(AccountError, match="must start with STOCKSYNC_ACCOUNT_"):
            account_rows.add_account(session, platform="refurbed", code="x", credentials_env="DATABASE_URL",
                                     base_url=url, allow_loopback=True)
        with pytest.raises(AccountError, match="never as the secret itself") as error:
            account_rows.add_account(session, platform="shopify", code="x", credentials_env=SHOP_SECRET,
                                     base_url=url, allow_loopback=True)
        assert SHOP_SECRET not in str(error.value)
        # A row written before the rules (a store of before accounts) is refused when used, not sent.
        session.execute(text("INSERT INTO marketplaces (code, name, platform, credentials_env, base_url) "
                             "VALUES ('old-store', 'old', 'refurbed', 'DATABASE_URL', :u)"), {"u": url})
        session.commit()
    accounts.forget()
    run = sync("old-store")
    assert run.status == "failed" and "DATABASE_URL" in run.error and "STOCKSYNC_ACCOUNT_" in run.error
    database_url = get_settings().database_url
    assert database_url not in run.error and "ListOffers" not in sandbox.stats()["requests"]


def test_a_base_url_off_the_platforms_hosts_is_refused_when_added_and_when_used(env, worker, monkeypatch):
    sessions = env
    with sessions() as session:
        for platform, url in (("refurbed", "https://evil.example.com"), ("refurbed", "http://api.refurbed.com"),
                              ("shopify", "https://shop.myshopify.com.evil.example"),
                              ("backmarket", "https://user:pw@www.backmarket.fr")):
            with pytest.raises(AccountError, match="refused"):
                account_rows.add_account(session, platform=platform, code="x", credentials_env=SHOP_ENV,
                                         base_url=url)
        with pytest.raises(AccountError, match="ACCOUNTS_ALLOW_LOOPBACK"):
            account_rows.add_account(session, platform="refurbed", code="x", credentials_env=REFURBED_ENV,
                                     base_url="http://127.0.0.1:9")
        session.execute(text("INSERT INTO marketplaces (code, name, platform, credentials_env, base_url) "
                             "VALUES ('moved', 'moved', 'refurbed', :e, 'https://evil.example.com')"),
                        {"e": REFURBED_ENV})
        session.commit()
    accounts.forget()
    run = sync("moved")
    assert run.status == "failed" and "evil.example.com" in run.error and "refused" in run.error
    assert REFURBED_SECRET not in run.error


def test_options_names_and_shopify_hosts_are_checked(env):
    sessions = env
    with sessions() as session:
        for options, error in (({"restock_on_cancel": "no"}, "option restock_on_cancel"),
                               ({"colour": "red"}, "unknown option 'colour'"),
                               ({"webhook_secret_env": "DATABASE_URL"}, "must start with STOCKSYNC_ACCOUNT_"),
                               ({"shop_domain": "evil.example.com"}, "option shop_domain"),
                               ({"location_ids": []}, "option location_ids"),
                               ({"location_ids": list(range(1, 12))}, "option location_ids"),
                               ({"location_id": True}, "option location_id"),
                               ({"location_id": "gid"}, "option location_id"),
                               ({"location_id": 1, "location_ids": [2]}, "give one of them")):
            with pytest.raises(AccountError, match=error):
                account_rows.add_account(session, platform="shopify", code="shop-x", credentials_env=SHOP_ENV,
                                         options=options)
        with pytest.raises(AccountError, match="needs its base URL"):
            account_rows.add_account(session, platform="shopify", code="shop-x", credentials_env=SHOP_ENV)
        with pytest.raises(AccountError, match="code of another account"):
            account_rows.add_account(session, platform="refurbed", code="rb-2", name="backmarket",
                                     credentials_env=REFURBED_ENV)
        shop = account_rows.add_account(session, platform="shopify", code="shop-x", credentials_env=SHOP_ENV,
                                        options={"shop_domain": "shop-x.myshopify.com", "location_ids": [1, 2]})
        assert shop.base_url == "https://shop-x.myshopify.com"


# -- the CLI ---------------------------------------------------------------------------------------------


def test_cli_add_list_sync_disable_and_the_stores_alias(env, shop):
    sessions, (sandbox, url) = env, shop
    runner = CliRunner()
    added = runner.invoke(main, ["accounts", "add", "shopify", "shop-eu", "--credentials-env", SHOP_ENV,
                                 "--base-url", url, "--name", "Shop EU", "--option", "shop_domain=shop-eu.myshopify.com",
                                 "--option", "restock_on_cancel=false"])
    assert added.exit_code == 0, added.output
    # Its first sync ran on the in-process worker (no REDIS_URL), through the one pipeline.
    assert "shop-eu" in added.output and "succeeded" in added.output
    assert stock(sessions, "shop-eu") == sandbox.truth()
    with sessions() as session:
        row = session.execute(text("SELECT * FROM marketplaces WHERE code = 'shop-eu'")).mappings().one()
    assert (row["name"], row["credentials_env"], row["options"]) == \
        ("Shop EU", SHOP_ENV, {"shop_domain": "shop-eu.myshopify.com", "restock_on_cancel": False})

    quiet = runner.invoke(main, ["stores", "add", "refurbed", "quiet", "--credentials-env",
                                 "STOCKSYNC_ACCOUNT_QUIET_TOKEN", "--base-url", "https://api.refurbed.com"])
    assert quiet.exit_code == 0 and "STOCKSYNC_ACCOUNT_QUIET_TOKEN is not set here" in quiet.output

    listed = runner.invoke(main, ["accounts", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    assert f"${SHOP_ENV} (set)" in listed.output and "sync (cursor pages)" in listed.output
    assert "$REFURBED_TOKEN (NOT SET here)" in listed.output
    assert "$STOCKSYNC_ACCOUNT_QUIET_TOKEN (NOT SET here)" in listed.output
    as_json = runner.invoke(main, ["stores", "list", "--json"])
    assert as_json.exit_code == 0, as_json.output
    import json

    by_code = {row["code"]: row for row in json.loads(as_json.output)}
    assert by_code["backmarket"]["capabilities"] == ["sync (numbered pages)", "read one", "push", "poll orders"]
    assert (by_code["shop-eu"]["configured"], by_code["shop-eu"]["last_sync"]["status"]) == (True, "succeeded")
    assert by_code["quiet"]["configured"] is False and by_code["quiet"]["last_sync"] is None

    synced = runner.invoke(main, ["accounts", "sync", "shop-eu", "--force"], env={"COLUMNS": "250"})
    assert synced.exit_code == 0 and "succeeded" in synced.output, synced.output
    refused = runner.invoke(main, ["accounts", "sync", "shop-eu"])
    assert refused.exit_code == 1 and "cooldown" in refused.output

    assert runner.invoke(main, ["stores", "disable", "shop-eu"]).exit_code == 0
    disabled = runner.invoke(main, ["accounts", "sync", "shop-eu"])
    assert disabled.exit_code == 2 and "account 'shop-eu' is disabled" in disabled.output
    assert runner.invoke(main, ["accounts", "sync"]).exit_code == 2  # neither CODE nor --all
    assert runner.invoke(main, ["accounts", "enable", "shop-eu"]).exit_code == 0
    every = runner.invoke(main, ["accounts", "sync", "--all", "--force"], env={"COLUMNS": "250"})
    assert every.exit_code == 0, every.output  # the others' credentials are not set here: shop-eu only
    assert "shop-eu" in every.output and "backmarket" not in every.output and "quiet" not in every.output
    assert runner.invoke(main, ["accounts", "add", "shopify", "shop-2", "--credentials-env", SHOP_ENV, "--base-url",
                                url, "--no-auto-sync", "--disabled"]).output.count("\n") == 1  # added, not synced

    for result in (added, quiet, listed, as_json, synced, refused, disabled, every):
        assert SHOP_SECRET not in result.output and REFURBED_SECRET not in result.output


@pytest.mark.parametrize("args, error", [
    (["ebay", "x", "--credentials-env", SHOP_ENV], "unknown platform 'ebay'"),
    (["shopify", "x", "--credentials-env", SHOP_SECRET], "never as the secret itself"),
    (["shopify", "x", "--credentials-env", "DATABASE_URL"], "must start with STOCKSYNC_ACCOUNT_"),
    (["refurbed", "x", "--credentials-env", REFURBED_ENV, "--base-url", "https://evil.example.com"],
     "Refurbed's own hosts"),
    (["refurbed", "x", "--credentials-env", REFURBED_ENV, "--option", "nothing"], "expected key=value"),
    (["refurbed", "Bad Code", "--credentials-env", REFURBED_ENV], "account code 'Bad Code' refused"),
    (["refurbed", "backmarket", "--credentials-env", REFURBED_ENV], "exists already"),
])
def test_cli_add_refuses_clearly_and_never_echoes_a_secret(env, args, error):
    result = CliRunner().invoke(main, ["accounts", "add", *args])
    assert result.exit_code == 2 and error in result.output, result.output
    assert SHOP_SECRET not in result.output
    with resources.sessions()() as session:
        assert account_rows.get_account(session, "x") is None


# -- migration 0010: one run record ---------------------------------------------------------------------------


def test_the_store_sync_logs_fold_into_sync_runs_and_the_store_tables_go(pg_server):
    from sqlalchemy import create_engine, inspect

    from db.migrate import downgrade, upgrade

    url = pg_server.create_database("accounts_0010")
    upgrade(url, "0008")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            def run(sql, **values):
                result = connection.execute(text(sql), values)
                return result.scalar() if result.returns_rows else None

            shop = run("INSERT INTO marketplaces (code, name, platform) VALUES ('shop-eu', 'shop-eu', 'shopify') "
                       "RETURNING id")
            store = run("INSERT INTO store_integrations (platform, name, credentials_env, marketplace_id) "
                        "VALUES ('shopify', 'shop-eu', 'SHOP_EU_TOKEN', :m) RETURNING id", m=shop)
            done = run("INSERT INTO sync_runs (kind, target, trigger, status, finished_at, items, changed) "
                       "VALUES ('store', 'shop-eu', 'scheduled', 'succeeded', now(), 60, 5) RETURNING id")
            stuck = run("INSERT INTO sync_runs (kind, target, trigger, status) "
                        "VALUES ('store', 'shop-eu', 'manual', 'running') RETURNING id")
            # The account's stock sync runs meanwhile: the store's running row must not collide with it.
            running = run("INSERT INTO sync_runs (kind, target, trigger, status) "
                          "VALUES ('stock', 'shop-eu', 'manual', 'running') RETURNING id")
            for sync_run_id, status, created, error in ((done, "succeeded", 3, None), (stuck, "running", 0, None),
                                                        (None, "failed", 0, "HTTP 401")):
                run("INSERT INTO store_sync_logs (integration_id, sync_run_id, trigger, status, items, created, "
                    "updated, skipped, api_calls, errors) VALUES (:i, :r, 'scheduled', :s, 60, :c, 2, 55, 4, :e)",
                    i=store, r=sync_run_id, s=status, c=created, e=error)
        upgrade(url)
        assert not {"store_integrations", "store_sync_logs"} & set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            runs = {row.id: row for row in connection.execute(text(
                "SELECT id, kind, target, status, error, details FROM sync_runs ORDER BY id"))}
        assert {row.kind for row in runs.values()} == {"stock"} and len(runs) == 4
        assert runs[done].status == "succeeded" and runs[done].details["store_sync"] == {
            "log_id": 1, "trigger": "scheduled", "items": 60, "created": 3, "updated": 2, "skipped": 55,
            "api_calls": 4}
        assert runs[stuck].status == "abandoned" and "migration 0010" in runs[stuck].error
        assert runs[running].status == "running"
        [orphan] = [row for row in runs.values() if row.id not in (done, stuck, running)]
        assert (orphan.target, orphan.status, orphan.error) == ("shop-eu", "failed", "HTTP 401")
        assert orphan.details["store_sync"]["log_id"] == 3
        downgrade(url, "0008")
        assert {"store_integrations", "store_sync_logs"} <= set(inspect(engine).get_table_names())
        upgrade(url)
    finally:
        engine.dispose()
