"""Accounts: each place the seller sells, what its platform can do, its credential variable (the name, and
whether it is set here), its last runs.

"Sync now" posts to ``/syncs/start`` (the one pipeline, as ``stocksync accounts sync`` does); enable,
disable and add (admin) go through :mod:`db.accounts` with the rules of :mod:`core.accounts`, as the
CLI does.  ``/stores`` (the page of before accounts) leads here.
"""
from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

import aiohttp_jinja2
from aiohttp import web

from core.accounts import CODE, OPTIONS
from core.platforms import PLATFORMS
from db import accounts as account_rows
from db.syncs import recent_runs
from pipelines.stock_sync import SYNC_KIND
from runtime import accounts
from workers.console.context import CONSOLE
from workers.console.security import Done, Refused, action

routes = web.RouteTableDef()


def shown_url(url: str | None) -> str:
    """A base URL fit to show: no user, password, query or fragment (a row of before the rules may have them)."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _listing(session, environ, settings) -> list[dict]:
    runs = account_rows.last_runs(session, SYNC_KIND)
    return [{"view": view, "run": runs.get(view.code), "configured": accounts.configured(view, environ, settings)}
            for view in map(accounts.view_of, account_rows.list_accounts(session))]


@routes.get("/accounts")
@aiohttp_jinja2.template("accounts.html")
async def accounts_page(request: web.Request):
    """Every account with its capabilities and its last stock sync."""
    console = request.app[CONSOLE]
    rows = await console.read(_listing, console.environ, console.settings)
    return {"rows": rows, "platforms": [p for p in PLATFORMS.values()], "options": OPTIONS, "shown_url": shown_url}


def _code(request: web.Request) -> str:
    code = request.match_info["code"]
    if not CODE.match(code):
        raise web.HTTPNotFound(text=f"no account {code[:40]!r}")
    return code


@routes.get("/accounts/{code}")
@aiohttp_jinja2.template("account.html")
async def account_page(request: web.Request):
    """One account and its recent stock syncs."""
    console = request.app[CONSOLE]
    code = _code(request)

    def load(session):
        row = account_rows.get_account(session, code)
        if row is None:
            return None
        view = accounts.view_of(row)
        return {"view": view, "added": row.created_at, "runs": recent_runs(session, 50, SYNC_KIND, code),
                "configured": accounts.configured(view, console.environ, console.settings)}

    found = await console.read(load)
    if found is None:
        raise web.HTTPNotFound(text=f"no account {code}")
    return {**found, "shown_url": shown_url}


@routes.get("/stores")
async def stores_page(request: web.Request) -> web.Response:
    """The page of before accounts: the stores are accounts now."""
    raise web.HTTPMovedPermanently("/accounts")


async def _set_enabled(request: web.Request, enabled: bool) -> Done:
    console, code = request.app[CONSOLE], _code(request)
    try:
        await console.write(account_rows.set_enabled, code, enabled)
    except ValueError as error:
        raise Refused(str(error), status=404) from None
    accounts.forget()
    return Done(f"account {code} {'enabled' if enabled else 'disabled'}", f"/accounts/{code}")


@routes.post("/accounts/{code}/enable")
@action("account.enable", role="admin")
async def enable(request: web.Request) -> Done:
    """Enable an account."""
    return await _set_enabled(request, True)


@routes.post("/accounts/{code}/disable")
@action("account.disable", role="admin")
async def disable(request: web.Request) -> Done:
    """Disable an account: it is not synced, polled or pushed, scheduled or by hand."""
    return await _set_enabled(request, False)


def _options(text: str) -> dict:
    if not text.strip():
        return {}
    try:
        options = json.loads(text)
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise Refused('options must be a JSON object, e.g. {"restock_on_cancel": false}')
    return options


@routes.post("/accounts/add")
@action("account.add", role="admin")
async def add(request: web.Request) -> Done:
    """Add an account (its credential is the NAME of a variable under the accounts' prefix, never the secret)."""
    console = request.app[CONSOLE]
    form = await request.post()
    code = str(form.get("code") or "").strip()
    fields = {"platform": str(form.get("platform") or ""), "code": code,
              "name": str(form.get("name") or "").strip() or None,
              "credentials_env": str(form.get("credentials_env") or "").strip() or None,
              "base_url": str(form.get("base_url") or "").strip() or None,
              "options": _options(str(form.get("options") or "")),
              "enabled": form.get("enabled") == "on", "auto_sync": form.get("auto_sync") == "on",
              "allow_loopback": console.settings.accounts_allow_loopback}

    def create(session) -> None:
        account_rows.add_account(session, **fields)

    try:
        await console.write(create)
    except ValueError as error:  # AccountError, UnknownPlatform: they never hold a credential's value
        raise Refused(str(error)) from None
    accounts.forget()
    return Done(f"account {code} added; Sync now starts its first sync", f"/accounts/{code}")
