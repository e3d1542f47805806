"""A SKU's timeline as queries (ledger rows, the marketplaces' reads, sliced for a chart), and the reads' retention.

Each query reads one window ``[since, until]`` of one variation, newest first, at most ``limit``
rows (one more tells the caller there were more), per stock row by the indexes ``(stock_id,
created_at)`` of the ledger and ``(stock_id, read_at)`` of the reads (migration 0016).  The reads
are written by :mod:`db.snapshot`.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import NamedTuple, Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, TextClause, text
from sqlalchemy.orm import Session

from db.console_queries import LedgerRow


@dataclass(frozen=True)
class AccountState:
    """One account's stock row of a variation: its listed quantity at a moment (its last ledger row's
    ``after`` then; 0 before any), and what the marketplace's last read before it said."""

    stock_id: int
    account: str
    name: str
    listed: int
    booked_at: datetime | None
    read: int | None
    read_at: datetime | None


@dataclass(frozen=True)
class ReadRow:
    """A kept read (see :class:`db.models.ListingRead`)."""

    id: int
    account: str
    quantity: int
    read_at: datetime
    source: str
    sync_id: int | None


def account_states(session: Session, variation_id: int, moments: Sequence[datetime]) -> list[list[AccountState]]:
    """Every account's stock row of the variation as it stood at each of ``moments`` (by account code), in one
    statement: a row's last booking by ``(stock_id, created_at)``, its last read by ``(stock_id, read_at)``."""
    rows = session.execute(text(
        "SELECT t.o, s.id AS stock_id, m.code AS account, m.name, COALESCE(l.quantity_after, 0) AS listed, "
        "l.created_at AS booked_at, r.quantity AS read, r.read_at "
        "FROM unnest(CAST(:moments AS timestamptz[])) WITH ORDINALITY AS t(at, o) "
        "CROSS JOIN marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id "
        "LEFT JOIN LATERAL (SELECT quantity_after, created_at FROM stock_ledger x WHERE x.stock_id = s.id "
        "  AND x.created_at <= t.at ORDER BY x.created_at DESC, x.id DESC LIMIT 1) l ON true "
        "LEFT JOIN LATERAL (SELECT quantity, read_at FROM listing_reads x WHERE x.stock_id = s.id AND x.read_at <= t.at "
        "  ORDER BY x.read_at DESC LIMIT 1) r ON true "
        "WHERE s.variation_id = :v ORDER BY t.o, m.code"), {"v": variation_id, "moments": list(moments)})
    states: list[list[AccountState]] = [[] for _ in moments]
    for order, *state in rows:
        states[order - 1].append(AccountState(*state))
    return states


def first_moment(session: Session, variation_id: int) -> datetime | None:
    """The variation's first booking or first kept read, whichever came first (None: neither)."""
    return session.execute(text(
        "SELECT least((SELECT created_at FROM stock_ledger WHERE variation_id = :v ORDER BY id LIMIT 1), "
        "(SELECT min(r.read_at) FROM marketplace_stock s CROSS JOIN LATERAL (SELECT read_at FROM listing_reads x "
        " WHERE x.stock_id = s.id ORDER BY x.read_at LIMIT 1) r WHERE s.variation_id = :v))"),
        {"v": variation_id}).scalar()


def ledger_rows(session: Session, variation_id: int, *, since: datetime, until: datetime, limit: int
                ) -> list[LedgerRow]:
    """The variation's ledger rows booked in ``[since, until]``, latest first, at most ``limit + 1``: each stock
    row's latest by ``(stock_id, created_at)`` (a window far back does not walk the bookings after it)."""
    rows = session.execute(text(
        "SELECT l.id, m.code AS marketplace, l.change_type, l.quantity_before, l.quantity_after, l.change, "
        "l.order_id, l.order_line_id, l.reference, l.actor, l.note, l.sync_id, l.event_time, l.created_at "
        "FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id "
        "CROSS JOIN LATERAL (SELECT * FROM stock_ledger x WHERE x.stock_id = s.id "
        "  AND x.created_at BETWEEN :since AND :until ORDER BY x.created_at DESC, x.id DESC LIMIT :limit) l "
        "WHERE s.variation_id = :v ORDER BY l.created_at DESC, l.id DESC LIMIT :limit"),
        {"v": variation_id, "since": since, "until": until, "limit": limit + 1})
    return [LedgerRow(**row._mapping) for row in rows]


