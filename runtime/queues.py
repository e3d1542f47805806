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
STORES = "stores"
ALERTS = "alerts"
