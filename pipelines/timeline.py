"""A SKU's timeline across every account, as the console and the read API show it; the reads' retention.

:func:`sources` is the seam: one function per source yields that source's entries of the window
(the ledger, the marketplaces' reads, the orders behind order rows, the pushes); a new source (the
push log) is one more function there.  :func:`core.timeline.merge` puts them in time order.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from core import timeline as rules
from core.stock_chart import PLOT_WIDTH, Chart, build_chart, column_ms, settled_columns
from core.timeline import Entry
from core.push_log import PushFilter
from db import push_log
from db import timeline as queries
from db.push_log import PushEntry
from db.console_queries import LedgerRow, variation_id_by_sku
from runtime import resources
from runtime.settings import get_settings

log = logging.getLogger(__name__)

#: How far back a timeline looks from its "as of" moment unless told (its chart's window too).
DEFAULT_DAYS = 90
#: Entries listed by default, and at most (the JSON's ``limit``).
DEFAULT_LIMIT = 200
MAX_LIMIT = 5000
#: A chart's lines are sliced in columns this many pixels wide (a few points each), its marks coarser still:
#: one per account and kind per :data:`MARK_COLUMNS` pixels, saying how many events it stands for.
LINE_COLUMNS = 4
MARK_COLUMNS = 24


@dataclass(frozen=True)
class Window:
    """The latest rows (at most ``limit`` + 1) of each source in one variation's window ``[since, until]``."""

    variation_id: int
    since: datetime
    until: datetime
    limit: int
    ledger: list[LedgerRow]
    reads: list[queries.ReadRow]
    pushes: list[PushEntry]

    @property
    def cut(self) -> bool:
        """Whether a source had more than ``limit`` rows in the window."""
        return len(self.ledger) > self.limit or len(self.reads) > self.limit


def ledger_entries(window: Window) -> Iterable[Entry]:
    """The window's latest ledger rows, at their booking."""
    for row in window.ledger[:window.limit]:
        yield Entry(row.created_at, "ledger", row.marketplace, row.id, {
            "id": row.id, "change_type": row.change_type, "before": row.quantity_before, "after": row.quantity_after,
            "change": row.change, "order_id": row.order_id, "order_line_id": row.order_line_id,
            "reference": row.reference, "actor": row.actor, "event_time": row.event_time})


def read_entries(window: Window) -> Iterable[Entry]:
    """What the marketplaces' reads said, when it changed (``source``: page, single or reconcile)."""
    for row in window.reads[:window.limit]:
        yield Entry(row.read_at, "read", row.account, row.id,
                    {"quantity": row.quantity, "source": row.source, "sync_id": row.sync_id})


def order_entries(window: Window) -> Iterable[Entry]:
    """The orders behind the window's order rows (:func:`core.timeline.orders_of`)."""
    return rules.orders_of(ledger_entries(window))


def push_entries(window: Window) -> Iterable[Entry]:
    """The window's latest pushes from the push log, at their outcome (finished, else sent, else started)."""
    for push in window.pushes:
        yield Entry(push.finished_at or push.sent_at or push.started_at, "push", push.account, push.id, {
            "push_id": push.id, "state": push.state, "quantity": push.quantity_sent, "read": push.quantity_read,
            "attempts": push.attempts, "error": push.error, "started_at": push.started_at})


#: The sources of a timeline, each ``(window) -> entries``.
SOURCES: tuple[Callable[[Window], Iterable[Entry]], ...] = (ledger_entries, read_entries, order_entries, push_entries)


def sources(window: Window) -> list[Iterable[Entry]]:
    """Every source's entries of ``window``."""
    return [source(window) for source in SOURCES]


