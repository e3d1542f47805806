"""Stock events (DESIGN.md §3, §5): orders, cancellations, top-ups and manual adjustments.

Each event is one ledger row written in the same transaction as the stock change it makes, and
happens once: its idempotency key is UNIQUE in the ledger and is checked under the stock row's
lock, so a re-delivered message or a re-sent webhook finds its key and changes nothing.

Two kinds of event, and why they differ:

- **Marketplace events** (``order_created``, ``order_cancelled``): the marketplace moved its own
  stock when the order happened (Back Market lowers it itself), so a page fetched after that
  moment already counts the order.  An order that arrives after such a page was applied is
  booked with a change of 0 ("absorbed") rather than counted twice.
- **Local events** (``topup``, ``manual``): the marketplace learns of them only when we push the
  new absolute quantity (``POST /ws/listings/{id}``).  Until that push is confirmed, no snapshot
  may overwrite the row (db/snapshot.py skips it).

The push is absolute, so it overwrites an order the marketplace took after the push read our
quantity but before we booked it: such an order is applied and asks for another push.  When the
clocks cannot tell whether a page saw an event (their times are within the clock skew), the row
is flagged ``needs_recheck`` and read again later, and meanwhile the lower stock is kept: an
uncertain unit is never offered twice.  The README's "Stock events" section has the full table.

This module never commits: the caller owns the transaction (one per message).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session

# The event contract lives in core.events; these names are re-exported for the ledger's callers.
from core.events import (CHANGE_TYPES, LOCAL_CHANGE_TYPES, MARKETPLACE_CHANGE_TYPES, InvalidStockEvent,  # noqa: F401
                         StockEvent, order_line_key)

logger = logging.getLogger(__name__)

#: Marketplaces whose stock is pushed after a local change (an absolute quantity, one call).
#: Others keep the change locally only, and their rows never wait for a push.
PUSHED_MARKETPLACES = frozenset({"backmarket"})

#: How far apart two clocks (ours, the marketplace's) may be: an event this close to a page's
#: fetch time may or may not be in the page.  ``STOCK_EVENT_SKEW_S`` sets it for the fleet.
DEFAULT_CLOCK_SKEW = timedelta(seconds=5)
_clock_skew = DEFAULT_CLOCK_SKEW

def set_clock_skew(seconds: float) -> None:
    """Set the process-wide clock skew used when no ``skew`` is passed (workers do it from settings)."""
    global _clock_skew
    if seconds < 0:
        raise ValueError(f"the clock skew must be >= 0 seconds, got {seconds!r}")
    _clock_skew = timedelta(seconds=seconds)


def clock_skew() -> timedelta:
    """The process-wide clock skew (see :data:`DEFAULT_CLOCK_SKEW`)."""
    return _clock_skew


@dataclass(frozen=True)
class EventResult:
    """What booking an event did.

    ``status`` is ``applied`` or ``duplicate`` (the key was already in the ledger: nothing
    changed; ``before == after`` is the current stock, and the flags say what the row still
    waits for).  ``change`` is what was booked: 0 when the event was ``absorbed`` (a page
    already counted it, or it met its other half first).  ``push_requested``: the caller should
    enqueue a push of the row.  ``needs_recheck``: the row was flagged to be read again from the
    marketplace.  ``created``: the stock row did not exist.
    """

    status: str
    stock_id: int
    before: int
    after: int
    oversold: bool = False
    change: int = 0
    idempotency_key: str = ""
    absorbed: bool = False
    needs_recheck: bool = False
    push_requested: bool = False
    created: bool = False


#: (database URL, marketplace code) -> id: marketplaces are never renumbered nor deleted, and each
#: event would otherwise pay a round trip to look its id up again.
_marketplace_ids: dict[tuple[Any, str], int] = {}


def marketplace_id_of(session: Session, code: str) -> int:
    """The id of marketplace ``code``, created on first use.  Does not commit."""
    cache_key = (session.get_bind().url, code)  # a URL is immutable and hashable: no rendering per event
    cached = _marketplace_ids.get(cache_key)
    if cached is not None:
        return cached
    found = session.execute(text("SELECT id FROM marketplaces WHERE code = :c"), {"c": code}).scalar()
    if found is not None:
        # Only a row that was there already: one this transaction creates may yet roll back.
        _marketplace_ids[cache_key] = found
        return found
    from db.snapshot import ensure_marketplace

    return ensure_marketplace(session, code)


def record_stock_event(session: Session, event: StockEvent, *, now: datetime | None = None,
                       skew: timedelta | None = None) -> EventResult:
    """Book ``event`` in the caller's transaction (the caller commits), exactly once.

    Locks the stock row (creating the variation and the row at 0 when the SKU is new: an order
    may arrive before the first sync), checks the idempotency key under that lock, then one
    statement writes the ledger row (``ON CONFLICT DO NOTHING`` on the key), moves the stock and
    the variation total by the same change, and sets the push and re-check flags.  ``now`` and
    ``skew`` default to the wall clock and :func:`clock_skew` (tests pass a clock of their own).
    ``event`` is valid by construction (:class:`core.events.StockEvent`).
    """
    now = now or datetime.now(timezone.utc)
    skew = clock_skew() if skew is None else skew
    key = event.key
    marketplace_id = marketplace_id_of(session, event.marketplace)
    row = _lock_stock_row(session, marketplace_id, event.sku)
    created = False
    if row is None:
        created = _create_stock_row(session, marketplace_id, event.sku)
        row = _lock_stock_row(session, marketplace_id, event.sku)

    # Under the row lock, in a statement of its own (a snapshot taken after the lock): a concurrent
    # delivery of the same event, or the other half of its order line, has committed or waits behind us.
    other_key = _other_half_key(event)
    checks = session.execute(_LEDGER_CHECKS, {"k": key, "other": other_key}).one()
    if checks.stock_id is not None:
        return _duplicate(event, key, row, checks)

    decision = _decide(event, row, other_booked=checks.other_booked, now=now, skew=skew)
    written = session.execute(_BOOK_EVENT, {
        "sid": row.id, "change": decision.change, "type": event.change_type, "order": event.order_id,
        "line": event.order_line_id, "ref": event.reference, "actor": event.actor,
        "note": decision.note or event.note, "key": key, "t": event.event_time, "now": now,
        "recheck": decision.recheck, "push": decision.push,
    }).first()
    if written is None:
        # The key was booked meanwhile on another stock row (a key reused for another SKU).
        return _duplicate(event, key, row, None)
    return _applied(event, row.id, decision, written.quantity_before, written.quantity_after, created)


def _applied(event: StockEvent, stock_id: int, decision: _Decision, before: int, after: int,
             created: bool) -> EventResult:
    """The result of a booked event; an oversold one is logged (and counted by the caller)."""
    oversold = after < 0 and decision.change < 0
    if oversold:
        logger.warning("oversold: %s of %s on %s leaves stock at %d (stock row %d)", event.change_type, event.sku,
                       event.marketplace, after, stock_id)
    return EventResult("applied", stock_id, before, after, oversold=oversold, change=decision.change,
                       idempotency_key=event.key, absorbed=decision.change != event.change,
                       needs_recheck=decision.recheck, push_requested=decision.push, created=created)


class LedgerRace(Exception):
    """A batch's idempotency key was booked meanwhile on another stock row: retry the batch.

    Transient: the retry finds the key booked and counts that event as a duplicate.
    """

    permanent = False


def record_stock_events(session: Session, events: list[StockEvent], *, now: datetime | None = None,
                        skew: timedelta | None = None) -> list[EventResult]:
    """Book several events in the caller's one transaction (the caller commits); results in ``events`` order.

    The same rules and results as :func:`record_stock_event` for each event in turn (events of
    one SKU in the order given), in a fixed number of statements per batch rather than three per
    event: the batch's stock rows are locked in one statement (in id order, so two batches over
    the same rows queue instead of deadlocking), every key and order-line half is looked up in
    one, each event is decided here in order, and one statement writes every ledger row, moves
    every stock row and variation total and sets the flags.

    Raises :class:`LedgerRace` if a key of the batch was booked meanwhile on another row.
    """
    if not events:
        return []
    now = now or datetime.now(timezone.utc)
    skew = clock_skew() if skew is None else skew
    marketplace_ids = {code: marketplace_id_of(session, code) for code in sorted({e.marketplace for e in events})}
    wanted = sorted({(marketplace_ids[e.marketplace], e.sku) for e in events})
    rows = _lock_stock_rows(session, wanted)
    created: set[tuple[int, str]] = set()
    for marketplace_id, sku in wanted:
        if (marketplace_id, sku) not in rows and _create_stock_row(session, marketplace_id, sku):
            created.add((marketplace_id, sku))
    if len(rows) < len(wanted):
        rows.update(_lock_stock_rows(session, [pair for pair in wanted if pair not in rows]))

    # Under the locks, in a statement of its own (a snapshot taken after them).
    keys = {event.key for event in events} | {k for k in map(_other_half_key, events) if k is not None}
    booked = {row.idempotency_key: row for row in session.execute(_BOOKED_KEYS, {"keys": sorted(keys)})}

    states = {pair: _RowState(row) for pair, row in rows.items()}
    results: list[EventResult | None] = [None] * len(events)
    entries: list[_Entry] = []
    for index in sorted(range(len(events)), key=lambda index: (events[index].marketplace, events[index].sku)):
        event = events[index]
        pair = (marketplace_ids[event.marketplace], event.sku)
        row, state, key = rows[pair], states[pair], event.key
        first_on_new_row = pair in created
        created.discard(pair)
        if key in booked:
            results[index] = _duplicate(event, key, row, booked[key], listed=state.listed, pending=state.pending,
                                        flagged=state.needs_recheck)
            continue
        other = _other_half_key(event)
        decision = _decide(event, row, other_booked=other is not None and other in booked, now=now, skew=skew)
        entry = _Entry(row, event, decision, state.listed, state.listed + decision.change)
        state.book(entry)
        booked[key] = SimpleNamespace(stock_id=row.id, change_type=event.change_type)
        entries.append(entry)
        results[index] = _applied(event, row.id, decision, entry.before, entry.after, first_on_new_row)
    if entries:
        _write_batch(session, entries, [state for state in states.values() if state.entries], now)
    return results  # type: ignore[return-value]


class _Entry(NamedTuple):
    """One ledger row a batch writes: the locked stock row, the event, what it books, before and after."""

    row: Any
    event: StockEvent
    decision: _Decision
    before: int
    after: int


class _RowState:
    """A locked stock row as the batch's events so far leave it."""

    def __init__(self, row) -> None:
        self.row = row
        self.listed: int = row.listed
        self.entries = 0
        self.rechecked = False
        self.pushes = 0

    @property
    def pending(self) -> bool:
        """Whether the row waits for a push (before the batch, or asked by one of its events)."""
        return self.row.push_state == "pending" or self.pushes > 0

    @property
    def needs_recheck(self) -> bool:
        """Whether the row is flagged for a re-check (before the batch, or by one of its events)."""
        return self.row.needs_recheck or self.rechecked

    def book(self, entry: _Entry) -> None:
        """Count ``entry`` on this row."""
        self.listed = entry.after
        self.entries += 1
        self.rechecked = self.rechecked or entry.decision.recheck
        self.pushes += int(entry.decision.push)


