"""Stock alerts (queue ``alerts``): the hourly check, one notification per alert, operations alerts.

``notify_operations_alert`` carries the alerts other pipelines raise through
:func:`runtime.alert_hooks.raise_alert` (a broken ledger, reconciliation discrepancies): a handler
registered here enqueues them, so the caller never waits on, or fails with, the webhook.
"""
from __future__ import annotations

import logging
from typing import Any

import dramatiq

from actors.retry import MalformedMessage, transient_only
from db import alerts
from pipelines import alerts as alerting
from runtime import queues, resources
from runtime.alert_hooks import add_alert_handler
from runtime.failures import message_argument, on_dead_letter
from runtime.settings import get_settings

logger = logging.getLogger(__name__)

ALERTS_QUEUE = queues.ALERTS

_settings = get_settings()


#: Both notification actors: retried with backoff (the webhook retries inside each attempt too),
#: then dead-lettered.
_NOTIFY_OPTIONS = dict(queue_name=ALERTS_QUEUE, retry_when=transient_only(_settings.stock_alert_notify_max_retries),
                       min_backoff=_settings.stock_alert_notify_min_backoff_ms,
                       max_backoff=_settings.stock_alert_notify_max_backoff_ms, max_age=24 * 3600 * 1000,
                       time_limit=5 * 60 * 1000)


@dramatiq.actor(queue_name=ALERTS_QUEUE, max_retries=3, min_backoff=10_000, max_backoff=300_000,
                max_age=3600 * 1000, time_limit=15 * 60 * 1000)
def check_stock_alerts() -> None:
    """Compare every scope's stock with its threshold; notify the alerts that fired or resolved."""
    result = alerting.run_check(notify_stock_alert.send)
    logger.info("stock alert check: %d scopes, %d fired, %d resolved, %d firing", result.checked,
                len(result.fired), len(result.resolved), result.firing)


def _alert_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise MalformedMessage(f"alert_id must be a positive integer, got {value!r}")
    return int(value)


@dramatiq.actor(**_NOTIFY_OPTIONS)
def notify_stock_alert(alert_id: int) -> None:
    """POST alert ``alert_id``'s state (fired or resolved) to the webhook, once."""
    alerting.deliver(_alert_id(alert_id))


@on_dead_letter("notify_stock_alert")
def _notify_failed(message: dramatiq.Message, error: str) -> None:
    value = message_argument(message, 0, "alert_id")
    try:
        alert_id = _alert_id(value)
    except MalformedMessage:
        return
    with resources.sessions()() as session:
        alerts.record_notify_failure(session, alert_id, error, final=True)
        session.commit()
    logger.error("stock alert %d: notification failed for good: %s", alert_id, error)


# -- operations alerts (reconciliation discrepancies, a broken ledger) ------------------------------


@dramatiq.actor(**_NOTIFY_OPTIONS)
def notify_operations_alert(kind: str, message: str, details: dict | None = None) -> None:
    """POST an operations alert to ``STOCK_ALERT_WEBHOOK_URL`` (retried, then dead-lettered)."""
    if not isinstance(kind, str) or not isinstance(message, str):
        raise MalformedMessage(f"kind and message must be strings, got {kind!r} and {message!r:.100}")
    alerting.send_operations_alert(kind, message, details if isinstance(details, dict) else {})


def _forward_operations_alert(kind: str, message: str, details: dict[str, Any]) -> None:
    # Enqueued, not posted here: the caller (a reconciliation) must not wait on, or fail with, Slack.
    if get_settings().stock_alert_webhook_url.get_secret_value():
        notify_operations_alert.send(kind, message, details)


add_alert_handler(_forward_operations_alert)

__all__ = ["ALERTS_QUEUE", "check_stock_alerts", "notify_operations_alert", "notify_stock_alert"]