@dataclass(frozen=True)
class Timeline:
    """A variation's timeline as of a moment: every account's state then, the latest entries, the chart."""

    variation_id: int
    sku: str
    as_of: datetime
    since: datetime
    accounts: list[queries.AccountState]
    entries: list[Entry]
    #: Entries of the window left out (the window had more than ``limit``, or a source more than it reads).
    truncated: bool
    chart: Chart

    def to_json(self) -> dict:
        """The JSON of the read API."""
        return {"sku": self.sku, "variation_id": self.variation_id, "as_of": self.as_of.isoformat(),
                "since": self.since.isoformat(),
                "accounts": {a.account: {"listed": a.listed, "booked_at": _iso(a.booked_at), "read": a.read,
                                         "read_at": _iso(a.read_at)} for a in self.accounts},
                "entries": [entry.to_json() for entry in self.entries], "truncated": self.truncated}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def read_window(session: Session, variation_id: int, sku: str, since: datetime, until: datetime, limit: int
                ) -> Window:
    """The window's latest rows of every source (pushes: those started in it)."""
    pushes, _ = push_log.list_pushes(session, PushFilter(sku=sku, since=since, until=until + timedelta(microseconds=1),
                                                         limit=limit))
    return Window(variation_id, since, until, limit,
                  queries.ledger_rows(session, variation_id, since=since, until=until, limit=limit),
                  queries.read_rows(session, variation_id, since=since, until=until, limit=limit), pushes)


def timeline(session: Session, variation_id: int, sku: str, *, as_of: datetime | None = None,
             since: datetime | None = None, limit: int = DEFAULT_LIMIT, days: int = DEFAULT_DAYS) -> Timeline:
    """Variation ``variation_id``'s timeline of ``[since, as_of]`` (default: ``days`` before ``as_of``, or
    from its first booking or read; ``as_of`` default now): the latest ``limit`` entries and the chart."""
    moving = as_of is None  # a window that moves with the clock
    as_of = as_of or datetime.now(timezone.utc)
    since = since or rules.window_start(as_of, queries.first_moment(session, variation_id), days)
    window = read_window(session, variation_id, sku, since, as_of, limit)
    entries, more = rules.latest(rules.merge(*sources(window)), limit)
    drawn = window
    if moving:  # charted over its ends widened to the whole minute (see chart())
        chart_since, chart_until = rules.chart_window(since, as_of)
        drawn = replace(window, since=chart_since, until=chart_until)
    states, begin = queries.account_states(session, variation_id, (as_of, drawn.since))
    return Timeline(variation_id, sku, as_of, since, states, entries, more or window.cut, chart(session, drawn, begin))


def timeline_of_sku(session: Session, sku: str, **options) -> Timeline | None:
    """The timeline of the variation whose SKU is ``sku`` (None: no such variation)."""
    variation_id = variation_id_by_sku(session, sku)
    return None if variation_id is None else timeline(session, variation_id, sku, **options)


