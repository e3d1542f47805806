"""Tables of the stock alerts: the rules and each alert's state.

A rule sets the stock threshold of a scope: one variation on one marketplace, one variation (its
total stock), one marketplace (every variation listed there), or everything (neither set: it
replaces ``STOCK_ALERT_DEFAULT_THRESHOLD``).  The most specific rule wins (``db/alerts.py``).

An alert is one episode of a scope's stock below its threshold: it is opened ``firing`` when the
stock crosses below, and closed ``resolved`` when the stock is back (at threshold plus the
hysteresis).  A later crossing opens a new row, so the table is also the history.  At most one
alert of a scope is firing (a unique partial index): two checks at once cannot open two.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (BigInteger, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text, func,
                        text)
from sqlalchemy.orm import Mapped, mapped_column

from db.models import Base

#: The states of an alert.
FIRING, RESOLVED = "firing", "resolved"
ALERT_STATES = (FIRING, RESOLVED)


class AlertRule(Base):
    """A stock threshold for a scope; ``variation_id`` and ``marketplace_id`` may each be NULL (any).

    Stock strictly below ``threshold`` fires an alert; a threshold of 0 turns alerts off for the
    scope (it still wins over less specific rules).
    """

    __tablename__ = "alert_rules"
    __table_args__ = (CheckConstraint("threshold >= 0", name="ck_alert_rules_threshold"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variation_id: Mapped[int | None] = mapped_column(ForeignKey("variations.id", ondelete="CASCADE"))
    marketplace_id: Mapped[int | None] = mapped_column(ForeignKey("marketplaces.id", ondelete="CASCADE"))
    threshold: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StockAlert(Base):
    """One episode of a scope's stock below its threshold, and where its notifications stand.

    ``marketplace_id`` NULL: the variation's total stock; set: its available stock (listed minus
    locked) on that marketplace.  ``threshold`` and ``quantity`` are the values when it fired,
    ``resolved_quantity`` the stock when it resolved.  ``notified_state`` is the state the last
    delivered notification announced: a notification is due while it differs from ``state``.
    ``notify_attempts`` counts the failed deliveries of the current state, ``notify_error`` keeps
    the last failure, ``notify_failed_at`` says its message went to the dead letters.
    """

    __tablename__ = "stock_alerts"
    __table_args__ = (CheckConstraint("state IN ('firing', 'resolved')", name="ck_stock_alerts_state"),
                      Index("ix_stock_alerts_state_fired", "state", "fired_at"))

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("alert_rules.id", ondelete="SET NULL"))
    variation_id: Mapped[int] = mapped_column(ForeignKey("variations.id", ondelete="CASCADE"))
    marketplace_id: Mapped[int | None] = mapped_column(ForeignKey("marketplaces.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(Integer)
    resolved_quantity: Mapped[int | None] = mapped_column(Integer)
    fired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    notified_state: Mapped[str | None] = mapped_column(String(16))
    last_notified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    notify_attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    notify_error: Mapped[str | None] = mapped_column(Text)
    notify_failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# Expression indexes (declared beside the tables; NULL scopes compare equal through COALESCE).
#: One rule per scope.
Index("uq_alert_rules_scope", func.coalesce(AlertRule.variation_id, 0), func.coalesce(AlertRule.marketplace_id, 0),
      unique=True)
#: At most one firing alert per scope: the check's ``INSERT ... ON CONFLICT DO NOTHING`` relies on it.
Index("uq_stock_alerts_firing", StockAlert.variation_id, func.coalesce(StockAlert.marketplace_id, 0), unique=True,
      postgresql_where=text("state = 'firing'"))

__all__ = ["ALERT_STATES", "FIRING", "RESOLVED", "AlertRule", "StockAlert"]
