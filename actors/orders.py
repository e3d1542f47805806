"""Order intake actors: check the message, then let ``pipelines.orders`` turn orders into stock events.

- ``refurbed_order_notified(order_id)``: a Refurbed webhook said ``{"order_id": n}`` and nothing
  else (unsigned, at least once): re-fetch the order and send its events.
- ``poll_orders(marketplace)``: the backstop walk (Back Market has no order webhooks; Refurbed's
  announce new orders only, so its walk is what sees cancellations).
"""
from __future__ import annotations

import logging

import dramatiq

from actors.retry import MalformedMessage, transient_only
from pipelines import orders as order_pipeline
from runtime import queues

logger = logging.getLogger(__name__)


@dramatiq.actor(queue_name=queues.ORDERS, retry_when=transient_only(12), min_backoff=2_000, max_backoff=600_000,
                max_age=3 * 24 * 3600 * 1000, time_limit=5 * 60 * 1000)
async def refurbed_order_notified(order_id: str, received_at: str | None = None, account: str = "refurbed") -> None:
    """Re-fetch a notified Refurbed order (``GetOrder``) of ``account`` and emit the events not sent yet."""
    sent = await book_refurbed_order(order_id, refurbed_order_notified.broker, account)
    logger.info("refurbed order %s of %s (notified at %s): %d events sent", order_id, account, received_at, sent)


async def book_refurbed_order(order_id: str, broker: dramatiq.Broker, account: str = "refurbed") -> int:
    """What ``refurbed_order_notified`` does; returns how many events were sent."""
    if not isinstance(order_id, str) or not order_id.isascii() or not order_id.isdigit() or len(order_id) > 19:
        raise MalformedMessage(f"order_id must be a string of digits, got {order_id!r:.60}")
    try:
        return await order_pipeline.book_refurbed_order(order_id, broker, account)
    except ValueError as refused:  # no such account, or not one whose orders can be read
        if getattr(refused, "permanent", False):
            raise MalformedMessage(str(refused)) from None
        raise


@dramatiq.actor(queue_name=queues.ORDERS, retry_when=transient_only(3), min_backoff=5_000, max_backoff=60_000,
                max_age=3600 * 1000, time_limit=order_pipeline.POLL_LOCK_S * 1000)
async def poll_orders(marketplace: str = "backmarket") -> None:
    """Walk ``marketplace``'s recent orders and emit the events not sent yet (the scheduler's hook)."""
    counts = await walk_orders_of(marketplace, poll_orders.broker)
    if counts is not None:
        logger.info("orders of %s polled: %s", marketplace, counts)


async def walk_orders_of(marketplace: str, broker: dramatiq.Broker) -> dict | None:
    """What ``poll_orders`` does; returns the walk's counts, or None when another walk holds the lock."""
    try:
        return await order_pipeline.walk_orders_of(marketplace, broker)
    except ValueError as refused:  # no such account, or not one whose orders can be polled
        if getattr(refused, "permanent", False):
            raise MalformedMessage(f"poll_orders: {refused}") from None
        raise
