"""Helpers shared by the command groups: the fleet import, in-process workers, run output (rich)."""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from datetime import date, datetime
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterable

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from runtime.settings import get_settings

if TYPE_CHECKING:  # the models load SQLAlchemy: not at every `stocksync --help`
    from db.models import SyncRun

#: Tables and data go to stdout; wide enough for the summary table when it is not a terminal (CI logs, pipes).
console = Console(width=None if Console().is_terminal else 140)
#: Progress bars and live views are for people: stderr, so a piped stdout gets only the data.
err_console = Console(stderr=True)


def echo_json(data) -> None:
    """Print ``data`` as JSON on stdout (times as ISO 8601), for ``--json`` options."""
    click.echo(json.dumps(data, indent=2, default=_json_default))


def _json_default(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def run_dict(run: SyncRun) -> dict:
    """A sync run as JSON-able data (every column, and its duration)."""
    data = {column.key: getattr(run, column.key) for column in type(run).__table__.columns}
    data["duration_s"] = run.duration_s
    return data


def watch_run(load: Callable[[], SyncRun], *, poll_s: float = 0.2, timeout_s: float = 3600,
              show: bool = True) -> SyncRun:
    """Poll a run until it leaves ``running``; show pages done / total as it goes."""
    deadline = time.monotonic() + timeout_s
    with Progress(TextColumn("[bold]sync {task.fields[run_id]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("pages"), TimeElapsedColumn(), console=err_console, disable=not show,
                  transient=False) as progress:
        run = load()
        task = progress.add_task("sync", total=None, run_id=run.id)
        while True:
            run = load()
            progress.update(task, total=run.total_pages, completed=run.pages_done)
            if run.status != "running":
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"sync {run.id} still running after {timeout_s:.0f}s")
            time.sleep(poll_s)


def summary_table(runs: Iterable[SyncRun], title: str = "Sync runs") -> Table:
    """One row per run: status, pages, items, changed rows, API calls, retries, errors, duration."""
    table = Table(title=title)
    for column in ("run", "target", "status", "pages", "items", "changed", "unchanged", "missing", "api calls",
                   "retries", "errors", "duration"):
        table.add_column(column, justify="right" if column not in ("target", "status") else "left")
    for run in runs:
        duration = f"{run.duration_s:.2f} s" if run.duration_s is not None else "-"
        table.add_row(str(run.id), run.target, run.status, f"{run.pages_done}/{run.total_pages or '?'}",
                      str(run.items), str(run.changed), str(run.unchanged), str(run.missing), str(run.api_calls),
                      str(run.retries), str(run.errors), duration)
    return table


def fleet():
    """Import the broker and actors (late: settings may be changed by the command first)."""
    from workers import fleet

    return fleet


@contextmanager
def in_process_worker(threads: int | None = None, *, on_redis: bool = False):
    """Run dramatiq worker threads in this process when there is no Redis (demo mode), or with
    ``on_redis`` on the Redis broker too (the demo's console)."""
    from runtime import resources
    from runtime.metrics import FleetPrometheus

    if not resources.in_process() and not on_redis:
        yield None
        return
    import dramatiq

    broker = fleet().broker
    # Its metric files belong to a dramatiq worker process, which this is not.
    broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, FleetPrometheus)]
    worker = dramatiq.Worker(broker, worker_threads=threads or get_settings().inprocess_worker_threads,
                             worker_timeout=100)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def serve_http(run: Callable[[str, int], None], host: str, port: int, what: str) -> None:
    """Serve an HTTP app of the fleet (intake, console) with its ``/metrics``, until stopped.

    Without REDIS_URL what it enqueues runs on worker threads of this process (demo mode).
    """
    from runtime import metrics

    click.echo(f"{what} on http://{host}:{port}")
    metrics.start_exposition_server(get_settings())
    with in_process_worker():
        run(host, port)


def print_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Aligned plain-text columns (easy to grep and to copy ids from); the last one, an error, is cut to fit."""
    widths = [max(len(column), *(len(row[index]) for row in rows)) for index, column in enumerate(columns[:-1])]
    room = max(30, shutil.get_terminal_size((160, 24)).columns - sum(widths) - 2 * len(widths))

    def line(cells) -> str:
        last = cells[-1] if len(cells[-1]) <= room else cells[-1][:room - 1] + "…"
        return "  ".join([*(cell.ljust(width) for cell, width in zip(cells, widths)), last]).rstrip()

    click.echo(f"{title}:")
    click.echo(line([column.upper() for column in columns]))
    for row in rows:
        click.echo(line(row))


def write_export(kind: str, fmt: str, output: str, **filters) -> None:
    """Write the ``kind`` export (``stock`` or ``ledger``) in ``fmt`` to ``output`` (``-``: stdout), a page at
    a time: a ledger of any size is never held whole."""
    from pipelines.stock_files import export_chunks

    chunks = export_chunks(kind, fmt, **filters)
    if output == "-":
        stream = click.get_text_stream("stdout")
        for chunk in chunks:
            stream.write(chunk)
        stream.flush()
        return
    with open(output, "w", encoding="utf-8", newline="") as file:
        for chunk in chunks:
            file.write(chunk)
    err_console.print(f"{kind} export written to {output}")


def export_options(command):
    """Add ``--format csv|jsonl`` and ``--output FILE`` to an export command."""
    command = click.option("--output", "-o", default="-", show_default=True, metavar="FILE",
                           help="Where to write it; - is stdout.")(command)
    return click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True,
                        help="CSV with a header line, or JSON lines (one object per line).")(command)
