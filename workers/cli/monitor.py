"""A live view of sync runs of every kind (stock, supplier, ...): ``stocksync monitor``.

Each run shows its progress as done/total per track (pages or batches; details for supplier
syncs), the rate of each track, an ETA (the slowest track's), and its API calls, retries and
errors; the numbers come from :mod:`pipelines.progress` (shared with the console).

:func:`runs_table` is pure (progress in, table out) so it is tested without a terminal;
:func:`watch` drives a :class:`rich.live.Live` display.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Callable, Iterable, Sequence

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pipelines.progress import (PAGE_NAMES, RunProgress, Track, format_duration, load_progress, load_runs,
                                run_progress)
from runtime.settings import get_settings

__all__ = ["PAGE_NAMES", "RunProgress", "Track", "format_duration", "load_runs", "monitor_command", "render_text",
           "run_progress", "runs_table", "watch", "watch_syncs"]

#: The longest error text shown in the table.
MAX_ERROR_CHARS = 80


def runs_table(progresses: Iterable[RunProgress], title: str = "stocksync syncs") -> Table:
    """One row per run: status, done/total and rate per track, ETA, API calls, retries, errors, elapsed."""
    table = Table(title=title)
    for column, justify in (("run", "right"), ("kind", "left"), ("target", "left"), ("status", "left"),
                            ("done/total", "right"), ("rate", "right"), ("ETA", "right"), ("api calls", "right"),
                            ("retries", "right"), ("errors", "right"), ("elapsed", "right"), ("error", "left")):
        table.add_column(column, justify=justify)
    for progress in progresses:
        status = {"running": "[bold yellow]running[/]", "succeeded": "[green]succeeded[/]",
                  "failed": "[bold red]failed[/]"}.get(progress.status, progress.status)
        error = progress.error or ""
        if len(error) > MAX_ERROR_CHARS:
            error = error[:MAX_ERROR_CHARS - 1] + "…"
        table.add_row(
            str(progress.id), progress.kind, progress.target, status,
            "\n".join(f"{track.name} {track.fraction}" for track in progress.tracks),
            "\n".join(f"{track.rate:.1f} {track.name}/s" if track.rate else f"- {track.name}/s"
                      for track in progress.tracks),
            format_duration(progress.eta_s), str(progress.api_calls), str(progress.retries), str(progress.errors),
            format_duration(progress.elapsed_s), error)
    return table


def render_text(table: Table, width: int = 200) -> str:
    """The table as plain text (no colours), e.g. for tests and logs."""
    console = Console(width=width, record=True, file=_Discard(), color_system=None)
    console.print(table)
    return console.export_text()


def watch(load: Callable[[], Sequence[RunProgress]], *, refresh_s: float = 1.0, once: bool = False,
          until_done: bool = False, console: Console | None = None, title: str = "stocksync syncs",
          timeout_s: float | None = None, live_console: Console | None = None) -> Sequence[RunProgress]:
    """Show ``load()`` as a table, refreshed every ``refresh_s`` until interrupted; return the last rows.

    ``once`` prints one table (on ``console``) and returns; the live view goes to ``live_console``
    (default the same); ``until_done`` returns once no shown run is running.
    """
    console = console or Console()
    progresses = load()
    if once:
        console.print(runs_table(progresses, title))
        return progresses
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with Live(runs_table(progresses, title), console=live_console or console,
              refresh_per_second=max(1.0, 1 / refresh_s),
              transient=False) as live:
        while True:
            if until_done and progresses and all(p.status != "running" for p in progresses):
                return progresses
            if deadline is not None and time.monotonic() > deadline:
                return progresses
            time.sleep(refresh_s)
            progresses = load()
            live.update(runs_table(progresses, title))


class _Discard:
    """A file that drops what is written (``render_text`` records instead)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@click.command("monitor")
@click.argument("sync_id", required=False, type=int)
@click.option("--refresh", "refresh_s", default=1.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print the table once and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the runs' progress once as JSON (implies --once).")
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="Finished runs shown besides the running ones.")
def monitor_command(sync_id: int | None, refresh_s: float, once: bool, as_json: bool, limit: int) -> None:
    """A live view of running and recent syncs of every kind: done/total, rate, ETA, retries, errors.

    With SYNC_ID, that run only, until it ends.  Ctrl-C stops the view (not the syncs).  The live
    view goes to stderr; --once prints the table on stdout, as does a run's end when stdout is not
    a terminal.
    """
    if as_json:
        from workers.cli.common import echo_json

        progresses = watch_syncs(sync_id, refresh_s=refresh_s, once=True, until_done=False, limit=limit,
                                 show=False)
        if sync_id is not None and not progresses:
            raise click.ClickException(f"no sync run {sync_id}")
        echo_json([dataclasses.asdict(progress) for progress in progresses])
        return
    try:
        progresses = watch_syncs(sync_id, refresh_s=refresh_s, once=once, until_done=sync_id is not None, limit=limit)
    except KeyboardInterrupt:
        return
    if sync_id is not None and not progresses:
        raise click.ClickException(f"no sync run {sync_id}")


def watch_syncs(sync_id: int | None, *, refresh_s: float, once: bool, until_done: bool, limit: int = 10,
                show: bool = True):
    from runtime import resources
    from workers.cli.common import console, err_console

    factory = resources.sessions()
    namespace = get_settings().redis_namespace

    def load():
        return load_progress(factory, resources.sync_redis(), namespace, sync_id, limit)

    title = f"sync {sync_id}" if sync_id is not None else "stocksync syncs"
    if not show:
        return load()
    if sync_id is not None and not load():
        return []
    once = once or not sys.stdout.isatty() and not until_done
    progresses = watch(load, refresh_s=refresh_s, once=once, until_done=until_done, console=console, title=title,
                       live_console=err_console)
    if not once and not sys.stdout.isatty():
        console.print(runs_table(progresses, title))  # the end of the run, for whoever reads stdout
    return progresses
