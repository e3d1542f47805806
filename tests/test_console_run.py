"""The console's server entry point: what it does to the process before serving."""
from __future__ import annotations

import gc

from aiohttp import web

from workers.console import app as console_app


def test_run_freezes_the_startup_heap_before_serving(monkeypatch):
    # A full collection would otherwise walk every module and the app on some requests (bench/timeline.py).
    seen = {}
    monkeypatch.setattr(console_app.web, "run_app",
                        lambda app, **options: seen.update(frozen=gc.get_freeze_count(), options=options))
    try:
        gc.unfreeze()
        console_app.run("127.0.0.1", 0, web.Application())
        assert seen["frozen"] > 0
        assert seen["options"]["host"] == "127.0.0.1"
    finally:
        gc.unfreeze()
