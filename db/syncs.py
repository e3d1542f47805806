"""The lifecycle of a ``sync_runs`` row: begin (lock + cooldown), progress, finish, fail.

The database is the lock: a partial unique index allows one ``running`` row per (kind, target),
so two syncs of one marketplace never overlap, whichever host starts them.  A run that stopped
making progress (its workers died) is marked ``abandoned`` after ``stale_after_s`` so the next
one can start.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import SyncRun

TRIGGERS = ("manual", "scheduled")


class SyncRefused(Exception):
    """A sync was not started: one is running, or the last one finished inside the cooldown."""

    def __init__(self, reason: str, *, running_id: int | None = None, retry_after_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.running_id = running_id
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class SyncPolicy:
    """Cooldowns (seconds, per trigger) and the staleness limit of a kind of sync."""

    cooldown_scheduled_s: float
    cooldown_manual_s: float
    stale_after_s: float

    def cooldown_for(self, trigger: str) -> float:
        """The cooldown that applies to a run started by ``trigger``."""
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r}: expected one of {', '.join(TRIGGERS)}")
        return self.cooldown_scheduled_s if trigger == "scheduled" else self.cooldown_manual_s


def _now() -> datetime:
    return datetime.now(timezone.utc)


def begin_run(session: Session, *, kind: str, target: str, trigger: str, policy: SyncPolicy, force: bool = False,
              dry_run: bool = False, details: dict[str, Any] | None = None) -> SyncRun:
    """Create a ``running`` sync run, or raise :class:`SyncRefused`.

    ``force`` bypasses the cooldown, never the no-overlap rule: two runs of one target at once
    would fight over the same rows.  Commits.
    """
    cooldown = policy.cooldown_for(trigger)
    now = _now()
    # A running row whose heartbeat stopped is a dead run: release its lock.
    session.execute(
        update(SyncRun)
        .where(SyncRun.kind == kind, SyncRun.target == target, SyncRun.status == "running",
               SyncRun.heartbeat_at < now - timedelta(seconds=policy.stale_after_s))
        .values(status="abandoned", finished_at=now, error="no progress for %.0f s; abandoned" % policy.stale_after_s)
    )
    running = session.scalar(select(SyncRun).where(SyncRun.kind == kind, SyncRun.target == target,
                                                   SyncRun.status == "running"))
    if running is not None:
        session.rollback()
        raise SyncRefused(f"a {kind} sync of {target} is already running (sync {running.id})", running_id=running.id)
    if not force:
        last = session.scalar(
            select(SyncRun.finished_at)
            .where(SyncRun.kind == kind, SyncRun.target == target, SyncRun.status == "succeeded",
                   SyncRun.dry_run.is_(False))
            .order_by(SyncRun.finished_at.desc()).limit(1)
        )
        if last is not None and (now - last).total_seconds() < cooldown:
            wait = cooldown - (now - last).total_seconds()
            session.rollback()
            raise SyncRefused(
                f"the last {kind} sync of {target} finished {int((now - last).total_seconds())} s ago; "
                f"{trigger} cooldown is {int(cooldown)} s (try again in {int(wait) + 1} s, or force it)",
                retry_after_s=wait,
            )
    run = SyncRun(kind=kind, target=target, trigger=trigger, forced=force, dry_run=dry_run, status="running",
                  details=details or {})
    session.add(run)
    try:
        session.commit()
    except IntegrityError:
        # Another process started one between our check and our insert: the unique index decided.
        session.rollback()
        raise SyncRefused(f"a {kind} sync of {target} is already running") from None
    return run


def fail_run(session: Session, sync_id: int, error: str) -> bool:
    """Mark a running sync as failed with ``error``; True if this call failed it.  Commits."""
    result = session.execute(
        update(SyncRun).where(SyncRun.id == sync_id, SyncRun.status == "running")
        .values(status="failed", error=error[:4000], errors=SyncRun.errors + 1, finished_at=_now())
    )
    session.commit()
    return result.rowcount == 1


def add_counts(session: Session, sync_id: int, **counts: int) -> None:
    """Add API counters (api_calls, retries, errors) to a run, finished or not.  Does not commit."""
    allowed = {"api_calls", "retries", "errors"}
    unknown = set(counts) - allowed
    if unknown:
        raise ValueError(f"unknown sync counters: {', '.join(sorted(unknown))}")
    if counts:
        session.execute(update(SyncRun).where(SyncRun.id == sync_id)
                        .values({getattr(SyncRun, k): getattr(SyncRun, k) + v for k, v in counts.items()}))


def get_run(session: Session, sync_id: int) -> SyncRun | None:
    """The run with this id, fresh from the database."""
    return session.scalar(select(SyncRun).where(SyncRun.id == sync_id).execution_options(populate_existing=True))


def recent_runs(session: Session, limit: int = 20, kind: str | None = None) -> list[SyncRun]:
    """The latest runs, newest first."""
    query = select(SyncRun).order_by(SyncRun.id.desc()).limit(limit)
    if kind:
        query = query.where(SyncRun.kind == kind)
    return list(session.scalars(query))


def last_success(session: Session, kind: str, target: str) -> datetime | None:
    """When the last successful run of (kind, target) finished."""
    return session.scalar(text("SELECT max(finished_at) FROM sync_runs WHERE kind = :k AND target = :t "
                               "AND status = 'succeeded'"), {"k": kind, "t": target})
