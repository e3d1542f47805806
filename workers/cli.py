"""The ``stocksync`` command line."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import click

from workers.settings import get_settings


def _fleet():
    """Import the broker and actors (late: settings may be changed by the command first)."""
    from workers import fleet

    return fleet


@contextmanager
def in_process_worker(threads: int | None = None):
    """Run dramatiq worker threads in this process when there is no Redis (demo mode)."""
    from workers import runtime

    if not runtime.in_process():
        yield None
        return
    import dramatiq

    fleet = _fleet()
    worker = dramatiq.Worker(fleet.broker, worker_threads=threads or get_settings().inprocess_worker_threads,
                             worker_timeout=100)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@click.group()
def main() -> None:
    """stocksync: keep every marketplace's stock right."""


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.option("--revision", default="heads", show_default=True, help="Alembic revision to upgrade to.")
def db_upgrade(revision: str) -> None:
    """Apply the schema migrations (Alembic) to DATABASE_URL or the embedded database."""
    from db.migrate import upgrade
    from workers import runtime

    upgrade(runtime.database_url(), revision)
    click.echo(f"database at revision {revision}")


def run_stock_sync(marketplace: str, *, force: bool, wait: bool, trigger: str = "manual", show: bool = True):
    """Start a stock sync; with ``wait``, follow it to the end and return the finished run."""
    from actors.stock_sync import begin_stock_sync
    from db.syncs import get_run
    from workers import runtime
    from workers.reporting import watch_run

    _fleet()
    sync_id = begin_stock_sync(marketplace, trigger=trigger, force=force)
    if not wait:
        return sync_id
    factory = runtime.sessions()

    def load():
        with factory() as session:
            return get_run(session, sync_id)

    return watch_run(load, show=show)


@main.command("sync")
@click.argument("marketplace", type=click.Choice(["backmarket"]))
@click.option("--force", is_flag=True, help="Start even inside the cooldown (never while one is running).")
@click.option("--wait/--no-wait", default=None,
              help="Follow the run with a progress bar and print its summary (always on without REDIS_URL).")
def sync_command(marketplace: str, force: bool, wait: bool | None) -> None:
    """Sync MARKETPLACE's stock in bulk pages into PostgreSQL."""
    from db.syncs import SyncRefused
    from workers import runtime
    from workers.reporting import console, summary_table

    wait = True if runtime.in_process() else bool(wait)
    with in_process_worker():
        try:
            outcome = run_stock_sync(marketplace, force=force, wait=wait)
        except SyncRefused as refused:
            raise click.ClickException(refused.reason) from None
    if not wait:
        click.echo(f"sync {outcome} started; follow it with `stocksync monitor {outcome}`")
        return
    console.print(summary_table([outcome], title=f"{marketplace} stock sync"))
    if outcome.status != "succeeded":
        raise click.ClickException(f"sync {outcome.id} {outcome.status}: {outcome.error}")


@main.command("demo")
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
    from workers import runtime
    from workers.reporting import console, summary_table

    click.echo(f"sandbox Back Market with {listings} listings at {server.url}")
    upgrade(runtime.database_url())
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


@main.command("sandbox")
@click.option("--listings", default=1000, show_default=True, type=click.IntRange(0))
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 in a container; the sandbox has no authentication).")
@click.option("--port", default=8780, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token", default="sandbox-token", show_default=True)
@click.option("--quota-requests", default=20, show_default=True, type=click.IntRange(0),
              help="Catalog requests allowed per window (0: unthrottled).")
@click.option("--quota-window", default=10.0, show_default=True, type=click.FloatRange(min=0.001))
@click.option("--latency", default=0.0, show_default=True, type=click.FloatRange(min=0), help="Seconds per request.")
@click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Share of 500s.")
def sandbox_command(listings, seed, host, port, token, quota_requests, quota_window, latency, error_rate) -> None:
    """Serve a sandbox Back Market on HOST:PORT."""
    from sandbox.backmarket import BackMarketSandbox
    from sandbox.server import run_forever

    sandbox = BackMarketSandbox(listings=listings, seed=seed, token=token, quota_requests=quota_requests,
                                quota_window_s=quota_window, latency_s=latency, error_rate=error_rate)
    click.echo(f"sandbox Back Market: {listings} listings on http://{host}:{port} (token {token!r})")
    run_forever(sandbox.build_app(), host, port)


def _register_extensions() -> None:
    # Each pipeline keeps its commands in its own module.
    from workers import cli_events, cli_ingram, cli_intake, cli_ops

    for module in (cli_events, cli_ingram, cli_ops, cli_intake):
        module.register(main)
    from workers import cli_stores

    cli_stores.register(main)
    from workers import cli_alerts

    cli_alerts.register(main)


_register_extensions()

if __name__ == "__main__":
    main()
