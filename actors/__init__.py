"""Dramatiq actors, one module per pipeline: decode the message, call the pipeline, enqueue what follows.

An actor binds to the global broker when it is declared, so the fleet's broker is installed here
and every actor module is declared at once on it: importing one actor declares them all on the
same broker, whatever broker a caller set as the global one later.
"""
from runtime.broker import install_broker

install_broker()

from actors import accounts, alerts, events, ingram, orders, stock_sync  # noqa: E402

__all__ = ["accounts", "alerts", "events", "ingram", "orders", "stock_sync"]
