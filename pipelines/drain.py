"""Drain a marketplace's re-checks and pushes from the rows PostgreSQL holds, at its quotas (plain functions).

A booked event sends no message per row: it asks for a drain of its marketplace (:func:`request`:
one message, unless one is already on its way).  A drain holds its marketplace's lock (one at a
time per marketplace and kind), takes the due rows in batches (flagged rows for ``recheck``,
``pending`` ones for ``push``, oldest first: :func:`db.events.claim_rechecks` /
:func:`db.events.claim_pushes`), waits in-process for the fleet limiters and processes each row
once (pushes in the platform's batches: :func:`pipelines.events.push_rows`).  Its message ends when no row is due, after ``STOCK_DRAIN_RUN_S``, or when a limiter's wait
is longer than ``STOCK_DRAIN_MAX_WAIT_S`` (the data limit of an hour's lines): then it asks for the
next drain, delayed until the rows or the slot are due.  So messages and log lines follow the rows
checked, never the waits.  ``actors/events.py`` sends what :func:`request` asks for.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from clients.ratelimit import RateLimitWaitTimeout
from core.push_log import PushState
from db import events as stock_events
from pipelines.events import (PairPool, push_lease, push_rows, pushed, read_and_apply, readable, recheck_delay_ms,
                              skew)
from pipelines import push_log
from runtime import metrics, resources
from runtime.clients import push_batch, push_line_quota, push_lines_limiter, push_pace_s
from runtime.locks import LeaderLock
from runtime.settings import get_settings

logger = logging.getLogger(__name__)

#: What a drain works through: pushes of local changes, re-checks of flagged rows.
KINDS = ("push", "recheck")

#: ``send(kind, marketplace, delay_ms)``: enqueue one drain message (the actors' job).
Send = Callable[[str, str, int], None]

#: How long past its delay a drain request holds back the next one (its message may be lost).
MARKER_GRACE_MS = 60_000

#: A row still ambiguous after ``STOCK_RECHECK_ATTEMPTS`` reads is read again this much later.
GIVE_UP_DELAY = timedelta(minutes=15)


@dataclass(frozen=True)
class DrainRun:
    """What one drain message did: ``busy`` (another drain of the marketplace runs) or ``done``,
    the rows it processed, and in how many ms the next drain is due (None: nothing waits)."""

    status: str
    rows: int = 0
    again_in_ms: int | None = None


def _key(kind: str, marketplace: str, what: str) -> str:
    return f"{get_settings().redis_namespace}:drain:{kind}:{marketplace}:{what}"


def _lock_ttl_s() -> float:
    # Renewed after every row: it must outlive one row (a push's lease) and one wait for a slot.
    return push_lease().total_seconds() + get_settings().stock_drain_max_wait_s + 30


def request(kind: str, marketplace: str, send: Send, *, delay_ms: int = 0, force: bool = False, redis=None) -> bool:
    """Ask for a drain of ``marketplace``'s ``kind``: send one message unless one is already on its way.

    The marker lives until the drain it asked for ends, or a minute past its delay (a lost message
    does not hold the next one back for long; while a long drain runs, a request a minute sends one
    message that finds the drain busy).  ``force`` sends anyway (the sweep, an operator).  ``redis``:
    where the marker lives (default the process's; the console passes its own).  True when sent.
    """
    if kind not in KINDS:
        raise ValueError(f"drain kind must be one of {', '.join(KINDS)}, got {kind!r}")
    redis = resources.sync_redis() if redis is None else redis
    ttl_ms = int(delay_ms + MARKER_GRACE_MS)
    key = _key(kind, marketplace, "requested")
    if not redis.set(key, "1", nx=True, px=ttl_ms):
        if not force:
            return False
        redis.set(key, "1", px=ttl_ms)
    try:
        send(kind, marketplace, int(delay_ms))
    except BaseException:
        redis.delete(key)
        raise
    return True


def forget_request(kind: str, marketplace: str) -> None:
    """Drop the marker of a drain that will not run (its message went to the dead letters)."""
    resources.sync_redis().delete(_key(kind, marketplace, "requested"))


def drain(kind: str, marketplace: str, owner: str, send: Send) -> DrainRun:
    """Process ``marketplace``'s due rows of ``kind`` under its lock; ask for the next drain if rows wait.

    ``owner`` is the message's id: a redelivery of the same message takes its lock and its push
    leases back.  Raises what a row's processing raises when it may succeed later (the message is
    retried; rows not started are given back first).
    """
    if kind not in KINDS:
        raise ValueError(f"drain kind must be one of {', '.join(KINDS)}, got {kind!r}")
    redis = resources.sync_redis()
    lock = LeaderLock(redis, _key(kind, marketplace, "lock"), ttl_s=_lock_ttl_s(), owner=owner, token=owner)
    if not lock.acquire():
        logger.info("%s drain of %s already running; this message ends", kind, marketplace)
        return DrainRun("busy")
    try:
        rows, wait_ms = (_drain_pushes if kind == "push" else _drain_rechecks)(marketplace, owner, lock)
    finally:
        lock.release()
    # After the release: a request made while we held the lock found the marker and sent nothing;
    # from here on a request sends, and every row committed before it is seen just below.
    redis.delete(_key(kind, marketplace, "requested"))
    again = wait_ms if wait_ms is not None else _next_delay_ms(kind, marketplace)
    if kind == "push":
        publish_backlog(marketplace)
    if again is not None:
        request(kind, marketplace, send, delay_ms=again)
    logger.info("%s drain of %s: %d row(s)%s", kind, marketplace, rows,
                "" if again is None else f", next in {again / 1000:.1f}s")
    return DrainRun("done", rows, again)


def _next_delay_ms(kind: str, marketplace: str) -> int | None:
    with resources.sessions()() as session:
        due = stock_events.next_due(session, marketplace, kind, first_after=2 * skew())
    if due is None:
        return None
    return max(0, math.ceil((due - datetime.now(timezone.utc)).total_seconds() * 1000))


# -- re-checks ---------------------------------------------------------------------------------------


def _drain_rechecks(marketplace: str, owner: str, lock: LeaderLock) -> tuple[int, int | None]:
    settings = get_settings()
    if not readable(marketplace):
        return 0, None
    lease = timedelta(seconds=settings.stock_drain_run_s + _lock_ttl_s())
    deadline = time.monotonic() + settings.stock_drain_run_s
    done = 0
    while time.monotonic() < deadline:
        with resources.sessions()() as session:
            claims = stock_events.claim_rechecks(session, marketplace, first_after=2 * skew(settings), lease=lease,
                                                 limit=settings.stock_drain_batch)
            session.commit()
        if not claims:
            break
        for claim in claims:
            outcome = "again"
            if claim.listings:
                outcome = read_and_apply(marketplace, claim.marketplace_id, claim.sku, claim.listings, settings)
            if outcome == "again":
                _recheck_later(marketplace, claim, settings.stock_recheck_attempts)
            done += 1
            lock.renew()
    return done, None


def _recheck_later(marketplace: str, claim: stock_events.RecheckClaim, attempts: int) -> None:
    attempt = claim.attempts + 1
    if attempt < attempts:
        delay = timedelta(milliseconds=recheck_delay_ms(attempt=attempt + 1))
    else:
        delay = GIVE_UP_DELAY
        if attempt == attempts:
            logger.warning("%s on %s is still ambiguous after %d re-checks; read again every %d minutes",
                           claim.sku, marketplace, attempt, GIVE_UP_DELAY.total_seconds() // 60)
    with resources.sessions()() as session:
        stock_events.recheck_again(session, claim.stock_id, due_at=datetime.now(timezone.utc) + delay)
        session.commit()


# -- pushes ------------------------------------------------------------------------------------------


def _drain_pushes(marketplace: str, owner: str, lock: LeaderLock) -> tuple[int, int | None]:
    settings = get_settings()
    if not pushed(marketplace):
        return 0, None
    lease = push_lease(settings)
    batch = push_batch(marketplace)
    deadline = time.monotonic() + settings.stock_drain_run_s
    done = 0
    while time.monotonic() < deadline:
        with resources.sessions()() as session:
            # At least a write's worth: a platform that writes rows in batches fills them.
            claims = stock_events.claim_pushes(session, marketplace, owner, lease=lease,
                                               limit=max(settings.stock_drain_batch, batch))
            session.commit()
        if not claims:
            break
        # One-row pushes take their read-and-write pairs for several rows in one grant (see PairPool).
        pool = PairPool(len(claims)) if batch == 1 and len(claims) > 1 else None
        try:
            done += _push_claims(marketplace, owner, claims, batch, lease, pool, lock, settings)
        except _DataLimitWait as wait:
            return done + wait.done, wait.delay_ms
        finally:
            if pool is not None:
                resources.run_on_worker_loop(pool.release)
    return done, None


class _DataLimitWait(Exception):
    """The data limit has no line for the next row: the drain ends and comes back when one is free."""

    def __init__(self, done: int, delay_ms: int) -> None:
        super().__init__(done, delay_ms)
        self.done, self.delay_ms = done, delay_ms


def _push_claims(marketplace: str, owner: str, claims: list, batch: int, lease: timedelta, pool: PairPool | None,
                 lock: LeaderLock, settings) -> int:
    """Push ``claims`` a write's worth (``batch``) at a time, each row on a line of the data limit."""
    done = 0
    for start in range(0, len(claims), batch):
        chunk = claims[start:start + batch]
        slots = []
        for index, claim in enumerate(chunk):
            slot, wait_s = resources.run_on_worker_loop(
                lambda: _take_line(marketplace, settings.stock_drain_max_wait_s))
            if wait_s:
                _give_back(claims[start + index:], owner, waiting="waiting for the data limit (lines per window)")
                for taken in slots:
                    resources.run_on_worker_loop(lambda: _refund_line(marketplace, taken))
                raise _DataLimitWait(done, math.ceil(wait_s * 1000))
            if slot is not None:
                slots.append(slot)
        try:
            outcomes = push_rows(marketplace, [claim.sku for claim in chunk], owner, lease=lease, pool=pool)
        except BaseException:
            _give_back(claims[start + len(chunk):], owner)
            raise
        unposted = sum(not outcome.posted for outcome in outcomes)
        for taken in slots[:unposted]:  # a line of the data limit per row actually written
            resources.run_on_worker_loop(lambda: _refund_line(marketplace, taken))
        errors = []
        for claim, outcome in zip(chunk, outcomes):
            if isinstance(outcome.error, stock_events.PushImpossible):
                # This row cannot be pushed until someone fixes it: the others still can.
                logger.error("push of %s on %s impossible: %s", claim.sku, marketplace, outcome.error)
                _failed(claim.stock_id, owner, str(outcome.error))
            elif outcome.error is not None:
                errors.append(outcome.error)
            elif outcome.status == "deferred":
                # The read could not be trusted: this row waits out the skew, the others go on.
                _give_back([claim], owner, until=datetime.now(timezone.utc)
                           + timedelta(milliseconds=recheck_delay_ms(settings)))
        done += len(chunk)
        lock.renew()
        if errors:
            # A line that failed on its own fails as a single push does: this message is retried (its
            # leases taken back), or dead-lettered; the rows not started go back in line first.
            _give_back(claims[start + len(chunk):], owner)
            raise next((error for error in errors if not getattr(error, "permanent", False)), errors[0])
    return done


