"""The console's pages, one module each; :func:`register` adds every route."""
from __future__ import annotations

from aiohttp import web


def register(app: web.Application) -> None:
    """Add every page's routes to ``app``."""
    from workers.console.pages import (accounts, alerts, audit, auth, deadletters, overview, pushes, scheduler, stock,
                                       stock_files, syncs, users)

    for module in (auth, overview, stock, stock_files, pushes, syncs, accounts, deadletters, alerts, scheduler, audit,
                   users):
        app.router.add_routes(module.routes)
