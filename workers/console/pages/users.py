"""Users (admin): who may use the console and with which role; enable, disable, change a role.

Users are added and their passwords set with ``stocksync users`` (a password never goes through a form
that an admin fills in for someone else).
"""
from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from core.console_rules import ROLES
from db import users
from workers.console.context import CONSOLE
from workers.console.security import Done, Refused, action, current_user, require_role

routes = web.RouteTableDef()


@routes.get("/users")
@require_role("admin")
@aiohttp_jinja2.template("users.html")
async def users_page(request: web.Request):
    """Every user with role, state and last login."""
    console = request.app[CONSOLE]
    return {"users": await console.read(users.list_users), "roles": ROLES}


def _target(request: web.Request) -> str:
    name = request.match_info["username"]
    if name == current_user(request).username:
        raise Refused("you cannot change your own role or state here (ask another admin, or use `stocksync users`)",
                      status=409)
    return name


@routes.post("/users/{username}/role")
@action("users.set_role", role="admin")
async def set_role(request: web.Request) -> Done:
    """Give a user another role (effective on their next request)."""
    console = request.app[CONSOLE]
    name = _target(request)
    role = str((await request.post()).get("role") or "")
    try:
        await console.write(users.set_role, name, role)
    except users.UserError as error:
        raise Refused(str(error)) from None
    return Done(f"{name} is now {role}", "/users")


async def _set_active(request: web.Request, active: bool) -> Done:
    console = request.app[CONSOLE]
    name = _target(request)
    try:
        await console.write(users.set_active, name, active)
    except users.UserError as error:
        raise Refused(str(error), status=404) from None
    return Done(f"{name} {'enabled' if active else 'disabled (logged out)'}", "/users")


@routes.post("/users/{username}/enable")
@action("users.enable", role="admin")
async def enable(request: web.Request) -> Done:
    """Enable a user."""
    return await _set_active(request, True)


@routes.post("/users/{username}/disable")
@action("users.disable", role="admin")
async def disable(request: web.Request) -> Done:
    """Disable a user and end their sessions."""
    return await _set_active(request, False)
