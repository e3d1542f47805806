"""What every console page reads and acts through: the :class:`Console` of the app, and who is asking."""
from __future__ import annotations

import asyncio
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import aiohttp_jinja2
import dramatiq
from aiohttp import web

from db import users
from runtime.settings import Settings


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    """An HTML page saying what went wrong (escaped), with ``status``."""
    response = aiohttp_jinja2.render_template("error.html", request, {"status": status, "message": message})
    response.set_status(status)
    return response


USER_KEY = web.RequestKey("console_user", users.SessionInfo)


def client_address(request: web.Request) -> str:
    """The client's address; behind a proxy on this host, the one it forwards (``X-Forwarded-For``'s last)."""
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded and is_loopback(request.remote):
        return forwarded.split(",")[-1].strip()[:64] or (request.remote or "?")
    return request.remote or "?"


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass
class Console:
    """What the pages read and act through."""

    settings: Settings
    sessions: Callable
    redis: Any
    broker: dramatiq.Broker
    dead_letters: Any  # runtime.dlq.DeadLetterQueues, or None without Redis
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    throttle: Any = None  # security.LoginThrottle
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


CONSOLE = web.AppKey("console", Console)
