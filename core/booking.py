"""The stock rules: what an event, a marketplace read or a push does to one stock row (pure functions).

A stock row is *the marketplace's count as of its last snapshot* (a page, a re-check, or the read
a push makes first) *plus what the marketplace does not know*: ``unpushed``, the local changes
(top-ups, adjustments, cancellations of a marketplace that does not restock) not yet pushed, and
the marketplace events (orders; cancellations of one that restocks) that happened after the
snapshot.  So an order is booked only when no snapshot counted it, and a snapshot is applied as
``quantity + unpushed + marketplace events after it``.  The one non-obvious rule: when the clocks
cannot order an event and a snapshot (within the skew), the lower stock is booked and the row is
read again later; a push is only ever a fresh read plus ``unpushed``, so it never sends a number
the rules are unsure of, nor erases an order the marketplace counted.

Whether a cancellation is the marketplace's or ours is the marketplace's word about that
cancellation when it gives one (Shopify's refund lines: ``restocked`` units of the line), else the
account's default; a line restocked in part is booked as two rows, the restocked part the
marketplace's and the rest ours (:func:`cancellation_parts`).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.events import CHANGE_TYPES as KINDS
from core.events import LOCAL_CHANGE_TYPES as LOCAL_KINDS
from core.events import MARKETPLACE_CHANGE_TYPES as MARKETPLACE_KINDS

#: What a snapshot does to a row (see :func:`decide_snapshot`).
SNAPSHOT_STATES = ("apply", "stale", "unpushed", "ambiguous")

#: How far apart two clocks (ours, the marketplace's) may be: an event this close to a page's
#: fetch time may or may not be in the page.  ``STOCK_EVENT_SKEW_S`` sets it for the fleet.
DEFAULT_CLOCK_SKEW = timedelta(seconds=5)


#: The key suffix of a split cancellation's part the marketplace did not restock (the restocked part
#: keeps the line's own key, so a cancellation booked before the split existed is still found once).
NOT_RESTOCKED_SUFFIX = ":not_restocked"


def marketplace_kinds(restocks_on_cancel: bool) -> tuple[str, ...]:
    """The ledger change types a marketplace counts by itself by the account's default (a snapshot counts
    them after their time); a ledger row that records its own fact says so (:func:`counted_by_marketplace`)."""
    return MARKETPLACE_KINDS if restocks_on_cancel else ("order_created",)


def counted_by_marketplace(change_type: str, restocked: int | None, restocks_on_cancel: bool) -> bool:
    """Whether a ledger row is one the marketplace counts by itself: an order, or a cancellation part it
    restocked (``restocked``: the row's recorded units; None, a row from before the fact was kept: the default).

    ``db/snapshot.py`` says the same in SQL (``_MARKETPLACE_ROW``).
    """
    if change_type == "order_cancelled" and restocked is not None:
        return restocked > 0
    return change_type in marketplace_kinds(restocks_on_cancel)


def cancellation_parts(quantity: int, restocked: int | None, restocks_on_cancel: bool) -> tuple[int, int]:
    """``(restocked, kept)``: the units of a cancelled line the marketplace gave back itself, and the rest.

    ``restocked``: what the marketplace said of this cancellation (Shopify's refund lines), None when it
    says nothing (Back Market, Refurbed): then the account's ``restocks_on_cancel`` decides for every unit.
    """
    if restocked is None:
        return (quantity, 0) if restocks_on_cancel else (0, quantity)
    restocked = min(max(restocked, 0), quantity)
    return restocked, quantity - restocked


def coverage(moment: datetime, synced_at: datetime | None, skew: timedelta) -> str:
    """Whether the row's last snapshot counted a marketplace event at ``moment``: counted, unsure or not."""
    if synced_at is None or moment > synced_at + skew:
        return "not_counted"
    if moment < synced_at - skew:
        return "counted"
    return "unsure"


@dataclass(frozen=True)
class Booking:
    """What one event does to its stock row.

    ``outcome``: ``applied`` (its change), ``absorbed`` (a snapshot already counted it: 0),
    ``uncertain`` (the clocks cannot tell: the lower stock, and ``recheck``), ``waiting`` (a
    cancellation whose order is not booked yet: 0 until the order comes).  ``local`` is the part of
    ``change`` the marketplace does not know (it joins ``unpushed`` and asks for a ``push``).
    ``settles``: an order whose cancellation waited books the cancellation's part here too.
    ``restocked``: on a cancellation's row, the units the marketplace said it gave back itself (kept
    in the ledger; a waiting row keeps it for its order to settle by); None when it said nothing.
    ``kept``: a cancellation the marketplace restocked only in part books the rest as a local
    change, a row of its own.
    """

    outcome: str
    change: int
    local: int = 0
    push: bool = False
    recheck: bool = False
    note: str | None = None
    settles: Booking | None = None
    restocked: int | None = None
    kept: Booking | None = None

    @property
    def total(self) -> int:
        """The change of the event and of the cancellation it settles."""
        return sum(part.change for _, part in self.rows())

    def rows(self) -> list[tuple[str, Booking]]:
        """Each ledger row this booking writes, with its key's suffix after the event's own key (``""``):
        the event, its not-restocked part, the cancellation it settles and that one's not-restocked part."""
        found = [("", self)] + ([(NOT_RESTOCKED_SUFFIX, self.kept)] if self.kept else [])
        if self.settles is not None:
            found += [(":settled" + suffix, part) for suffix, part in self.settles.rows()]
        return found


def decide_event(kind: str, quantity: int, moment: datetime, synced_at: datetime | None, *, skew: timedelta,
                 other_half: datetime | None = None, pushed: bool = True, restocks_on_cancel: bool = True,
                 restocked: int | None = None) -> Booking:
    """What an event does to its row, given the row's last snapshot time ``synced_at``.

    ``quantity`` is the units (the signed change for ``manual``).  ``other_half``: the event time of
    the order line's other event when it is booked already (the cancellation, for an order; the
    order, for a cancellation).  ``pushed``: whether the marketplace's stock is pushed at all (if
    not, a local change is kept until the next snapshot, which wins).  ``restocks_on_cancel``:
    whether the marketplace gives a cancelled line's units back itself (the account's default);
    ``restocked``: how many of this cancellation's units it did give back, when it said (for an order,
    what its waiting cancellation recorded), which wins over the default.
    """
    if kind in LOCAL_KINDS:
        change = quantity if kind == "manual" else abs(quantity)
        return Booking("applied", change, local=change if pushed else 0, push=pushed)
    if kind == "order_created":
        booking = _marketplace_event(-quantity, moment, synced_at, skew)
        if other_half is not None:
            # Its cancellation came first and waited: the units come back now, by the cancellation's own time.
            booking = _replace(booking, settles=_cancellation(quantity, restocked, restocks_on_cancel, other_half,
                                                              synced_at, skew=skew, pushed=pushed))
        return booking
    if kind != "order_cancelled":
        raise ValueError(f"unknown event kind {kind!r}")
    if other_half is None:
        # Its order is not booked yet: giving the units back now would offer them twice until it comes.
        # What the marketplace said (or None) waits with it: its order settles by it, or by the default then.
        return Booking("waiting", 0, note="waiting for its order", restocked=restocked)
    return _cancellation(quantity, restocked, restocks_on_cancel, moment, synced_at, skew=skew, pushed=pushed)


def _cancellation(quantity: int, said: int | None, restocks_on_cancel: bool, moment: datetime,
                  synced_at: datetime | None, *, skew: timedelta, pushed: bool) -> Booking:
    """A cancellation of ``quantity`` units, ``said`` of them restocked by the marketplace by its word (None:
    by the account's default; its rows then record None, as the rows from before the word was kept)."""
    back, kept = cancellation_parts(quantity, said, restocks_on_cancel)
    # What the marketplace keeps off until we tell it is a local change like a top-up.
    local = Booking("applied", kept, local=kept if pushed else 0, push=pushed,
                    restocked=None if said is None else 0) if kept else None
    if not back:
        return local
    return _replace(_marketplace_event(back, moment, synced_at, skew), restocked=None if said is None else back,
                    kept=local)


def _marketplace_event(change: int, moment: datetime, synced_at: datetime | None, skew: timedelta) -> Booking:
    seen = coverage(moment, synced_at, skew)
    if seen == "counted":
        return Booking("absorbed", 0, note=f"already counted by the marketplace read at {synced_at.isoformat()}")
    if seen == "unsure":
        # The lower stock while unsure (an order is booked, a cancellation is not); read the row again.
        return Booking("uncertain", min(change, 0), recheck=True,
                       note=f"within the clock skew of the marketplace read at {synced_at.isoformat()}")
    return Booking("applied", change)


def _replace(booking: Booking, **fields) -> Booking:
    return Booking(**{**booking.__dict__, **fields})


@dataclass(frozen=True)
class SnapshotFacts:
    """A stock row as a snapshot meets it (all as of now), and what the snapshot says.

    ``newer``: the sum of the row's marketplace events after ``fetched_at``; ``near``: how many of
    its marketplace events are within the skew of ``fetched_at``.  ``other_push``: another push holds
    the row, or one landed after ``fetched_at`` − skew (the read may or may not include it).
    """

    listed: int
    unpushed: int
    synced_at: datetime | None
    needs_recheck: bool
    other_push: bool
    fetched_at: datetime
    quantity: int
    newer: int
    near: int


def decide_snapshot(facts: SnapshotFacts) -> tuple[str, int]:
    """``(state, after)`` of a row for a snapshot (:data:`SNAPSHOT_STATES`); ``after`` is the row if applied.

    A quantity of 0 for a row that should be below zero (oversold) agrees with it when the row is
    certain, since the units owed are owed; when the row waits for a re-check (an uncertain booking
    may have counted an order twice), the marketplace's count wins.
    """
    after = facts.quantity + facts.unpushed + facts.newer
    if facts.synced_at is not None and facts.synced_at > facts.fetched_at:
        return "stale", after
    if facts.other_push:
        return "unpushed", after
    if facts.near > 0:
        return "ambiguous", after
    expected = facts.listed - facts.unpushed - facts.newer
    if facts.quantity == 0 and expected < 0 and not facts.needs_recheck:
        return "apply", facts.listed
    return "apply", after


def push_quantity(after: int) -> int:
    """What a push sends for a row at ``after``: a marketplace lists no less than nothing."""
    return max(after, 0)


def earlier_push_landed(quantity: int, *, planned: int, read_before: int, since: int, carried: int) -> bool:
    """Whether a push attempt whose answer was lost landed, judged by a read right after it.

    ``read_before``: what the attempt's own read showed; ``planned``: what it sent; ``since``: the
    marketplace events booked since that read; ``carried``: the unpushed part it carried.  Landed,
    the marketplace shows ``planned + since``; not landed, ``read_before + since``.  A read that
    matches neither (an event still on its way) takes the guess that leaves the lower count.
    """
    if quantity == max(planned + since, 0):
        return True
    if quantity == max(read_before + since, 0):
        return False
    return carried > 0
