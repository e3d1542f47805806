"""The push log: every push of the fleet (filters: account, state, time range, SKU), paged, counts per state on top."""
from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from core.push_log import STATES, BadPushFilter, parse_filter
from db import push_log
from db.accounts import list_accounts
from workers.console.context import CONSOLE
from workers.console.security import Refused

routes = web.RouteTableDef()


@routes.get("/pushes")
@aiohttp_jinja2.template("pushes.html")
async def pushes(request: web.Request):
    """Pushes matching the query's filters, newest first (``before``: the previous page's last id)."""
    console = request.app[CONSOLE]
    try:
        wanted = parse_filter(request.query, default_limit=console.settings.console_page_size)
    except BadPushFilter as bad:
        raise Refused(str(bad)) from None

    def load(session):
        entries, more = push_log.list_pushes(session, wanted)
        return {"entries": entries, "more": more, "counts": push_log.count_states(session, wanted),
                "accounts": [row.code for row in list_accounts(session)]}

    data = await console.read(load)
    names = ("account", "state", "since", "until", "sku", "limit")
    shown = {name: request.query.get(name, "").strip()[:200] for name in names}
    return data | {"filters": shown, "states": STATES}