def _lock_stock_rows(session: Session, pairs: list[tuple[int, str]]) -> dict[tuple[int, str], Any]:
    found = session.execute(_LOCK_STOCK_ROWS, {"mp": [mp for mp, _ in pairs], "sku": [sku for _, sku in pairs]})
    return {(row.marketplace_id, row.sku): row for row in found}


def _write_batch(session: Session, entries: list[_Entry], changed: list[_RowState], now: datetime) -> None:
    totals: dict[int, int] = {}
    for entry in entries:
        totals[entry.row.variation_id] = totals.get(entry.row.variation_id, 0) + entry.decision.change
    written = session.execute(_BOOK_BATCH, {
        "sid": [e.row.id for e in entries], "before": [e.before for e in entries],
        "after": [e.after for e in entries], "change": [e.decision.change for e in entries],
        "type": [e.event.change_type for e in entries], "order": [e.event.order_id for e in entries],
        "line": [e.event.order_line_id for e in entries], "ref": [e.event.reference for e in entries],
        "actor": [e.event.actor for e in entries], "note": [e.decision.note or e.event.note for e in entries],
        "key": [e.event.key for e in entries], "t": [e.event.event_time for e in entries],
        "row_id": [state.row.id for state in changed], "row_listed": [state.listed for state in changed],
        "row_recheck": [state.rechecked for state in changed], "row_pushes": [state.pushes for state in changed],
        "var_id": list(totals), "var_delta": list(totals.values()), "now": now,
    }).scalar_one()
    if written != len(entries):
        # A key of ours went into the ledger on another row since we looked (a key reused for
        # another SKU, by a concurrent transaction): the running quantities above no longer hold.
        raise LedgerRace(f"{len(entries) - written} idempotency key(s) of the batch were booked meanwhile on "
                         "another stock row; retry the batch")


