"""What every console page reads and acts through: the :class:`Console` of the app, and who is asking."""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import aiohttp_jinja2
import dramatiq
from aiohttp import web

from core import console_rules
from db import users
from runtime.settings import Settings


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    """An HTML page saying what went wrong (escaped), with ``status``."""
    response = aiohttp_jinja2.render_template("error.html", request, {"status": status, "message": message})
    response.set_status(status)
    return response


USER_KEY = web.RequestKey("console_user", users.SessionInfo)


def client_address(request: web.Request) -> str:
    """Who is asking: the peer, or behind a trusted proxy (``CONSOLE_TRUSTED_PROXIES``) the right-most
    ``X-Forwarded-For`` address that is not one (:func:`core.console_rules.client_address`)."""
    return console_rules.client_address(request.remote, request.headers.getall("X-Forwarded-For", []),
                                        request.app[CONSOLE].trusted_proxies)


@dataclass
class Console:
    """What the pages read and act through."""

    settings: Settings
    sessions: Callable
    redis: Any
    broker: dramatiq.Broker
    dead_letters: Any  # runtime.dlq.DeadLetterQueues, or None without Redis
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    throttle: Any = None  # limits.LoginThrottle
    bursts: Any = None  # limits.AuditBursts
    #: ``CONSOLE_TRUSTED_PROXIES``, parsed once.
    trusted_proxies: tuple = ()
    ready: Callable[[], list] = list  # runtime.health.ReadinessProbe: /readyz

    async def read(self, fn: Callable, *args, **kwargs):
        """``fn(session, *args, **kwargs)`` in a worker thread, rolled back (a read)."""
        def go():
            with self.sessions() as session:
                return fn(session, *args, **kwargs)

        return await asyncio.to_thread(go)

    async def write(self, fn: Callable, *args, **kwargs):
        """``fn(session, *args, **kwargs)`` in a worker thread, committed if it returns."""
        def go():
            with self.sessions() as session:
                result = fn(session, *args, **kwargs)
                session.commit()
                return result

        return await asyncio.to_thread(go)

    async def call(self, fn: Callable, *args, **kwargs):
        """Any blocking call (Redis, the broker) in a worker thread."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def audit(self, request: web.Request, action: str, arguments: dict, outcome: str,
                    detail: str | None = None, username: str | None = None) -> None:
        """One audit entry for ``action`` by this request's user (or ``username``)."""
        user = request.get(USER_KEY)
        await self.write(users.record_audit, username=username or (user.username if user else None), action=action,
                         arguments=arguments, outcome=outcome, detail=detail,
                         address=client_address(request))

    async def audit_burst(self, request: web.Request, action: str, arguments: dict, outcome: str,
                          detail: str, username: str | None = None) -> None:
        """Audit an unauthenticated refusal once per (outcome, address) and window (``CONSOLE_AUDIT_BURST_WINDOW_S``):
        a flood of them must not flood the audit.  The row says how many before it were not written."""
        suppressed = await self.call(self.bursts.admit, f"{action}:{outcome}", client_address(request))
        if suppressed is None:
            return
        if suppressed:
            detail = f"{detail} ({suppressed} more from this address since the last such entry were not audited)"
        await self.audit(request, action, arguments, outcome, detail, username=username)


CONSOLE = web.AppKey("console", Console)
