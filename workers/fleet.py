"""The module dramatiq loads: ``dramatiq workers.fleet``.

It installs the fleet's broker (built from the settings) and imports every actor so they
register with it.
"""
from __future__ import annotations

from runtime.broker import install_broker

broker = install_broker()

# One module per pipeline; each binds its actors to the broker installed above.
from actors import alerts, events, ingram, orders, stock_sync, stores  # noqa: E402

__all__ = ["alerts", "broker", "events", "ingram", "orders", "stock_sync", "stores"]