_LOCK_STOCK_ROWS = text(
    "SELECT s.id, s.variation_id, s.marketplace_id, v.sku, s.listed, s.last_synced_at, s.push_state, s.pushed_at, "
    "s.push_lease_until, s.needs_recheck "
    "FROM unnest(CAST(:mp AS int[]), CAST(:sku AS text[])) AS t(mp, sku) "
    "JOIN variations v ON v.sku = t.sku "
    "JOIN marketplace_stock s ON s.variation_id = v.id AND s.marketplace_id = t.mp "
    "ORDER BY s.id FOR UPDATE OF s")

_BOOKED_KEYS = text(
    "SELECT idempotency_key, stock_id, change_type FROM stock_ledger "
    "WHERE idempotency_key = ANY(CAST(:keys AS text[]))")

# Every ledger row of the batch (in order), then each changed stock row's final quantity and
# flags, then the variation totals by the batch's net change: one statement, under the locks.
_BOOK_BATCH = text("""
WITH entry AS (
    INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, quantity_after, change,
                              change_type, order_id, order_line_id, reference, actor, note, idempotency_key,
                              event_time)
    SELECT s.id, s.variation_id, s.marketplace_id, e.before, e.after, e.change, e.type, e.order_id, e.line, e.ref,
           e.actor, e.note, e.key, e.t
    FROM unnest(CAST(:sid AS bigint[]), CAST(:before AS int[]), CAST(:after AS int[]), CAST(:change AS int[]),
                CAST(:type AS text[]), CAST(:order AS text[]), CAST(:line AS text[]), CAST(:ref AS text[]),
                CAST(:actor AS text[]), CAST(:note AS text[]), CAST(:key AS text[]), CAST(:t AS timestamptz[]))
         WITH ORDINALITY AS e(sid, before, after, change, type, order_id, line, ref, actor, note, key, t, position)
    JOIN marketplace_stock s ON s.id = e.sid
    ORDER BY e.position
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING 1
), stock AS (
    UPDATE marketplace_stock s SET
        listed = r.listed, updated_at = :now,
        oversold_since = CASE WHEN r.listed < 0 THEN COALESCE(s.oversold_since, :now) END,
        needs_recheck = s.needs_recheck OR r.recheck,
        recheck_since = CASE WHEN r.recheck THEN COALESCE(s.recheck_since, :now) ELSE s.recheck_since END,
        push_state = CASE WHEN r.pushes > 0 THEN 'pending' ELSE s.push_state END,
        push_seq = s.push_seq + r.pushes,
        push_requested_at = CASE WHEN r.pushes > 0 THEN :now ELSE s.push_requested_at END
    FROM unnest(CAST(:row_id AS bigint[]), CAST(:row_listed AS int[]), CAST(:row_recheck AS boolean[]),
                CAST(:row_pushes AS int[])) AS r(id, listed, recheck, pushes)
    WHERE s.id = r.id
    RETURNING s.id
), total AS (
    UPDATE variations v SET total_stock = v.total_stock + d.delta, updated_at = :now
    FROM unnest(CAST(:var_id AS bigint[]), CAST(:var_delta AS int[])) AS d(id, delta)
    WHERE v.id = d.id AND d.delta <> 0
    RETURNING v.id
)
SELECT count(*) FROM entry
""")


