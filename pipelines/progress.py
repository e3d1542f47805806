"""Run progress of sync runs of every kind: done/total per track, rate, ETA, live API counters.

Used by ``stocksync monitor`` and the console's syncs pages.  While a run is going on its API
calls, retries and errors live in Redis (``runtime.sync_stats``); a finished run has them in its row.
:func:`run_progress` is pure (a row in, a :class:`RunProgress` out).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from db.models import SyncRun
from runtime.sync_stats import read

#: What a run's pages are called, by kind (a supplier sync's pages are batches).
PAGE_NAMES = {"supplier": "batches"}


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
    """What the monitor and the console show of one run."""

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

    def asdict(self) -> dict[str, Any]:
        """JSON-able, with the ETA and each track's fraction (what the console's live view reads)."""
        return {"id": self.id, "kind": self.kind, "target": self.target, "status": self.status,
                "elapsed_s": self.elapsed_s, "eta_s": self.eta_s, "api_calls": self.api_calls,
                "retries": self.retries, "errors": self.errors, "error": self.error,
                "elapsed": format_duration(self.elapsed_s), "eta": format_duration(self.eta_s),
                "tracks": [{"name": t.name, "done": t.done, "total": t.total, "rate": t.rate, "eta_s": t.eta_s,
                            "fraction": t.fraction} for t in self.tracks]}


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


def load_runs(session: Session, sync_id: int | None = None, limit: int = 10) -> list[SyncRun]:
    """Run ``sync_id`` alone, or every running run and the latest ``limit`` others, newest first."""
    query = select(SyncRun).execution_options(populate_existing=True)
    if sync_id is not None:
        return list(session.scalars(query.where(SyncRun.id == sync_id)))
    latest = select(SyncRun.id).order_by(SyncRun.id.desc()).limit(limit).scalar_subquery()
    return list(session.scalars(query.where(or_(SyncRun.status == "running", SyncRun.id.in_(latest)))
                                .order_by(SyncRun.id.desc())))


def load_progress(sessions, redis, namespace: str, sync_id: int | None = None, limit: int = 10
                  ) -> list[RunProgress]:
    """:func:`load_runs` as progress, with the live Redis counters of the running ones."""
    with sessions() as session:
        runs = load_runs(session, sync_id, limit)
    return [run_progress(run, read(redis, namespace, run.id) if run.status == "running" else None) for run in runs]


__all__ = ["PAGE_NAMES", "RunProgress", "Track", "format_duration", "load_progress", "load_runs", "run_progress"]