async def _take_line(marketplace: str, max_wait_s: float) -> tuple[str | None, float]:
    """A slot of the data limit (its id), or how long until one is free when that is beyond ``max_wait_s``."""
    limiter = push_lines_limiter(marketplace)
    if limiter is None:
        return None, 0.0
    limiter.max_wait_s = max_wait_s
    try:
        await limiter.acquire()
    except RateLimitWaitTimeout as full:
        return None, max(full.retry_after_s, 0.001)
    return limiter.last_slot, 0.0


async def _refund_line(marketplace: str, slot: str) -> None:
    limiter = push_lines_limiter(marketplace)
    if limiter is not None:
        await limiter.refund(slot)


def _give_back(claims: list, owner: str, *, until: datetime | None = None, waiting: str | None = None) -> None:
    """Release ``claims`` unused; ``waiting``: why they wait (the push log says so)."""
    if claims:
        with resources.sessions()() as session:
            stock_events.release_pushes(session, [claim.stock_id for claim in claims], owner, until=until)
            if waiting:
                push_log.note(session, PushState.WAITING, stock_ids=[claim.stock_id for claim in claims], note=waiting)
            session.commit()


def _failed(stock_id: int, owner: str, error: str) -> None:
    with resources.sessions()() as session:
        stock_events.release_push(session, stock_id, owner, error, failed=True)
        push_log.note(session, PushState.FAILED, stock_ids=[stock_id], error=error)
        session.commit()


