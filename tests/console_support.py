"""Helpers of the console tests: seed a catalogue, users and dead letters; log in; read tokens from pages."""
from __future__ import annotations

import re
import time
import uuid

import dramatiq
from sqlalchemy import text

from db import users
from db.snapshot import ensure_marketplace
from runtime.queues import BROKER_NAMESPACE

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def add_user(sessions, username: str, role: str, password: str = PASSWORD) -> None:
    with sessions() as session:
        users.add_user(session, username, password, role)
        session.commit()


def add_variation(sessions, sku: str, *, title: str = "A phone", listed: int = 5, marketplace: str = "backmarket",
                  listing: str | None = None) -> int:
    """A variation with a stock row (and a listing, so a refresh can read it) on ``marketplace``."""
    with sessions() as session:
        marketplace_id = ensure_marketplace(session, marketplace, marketplace.title())
        variation_id = session.execute(text(
            "INSERT INTO variations (sku, title, total_stock) VALUES (:sku, :title, :q) RETURNING id"),
            {"sku": sku, "title": title, "q": listed}).scalar_one()
        session.execute(text("INSERT INTO marketplace_stock (variation_id, marketplace_id, listed, last_api_quantity, "
                             "last_synced_at) VALUES (:v, :m, :q, :q, now())"),
                        {"v": variation_id, "m": marketplace_id, "q": listed})
        session.execute(text("INSERT INTO listings (marketplace_id, external_id, variation_id, sku, title, api_quantity) "
                             "VALUES (:m, :e, :v, :sku, :title, :q)"),
                        {"m": marketplace_id, "e": listing or str(uuid.uuid4()), "v": variation_id, "sku": sku,
                         "title": title, "q": listed})
        session.commit()
        return variation_id


def add_dead_letter(redis, queue: str, actor: str, *args, error: str = "RuntimeError: boom",
                    namespace: str = "stocksync") -> dramatiq.Message:
    """A dead letter as dramatiq's Redis broker leaves one (plus the error the failure recorder keeps)."""
    import json

    from runtime.dlq import error_key

    message = dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options={})
    redis_id = str(uuid.uuid4())
    message = message.copy(options={"redis_message_id": redis_id})
    redis.zadd(f"{BROKER_NAMESPACE}:{queue}.XQ", {redis_id: int(time.time() * 1000)})
    redis.hset(f"{BROKER_NAMESPACE}:{queue}.XQ.msgs", redis_id, message.encode())
    redis.set(error_key(namespace, message.message_id), json.dumps({"error": error, "failed_attempts": 1}))
    return message


def csrf_of(page: str) -> str:
    """The CSRF token a page's forms carry."""
    found = CSRF.search(page)
    assert found, "no CSRF token on the page"
    return found.group(1)


async def login(client, username: str, password: str = PASSWORD):
    """Log ``client`` in through the form; return the response of the POST (not followed)."""
    page = await (await client.get("/login")).text()
    return await client.post("/login", data={"username": username, "password": password, "csrf_token": csrf_of(page)},
                             allow_redirects=False)


async def session_csrf(client) -> str:
    """The logged-in session's CSRF token (read from the overview's logout form)."""
    response = await client.get("/audit")
    assert response.status == 200, response.status
    return csrf_of(await response.text())
