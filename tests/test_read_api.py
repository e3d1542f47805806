"""The read API of ``stocksync serve``: stock per marketplace from PostgreSQL, no marketplace call,
to a caller with a read token only."""
from __future__ import annotations

import http.client
import json
from datetime import datetime, timezone
from urllib.parse import quote, urlsplit

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import text

from db.engine import session_factory
from db.snapshot import PageItem, apply_page, ensure_marketplace
from db.syncs import SyncPolicy, begin_run
from runtime.settings import Settings
from sandbox.server import serve_in_thread
from workers.intake.app import build_intake_app

FETCHED_AT = datetime(2026, 11, 23, 8, 30, tzinfo=timezone.utc)

#: The read tokens the intakes of the tests are given: the new one and the old one of a rotation.
READ_TOKEN = "read-token-new-3b9f0c1d2e"
OLD_READ_TOKEN = "read-token-old-7a1e5d4c3b"
READ_API_TOKENS = f"{READ_TOKEN}, {OLD_READ_TOKEN}"


def get(server, path: str, token: str | None = READ_TOKEN, headers: dict | None = None) -> tuple[int, dict]:
    """GET ``path`` with ``Authorization: Bearer <token>`` (none when ``token`` is None)."""
    return get_answer(server, path, token, headers)[:2]