def read_rows(session: Session, variation_id: int, *, since: datetime, until: datetime, limit: int
              ) -> list[ReadRow]:
    """The variation's kept reads of ``[since, until]`` on every account, newest first, at most ``limit + 1``."""
    rows = session.execute(text(
        "SELECT r.id, m.code AS account, r.quantity, r.read_at, r.source, r.sync_id "
        "FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id "
        "CROSS JOIN LATERAL (SELECT * FROM listing_reads x WHERE x.stock_id = s.id "
        "  AND x.read_at BETWEEN :since AND :until ORDER BY x.read_at DESC LIMIT :limit) r "
        "WHERE s.variation_id = :v ORDER BY r.read_at DESC, r.id DESC LIMIT :limit"),
        {"v": variation_id, "since": since, "until": until, "limit": limit + 1})
    return [ReadRow(**row._mapping) for row in rows]


class Cell(NamedTuple):
    """One stock row's rows of one column of a chart's grid (``cell``: the column, ``width_ms`` wide from the
    epoch): when the first was, how many, their lowest, highest and last quantity, the sum of their ids (with
    ``n``, what a stored cell is checked against), and ``marks``: for each marked change type asked for, how
    many and their sum of changes, flat (-1 how many: a stored cell rolled up without that type).
    A tuple, not a dataclass: a chart reads a few hundred."""

    stock_id: int
    cell: int
    first_at: datetime
    n: int
    low: int
    high: int
    last: int
    id_sum: int
    marks: list[int]


#: The sources of a chart: where each one's rows are (table, time column), their columns (id, stock_id, at, q,
#: kind, change) and what puts a column's last row highest, as bigints (a booking's id; a read's time, then id).
_SOURCES = {
    "ledger": ("stock_ledger", "created_at",
               "x.id, x.stock_id, x.created_at AS at, x.quantity_after AS q, CAST(x.change_type AS text) AS kind, "
               "x.change", "r.id"),
    "read": ("listing_reads", "read_at",
             "x.id, x.stock_id, x.read_at AS at, x.quantity AS q, CAST(NULL AS text) AS kind, 0 AS change",
             "r.us, r.id"),
}
SOURCES = tuple(_SOURCES)


def _us(at: str) -> str:
    """Time ``at`` in whole microseconds from the epoch (the float epoch is exact to well under one)."""
    return f"round(date_part('epoch', {at}) * 1000000)::bigint"


def _column(us: str) -> str:
    """The grid column of a time in microseconds ``us``: a row is in a column exactly when its time is in the
    column's [start, end)."""
    return f"{us} / (CAST(:w AS bigint) * 1000)"


def _held(source: str, stock_ids: str = "= ANY(CAST(:ids AS bigint[]))") -> str:
    """``source``'s stored cells of the kept columns of the stock rows ``stock_ids`` (a condition on stock_id)."""
    if source not in _SOURCES:  # written into the statement: one of the sources only
        raise ValueError(f"no chart source {source!r}")
    return (f"FROM chart_cells WHERE stock_id {stock_ids} AND source = '{source}' AND width_ms = :w "
            "AND cell >= :lo AND cell < :hi")


#: The kept columns' rows, and the window's ends (the rows of ``[since, until]`` outside them).
_KEPT = ("{t} >= :lo_t AND {t} < :hi_t",)
_ENDS = ("{t} >= :since AND {t} < :lo_t", "{t} >= :hi_t AND {t} <= :until")


def _rows(source: str, ranges: tuple[str, ...]) -> str:
    """``source``'s rows of stock rows ``:ids`` whose time meets any of ``ranges`` (each a condition on ``{t}``),
    per stock row and range by the ``(stock_id, time)`` index."""
    table, at, columns, _ = _SOURCES[source]
    return " UNION ALL ".join(
        f"SELECT x.* FROM unnest(CAST(:ids AS bigint[])) AS s(id) CROSS JOIN LATERAL (SELECT {columns} FROM {table} x "
        f"WHERE x.stock_id = s.id AND {when.format(t='x.' + at)}) x" for when in ranges)


def _bounds(stock_ids: list[int], width_ms: int, kept: range, since: datetime, until: datetime,
            marked: tuple[str, ...]) -> dict:
    # No kept column: the kept range is empty at ``since``, so the ends are the whole window.
    lo_t, hi_t = (_column_start(kept.start, width_ms), _column_start(kept.stop, width_ms)) if kept else (since, since)
    return {"ids": stock_ids, "w": width_ms, "lo": kept.start, "hi": kept.stop, "lo_t": lo_t, "hi_t": hi_t,
            "since": since, "until": until, **{f"m{i}": kind for i, kind in enumerate(marked)}}


