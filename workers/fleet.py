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

from actors import stock_sync  # noqa: E402  (actors bind to the broker set above)

__all__ = ["broker", "stock_sync"]
