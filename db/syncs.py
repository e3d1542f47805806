"""The lifecycle of a ``sync_runs`` row: begin (lock + cooldown), progress, finish, fail.

This module is the only writer of ``sync_runs``; every pipeline records its progress through it.

The database is the lock: a partial unique index allows one ``running`` row per (kind, target),
so two syncs of one marketplace never overlap, whichever host starts them.  A run that stopped
making progress (its workers died) is marked ``abandoned`` after ``stale_after_s`` so the next
one can start.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from sqlalchemy import Integer, cast, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
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


def fail_run(session: Session, sync_id: int, error: str, *, commit: bool = True, **values: Any) -> bool:
    """Mark a running sync as failed with ``error`` (and ``values``); True if this call failed it.

    Commits unless ``commit`` is false.
    """
    result = session.execute(
        update(SyncRun).where(SyncRun.id == sync_id, SyncRun.status == "running")
        .values(status="failed", error=error[:4000], errors=SyncRun.errors + 1, finished_at=_now(), **values)
    )
    if commit:
        session.commit()
    return result.rowcount == 1


@dataclass(frozen=True)
class Progress:
    """A run's row right after a step was recorded (still locked by the caller's transaction)."""

    pages_done: int
    total_pages: int | None
    status: str
    details: dict[str, Any]


def record_page(session: Session, sync_id: int, *, items: int, changed: int, unchanged: int, missing: int = 0,
                total_pages: int | None = None, total_items: int | None = None,
                counters: Mapping[str, int] | None = None) -> Progress:
    """Count one page (or batch) done: its items, changes and ``details`` counters.  Does not commit.

    The UPDATE takes the run's row lock, so of the pages of a run recorded at once exactly one
    sees the last increment: that one may close the run (:func:`succeed_run`) in its transaction.
    """
    values: dict[str, Any] = {
        "pages_done": SyncRun.pages_done + 1, "items": SyncRun.items + items, "changed": SyncRun.changed + changed,
        "unchanged": SyncRun.unchanged + unchanged, "missing": SyncRun.missing + missing, "heartbeat_at": func.now()}
    if total_pages is not None:
        values["total_pages"] = total_pages
    if total_items is not None:
        values["total_items"] = total_items
    if counters:
        values["details"] = _add_counters(counters)
    row = session.execute(update(SyncRun).where(SyncRun.id == sync_id).values(values).returning(
        SyncRun.pages_done, SyncRun.total_pages, SyncRun.status, SyncRun.details)).one()
    return Progress(row.pages_done, row.total_pages, row.status, row.details or {})


def add_counters(session: Session, sync_id: int, counters: Mapping[str, int]) -> Progress | None:
    """Add to counters kept in the run's ``details`` (and beat its heart).  Does not commit."""
    row = session.execute(update(SyncRun).where(SyncRun.id == sync_id).values(
        details=_add_counters(counters), heartbeat_at=func.now()).returning(
        SyncRun.pages_done, SyncRun.total_pages, SyncRun.status, SyncRun.details)).first()
    return None if row is None else Progress(row.pages_done, row.total_pages, row.status, row.details or {})


def set_totals(session: Session, sync_id: int, *, total_pages: int | None = None, total_items: int | None = None,
               details: Mapping[str, Any] | None = None) -> None:
    """Record a run's size once it is known, and merge ``details`` into its JSON.  Does not commit."""
    values: dict[str, Any] = {"heartbeat_at": func.now()}
    if total_pages is not None:
        values["total_pages"] = total_pages
    if total_items is not None:
        values["total_items"] = total_items
    if details:
        values["details"] = SyncRun.details.op("||")(cast(dict(details), JSONB))
    session.execute(update(SyncRun).where(SyncRun.id == sync_id).values(values))


def heartbeat(session: Session, sync_id: int, *, pages_done: int | None = None) -> None:
    """Say a run is alive (so it is not abandoned as stale).  Does not commit."""
    values: dict[str, Any] = {"heartbeat_at": func.now()}
    if pages_done is not None:
        values["pages_done"] = pages_done
    session.execute(update(SyncRun).where(SyncRun.id == sync_id).values(values))


def lock_status(session: Session, sync_id: int) -> str:
    """The run's status, its row locked until the caller's transaction ends."""
    return session.execute(select(SyncRun.status).where(SyncRun.id == sync_id).with_for_update()).scalar_one()


def succeed_run(session: Session, sync_id: int, **values: Any) -> bool:
    """Close a running run as succeeded (with ``values``); True if this call closed it.  Does not commit."""
    result = session.execute(update(SyncRun).where(SyncRun.id == sync_id, SyncRun.status == "running")
                             .values(status="succeeded", finished_at=values.pop("finished_at", None) or _now(),
                                     **values))
    return result.rowcount == 1


