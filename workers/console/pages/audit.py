"""The audit: every console action (who, what, when, arguments, outcome), newest first, paged."""
from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from db import users
from workers.console.context import CONSOLE

routes = web.RouteTableDef()


@routes.get("/audit")
@aiohttp_jinja2.template("audit.html")
async def audit_page(request: web.Request):
    """Entries older than ``before``, optionally of one ``user`` or ``action``."""
    console = request.app[CONSOLE]
    before = request.query.get("before", "")
    if before and (not before.isdigit() or len(before) > 18):
        raise web.HTTPBadRequest(text=f"before must be an entry id, got {before[:40]!r}")
    username = request.query.get("user", "").strip()[:64] or None
    action_name = request.query.get("action", "").strip()[:64] or None
    size = console.settings.console_page_size
    entries = await console.read(users.list_audit, before_id=int(before) if before else None, limit=size + 1,
                                 username=username, action=action_name)
    return {"entries": entries[:size], "more": len(entries) > size, "user_filter": username or "",
            "action_filter": action_name or ""}
