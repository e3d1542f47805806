"""Tables of the events pipeline: what a reconciliation found.

The stock events themselves are rows of ``stock_ledger`` (db/models.py), and the push state lives
on ``marketplace_stock``; only the reconciliation report needs a table of its own.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, func, text
from sqlalchemy.orm import Mapped, mapped_column

from db.models import Base, MarketplaceStock


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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# The partial indexes migration 0002 puts on marketplace_stock (declared here, beside the columns'
# purpose, so db/models.py stays the shape of the table): the rows a sweep looks for are few.
Index("ix_marketplace_stock_recheck", MarketplaceStock.marketplace_id, postgresql_where=text("needs_recheck"))
Index("ix_marketplace_stock_push", MarketplaceStock.marketplace_id, MarketplaceStock.push_state,
      postgresql_where=text("push_state IN ('pending', 'failed')"))
