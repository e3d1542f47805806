"""Logins, sessions, CSRF tokens, roles and the audit of every action.

- The session cookie holds a random token (HttpOnly, SameSite=Lax, a fixed lifetime; ``Secure`` and
  named ``__Host-...`` with ``CONSOLE_SECURE_COOKIES``); PostgreSQL keeps its hash, the user's id and
  the session's CSRF token, and every request reads the user's current role and state from there.
- Every POST carries the session's CSRF token (form field ``csrf_token`` or header
  ``X-CSRF-Token``); the login form, before any session, a double-submit cookie's.
- Login attempts are reserved in Redis before the password is checked (``limits.LoginThrottle``):
  past the free ones, per (account, address) and per address, each waits longer.
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
from workers.console.context import CONSOLE, USER_KEY, error_page

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


#: Prefix of every cookie's name with ``CONSOLE_SECURE_COOKIES``: the browser then keeps it only if it
#: is Secure, for this host (no Domain) and path /, so neither plain HTTP nor a sibling domain can set it.
HOST_PREFIX = "__Host-"

#: ``Strict-Transport-Security`` of every answer with ``CONSOLE_SECURE_COOKIES`` (a year).
HSTS = "max-age=31536000"


def secure(request: web.Request) -> bool:
    """Whether this console is served over HTTPS (``CONSOLE_SECURE_COOKIES``; a proxy terminates TLS)."""
    return request.app[CONSOLE].settings.console_secure_cookies


def cookie_name(request: web.Request, name: str) -> str:
    """A cookie's name as this console sets and reads it (``__Host-`` prefixed when secure)."""
    return HOST_PREFIX + name if secure(request) else name


def get_cookie(request: web.Request, name: str) -> str | None:
    """The value of cookie ``name`` (one of the names above) this request carries."""
    return request.cookies.get(cookie_name(request, name))


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
               max_age: int | None = None) -> None:
    """A cookie as every cookie of the console is: HttpOnly, SameSite=Lax, path /, Secure when secure."""
    response.set_cookie(cookie_name(request, name), value, max_age=max_age, path="/", httponly=True,
                        samesite="Lax", secure=secure(request))


def del_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    """Remove cookie ``name`` (with the attributes it was set with: a ``__Host-`` one needs Secure)."""
    response.del_cookie(cookie_name(request, name), path="/", secure=secure(request), httponly=True,
                        samesite="Lax")


def csrf_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; a missing token never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def new_token() -> str:
    """A random token for a cookie or a form."""
    return secrets.token_urlsafe(32)


#: The largest form body (the app's own limit is an upload's: ``UPLOAD_ENVELOPE`` past ``STOCK_IMPORT_MAX_BYTES``).
MAX_FORM_BYTES = 256 * 1024
UPLOAD_ENVELOPE = 64 * 1024


def body_limit(request: web.Request) -> int:
    """The largest body this request's route takes: a form's, or an upload's for a handler marked ``takes_upload``."""
    if getattr(request.match_info.handler, "takes_upload", False):
        return request.app[CONSOLE].settings.stock_import_max_bytes + UPLOAD_ENVELOPE
    return MAX_FORM_BYTES


async def read_form(request: web.Request):
    """The request's form fields; a body that is no readable form is the client's error (400), never a 500."""
    size, limit = request.content_length, body_limit(request)
    if size is not None and size > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    try:
        return await request.post()
    except web.HTTPException:
        raise  # too large (413)
    except Exception as error:  # a broken multipart or urlencoded body: aiohttp raises various errors
        raise web.HTTPBadRequest(text=f"the form could not be read ({type(error).__name__}): send it again "
                                      "from the page") from None


def current_user(request: web.Request) -> users.SessionInfo:
    """The logged-in user of this request (the middleware made sure there is one)."""
    return request[USER_KEY]


def audit_arguments(form) -> dict[str, Any]:
    """A form's fields as the audit keeps them: every field but the secret ones, cut to a sane length."""
    return {key: (f"file {value.filename!r}" if isinstance(value, web.FileField) else str(value))[:500]
            for key, value in form.items() if key not in SECRET_FIELDS}


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
            form = await read_form(request)
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

    value = get_cookie(request, FLASH_COOKIE)
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
