"""Where alerts go: logged at ERROR, then handed to every registered handler (Slack, e-mail, ...).

Raising an alert never fails the caller: a handler that raises is logged and skipped.

    from runtime.alert_hooks import add_alert_handler

    add_alert_handler(lambda kind, message, details: post_to_slack(f"[{kind}] {message}"))
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

logger = logging.getLogger(__name__)

#: handler(kind, message, details), called for every alert.
AlertHandler = Callable[[str, str, dict[str, Any]], None]

_handlers: list[AlertHandler] = []
_lock = threading.Lock()


def add_alert_handler(handler: AlertHandler) -> AlertHandler:
    """Register ``handler`` for every alert of this process; returns it (usable as a decorator)."""
    with _lock:
        _handlers.append(handler)
    return handler


def remove_alert_handler(handler: AlertHandler) -> None:
    """Unregister ``handler`` (tests)."""
    with _lock:
        if handler in _handlers:
            _handlers.remove(handler)


def raise_alert(kind: str, message: str, details: dict[str, Any] | None = None) -> None:
    """Log an alert at ERROR and pass it to every handler.

    ``kind`` is a short stable name (``reconciliation_discrepancies``, ``ledger_invariant``) a
    handler can route on; ``details`` is JSON-able.
    """
    details = details or {}
    logger.error("ALERT %s: %s %s", kind, message, details)
    with _lock:
        handlers = list(_handlers)
    for handler in handlers:
        try:
            handler(kind, message, details)
        except Exception:
            logger.exception("alert handler %r failed for %s", handler, kind)