def get_answer(server, path: str, token: str | None = READ_TOKEN, headers: dict | None = None
               ) -> tuple[int, dict, http.client.HTTPMessage]:
    """GET ``path`` (see :func:`get`): status, JSON body and headers."""
    parts = urlsplit(server.url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    sent = {**({"Authorization": f"Bearer {token}"} if token is not None else {}), **(headers or {})}
    try:
        connection.request("GET", path, headers=sent)
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.headers
    finally:
        connection.close()


@pytest.fixture
def seeded(database_url):
    """Two SKUs synced from Back Market, one of them also on Refurbed (a stock row with no sync yet)."""
    sessions = session_factory(database_url)
    with sessions() as session:
        backmarket = ensure_marketplace(session, "backmarket", "Back Market")
        refurbed = ensure_marketplace(session, "refurbed", "Refurbed")
        session.commit()
        run = begin_run(session, kind="stock", target="backmarket", trigger="manual", policy=SyncPolicy(0, 0, 900))
        items = [PageItem("0f0e3c2a-0000-5000-8000-000000000001", 100001, "SKU-ONE", "Phone one", 7, 2, "99.00", "EUR"),
                 PageItem("0f0e3c2a-0000-5000-8000-000000000002", 100002, "SKU TWO/ü", "Phone two", 0, 2, None, None)]
        apply_page(session, marketplace_id=backmarket, sync_id=run.id, page=1, fetched_at=FETCHED_AT, items=items,
                   total_pages=1, total_items=2)
        session.execute(text("INSERT INTO marketplace_stock (variation_id, marketplace_id, listed, locked) "
                             "SELECT id, :mp, 3, 1 FROM variations WHERE sku = 'SKU-ONE'"), {"mp": refurbed})
        session.commit()
        ids = dict(session.execute(text("SELECT sku, id FROM variations")).all())
    app = build_intake_app(Settings(intake_read_pool_size=2, read_api_tokens=READ_API_TOKENS), broker=StubBroker(),
                           database_url=database_url)
    server = serve_in_thread(app)
    yield server, ids
    server.stop()


def test_stock_by_sku_has_every_marketplace_with_its_last_sync(seeded):
    server, ids = seeded
    status, body = get(server, "/stock?sku=SKU-ONE")
    assert status == 200
    assert body == {
        "variation_id": ids["SKU-ONE"], "sku": "SKU-ONE", "total_stock": 7,
        "marketplaces": {
            "backmarket": {"listed": 7, "locked": 0, "available": 7, "last_api_quantity": 7,
                           "last_synced_at": FETCHED_AT.isoformat(), "updated_at": body["marketplaces"]
                           ["backmarket"]["updated_at"]},
            "refurbed": {"listed": 3, "locked": 1, "available": 2, "last_api_quantity": None,
                         "last_synced_at": None, "updated_at": body["marketplaces"]["refurbed"]["updated_at"]},
        },
    }


def test_stock_by_variation_id_and_odd_skus(seeded):
    server, ids = seeded
    status, body = get(server, f"/variations/{ids['SKU TWO/ü']}/stock")
    assert status == 200 and body["sku"] == "SKU TWO/ü" and body["marketplaces"]["backmarket"]["listed"] == 0
    assert get(server, f"/stock?sku={quote('SKU TWO/ü')}")[1] == body


def test_unknown_and_malformed_lookups_are_clear_4xx(seeded):
    server, _ = seeded
    status, body = get(server, "/stock?sku=NOPE")
    assert status == 404 and "NOPE" in body["error"]
    assert get(server, "/stock")[0] == 400
    assert get(server, "/stock?sku=%20")[0] == 400
    assert get(server, "/variations/999999/stock")[0] == 404
    status, body = get(server, "/variations/abc/stock")
    assert status == 400 and "positive integer" in body["error"]


def test_many_reads_use_the_pool_and_prepared_statements(seeded):
    server, ids = seeded
    for _ in range(30):  # past psycopg's prepare threshold on every pooled connection
        assert get(server, "/stock?sku=SKU-ONE")[0] == 200
        assert get(server, f"/variations/{ids['SKU-ONE']}/stock")[0] == 200


def test_a_read_while_the_database_is_unreachable_answers_503_with_retry_after():
    from runtime.local_servers import free_port

    # Nothing listens on this port: the read pool cannot connect, as during a PostgreSQL outage.
    down = f"postgresql+psycopg://stocksync@127.0.0.1:{free_port()}/stocksync"
    server = serve_in_thread(build_intake_app(Settings(intake_read_pool_size=1, read_api_tokens=READ_API_TOKENS),
                                              broker=StubBroker(), database_url=down))
    try:
        status, body, headers = get_answer(server, "/stock?sku=SKU-ONE")
        assert status == 503, body
        assert headers["Retry-After"] and "unavailable" in body["error"]
    finally:
        server.stop()


# -- the credential --------------------------------------------------------------------------------


def test_the_read_api_needs_a_valid_bearer_token(seeded):
    server, ids = seeded
    for path in ("/stock?sku=SKU-ONE", f"/variations/{ids['SKU-ONE']}/stock"):
        status, body, headers = get_answer(server, path, token=None)
        assert status == 401 and "Authorization: Bearer" in body["error"] and "SKU-ONE" not in json.dumps(body)
        assert headers["WWW-Authenticate"].startswith("Bearer ")
        status, body = get(server, path, token="read-token-guessed-0000")
        assert status == 401 and body == {"error": "the bearer token is not valid"}
        status, body = get(server, path, token=None, headers={"Authorization": f"Basic {READ_TOKEN}"})
        assert status == 401 and "must be Bearer <token>" in body["error"]
        assert get(server, path, token=READ_TOKEN[:-1])[0] == 401  # a prefix is not the token
        assert get(server, path)[0] == 200


def test_during_a_rotation_the_old_and_the_new_token_both_read(seeded, database_url):
    server, _ = seeded
    assert get(server, "/stock?sku=SKU-ONE", token=OLD_READ_TOKEN)[0] == 200
    assert get(server, "/stock?sku=SKU-ONE", token=READ_TOKEN)[0] == 200
    # The rotation done: the old token is dropped from READ_API_TOKENS and refused.
    rotated = serve_in_thread(build_intake_app(Settings(intake_read_pool_size=1, read_api_tokens=READ_TOKEN),
                                               broker=StubBroker(), database_url=database_url))
    try:
        assert get(rotated, "/stock?sku=SKU-ONE", token=OLD_READ_TOKEN)[0] == 401
        assert get(rotated, "/stock?sku=SKU-ONE", token=READ_TOKEN)[0] == 200
    finally:
        rotated.stop()


def test_without_tokens_the_read_api_is_off(database_url):
    server = serve_in_thread(build_intake_app(Settings(intake_read_pool_size=1), broker=StubBroker(),
                                              database_url=database_url))
    try:
        for token in (None, "", READ_TOKEN):
            status, body = get(server, "/stock?sku=SKU-ONE", token=token)
            assert status == 404 and "READ_API_TOKENS is not set" in body["error"]
    finally:
        server.stop()


def test_unknown_or_repeated_query_parameters_are_400(seeded):
    server, ids = seeded
    status, body = get(server, "/stock?sku=SKU-ONE&since=99999999999d")
    assert status == 400 and "unknown query parameter 'since'" in body["error"] and "takes only sku" in body["error"]
    status, body = get(server, f"/variations/{ids['SKU-ONE']}/stock?since=1970-01-01")
    assert status == 400 and "takes no query parameters" in body["error"]
    status, body = get(server, "/stock?sku=SKU-ONE&sku=SKU%20TWO")
    assert status == 400 and "more than once" in body["error"]
    # Checked after the credential: a caller without one learns nothing of the parameters.
    assert get(server, "/stock?since=x", token=None)[0] == 401
