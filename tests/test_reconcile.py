"""Reconciliation in one process: real PostgreSQL, the sandbox over HTTP, fakeredis for the limiter.

Dry run against a real run, the bulk page walk (never one call per listing), the report, the
corrections as ledger entries, the alert above the threshold, and the refusal on a broken ledger.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from core.events import StockEvent
from db.events import record_stock_events
from db.ledger import check_invariant
from db.reconcile import discrepancy_report
from db.snapshot import PageItem, apply_page, ensure_marketplace
from db.syncs import SyncPolicy, begin_run
from runtime import alert_hooks, resources
from runtime.settings import get_settings
from sandbox.backmarket import BackMarketSandbox
from sandbox.server import serve_in_thread

TOKEN = "reconcile-token"
LISTINGS = 120  # three pages of 50


@pytest.fixture
def world(monkeypatch, database_url):
    sandbox = BackMarketSandbox(listings=LISTINGS, seed=12, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    for name, value in {"DATABASE_URL": database_url, "REDIS_URL": "", "BACKMARKET_BASE_URL": server.url,
                        "BACKMARKET_TOKEN": TOKEN, "BACKMARKET_QUOTA_REQUESTS": "1000",
                        "BACKMARKET_QUOTA_WINDOW_S": "1"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    resources.sync_redis().flushall()
    sessions = resources.sessions()
    listings = [sandbox.listing(i) for i in range(LISTINGS)]
    with sessions() as session:
        marketplace_id = ensure_marketplace(session, "backmarket", "Back Market")
        session.commit()
        run = begin_run(session, kind="stock", target="backmarket", trigger="manual", policy=SyncPolicy(0, 0, 900))
        apply_page(session, marketplace_id=marketplace_id, sync_id=run.id, page=1, total_pages=1,
                   fetched_at=datetime.now(timezone.utc) - timedelta(hours=1),
                   items=[PageItem(l["id"], l["listing_id"], l["sku"], l["title"], l["quantity"], 2, l["price"],
                                   l["currency"]) for l in listings])
        session.commit()
    alerts = []
    handler = alert_hooks.add_alert_handler(lambda kind, message, details: alerts.append((kind, message, details)))
    yield {"sandbox": sandbox, "listings": listings, "sessions": sessions, "alerts": alerts}
    alert_hooks.remove_alert_handler(handler)
    server.stop()
    get_settings.cache_clear()
    resources.database_url.cache_clear()


def local(world) -> dict[str, int]:
    with world["sessions"]() as session:
        return dict(session.execute(text(
            "SELECT l.external_id, s.listed FROM listings l JOIN marketplace_stock s "
            "ON s.variation_id = l.variation_id AND s.marketplace_id = l.marketplace_id")).all())


def ledger_count(world, change_type: str) -> int:
    with world["sessions"]() as session:
        return session.execute(text("SELECT count(*) FROM stock_ledger WHERE change_type = :t"),
                               {"t": change_type}).scalar()


def reconcile(**kwargs):
    from pipelines.reconcile import run_reconciliation

    return run_reconciliation("backmarket", **kwargs)


def book(world, event: StockEvent) -> None:
    with world["sessions"]() as session:
        record_stock_events(session, [event])
        session.commit()


def test_dry_run_reports_and_alerts_real_run_corrects_then_nothing_is_left(world):
    sandbox, listings = world["sandbox"], world["listings"]
    moved = sandbox.change_stock(7, rng_seed=5)                       # the marketplace drifted on 7 listings
    # A top-up not pushed yet: the marketplace does not know it, which is not a difference.
    pending = next(l for l in listings if l["id"] not in moved)
    book(world, StockEvent.of("stock_topup", marketplace="backmarket", sku=pending["sku"], quantity=3,
                              event_time=datetime.now(timezone.utc), reference="PO-9"))
    before = local(world)
    sandbox.reset_stats()

    dry = reconcile(dry_run=True, threshold=5)
    assert (dry.status, dry.dry_run, dry.pages, dry.listings) == ("succeeded", True, 3, LISTINGS)
    # The top-up counts on top of the marketplace's count: not a difference, and not deferred either.
    assert (dry.discrepancies, dry.corrected, dry.deferred, dry.alert) == (7, 0, 0, True)
    assert local(world) == before and ledger_count(world, "reconciliation") == 0
    with world["sessions"]() as session:
        report = {r.listing: (r.local, r.marketplace, r.difference, r.corrected)
                  for r in discrepancy_report(session, dry.run_id)}
    assert report == {uuid: (before[uuid], quantity, quantity - before[uuid], False)
                      for uuid, quantity in moved.items()}
    assert [kind for kind, _, _ in world["alerts"]] == ["reconciliation_discrepancies"]
    # The bulk page walk: ceil(120 / 50) listing pages, not one call per listing.
    assert sandbox.stats()["by_endpoint"] == {"GET /ws/listings": 3}

    real = reconcile(dry_run=False, threshold=100)
    assert (real.discrepancies, real.corrected, real.alert) == (7, 7, False)
    assert ledger_count(world, "reconciliation") == 7
    after = local(world)
    assert {uuid: after[uuid] for uuid in moved} == moved
    assert after[pending["id"]] == before[pending["id"]]               # kept on top, not overwritten
    with world["sessions"]() as session:
        assert check_invariant(session) == []
        assert all(r.corrected for r in discrepancy_report(session, real.run_id))
    assert len(world["alerts"]) == 1

    again = reconcile(dry_run=False, threshold=0)
    assert (again.discrepancies, again.alert) == (0, False)


def test_an_oversold_row_the_marketplace_shows_at_zero_is_no_difference(world):
    listing = world["listings"][0]
    world["sandbox"].set_quantity(listing["id"], 0)
    quantity = local(world)[listing["id"]]
    book(world, StockEvent.of("order_created", marketplace="backmarket", sku=listing["sku"], quantity=quantity + 2,
                              event_time=datetime.now(timezone.utc) - timedelta(minutes=5), order_id="O1",
                              order_line_id="OL1"))
    summary = reconcile(dry_run=False, threshold=0)
    assert (summary.discrepancies, local(world)[listing["id"]]) == (0, -2)  # the 2 units owed stay owed


def test_a_broken_ledger_is_not_reconciled_and_alerts(world):
    with world["sessions"]() as session:
        session.execute(text("UPDATE marketplace_stock SET listed = listed + 1 WHERE id = 1"))
        session.commit()
    world["sandbox"].reset_stats()
    summary = reconcile(dry_run=False)
    assert summary.status == "failed" and "ledger invariant is broken on 1 stock rows" in summary.error
    assert world["sandbox"].stats()["total_requests"] == 0
    assert [kind for kind, _, _ in world["alerts"]] == ["ledger_invariant"]


def test_cli_prints_the_differences_and_exits_zero(world):
    from workers.cli import main

    moved = world["sandbox"].change_stock(2, rng_seed=9)
    result = CliRunner().invoke(main, ["reconcile", "backmarket", "--dry-run", "--threshold", "1"])
    assert result.exit_code == 0, result.output
    assert "ALERT" in result.output and "largest differences (2 of 2)" in result.output
    sku_of = {l["id"]: l["sku"] for l in world["listings"]}
    assert all(sku_of[uuid] in result.output for uuid in moved)
