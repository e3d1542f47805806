"""The module dramatiq loads: ``dramatiq workers.fleet``.

Importing the actors installs the fleet's broker (built from the settings) and declares every
actor on it.
"""
from __future__ import annotations

import logging

from runtime import logs

# First: in a worker process this replaces dramatiq's basicConfig (its -v still means DEBUG); a
# CLI command that imports the fleet has set up logging already.
logs.ensure_configured(level=logging.DEBUG if logging.getLogger().level == logging.DEBUG else None)

from actors import accounts, alerts, events, ingram, orders, stock_sync  # noqa: E402
from runtime.broker import install_broker  # noqa: E402

broker = install_broker()

__all__ = ["accounts", "alerts", "broker", "events", "ingram", "orders", "stock_sync"]
