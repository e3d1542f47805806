"""``stocksync demo``: two syncs of a sandbox Back Market on the embedded PostgreSQL, in one process."""
from __future__ import annotations

import os
import sys

import click

from runtime.settings import get_settings
from workers.cli.common import in_process_worker
from workers.cli.sync import run_stock_sync


@click.command("demo")
@click.option("--listings", default=2000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Listings in the sandbox catalogue.")
@click.option("--change", default=None, type=click.IntRange(0), help="Listings whose stock changes between runs "
              "(default: 5%).")
def demo_command(listings: int, change: int | None) -> None:
    """Sync a sandbox Back Market twice on the embedded PostgreSQL and an in-process broker."""
    from sandbox.backmarket import BackMarketSandbox
    from sandbox.server import serve_in_thread

    settings = get_settings()
    # The sandbox enforces Back Market's real catalog quota; the fleet's limiter keeps under it.
    sandbox = BackMarketSandbox(listings=listings, seed=7, token="demo-token",
                                quota_requests=settings.backmarket_quota_requests,
                                quota_window_s=settings.backmarket_quota_window_s)
    server = serve_in_thread(sandbox.build_app())
    # The demo is self-contained whatever the environment says: embedded database, no Redis.
    os.environ.update({"REDIS_URL": "", "DATABASE_URL": "", "BACKMARKET_BASE_URL": server.url,
                       "BACKMARKET_TOKEN": "demo-token"})
    get_settings.cache_clear()
    from db.migrate import upgrade
    from runtime import resources
    from workers.cli.common import console, summary_table

    click.echo(f"sandbox Back Market with {listings} listings at {server.url}")
    upgrade(resources.database_url())
    try:
        with in_process_worker():
            first = run_stock_sync("backmarket", force=True, wait=True)
            changed = sandbox.change_stock(change if change is not None else max(1, listings // 20), rng_seed=11)
            click.echo(f"changed the stock of {len(changed)} listings in the sandbox; syncing again")
            second = run_stock_sync("backmarket", force=True, wait=True)
    finally:
        server.stop()
    console.print(summary_table([first, second], title="demo: two Back Market stock syncs"))
    stats = sandbox.stats()
    click.echo(f"sandbox saw {stats['total_requests']} requests, {stats['rate_limited']} answered 429 "
               f"(quota {settings.backmarket_quota_requests} per {settings.backmarket_quota_window_s:g} s)")
    if first.status != "succeeded" or second.status != "succeeded":
        sys.exit(1)
