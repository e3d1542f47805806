"""`stocksync` commands of the events pipeline (registered on the main group by :func:`register`).

- ``stocksync reconcile backmarket [--dry-run] [--threshold N] [--show N]``: compare the
  marketplace's listing pages with the stock table; report (and correct, unless a dry run) every
  difference with its cause (drift explained: stale_read, push_lost, unbooked_order,
  one_sided_restock, hand_edit); alert above the threshold.
"""
from __future__ import annotations

import click


@click.command("reconcile")
@click.argument("marketplace", type=click.Choice(["backmarket"]))
@click.option("--dry-run", is_flag=True, help="Report the differences; correct nothing.")
@click.option("--threshold", type=click.IntRange(min=0), default=None,
              help="Alert when more rows than this differ (default RECONCILE_ALERT_THRESHOLD).")
@click.option("--show", type=click.IntRange(min=0), default=20, show_default=True,
              help="How many differences to print (largest first).")
def reconcile_command(marketplace: str, dry_run: bool, threshold: int | None, show: int) -> None:
    """Reconcile MARKETPLACE's stock with the marketplace (the bulk page walk, never one call per listing).

    Checks the ledger invariant first: a ledger that does not add up is not corrected from the
    marketplace (the run fails and alerts).  Every difference is kept in reconciliation_reports.
    """
    from rich.table import Table

    from db.reconcile import discrepancy_report
    from db.syncs import SyncRefused
    from runtime import resources
    from workers.cli.common import console
    from workers.cli.common import fleet as _fleet

    _fleet()  # the actors first: actors.alerts registers where an operations alert goes
    from pipelines.reconcile import run_reconciliation

    try:
        summary = run_reconciliation(marketplace, dry_run=dry_run, threshold=threshold)
    except SyncRefused as refused:
        raise click.ClickException(refused.reason) from None

    table = Table(title=f"{marketplace} reconciliation {summary.run_id}{' (dry run)' if dry_run else ''}")
    for column in ("status", "pages", "listings", "differences", "corrected", "deferred", "threshold", "alert"):
        table.add_column(column, justify="left" if column in ("status", "alert") else "right")
    table.add_row(summary.status, str(summary.pages), str(summary.listings), str(summary.discrepancies),
                  str(summary.corrected), str(summary.deferred), str(summary.threshold),
                  "ALERT" if summary.alert else "-")
    console.print(table)
    if summary.discrepancies:
        causes = Table(title="differences per cause")
        for cause in summary.causes:
            causes.add_column(cause, justify="right")
        causes.add_row(*(str(count) for count in summary.causes.values()))
        console.print(causes)
    if show and summary.discrepancies:
        with resources.sessions()() as session:
            rows = discrepancy_report(session, summary.run_id, limit=show)
        details = Table(title=f"largest differences ({len(rows)} of {summary.discrepancies})")
        for column in ("sku", "listing", "local", "marketplace", "difference", "corrected", "cause"):
            details.add_column(column, justify="right" if column in ("local", "marketplace", "difference") else "left")
        for row in rows:
            details.add_row(row.sku, row.listing or "-", str(row.local), str(row.marketplace), f"{row.difference:+d}",
                            "yes" if row.corrected else "no", row.cause or "-")
        console.print(details)
    if summary.status != "succeeded":
        raise click.ClickException(f"reconciliation {summary.run_id} {summary.status}: {summary.error}")
