"""A SKU's timeline across every account: entries of several sources merged in time order, and "as of T".

Pure functions over plain entries; the queries are :mod:`db.timeline`, the assembly
:mod:`pipelines.timeline`.  An entry's time is when stocksync learnt of it: a ledger row's booking
(``created_at``: the moment ``listed`` changed), a read's fetch time, an order's event time.  So the
state of every account at T is the ``after`` of its last ledger row booked at or before T.
"""
from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Iterator

#: Entry kinds, in the order two entries of one moment are shown (a read, then what was booked of it).
KINDS = ("order", "read", "push", "ledger")
_RANK = {kind: rank for rank, kind in enumerate(KINDS)}

#: Ledger change types that are orders (their ``order_id`` names the order behind the row).
ORDER_CHANGE_TYPES = ("order_created", "order_cancelled")


@dataclass(frozen=True)
class Entry:
    """One thing that happened to a SKU on one account: ``data`` holds the kind's own fields."""

    at: datetime
    kind: str
    account: str
    #: Tie-breaker within one source (a ledger row's id, a read's id).
    seq: int = 0
    data: dict[str, Any] = field(default_factory=dict)

    def sort_key(self) -> tuple:
        """Time, then kind (:data:`KINDS`), then the source's own order."""
        return (self.at, _RANK.get(self.kind, len(KINDS)), self.seq)

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON-ready values (times in ISO 8601)."""
        return {"at": self.at.isoformat(), "kind": self.kind, "account": self.account,
                **{key: value.isoformat() if isinstance(value, datetime) else value for key, value in self.data.items()}}


def merge(*sources: Iterable[Entry]) -> Iterator[Entry]:
    """Every source's entries in one time order (:meth:`Entry.sort_key`); each source may come in any order."""
    return heapq.merge(*(sorted(source, key=Entry.sort_key) for source in sources), key=Entry.sort_key)


def latest(entries: Iterable[Entry], limit: int) -> tuple[list[Entry], bool]:
    """The last ``limit`` entries of an ordered stream, still in order, and whether earlier ones were left out."""
    kept = list(entries)
    return kept[-limit:] if limit else [], len(kept) > limit


def as_of(entries: Iterable[Entry], moment: datetime, start: dict[str, int] | None = None) -> dict[str, int]:
    """The listed quantity of every account at ``moment``: each one's last ledger entry at or before it.

    ``start``: the accounts' quantities before the first entry given (an account no entry names keeps it).
    """
    state = dict(start or {})
    for entry in entries:
        if entry.kind == "ledger" and entry.at <= moment:
            state[entry.account] = entry.data["after"]
    return state


def orders_of(ledger: Iterable[Entry]) -> list[Entry]:
    """The orders behind the ledger's order rows: one entry per (account, order), at its first event.

    ``lines`` are its order lines met, ``booked`` what its rows changed in all (0: a page had counted
    it already), ``cancelled`` whether a cancellation of it was booked.
    """
    orders: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in ledger:
        order_id = entry.data.get("order_id")
        if entry.kind != "ledger" or entry.data.get("change_type") not in ORDER_CHANGE_TYPES or not order_id:
            continue
        found = orders.setdefault((entry.account, order_id), {
            "at": entry.data["event_time"], "seq": entry.seq, "lines": set(), "booked": 0, "cancelled": False})
        found["at"] = min(found["at"], entry.data["event_time"])
        found["seq"] = min(found["seq"], entry.seq)
        if entry.data.get("order_line_id"):
            found["lines"].add(entry.data["order_line_id"])
        found["booked"] += entry.data["change"]
        found["cancelled"] |= entry.data["change_type"] == "order_cancelled"
    return [Entry(found["at"], "order", account, found["seq"],
                  {"order_id": order_id, "lines": sorted(found["lines"]), "booked": found["booked"],
                   "cancelled": found["cancelled"]})
            for (account, order_id), found in orders.items()]


class BadMoment(ValueError):
    """A time given as text that is not one; the message says what was expected."""


_MOMENT = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?(Z|[+-]\d{2}:?\d{2})?")

#: The earliest moment a timeline may be asked about (nothing stocksync books is older).
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)


def parse_moment(text: str, name: str = "as_of") -> datetime:
    """``text`` (ISO 8601: a date, or a date and time, with ``Z`` or an offset; none means UTC) as an
    aware datetime; :class:`BadMoment` naming ``name`` and what was wrong otherwise."""
    text = text.strip()
    if len(text) > 40 or not _MOMENT.fullmatch(text):
        raise BadMoment(f"{name} must be an ISO 8601 time such as 2026-12-07T18:00:00Z, got {text[:40]!r}")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise BadMoment(f"{name} is not a real time ({error}): {text[:40]!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment < EARLIEST:
        raise BadMoment(f"{name} must be on or after {EARLIEST.date().isoformat()}, got {text[:40]!r}")
    return moment


def window_start(as_of_moment: datetime, first: datetime | None, days: int) -> datetime:
    """Where a timeline before ``as_of_moment`` starts: ``days`` before it, or the SKU's first entry if later."""
    start = as_of_moment - timedelta(days=days)
    if first is not None and start < first <= as_of_moment:
        return first
    return start


#: What a chart of a window ending now rounds its ends to (see :func:`chart_window`).
CHART_STEP = timedelta(minutes=1)


def chart_window(since: datetime, until: datetime, step: timedelta = CHART_STEP) -> tuple[datetime, datetime]:
    """The window a chart of ``[since, until]``, ``until`` being now, is drawn over: its ends widened to whole
    ``step``s from the epoch (each moves by less than one step, less than a pixel of a long window), so every
    view within one step draws the same window and a repeated one can be a lookup."""
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    start = epoch + (since - epoch) // step * step
    end = epoch + -((epoch - until) // step) * step
    return start, end