@dataclass(frozen=True)
class _Decision:
    change: int
    push: bool
    recheck: bool
    note: str | None = None


# The event's own key (booked already?) and its order line's other half (order / cancellation).
_LEDGER_CHECKS = text("""
SELECT booked.stock_id, booked.change_type,
       EXISTS (SELECT 1 FROM stock_ledger WHERE idempotency_key = :other) AS other_booked
FROM (SELECT 1) AS one
LEFT JOIN stock_ledger booked ON booked.idempotency_key = :k
""")


def _other_half_key(event: StockEvent) -> str | None:
    """The key of the order line's other event (its cancellation, or its order), if an order line's."""
    if event.change_type in LOCAL_CHANGE_TYPES:
        return None
    other = "order_cancelled" if event.change_type == "order_created" else "order_created"
    return order_line_key(event.marketplace, event.order_line_id, other)


def _decide(event: StockEvent, row, *, other_booked: bool, now: datetime, skew: timedelta) -> _Decision:
    """What an event changes, given what the last page and the last push of its row saw."""
    pushable = event.marketplace in PUSHED_MARKETPLACES
    if event.change_type in LOCAL_CHANGE_TYPES:
        return _Decision(event.change, push=pushable, recheck=False)

    moment = event.event_time
    synced = row.last_synced_at
    covered = synced is not None and moment < synced - skew       # the last page applied counted it
    uncovered = synced is None or moment > synced + skew          # it did not
    # A push that landed after the event (or is in flight) set the marketplace to a quantity
    # that did not know it: the marketplace's own change was overwritten.
    pushed_over = (row.push_lease_until is not None and row.push_lease_until > now) or (
        row.pushed_at is not None and row.pushed_at >= moment - skew)

    if event.change_type == "order_created":
        if other_booked:
            # Cancelled before we saw it: the pair nets to nothing here, and the cancellation's
            # push already set the marketplace to our quantity.
            return _Decision(0, push=False, recheck=False, note="cancelled before the order was booked")
        if covered and not pushed_over:
            return _Decision(0, push=False, recheck=False,
                             note=f"already counted by the marketplace page fetched at {synced.isoformat()}")
        # Uncertain (clocks too close) or overwritten by a push: book it, the lower stock is safe.
        return _Decision(event.change, push=pushable and pushed_over, recheck=not uncovered and not pushed_over)

    # order_cancelled: the units come back.  We push after every cancellation, so the
    # marketplace gets them back whether or not it restores stock itself.
    if not other_booked:
        # Its order comes later (and then books nothing): the marketplace took the units at the
        # order and may not give them back itself, so our push sets them.
        return _Decision(0, push=pushable, recheck=False, note="cancelled before its order was booked")
    if uncovered:
        return _Decision(event.change, push=pushable, recheck=False)
    # A page fetched after the cancellation counted it (if the marketplace restores stock), or
    # the clocks are too close to tell: keep the lower stock and let the re-check decide.
    note = f"already counted by the marketplace page fetched at {synced.isoformat()}" if covered else None
    return _Decision(0, push=pushable, recheck=not covered, note=note)


