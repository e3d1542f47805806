"""A live view of sync runs of every kind (stock, supplier, ...): ``stocksync monitor``.

Each run shows its progress as done/total per track (pages or batches; details for supplier
syncs), the rate of each track, an ETA (the slowest track's), and its API calls, retries and
errors.  While a run is going on those three counters live in Redis (``runtime.sync_stats``), so
the view reads them there; a finished run has them in its row.

:func:`run_progress` and :func:`runs_table` are pure (rows in, table out) so they are tested
without a terminal; :func:`watch` drives a :class:`rich.live.Live` display.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping, Sequence

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.models import SyncRun
from runtime.settings import get_settings

#: What a run's pages are called in the view, by kind (a supplier sync's pages are batches).
PAGE_NAMES = {"supplier": "batches"}

#: The longest error text shown in the table.
MAX_ERROR_CHARS = 80


@dataclass(frozen=True)
class Track:
    """One measure of a run's progress: ``done`` of ``total`` (None: not known yet) at ``rate`` per second."""

    name: str
    done: int
    total: int | None
    rate: float | None
    eta_s: float | None

    @property
    def fraction(self) -> str:
        """``done/total``, with ``?`` for an unknown total."""
        return f"{self.done}/{'?' if self.total is None else self.total}"


@dataclass(frozen=True)
class RunProgress:
    """What the monitor shows of one run."""

    id: int
    kind: str
    target: str
    status: str
    elapsed_s: float
    tracks: tuple[Track, ...]
    api_calls: int
    retries: int
    errors: int
    error: str | None

    @property
    def eta_s(self) -> float | None:
        """When the slowest track should be done (None when not running or not known)."""
        if self.status != "running":
            return None
        pending = [track for track in self.tracks if track.total is None or track.done < track.total]
        if any(track.eta_s is None for track in pending):
            return None
        return max((track.eta_s for track in pending), default=0.0)


def run_progress(run: SyncRun, live_counts: Mapping[str, int] | None = None,
                 now: datetime | None = None) -> RunProgress:
    """The progress of ``run`` at ``now``; ``live_counts`` are its Redis counters while it runs."""
    now = now or datetime.now(timezone.utc)
    end = run.finished_at or now
    elapsed = max((end - run.started_at).total_seconds(), 0.0)
    running = run.status == "running"
    tracks = [_track(PAGE_NAMES.get(run.kind, "pages"), run.pages_done, run.total_pages, elapsed, running)]
    details = run.details or {}
    if "details_total" in details:
        done = int(details.get("details_done") or 0) + int(details.get("details_failed") or 0)
        # Details keep coming while batches run: their total is known only once every batch is in.
        batches_done = run.total_pages is not None and run.pages_done >= run.total_pages
        total = int(details.get("details_total") or 0)
        tracks.append(_track("details", done, total if batches_done else None, elapsed, running, at_least=total))
    counts = {"api_calls": run.api_calls, "retries": run.retries, "errors": run.errors}
    if running and live_counts:
        counts = {name: counts[name] + int(live_counts.get(name, 0)) for name in counts}
    return RunProgress(id=run.id, kind=run.kind, target=run.target, status=run.status, elapsed_s=elapsed,
                       tracks=tuple(tracks), error=run.error, **counts)


def _track(name: str, done: int, total: int | None, elapsed: float, running: bool, at_least: int = 0) -> Track:
    rate = done / elapsed if elapsed > 0 and done > 0 else None
    eta = None
    if running and rate:
        remaining = (total if total is not None else at_least) - done
        eta = max(remaining, 0) / rate
    return Track(name, done, total, rate, eta)


def format_duration(seconds: float | None) -> str:
    """``m:ss`` or ``h:mm:ss``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


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


def load_runs(session: Session, sync_id: int | None = None, limit: int = 10) -> list[SyncRun]:
    """Run ``sync_id`` alone, or every running run and the latest ``limit`` others, newest first."""
    query = select(SyncRun).execution_options(populate_existing=True)
    if sync_id is not None:
        return list(session.scalars(query.where(SyncRun.id == sync_id)))
    latest = select(SyncRun.id).order_by(SyncRun.id.desc()).limit(limit).scalar_subquery()
    return list(session.scalars(query.where(or_(SyncRun.status == "running", SyncRun.id.in_(latest)))
                                .order_by(SyncRun.id.desc())))


def watch(load: Callable[[], Sequence[RunProgress]], *, refresh_s: float = 1.0, once: bool = False,
          until_done: bool = False, console: Console | None = None, title: str = "stocksync syncs",
          timeout_s: float | None = None) -> Sequence[RunProgress]:
    """Show ``load()`` as a table, refreshed every ``refresh_s`` until interrupted; return the last rows.

    ``once`` prints one table and returns; ``until_done`` returns once no shown run is running.
    """
    console = console or Console()
    progresses = load()
    if once:
        console.print(runs_table(progresses, title))
        return progresses
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with Live(runs_table(progresses, title), console=console, refresh_per_second=max(1.0, 1 / refresh_s),
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
@click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="Finished runs shown besides the running ones.")
def monitor_command(sync_id: int | None, refresh_s: float, once: bool, limit: int) -> None:
    """A live view of running and recent syncs of every kind: done/total, rate, ETA, retries, errors.

    With SYNC_ID, that run only, until it ends.  Ctrl-C stops the view (not the syncs).  When the
    output is not a terminal, the table is printed once (or, with SYNC_ID, once the run has ended).
    """
    try:
        progresses = watch_syncs(sync_id, refresh_s=refresh_s, once=once, until_done=sync_id is not None, limit=limit)
    except KeyboardInterrupt:
        return
    if sync_id is not None and not progresses:
        raise click.ClickException(f"no sync run {sync_id}")


def watch_syncs(sync_id: int | None, *, refresh_s: float, once: bool, until_done: bool, limit: int = 10):
    from runtime import resources
    from runtime.sync_stats import read
    from workers.cli.common import console

    factory = resources.sessions()
    namespace = get_settings().redis_namespace

    def load():
        with factory() as session:
            runs = load_runs(session, sync_id, limit)
        redis = resources.sync_redis()
        return [run_progress(run, read(redis, namespace, run.id) if run.status == "running" else None)
                for run in runs]

    title = f"sync {sync_id}" if sync_id is not None else "stocksync syncs"
    if sync_id is not None and not load():
        return []
    return watch(load, refresh_s=refresh_s, once=once or not sys.stdout.isatty() and not until_done,
                         until_done=until_done, console=console, title=title)
