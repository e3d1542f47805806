"""``stocksync demo``: two syncs of a sandbox Back Market on the embedded PostgreSQL, in one process.

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
    """Sync a sandbox Back Market twice on the embedded PostgreSQL and an in-process broker."""
    from sandbox.backmarket import BackMarketSandbox
    from sandbox.server import serve_in_thread

    settings = get_settings()
    # The sandbox enforces Back Market's real catalog quota; the fleet's limiter keeps under it.
    sandbox = BackMarketSandbox(listings=listings, seed=7, token="demo-token",
                                quota_requests=settings.backmarket_quota_requests,
                                quota_window_s=settings.backmarket_quota_window_s)
    server = serve_in_thread(sandbox.build_app())
    redis_server = None
    redis_url = ""
    if with_console and shutil.which("redis-server"):
        from runtime.local_servers import RedisServer

        redis_server = RedisServer((settings.data_dir / "redis").resolve()).start()
        redis_url = redis_server.url
    # The demo is self-contained whatever the environment says: embedded database, no Redis (or its own).
    os.environ.update({"REDIS_URL": redis_url, "DATABASE_URL": "", "BACKMARKET_BASE_URL": server.url,
                       "BACKMARKET_TOKEN": "demo-token", "METRICS_PORT": "0"})
    get_settings.cache_clear()
    from db.migrate import upgrade
    from runtime import resources
    from workers.cli.common import console, summary_table

    click.echo(f"sandbox Back Market with {listings} listings at {server.url}")
    upgrade(resources.database_url())
    try:
        with in_process_worker(on_redis=bool(redis_url)):
            first = run_stock_sync("backmarket", force=True, wait=True)
            changed = sandbox.change_stock(change if change is not None else max(1, listings // 20), rng_seed=11)
            click.echo(f"changed the stock of {len(changed)} listings in the sandbox; syncing again")
            second = run_stock_sync("backmarket", force=True, wait=True)
            console.print(summary_table([first, second], title="demo: two Back Market stock syncs"))
            stats = sandbox.stats()
            click.echo(f"sandbox saw {stats['total_requests']} requests, {stats['rate_limited']} answered 429 "
                       f"(quota {settings.backmarket_quota_requests} per {settings.backmarket_quota_window_s:g} s)")
            if with_console:
                _serve_console()
    finally:
        server.stop()
        if redis_server is not None:
            redis_server.stop()
    if first.status != "succeeded" or second.status != "succeeded":
        sys.exit(1)


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