# The hot path's statements are made once: a text() parses its SQL for bind names when built.
_LOCK_STOCK_ROW = text(
    "SELECT s.id, s.variation_id, s.listed, s.last_synced_at, s.push_state, s.pushed_at, s.push_lease_until, "
    "s.needs_recheck "
    "FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
    "WHERE v.sku = :sku AND s.marketplace_id = :mp FOR UPDATE OF s")


def _lock_stock_row(session: Session, marketplace_id: int, sku: str):
    return session.execute(_LOCK_STOCK_ROW, {"sku": sku, "mp": marketplace_id}).first()


def _create_stock_row(session: Session, marketplace_id: int, sku: str) -> bool:
    # An event for a SKU no sync has seen: the variation and its stock row start at 0, like a
    # sync's, so the ledger invariant holds from the first row; the first sync corrects the rest.
    session.execute(text("INSERT INTO variations (sku) VALUES (:sku) ON CONFLICT (sku) DO NOTHING"), {"sku": sku})
    return session.execute(text(
        "INSERT INTO marketplace_stock (variation_id, marketplace_id, listed) "
        "SELECT id, :mp, 0 FROM variations WHERE sku = :sku "
        "ON CONFLICT (variation_id, marketplace_id) DO NOTHING RETURNING id"),
        {"sku": sku, "mp": marketplace_id}).first() is not None


def _duplicate(event: StockEvent, key: str, row, booked, *, listed: int | None = None, pending: bool | None = None,
               flagged: bool | None = None) -> EventResult:
    if booked is not None and (booked.stock_id != row.id or booked.change_type != event.change_type):
        logger.warning("idempotency key %s was booked for stock row %d (%s), now sent for row %d (%s): "
                       "a key must name one effect", key, booked.stock_id, booked.change_type, row.id,
                       event.change_type)
    logger.info("duplicate stock event %s skipped", key)
    # Still waiting for a push or a re-check: the first delivery may have died between its commit
    # and sending them, so the caller sends them again (a push with nothing to do sends nothing).
    # (A batch passes the row as its earlier events leave it.)
    listed = row.listed if listed is None else listed
    pending = row.push_state == "pending" if pending is None else pending
    flagged = row.needs_recheck if flagged is None else flagged
    return EventResult("duplicate", row.id, listed, listed, idempotency_key=key, push_requested=pending,
                       needs_recheck=flagged)


