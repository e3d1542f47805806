"""Drift explained (pure): why a stock row and its marketplace disagree, from the evidence stocksync holds.

A reconciliation hands each difference it found to :func:`explain` with the facts around the row
(:class:`DriftFacts`: the ledger rows booked after the page was read, the row's last push, its recent
cancellations, the marketplace's order lines the intake saw and the ledger has not booked).  The
first rule that the evidence fits names the cause; a difference nothing explains is a change made
on the marketplace by hand (the count moved with no order).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

#: How far back before a read a cancellation may explain a difference.
RESTOCK_LOOKBACK = timedelta(days=2)


class DriftCause(str, enum.Enum):
    """Why a stock row differs from its marketplace."""

    #: The page was read before a change our side booked meanwhile: the read is older, not wrong.
    STALE_READ = "stale_read"
    #: Our last push did not land (the marketplace still shows what the push read), or it failed.
    PUSH_LOST = "push_lost"
    #: The marketplace took an order the ledger has not booked (the intake saw it; its events wait).
    UNBOOKED_ORDER = "unbooked_order"
    #: A cancellation gave its units back on one side only: the marketplace did otherwise than it said
    #: (a Shopify refund line), or, where it says nothing, than the account's ``restock_on_cancel``.
    ONE_SIDED_RESTOCK = "one_sided_restock"
    #: The count moved on the marketplace with no order and no push: someone changed it by hand.
    HAND_EDIT = "hand_edit"


CAUSES: tuple[str, ...] = tuple(cause.value for cause in DriftCause)


@dataclass(frozen=True)
class DriftFacts:
    """What stocksync knows around one differing row (``difference``: marketplace minus local)."""

    difference: int
    marketplace: int
    fetched_at: datetime
    #: Ledger rows of the row booked after the page was fetched: ``{"id", "change_type", "change", "booked_at"}``.
    booked_after_read: list[dict[str, Any]] = field(default_factory=list)
    #: The row's last push: ``{"id", "state", "quantity_read", "quantity_sent", "error", "at"}``, or None.
    last_push: dict[str, Any] | None = None
    #: Cancellations of the row in :data:`RESTOCK_LOOKBACK` before the read: ``{"id", "order_id", "order_line_id",
    #: "change", "restocked", "event_time"}`` (``restocked``: the units the marketplace said it gave back; None:
    #: it said nothing, the account's default was booked).
    cancellations: list[dict[str, Any]] = field(default_factory=list)
    #: The marketplace's order lines of the SKU the ledger has not booked: ``{"order_id", "order_line_id",
    #: "quantity"}``.
    unbooked_orders: list[dict[str, Any]] = field(default_factory=list)


def explain(facts: DriftFacts) -> tuple[DriftCause, dict[str, Any]]:
    """The cause of a difference and its evidence (JSON-able), the first rule the facts fit."""
    if facts.booked_after_read:
        return DriftCause.STALE_READ, {"read_at": facts.fetched_at.isoformat(),
                                       "booked_after": facts.booked_after_read[:5]}
    push = facts.last_push
    if push is not None and push["state"] in ("failed", "retried", "sent"):
        return DriftCause.PUSH_LOST, {"push": push, "why": f"the last push is {push['state']}"}
    if push is not None and push.get("quantity_read") is not None and push["quantity_sent"] != push["quantity_read"] \
            and facts.marketplace == push["quantity_read"]:
        return DriftCause.PUSH_LOST, {"push": push, "why": "the marketplace still shows what the last push read"}
    if facts.difference < 0 and facts.unbooked_orders:
        return DriftCause.UNBOOKED_ORDER, {"orders": facts.unbooked_orders[:5],
                                           "quantity": sum(int(o.get("quantity") or 0) for o in facts.unbooked_orders)}
    matching = [c for c in facts.cancellations if abs(int(c["change"] or 0)) == abs(facts.difference)
                or (c["change"] == 0 and facts.difference > 0)]
    if matching:
        side = "ours" if facts.difference < 0 else "the marketplace's"
        return DriftCause.ONE_SIDED_RESTOCK, {"cancellation": matching[0], "restocked": side,
                                              "booked_by": _booked_by(matching[0].get("restocked"))}
    return DriftCause.HAND_EDIT, {"why": "no order, push or cancellation explains it",
                                  "marketplace": facts.marketplace, "read_at": facts.fetched_at.isoformat()}


def _booked_by(restocked: int | None) -> str:
    """What the booking of a cancellation went by: the marketplace's word, or the account's default."""
    if restocked is None:
        return "the account's restock_on_cancel (the marketplace said nothing of this cancellation)"
    if restocked:
        return f"the marketplace's word: it restocked {restocked} unit(s) itself"
    return "the marketplace's word: it did not restock it (the units were pushed)"
