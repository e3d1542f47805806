"""Stock alerts in PostgreSQL: the rules, the set-based check, and the notification bookkeeping.

The most specific rule wins (variation + marketplace > variation > marketplace > catch-all >
``STOCK_ALERT_DEFAULT_THRESHOLD``; 0 means no alert).  An alert fires when stock drops below its
threshold and resolves at threshold + hysteresis; only those two transitions are notified.  A
check holds a transaction-level advisory lock, so two checks at once run one after the other.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from db.alert_models import FIRING, RESOLVED

#: Key of the transaction-level advisory lock that serialises checks (any constant of our own).
CHECK_LOCK_KEY = 0x5750_A1E7

#: Every scope a check looks at, with its quantity and effective threshold (NULL: not checked).
#: Total stock of every variation, then available stock of every stock row (checked only where
#: a marketplace rule applies).  A rule's threshold is NOT NULL, so the first threshold found
#: and the first rule id found belong to the same rule.
_TARGETS = """
WITH catch_all AS (
    SELECT id, threshold FROM alert_rules WHERE variation_id IS NULL AND marketplace_id IS NULL
), targets AS (
    SELECT v.id AS variation_id, CAST(NULL AS integer) AS marketplace_id, v.total_stock AS quantity,
           COALESCE(rv.threshold, c.threshold, :default_threshold) AS threshold,
           COALESCE(rv.id, c.id) AS rule_id
    FROM variations v
    LEFT JOIN alert_rules rv ON rv.variation_id = v.id AND rv.marketplace_id IS NULL
    LEFT JOIN catch_all c ON true
    UNION ALL
    SELECT s.variation_id, s.marketplace_id, s.listed - s.locked,
           CASE WHEN rvm.id IS NOT NULL OR rm.id IS NOT NULL
                THEN COALESCE(rvm.threshold, rv.threshold, rm.threshold) END,
           CASE WHEN rvm.id IS NOT NULL OR rm.id IS NOT NULL THEN COALESCE(rvm.id, rv.id, rm.id) END
    FROM marketplace_stock s
    LEFT JOIN alert_rules rvm ON rvm.variation_id = s.variation_id AND rvm.marketplace_id = s.marketplace_id
    LEFT JOIN alert_rules rv ON rv.variation_id = s.variation_id AND rv.marketplace_id IS NULL
    LEFT JOIN alert_rules rm ON rm.variation_id IS NULL AND rm.marketplace_id = s.marketplace_id
)
"""

# Firing alerts whose stock is back (threshold + hysteresis) or whose scope is no longer checked.
_RESOLVE = text(_TARGETS + """
UPDATE stock_alerts a
SET state = 'resolved', resolved_at = now(), resolved_quantity = r.quantity,
    notify_attempts = 0, notify_error = NULL, notify_failed_at = NULL
FROM (SELECT a2.id, t.quantity FROM stock_alerts a2
      LEFT JOIN targets t ON t.variation_id = a2.variation_id
                         AND t.marketplace_id IS NOT DISTINCT FROM a2.marketplace_id
      WHERE a2.state = 'firing'
        AND (t.threshold IS NULL OR t.threshold = 0 OR t.quantity >= t.threshold + :hysteresis)) r
WHERE a.id = r.id AND a.state = 'firing'
RETURNING a.id
""")

# Scopes below their threshold with no firing alert: open one (an open one is left alone).
_FIRE = text(_TARGETS + """
INSERT INTO stock_alerts (rule_id, variation_id, marketplace_id, state, threshold, quantity)
SELECT t.rule_id, t.variation_id, t.marketplace_id, 'firing', t.threshold, t.quantity
FROM targets t WHERE t.threshold > 0 AND t.quantity < t.threshold
ON CONFLICT (variation_id, (COALESCE(marketplace_id, 0))) WHERE state = 'firing' DO NOTHING
RETURNING id
""")

_CHECKED = text(_TARGETS + "SELECT count(*) FROM targets WHERE threshold > 0")

_ALERT_COLUMNS = """
SELECT a.id, a.state, a.rule_id, v.sku, v.title, m.code AS marketplace, m.name AS marketplace_name,
       a.threshold, a.quantity, a.resolved_quantity, a.fired_at, a.resolved_at, a.notified_state,
       a.last_notified_at, a.notify_attempts, a.notify_error, a.notify_failed_at
