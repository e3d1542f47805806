"""A cursor walk (Refurbed, Shopify's pages; a Shopify bulk file) whose chain is lost mid-way resumes from its last
applied page; one whose fetch is delivered twice runs one chain still (and Back Market's numbered
pages fan out once).

The messages are run by hand (stub broker, no worker) so the test decides what is lost or doubled:
after two pages, the message that carries the chain on vanishes, as with a Redis restart without
persistence.  The resume must fetch the third page from the cursor the second one left, fetch no
applied page again, and the run must close with every offer applied.  A fetch (or a bulk poll)
delivered twice, as a worker killed between its work and its ack leaves it, may fetch its own page
twice, and no other: the vendor's quota pays for one walk.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from collections import Counter

import pytest
from dramatiq.middleware import CurrentMessage
from sqlalchemy import text

from actors import stock_sync
from db.syncs import get_run
from runtime import accounts, resources
from sandbox.server import serve_in_thread
from sandbox.shopify import ShopifySandbox
from tests.in_process import in_process_fleet
from tests.fleet import fleet_env
from tests.sides import BackMarketSide, RefurbedSide, ShopifySide, local_by_sku, sides_env

TOKEN = "cursor-resume-token"
#: Each cursor platform's side with five pages of 10 (Refurbed 45 offers, Shopify 46 variants).
WALKS = {"refurbed": lambda: RefurbedSide(offers=45, seed=9, token=TOKEN),
         "shopify": lambda: ShopifySide(products=23, seed=9, token=TOKEN)}


@pytest.fixture(params=sorted(WALKS))
def walk(monkeypatch, database_url, request):
    with side_fleet(monkeypatch, database_url, WALKS[request.param]()) as walked:
        yield walked


@contextmanager
def side_fleet(monkeypatch, database_url, side):
    """The in-process fleet with ``side``'s account, five pages of 10; yields (side, broker)."""
    server = serve_in_thread(side.app())
    with in_process_fleet(monkeypatch, fleet_env(
            redis_url="", database_url=database_url, **sides_env([(side, server.url)]), quota_requests=1000,
            refurbed_quota_requests=1000, refurbed_page_size=10, shopify_page_size=10, backmarket_page_size=10,
            sync_resume_after_s=60)) as broker:
        side.add_account(resources.sessions(), server.url)
        accounts.forget()  # the account rows are read again with the shop's
        yield side, broker
    server.stop()


def take(broker, queue: str) -> list:
    """The messages waiting on ``queue``, taken off it."""
    from dramatiq import Message

    waiting = broker.queues[queue]
    messages = []
    while not waiting.empty():
        messages.append(Message.decode(waiting.get_nowait()))
        waiting.task_done()  # else the queue counts it unfinished and a later join() waits for it for good
    return messages


def run_message(message) -> None:
    """Run ``message`` as a worker would (its actor sees it as the current message)."""
    actor = stock_sync.fetch_listings_page if message.actor_name == "fetch_listings_page" \
        else stock_sync.apply_listings_batch
    # An async actor's own function (functools.wraps keeps it): run here on a loop of our own.
    fn = getattr(actor.fn, "__wrapped__", actor.fn)
    current = CurrentMessage()
    current.before_process_message(actor.broker, message)
    try:
        result = fn(*message.args, **message.kwargs)
        if asyncio.iscoroutine(result):
            async def go():
                try:
                    await result
                finally:
                    await resources.close_loop_resources()

            asyncio.run(go())
    finally:
        current.after_process_message(actor.broker, message)


def step(broker) -> None:
    """Run what waits: fetches, then applies."""
    for queue in ("stock-fetch", "stock-apply"):
        for message in take(broker, queue):
            run_message(message)


def run_out(broker) -> None:
    """Run what waits, the delayed fetches at once (a bulk poll's), until nothing is left."""
    for _ in range(100):
        fetches = take(broker, "stock-fetch") + take(broker, "stock-fetch.DQ")
        applies = take(broker, "stock-apply")
        if not fetches and not applies:
            return
        for message in fetches + applies:
            run_message(message)
    raise AssertionError("the walk did not end in 100 rounds")


