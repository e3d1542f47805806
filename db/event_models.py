"""Tables of the events pipeline: what a reconciliation found, and every push of a stock row.

The stock events themselves are rows of ``stock_ledger`` (db/models.py), and the current push
state lives on ``marketplace_stock``; the reconciliation report and the push log (its history,
``db/push_log.py``) have tables of their own.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text, func,
                        text)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from core.push_log import OPEN_STATES, STATES
from db.models import Base, MarketplaceStock

_STATE_LIST = ", ".join(f"'{state}'" for state in STATES)
_OPEN_LIST = ", ".join(f"'{state}'" for state in OPEN_STATES)


class ReconciliationReport(Base):
    """One stock row a reconciliation found different from the marketplace.

    ``local`` is the stock before the comparison, ``marketplace`` what the marketplace's page said,
    ``difference`` the correction (marketplace plus the local events newer than the page, minus
    local); ``corrected`` says whether it was booked as a ``reconciliation`` ledger entry (never in
    a dry run).  A listing the stock table did not know yet has no ``stock_id``.
    """

    __tablename__ = "reconciliation_reports"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("sync_runs.id", ondelete="CASCADE"), index=True)
    marketplace_id: Mapped[int] = mapped_column(Integer)
    stock_id: Mapped[int | None] = mapped_column(BigInteger)
    #: The marketplace's listing id (Back Market: the uuid) and the SKU, for an operator to read.
    listing: Mapped[str | None] = mapped_column(String(64))
    sku: Mapped[str] = mapped_column(String(200))
    local: Mapped[int] = mapped_column(Integer)
    marketplace: Mapped[int] = mapped_column(Integer)
    difference: Mapped[int] = mapped_column(Integer)
    corrected: Mapped[bool] = mapped_column(Boolean, server_default="false")
    #: Why it differs (:class:`core.drift.DriftCause`) and what shows it (migration 0012); None before.
    cause: Mapped[str | None] = mapped_column(String(32))
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PushLogEntry(Base):
    """One push of a stock row, from its first wait or send to its end (:class:`core.push_log.PushState`).

    ``quantity_read`` is what the marketplace said just before, ``quantity_sent`` what was sent (or
    found landed); ``attempts`` counts the sends (a retry after a lost answer sends again); ``owner``
    is the drain message that pushed it last.  Open entries (waiting, sent, retried) are at most one
    per stock row; ``PUSH_LOG_RETENTION_DAYS`` after it started a closed one is pruned by the sweep.
    """

    __tablename__ = "push_log"
    __table_args__ = (
        CheckConstraint(f"state IN ({_STATE_LIST})", name="ck_push_log_state"),
        Index("ix_push_log_account", "marketplace_id", "id"),
        Index("ix_push_log_state", "state", "id"),
        Index("ix_push_log_started", "started_at"),
        Index("ix_push_log_stock", "stock_id", "id"),
        Index("ix_push_log_open", "stock_id", postgresql_where=text(f"state IN ({_OPEN_LIST})")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    stock_id: Mapped[int] = mapped_column(ForeignKey("marketplace_stock.id", ondelete="CASCADE"))
    marketplace_id: Mapped[int] = mapped_column(ForeignKey("marketplaces.id"))
    sku: Mapped[str] = mapped_column(String(200))
    #: The listing(s) pushed to (Back Market: the listing uuid), as the row had them when the push began.
    listings: Mapped[list[str]] = mapped_column(ARRAY(String(64)), server_default=text("'{}'"))
    state: Mapped[str] = mapped_column(String(16))
    quantity_read: Mapped[int | None] = mapped_column(Integer)
    quantity_sent: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    #: Why it waits or ended so (a read within the clock skew, the data limit, another push sent it).
    note: Mapped[str | None] = mapped_column(String(300))
    owner: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# The partial indexes migration 0002 puts on marketplace_stock (declared here, beside the columns'
# purpose, so db/models.py stays the shape of the table): the rows a sweep looks for are few.
Index("ix_marketplace_stock_recheck", MarketplaceStock.marketplace_id, postgresql_where=text("needs_recheck"))
Index("ix_marketplace_stock_push", MarketplaceStock.marketplace_id, MarketplaceStock.push_state,
      postgresql_where=text("push_state IN ('pending', 'failed')"))