def _aggregate(source: str, rows: str, marked: tuple[str, ...]) -> str:
    """Per (stock row, column): the :class:`Cell` of ``rows`` (with the count and sum of changes per marked type).
    The last row's quantity is the top of ``max(ARRAY[order..., q])``: no sort, a hash per column."""
    order = _SOURCES[source][3]
    marks = "ARRAY[" + ", ".join(f"count(*) FILTER (WHERE r.kind = :m{i}), COALESCE(sum(r.change) FILTER "
                                 f"(WHERE r.kind = :m{i}), 0)" for i in range(len(marked))) + "]::int[]"
    last = len(order.split(",")) + 1
    return (f"SELECT r.stock_id, r.cell, min(r.at) AS first_at, count(*) AS n, min(r.q) AS low, max(r.q) AS high, "
            f"CAST((max(ARRAY[{order}, r.q]))[{last}] AS int) AS last, CAST(sum(r.id) AS bigint) AS id_sum, "
            f"{marks} AS marks FROM (SELECT r.*, {_column('r.us')} AS cell FROM (SELECT r.*, {_us('r.at')} AS us "
            f"FROM ({rows}) r) r) r "
            "GROUP BY r.stock_id, r.cell")


def _marked(source: str, marked: tuple[str, ...]) -> tuple[str, ...]:
    return marked if source == "ledger" else ()


def _stored(source: str, marked: tuple[str, ...]) -> str:
    """``source``'s stored cells of the kept columns (a marked type they were not rolled up with: -1 of them)."""
    marks = "ARRAY[" + ", ".join(
        f"COALESCE(CAST(marks -> :m{i} ->> 0 AS int), -1), COALESCE(CAST(marks -> :m{i} ->> 1 AS int), 0)"
        for i in range(len(_marked(source, marked)))) + "]::int[]"
    return f"SELECT stock_id, cell, first_at, n, low, high, last, id_sum, {marks} AS marks {_held(source)}"


def _stale(source: str) -> str:
    """The kept columns where ``source``'s stored cells are not their rows' (count or id sum differ: a row added
    late or pruned, a column never stored), as one range ``[lo, hi)`` with its times (NULL: none); counted by
    index-only scans of the ``(stock_id, time) INCLUDE (id)`` index."""
    table, at, _, _ = _SOURCES[source]
    kept_rows = (f"SELECT x.stock_id, x.id, x.{at} FROM {table} x WHERE x.stock_id = s.id "
                 f"AND {_KEPT[0].format(t='x.' + at)}")
    counted = (f"SELECT r.stock_id, {_column(_us('r.' + at))} AS cell, count(*) AS n, sum(r.id) AS ids "
               f"FROM unnest(CAST(:ids AS bigint[])) AS s(id) CROSS JOIN LATERAL ({kept_rows}) r GROUP BY 1, 2")
    held = f"SELECT stock_id, cell, n, id_sum {_held(source)}"
    # Per stock row first (the count and id sum of all its kept rows, no column computed): per column only when
    # a stock row's differ, so a draw whose stored cells are all current pays for the cheap check alone.
    current = ("SELECT COALESCE(bool_and(COALESCE(c.n, 0) = r.n AND COALESCE(c.ids, 0) = COALESCE(r.ids, 0)), true) "
               f"FROM unnest(CAST(:ids AS bigint[])) AS s(id) CROSS JOIN LATERAL (SELECT sum(n) AS n, sum(id_sum) "
               f"AS ids {_held(source, '= s.id')}) c CROSS JOIN LATERAL (SELECT count(*) AS n, sum(r.id) AS ids "
               f"FROM ({kept_rows}) r) r")
    span = (f"SELECT min(COALESCE(r.cell, h.cell)) AS lo, max(COALESCE(r.cell, h.cell)) + 1 AS hi FROM ({counted}) r "
            f"FULL JOIN ({held}) h ON h.stock_id = r.stock_id AND h.cell = r.cell "
            f"WHERE NOT ({current}) AND (r.n IS DISTINCT FROM h.n OR r.ids IS DISTINCT FROM h.id_sum)")
    start = "timestamptz 'epoch' + {} * CAST(:w AS bigint) * interval '1 millisecond'"
    return f"SELECT lo, hi, {start.format('lo')} AS lo_t, {start.format('hi')} AS hi_t FROM ({span}) d"


