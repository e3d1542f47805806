"""Helpers of the console tests: the ``world`` fixture (a console app on the test's PostgreSQL and Redis),
seed a catalogue, users and dead letters; log in; read tokens from pages; read what the console did."""
from __future__ import annotations

import asyncio
import re
import time
import uuid
from types import SimpleNamespace

import aiohttp
import dramatiq
import pytest
import redis as redis_lib
from aiohttp.test_utils import TestServer
from dramatiq import Message
from pydantic import SecretStr
from sqlalchemy import text

from db import users
from db.engine import session_factory
from db.snapshot import ensure_marketplace
from runtime import resources
from runtime.dlq import DeadLetterQueues
from runtime.queues import BROKER_NAMESPACE
from runtime.settings import Settings, get_settings
from workers.console.app import build_console_app

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


SECRETS = {
    "token": "bm-token-5ecr3t-value",
    "webhook": "https://hooks.example.com/services/T000/B000/webhook-5ecr3t",
    "credential": "shpat_credential-5ecr3t",
    "url_password": "urlpass-5ecr3t",
    "producer": "producer-key-5ecr3t",
}


@pytest.fixture
def world(monkeypatch, database_url, redis_url):
    """The console on this test's database and Redis, the fleet's stub broker, a catalogue and one user per role."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", "")
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    from workers import fleet

    broker = fleet.broker
    broker.flush_all()
    redis = redis_lib.Redis.from_url(redis_url)
    sessions = session_factory(database_url)
    settings = Settings(backmarket_token=SecretStr(SECRETS["token"]),
                        stock_alert_webhook_url=SecretStr(SECRETS["webhook"]),
                        producer_hmac_key=SecretStr(SECRETS["producer"]),
                        console_login_max_failures=3, console_login_max_failures_per_address=6,
                        console_login_delay_s=60)  # waits far longer than any test takes
    environ = {"STOCKSYNC_ACCOUNT_SHOP_TOKEN": SECRETS["credential"]}
    for role in ("viewer", "operator", "admin"):
        add_user(sessions, role, role)
    add_user(sessions, "other", "viewer")
    variation_id = add_variation(sessions, "IPHONE13-128-BLK", title="iPhone 13 128 GB black")
    with sessions() as session:
        from db import accounts

        accounts.add_account(session, platform="shopify", code="shop-eu", credentials_env="STOCKSYNC_ACCOUNT_SHOP_TOKEN",
                             base_url="https://shop-eu.myshopify.com")
        # A base URL written before the rules (a store of before accounts) may carry a password: never shown.
        session.execute(text("UPDATE marketplaces SET base_url = :u WHERE code = 'shop-eu'"),
                        {"u": f"https://ops:{SECRETS['url_password']}@shop-eu.myshopify.com/"})
        session.commit()
    state = SimpleNamespace(broker=broker, redis=redis, sessions=sessions, settings=settings, environ=environ,
                            variation_id=variation_id,
                            dead_letters=DeadLetterQueues(redis, notes_namespace=settings.redis_namespace))
    # ``changes``: settings of this app only (``run(world, scenario, console_secure_cookies=True)``).
    state.app = lambda **changes: build_console_app(settings.model_copy(update=changes), sessions=sessions,
                                                    redis=redis, broker=broker, dead_letters=state.dead_letters,
                                                    environ=environ)
    yield state
    broker.flush_all()
    redis.close()
    get_settings.cache_clear()
    resources.database_url.cache_clear()


def run(world, scenario, **changes):
    """Run ``scenario(server)`` on a test server of a fresh console app (with these settings changed)."""
    async def go():
        server = TestServer(world.app(**changes))
        await server.start_server()
        try:
            return await scenario(server)
        finally:
            await server.close()

    return asyncio.run(go())


async def client_of(server, username: str | None = None) -> aiohttp.ClientSession:
    """A browser of its own (cookie jar) on ``server``; logged in as ``username`` if given."""
    client = aiohttp.ClientSession(base_url=str(server.make_url("/")), cookie_jar=aiohttp.CookieJar(unsafe=True))
    if username:
        response = await login(client, username)
        assert response.status == 303, (response.status, await response.text())
    return client


def pages_as(world, username: str, *paths: str) -> dict[str, tuple[int, str]]:
    """GET each of ``paths`` as ``username`` (logged in once) on a fresh console: path -> (status, body)."""
    async def scenario(server):
        client = await client_of(server, username)
        answers = {}
        for path in paths:
            response = await client.get(path)
            answers[path] = (response.status, await response.text())
        await client.close()
        return answers

    return run(world, scenario)


def enqueued(broker) -> list[Message]:
    return [Message.decode(raw) for queue in broker.queues.values() for raw in list(queue.queue)]


def audit_rows(world, **where) -> list:
    with world.sessions() as session:
        rows = session.execute(text("SELECT username, action, arguments, outcome, detail FROM console_audit "
                                    "ORDER BY id")).all()
    return [row for row in rows if all(getattr(row, key) == value for key, value in where.items())]


def ledger_rows(world, change_type: str) -> list[tuple[str, str]]:
    """(actor, reference) of the ledger rows of ``change_type``."""
    with world.sessions() as session:
        return [tuple(row) for row in session.execute(text(
            "SELECT actor, reference FROM stock_ledger WHERE change_type = :t ORDER BY id"), {"t": change_type})]


def actions(world) -> list[tuple[str, str, str, dict]]:
    """(audit name, path, least role, form) of every action the console has."""
    return [
        ("stock.topup", "/stock/topup", "operator",
         {"variation_id": world.variation_id, "marketplace": "backmarket", "quantity": "2", "reference": "PO-{n}"}),
        ("stock.adjust", "/stock/adjust", "operator",
         {"variation_id": world.variation_id, "marketplace": "backmarket", "change": "-1", "reference": "ADJ-{n}"}),
        ("stock.refresh", "/stock/refresh", "operator", {"variation_id": world.variation_id, "marketplace": "backmarket"}),
        ("sync.start", "/syncs/start", "operator", {"marketplace": "backmarket", "force": "1"}),
        ("dlq.retry", "/deadletters/retry", "operator", {"message_id": "{dead}"}),
        ("dlq.retry_all", "/deadletters/retry-all", "operator", {"queue": "dlq-{n}"}),
        ("dlq.purge", "/deadletters/purge", "operator", {"queue": "dlq-{n}", "confirm": "yes"}),
        ("account.disable", "/accounts/shop-eu/disable", "admin", {}),
        ("account.enable", "/accounts/shop-eu/enable", "admin", {}),
        ("account.add", "/accounts/add", "admin",
         {"platform": "shopify", "code": "shop-{n}", "credentials_env": "STOCKSYNC_ACCOUNT_SHOP_TOKEN",
          "base_url": "https://shop-{n}.myshopify.com", "enabled": "on"}),
        ("alerts.rule_add", "/alerts/rules/add", "admin", {"threshold": "3", "sku": "IPHONE13-128-BLK"}),
        ("alerts.rule_remove", "/alerts/rules/{rule}/remove", "admin", {}),
        ("scheduler.run_now", "/scheduler/stock_sweep/run", "admin", {}),
        ("users.set_role", "/users/other/role", "admin", {"role": "operator"}),
        ("users.disable", "/users/other/disable", "admin", {}),
        ("users.enable", "/users/other/enable", "admin", {}),
    ]
