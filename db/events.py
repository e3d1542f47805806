"""Stock events in PostgreSQL: book orders, cancellations, top-ups and adjustments; claim and record pushes.

Each event is one ledger row written in the same transaction as the stock change it makes, and
happens once: its idempotency key is UNIQUE in the ledger and is checked under the stock row's
lock.  What an event changes is decided by :mod:`core.booking`; this module applies it set-based
(a fixed number of statements per batch; a single event is a batch of one).  A push is claim →
read the listing → :func:`read_for_push` (the read applied as a snapshot decides the quantity) →
POST → :func:`finish_push`.  This module never commits: the caller owns the transaction.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from datetime import datetime, timedelta, timezone
from typing import Any, Collection, NamedTuple

from sqlalchemy import text
from sqlalchemy.orm import Session

from core import booking
from core.booking import DEFAULT_CLOCK_SKEW
from core.platforms import PLATFORMS

# The event contract lives in core.events; these names are re-exported for the ledger's callers.
from core.events import (CHANGE_TYPES, LOCAL_CHANGE_TYPES, MARKETPLACE_CHANGE_TYPES, InvalidStockEvent,  # noqa: F401
                         StockEvent, order_line_key)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventResult:
    """What booking an event did.

    ``status`` is ``applied`` or ``duplicate`` (the key was already in the ledger: nothing
    changed; ``before == after`` is the current stock, and the flags say what the row still
    waits for).  ``outcome`` is the rule that decided it (:class:`core.booking.Booking`:
    applied, absorbed, uncertain, waiting; or duplicate).  ``change`` is what was booked (with
    the part of a cancellation it settles, and a split cancellation's both parts).
    ``push_requested``: the caller should enqueue a push of the row.  ``needs_recheck``: the row is flagged to be read again from the
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
    outcome: str = "applied"


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


_PLATFORMS = text("SELECT code, platform FROM marketplaces WHERE code = ANY(:codes)")


class LedgerRace(Exception):
    """A batch's idempotency key was booked meanwhile on another stock row: retry the batch.

    Transient: the retry finds the key booked and counts that event as a duplicate.
    """

    permanent = False


def record_stock_events(session: Session, events: list[StockEvent], *, now: datetime | None = None,
                        skew: timedelta | None = None, not_restocking: Collection[str] = ()) -> list[EventResult]:
    """Book events in the caller's one transaction (the caller commits), exactly once each; results in order.

    The one booking path (a single event is a batch of one), in a fixed number of statements per
    batch: the batch's stock rows are locked in one statement (in id order, so two batches over
    the same rows queue instead of deadlocking; an unknown SKU gets its variation and row at 0
    first), every key and order-line half is looked up in one, each event is decided in order by
    :func:`core.booking.decide_event` (events of one SKU in the order given), and one statement
    writes every ledger row, moves every stock row and variation total and sets the flags.
    ``not_restocking``: marketplaces that do not give a cancelled line's units back themselves.  A
    local change waits for a push only on an account whose platform can push (:mod:`core.platforms`).

    Events are valid by construction (:class:`core.events.StockEvent`).  Raises :class:`LedgerRace`
    if a key of the batch was booked meanwhile on another row.
    """
    if not events:
        return []
    now = now or datetime.now(timezone.utc)
    skew = DEFAULT_CLOCK_SKEW if skew is None else skew
    marketplace_ids = {code: marketplace_id_of(session, code) for code in sorted({e.marketplace for e in events})}
    pushed = {code for code, name in session.execute(_PLATFORMS, {"codes": sorted(marketplace_ids)})
              if PLATFORMS[name].push}
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
        other = booked.get(_other_half_key(event))
        decision = booking.decide_event(
            event.change_type, event.quantity, event.event_time, row.last_synced_at, skew=skew,
            other_half=None if other is None else other.event_time,
            pushed=event.marketplace in pushed,
            restocks_on_cancel=event.marketplace not in not_restocking,
            # A cancellation's own fact; for an order, what its waiting cancellation recorded.
            restocked=event.restocked if other is None or event.change_type == "order_cancelled"
            else other.restocked)
        before = state.listed
        for suffix, part in decision.rows():
            # Each part under the line's key (the settled part under the cancellation's), by its own time.
            settled = suffix.startswith(":settled")
            entries.append(state.book(_Entry(
                row, event, (_cancel_key(event) if settled else key) + suffix,
                other.event_time if settled else event.event_time, part, state.listed,
                "order_cancelled" if settled else None)))
        booked[key] = SimpleNamespace(stock_id=row.id, change_type=event.change_type, event_time=event.event_time,
                                      restocked=decision.restocked)
        results[index] = _applied(event, row.id, decision, before, state.listed, first_on_new_row)
    if entries:
        _write_batch(session, entries, [state for state in states.values() if state.entries], now)
    return results  # type: ignore[return-value]


def _cancel_key(event: StockEvent) -> str:
    return order_line_key(event.marketplace, event.order_line_id, "order_cancelled")


def _applied(event: StockEvent, stock_id: int, decision: booking.Booking, before: int, after: int,
             created: bool) -> EventResult:
    """The result of a booked event; an oversold one is logged (and counted by the caller)."""
    oversold = after < 0 and decision.total < 0
    if oversold:
        logger.warning("oversold: %s of %s on %s leaves stock at %d (stock row %d)", event.change_type, event.sku,
                       event.marketplace, after, stock_id)
    return EventResult("applied", stock_id, before, after, oversold=oversold, change=decision.total,
                       idempotency_key=event.key, absorbed=decision.total != event.change,
                       needs_recheck=any(part.recheck for _, part in decision.rows()),
                       push_requested=any(part.push for _, part in decision.rows()),
                       created=created, outcome=decision.outcome)


class _Entry(NamedTuple):
    """One ledger row a batch writes: the locked row, its event, key, time, what it books, and before."""

    row: Any
    event: StockEvent
    key: str
    moment: datetime
    decision: booking.Booking
    before: int
    change_type: str | None = None

    @property
    def after(self) -> int:
        return self.before + self.decision.change


class _RowState:
    """A locked stock row as the batch's events so far leave it."""

    def __init__(self, row) -> None:
        self.row = row
        self.listed: int = row.listed
        self.entries = 0
        self.rechecked = False
        self.pushes = 0
        self.local = 0

    @property
    def pending(self) -> bool:
        """Whether the row waits for a push (before the batch, or asked by one of its events)."""
        return self.row.push_state in ("pending", "failed") or self.pushes > 0

    @property
    def needs_recheck(self) -> bool:
        """Whether the row is flagged for a re-check (before the batch, or by one of its events)."""
        return self.row.needs_recheck or self.rechecked

    def book(self, entry: _Entry) -> _Entry:
        """Count ``entry`` on this row."""
        self.listed = entry.after
        self.entries += 1
        self.rechecked = self.rechecked or entry.decision.recheck
        self.pushes += int(entry.decision.push)
        self.local += entry.decision.local
        return entry


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
        "type": [e.change_type or e.event.change_type for e in entries], "order": [e.event.order_id for e in entries],
        "line": [e.event.order_line_id for e in entries], "ref": [e.event.reference for e in entries],
        "actor": [e.event.actor for e in entries],
        "note": [e.decision.note or e.event.note for e in entries],
        "key": [e.key for e in entries], "t": [e.moment for e in entries],
        "restocked": [e.decision.restocked for e in entries],
        "row_id": [state.row.id for state in changed], "row_listed": [state.listed for state in changed],
        "row_recheck": [state.rechecked for state in changed], "row_pushes": [state.pushes for state in changed],
        "row_local": [state.local for state in changed],
        "var_id": list(totals), "var_delta": list(totals.values()), "now": now,
    }).scalar_one()
    if written != len(entries):
        # A key of ours went into the ledger on another row since we looked (a key reused for
        # another SKU, by a concurrent transaction): the running quantities above no longer hold.
        raise LedgerRace(f"{len(entries) - written} idempotency key(s) of the batch were booked meanwhile on "
                         "another stock row; retry the batch")