class WindowCells(NamedTuple):
    """A chart window's cells per source (in no order): ``kept``, its kept columns' (stored,
    and from the rows over ``stale``, the columns whose stored cells were not current), and ``ends``, the rest
    of it from the rows."""

    kept: dict[str, list[Cell]]
    ends: dict[str, list[Cell]]
    stale: dict[str, range | None]


#: A row of no cell (a source's header in :func:`window_cells`).
_NO_CELL = ("NULL::bigint, NULL::bigint, NULL::timestamptz, NULL::bigint, NULL::int, NULL::int, NULL::int, "
            "NULL::bigint, NULL::int[]")


@functools.lru_cache(maxsize=16)
def _window_statement(marked: tuple[str, ...]) -> TextClause:
    """:func:`window_cells`'s statement, built and parsed once per set of marked types."""
    parts, steps = [], []
    for source in SOURCES:
        mine = _marked(source, marked)
        stale = f"stale_{source}"
        steps.append(f"{stale} AS MATERIALIZED ({_stale(source)})")
        fresh = f"{{t}} >= (SELECT lo_t FROM {stale}) AND {{t}} < (SELECT hi_t FROM {stale})"
        parts += [f"SELECT '{source}' AS source, 'stale' AS part, st.lo, st.hi, {_NO_CELL} FROM {stale} st",
                  f"SELECT '{source}', 'kept', NULL::bigint, NULL::bigint, c.* FROM ({_stored(source, marked)}) c, "
                  f"{stale} st WHERE st.lo IS NULL OR c.cell < st.lo OR c.cell >= st.hi",
                  f"SELECT '{source}', 'kept', NULL, NULL, a.* FROM ({_aggregate(source, _rows(source, (fresh,)), mine)}) a",
                  f"SELECT '{source}', 'ends', NULL, NULL, e.* FROM ({_aggregate(source, _rows(source, _ENDS), mine)}) e"]
    return text("WITH " + ", ".join(steps) + " " + " UNION ALL ".join(parts))


def window_cells(session: Session, stock_ids: list[int], *, width_ms: int, since: datetime, until: datetime,
                 kept: range, marked: tuple[str, ...] = ()) -> WindowCells:
    """Every source's cells of ``[since, until]`` on the ``width_ms`` grid, in one statement: columns ``kept``
    from ``chart_cells`` where the stored ones are current (their rows' count and id sum unchanged: a row added
    late, or pruned, changes them), from the rows over the range of those that are not (for the caller to
    store, :func:`store_cells`), and the rest of the window (its ends) from the rows, with ``marked`` change
    types counted."""
    rows = session.execute(_window_statement(marked), _bounds(stock_ids, width_ms, kept, since, until, marked)).all()
    found = WindowCells({source: [] for source in SOURCES}, {source: [] for source in SOURCES}, {})
    for source, part, lo, hi, *cell in rows:
        if part == "stale":
            found.stale[source] = range(lo, hi) if lo is not None else None
        else:
            getattr(found, part)[source].append(Cell(*cell))
    return found


def kept_cells(session: Session, stock_ids: list[int], *, width_ms: int, kept: range, marked: tuple[str, ...] = (),
               sources: tuple[str, ...] = SOURCES) -> dict[str, list[Cell]]:
    """``sources``' cells of columns ``kept`` from their rows (in no order)."""
    rows = session.execute(text(" UNION ALL ".join(
        f"SELECT '{source}', a.* FROM ({_aggregate(source, _rows(source, _KEPT), _marked(source, marked))}) a"
        for source in sources)), _bounds(stock_ids, width_ms, kept, _EPOCH, _EPOCH, marked)).all()
    found: dict[str, list[Cell]] = {source: [] for source in sources}
    for source, *cell in rows:
        found[source].append(Cell(*cell))
    return found


def cells_json(cells: list[Cell]) -> str:
    """``cells`` as :func:`store_cells` takes them: a flat JSON array per cell, its marks last."""
    return json.dumps([[c.stock_id, c.cell, c.first_at.isoformat(), c.n, c.low, c.high, c.last, c.id_sum, *c.marks]
                       for c in cells])


