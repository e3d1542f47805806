"""The overview: every queue's backlog, each target's last sync, firing alerts, dead letters, stock to look at,
and each marketplace's push backlog against its data limit."""
from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from clients.ratelimit import slots_used
from db import alerts, console_queries
from db.events import push_backlog
from pipelines.drain import Backlog, backlog
from runtime.clients import push_line_quota
from runtime import queues
from runtime.queue_stats import queue_stats
from workers.console.context import CONSOLE

routes = web.RouteTableDef()


def _overview(session):
    return {"runs": console_queries.last_runs_per_target(session),
            "firing": alerts.list_alerts(session, state="firing", limit=20),
            "attention": console_queries.stock_attention(session), "push_rows": push_backlog(session)}


def _push_backlogs(redis, namespace: str, rows: dict[str, int]) -> list[Backlog]:
    """Each marketplace with rows waiting or a data limit: its backlog, lines left and ETA."""
    found = []
    for marketplace, waiting in rows.items():
        quota = push_line_quota(marketplace)
        if not waiting and quota is None:
            continue
        used = None
        if quota is not None and redis is not None:
            used = slots_used(redis, quota[0], quota[2], namespace=namespace)
        found.append(backlog(marketplace, waiting, used))
    return found


@routes.get("/")
@aiohttp_jinja2.template("overview.html")
async def overview(request: web.Request) -> dict:
    """The dashboard."""
    console = request.app[CONSOLE]
    data = await console.read(_overview)
    data["queues"] = await console.call(queue_stats, console.broker, console.redis,
                                        queues.fleet_queues(console.settings))
    data["push_backlogs"] = await console.call(_push_backlogs, console.redis, console.settings.redis_namespace,
                                               data.pop("push_rows"))
    data["dead_letters"] = (await console.call(console.dead_letters.sizes)) if console.dead_letters else None
    return data
