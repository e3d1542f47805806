"""The push log in PostgreSQL: record a push's state, list and count pushes, prune old ones.

:func:`record` is the one writer: it moves the stock row's open push to a new state, or starts
one (set-based: a drain records a batch of rows in one statement).  It never commits: a state is
recorded in the transaction that makes it true (the claim, the read, the confirmation), so the
log never says more than the stock row.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import text
from sqlalchemy.orm import Session

from core.push_log import CLOSED_STATES, OPEN_STATES, STATES, PushFilter, PushState

#: Longest error kept on an entry (the stock row keeps 4000 characters of its last one).
ERROR_CHARS = 2000
NOTE_CHARS = 300

def _quoted(states) -> str:
    return ", ".join(f"'{state}'" for state in states)


# Which stock rows a state is recorded for: given ids, the rows a drain message leases, or the
# rows whose failed push went back in line (``retry_failed_pushes`` just made them pending again).
_BY_IDS = "s.id = ANY(CAST(:ids AS bigint[]))"
_BY_OWNER = "s.push_lease_owner = :lease AND s.push_state = 'pending'"
_BACK_IN_LINE = ("m.code = :mp AND s.push_state = 'pending' "
                 "AND (CAST(:sku AS text) IS NULL OR v.sku = CAST(:sku AS text)) "
                 "AND EXISTS (SELECT 1 FROM push_log f WHERE f.stock_id = s.id AND f.state = 'failed') "
                 "AND NOT EXISTS (SELECT 1 FROM push_log o WHERE o.stock_id = s.id "
                 f"AND o.state IN ({_quoted(OPEN_STATES)}))")

_RECORD = """
WITH target AS (
    SELECT s.id AS stock_id, s.marketplace_id, v.sku, ARRAY(SELECT l.external_id FROM listings l
           WHERE l.marketplace_id = s.marketplace_id AND l.variation_id = s.variation_id
           AND l.missing_since IS NULL ORDER BY l.id) AS listings
    FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id JOIN marketplaces m ON m.id = s.marketplace_id
    WHERE {where}
), current AS (
    SELECT DISTINCT ON (p.stock_id) p.id, p.stock_id FROM push_log p JOIN target t ON t.stock_id = p.stock_id
    WHERE p.state IN ({reopen}) ORDER BY p.stock_id, p.id DESC
), fact AS (
    SELECT CAST(:state AS text) AS state, CAST(:closed AS boolean) AS closed, CAST(:start AS boolean) AS start,
           CAST(:read AS int) AS read, CAST(:sent AS int) AS sent, CAST(:error AS text) AS error,
           CAST(:note AS text) AS note, CAST(:owner AS text) AS owner, CAST(:now AS timestamptz) AS now
), moved AS (
    UPDATE push_log p SET state = f.state, updated_at = f.now, quantity_read = COALESCE(f.read, p.quantity_read),
        quantity_sent = COALESCE(f.sent, p.quantity_sent), error = COALESCE(f.error, p.error), note = f.note,
        owner = COALESCE(f.owner, p.owner), attempts = p.attempts + CASE WHEN f.state = 'sent' THEN 1 ELSE 0 END,
        sent_at = CASE WHEN f.state = 'sent' THEN f.now ELSE p.sent_at END,
        finished_at = CASE WHEN f.closed THEN f.now END
    FROM current, fact f WHERE p.id = current.id
    RETURNING p.marketplace_id
), started AS (
    INSERT INTO push_log (stock_id, marketplace_id, sku, listings, state, quantity_read, quantity_sent, attempts,
                          error, note, owner, started_at, sent_at, finished_at, updated_at)
    SELECT t.stock_id, t.marketplace_id, t.sku, t.listings, f.state, f.read, f.sent,
           CASE WHEN f.state = 'sent' THEN 1 ELSE 0 END, f.error, f.note, f.owner, f.now,
           CASE WHEN f.state = 'sent' THEN f.now END, CASE WHEN f.closed THEN f.now END, f.now
    FROM target t, fact f WHERE f.start AND NOT EXISTS (SELECT 1 FROM current c WHERE c.stock_id = t.stock_id)
    RETURNING marketplace_id
)
SELECT m.code, count(*) FROM (SELECT marketplace_id FROM moved UNION ALL SELECT marketplace_id FROM started) r
JOIN marketplaces m ON m.id = r.marketplace_id GROUP BY m.code
"""


def record(session: Session, state: PushState, *, stock_ids: list[int] | None = None, lease_owner: str | None = None,
           back_in_line: str | None = None, sku: str | None = None, start: bool = True,
           quantity_read: int | None = None, quantity_sent: int | None = None, error: str | None = None,
           note: str | None = None, owner: str | None = None, now: datetime | None = None) -> Counter[str]:
    """Record ``state`` for the open push of each stock row (starting one where none is open, if ``start``).

    The rows: ``stock_ids``; or those whose push lease ``lease_owner`` holds; or, with
    ``back_in_line`` (an account code; ``sku`` optional), those whose failed push is pending again
    (their ``failed`` entry becomes ``retried``).  Facts left None keep the entry's.  Returns how many
    entries moved per account code.  Does not commit.
    """
    state = PushState(state)
    if back_in_line is not None:
        where, reopen, start = _BACK_IN_LINE, _quoted(("failed",)), False
    elif lease_owner is not None:
        where, reopen = _BY_OWNER, _quoted(OPEN_STATES)
    else:
        where, reopen = _BY_IDS, _quoted(OPEN_STATES)
    rows = session.execute(text(_RECORD.format(where=where, reopen=reopen)), {
        "ids": list(stock_ids or []), "lease": (lease_owner or "")[:64], "mp": back_in_line, "sku": sku,
        "owner": None if owner is None else owner[:64],
        "state": state.value, "closed": state.value in CLOSED_STATES, "start": start, "read": quantity_read,
        "sent": quantity_sent, "error": None if error is None else error[:ERROR_CHARS],
        "note": None if note is None else note[:NOTE_CHARS], "now": now or datetime.now(timezone.utc),
    }).all()
    return Counter({code: count for code, count in rows})


def prune(session: Session, account: str, *, older_than: datetime) -> int:
    """Delete ``account``'s closed entries started before ``older_than``; how many.  Does not commit."""
    return session.execute(text(
        f"DELETE FROM push_log p USING marketplaces m WHERE m.id = p.marketplace_id AND m.code = :mp "
        f"AND p.started_at < :before AND p.state IN ({_quoted(CLOSED_STATES)})"),
        {"mp": account, "before": older_than}).rowcount