def store_cells(engine: Engine, source: str, stock_ids: list[int], *, width_ms: int, kept: range, rows: str,
                marked: tuple[str, ...] = ()) -> None:
    """Store ``rows`` (:func:`cells_json`), ``source``'s cells of columns ``kept`` of ``stock_ids`` (``marked``:
    the change types their marks count), in place of what ``chart_cells`` held there: one statement in a
    transaction of its own, not waiting for the disk (derived data; a row that came since is caught by the next
    check).  Written in key order, so two writers of the same cells wait for each other rather than deadlock."""
    mine = _marked(source, marked)
    marks = ", ".join(f"CAST(:m{i} AS text), jsonb_build_array((x ->> {8 + 2 * i})::int, (x ->> {9 + 2 * i})::int)"
                      for i in range(len(mine)))
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL synchronous_commit = off"))
        connection.execute(text(
            "WITH c AS (SELECT (x ->> 0)::bigint AS stock_id, (x ->> 1)::bigint AS cell, (x ->> 2)::timestamptz "
            "  AS first_at, (x ->> 3)::int AS n, (x ->> 4)::int AS low, (x ->> 5)::int AS high, (x ->> 6)::int AS last, "
            f"  (x ->> 7)::bigint AS id_sum, jsonb_build_object({marks}) AS marks "
            "  FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS x), "
            "w AS (INSERT INTO chart_cells (stock_id, source, width_ms, cell, first_at, n, low, high, last, id_sum, "
            "  marks) SELECT c.stock_id, :source, :w, c.cell, c.first_at, c.n, c.low, c.high, c.last, c.id_sum, "
            "  c.marks FROM c ORDER BY c.stock_id, c.cell ON CONFLICT (stock_id, source, width_ms, cell) DO UPDATE "
            "  SET first_at = excluded.first_at, n = excluded.n, low = excluded.low, high = excluded.high, "
            "  last = excluded.last, id_sum = excluded.id_sum, marks = excluded.marks) "
            # The kept columns with no row (left): not written above, so no conflict with those writes.
            f"DELETE {_held(source)} AND NOT EXISTS (SELECT 1 FROM c WHERE c.stock_id = chart_cells.stock_id "
            "AND c.cell = chart_cells.cell)"),
            {"rows": rows, "source": source, "ids": stock_ids, "w": width_ms, "lo": kept.start, "hi": kept.stop,
             **{f"m{i}": kind for i, kind in enumerate(mine)}})


def _column_start(column: int, width_ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=column * width_ms)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def chart_version(session: Session, variation_id: int, stock_ids: list[int], *, since: datetime, until: datetime
                  ) -> tuple:
    """What a chart of ``[since, until]`` is drawn from, in a few numbers: the variation's newest ledger id
    (the ledger is append-only) and, per stock row, how many reads the window holds and their newest id
    (a read added, even out of time order, or pruned changes them)."""
    row = session.execute(text(
        "SELECT (SELECT max(id) FROM stock_ledger WHERE variation_id = :v) AS ledger, "
        "ARRAY(SELECT ARRAY[s.id, r.n, r.newest] FROM unnest(CAST(:ids AS bigint[])) WITH ORDINALITY AS s(id, o) "
        "  CROSS JOIN LATERAL (SELECT count(*) AS n, COALESCE(max(x.id), 0) AS newest FROM listing_reads x "
        "  WHERE x.stock_id = s.id AND x.read_at BETWEEN :since AND :until) r ORDER BY s.o) AS reads"),
        {"v": variation_id, "ids": stock_ids, "since": since, "until": until}).one()
    return row.ledger, tuple(tuple(read) for read in row.reads)


def prune_reads(session: Session, before: datetime, *, batch: int = 5000) -> int:
    """Delete up to ``batch`` reads older than ``before``, oldest first, keeping each stock row's
    latest read (the next read is compared with it); return how many.  Does not commit."""
    return session.execute(text(
        "DELETE FROM listing_reads WHERE id IN (SELECT o.id FROM listing_reads o WHERE o.read_at < :before "
        "AND EXISTS (SELECT 1 FROM listing_reads n WHERE n.stock_id = o.stock_id AND n.read_at > o.read_at) "
        "ORDER BY o.read_at LIMIT :batch)"), {"before": before, "batch": batch}).rowcount


def prune_cells(session: Session, before: datetime) -> int:
    """Delete the rolled-up chart columns that ended by ``before`` (a chart that needs one again rolls it up
    anew); return how many.  Does not commit."""
    return session.execute(text("DELETE FROM chart_cells WHERE (cell + 1) * width_ms <= :before_ms"),
                           {"before_ms": (before - _EPOCH) // timedelta(milliseconds=1)}).rowcount
