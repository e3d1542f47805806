"""Refurbed pushes in batches: rows waiting for a push are read in one ``ListOffers`` and written in one
``BatchUpdateOffers`` per 50, against the Refurbed sandbox over HTTP, with real PostgreSQL and Redis.

The drain messages are handled here in order by the small broker loop of tests/test_events_drain.py
(a delayed one runs once its delay has passed; a retried one keeps its message id, as dramatiq's
retry does), so the test sees every message.  Production defaults (``STOCK_DRAIN_BATCH`` 20 among
them), but for a clock skew of 1 s instead of 5 (a deferred row waits 2 skews + 1 s: 3 s, not 11).
"""
from __future__ import annotations

import time
from collections import Counter

import pytest
from sqlalchemy import text

from core.events import StockEvent
from db import events as stock_events
from db.events import record_stock_events
from db.ledger import check_invariant
from pipelines import drain as drains
from runtime import accounts, resources
from runtime.settings import get_settings
from sandbox.refurbed import RefurbedSandbox
from sandbox.server import serve_in_thread
from tests.fleet import seed_catalogue
from tests.test_events_drain import Broker

TOKEN = "batch-push-token"


@pytest.fixture
def world(monkeypatch, database_url, redis_url):
    sandbox = RefurbedSandbox(token=TOKEN)
    sandbox.add_offers(130, seed=15)
    server = serve_in_thread(sandbox.build_app())
    for name, value in {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "REFURBED_BASE_URL": server.url,
                        "REFURBED_TOKEN": TOKEN, "STOCK_EVENT_SKEW_S": "1"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    accounts.forget()
    sessions = resources.sessions()
    offers = [{"id": offer["id"], "sku": offer["sku"], "title": offer.get("instance_name"),
               "quantity": int(offer["stock"])} for offer in sandbox.offers()]
    seed_catalogue(sessions, offers, marketplace="refurbed", name="Refurbed", publication_state=None)
    yield {"sandbox": sandbox, "offers": offers, "sessions": sessions}
    server.stop()
    accounts.forget()
    get_settings.cache_clear()
    resources.database_url.cache_clear()


def topup(world, offers, quantity: int = 2) -> dict[str, int]:
    """Book a top-up of every offer of ``offers``; return the true count of each (by SKU)."""
    with world["sessions"]() as session:
        record_stock_events(session, [StockEvent.from_message("stock_topup", (), dict(
            marketplace="refurbed", sku=offer["sku"], quantity=quantity, reference=f"PO-{offer['sku']}"))
            for offer in offers])
        session.commit()
    return {offer["sku"]: offer["quantity"] + quantity for offer in offers}


def rows(world, skus) -> dict[str, dict]:
    with world["sessions"]() as session:
        found = session.execute(text(
            "SELECT v.sku, s.listed, s.unpushed, s.push_state, s.push_error, s.push_lease_owner "
            "FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = 'refurbed' AND v.sku = ANY(:skus)"),
            {"skus": list(skus)}).mappings().all()
    return {row["sku"]: dict(row) for row in found}


def calls(world, before: dict) -> dict[str, int]:
    """API calls to the sandbox since ``before`` (its ``stats()["requests"]``), by method."""
    after = Counter(world["sandbox"].stats()["requests"])
    after.subtract(before)
    return {method: count for method, count in after.items() if count}


def assert_true(world, truth: dict[str, int]) -> None:
    """Every row, and the sandbox, at the true count; nothing waiting; the ledger whole."""
    found = rows(world, truth)
    assert {sku: row["listed"] for sku, row in found.items()} == truth
    assert {sku: world["sandbox"].stock(sku) for sku in truth} == truth
    assert {(row["push_state"], row["unpushed"], row["push_lease_owner"]) for row in found.values()} == {
        ("pushed", 0, None)}
    with world["sessions"]() as session:
        assert check_invariant(session) == []


def test_120_waiting_rows_are_written_in_3_batch_calls_under_the_learned_rate_limit(world):
    sandbox = world["sandbox"]
    truth = topup(world, world["offers"][:120])
    # Refurbed publishes no numbers: the sandbox allows 2 calls a second and says so in its headers, far
    # below our own limiter (REFURBED_QUOTA_REQUESTS, 10 a second): the headers must hold us back, not 429s.
    sandbox.configure(quota_requests=2, quota_window_s=1.0)
    before = dict(sandbox.stats()["requests"])
    broker = Broker()
    assert drains.request("push", "refurbed", broker.send)
    started = time.monotonic()
    broker.run()
    took = time.monotonic() - started
    # Production's STOCK_DRAIN_BATCH (20) takes a write's worth at a time: 50, 50, 20, each read then written.
    assert calls(world, before) == {"ListOffers": 3, "BatchUpdateOffers": 3}
    assert sandbox.stats()["rate_limited"] == 0
    assert took >= 2.0  # 6 calls at 2 a second: the learned limit paced them
    assert_true(world, truth)
    assert sum(run.rows for run in broker.handled) == 120 and drains.publish_backlog("refurbed").rows == 0


def test_a_line_that_fails_alone_is_retried_as_a_failed_push_and_the_others_are_recorded(world):
    sandbox = world["sandbox"]
    offers = world["offers"][:5]
    truth = topup(world, offers)
    failing = offers[2]["sku"]
    sandbox.fail_offer_updates([failing], status=503)
    before = dict(sandbox.stats()["requests"])
    broker = Broker()
    drains.request("push", "refurbed", broker.send)
    broker.waiting.clear()
    from clients.errors import ServerError

    with pytest.raises(ServerError, match="injected"):
        drains.drain("push", "refurbed", "message-1", broker.send)
    assert calls(world, before) == {"ListOffers": 1, "BatchUpdateOffers": 1}
    found = rows(world, truth)
    # The four other lines landed and are recorded; the failed one is as a failed single push leaves its
    # row: still pending with its unpushed top-up, its error kept, the lease kept for the retry.
    for offer in offers:
        row = found[offer["sku"]]
        if offer["sku"] == failing:
            assert (row["push_state"], row["unpushed"], row["push_lease_owner"]) == ("pending", 2, "message-1")
            assert "ServerError" in row["push_error"] and "injected" in row["push_error"]
            assert sandbox.stock(failing) == offer["quantity"]
        else:
            assert (row["push_state"], row["unpushed"], row["push_error"]) == ("pushed", 0, None)
            assert sandbox.stock(offer["sku"]) == truth[offer["sku"]]
    # dramatiq retries the message (same id) after its back-off: it takes its lease back, reads, writes.
    before = dict(sandbox.stats()["requests"])
    assert drains.drain("push", "refurbed", "message-1", broker.send).rows == 1
    assert calls(world, before) == {"GetOffer": 1, "UpdateOffer": 1}  # a batch of one: today's single push
    assert_true(world, truth)


@pytest.mark.parametrize("when", ["after the read", "after the decision"])
def test_an_order_landing_between_the_read_and_the_write_is_not_erased(world, monkeypatch, when):
    sandbox = world["sandbox"]
    offers = world["offers"][:4]
    truth = topup(world, offers)
    sold = offers[1]["sku"]
    landed = []

    def order() -> None:
        """A unit of ``sold`` sells on Refurbed (its stock drops there) and the fleet books the order."""
        placed = sandbox.place_order([sold], notify=False)
        with world["sessions"]() as session:
            record_stock_events(session, [StockEvent.from_message("order_created", (), dict(
                marketplace="refurbed", order_id=placed["id"], order_line_id=placed["items"][0]["id"], sku=sold,
                quantity=1, event_time=placed["released_at"], source="webhook"))])
            session.commit()
        landed.append(placed["id"])

    if when == "after the read":
        from pipelines import events as pipeline

        real_read = pipeline._read_for_push

        async def read_then_order(*args):
            read = await real_read(*args)
            if not landed:
                order()
            return read

        monkeypatch.setattr(pipeline, "_read_for_push", read_then_order)
    else:
        real_check = stock_events.moved_since_read

        def order_then_check(*args):
            if not landed:
                order()
            return real_check(*args)

        monkeypatch.setattr(stock_events, "moved_since_read", order_then_check)
    truth[sold] -= 1
    broker = Broker()
    drains.request("push", "refurbed", broker.send)
    broker.run()
    assert landed
    # The sold row was not written on a read the order made stale (that write would have erased the
    # sale on Refurbed): it was read again past the skew and written then; the others went at once.
    assert_true(world, truth)
    assert [run.rows for run in broker.handled if run.rows] == [4, 1]