def fetches_per_page(sync_id: int, walked: list) -> Counter:
    """How many times the vendor answered each page, from the cursors it was read from (as applied)."""
    with resources.sessions()() as session:
        done = dict(session.execute(text("SELECT page, next_cursor FROM sync_pages WHERE sync_id = :s"),
                                    {"s": sync_id}).all())
    cursors = [None] + [done[page] for page in range(1, len(done))]
    return Counter(cursors.index(cursor) + 1 for cursor in walked)


def assert_succeeded(sync_id: int, pages: int, items: int) -> None:
    with resources.sessions()() as session:
        run = get_run(session, sync_id)
        assert (run.status, run.pages_done, run.total_pages, run.items) == ("succeeded", pages, pages, items)


def resume_to_the_end(broker, sync_id: int, account: str, lost: list) -> dict[str, int]:
    """Stall the run, resume it (page 3, from the cursor the lost fetch carried), run it out; ``account``'s rows."""
    with resources.sessions()() as session:
        session.execute(text("UPDATE sync_runs SET heartbeat_at = now() - interval '10 minutes' WHERE id = :s"),
                        {"s": sync_id})
        session.commit()
    assert stock_sync.resume_stalled_syncs.fn(account) == 1
    resumed = take(broker, "stock-fetch")
    assert [(m.args[1], m.args[4]) for m in resumed] == [(3, lost[0].args[4])]  # from page 2's cursor
    for message in resumed:
        run_message(message)
    for _ in range(5):
        step(broker)
    return local_by_sku(resources.sessions(), account)


def test_a_lost_chain_resumes_from_the_last_applied_page(walk):
    side, broker = walk
    sync_id = stock_sync.begin_stock_sync(side.account, trigger="manual")
    step(broker)  # page 1
    step(broker)  # page 2
    lost = take(broker, "stock-fetch")  # the fetch of page 3, lost with Redis
    assert [(m.args[1], m.args[4] is not None) for m in lost] == [(3, True)]
    with resources.sessions()() as session:
        assert [row.page for row in session.execute(text("SELECT page FROM sync_pages WHERE sync_id = :s ORDER BY "
                                                         "page"), {"s": sync_id})] == [1, 2]
    walked_before = len(side.sandbox.walk_cursors())

    assert resume_to_the_end(broker, sync_id, side.account, lost) == side.truth()
    with resources.sessions()() as session:
        run = get_run(session, sync_id)
        assert (run.status, run.pages_done, run.total_pages, run.items) == ("succeeded", 5, 5, len(side.items()))
    assert len(side.sandbox.walk_cursors()) - walked_before == 3  # pages 3, 4, 5: none fetched twice


@pytest.mark.parametrize("late", [False, True], ids=["back-to-back", "after-the-chain-moved-on"])
def test_a_fetch_delivered_twice_starts_no_second_chain(walk, late):
    side, broker = walk
    sync_id = stock_sync.begin_stock_sync(side.account, trigger="manual")
    step(broker)  # page 1
    [page_2] = take(broker, "stock-fetch")
    run_message(page_2)
    if late:
        step(broker)  # page 3 fetched, pages 2 and 3 applied: the chain has moved on
    run_message(page_2)  # delivered again: its worker was killed between its work and its ack
    run_out(broker)

    fetches = fetches_per_page(sync_id, side.walk_cursors())
    print(f"{side.account} fetch of page 2 delivered twice ({'late' if late else 'back to back'}): "
          f"vendor fetches per page {dict(sorted(fetches.items()))}")
    assert set(fetches) == {1, 2, 3, 4, 5}
    assert fetches[2] <= 2 and all(count == 1 for page, count in fetches.items() if page != 2), fetches
    assert_succeeded(sync_id, 5, len(side.items()))
    assert local_by_sku(resources.sessions(), side.account) == side.truth()


def test_a_page_1_delivered_twice_fans_the_numbered_pages_out_once(monkeypatch, database_url):
    # Back Market's numbered pages, for comparison: page 1 sends every other page, so its duplicate
    # would fetch the whole catalogue again.
    with side_fleet(monkeypatch, database_url, BackMarketSide(listings=45, seed=9, token=TOKEN)) as (side, broker):
        sync_id = stock_sync.begin_stock_sync(side.account, trigger="manual")
        [page_1] = take(broker, "stock-fetch")
        run_message(page_1)
        run_message(page_1)  # delivered again: its worker was killed between its fan-out and its ack
        run_out(broker)

        requests = side.sandbox.listing_page_requests()
        print(f"backmarket fetch of page 1 delivered twice: {requests} listing page requests for 5 pages")
        assert requests == 6  # page 1 twice, pages 2 to 5 once
        assert_succeeded(sync_id, 5, len(side.items()))
        assert local_by_sku(resources.sessions(), side.account) == side.truth()


