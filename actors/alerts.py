"""Stock alerts (issue 5 item 8): the hourly check and its webhook notifications (queue ``alerts``).

- ``check_stock_alerts()``: the scheduler's ``stock_alerts`` job.  :func:`run_check` runs
  :func:`db.alerts.check` in one transaction, publishes the firing count, then enqueues one
  ``notify_stock_alert`` per alert that fired or resolved (and per notification a crash lost).
- ``notify_stock_alert(alert_id)``: POSTs the alert's current state, Slack-compatible, to
  ``STOCK_ALERT_WEBHOOK_URL`` (:func:`clients.webhook.post_webhook`, which retries inside the
  call).  A failed delivery is recorded on the alert and the message retried; once its retries
  are used up it goes to the dead letters and the alert says so (``notify_failed_at``).  A
  delivery holds the alert's row lock, so a redelivered message finds it notified and sends nothing.

- ``notify_operations_alert(kind, message, details)``: the alerts other pipelines raise through
  :func:`runtime.alert_hooks.raise_alert` (reconciliation discrepancies, a broken ledger) go to
  the same webhook, enqueued by a handler this module registers.

The rules live in :mod:`db.alerts`; these actors only decode, call and enqueue.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import dramatiq

from actors.retry import MalformedMessage, transient_only
from clients.webhook import post_webhook, slack_message
from db import alerts
from db.alert_models import FIRING
from runtime import metrics, queues, resources
from runtime.alert_hooks import add_alert_handler
from runtime.failures import message_argument, on_dead_letter
from runtime.settings import get_settings

logger = logging.getLogger(__name__)

ALERTS_QUEUE = queues.ALERTS
#: A notification due this long without an attempt was lost (a crash between commit and enqueue).
LOST_AFTER_S = 600.0
#: What an alert says when no webhook is configured.
NOT_CONFIGURED = "STOCK_ALERT_WEBHOOK_URL is not set: notification not sent"

_settings = get_settings()


#: Both notification actors: retried with backoff (the webhook retries inside each attempt too),
#: then dead-lettered.
_NOTIFY_OPTIONS = dict(queue_name=ALERTS_QUEUE, retry_when=transient_only(_settings.stock_alert_notify_max_retries),
                       min_backoff=_settings.stock_alert_notify_min_backoff_ms,
                       max_backoff=_settings.stock_alert_notify_max_backoff_ms, max_age=24 * 3600 * 1000,
                       time_limit=5 * 60 * 1000)


def run_check(*, dry_run: bool = False, notify: Callable[[int], Any] | None = None) -> alerts.CheckResult:
    """Run the check in one transaction; unless ``dry_run``, commit and notify every change.

    ``notify(alert_id)`` defaults to enqueuing ``notify_stock_alert``.  A dry run rolls back:
    the result says what would fire and resolve, and nothing is stored or sent.
    """
    settings = get_settings()
    with resources.sessions()() as session:
        result = alerts.check(session, default_threshold=settings.stock_alert_default_threshold,
                              hysteresis=settings.stock_alert_hysteresis)
        if dry_run:
            session.rollback()
            return result
        lost = alerts.lost_notifications(session, LOST_AFTER_S)
        session.commit()
    metrics.stock_alerts_firing(result.firing)
    for alert in result.fired:
        logger.warning("stock alert %d fired: %s is %d, below %d", alert.id, alert.scope, alert.quantity,
                       alert.threshold)
    for alert in result.resolved:
        logger.info("stock alert %d resolved: %s is %s", alert.id, alert.scope, alert.resolved_quantity)
    send = notify or notify_stock_alert.send
    for alert_id in [alert.id for alert in result.changed] + lost:
        send(alert_id)
    return result


@dramatiq.actor(queue_name=ALERTS_QUEUE, max_retries=3, min_backoff=10_000, max_backoff=300_000,
                max_age=3600 * 1000, time_limit=15 * 60 * 1000)
def check_stock_alerts() -> None:
    """Compare every scope's stock with its threshold; notify the alerts that fired or resolved."""
    result = run_check()
    logger.info("stock alert check: %d scopes, %d fired, %d resolved, %d firing", result.checked,
                len(result.fired), len(result.resolved), result.firing)


def _alert_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise MalformedMessage(f"alert_id must be a positive integer, got {value!r}")
    return int(value)