def parse_options(as_of: str | None = None, since: str | None = None, limit: str | None = None) -> dict:
    """A timeline's options as given in a query string (text or None), checked; :class:`core.timeline.BadMoment`
    naming the parameter and what was wrong otherwise."""
    options: dict = {}
    if as_of is not None and as_of.strip():
        options["as_of"] = rules.parse_moment(as_of, "as_of")
    if since is not None and since.strip():
        options["since"] = rules.parse_moment(since, "since")
        if options["since"] >= options.get("as_of", datetime.now(timezone.utc)):
            raise rules.BadMoment("since must be before as_of (or before now, without as_of)")
    if limit is not None:
        text = limit.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= MAX_LIMIT):
            raise rules.BadMoment(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {limit[:40]!r}")
        options["limit"] = int(text)
    return options


#: Ledger change types marked on the chart, as mark kinds (core.stock_chart.MARKS).
_MARKED = {"order_created": "order", "topup": "topup", "manual": "manual"}
_MARK_WORDS = {"order": ("order", "orders"), "topup": ("top-up", "top-ups"), "manual": ("manual change",
                                                                                       "manual changes")}


#: Charts of fixed windows (an "as of" view), most recently used last: key -> chart (see :func:`chart`).
CHART_CACHE_SIZE = 64
_charts: OrderedDict[tuple, Chart] = OrderedDict()
_charts_lock = threading.Lock()


def chart(session: Session, window: Window, begin: list[queries.AccountState]) -> Chart:
    """The window's chart (``begin``: every account's state at its start): every booking and read of it sliced
    per column of a fixed grid (whatever their number, a few points per column; the settled columns rolled up
    once, see :func:`chart_cells`), orders, top-ups and manual changes per few columns, the pushes.

    A repeated view is a lookup, keyed by the database, the window, ``begin``,
    :func:`db.timeline.chart_version` (newest ledger id, the window's read count and newest read id per
    account) and its pushes: a booking, a read (or a pruned one) or a push changes the key, so a stale chart
    is never shown; the least recently used of :data:`CHART_CACHE_SIZE` charts goes first.  A window ending
    now comes here over :func:`core.timeline.chart_window` (its ends to the whole minute), so a view within
    the same minute is a lookup too."""
    key = (session.get_bind().url.render_as_string(), window.variation_id, window.since, window.until, tuple(begin),
           queries.chart_version(session, window.variation_id, [state.stock_id for state in begin],
                                 since=window.since, until=window.until),
           tuple((p.id, p.account, p.state, p.quantity_sent, p.started_at, p.sent_at, p.finished_at)
                 for p in window.pushes))
    with _charts_lock:
        found = _charts.get(key)
        if found is not None:
            _charts.move_to_end(key)
            return found
    drawn = _draw(session, window, begin)
    with _charts_lock:
        _charts[key] = drawn
        while len(_charts) > CHART_CACHE_SIZE:
            _charts.popitem(last=False)
    return drawn


#: A grid column is rolled up once it ended this long ago (a booking's time is its transaction's start, so a
#: column that just ended may still get rows; a later one is caught by the stored cells' check all the same).
SETTLE = timedelta(minutes=10)


def chart_cells(session: Session, stock_ids: list[int], *, since: datetime, until: datetime, width_ms: int,
                marked: tuple[str, ...] = ()) -> dict[str, list[queries.Cell]]:
    """Every source's rows (``ledger``, ``read``) of ``[since, until]`` per column of the ``width_ms`` grid, in
    stock row and column order.  The settled columns come from ``chart_cells`` where they are current (their
    rows' count and id sum unchanged), else from the rows, stored behind the answer for the next draw
    (:func:`settle_rollups`); the window's ends and the columns still moving come from the rows each time."""
    kept = settled_columns(since, until, datetime.now(timezone.utc) - SETTLE, width_ms)
    found = queries.window_cells(session, stock_ids, width_ms=width_ms, since=since, until=until, kept=kept,
                                 marked=marked)
    drawn = {}
    for source in queries.SOURCES:
        cells, stale = found.kept[source], found.stale[source]
        if any(-1 in cell.marks[0::2] for cell in cells):  # rolled up without one of the marked types
            cells, stale = queries.kept_cells(session, stock_ids, width_ms=width_ms, kept=kept, marked=marked,
                                              sources=(source,))[source], kept
        if stale:
            _store_behind(session.get_bind().engine, source, stock_ids, width_ms, stale,
                          [cell for cell in cells if cell.cell in stale], marked)
        drawn[source] = sorted(cells + found.ends[source], key=lambda cell: (cell.stock_id, cell.cell))
    return drawn


#: Roll-ups are stored behind the answer by one thread per process (derived data: a chart drawn from the rows
#: does not wait for their write); one already waiting is not queued twice.
_rollups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chart-rollups")
_waiting: set[tuple] = set()
_waiting_lock = threading.Lock()


def _store_behind(engine: Engine, source: str, stock_ids: list[int], width_ms: int, kept: range,
                  cells: list[queries.Cell], marked: tuple[str, ...]) -> None:
    key = (engine.url.render_as_string(), source, tuple(stock_ids), width_ms, kept.start, kept.stop)
    with _waiting_lock:
        if key in _waiting:
            return
        _waiting.add(key)
    rows = queries.cells_json(cells)  # here: the thread behind only waits on the database

    def store() -> None:
        try:
            queries.store_cells(engine, source, stock_ids, width_ms=width_ms, kept=kept, rows=rows, marked=marked)
        except Exception as failed:  # noqa: BLE001 (derived data: the next draw reads them from the rows again)
            log.warning("chart: could not store the columns of stock rows %s: %s: %s", stock_ids,
                        type(failed).__name__, str(getattr(failed, "orig", failed))[:200])
        finally:
            with _waiting_lock:
                _waiting.discard(key)

    _rollups.submit(store)


def settle_rollups(timeout: float = 60.0) -> None:
    """Wait until every roll-up queued so far is stored (a test's or a bench's next step reads them)."""
    _rollups.submit(lambda: None).result(timeout)


def clear_chart_cache() -> None:
    """Forget every cached chart (a bench's first view)."""
    with _charts_lock:
        _charts.clear()


def _draw(session: Session, window: Window, begin: list[queries.AccountState]) -> Chart:
    since, until = window.since, window.until
    stocks = {state.stock_id: state.account for state in begin}
    width = column_ms((until - since).total_seconds(), PLOT_WIDTH // LINE_COLUMNS)
    per_mark = max(1, MARK_COLUMNS // LINE_COLUMNS)
    changes: dict[str, list] = {state.account: [] for state in begin}
    counted: dict[str, int] = {}
    sliced: dict[tuple, list] = {}  # (account, kind, mark slice) -> [first time, how many, sum of changes]
    cells = chart_cells(session, list(stocks), since=since, until=until, width_ms=width, marked=tuple(_MARKED))
    for cell in cells["ledger"]:
        account = stocks[cell.stock_id]
        changes.setdefault(account, []).extend(
            (cell.first_at, q) for q in (cell.low, cell.high, cell.last))  # the last one last
        counted[account] = counted.get(account, 0) + cell.n
        for index, kind in enumerate(_MARKED.values()):
            n, change = cell.marks[2 * index:2 * index + 2]
            if n:
                found = sliced.setdefault((account, kind, cell.cell // per_mark), [cell.first_at, 0, 0])
                found[1] += n
                found[2] += change
    reads: dict[str, list] = {}
    for cell in cells["read"]:
        reads.setdefault(stocks[cell.stock_id], []).extend(
            (cell.first_at, q) for q in (cell.low, cell.high, cell.last))
    marks = []
    for (account, kind, _), (first_at, n, change) in sliced.items():
        one, many = _MARK_WORDS[kind]
        marks.append((first_at, account, kind, f"{n} {one if n == 1 else many} ({change:+d})", n))
    marks += [(push.finished_at or push.sent_at or push.started_at, push.account, "push",
               f"push of {push.quantity_sent} ({push.state})", 1) for push in window.pushes]
    return build_chart(since, until, {state.account: state.listed for state in begin}, changes, reads, marks,
                       read_begin={state.account: state.read for state in begin if state.read is not None},
                       changes_counted=counted)


def prune_reads(now: datetime | None = None, *, batch: int = 5000) -> int:
    """Delete the reads older than ``LISTING_READS_RETENTION_DAYS`` (each row's latest kept), a batch per
    transaction, then the chart columns rolled up that ended as long ago; return how many reads."""
    before = (now or datetime.now(timezone.utc)) - timedelta(days=get_settings().listing_reads_retention_days)
    total = 0
    with resources.sessions()() as session:
        while True:
            deleted = queries.prune_reads(session, before, batch=batch)
            session.commit()
            total += deleted
            if deleted < batch:
                break
        queries.prune_cells(session, before)
        session.commit()
    return total
