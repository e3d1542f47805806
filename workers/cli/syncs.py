"""``stocksync syncs``: the recent sync runs of every kind, as a table or as JSON."""
from __future__ import annotations

import click


@click.command("syncs")
@click.option("--kind", default=None, help="Only runs of this kind (stock, supplier, ...).")
@click.option("--target", default=None, help="Only runs of this target (an account's code, ingram, ...).")
@click.option("--status", type=click.Choice(["running", "succeeded", "failed", "abandoned"]), default=None,
              help="Only runs in this state.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000), help="Newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print every column of each run as JSON.")
def syncs_command(kind: str | None, target: str | None, status: str | None, limit: int, as_json: bool) -> None:
    """Recent sync runs, newest first: kind, target, trigger, status, pages, items, changes, duration, error."""
    from db.syncs import recent_runs
    from runtime import resources
    from workers.cli.common import echo_json, print_table, run_dict

    with resources.sessions()() as session:
        runs = recent_runs(session, limit, kind=kind, target=target, status=status)
    if as_json:
        echo_json([run_dict(run) for run in runs])
        return
    if not runs:
        click.echo("no sync runs" + (" match" if kind or target or status else " yet"))
        return
    rows = [(str(run.id), run.kind, run.target, run.trigger, run.status, f"{run.pages_done}/{run.total_pages or '?'}",
             str(run.items), str(run.changed), f"{run.started_at:%Y-%m-%d %H:%M:%S}",
             f"{run.duration_s:.1f} s" if run.duration_s is not None else "-", (run.error or "").splitlines()[0]
             if run.error else "")
            for run in runs]
    print_table("sync runs (newest first)", ("id", "kind", "target", "trigger", "status", "pages", "items", "changed",
                                            "started", "duration", "error"), rows)