def _describe(error: BaseException) -> str:
    # Our clients' errors carry no secret; anything else is named by its type only.
    from clients.errors import ApiError

    return str(error) if isinstance(error, (ApiError, MalformedMessage)) else f"{type(error).__name__}"


async def _post(alert: alerts.Alert, event: str) -> int:
    def counted(number: int, error: BaseException | None) -> None:
        metrics.stock_alert_notification(event, "failed" if error else "sent")
        if error is not None:
            logger.warning("stock alert %d: delivery attempt %d failed: %s", alert.id, number, _describe(error))

    return await _post_to_webhook(slack_message(alert), on_attempt=counted)


async def _post_to_webhook(body: dict[str, Any], on_attempt=None) -> int:
    # The HTTP session belongs to the loop that runs the request: made here, on it.
    settings = get_settings()
    return await post_webhook(resources.http_session(), settings.stock_alert_webhook_url, body,
                              timeout_s=settings.stock_alert_webhook_timeout_s,
                              attempts=settings.stock_alert_webhook_attempts,
                              backoff_s=settings.stock_alert_webhook_backoff_s, on_attempt=on_attempt)


def deliver(alert_id: int) -> str:
    """Notify alert ``alert_id``'s current state unless already done: ``sent``, ``skipped`` or ``not_configured``.

    Raises the delivery's error (recorded on the alert first) when the webhook failed.
    """
    settings = get_settings()
    with resources.sessions()() as session:
        alert = alerts.claim_notification(session, alert_id)
        if alert is None:
            session.commit()
            logger.info("stock alert %d: nothing to notify (gone or already notified)", alert_id)
            return "skipped"
        if not settings.stock_alert_webhook_url.get_secret_value():
            alerts.record_notify_failure(session, alert_id, NOT_CONFIGURED)
            session.commit()
            logger.warning("stock alert %d: %s", alert_id, NOT_CONFIGURED)
            return "not_configured"
        event = "fired" if alert.state == FIRING else "resolved"
        try:
            resources.run_on_worker_loop(lambda: _post(alert, event))
        except BaseException as error:
            session.rollback()  # the row lock goes; the failure is recorded in a transaction of its own
            alerts.record_notify_failure(session, alert_id, _describe(error))
            session.commit()
            raise
        alerts.mark_notified(session, alert_id, alert.state)
        session.commit()
    logger.info("stock alert %d: %s notification sent", alert_id, event)
    return "sent"


@dramatiq.actor(**_NOTIFY_OPTIONS)
def notify_stock_alert(alert_id: int) -> None:
    """POST alert ``alert_id``'s state (fired or resolved) to the webhook, once."""
    deliver(_alert_id(alert_id))


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


def operations_message(kind: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
    """The Slack-compatible body of an operations alert (``runtime.alert_hooks.raise_alert``)."""
    facts = ", ".join(f"{name}: {value}" for name, value in sorted(details.items())
                      if isinstance(value, (str, int, float, bool)))
    text = f":rotating_light: stocksync {kind}: {message}" + (f" ({facts})" if facts else "")
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


@dramatiq.actor(**_NOTIFY_OPTIONS)
def notify_operations_alert(kind: str, message: str, details: dict | None = None) -> None:
    """POST an operations alert to ``STOCK_ALERT_WEBHOOK_URL`` (retried, then dead-lettered)."""
    if not isinstance(kind, str) or not isinstance(message, str):
        raise MalformedMessage(f"kind and message must be strings, got {kind!r} and {message!r:.100}")
    settings = get_settings()
    if not settings.stock_alert_webhook_url.get_secret_value():
        logger.warning("operations alert %s not sent: %s", kind, NOT_CONFIGURED)
        return
    body = operations_message(kind, message, details if isinstance(details, dict) else {})
    resources.run_on_worker_loop(lambda: _post_to_webhook(body))
    logger.info("operations alert %s sent", kind)


def _forward_operations_alert(kind: str, message: str, details: dict[str, Any]) -> None:
    # Enqueued, not posted here: the caller (a reconciliation) must not wait on, or fail with, Slack.
    if get_settings().stock_alert_webhook_url.get_secret_value():
        notify_operations_alert.send(kind, message, details)


add_alert_handler(_forward_operations_alert)

__all__ = ["ALERTS_QUEUE", "check_stock_alerts", "deliver", "notify_operations_alert", "notify_stock_alert",
           "operations_message", "run_check"]
