"""The overview: every queue's backlog, each target's last sync, firing alerts, dead letters, stock to look at."""
from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from db import alerts, console_queries
from runtime import queues
from runtime.queue_stats import queue_stats
from workers.console.context import CONSOLE

routes = web.RouteTableDef()


def _overview(session):
    return {"runs": console_queries.last_runs_per_target(session),
            "firing": alerts.list_alerts(session, state="firing", limit=20),
            "attention": console_queries.stock_attention(session)}


@routes.get("/")
@aiohttp_jinja2.template("overview.html")
async def overview(request: web.Request) -> dict:
    """The dashboard."""
    console = request.app[CONSOLE]
    data = await console.read(_overview)
    data["queues"] = await console.call(queue_stats, console.broker, console.redis,
                                        queues.fleet_queues(console.settings))
    data["dead_letters"] = (await console.call(console.dead_letters.sizes)) if console.dead_letters else None
    return data
