"""The ledger invariant as queries: every stock row equals the sum of its ledger.

Stock rows start at zero, so for every row: ``listed == sum(change)``; and the ledger rows of a
stock row, in order, chain: each ``quantity_after`` is the next ``quantity_before``.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class InvariantViolation:
    """A stock row whose ledger does not add up, and how."""

    stock_id: int
    problem: str


_SUM_MISMATCH = """
SELECT s.id, s.listed, COALESCE(l.total, 0) AS total
FROM marketplace_stock s
LEFT JOIN (SELECT stock_id, sum(change) AS total FROM stock_ledger GROUP BY stock_id) l ON l.stock_id = s.id
WHERE s.listed <> COALESCE(l.total, 0) AND (CAST(:mp AS int) IS NULL OR s.marketplace_id = :mp)
ORDER BY s.id
"""

_BROKEN_CHAIN = """
SELECT stock_id, id, quantity_before, previous_after FROM (
    SELECT stock_id, id, quantity_before, quantity_after, change,
           lag(quantity_after, 1, 0) OVER (PARTITION BY stock_id ORDER BY id) AS previous_after
    FROM stock_ledger WHERE (CAST(:mp AS int) IS NULL OR marketplace_id = :mp)
) chained
WHERE quantity_before <> previous_after OR quantity_after - quantity_before <> change
ORDER BY stock_id, id
"""


def check_invariant(session: Session, marketplace_id: int | None = None, limit: int = 1000
                    ) -> list[InvariantViolation]:
    """Every violation of the ledger invariant (at most ``limit``); empty when the ledger is right."""
    params = {"mp": marketplace_id}
    violations = [InvariantViolation(row.id, f"listed {row.listed} but ledger sums to {row.total}")
                  for row in session.execute(text(_SUM_MISMATCH), params)]
    violations += [InvariantViolation(row.stock_id, f"ledger row {row.id} starts at {row.quantity_before} "
                                      f"but the previous one ended at {row.previous_after}")
                   for row in session.execute(text(_BROKEN_CHAIN), params)]
    return violations[:limit]


def booked_keys(session: Session, keys: list[str]) -> set[str]:
    """The idempotency keys among ``keys`` that the ledger holds (those events are booked)."""
    if not keys:
        return set()
    return set(session.execute(text("SELECT idempotency_key FROM stock_ledger WHERE idempotency_key = ANY(:keys)"),
                               {"keys": list(keys)}).scalars())