def _add_counters(counters: Mapping[str, int]):
    # ``details || {name: old + n, ...}`` in one statement under the row lock: no read-modify-write.
    pairs = []
    for name, amount in counters.items():
        pairs += [literal_column(f"'{name}'"), func.coalesce(cast(SyncRun.details[name].astext, Integer), 0) + amount]
    return SyncRun.details.op("||")(func.jsonb_build_object(*pairs))


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


def recent_runs(session: Session, limit: int = 20, kind: str | None = None, target: str | None = None,
                status: str | None = None) -> list[SyncRun]:
    """The latest runs (of ``kind``, of ``target``, in ``status``, when given), newest first."""
    query = select(SyncRun).order_by(SyncRun.id.desc()).limit(limit)
    for column, value in ((SyncRun.kind, kind), (SyncRun.target, target), (SyncRun.status, status)):
        if value is not None:
            query = query.where(column == value)
    return list(session.scalars(query))


def last_size(session: Session, kind: str, target: str) -> int | None:
    """How many items the last successful run of (kind, target) listed (None: no such run)."""
    return session.scalar(text("SELECT items FROM sync_runs WHERE kind = :k AND target = :t AND status = 'succeeded' "
                               "ORDER BY finished_at DESC LIMIT 1"), {"k": kind, "t": target})


def last_success(session: Session, kind: str, target: str) -> datetime | None:
    """When the last successful run of (kind, target) finished."""
    return session.scalar(text("SELECT max(finished_at) FROM sync_runs WHERE kind = :k AND target = :t "
                               "AND status = 'succeeded'"), {"k": kind, "t": target})


@dataclass(frozen=True)
class Resume:
    """What to fetch again for a stalled run: ``pages``, and whether page 1 fans the others out again.

    A cursor walk resumes at its first missing page, from the cursor the page before it left
    (``cursor``), and goes on as a chain (``fan_out``) past the pages already applied.
    """

    sync_id: int
    pages: list[int]
    fan_out: bool
    cursor: str | None = None


def pages_to_resume(sync_id: int, total_pages: int | None, applied: set[int]) -> Resume:
    """The fetches that bring a stalled run to its end, from what PostgreSQL knows it applied.

    With the page count known (page 1 applied), every page not applied; without it, page 1, which
    fans the other pages out again only if none of them was applied (else its fan-out was done).
    """
    if total_pages is None:
        return Resume(sync_id, [1], fan_out=not any(page > 1 for page in applied))
    return Resume(sync_id, sorted(set(range(1, total_pages + 1)) - applied), fan_out=False)


def cursor_to_resume(sync_id: int, next_cursors: dict[int, str | None]) -> Resume:
    """Where a stalled cursor walk goes on: its first page not applied, from the cursor before it."""
    page = 1
    while page in next_cursors:
        page += 1
    return Resume(sync_id, [page], fan_out=True, cursor=next_cursors.get(page - 1))


def next_page_to_fetch(session: Session, sync_id: int, page: int, cursor: str | None
                       ) -> tuple[int, str | None] | None:
    """Skip the pages of a cursor walk already applied (a resumed chain): the first one left, or None."""
    applied = dict(session.execute(text("SELECT page, next_cursor FROM sync_pages WHERE sync_id = :s AND page >= :p"),
                                   {"s": sync_id, "p": page}).all())
    while page in applied:
        if applied[page] is None:
            return None  # that page was the last: the walk is over
        page, cursor = page + 1, applied[page]
    return page, cursor


def stalled_runs(session: Session, *, kind: str, target: str, stalled_after_s: float,
                 now: datetime | None = None, cursor: bool = False) -> list[Resume]:
    """Running runs of (kind, target) with no page applied for ``stalled_after_s``, and what they miss.

    A run is resumed at most once per ``stalled_after_s`` (``details.resumed_at``); resuming leaves
    its heartbeat alone, so a run that resuming cannot help is still abandoned in time.  ``cursor``:
    the runs are cursor walks (see :class:`Resume`).  Commits.
    """
    now = now or _now()
    before = now - timedelta(seconds=stalled_after_s)
    runs = session.execute(text(
        "SELECT id, total_pages FROM sync_runs WHERE kind = :k AND target = :t AND status = 'running' "
        "AND heartbeat_at < :before AND COALESCE((details->>'resumed_at')::timestamptz, '-infinity') < :before "
        "FOR UPDATE SKIP LOCKED"), {"k": kind, "t": target, "before": before}).all()
    resumes = []
    for run in runs:
        applied = dict(session.execute(text("SELECT page, next_cursor FROM sync_pages WHERE sync_id = :s"),
                                       {"s": run.id}).all())
        resumes.append(cursor_to_resume(run.id, applied) if cursor
                       else pages_to_resume(run.id, run.total_pages, set(applied)))
        session.execute(text(
            "UPDATE sync_runs SET details = details || jsonb_build_object('resumed_at', CAST(:now AS text), "
            "'resumes', COALESCE((details->>'resumes')::int, 0) + 1) WHERE id = :s"),
            {"now": now.isoformat(), "s": run.id})
    session.commit()
    return resumes
