"""The ``stocksync`` command line: one module per command group, named as the command is typed.

Actor modules are imported inside the commands, never at the top: declaring an actor builds the
broker from the settings, and some commands (``demo``) change the settings first.
"""
from __future__ import annotations

import click

from workers.cli import (
    alerts,
    console,
    db,
    demo,
    dlq,
    ingram,
    monitor,
    poll_orders,
    reconcile,
    sandbox,
    scheduler,
    serve,
    stores,
    sync,
    users,
)


@click.group()
def main() -> None:
    """stocksync: keep every marketplace's stock right."""


for command in (db.db_group, sync.sync_command, demo.demo_command, sandbox.sandbox_command,
                reconcile.reconcile_command, ingram.ingram, monitor.monitor_command, serve.serve_command,
                poll_orders.poll_orders_command, dlq.dlq, scheduler.scheduler, stores.stores_group,
                alerts.alerts_group, console.console_command, users.users_group):
    main.add_command(command)