FROM stock_alerts a JOIN variations v ON v.id = a.variation_id LEFT JOIN marketplaces m ON m.id = a.marketplace_id
"""


class AlertRuleError(ValueError):
    """A rule names an unknown variation or marketplace, or a bad threshold."""


@dataclass(frozen=True)
class Alert:
    """An alert as an operator or a notification reads it (``marketplace`` None: total stock)."""

    id: int
    state: str
    rule_id: int | None
    sku: str
    title: str | None
    marketplace: str | None
    marketplace_name: str | None
    threshold: int
    quantity: int
    resolved_quantity: int | None
    fired_at: datetime
    resolved_at: datetime | None
    notified_state: str | None
    last_notified_at: datetime | None
    notify_attempts: int
    notify_error: str | None
    notify_failed_at: datetime | None

    @property
    def scope(self) -> str:
        """``SKU`` (total stock) or ``SKU on marketplace`` (available stock there)."""
        return self.sku if self.marketplace is None else f"{self.sku} on {self.marketplace}"


@dataclass(frozen=True)
class Rule:
    """A rule as listed: its scope by SKU and marketplace code (None: any)."""

    id: int
    sku: str | None
    marketplace: str | None
    threshold: int
    updated_at: datetime


@dataclass
class CheckResult:
    """What one check did: the scopes it compared, the alerts it opened and resolved, the firing count after."""

    checked: int
    fired: list[Alert]
    resolved: list[Alert]
    firing: int

    @property
    def changed(self) -> list[Alert]:
        """Every alert whose state changed (each needs a notification)."""
        return self.fired + self.resolved


def check(session: Session, *, default_threshold: int = 0, hysteresis: int = 0) -> CheckResult:
    """Compare every scope's stock with its threshold; open and resolve alerts.  Does not commit.

    Runs under a transaction-level advisory lock (a concurrent check waits for this transaction
    to end, then finds the work done).  Roll back instead of committing for a dry run.
    """
    if default_threshold < 0 or hysteresis < 0:
        raise ValueError("the default threshold and the hysteresis must be 0 or more")
    params = {"default_threshold": default_threshold, "hysteresis": hysteresis}
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHECK_LOCK_KEY})
    resolved = list(session.execute(_RESOLVE, params).scalars())
    fired = list(session.execute(_FIRE, params).scalars())
    checked = session.execute(_CHECKED, params).scalar_one()
    firing = session.execute(text("SELECT count(*) FROM stock_alerts WHERE state = 'firing'")).scalar_one()
    return CheckResult(checked=checked, fired=load_alerts(session, fired), resolved=load_alerts(session, resolved),
                       firing=firing)


def load_alerts(session: Session, ids: Sequence[int]) -> list[Alert]:
    """The alerts ``ids``, in id order (missing ones are left out)."""
    if not ids:
        return []
    rows = session.execute(text(_ALERT_COLUMNS + "WHERE a.id = ANY(:ids) ORDER BY a.id"), {"ids": list(ids)})
    return [Alert(**row) for row in rows.mappings()]


def list_alerts(session: Session, state: str | None = None, limit: int = 100) -> list[Alert]:
    """The newest alerts first, optionally only ``firing`` or ``resolved`` ones."""
    if state not in (None, FIRING, RESOLVED):
        raise ValueError(f"state must be {FIRING!r} or {RESOLVED!r}, not {state!r}")
    rows = session.execute(text(_ALERT_COLUMNS + "WHERE CAST(:state AS text) IS NULL OR a.state = :state "
                                "ORDER BY a.fired_at DESC, a.id DESC LIMIT :limit"), {"state": state, "limit": limit})
    return [Alert(**row) for row in rows.mappings()]


def firing_count(session: Session) -> int:
    """How many alerts are firing now."""
    return session.execute(text("SELECT count(*) FROM stock_alerts WHERE state = 'firing'")).scalar_one()


# -- notifications -----------------------------------------------------------------------------------


def claim_notification(session: Session, alert_id: int) -> Alert | None:
    """Lock alert ``alert_id`` for delivering its notification; None if it is gone or already notified.

    The row lock is held until the caller's transaction ends: commit after :func:`mark_notified`
    (a second delivery waits, then finds it notified), roll back on a failed delivery.
    """
    locked = session.execute(text("SELECT id FROM stock_alerts WHERE id = :id FOR UPDATE"), {"id": alert_id}).scalar()
    if locked is None:
        return None
    alert = load_alerts(session, [alert_id])[0]
    return None if alert.notified_state == alert.state else alert


def mark_notified(session: Session, alert_id: int, state: str) -> None:
    """Record that the notification of ``state`` was delivered (clears the last error).  Does not commit."""
    session.execute(text("UPDATE stock_alerts SET notified_state = :state, last_notified_at = now(), "
                         "notify_error = NULL, notify_failed_at = NULL WHERE id = :id"),
                    {"id": alert_id, "state": state})


def record_notify_failure(session: Session, alert_id: int, error: str, *, final: bool = False) -> None:
    """Record a failed delivery (``final``: its message went to the dead letters).  Does not commit.

    ``error`` must carry no secret (the webhook client's errors never show the URL).
    """
    if final:
        session.execute(text("UPDATE stock_alerts SET notify_error = :error, notify_failed_at = now() WHERE id = :id"),
                        {"id": alert_id, "error": error[:2000]})
    else:
        session.execute(text("UPDATE stock_alerts SET notify_error = :error, notify_attempts = notify_attempts + 1 "
                             "WHERE id = :id"), {"id": alert_id, "error": error[:2000]})


def lost_notifications(session: Session, older_than_s: float) -> list[int]:
    """Alerts whose notification is due but was never tried, for longer than ``older_than_s``.

    Their message was lost (a crash between the check's commit and its enqueue): the next check
    sends them again.  A delivery that failed is left to its own retries and the dead letters.
    """
    return list(session.execute(text(
        "SELECT id FROM stock_alerts WHERE notified_state IS DISTINCT FROM state AND notify_attempts = 0 "
        "AND notify_failed_at IS NULL AND COALESCE(resolved_at, fired_at) < now() - make_interval(secs => :s) "
        "ORDER BY id"), {"s": older_than_s}).scalars())


# -- rules ---------------------------------------------------------------------------------------------


def set_rule(session: Session, *, sku: str | None = None, marketplace: str | None = None,
             threshold: int) -> tuple[int, bool]:
    """Add the rule of a scope, or change its threshold; return (rule id, created).  Does not commit.

    Raises:
      AlertRuleError: ``sku`` or ``marketplace`` is unknown, or ``threshold`` is negative.
    """
    if threshold < 0:
        raise AlertRuleError(f"the threshold must be 0 or more (0 turns alerts off), not {threshold}")
    variation_id = marketplace_id = None
    if sku is not None:
        variation_id = session.execute(text("SELECT id FROM variations WHERE sku = :sku"), {"sku": sku}).scalar()
        if variation_id is None:
            raise AlertRuleError(f"no variation has SKU {sku!r}")
    if marketplace is not None:
        marketplace_id = session.execute(text("SELECT id FROM marketplaces WHERE code = :code"),
                                         {"code": marketplace}).scalar()
        if marketplace_id is None:
            known = session.execute(text("SELECT code FROM marketplaces ORDER BY code")).scalars().all()
            raise AlertRuleError(f"no marketplace {marketplace!r} (known: {', '.join(known) or 'none yet'})")
    row = session.execute(text(
        "INSERT INTO alert_rules (variation_id, marketplace_id, threshold) VALUES (:v, :m, :t) "
        "ON CONFLICT ((COALESCE(variation_id, 0)), (COALESCE(marketplace_id, 0))) "
        "DO UPDATE SET threshold = EXCLUDED.threshold, updated_at = now() "
        "RETURNING id, (xmax = 0) AS created"), {"v": variation_id, "m": marketplace_id, "t": threshold}).one()
    return row.id, bool(row.created)


def list_rules(session: Session) -> list[Rule]:
    """Every rule, most specific first."""
    rows = session.execute(text(
        "SELECT r.id, v.sku, m.code AS marketplace, r.threshold, r.updated_at FROM alert_rules r "
        "LEFT JOIN variations v ON v.id = r.variation_id LEFT JOIN marketplaces m ON m.id = r.marketplace_id "
        "ORDER BY (r.variation_id IS NULL), (r.marketplace_id IS NULL), v.sku, m.code"))
    return [Rule(**row) for row in rows.mappings()]


def remove_rule(session: Session, rule_id: int) -> bool:
    """Delete rule ``rule_id``; False if there is none.  Its alerts keep their history.  Does not commit."""
    return session.execute(text("DELETE FROM alert_rules WHERE id = :id RETURNING id"), {"id": rule_id}).scalar() \
        is not None


__all__ = ["Alert", "AlertRuleError", "CheckResult", "Rule", "check", "claim_notification", "firing_count",
           "list_alerts", "list_rules", "load_alerts", "lost_notifications", "mark_notified", "record_notify_failure",
           "remove_rule", "set_rule", "CHECK_LOCK_KEY"]
