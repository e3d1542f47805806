"""Stock alerts as plain functions: the check, one notification's delivery, an operations alert's body.

A delivery holds the alert's row lock, so a re-delivered notification finds it notified and
sends nothing; a failed one is recorded on the alert before its error goes on.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from clients.errors import ApiError
from clients.webhook import post_webhook, slack_message
from core.errors import MalformedMessage
from db import alerts
from db.alert_models import FIRING
from runtime import metrics, resources
from runtime.settings import get_settings

logger = logging.getLogger(__name__)

#: A notification due this long without an attempt was lost (a crash between commit and enqueue).
LOST_AFTER_S = 600.0
#: What an alert says when no webhook is configured.
NOT_CONFIGURED = "STOCK_ALERT_WEBHOOK_URL is not set: notification not sent"


def run_check(notify: Callable[[int], Any], *, dry_run: bool = False) -> alerts.CheckResult:
    """Run the check in one transaction; unless ``dry_run``, commit and notify every change.

    ``notify(alert_id)`` sends one notification (the actor enqueues ``notify_stock_alert``).  A dry
    run rolls back: the result says what would fire and resolve, and nothing is stored or sent.
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
    for alert_id in [alert.id for alert in result.changed] + lost:
        notify(alert_id)
    return result


def _describe(error: BaseException) -> str:
    # Our clients' errors carry no secret; anything else is named by its type only.
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


def operations_message(kind: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
    """The Slack-compatible body of an operations alert (``runtime.alert_hooks.raise_alert``)."""
    facts = ", ".join(f"{name}: {value}" for name, value in sorted(details.items())
                      if isinstance(value, (str, int, float, bool)))
    text = f":rotating_light: stocksync {kind}: {message}" + (f" ({facts})" if facts else "")
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def send_operations_alert(kind: str, message: str, details: dict[str, Any]) -> bool:
    """POST an operations alert to the webhook; False (logged) when none is configured."""
    if not get_settings().stock_alert_webhook_url.get_secret_value():
        logger.warning("operations alert %s not sent: %s", kind, NOT_CONFIGURED)
        return False
    body = operations_message(kind, message, details)
    resources.run_on_worker_loop(lambda: _post_to_webhook(body))
    logger.info("operations alert %s sent", kind)
    return True
