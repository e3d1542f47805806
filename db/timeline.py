"""A SKU's timeline as queries (ledger rows, the marketplaces' reads, sliced for a chart), and the reads' retention.

Each query reads one window ``[since, until]`` of one variation, newest first, at most ``limit``
rows (one more tells the caller there were more), by the indexes ``(variation_id, id)`` of the
ledger and ``(stock_id, read_at)`` of the reads.  The reads are written by :mod:`db.snapshot`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, text
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


def account_states(session: Session, variation_id: int, moment: datetime) -> list[AccountState]:
    """Every account's stock row of the variation as it stood at ``moment``, by account code."""
    rows = session.execute(text(
        "SELECT s.id AS stock_id, m.code AS account, m.name, COALESCE(l.quantity_after, 0) AS listed, "
        "l.created_at AS booked_at, r.quantity AS read, r.read_at "
        "FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id "
        "LEFT JOIN LATERAL (SELECT quantity_after, created_at FROM stock_ledger x "
        "  WHERE x.variation_id = s.variation_id AND x.stock_id = s.id AND x.created_at <= :t "
        "  ORDER BY x.id DESC LIMIT 1) l ON true "
        "LEFT JOIN LATERAL (SELECT quantity, read_at FROM listing_reads x WHERE x.stock_id = s.id AND x.read_at <= :t "
        "  ORDER BY x.read_at DESC LIMIT 1) r ON true "
        "WHERE s.variation_id = :v ORDER BY m.code"), {"v": variation_id, "t": moment})
    return [AccountState(**row._mapping) for row in rows]


def first_moment(session: Session, variation_id: int) -> datetime | None:
    """The variation's first booking or first kept read, whichever came first (None: neither)."""
    return session.execute(text(
        "SELECT least((SELECT created_at FROM stock_ledger WHERE variation_id = :v ORDER BY id LIMIT 1), "
        "(SELECT min(r.read_at) FROM marketplace_stock s CROSS JOIN LATERAL (SELECT read_at FROM listing_reads x "
        " WHERE x.stock_id = s.id ORDER BY x.read_at LIMIT 1) r WHERE s.variation_id = :v))"),
        {"v": variation_id}).scalar()


