"""Stores: each integration, its credential variable (the name, and whether it is set), its sync history.

"Sync now" (operator) sends ``sync_store`` as ``stocksync stores sync`` does; enable, disable and
add (admin) go through ``db.stores`` as the CLI does.  A disabled store cannot be synced from here.
"""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import aiohttp_jinja2
from aiohttp import web

from db import stores
from db.store_models import PLATFORMS
from workers.console.context import CONSOLE
from workers.console.security import Done, Refused, action

routes = web.RouteTableDef()


def shown_url(url: str | None) -> str:
    """A base URL fit to show: no user, password, query or fragment (they may carry a secret)."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@routes.get("/stores")
@aiohttp_jinja2.template("stores.html")
async def stores_page(request: web.Request):
    """Every store with its last sync."""
    console = request.app[CONSOLE]
    rows = await console.read(stores.list_integrations)
    return {"rows": rows, "credentials_set": {i.id: bool(console.environ.get(i.credentials_env)) for i, _ in rows},
            "platforms": PLATFORMS, "shown_url": shown_url}


def _integration(request: web.Request) -> int:
    value = request.match_info["store_id"]
    if not value.isdigit() or len(value) > 9:
        raise web.HTTPNotFound(text=f"no store {value[:40]!r}")
    return int(value)


@routes.get("/stores/{store_id}")
@aiohttp_jinja2.template("store.html")
async def store_page(request: web.Request):
    """One store and its sync history (store_sync_logs)."""
    console = request.app[CONSOLE]
    store_id = _integration(request)

    def load(session):
        integration = stores.get_integration(session, store_id)
        return None if integration is None else (integration, stores.recent_logs(session, store_id, 50))

    found = await console.read(load)
    if found is None:
        raise web.HTTPNotFound(text=f"no store {store_id}")
    integration, logs = found
    return {"store": integration, "logs": logs,
            "credentials_set": bool(console.environ.get(integration.credentials_env)),
            "shown_url": shown_url}


async def _found(request: web.Request):
    console = request.app[CONSOLE]
    store_id = _integration(request)
    integration = await console.read(stores.get_integration, store_id)
    if integration is None:
        raise Refused(f"no store {store_id}", status=404)
    return console, integration


@routes.post("/stores/{store_id}/sync")
@action("store.sync", role="operator")
async def sync_now(request: web.Request) -> Done:
    """Enqueue ``sync_store(id, "manual")`` for an active store."""
    console, integration = await _found(request)
    if not integration.active:
        raise Refused(f"store {integration.name} is disabled: enable it first", status=409)
    message = await console.call(console.broker.get_actor("sync_store").send, integration.id, "manual")
    return Done(f"sync of store {integration.name} enqueued", f"/stores/{integration.id}",
                detail=f"message {message.message_id}")


async def _set_active(request: web.Request, active: bool) -> Done:
    console, integration = await _found(request)
    await console.write(stores.set_active, integration.name, active)
    return Done(f"store {integration.name} {'enabled' if active else 'disabled'}", f"/stores/{integration.id}")


@routes.post("/stores/{store_id}/enable")
@action("store.enable", role="admin")
async def enable(request: web.Request) -> Done:
    """Enable a store."""
    return await _set_active(request, True)


@routes.post("/stores/{store_id}/disable")
@action("store.disable", role="admin")
async def disable(request: web.Request) -> Done:
    """Disable a store: it is not synced, scheduled or manual."""
    return await _set_active(request, False)


@routes.post("/stores/add")
@action("store.add", role="admin")
async def add(request: web.Request) -> Done:
    """Connect a store (the credential variable must be set where the console runs, as for the CLI)."""
    console = request.app[CONSOLE]
    form = await request.post()
    checked = {"active": form.get("active") == "on", "auto_sync": form.get("auto_sync") == "on"}

    def create(session):
        integration = stores.add_integration(
            session, platform=str(form.get("platform") or ""), name=str(form.get("name") or "").strip(),
            credentials_env=str(form.get("credentials_env") or "").strip(),
            base_url=str(form.get("base_url") or "").strip() or None, environ=console.environ, **checked)
        return integration.id, integration.name, integration.active and integration.auto_sync

    try:
        store_id, name, first_sync = await console.write(create)
    except stores.StoreError as error:
        raise Refused(str(error)) from None
    message = ""
    if first_sync:
        await console.call(console.broker.get_actor("sync_store").send, store_id, "created")
        message = "; its first sync is enqueued"
    return Done(f"store {name} added{message}", f"/stores/{store_id}")
