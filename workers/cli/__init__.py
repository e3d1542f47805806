"""The ``stocksync`` command line: one module per command group, named as the command is typed.

Commands import what they use inside their function: declaring an actor builds the broker from
the settings, which some commands (``demo``) change first, and every command module is loaded for
each call (hoisting the commands' imports took ``stocksync --help`` from 0.7 s to 1.9 s, measured).
"""
from __future__ import annotations

import logging
from importlib.metadata import version

import click

from workers.cli import (
    accounts,
    alerts,
    console,
    db,
    demo,
    doctor,
    dlq,
    ingram,
    ledger,
    monitor,
    poll_orders,
    reconcile,
    sandbox,
    scheduler,
    serve,
    stock,
    sync,
    syncs,
    users,
)


class _Main(click.Group):
    """The root group: a database that is down or has no schema is one line, not a traceback."""

    def invoke(self, ctx):
        """Run the command; name a database problem and what to do (never its URL or password)."""
        from sqlalchemy.exc import OperationalError, ProgrammingError

        try:
            return super().invoke(ctx)
        except ProgrammingError as error:
            if getattr(error.orig, "sqlstate", None) == "42P01":  # undefined table
                raise click.ClickException("the database has no schema (or an old one): run `stocksync db upgrade`"
                                           ) from None
            raise
        except OperationalError as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else type(error).__name__
            raise click.ClickException(f"cannot reach PostgreSQL: {reason}") from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stocksync", prog_name="stocksync")
@click.option("-v", "--verbose", count=True, help="More log lines: -v is DEBUG (with tracebacks). Repeatable.")
@click.option("-q", "--quiet", count=True, help="Fewer log lines: -q is WARNING, -qq ERROR. Repeatable.")
def main(verbose: int, quiet: int) -> None:
    """stocksync: keep every marketplace's stock right.

    Logs go to stderr (LOG_LEVEL, default INFO; LOG_FORMAT=text|json); tables and data go to stdout.
    """
    from runtime import logs
    from runtime.settings import Settings, get_settings

    try:
        settings = get_settings()
    except Exception as error:  # pydantic's error names each bad variable
        if click.get_current_context().invoked_subcommand != "doctor":  # doctor says it in its own words
            raise click.ClickException(f"the settings are not valid: {error}") from None
        settings = Settings.model_construct()
    logs.configure(settings, verbosity=verbose - quiet)
    logging.getLogger("stocksync.cli").debug("stocksync %s: %s, log level %s", version("stocksync"),
                                             click.get_current_context().invoked_subcommand,
                                             logging.getLevelName(logging.getLogger().level))


for command in (db.db_group, sync.sync_command, demo.demo_command, sandbox.sandbox_command,
                reconcile.reconcile_command, ingram.ingram, monitor.monitor_command, serve.serve_command,
                poll_orders.poll_orders_command, dlq.dlq, scheduler.scheduler, accounts.accounts_group,
                accounts.stores_group, alerts.alerts_group, console.console_command, users.users_group,
                doctor.doctor_command, syncs.syncs_command, stock.stock_group, ledger.ledger_group):
    main.add_command(command)