_LOCK_STOCK_ROWS = text(
    "SELECT s.id, s.variation_id, s.marketplace_id, v.sku, s.listed, s.last_synced_at, s.push_state, "
    "s.needs_recheck "
    "FROM unnest(CAST(:mp AS int[]), CAST(:sku AS text[])) AS t(mp, sku) "
    "JOIN variations v ON v.sku = t.sku "
    "JOIN marketplace_stock s ON s.variation_id = v.id AND s.marketplace_id = t.mp "
    "ORDER BY s.id FOR UPDATE OF s")

_BOOKED_KEYS = text(
    "SELECT idempotency_key, stock_id, change_type, event_time, restocked FROM stock_ledger "
    "WHERE idempotency_key = ANY(CAST(:keys AS text[]))")

# Every ledger row of the batch (in order), then each changed stock row's final quantity and
# flags, then the variation totals by the batch's net change: one statement, under the locks.
_BOOK_BATCH = text("""
WITH entry AS (
    INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, quantity_after, change,
                              change_type, order_id, order_line_id, reference, actor, note, idempotency_key,
                              event_time, restocked)
    SELECT s.id, s.variation_id, s.marketplace_id, e.before, e.after, e.change, e.type, e.order_id, e.line, e.ref,
           e.actor, e.note, e.key, e.t, e.restocked
    FROM unnest(CAST(:sid AS bigint[]), CAST(:before AS int[]), CAST(:after AS int[]), CAST(:change AS int[]),
                CAST(:type AS text[]), CAST(:order AS text[]), CAST(:line AS text[]), CAST(:ref AS text[]),
                CAST(:actor AS text[]), CAST(:note AS text[]), CAST(:key AS text[]), CAST(:t AS timestamptz[]),
                CAST(:restocked AS int[]))
         WITH ORDINALITY AS e(sid, before, after, change, type, order_id, line, ref, actor, note, key, t, restocked,
                              position)
    JOIN marketplace_stock s ON s.id = e.sid
    ORDER BY e.position
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING 1
), stock AS (
    UPDATE marketplace_stock s SET
        listed = r.listed, unpushed = s.unpushed + r.local, updated_at = :now,
        oversold_since = CASE WHEN r.listed < 0 THEN COALESCE(s.oversold_since, :now) END,
        needs_recheck = s.needs_recheck OR r.recheck,
        recheck_since = CASE WHEN r.recheck THEN COALESCE(s.recheck_since, :now) ELSE s.recheck_since END,
        push_state = CASE WHEN r.pushes > 0 THEN 'pending' ELSE s.push_state END,
        push_seq = s.push_seq + r.pushes,
        push_requested_at = CASE WHEN r.pushes > 0 THEN :now ELSE s.push_requested_at END,
        push_pending_since = CASE WHEN r.pushes > 0 THEN COALESCE(s.push_pending_since, :now)
                             ELSE s.push_pending_since END
    FROM unnest(CAST(:row_id AS bigint[]), CAST(:row_listed AS int[]), CAST(:row_recheck AS boolean[]),
                CAST(:row_pushes AS int[]), CAST(:row_local AS int[])) AS r(id, listed, recheck, pushes, local)
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


def _other_half_key(event: StockEvent) -> str | None:
    """The key of the order line's other event (its cancellation, or its order), if an order line's."""
    if event.change_type in LOCAL_CHANGE_TYPES:
        return None
    other = "order_cancelled" if event.change_type == "order_created" else "order_created"
    return order_line_key(event.marketplace, event.order_line_id, other)


def _create_stock_row(session: Session, marketplace_id: int, sku: str) -> bool:
    # An event for a SKU no sync has seen: the variation and its stock row start at 0, like a
    # sync's, so the ledger invariant holds from the first row; the first sync corrects the rest.
    session.execute(text("INSERT INTO variations (sku) VALUES (:sku) ON CONFLICT (sku) DO NOTHING"), {"sku": sku})
    return session.execute(text(
        "INSERT INTO marketplace_stock (variation_id, marketplace_id, listed) "
        "SELECT id, :mp, 0 FROM variations WHERE sku = :sku "
        "ON CONFLICT (variation_id, marketplace_id) DO NOTHING RETURNING id"),
        {"sku": sku, "mp": marketplace_id}).first() is not None


def _duplicate(event: StockEvent, key: str, row, booked, *, listed: int, pending: bool, flagged: bool
               ) -> EventResult:
    if booked is not None and (booked.stock_id != row.id or booked.change_type != event.change_type):
        logger.warning("idempotency key %s was booked for stock row %d (%s), now sent for row %d (%s): "
                       "a key must name one effect", key, booked.stock_id, booked.change_type, row.id,
                       event.change_type)
    logger.info("duplicate stock event %s skipped", key)
    # Still waiting for a push or a re-check: the first delivery may have died between its commit
    # and sending them, so the caller sends them again (a push with nothing to do sends nothing).
    return EventResult("duplicate", row.id, listed, listed, idempotency_key=key, push_requested=pending,
                       needs_recheck=flagged, outcome="duplicate")


# -- pushing the quantity to the marketplace -------------------------------------------------------


class PushImpossible(Exception):
    """The row cannot be pushed (no listing, or several to split between).  Permanent."""

    permanent = True


@dataclass(frozen=True)
class PushClaim:
    """A claimed push of one stock row: its lease ``owner`` and the ``listing`` to read and POST.

    ``needed`` is False when nothing is waiting (another push already sent the latest change):
    then no lease was taken and nothing must be sent.
    """

    stock_id: int
    owner: str
    needed: bool
    listing: str | None = None
    marketplace_id: int = 0
    sku: str = ""


@dataclass(frozen=True)
class PushPlan:
    """What a push's read decided: POST ``quantity`` (``post``), or the earlier attempt had landed.

    ``seen``: the row's ``listed - unpushed`` once the read was applied; a marketplace event booked
    after that moves it (see :func:`moved_since_read`).
    """

    quantity: int
    post: bool = True
    seen: int | None = None


def find_stock_id(session: Session, marketplace: str, sku: str) -> int | None:
    """The stock row of ``sku`` on ``marketplace``, or None."""
    return session.execute(text(
        "SELECT s.id FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
        "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :mp AND v.sku = :sku"),
        {"mp": marketplace, "sku": sku}).scalar()


def claim_push(session: Session, stock_id: int, owner: str, *, lease: timedelta,
               now: datetime | None = None) -> PushClaim | None:
    """Take the row's push lease (the quantity is decided later, by :func:`read_for_push`).  Does not commit.

    One push of a row at a time: two absolute pushes in flight could land in the wrong order.
    Returns None when another owner holds a live lease (its read comes after our change, or it
    leaves the row pending).  The same ``owner`` (a re-delivered message) takes its lease back.

    Raises :class:`PushImpossible` when the variation has no listing, or several, on the marketplace.
    """
    now = now or datetime.now(timezone.utc)
    row = session.execute(text(
        "SELECT s.id, s.variation_id, s.marketplace_id, v.sku, s.push_state, s.push_lease_owner, s.push_lease_until "
        "FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id WHERE s.id = :sid FOR UPDATE OF s"),
        {"sid": stock_id}).first()
    if row is None:
        raise PushImpossible(f"no stock row {stock_id}")
    if row.push_state not in ("pending", "failed") and row.push_lease_owner is None:
        return PushClaim(stock_id, owner, needed=False)
    if row.push_lease_until is not None and row.push_lease_until > now and row.push_lease_owner != owner[:64]:
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
    return PushClaim(stock_id, owner, needed=True, listing=listings[0], marketplace_id=row.marketplace_id,
                     sku=row.sku)


def read_for_push(session: Session, claim: PushClaim, *, fetched_at: datetime, quantity: int,
                  skew: timedelta | None = None, now: datetime | None = None, restocks_on_cancel: bool = True
                  ) -> PushPlan | None:
    """Decide a claimed push from the marketplace's read (``quantity`` at ``fetched_at``).  Does not commit.

    The read is applied as a snapshot of the row (:func:`db.snapshot.apply_snapshot`); the push
    sends what it gives (never below 0) and carries the row's ``unpushed``.  None when the read
    cannot be trusted (an event within the skew): nothing may be sent now, the lease is given
    back and the caller tries again later.  After an attempt of ours whose answer was lost, the
    read first tells whether it landed (:func:`core.booking.earlier_push_landed`).
    """
    from db.snapshot import apply_snapshot, marketplace_changes_since

    now = now or datetime.now(timezone.utc)
    row = session.execute(text(
        "SELECT push_planned, push_read_quantity, push_read_at, push_claimed_unpushed FROM marketplace_stock "
        "WHERE id = :sid "
        "AND push_lease_owner = :owner FOR UPDATE"), {"sid": claim.stock_id, "owner": claim.owner[:64]}).first()
    if row is None:
        return None  # the lease was lost (it ran out and another push took it)
    if row.push_planned is not None:
        # An attempt of ours had no answer: did it land?
        since = marketplace_changes_since(session, claim.stock_id, row.push_read_at, restocks_on_cancel)
        landed = booking.earlier_push_landed(quantity, planned=row.push_planned, read_before=row.push_read_quantity,
                                             since=since, carried=row.push_claimed_unpushed)
        if landed:
            return PushPlan(row.push_planned, post=False)
    rows = apply_snapshot(session, marketplace_id=claim.marketplace_id, fetched_at=fetched_at, skus=[claim.sku],
                          quantities=[quantity], key_prefix=f"push:{claim.owner[:64]}:{fetched_at.timestamp()}:",
                          change_type="recheck", actor="push", skew=skew, now=now, lease_owner=claim.owner,
                          restocks_on_cancel=restocks_on_cancel)
    if not rows or rows[0].state != "apply":
        drop_push_plan(session, claim)
        return None
    planned = booking.push_quantity(rows[0].after)
    seen = session.execute(text(
        "UPDATE marketplace_stock SET push_planned = :q, push_read_quantity = :read, push_read_at = :t, "
        "push_read_seq = push_seq, push_claimed_unpushed = unpushed, push_started_at = :now "
        "WHERE id = :sid RETURNING listed - unpushed"),
        {"q": planned, "read": quantity, "t": fetched_at, "now": now, "sid": claim.stock_id}).scalar_one()
    return PushPlan(planned, seen=seen)


def drop_push_plan(session: Session, claim: PushClaim) -> None:
    """Nothing is sent on this read: give the lease back and forget the plan (the row stays waiting).  Does not commit."""
    session.execute(text(
        "UPDATE marketplace_stock SET push_lease_owner = NULL, push_lease_until = NULL, push_planned = NULL "
        "WHERE id = :sid AND push_lease_owner = :owner"), {"sid": claim.stock_id, "owner": claim.owner[:64]})


def moved_since_read(session: Session, owner: str, seen: dict[int, int]) -> set[int]:
    """Rows (of ``seen``: stock id -> :attr:`PushPlan.seen`) a marketplace event moved since their push's read,
    or whose lease ``owner`` lost.

    Such an event (an order booked between the read and the write) may be one the write would erase
    on the marketplace: the row's plan no longer holds, so it is not sent.  A local change moves
    ``listed`` and ``unpushed`` alike: it leaves the row ``pending`` for the next push instead.
    """
    if not seen:
        return set()
    return set(session.execute(text(
        "SELECT s.id FROM marketplace_stock s "
        "JOIN unnest(CAST(:ids AS bigint[]), CAST(:seen AS int[])) AS t(id, seen) ON s.id = t.id "
        "WHERE s.listed - s.unpushed <> t.seen OR s.push_lease_owner IS DISTINCT FROM :owner"),
        {"ids": list(seen), "seen": list(seen.values()), "owner": owner[:64]}).scalars())


def forget_refused_push(session: Session, claim: PushClaim) -> None:
    """Forget the plan of a compare-and-set push the marketplace refused: it is known not to have landed.

    The next read of the same claim then decides afresh (no "did it land?" guess).  Does not commit.
    """
    session.execute(text(
        "UPDATE marketplace_stock SET push_planned = NULL WHERE id = :sid AND push_lease_owner = :owner"),
        {"sid": claim.stock_id, "owner": claim.owner[:64]})


def finish_push(session: Session, claim: PushClaim, *, now: datetime | None = None) -> bool:
    """Record a push the marketplace confirmed; True when the row is now up to date.  Does not commit.

    The marketplace now knows the unpushed part the push carried.  False when a local change
    came after its read (the row stays ``pending``: push again), or when the lease was lost.
    """
    now = now or datetime.now(timezone.utc)
    state = session.execute(text(
        "UPDATE marketplace_stock SET push_lease_owner = NULL, push_lease_until = NULL, push_error = NULL, "
        "pushed_at = :now, pushed_quantity = push_planned, unpushed = unpushed - push_claimed_unpushed, "
        "push_claimed_unpushed = 0, push_planned = NULL, "
        "push_pending_since = CASE WHEN push_seq = push_read_seq THEN NULL ELSE push_pending_since END, "
        "push_state = CASE WHEN push_seq = push_read_seq THEN 'pushed' ELSE 'pending' END "
        "WHERE id = :sid AND push_lease_owner = :owner AND push_planned IS NOT NULL RETURNING push_state"),
        {"now": now, "sid": claim.stock_id, "owner": claim.owner[:64]}).scalar()
    return state == "pushed"


def note_push_error(session: Session, stock_id: int, owner: str, error: str) -> None:
    """Keep a failed attempt's error on the row, and keep the lease.  Does not commit.

    A POST that timed out may still land: until the lease ends, only the same owner (the same
    message, retried) may push the row, and its read tells whether the attempt landed.
    """
    session.execute(text(
        "UPDATE marketplace_stock SET push_error = :error WHERE id = :sid AND push_lease_owner = :owner"),
        {"error": error[:4000], "sid": stock_id, "owner": owner[:64]})


def release_push(session: Session, stock_id: int, owner: str, error: str, *, failed: bool) -> None:
    """Give the lease back after a push failed, keeping its error; ``failed``: it failed for good.

    A row marked ``failed`` still waits for a push (the sweep, or an operator's retry of the
    dead letter, sends it); its planned quantity stays, so the next push's read can tell whether
    this attempt landed.  Does not commit.
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


# -- drains: the rows a marketplace's re-check and push drains take, in batches ----------------------------


#: A select-list item: the listings of stock row ``s`` on its marketplace that are still listed, in id order.
ROW_LISTINGS = ("ARRAY(SELECT l.external_id FROM listings l WHERE l.marketplace_id = s.marketplace_id "
                "AND l.variation_id = s.variation_id AND l.missing_since IS NULL ORDER BY l.id) AS listings")


class RecheckClaim(NamedTuple):
    """A flagged row a re-check drain took: its listings to read, and how many reads it had already."""

    stock_id: int
    marketplace_id: int
    sku: str
    listings: list[str]
    attempts: int


def claim_rechecks(session: Session, marketplace: str, *, first_after: timedelta, lease: timedelta, limit: int,
                   now: datetime | None = None) -> list[RecheckClaim]:
    """Take up to ``limit`` flagged rows of ``marketplace`` that are due, oldest due first.  Does not commit.

    A row is due at ``recheck_due_at``, or ``first_after`` its flag when it has none.  Taking it
    moves ``recheck_due_at`` a ``lease`` ahead, so no other drain (nor this one) takes it again
    meanwhile; a drain that dies leaves it due again when the lease ends.  Rows locked by another
    transaction are skipped, not waited for.
    """
    now = now or datetime.now(timezone.utc)
    rows = session.execute(text(
        "WITH due AS ("
        "  SELECT s.id FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id "
        "  WHERE m.code = :mp AND s.needs_recheck "
        "  AND COALESCE(s.recheck_due_at, s.recheck_since + CAST(:first AS interval)) <= :now "
        "  ORDER BY COALESCE(s.recheck_due_at, s.recheck_since + CAST(:first AS interval)), s.id LIMIT :n "
        "  FOR UPDATE OF s SKIP LOCKED) "
        "UPDATE marketplace_stock s SET recheck_due_at = :until FROM due, variations v "
        "WHERE s.id = due.id AND v.id = s.variation_id "
        "RETURNING s.id, s.marketplace_id, v.sku, s.recheck_attempts, " + ROW_LISTINGS),
        {"mp": marketplace, "first": first_after, "now": now, "until": now + lease, "n": limit}).all()
    claims = [RecheckClaim(row.id, row.marketplace_id, row.sku, list(row.listings), row.recheck_attempts)
              for row in rows]
    return sorted(claims, key=lambda claim: claim.stock_id)


def recheck_again(session: Session, stock_id: int, *, due_at: datetime) -> None:
    """A re-check that could not settle its row: read it again at ``due_at``.  Does not commit."""
    session.execute(text(
        "UPDATE marketplace_stock SET recheck_due_at = :due, recheck_attempts = recheck_attempts + 1 "
        "WHERE id = :sid AND needs_recheck"), {"due": due_at, "sid": stock_id})


class PushClaimed(NamedTuple):
    """A row a push drain took (its lease is the drain's), oldest waiting first."""

    stock_id: int
    sku: str


def claim_pushes(session: Session, marketplace: str, owner: str, *, lease: timedelta, limit: int,
                 now: datetime | None = None) -> list[PushClaimed]:
    """Lease up to ``limit`` rows of ``marketplace`` waiting for a push, the longest waiting first.  Does not commit.

    A row is taken when it is ``pending`` and no live lease holds it; its lease is ``owner``'s
    (:func:`claim_push` of the same owner then takes it back).  ``failed`` rows wait for the sweep
    (:func:`retry_failed_pushes`) or an operator.  Rows locked by a booking are skipped.
    """
    now = now or datetime.now(timezone.utc)
    rows = session.execute(text(
        "WITH due AS ("
        "  SELECT s.id FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id "
        "  WHERE m.code = :mp AND s.push_state = 'pending' "
        "  AND (s.push_lease_until IS NULL OR s.push_lease_until < :now OR s.push_lease_owner = :owner) "
        "  ORDER BY COALESCE(s.push_pending_since, s.push_requested_at), s.id LIMIT :n "
        "  FOR UPDATE OF s SKIP LOCKED) "
        "UPDATE marketplace_stock s SET push_lease_owner = :owner, push_lease_until = :until FROM due, variations v "
        "WHERE s.id = due.id AND v.id = s.variation_id "
        "RETURNING s.id, v.sku, COALESCE(s.push_pending_since, s.push_requested_at) AS since"),
        {"mp": marketplace, "owner": owner[:64], "now": now, "until": now + lease, "n": limit}).all()
    return [PushClaimed(row.id, row.sku) for row in sorted(rows, key=lambda row: (row.since, row.id))]


def release_pushes(session: Session, stock_ids: list[int], owner: str, *, until: datetime | None = None) -> None:
    """Give back leases ``owner`` took and did not use; with ``until``, a backoff: no push (``owner``'s
    included) takes those rows before then, even one whose read already let go of them.  Does not commit."""
    session.execute(text(
        "UPDATE marketplace_stock SET push_lease_owner = NULL, push_lease_until = :until "
        "WHERE id = ANY(CAST(:ids AS bigint[])) "
        "AND (push_lease_owner = :owner OR CAST(:until AS timestamptz) IS NOT NULL AND push_lease_owner IS NULL)"),
        {"ids": stock_ids, "owner": owner[:64], "until": until})


def fail_pushes_of(session: Session, owner: str, error: str) -> int:
    """Every row whose push lease ``owner`` holds failed for good: ``failed``, lease given back.  Does not commit."""
    return session.execute(text(
        "UPDATE marketplace_stock SET push_error = COALESCE(push_error, :error), push_lease_owner = NULL, "
        "push_lease_until = NULL, push_state = CASE WHEN push_state = 'pending' THEN 'failed' ELSE push_state END "
        "WHERE push_lease_owner = :owner"), {"owner": owner[:64], "error": error[:4000]}).rowcount


def retry_failed_pushes(session: Session, marketplace: str, *, failed_before: datetime,
                        sku: str | None = None) -> int:
    """Put ``failed`` rows (of one ``sku``, or those requested before ``failed_before``) back in line.  Does not commit."""
    return session.execute(text(
        "UPDATE marketplace_stock s SET push_state = 'pending' FROM marketplaces m, variations v "
        "WHERE m.id = s.marketplace_id AND v.id = s.variation_id AND m.code = :mp AND s.push_state = 'failed' "
        "AND (s.push_lease_until IS NULL OR s.push_lease_until < now()) "
        "AND (CAST(:sku AS text) IS NULL AND s.push_requested_at < :before OR v.sku = CAST(:sku AS text))"),
        {"mp": marketplace, "before": failed_before, "sku": sku}).rowcount


def next_due(session: Session, marketplace: str, kind: str, *, first_after: timedelta) -> datetime | None:
    """When the next row of ``marketplace`` is due for a ``push`` or a ``recheck`` drain (None: none waits)."""
    if kind == "push":
        sql = ("SELECT min(COALESCE(s.push_lease_until, now())) FROM marketplace_stock s JOIN marketplaces m "
               "ON m.id = s.marketplace_id WHERE m.code = :mp AND s.push_state = 'pending'")
    else:
        sql = ("SELECT min(COALESCE(s.recheck_due_at, s.recheck_since + CAST(:first AS interval))) "
               "FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id "
               "WHERE m.code = :mp AND s.needs_recheck")
    return session.execute(text(sql), {"mp": marketplace, "first": first_after}).scalar()


def push_backlog(session: Session, marketplace: str | None = None) -> dict[str, int]:
    """Rows waiting for a push (``pending`` or ``failed``), per marketplace code (every one, or ``marketplace``)."""
    return dict(session.execute(text(
        "SELECT m.code, count(s.id) FROM marketplaces m LEFT JOIN marketplace_stock s ON s.marketplace_id = m.id "
        "AND s.push_state IN ('pending', 'failed') WHERE CAST(:mp AS text) IS NULL OR m.code = :mp "
        "GROUP BY m.code ORDER BY m.code"), {"mp": marketplace}).all())
