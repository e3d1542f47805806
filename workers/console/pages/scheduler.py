"""Scheduler: each job, its crontab and next runs, the current leader; "run now" (admin) enqueues its message."""
from __future__ import annotations

from datetime import datetime, timezone

import aiohttp_jinja2
from aiohttp import web

from workers import scheduler as jobs
from workers.console.context import CONSOLE
from workers.console.security import Done, Refused, action

routes = web.RouteTableDef()


def _leader(redis, settings) -> dict | None:
    key = jobs.lock_key(settings)
    token, ttl_ms = redis.get(key), redis.pttl(key)
    if token is None:
        return None
    token = token.decode() if isinstance(token, bytes) else str(token)
    # The token is "<host>:<pid>:<random>": the random part only proves ownership, so it is not shown.
    return {"owner": token.rsplit(":", 1)[0], "expires_in_s": max(0, ttl_ms) / 1000}


@routes.get("/scheduler")
@aiohttp_jinja2.template("scheduler.html")
async def scheduler_page(request: web.Request):
    """Jobs, crontabs, next three runs, the leader."""
    console = request.app[CONSOLE]
    settings = console.settings
    try:
        times = jobs.next_fire_times(settings, datetime.now(timezone.utc), count=3)
        config_error = None
    except jobs.SchedulerConfigError as error:
        times, config_error = {}, str(error)
    rows = [{"job": job, "cron": str(getattr(settings, job.setting)), "next": times.get(job.name, [])}
            for job in jobs.JOBS]
    leader = await console.call(_leader, console.redis, settings)
    return {"rows": rows, "leader": leader, "timezone": settings.scheduler_timezone, "config_error": config_error}


@routes.post("/scheduler/{job}/run")
@action("scheduler.run_now", role="admin")
async def run_now(request: web.Request) -> Done:
    """Enqueue one job's message now, as ``stocksync scheduler --once JOB`` does."""
    console = request.app[CONSOLE]
    name = request.match_info["job"]
    job = jobs.JOBS_BY_NAME.get(name)
    if job is None:
        raise Refused(f"no job {name[:40]!r}; one of: {', '.join(jobs.JOBS_BY_NAME)}", status=404)
    message = await console.call(jobs.fire, job, jobs.broker_sender(console.broker))
    if message is None:
        raise Refused(f"job {name} enqueued nothing: actor {job.actor} is not defined in this fleet", status=409)
    return Done(f"job {name} enqueued {job.actor}", "/scheduler", detail=f"message {message.message_id}")
