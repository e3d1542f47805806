"""Syncs: running runs of every kind with live progress (server-sent events), recent runs, one run.

"Sync now" opens the run the way ``stocksync sync`` does (``begin_stock_sync``: the lock, the
cooldown unless forced, then the first page is enqueued), for any enabled account with a catalogue.
"""
from __future__ import annotations

import asyncio
import json

import aiohttp_jinja2
from aiohttp import web

from db import users
from db.models import SyncRun
from db.reconcile import KIND, discrepancy_report, summarize
from pipelines.progress import load_progress
from workers.console.context import CONSOLE
from workers.console import security
from workers.console.security import Done, Refused, action

routes = web.RouteTableDef()

#: Seconds between two progress events of a live view.
STREAM_EVERY_S = 1.0

def syncable(session) -> list[str]:
    """The accounts whose stock sync can be started: enabled, on a platform with a catalogue to walk."""
    from core.platforms import platform
    from db.accounts import list_accounts

    return [row.code for row in list_accounts(session, enabled_only=True) if platform(row.platform).paging]


async def _progress(console, sync_id: int | None = None, limit: int = 20):
    return await console.call(load_progress, console.sessions, console.redis, console.settings.redis_namespace,
                              sync_id, limit)


@routes.get("/syncs")
@aiohttp_jinja2.template("syncs.html")
async def syncs(request: web.Request):
    """Running runs (live) and the latest ones with their counts."""
    console = request.app[CONSOLE]
    progresses = await _progress(console, limit=console.settings.console_page_size)

    def runs(session):
        from sqlalchemy import select

        ids = [p.id for p in progresses]
        return {run.id: run for run in session.scalars(select(SyncRun).where(SyncRun.id.in_(ids)))}

    return {"progresses": progresses, "runs": await console.read(runs), "syncable": await console.read(syncable)}


@routes.get("/syncs/{sync_id:\\d{1,18}}")
@aiohttp_jinja2.template("sync_run.html")
async def sync_run(request: web.Request):
    """One run: its row, its progress (live while it runs)."""
    console = request.app[CONSOLE]
    sync_id = int(request.match_info["sync_id"])
    found = await _progress(console, sync_id)
    if not found:
        raise web.HTTPNotFound(text=f"no sync run {sync_id}")
    run = await console.read(lambda session: session.get(SyncRun, sync_id))
    drift = None
    if run is not None and run.kind == KIND:
        # Drift explained: the counts per cause and the largest differences with their cause and evidence.
        def load(session):
            return {"summary": summarize(session, sync_id),
                    "rows": discrepancy_report(session, sync_id, limit=console.settings.console_page_size)}

        drift = await console.read(load)
    return {"progress": found[0], "run": run, "drift": drift}


async def _stream(request: web.Request, sync_id: int | None) -> web.StreamResponse:
    """``progress`` events (JSON: the runs shown) every second; for one run, an ``end`` event once it is over.

    Each tick reads the session again: once it is gone (logout, expiry, the user disabled) the stream
    sends ``end`` (``{"session": "ended"}``) and stops, as any other request would be refused.
    """
    console = request.app[CONSOLE]
    token = security.get_cookie(request, security.SESSION_COOKIE) or ""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        while True:
            if await console.read(users.load_session, token) is None:
                await response.write(b'event: end\ndata: {"session": "ended"}\n\n')
                break
            progresses = await _progress(console, sync_id)
            if sync_id is None:
                progresses = [p for p in progresses if p.status == "running"]
            payload = json.dumps([p.asdict() for p in progresses])
            await response.write(f"event: progress\ndata: {payload}\n\n".encode())
            if sync_id is not None and (not progresses or progresses[0].status != "running"):
                await response.write(b"event: end\ndata: {}\n\n")
                break
            await asyncio.sleep(STREAM_EVERY_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the page was closed
    return response


@routes.get("/syncs/stream")
async def stream_all(request: web.Request) -> web.StreamResponse:
    """Live progress of every running run."""
    return await _stream(request, None)


@routes.get("/syncs/{sync_id:\\d{1,18}}/stream")
async def stream_one(request: web.Request) -> web.StreamResponse:
    """Live progress of one run, until it ends."""
    return await _stream(request, int(request.match_info["sync_id"]))


@routes.post("/syncs/start")
@action("sync.start", role="operator")
async def start(request: web.Request) -> Done:
    """Start a stock sync of an account (``force``: inside the cooldown, never while one runs)."""
    from actors.stock_sync import begin_stock_sync
    from core.errors import MalformedMessage
    from db.syncs import SyncRefused

    console = request.app[CONSOLE]
    form = await request.post()
    marketplace = str(form.get("marketplace") or "")
    if marketplace not in await console.read(syncable):
        raise Refused(f"marketplace: no enabled account with a catalogue to sync is called {marketplace[:40]!r}")
    force = form.get("force") in ("1", "on", "true", "yes")
    try:
        sync_id = await console.call(begin_stock_sync, marketplace, trigger="manual", force=force)
    except MalformedMessage as refused:  # changed meanwhile: disabled, removed
        raise Refused(str(refused)) from None
    except SyncRefused as refused:
        raise Refused(f"sync of {marketplace} not started: {refused.reason}", status=409) from None
    return Done(f"sync {sync_id} of {marketplace} started", f"/syncs/{sync_id}", detail=f"sync {sync_id}")