def pushes_failed(owner: str, error: str) -> int:
    """A push drain failed for good: the rows it held are ``failed`` (the sweep puts them back in line)."""
    with resources.sessions()() as session:
        push_log.note(session, PushState.FAILED, lease_owner=owner, error=error)
        count = stock_events.fail_pushes_of(session, owner, error)
        session.commit()
    return count


# -- the backlog ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backlog:
    """Rows of a marketplace waiting for a push, its data limit's lines left, and the time to push them."""

    marketplace: str
    rows: int
    lines_left: int | None = None
    lines_per_window: int | None = None
    window_s: float | None = None
    eta_s: float = 0.0


def backlog_eta_s(rows: int, *, pace_s: float, lines_left: int | None = None, lines_per_window: int | None = None,
                  window_s: float | None = None) -> float:
    """The time to push ``rows`` (an estimate): at the request pace, and past the lines left, a window per
    ``lines_per_window`` rows."""
    at_pace = rows * pace_s
    if lines_left is None or not lines_per_window or not window_s or rows <= lines_left:
        return at_pace
    return max(at_pace, (rows - lines_left) / lines_per_window * window_s)


def backlog(marketplace: str, rows: int, lines_used: int | None) -> Backlog:
    """``marketplace``'s :class:`Backlog` from its waiting ``rows`` and the lines its data limit used."""
    quota = push_line_quota(marketplace)
    if quota is None:
        return Backlog(marketplace, rows, eta_s=backlog_eta_s(rows, pace_s=push_pace_s(marketplace)))
    _, lines, window_s = quota
    left = max(0, lines - (lines_used or 0))
    return Backlog(marketplace, rows, left, lines, window_s,
                   backlog_eta_s(rows, pace_s=push_pace_s(marketplace), lines_left=left, lines_per_window=lines,
                                 window_s=window_s))


def publish_backlog(marketplace: str) -> Backlog:
    """Count ``marketplace``'s push backlog and publish it (and its ETA) as gauges."""
    with resources.sessions()() as session:
        rows = stock_events.push_backlog(session, marketplace).get(marketplace, 0)
        push_log.publish_waiting(session, marketplace)
    limiter_used = None
    quota = push_line_quota(marketplace)
    if quota is not None:
        from clients.ratelimit import slots_used

        limiter_used = slots_used(resources.sync_redis(), quota[0], quota[2], namespace=get_settings().redis_namespace)
    found = backlog(marketplace, rows, limiter_used)
    metrics.push_backlog(marketplace, found.rows, found.eta_s)
    return found
