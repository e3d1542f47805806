"""Record a push's state (:func:`note`) in the caller's transaction, counted once that transaction commits.

The push path (``pipelines/events.py``, ``pipelines/drain.py``) calls :func:`note` beside the stock
row's own change, in the same session: the log moves with the row, and the metric
``stocksync_pushes_total{marketplace,state}`` counts only what was committed.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

from sqlalchemy import event
from sqlalchemy.orm import Session

from core.push_log import PushState
from db import push_log
from runtime import metrics

_PENDING = "push_log_counts"


def note(session: Session, state: PushState, **what) -> Counter[str]:
    """Record ``state`` (:func:`db.push_log.record`, same arguments) and count it when ``session`` commits."""
    counts = push_log.record(session, state, **what)
    if counts:
        if _PENDING not in session.info:
            # Kept for the session's life (sessions are short): removing a listener while it runs is unsafe.
            session.info[_PENDING] = []
            event.listen(session, "after_commit", _count_committed)
            event.listen(session, "after_soft_rollback", _forget)
        session.info[_PENDING].append((PushState(state).value, counts))
    return counts


def _count_committed(session: Session) -> None:
    pending, session.info[_PENDING] = session.info.get(_PENDING, []), []
    for state, counts in pending:
        for account, count in counts.items():
            metrics.pushes(account, state, count)


def _forget(session: Session, previous_transaction) -> None:
    session.info[_PENDING] = []


def prune(session: Session, account: str, retention_days: int, now: datetime | None = None) -> int:
    """Delete ``account``'s pushes that ended and started over ``retention_days`` ago.  Does not commit."""
    before = (now or datetime.now(timezone.utc)) - timedelta(days=retention_days)
    return push_log.prune(session, account, older_than=before)


def publish_waiting(session: Session, account: str) -> int:
    """Publish how many of ``account``'s pushes wait for their turn (the gauge); that count."""
    count = push_log.waiting(session, account)
    metrics.pushes_waiting(account, count)
    return count
