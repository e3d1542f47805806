"""A web server's heap, set for short requests before it serves.

The startup heap (modules, the app) lives as long as the process: frozen, the collector's full passes
skip it.  A page holds tens of thousands of objects while it is drawn (rows, cells, points) and frees
them when it is answered: with the young generation's threshold at CPython's default of 700 objects,
each page ran about ten young collections, promoted what was in flight and set off the full passes that
were the SKU page's p99.  At :data:`YOUNG_THRESHOLD` a page's objects are mostly freed by their
reference counts before any collection sees them (measured in README, ``bench/timeline.py``).
"""
from __future__ import annotations

import gc

#: Net new container objects between two young collections (CPython's default: 700).
YOUNG_THRESHOLD = 50_000


def settle_for_serving() -> None:
    """Freeze the heap built so far and raise the young generation's threshold (the older ones' unchanged)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
