"""Login, logout and the health check (the only routes besides static files served without a session)."""
from __future__ import annotations

import asyncio
import math
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web

from db import users
from runtime.health import public_answer
from workers.console import security
from workers.console.context import CONSOLE, USER_KEY, client_address

routes = web.RouteTableDef()


def _safe_next(target: str | None) -> str:
    # Only a path of this site: an open redirect would hand a phishing page our login's trust.
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return "/"
    return target


def _login_form(request: web.Request, *, error: str | None = None, status: int = 200, username: str = "",
                next_path: str = "/") -> web.Response:
    # One token per browser, kept across login pages: a second tab (or a favicon fetch sent to the login
    # page) must not invalidate the form already shown.
    token = security.get_cookie(request, security.LOGIN_CSRF_COOKIE) or ""
    if len(token) < 32 or len(token) > 64:
        token = security.new_token()
    response = aiohttp_jinja2.render_template("login.html", request, {
        "error": error, "login_csrf": token, "username": username, "next": next_path})
    response.set_status(status)
    security.set_cookie(request, response, security.LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


@routes.get("/login")
async def login_page(request: web.Request) -> web.Response:
    """The login form (with its double-submit CSRF token)."""
    return _login_form(request, next_path=_safe_next(request.query.get("next")))


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    """Reserve the attempt (or answer 429), check the password, open a new session, set its cookie.

    Refusals before a password is checked (a bad form token, a malformed form, a throttled attempt)
    are audited once per window and address: a flood of them writes one row, not one each.
    """
    console = request.app[CONSOLE]
    form = await security.read_form(request)
    username = str(form.get("username") or "").strip().lower()[:64]
    password = str(form.get("password") or "")
    next_path = _safe_next(str(form.get("next") or "/"))
    address = client_address(request)
    if not security.csrf_matches(security.get_cookie(request, security.LOGIN_CSRF_COOKIE),
                                 str(form.get("csrf_token") or "")):
        await console.audit_burst(request, "login", {"username": username}, "csrf",
                                  "missing or wrong login CSRF token", username=username or None)
        return _login_form(request, error="The form expired: log in again.", status=403, username=username,
                           next_path=next_path)
    if not username or not password:
        await console.audit_burst(request, "login", {"username": username}, "malformed",
                                  "no username or no password", username=username or None)
        return _login_form(request, error="Enter a username and a password.", status=400, username=username,
                           next_path=next_path)
    turn = await console.call(console.throttle.reserve, username, address)
    if not turn.allowed:
        await console.audit_burst(request, "login", {"username": username}, "throttled",
                                  f"too many attempts {turn.reason.replace('your', 'this')}", username=username)
        response = _login_form(request, error=turn.message(), status=429, username=username, next_path=next_path)
        response.headers["Retry-After"] = str(max(1, math.ceil(turn.wait_s)))
        return response
    user = await console.write(users.authenticate, username, password)
    if user is None:
        await console.audit(request, "login", {"username": username}, "refused", "wrong username or password",
                            username=username)
        return _login_form(request, error="Wrong username or password.", status=401, username=username,
                           next_path=next_path)
    await console.call(console.throttle.succeeded, username, address)
    old = security.get_cookie(request, security.SESSION_COOKIE)
    if old:
        await console.write(users.delete_session, old)
    token, info = await console.write(users.create_session, user.id, console.settings.console_session_lifetime_s,
                                      address=address)
    request[USER_KEY] = info
    await console.audit(request, "login", {"username": username}, "ok")
    response = web.HTTPSeeOther(next_path)
    security.set_cookie(request, response, security.SESSION_COOKIE, token,
                        max_age=int(console.settings.console_session_lifetime_s))
    security.del_cookie(request, response, security.LOGIN_CSRF_COOKIE)
    raise response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    """End this session (the middleware checked its CSRF token)."""
    console = request.app[CONSOLE]
    token = security.get_cookie(request, security.SESSION_COOKIE)
    if token:
        await console.write(users.delete_session, token)
    await console.audit(request, "logout", {}, "ok")
    response = web.HTTPSeeOther("/login")
    security.del_cookie(request, response, security.SESSION_COOKIE)
    raise response


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.Response:
    """No icon (answered here so that a browser's automatic fetch is not sent to the login page)."""
    return web.Response(status=204)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers (no database or Redis call, so a probe costs nothing)."""
    return web.json_response({"ok": True})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Readiness: Redis and PostgreSQL reachable, migrations at head: 200, else 503 (public: the checks'
    details are in the log, never in the answer)."""
    status, body = public_answer(await asyncio.to_thread(request.app[CONSOLE].ready))
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})