# One statement under the row lock: the ledger row (its key UNIQUE: ON CONFLICT nothing is written
# and nothing moves), the stock row, the flags and the variation total, all by the same change.
_BOOK_EVENT = text("""
WITH entry AS (
    INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, quantity_after, change,
                              change_type, order_id, order_line_id, reference, actor, note, idempotency_key,
                              event_time)
    SELECT s.id, s.variation_id, s.marketplace_id, s.listed, s.listed + CAST(:change AS int), CAST(:change AS int),
           :type, :order, :line, :ref, :actor, :note, :key, :t
    FROM marketplace_stock s WHERE s.id = :sid
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING stock_id, variation_id, quantity_before, quantity_after, change
), stock AS (
    UPDATE marketplace_stock s SET
        listed = entry.quantity_after, updated_at = :now,
        oversold_since = CASE WHEN entry.quantity_after < 0 THEN COALESCE(s.oversold_since, :now) END,
        needs_recheck = s.needs_recheck OR CAST(:recheck AS boolean),
        recheck_since = CASE WHEN CAST(:recheck AS boolean) THEN COALESCE(s.recheck_since, :now)
                             ELSE s.recheck_since END,
        push_state = CASE WHEN CAST(:push AS boolean) THEN 'pending' ELSE s.push_state END,
        push_seq = s.push_seq + CASE WHEN CAST(:push AS boolean) THEN 1 ELSE 0 END,
        push_requested_at = CASE WHEN CAST(:push AS boolean) THEN :now ELSE s.push_requested_at END
    FROM entry WHERE s.id = entry.stock_id
    RETURNING s.id
), total AS (
    UPDATE variations v SET total_stock = v.total_stock + entry.change, updated_at = :now
    FROM entry WHERE v.id = entry.variation_id AND entry.change <> 0
    RETURNING v.id
)
SELECT entry.quantity_before, entry.quantity_after, entry.change FROM entry
""")


# -- pushing the quantity to the marketplace -------------------------------------------------------


class PushImpossible(Exception):
    """The row cannot be pushed (no listing, or several to split between).  Permanent."""

    permanent = True


@dataclass(frozen=True)
class PushClaim:
    """A claimed push: the quantity to send (``listed``, never below 0) to ``listing``.

    ``needed`` is False when nothing is waiting (another push already sent the latest change):
    then no lease was taken and nothing must be sent.
    """

    stock_id: int
    owner: str
    needed: bool
    listing: str | None = None
    listed: int = 0
    quantity: int = 0
    seq: int = 0
    started_at: datetime | None = None


def find_stock_id(session: Session, marketplace: str, sku: str) -> int | None:
    """The stock row of ``sku`` on ``marketplace``, or None."""
    return session.execute(text(
        "SELECT s.id FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
        "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :mp AND v.sku = :sku"),
        {"mp": marketplace, "sku": sku}).scalar()


