"""A SKU's timeline as queries (ledger rows, the marketplaces' reads, the last pushes), and the reads' retention.

Each query reads one window ``[since, until]`` of one variation, newest first, at most ``limit``
rows (one more tells the caller there were more), by the indexes ``(variation_id, id)`` of the
ledger and ``(stock_id, read_at)`` of the reads.  The reads are written by :mod:`db.snapshot`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session


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
class LedgerRow:
    """A ledger row as the timeline needs it."""

    id: int
    account: str
    change_type: str
    quantity_before: int
    quantity_after: int
    change: int
    order_id: str | None
    order_line_id: str | None
    reference: str | None
    actor: str | None
    event_time: datetime
    created_at: datetime


@dataclass(frozen=True)
class ReadRow:
    """A kept read (see :class:`db.models.ListingRead`)."""

    id: int
    account: str
    quantity: int
    read_at: datetime
    source: str
    sync_id: int | None


@dataclass(frozen=True)
class PushRow:
    """An account's last confirmed push of a variation (the stock row keeps only its last one)."""

    stock_id: int
    account: str
    quantity: int | None
    pushed_at: datetime
    state: str | None


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
        "SELECT l.id, m.code AS account, l.change_type, l.quantity_before, l.quantity_after, l.change, l.order_id, "
        "l.order_line_id, l.reference, l.actor, l.event_time, l.created_at "
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


def last_pushes(session: Session, variation_id: int, *, since: datetime, until: datetime) -> list[PushRow]:
    """Each account's last confirmed push of the variation, if it falls in ``[since, until]``."""
    rows = session.execute(text(
        "SELECT s.id AS stock_id, m.code AS account, s.pushed_quantity AS quantity, s.pushed_at, "
        "s.push_state AS state FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id "
        "WHERE s.variation_id = :v AND s.pushed_at BETWEEN :since AND :until ORDER BY m.code"),
        {"v": variation_id, "since": since, "until": until})
    return [PushRow(**row._mapping) for row in rows]


def prune_reads(session: Session, before: datetime, *, batch: int = 5000) -> int:
    """Delete up to ``batch`` reads older than ``before``, oldest first, keeping each stock row's
    latest read (the next read is compared with it); return how many.  Does not commit."""
    return session.execute(text(
        "DELETE FROM listing_reads WHERE id IN (SELECT o.id FROM listing_reads o WHERE o.read_at < :before "
        "AND EXISTS (SELECT 1 FROM listing_reads n WHERE n.stock_id = o.stock_id AND n.read_at > o.read_at) "
        "ORDER BY o.read_at LIMIT :batch)"), {"before": before, "batch": batch}).rowcount
