"""The fleet's queue names: the actors declare on them, producers and the scheduler enqueue to them.

The Ingram Micro queues are settings (``INGRAM_BATCH_QUEUE``, ``INGRAM_DETAILS_QUEUE``), not here.
"""
#: Prefix of dramatiq's own Redis keys: queues and their dead letters (``runtime.dlq`` reads them).
BROKER_NAMESPACE = "dramatiq"

STOCK_SYNC = "stock-sync"
STOCK_FETCH = "stock-fetch"
STOCK_APPLY = "stock-apply"
EVENTS = "stock-events"
PUSH = "stock-push"
RECHECK = "stock-recheck"
RECONCILE = "reconcile"
ORDERS = "orders"
ALERTS = "alerts"


def ingram_queues(settings) -> list[str]:
    """The Ingram Micro queues the workers consume: batch, details and the extra ones (settings)."""
    extra = [name.strip() for name in settings.ingram_extra_queues.split(",") if name.strip()]
    return list(dict.fromkeys([settings.ingram_batch_queue, settings.ingram_details_queue, *extra]))


def fleet_queues(settings) -> list[str]:
    """Every queue the fleet consumes, in pipeline order."""
    return list(dict.fromkeys([STOCK_SYNC, STOCK_FETCH, STOCK_APPLY, EVENTS, PUSH, RECHECK, RECONCILE, ORDERS, ALERTS,
                               *ingram_queues(settings)]))
