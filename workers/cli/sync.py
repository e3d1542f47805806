"""``stocksync sync``: a bulk stock sync of one marketplace, followed to its end or not."""
from __future__ import annotations

import click

from workers.cli.common import fleet, in_process_worker


def run_stock_sync(marketplace: str, *, force: bool, wait: bool, trigger: str = "manual", show: bool = True):
    """Start a stock sync; with ``wait``, follow it to the end and return the finished run."""
    from actors.stock_sync import begin_stock_sync
    from db.syncs import get_run
    from runtime import resources
    from workers.cli.common import watch_run

    fleet()
    sync_id = begin_stock_sync(marketplace, trigger=trigger, force=force)
    if not wait:
        return sync_id
    factory = resources.sessions()

    def load():
        with factory() as session:
            return get_run(session, sync_id)

    return watch_run(load, show=show)


@click.command("sync")
@click.argument("marketplace", metavar="ACCOUNT")
@click.option("--force", is_flag=True, help="Start even inside the cooldown (never while one is running).")
@click.option("--wait/--no-wait", default=None,
              help="Follow the run with a progress bar and print its summary (always on without REDIS_URL).")
def sync_command(marketplace: str, force: bool, wait: bool | None) -> None:
    """Sync ACCOUNT's stock (e.g. backmarket) in bulk pages into PostgreSQL."""
    from core.errors import MalformedMessage
    from db.syncs import SyncRefused
    from runtime import resources
    from workers.cli.common import console, summary_table

    wait = True if resources.in_process() else bool(wait)
    with in_process_worker():
        try:
            outcome = run_stock_sync(marketplace, force=force, wait=wait)
        except MalformedMessage as refused:
            raise click.BadParameter(str(refused), param_hint="ACCOUNT") from None
        except SyncRefused as refused:
            raise click.ClickException(refused.reason) from None
    if not wait:
        click.echo(f"sync {outcome} started; follow it with `stocksync monitor {outcome}`")
        return
    console.print(summary_table([outcome], title=f"{marketplace} stock sync"))
    if outcome.status != "succeeded":
        raise click.ClickException(f"sync {outcome.id} {outcome.status}: {outcome.error}")
