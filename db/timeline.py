"""A SKU's timeline as queries (ledger rows, the marketplaces' reads, sliced for a chart), and the reads' retention.

Each query reads one window ``[since, until]`` of one variation, newest first, at most ``limit``
rows (one more tells the caller there were more), by the indexes ``(variation_id, id)`` of the
ledger and ``(stock_id, read_at)`` of the reads.  The reads are written by :mod:`db.snapshot`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
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


@dataclass(frozen=True)
class Bucket:
    """One account's rows of one slice of a window (a chart's pixel column): when the first was, how
    many, their lowest, highest and last quantity; ``kind``: a mark's kind (bucketed marks only)."""

    account: str
    bucket: int
    first_at: datetime
    n: int
    low: int
    high: int
    last: int
    #: Of those, the bookings of each marked change type: type -> (how many, their sum of changes).
    marked: dict[str, tuple[int, int]] | None = None


# The slice of [since, until] a time falls in, 0..n-1 (:since, :span seconds, :n slices).
_BUCKET = ("LEAST(CAST(:n AS int) - 1, floor(extract(epoch FROM ({column} - CAST(:since AS timestamptz))) "
           "/ CAST(:span AS float8) * CAST(:n AS int)))::int")


def ledger_buckets(session: Session, stocks: dict[int, str], *, since: datetime, until: datetime, n: int,
                   marked: tuple[str, ...] = ()) -> list[Bucket]:
    """The bookings of stock rows ``stocks`` (id -> account) in ``[since, until]``, in ``n`` slices per row
    (what a chart's line needs), with how many of ``marked`` change types each slice holds (its marks)."""
    counts = ", ".join(f"count(*) FILTER (WHERE l.change_type = :m{i}) AS n{i}, "
                       f"COALESCE(sum(l.change) FILTER (WHERE l.change_type = :m{i}), 0) AS c{i}"
                       for i in range(len(marked)))
    rows = session.execute(text(
        "SELECT l.stock_id, b.bucket, min(l.created_at) AS first_at, count(*) AS n, min(l.quantity_after) AS low, "
        "max(l.quantity_after) AS high, (array_agg(l.quantity_after ORDER BY l.id DESC))[1] AS last"
        + (", " + counts if counts else "") + " "
        f"FROM stock_ledger l CROSS JOIN LATERAL (SELECT {_BUCKET.format(column='l.created_at')} AS bucket) b "
        "WHERE l.variation_id = (SELECT variation_id FROM marketplace_stock WHERE id = :first) "
        "AND l.stock_id = ANY(CAST(:ids AS bigint[])) AND l.created_at BETWEEN :since AND :until "
        "GROUP BY l.stock_id, b.bucket ORDER BY l.stock_id, b.bucket"),
        {**{f"m{i}": kind for i, kind in enumerate(marked)}, **_params(stocks, since, until, n)})
    return [Bucket(stocks[row.stock_id], row.bucket, row.first_at, row.n, row.low, row.high, row.last,
                   {kind: (row[7 + 2 * i], row[8 + 2 * i]) for i, kind in enumerate(marked)})
            for row in rows]


def read_buckets(session: Session, stocks: dict[int, str], *, since: datetime, until: datetime, n: int
                 ) -> list[Bucket]:
    """The kept reads of stock rows ``stocks`` in ``[since, until]``, in ``n`` slices per row."""
    rows = session.execute(text(
        "SELECT r.stock_id, b.bucket, min(r.read_at) AS first_at, count(*) AS n, min(r.quantity) AS low, "
        "max(r.quantity) AS high, (array_agg(r.quantity ORDER BY r.read_at DESC, r.id DESC))[1] AS last "
        # Row by row on (stock_id, read_at): a time range alone would walk every account's reads of the window.
        "FROM unnest(CAST(:ids AS bigint[])) AS s(id) CROSS JOIN LATERAL (SELECT * FROM listing_reads x "
        "  WHERE x.stock_id = s.id AND x.read_at BETWEEN :since AND :until) r "
        f"CROSS JOIN LATERAL (SELECT {_BUCKET.format(column='r.read_at')} AS bucket) b "
        "GROUP BY r.stock_id, b.bucket ORDER BY r.stock_id, b.bucket"), _params(stocks, since, until, n))
    return _buckets(rows, stocks)


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


def _params(stocks: dict[int, str], since: datetime, until: datetime, n: int) -> dict:
    return {"ids": list(stocks), "first": next(iter(stocks), 0), "since": since, "until": until, "n": n,
            "span": max((until - since).total_seconds(), 1e-6)}


def _buckets(rows, stocks: dict[int, str]) -> list[Bucket]:
    return [Bucket(stocks[row.stock_id], row.bucket, row.first_at, row.n, row.low, row.high, row.last)
            for row in rows]


def prune_reads(session: Session, before: datetime, *, batch: int = 5000) -> int:
    """Delete up to ``batch`` reads older than ``before``, oldest first, keeping each stock row's
    latest read (the next read is compared with it); return how many.  Does not commit."""
    return session.execute(text(
        "DELETE FROM listing_reads WHERE id IN (SELECT o.id FROM listing_reads o WHERE o.read_at < :before "
        "AND EXISTS (SELECT 1 FROM listing_reads n WHERE n.stock_id = o.stock_id AND n.read_at > o.read_at) "
        "ORDER BY o.read_at LIMIT :batch)"), {"before": before, "batch": batch}).rowcount