def claim_push(session: Session, stock_id: int, owner: str, *, lease: timedelta,
               now: datetime | None = None) -> PushClaim | None:
    """Take the row's push lease and read the quantity to send, atomically.  Does not commit.

    One push of a row at a time: two absolute pushes in flight could land in the wrong order and
    leave the older quantity.  Returns None when another owner holds a live lease (that push
    will leave the row pending if it read too early, and its actor pushes again).  The same
    ``owner`` (a re-delivered message) takes its own lease back at once.

    Raises :class:`PushImpossible` when the variation has no listing, or several, on the marketplace.
    """
    now = now or datetime.now(timezone.utc)
    row = session.execute(text(
        "SELECT id, variation_id, marketplace_id, listed, push_seq, push_state, push_lease_owner, push_lease_until "
        "FROM marketplace_stock WHERE id = :sid FOR UPDATE"), {"sid": stock_id}).first()
    if row is None:
        raise PushImpossible(f"no stock row {stock_id}")
    if row.push_state not in ("pending", "failed"):
        return PushClaim(stock_id, owner, needed=False, listed=row.listed, seq=row.push_seq)
    if row.push_lease_until is not None and row.push_lease_until > now and row.push_lease_owner != owner:
        return None
    listings = session.execute(text(
        "SELECT external_id FROM listings WHERE marketplace_id = :mp AND variation_id = :v AND missing_since IS NULL "
        "ORDER BY id"), {"mp": row.marketplace_id, "v": row.variation_id}).scalars().all()
    if len(listings) != 1:
        what = "no listing" if not listings else f"{len(listings)} listings (an absolute quantity cannot be split)"
        raise PushImpossible(f"stock row {stock_id} has {what} on the marketplace: sync it, or push by hand")
    session.execute(text(
        "UPDATE marketplace_stock SET push_lease_owner = :owner, push_lease_until = :until WHERE id = :sid"),
        {"owner": owner[:64], "until": now + lease, "sid": stock_id})
    return PushClaim(stock_id, owner, needed=True, listing=listings[0], listed=row.listed,
                     quantity=max(row.listed, 0), seq=row.push_seq, started_at=now)


def finish_push(session: Session, claim: PushClaim, *, now: datetime | None = None) -> bool:
    """Record a push the marketplace confirmed; True when the row is now up to date.  Does not commit.

    False when a change arrived after the claim read the quantity (the row stays ``pending``: push
    again), or when the lease was lost to another owner (whose push will follow ours).
    """
    now = now or datetime.now(timezone.utc)
    state = session.execute(text(
        "UPDATE marketplace_stock SET push_lease_owner = NULL, push_lease_until = NULL, push_error = NULL, "
        "push_started_at = :started, pushed_at = :now, pushed_quantity = :q, "
        "push_state = CASE WHEN push_seq = :seq THEN 'pushed' ELSE 'pending' END "
        "WHERE id = :sid AND push_lease_owner = :owner RETURNING push_state"),
        {"started": claim.started_at, "now": now, "q": claim.quantity, "seq": claim.seq, "sid": claim.stock_id,
         "owner": claim.owner[:64]}).scalar()
    return state == "pushed"


def note_push_error(session: Session, stock_id: int, owner: str, error: str) -> None:
    """Keep a failed attempt's error on the row, and keep the lease.  Does not commit.

    A POST that timed out may still land: until the lease ends, only the same owner (the same
    message, retried) may push the row, so no newer quantity can land before this older one.
    """
    session.execute(text(
        "UPDATE marketplace_stock SET push_error = :error WHERE id = :sid AND push_lease_owner = :owner"),
        {"error": error[:4000], "sid": stock_id, "owner": owner[:64]})


def release_push(session: Session, stock_id: int, owner: str, error: str, *, failed: bool) -> None:
    """Give the lease back after a push failed, keeping its error; ``failed``: it failed for good.

    A row marked ``failed`` still waits for a push (the next one, or an operator's retry of the
    dead letter, sends it) and no snapshot overwrites it meanwhile.  Does not commit.
    """
    session.execute(text(
        "UPDATE marketplace_stock SET push_error = :error, "
        "push_lease_owner = CASE WHEN push_lease_owner = :owner THEN NULL ELSE push_lease_owner END, "
        "push_lease_until = CASE WHEN push_lease_owner = :owner THEN NULL ELSE push_lease_until END, "
        "push_state = CASE WHEN CAST(:failed AS boolean) AND push_state = 'pending' THEN 'failed' "
        "ELSE push_state END WHERE id = :sid"),
        {"error": error[:4000], "owner": owner[:64], "failed": failed, "sid": stock_id})


def rows_to_recheck(session: Session, marketplace: str, *, older_than: datetime, limit: int = 500
                    ) -> list[tuple[int, str]]:
    """``(stock_id, sku)`` of rows flagged for a re-check before ``older_than``, oldest first."""
    return [tuple(row) for row in session.execute(text(
        "SELECT s.id, v.sku FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
        "JOIN marketplaces m ON m.id = s.marketplace_id "
        "WHERE m.code = :mp AND s.needs_recheck AND s.recheck_since < :before ORDER BY s.recheck_since LIMIT :n"),
        {"mp": marketplace, "before": older_than, "n": limit})]
