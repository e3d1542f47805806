"""The module dramatiq loads: ``dramatiq workers.fleet``.

It builds the broker from the settings, makes it the global broker and imports every actor so
they register with it.
"""
from __future__ import annotations

import dramatiq

from workers.broker import build_broker
from workers.settings import get_settings

broker = build_broker(get_settings())
dramatiq.set_broker(broker)

# Actors bind to the broker set above; one module per pipeline.
from actors import alerts, events, ingram, operations, orders, stock_sync, stores  # noqa: E402

__all__ = ["alerts", "broker", "events", "ingram", "operations", "orders", "stock_sync", "stores"]