def waiting(session: Session, account: str) -> int:
    """``account``'s pushes waiting for their turn (state ``waiting``)."""
    return session.execute(text(
        "SELECT count(*) FROM push_log p JOIN marketplaces m ON m.id = p.marketplace_id "
        "WHERE m.code = :mp AND p.state = 'waiting'"), {"mp": account}).scalar_one()


@dataclass(frozen=True)
class PushEntry:
    """One push as the console and the read API show it."""

    id: int
    account: str
    sku: str
    listings: list[str]
    state: str
    quantity_read: int | None
    quantity_sent: int | None
    attempts: int
    error: str | None
    note: str | None
    started_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    def as_json(self) -> dict:
        """The entry as JSON-able values (times in ISO 8601)."""
        moments = ("started_at", "sent_at", "finished_at", "updated_at")
        return {name: (value.isoformat() if name in moments and value is not None else value)
                for name, value in vars(self).items()}


def _where(found: PushFilter, *, with_states: bool = True, with_before: bool = True) -> tuple[str, dict]:
    clauses, values = ["TRUE"], {}
    if found.account:
        clauses.append("m.code = :account")
        values["account"] = found.account
    if with_states and found.states:
        clauses.append("p.state = ANY(CAST(:states AS text[]))")
        values["states"] = list(found.states)
    if found.since:
        clauses.append("p.started_at >= :since")
        values["since"] = found.since
    if found.until:
        clauses.append("p.started_at < :until")
        values["until"] = found.until
    if found.sku:
        clauses.append("p.sku = :sku")
        values["sku"] = found.sku
    if with_before and found.before:
        clauses.append("p.id < :before")
        values["before"] = found.before
    return " AND ".join(clauses), values


_COLUMNS = ("p.id, m.code AS account, p.sku, p.listings, p.state, p.quantity_read, p.quantity_sent, p.attempts, "
            "p.error, p.note, p.started_at, p.sent_at, p.finished_at, p.updated_at")


def list_pushes(session: Session, found: PushFilter) -> tuple[list[PushEntry], bool]:
    """One page of pushes matching ``found``, newest first, and whether older ones match too."""
    where, values = _where(found)
    rows = session.execute(text(
        f"SELECT {_COLUMNS} FROM push_log p JOIN marketplaces m ON m.id = p.marketplace_id WHERE {where} "
        "ORDER BY p.id DESC LIMIT :limit"), values | {"limit": found.limit + 1}).all()
    return [PushEntry(**row._mapping) for row in rows[:found.limit]], len(rows) > found.limit


def count_states(session: Session, found: PushFilter) -> dict[str, int]:
    """How many pushes matching ``found`` (its states aside) are in each state; every state listed, 0 included."""
    where, values = _where(found, with_states=False, with_before=False)
    counted = dict(session.execute(text(
        f"SELECT p.state, count(*) FROM push_log p JOIN marketplaces m ON m.id = p.marketplace_id WHERE {where} "
        "GROUP BY p.state"), values).all())
    return {state: counted.get(state, 0) for state in STATES}