def ledger_rows(session: Session, variation_id: int, *, since: datetime, until: datetime, limit: int
                ) -> list[LedgerRow]:
    """The variation's ledger rows booked in ``[since, until]``, newest first, at most ``limit + 1``."""
    rows = session.execute(text(
        "SELECT l.id, m.code AS marketplace, l.change_type, l.quantity_before, l.quantity_after, l.change, "
        "l.order_id, l.order_line_id, l.reference, l.actor, l.note, l.sync_id, l.event_time, l.created_at "
        "FROM stock_ledger l JOIN marketplaces m ON m.id = l.marketplace_id "
        "WHERE l.variation_id = :v AND l.created_at BETWEEN :since AND :until ORDER BY l.id DESC LIMIT :limit"),
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


# A source's rows of stock rows :ids whose time meets {when} (on its column ``at``), as (id, stock_id, at, q,
# kind, change), and the order that puts its last row first.  The ledger by (variation_id, id), the reads by
# (stock_id, read_at) row by row (a time range alone would walk every account's reads of the window).
_ROWS = {
    "ledger": ("SELECT * FROM (SELECT l.id, l.stock_id, l.created_at AS at, l.quantity_after AS q, "
               "l.change_type AS kind, l.change FROM stock_ledger l WHERE l.variation_id = "
               "(SELECT variation_id FROM marketplace_stock WHERE id = :first) AND l.stock_id = ANY(CAST(:ids AS bigint[]))"
               ") x WHERE {when}", "r.id DESC"),
    "read": ("SELECT x.id, x.stock_id, x.read_at AS at, x.quantity AS q, NULL AS kind, 0 AS change "
             "FROM unnest(CAST(:ids AS bigint[])) AS s(id) CROSS JOIN LATERAL (SELECT id, stock_id, read_at, quantity "
             "FROM listing_reads x WHERE x.stock_id = s.id AND {when}) x", "r.at DESC, r.id DESC"),
}
_TIME = {"ledger": "x.at", "read": "x.read_at"}
# A row's column of the grid, in whole microseconds (the float epoch is exact to well under one), so a row is in
# a column exactly when its time is in the column's [start, end).
_CELL = "(round(date_part('epoch', r.at) * 1000000)::bigint / (CAST(:w AS bigint) * 1000))"


def _rows(source: str, *ranges: str) -> str:
    """``source``'s rows in any of ``ranges`` (each a condition on ``{t}``, the row's time)."""
    rows, _ = _ROWS[source]
    if source == "ledger":  # one pass over the variation's bookings
        return rows.format(when=" OR ".join(f"({when.format(t=_TIME[source])})" for when in ranges))
    return " UNION ALL ".join(rows.format(when=when.format(t=_TIME[source])) for when in ranges)


def _bounds(stock_ids: list[int], width_ms: int, kept: range) -> dict:
    return {"ids": stock_ids, "first": stock_ids[0] if stock_ids else 0, "w": width_ms, "lo": kept.start,
            "hi": kept.stop, "lo_t": _column_start(kept.start, width_ms), "hi_t": _column_start(kept.stop, width_ms)}


def _aggregate(source: str, rows: str, marked: tuple[str, ...]) -> str:
    _, order = _ROWS[source]
    marks = "ARRAY[" + ", ".join(f"count(*) FILTER (WHERE r.kind = :m{i}), COALESCE(sum(r.change) FILTER "
                                 f"(WHERE r.kind = :m{i}), 0)" for i in range(len(marked))) + "]::int[]"
    return (f"SELECT r.stock_id, r.cell, min(r.at) AS first_at, count(*) AS n, min(r.q) AS low, max(r.q) AS high, "
            f"(array_agg(r.q ORDER BY {order}))[1] AS last, CAST(sum(r.id) AS bigint) AS id_sum, "
            f"{marks} AS marks FROM (SELECT r.*, {_CELL} AS cell FROM ({rows}) r) r "
            "GROUP BY r.stock_id, r.cell")


def raw_cells(session: Session, source: str, stock_ids: list[int], *, width_ms: int, since: datetime,
              until: datetime, kept: range = range(0), marked: tuple[str, ...] = (), ends_only: bool = False
              ) -> list[Cell]:
    """``source``'s rows (``ledger`` bookings or ``read`` reads) of ``stock_ids`` in ``[since, until]`` per column
    of the ``width_ms`` grid, in stock row and column order, with the count and sum of changes of each
    ``marked`` change type; ``ends_only``: only the columns outside ``kept`` (the window's ends)."""
    marked = marked if source == "ledger" else ()
    rows = (_rows(source, "{t} >= :since AND {t} < :lo_t", "{t} >= :hi_t AND {t} <= :until") if ends_only
            else _rows(source, "{t} BETWEEN :since AND :until"))
    result = session.execute(text(_aggregate(source, rows, marked) + " ORDER BY 1, 2"),
        {**_bounds(stock_ids, width_ms, kept), "since": since, "until": until,
         **{f"m{i}": kind for i, kind in enumerate(marked)}})
    return [Cell(*row) for row in result]


def current_cells(session: Session, source: str, stock_ids: list[int], *, width_ms: int, since: datetime,
                  until: datetime, kept: range, marked: tuple[str, ...] = ()) -> list[Cell] | None:
    """What :func:`raw_cells` gives, from ``source``'s stored cells of columns ``kept`` and the rows of the rest of
    ``[since, until]`` (the window's ends), in one statement; None when the stored cells are not current: per
    stock row, their count and id sum are not its rows' in ``kept`` (a row added late, or pruned, changes them)."""
    marked = marked if source == "ledger" else ()
    ends = _rows(source, "{t} >= :since AND {t} < :lo_t", "{t} >= :hi_t AND {t} <= :until")
    settled = _rows(source, "{t} >= :lo_t AND {t} < :hi_t")
    rows = session.execute(text(
        "WITH c AS (SELECT stock_id, sum(n) AS n, sum(id_sum) AS ids FROM chart_cells WHERE stock_id = ANY(CAST(:ids AS bigint[])) "
        "  AND source = :source AND width_ms = :w AND cell >= :lo AND cell < :hi GROUP BY stock_id), "
        # Nothing stored (a first view): not current if any row is there, found without counting them all.
        f"f AS (SELECT r.stock_id, count(*) AS n, sum(r.id) AS ids FROM ({settled}) r WHERE EXISTS (SELECT 1 FROM c) "
        "  GROUP BY r.stock_id), "
        "ok AS (SELECT CASE WHEN EXISTS (SELECT 1 FROM c) THEN bool_and(COALESCE(f.n, 0) = COALESCE(c.n, 0) "
        f"  AND COALESCE(f.ids, 0) = COALESCE(c.ids, 0)) ELSE NOT EXISTS (SELECT 1 FROM ({settled}) r) END AS ok "
        "  FROM unnest(CAST(:ids AS bigint[])) AS s(id) LEFT JOIN f ON f.stock_id = s.id LEFT JOIN c ON c.stock_id = s.id) "
        "SELECT ok.ok, x.* FROM ok LEFT JOIN LATERAL ("
        "  SELECT stock_id, cell, first_at, n, low, high, last, id_sum, ARRAY[" + ", ".join(
            f"COALESCE(CAST(marks -> :m{i} ->> 0 AS int), -1), COALESCE(CAST(marks -> :m{i} ->> 1 AS int), 0)"
            for i in range(len(marked))) + "]::int[] AS marks FROM chart_cells "
        "  WHERE ok.ok AND stock_id = ANY(CAST(:ids AS bigint[])) AND source = :source AND width_ms = :w "
        f"  AND cell >= :lo AND cell < :hi UNION ALL SELECT * FROM ({_aggregate(source, ends, marked)}) e WHERE ok.ok"
        ") x ON true ORDER BY x.stock_id, x.cell"),
        {**_bounds(stock_ids, width_ms, kept), "source": source, "since": since, "until": until,
         **{f"m{i}": kind for i, kind in enumerate(marked)}}).all()
    if not rows or not rows[0][0]:
        return None
    return [Cell(*row[1:]) for row in rows if row[1] is not None]


def fill_cells(engine: Engine, source: str, stock_ids: list[int], *, width_ms: int, kept: range,
               marked: tuple[str, ...] = ()) -> list[Cell]:
    """Roll ``source``'s rows of columns ``kept`` up into ``chart_cells`` (replacing what was there) and return
    those cells, in stock row and column order: one statement in a transaction of its own (the caller's may
    be a read, rolled back), not waiting for the disk (derived data)."""
    marked = marked if source == "ledger" else ()
    params = {**_bounds(stock_ids, width_ms, kept), "source": source,
              **{f"m{i}": kind for i, kind in enumerate(marked)}}
    pairs = ", ".join(f"CAST(:m{i} AS text), jsonb_build_array(a.marks[{2 * i + 1}], a.marks[{2 * i + 2}])"
                      for i in range(len(marked)))
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL synchronous_commit = off"))
        connection.execute(text(
            "DELETE FROM chart_cells WHERE stock_id = ANY(CAST(:ids AS bigint[])) AND source = :source "
            "AND width_ms = :w AND cell >= :lo AND cell < :hi"), params)
        rows = connection.execute(text(
            f"WITH a AS ({_aggregate(source, _rows(source, '{t} >= :lo_t AND {t} < :hi_t'), marked)}), "
            "stored AS (INSERT INTO chart_cells (stock_id, source, width_ms, cell, first_at, n, low, high, last, "
            "id_sum, marks) SELECT a.stock_id, :source, :w, a.cell, a.first_at, a.n, a.low, a.high, a.last, a.id_sum, "
            f"jsonb_build_object({pairs}) FROM a) SELECT * FROM a"), params).all()
    return sorted((Cell(*row) for row in rows), key=lambda cell: (cell.stock_id, cell.cell))


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
