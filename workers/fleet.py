"""The module dramatiq loads: ``dramatiq workers.fleet``.

Importing the actors installs the fleet's broker (built from the settings) and declares every
actor on it.
"""
from __future__ import annotations

from actors import alerts, events, ingram, orders, stock_sync, stores
from runtime.broker import install_broker

broker = install_broker()

__all__ = ["alerts", "broker", "events", "ingram", "orders", "stock_sync", "stores"]
