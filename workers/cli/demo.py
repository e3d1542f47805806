"""``stocksync demo``: one seller on three marketplaces (sandbox Back Market, Refurbed and Shopify), in one process.

One catalogue is listed on all three (the Shopify shop as an account of its own, ``shop``, on the
sandbox's GraphQL Admin API at the standard plan's query-cost rate); each account is synced through
the one catalogue pipeline, orders land on each marketplace and are polled, a top-up is pushed to
each (to Shopify with its compare-and-set), the sandboxes change 5% of their stock and every account
is synced again; a table per account shows what every step did, on the embedded PostgreSQL.

With ``--console`` the operator console stays up afterwards on the demo's data, with a demo user it
prints; if ``redis-server`` is installed the demo then runs on a local Redis (so dead letters exist
and can be retried from the console), else on the in-process broker.
"""
from __future__ import annotations

import os
import secrets
import shutil
import sys

import click

from runtime.settings import get_settings
from workers.cli.common import in_process_worker
from workers.cli.sync import run_stock_sync

DEMO_USER = "demo"


@click.command("demo")
@click.option("--listings", default=2000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Listings in the sandbox catalogue.")
@click.option("--change", default=None, type=click.IntRange(0), help="Listings whose stock changes between runs "
              "(default: 5%).")
@click.option("--console", "with_console", is_flag=True,
              help="Then serve the operator console on the demo's data (CONSOLE_HOST:CONSOLE_PORT) until Ctrl-C.")
def demo_command(listings: int, change: int | None, with_console: bool) -> None:
    """A seller on sandbox Back Market, Refurbed and Shopify: sync, orders, top-ups, sync again (embedded PostgreSQL)."""
    from sandbox.backmarket import BackMarketSandbox
    from sandbox.refurbed import RefurbedSandbox
    from sandbox.server import serve_in_thread
    from sandbox.shopify import ShopifySandbox

    settings = get_settings()
    # The sandboxes enforce the marketplaces' real quotas; the fleet's limiters keep under them.
    sandbox = BackMarketSandbox(listings=listings, seed=7, token="demo-token",
                                quota_requests=settings.backmarket_quota_requests,
                                quota_window_s=settings.backmarket_quota_window_s)
    refurbed = RefurbedSandbox(token="demo-token", quota_requests=settings.refurbed_quota_requests,
                               quota_window_s=settings.refurbed_quota_window_s)
    refurbed.add_offers(listings, seed=7)  # the same catalogue, listed on all three
    shop = ShopifySandbox(skus=[sandbox.listing(i)["sku"] for i in range(listings)], locations=1, token="demo-token",
                          seed=7)  # the standard plan's cost bucket, as Shopify meters it
    server = serve_in_thread(sandbox.build_app())
    refurbed_server = serve_in_thread(refurbed.build_app())
    shop_server = serve_in_thread(shop.build_app())
    redis_server = None
    redis_url = ""
    if with_console and shutil.which("redis-server"):
        from runtime.local_servers import RedisServer

        redis_server = RedisServer((settings.data_dir / "redis").resolve()).start()
        redis_url = redis_server.url
    # The demo is self-contained whatever the environment says: embedded database, no Redis (or its own).
    os.environ.update({"REDIS_URL": redis_url, "DATABASE_URL": "", "BACKMARKET_BASE_URL": server.url,
                       "BACKMARKET_TOKEN": "demo-token", "REFURBED_BASE_URL": refurbed_server.url,
                       "REFURBED_TOKEN": "demo-token", "METRICS_PORT": "0", "ACCOUNTS_ALLOW_LOOPBACK": "true",
                       SHOP_CREDENTIAL: "demo-token"})
    get_settings.cache_clear()
    from db.migrate import upgrade
    from runtime import resources
    from workers.cli.common import console, summary_table

    click.echo(f"sandbox Back Market with {listings} listings at {server.url}; sandbox Refurbed and sandbox "
               f"Shopify with the same catalogue at {refurbed_server.url} and {shop_server.url}")
    upgrade(resources.database_url())
    _add_shop(shop_server.url)
    runs = []
    try:
        with in_process_worker(on_redis=bool(redis_url)):
            runs += [run_stock_sync(code, force=True, wait=True) for code in ACCOUNTS]
            orders = _orders_on_each(sandbox, refurbed, shop)
            click.echo(f"{orders} orders placed on the marketplaces; polling them")
            for code in ACCOUNTS:
                _poll(code)
            _topup_each()
            count = change if change is not None else max(1, listings // 20)
            sandbox.change_stock(count, rng_seed=11)
            # Changes by hand on Refurbed, away from the row just pushed: a page fetched within the clock
            # skew of a push is not trusted for that row (the next sync reads it), by the stock rules.
            for sku in sorted(refurbed.quantities())[-count:]:
                refurbed.set_offer_stock(sku, refurbed.stock(sku) + 1)
            for sku in sorted(shop.truth())[-count:]:  # by hand in the shop's admin too
                shop.set_available(sku, (shop.available(sku) or 0) + 1)
            click.echo(f"changed the stock of {count} listings on each marketplace; syncing again")
            runs += [run_stock_sync(code, force=True, wait=True) for code in ACCOUNTS]
            console.print(summary_table(runs, title="demo: two stock syncs of each account"))
            console.print(_accounts_table(sandbox, refurbed, shop))
            backmarket_stats, refurbed_stats, shop_stats = sandbox.stats(), refurbed.stats(), shop.stats()
            for name, requests, limited, quota, window in (
                    ("Back Market", backmarket_stats["total_requests"], backmarket_stats["rate_limited"],
                     settings.backmarket_quota_requests, settings.backmarket_quota_window_s),
                    ("Refurbed", sum(refurbed_stats["requests"].values()), refurbed_stats["rate_limited"],
                     settings.refurbed_quota_requests, settings.refurbed_quota_window_s)):
                click.echo(f"sandbox {name} saw {requests} requests, {limited} answered 429 (quota {quota} per "
                           f"{window:g} s)")
            spent = sum(cost["actual"] for cost in shop_stats["query_costs"].values())
            click.echo(f"sandbox Shopify saw {shop_stats['total_requests']} requests costing {spent:,.0f} query "
                       f"points, {shop_stats['throttled']} answered THROTTLED (bucket 2000 points, 100 a second); "
                       f"compare-and-set writes {shop_stats['inventory_writes']}")
            if with_console:
                _serve_console()
    finally:
        server.stop()
        refurbed_server.stop()
        shop_server.stop()
        if redis_server is not None:
            redis_server.stop()
    if any(run.status != "succeeded" for run in runs):
        sys.exit(1)


#: The demo seller's accounts (the main ones of the settings, and a Shopify shop added by the demo).
ACCOUNTS = ("backmarket", "refurbed", "shop")

#: The variable the demo shop's credential is read from.
SHOP_CREDENTIAL = "STOCKSYNC_ACCOUNT_DEMO_SHOP_TOKEN"


def _add_shop(url: str) -> None:
    """The demo's Shopify account on the sandbox shop (its URL changes each run)."""
    from db import accounts
    from runtime import accounts as views
    from runtime import resources

    with resources.sessions()() as session:
        if accounts.get_account(session, "shop") is None:
            accounts.add_account(session, platform="shopify", code="shop", name="Shopify shop",
                                 credentials_env=SHOP_CREDENTIAL, base_url=url, allow_loopback=True)
        else:  # the embedded database outlives the run; the sandbox's port does not
            accounts.set_base_url(session, "shop", url, allow_loopback=True)
        session.commit()
    views.forget()


def _orders_on_each(backmarket, refurbed, shop, count: int = 5) -> int:
    """``count`` one-unit orders on each marketplace, of listings in stock; how many in all."""
    listings = [listing for listing, quantity in sorted(backmarket.quantities().items()) if quantity > 1][:count]
    for listing in listings:
        backmarket.orders.place_order([(listing, 1)])
    skus = [sku for sku, stock in sorted(refurbed.quantities().items()) if stock > 1][:count]
    for sku in skus:
        refurbed.place_order([sku], notify=False)
    in_shop = [sku for sku, available in sorted(shop.truth().items()) if available > 1][:count]
    for sku in in_shop:
        shop.place_order({sku: 1}, notify=False)  # no webhook in the demo: the poll finds them
    return len(listings) + len(skus) + len(in_shop)


def _poll(code: str) -> None:
    """Walk the account's recent orders now and book them (the scheduler's order poll)."""
    import asyncio

    from actors.orders import poll_orders, walk_orders_of
    from runtime import resources

    async def walk():
        try:
            return await walk_orders_of(code, poll_orders.broker)
        finally:
            await resources.close_loop_resources()

    asyncio.run(walk())
    poll_orders.broker.join("stock-events")


def _topup_each() -> None:
    """A goods-received top-up of 3 units of one SKU on each account, booked and pushed."""
    from datetime import datetime, timezone

    from actors.events import book, push_stock
    from core.events import StockEvent
    from db.accounts import stock_of
    from runtime import resources

    for code in ACCOUNTS:
        with resources.sessions()() as session:
            sku = min(stock_of(session, code))
        book(StockEvent.of("stock_topup", marketplace=code, sku=sku, quantity=3, reference=f"demo-{code}-delivery",
                           event_time=datetime.now(timezone.utc), actor="demo"))
    push_stock.broker.join("stock-push")


def _accounts_table(backmarket, refurbed, shop):
    """Per account: rows, units listed here and on the marketplace, rows that differ, rows pushed."""
    from rich.table import Table

    from db.accounts import pushed_rows, stock_of
    from runtime import resources

    on_marketplace = {"backmarket": {backmarket.entry(listing).sku: quantity
                                     for listing, quantity in backmarket.quantities().items()},
                      "refurbed": refurbed.quantities(), "shop": shop.truth()}
    table = Table(title="demo: each account against its marketplace")
    for column in ("account", "rows", "units here", "units there", "rows that differ", "pushed"):
        table.add_column(column, justify="left" if column == "account" else "right")
    with resources.sessions()() as session:
        for code in ACCOUNTS:
            here, pushed = stock_of(session, code), pushed_rows(session, code)
            there = on_marketplace[code]
            differ = sum(1 for sku, listed in here.items() if there.get(sku) != listed)
            table.add_row(code, str(len(here)), str(sum(here.values())), str(sum(there.values())), str(differ),
                          str(pushed))
    return table


def _serve_console() -> None:
    """The console on the demo's data, with a fresh password for the demo admin, until Ctrl-C."""
    from db import users
    from runtime import resources
    from workers.console.app import run

    password = secrets.token_urlsafe(12)
    with resources.sessions()() as session:
        try:
            users.set_password(session, DEMO_USER, password)
        except users.UserError:
            users.add_user(session, DEMO_USER, password, "admin")
        session.commit()
    settings = get_settings()
    click.echo(f"\noperator console: http://{settings.console_host}:{settings.console_port}  "
               f"user {DEMO_USER!r}, password {password!r} (admin; a new password every demo run).  Ctrl-C stops.")
    run(settings.console_host, settings.console_port)
