"""Logins, sessions, CSRF tokens, roles and the audit of every action.

- The session cookie holds a random token (HttpOnly, SameSite=Lax, Secure over HTTPS, a fixed
  lifetime); PostgreSQL keeps its hash, the user's id and the session's CSRF token, and every
  request reads the user's current role and state from there.
- Every POST carries the session's CSRF token (form field ``csrf_token`` or header
  ``X-CSRF-Token``); the login form, before any session, a double-submit cookie's.
- Failed logins are counted in Redis per account and per address within a window; at the limit
  the next attempts are refused without checking the password.
"""
from __future__ import annotations

import functools
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from core.console_rules import allows
from db import users
from workers.console.context import CONSOLE, USER_KEY, error_page, is_loopback

logger = logging.getLogger(__name__)

SESSION_COOKIE = "stocksync_session"
LOGIN_CSRF_COOKIE = "stocksync_login_csrf"
FLASH_COOKIE = "stocksync_flash"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

#: Paths served without a session.
PUBLIC_PATHS = ("/login", "/healthz", "/readyz", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)

#: Form fields never written to the audit (or anywhere).
SECRET_FIELDS = ("csrf_token", "password")


class Refused(Exception):
    """An action refused for a reason the user can fix: shown with ``status`` (a 4xx) and audited."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Done:
    """What a successful action tells the user, and where they go next."""

    message: str
    location: str
    detail: str | None = None


def is_https(request: web.Request) -> bool:
    """Served over HTTPS: directly, or by a TLS proxy on this host saying so (``X-Forwarded-Proto``)."""
    if request.secure:
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return forwarded == "https" and is_loopback(request.remote)




def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
               max_age: int | None = None) -> None:
    """A cookie as every cookie of the console is: HttpOnly, SameSite=Lax, Secure over HTTPS, path /."""
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="Lax",
                        secure=is_https(request))


def csrf_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; a missing token never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def new_token() -> str:
    """A random token for a cookie or a form."""
    return secrets.token_urlsafe(32)


def current_user(request: web.Request) -> users.SessionInfo:
    """The logged-in user of this request (the middleware made sure there is one)."""
    return request[USER_KEY]


def audit_arguments(form) -> dict[str, Any]:
    """A form's fields as the audit keeps them: every field but the secret ones, cut to a sane length."""
    return {key: str(value)[:500] for key, value in form.items() if key not in SECRET_FIELDS}


class LoginThrottle:
    """Failed logins per account and per address in fixed windows (Redis counters with an expiry)."""

    def __init__(self, redis, namespace: str, *, window_s: float, max_per_account: int,
                 max_per_address: int) -> None:
        self.redis = redis
        self.prefix = f"{namespace}:console:login-failures"
        self.window_ms = max(1, int(window_s * 1000))
        self.max_per_account = max_per_account
        self.max_per_address = max_per_address

    def _keys(self, username: str, address: str) -> tuple[str, str]:
        return f"{self.prefix}:account:{username}", f"{self.prefix}:address:{address}"

    def refused(self, username: str, address: str) -> str | None:
        """Why this login may not even be tried now (None: it may)."""
        from core.console_rules import login_refused

        account, by_address = (int(value or 0) for value in self.redis.mget(self._keys(username, address)))
        return login_refused(account, by_address, max_per_account=self.max_per_account,
                             max_per_address=self.max_per_address)

    def failed(self, username: str, address: str) -> None:
        """Count one failed attempt (the window starts at the first failure)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in self._keys(username, address):
                pipe.set(key, 0, nx=True, px=self.window_ms)
                pipe.incr(key)
            pipe.execute()

    def succeeded(self, username: str) -> None:
        """A good password clears its account's count (not the address's: one good account must not
        reset a guesser's budget for the others)."""
        self.redis.delete(self._keys(username, "-")[0])


Handler = Callable[[web.Request], Awaitable[Any]]


def action(name: str, role: str):
    """Make a POST handler an audited action that needs ``role``.

    The handler returns :class:`Done` (answered with a redirect and a flash message) or raises
    :class:`Refused` (answered with its 4xx and the reason).  Either way, and for a user whose role
    does not allow it (403), one audit entry says who, what, with which arguments and how it ended.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            user = current_user(request)
            form = await request.post()
            arguments = {**audit_arguments(form), **{k: v for k, v in request.match_info.items()}}
            console = request.app[CONSOLE]
            if not allows(user.role, role):
                await console.audit(request, name, arguments, "forbidden", f"needs the {role} role")
                raise web.HTTPForbidden(text=f"{name} needs the {role} role; you are {user.role}")
            try:
                done = await handler(request)
            except Refused as refused:
                await console.audit(request, name, arguments, "refused", refused.message)
                return error_page(request, refused.status, refused.message)
            except web.HTTPException:
                raise
            except Exception as error:
                logger.exception("console action %s failed", name)
                await console.audit(request, name, arguments, "error", f"{type(error).__name__}: {error}")
                return error_page(request, 500, f"{name} failed: {type(error).__name__} (see the "
                                                            f"console's log)")
            await console.audit(request, name, arguments, "ok", done.detail or done.message)
            response = web.HTTPSeeOther(done.location)
            set_cookie(request, response, FLASH_COOKIE, _flash_value(done.message))
            raise response

        run.console_action = (name, role)  # type: ignore[attr-defined]
        return run

    return decorate


def _flash_value(message: str) -> str:
    from urllib.parse import quote

    return quote(message[:300], safe="")


def read_flash(request: web.Request) -> str | None:
    """The message the last action left for this page (shown once)."""
    from urllib.parse import unquote

    value = request.cookies.get(FLASH_COOKIE)
    return unquote(value) if value else None


def require_role(role: str):
    """A GET page that needs ``role`` (403 otherwise)."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: web.Request):
            user = current_user(request)
            if not allows(user.role, role):
                raise web.HTTPForbidden(text=f"this page needs the {role} role; you are {user.role}")
            return await handler(request)

        return run

    return decorate
