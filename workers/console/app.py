"""The console's aiohttp application: its dependencies, middlewares, templates and routes.

:func:`build_console_app` takes what it reads and acts through (the session factory, a Redis
client, the broker, the dead letters) so tests can hand it theirs; by default the process's.
Database and Redis calls are blocking: they run on the default thread pool, one hop per call.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import aiohttp_jinja2
import dramatiq
import jinja2
from aiohttp import web

from core.console_rules import parse_networks
from db import users
from runtime.heap import settle_for_serving
from runtime.health import ReadinessProbe
from runtime.settings import Settings, get_settings
from workers.console import security
from workers.console.context import CONSOLE, USER_KEY, Console, error_page
from workers.console.filters import FILTERS
from workers.console.limits import AuditBursts, LoginThrottle

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent

#: Content Security Policy of every page: no inline script or style, nothing from elsewhere.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")




def _public(path: str) -> bool:
    return path in security.PUBLIC_PATHS or path.startswith(security.PUBLIC_PREFIXES)


@web.middleware
async def headers_middleware(request: web.Request, handler):
    """Security headers on every answer; pages are never cached (they hold live data and tokens)."""
    refresh_context(request)
    try:
        response = await handler(request)
    except web.HTTPException as error:
        if error.status >= 400 and error.content_type != "text/html" and not request.path.startswith("/static/"):
            response = error_page(request, error.status, error.text or error.reason)
        else:
            raise _with_headers(error, request)
    except security.Refused as refused:  # a page's bad query string
        response = error_page(request, refused.status, refused.message)
    except Exception:
        logger.exception("console failed on %s %s", request.method, request.path)
        response = error_page(request, 500, "internal error (see the console's log)")
    return _with_headers(response, request)


def _with_headers(response, request: web.Request):
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    if not request.path.startswith("/static/"):
        headers.setdefault("Cache-Control", "no-store")
    if security.secure(request):
        headers.setdefault("Strict-Transport-Security", security.HSTS)
    if security.get_cookie(request, security.FLASH_COOKIE) is not None and isinstance(response, web.Response) \
            and response.status == 200 and response.content_type == "text/html":
        security.del_cookie(request, response, security.FLASH_COOKIE)
    return response


async def _prepare_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The same headers on a streamed answer (a download), whose headers are sent before its handler returns."""
    _with_headers(response, request)


@web.middleware
async def session_middleware(request: web.Request, handler):
    """Every path but the public ones needs a live session; every POST its CSRF token."""
    if _public(request.path):
        return await handler(request)
    console = request.app[CONSOLE]
    token = security.get_cookie(request, security.SESSION_COOKIE)
    info = await console.read(users.load_session, token) if token else None
    if info is None:
        if request.method in ("GET", "HEAD"):
            from urllib.parse import quote

            raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")
        raise web.HTTPUnauthorized(text="your session has expired or you are not logged in: log in again")
    request[USER_KEY] = info
    refresh_context(request)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        given = request.headers.get(security.CSRF_HEADER)
        if given is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            given = (await security.read_form(request)).get(security.CSRF_FIELD)
        if not security.csrf_matches(info.csrf_token, given if isinstance(given, str) else None):
            form = await security.read_form(request)
            await console.audit(request, f"{request.method} {request.path}", security.audit_arguments(form),
                                "csrf", "missing or wrong CSRF token")
            raise web.HTTPForbidden(text="missing or wrong CSRF token: reload the page and try again")
    return await handler(request)


def refresh_context(request: web.Request) -> None:
    """What every template sees (the user, their CSRF token, the flash message), set before any handler runs
    so that an error page rendered by a middleware has it too."""
    from core.console_rules import allows

    user = request.get(USER_KEY)
    request[aiohttp_jinja2.REQUEST_CONTEXT_KEY] = {
        "user": user, "csrf": user.csrf_token if user else None, "flash": security.read_flash(request),
        "path": request.path, "now": time.time(), "can": lambda role: bool(user) and allows(user.role, role)}


def build_console_app(settings: Settings | None = None, *, sessions: Callable | None = None, redis=None,
                      broker: dramatiq.Broker | None = None, dead_letters: Any = "default",
                      environ: Mapping[str, str] | None = None) -> web.Application:
    """The console's application.

    Parameters:
      settings: Default: the process's.
      sessions: A SQLAlchemy session factory; default the process's database.
      redis: A blocking Redis client (counters, login throttling, the leader lock); default the process's.
      broker: Where actions enqueue; default the fleet's (``workers.fleet``: every actor declared).
      dead_letters: A :class:`runtime.dlq.DeadLetterQueues`; default one on ``redis`` when the fleet
        runs on Redis, None in the in-process demo (it keeps none).
      environ: Where store credential variables are looked up ("set" or not; never shown).
    """
    from runtime import resources

    settings = settings or get_settings()
    if broker is None:
        from workers import fleet

        broker = fleet.broker
    redis = redis if redis is not None else resources.sync_redis()
    if dead_letters == "default":
        from runtime.dlq import DeadLetterQueues

        dead_letters = None if resources.in_process(settings) else DeadLetterQueues(
            redis, notes_namespace=settings.redis_namespace)
    sessions = sessions or resources.sessions()
    # The probe asks the database the pages read, whichever it is (a test's, the embedded one).
    database_url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    console = Console(settings=settings, sessions=sessions, redis=redis, broker=broker,
                      ready=ReadinessProbe(settings.redis_url, database_url),
                      dead_letters=dead_letters, environ=os.environ if environ is None else environ,
                      throttle=LoginThrottle(redis, settings.redis_namespace, window_s=settings.console_login_window_s,
                                             free_per_account=settings.console_login_max_failures,
                                             free_per_address=settings.console_login_max_failures_per_address,
                                             base_delay_s=settings.console_login_delay_s,
                                             max_delay_s=settings.console_login_max_delay_s),
                      bursts=AuditBursts(redis, settings.redis_namespace,
                                         window_s=settings.console_audit_burst_window_s),
                      trusted_proxies=parse_networks(settings.console_trusted_proxies))
    # The largest body of any route (an upload's); ``security.read_form`` holds every other form to its own.
    app = web.Application(middlewares=[headers_middleware, session_middleware],
                          client_max_size=max(security.MAX_FORM_BYTES,
                                              settings.stock_import_max_bytes + security.UPLOAD_ENVELOPE))
    app[CONSOLE] = console
    app.on_response_prepare.append(_prepare_headers)
    environment = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined)
    environment.filters.update(FILTERS)
    from workers.console.pages import register

    register(app)
    app.router.add_static("/static/", HERE / "static", name="static")
    return app


def run(host: str, port: int, app: web.Application | None = None) -> None:
    """Serve the console until interrupted."""
    app = app or build_console_app()
    settle_for_serving()
    web.run_app(app, host=host, port=port, print=None, access_log=logger)