@pytest.fixture
def bulk_walk(monkeypatch, database_url):
    # An export done the moment it starts: page 2 must find its file, not a running operation to poll again.
    shop = ShopifySandbox(products=20, variants_per_product=2, locations=1, token=TOKEN, bulk_startup_s=0,
                          bulk_objects_per_s=1e12)
    with bulk_fleet(monkeypatch, database_url, shop) as broker:
        yield shop, broker


@contextmanager
def bulk_fleet(monkeypatch, database_url, shop: ShopifySandbox):
    """The in-process fleet with account ``shop`` walking ``shop``'s bulk export."""
    from db import accounts as account_rows
    from db.engine import session_factory

    server = serve_in_thread(shop.build_app())
    with session_factory(database_url)() as session:
        account_rows.add_account(session, platform="shopify", code="shop", credentials_env="STOCKSYNC_ACCOUNT_SHOP",
                                 base_url=server.url, allow_loopback=True)
        session.commit()
    with in_process_fleet(monkeypatch, {
            "DATABASE_URL": database_url, "REDIS_URL": "", "ACCOUNTS_ALLOW_LOOPBACK": "true",
            "STOCKSYNC_ACCOUNT_SHOP": TOKEN, "SHOPIFY_PAGE_SIZE": "10", "SHOPIFY_BULK_MIN_VARIANTS": "0",
            "SYNC_RESUME_AFTER_S": "60"}) as broker:
        yield broker
    server.stop()
    shop.close()


def test_a_lost_bulk_walk_resumes_at_its_files_byte_offset(bulk_walk):
    shop, broker = bulk_walk
    sync_id = stock_sync.begin_stock_sync("shop", trigger="manual")
    step(broker)  # page 1: the bulk operation started (it exports at once here)
    step(broker)  # page 2: the first ten lines of its file
    lost = take(broker, "stock-fetch")  # the fetch of page 3, lost with Redis
    assert [(m.args[1], m.args[4].startswith("bulk:")) for m in lost] == [(3, True)]

    assert resume_to_the_end(broker, sync_id, "shop", lost) == shop.truth()  # from page 2's byte offset
    with resources.sessions()() as session:
        run = get_run(session, sync_id)
        assert (run.status, run.pages_done, run.items, run.details["catalogue"]) == ("succeeded", 5, 40, "bulk")
    stats = shop.stats()
    # One operation; its file read a page at a time, no page read twice, never with the access token.
    assert stats["query_costs"]["StocksyncBulkRun"]["answers"] == 1
    assert stats["storage"] == {"requests": 4, "with_token": 0}


def test_a_bulk_poll_delivered_twice_polls_and_reads_one_chain(monkeypatch, database_url):
    from clients.shopify_bulk import cursor

    later = [0.0]  # the sandbox's clock runs ahead when the test says the export is done
    shop = ShopifySandbox(products=20, variants_per_product=2, locations=1, token=TOKEN, bulk_startup_s=60,
                          clock=lambda: time.monotonic() + later[0])
    with bulk_fleet(monkeypatch, database_url, shop) as broker:
        sync_id = stock_sync.begin_stock_sync("shop", trigger="manual")
        step(broker)  # page 1: the bulk operation started, running for a minute
        [poll] = take(broker, "stock-fetch")
        run_message(poll)  # page 2: not ready, sent again delayed
        run_message(poll)  # delivered again: its worker was killed between sending it again and its ack
        later[0] = 120.0  # the export is done
        run_out(broker)

        walked = [cursor(number, offset) for number, offset in shop.file_reads()]
        reads = fetches_per_page(sync_id, walked)
        polls = shop.stats()["query_costs"]["StocksyncBulkOperation"]["answers"]
        print(f"bulk poll of page 2 delivered twice: file reads per page {dict(sorted(reads.items()))}, "
              f"{polls} operation queries")
        assert set(reads) == {2, 3, 4, 5}
        assert reads[2] <= 2 and all(count == 1 for page, count in reads.items() if page != 2), reads
        assert_succeeded(sync_id, 5, 40)
        assert local_by_sku(resources.sessions(), "shop") == shop.truth()
