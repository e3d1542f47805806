"""Supplier products on a real PostgreSQL: set-based batches, what needs details, run completion."""
from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import text

from clients.ingram import PriceAvailability, ProductError, WarehouseStock
from db import supplier
from db.engine import session_factory
from db.syncs import SyncPolicy, begin_run

SUPPLIER = "ingram"
WEEK_S = 7 * 24 * 3600
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def sessions(database_url):
    return session_factory(database_url)


def product(part: str, price: str = "10.00", stock: int = 5, product_class: str = "A", **changes) -> PriceAvailability:
    base = PriceAvailability(
        part_number=part, vendor_part_number=f"V-{part}", customer_part_number=None, upc=None, vendor_name="HP INC",
        description=f"Product {part}", status="Active", status_code=None, status_message=None,
        product_class=product_class, available=stock > 0, total_availability=stock + 1,
        warehouses=(WarehouseStock("10", "Mira Loma, CA", stock, 0), WarehouseStock("20", None, 1, 0)),
        price=Decimal(price), retail_price=None, currency="USD")
    return replace(base, **changes)


def new_run(sessions, batches: int, products: int) -> int:
    with sessions() as session:
        run = begin_run(session, kind="supplier", target=SUPPLIER, trigger="manual", policy=SyncPolicy(0, 0, 900),
                        force=True)
        supplier.set_totals(session, run.id, batches=batches, products=products)
        session.commit()
        return run.id


def finish_running(sessions) -> None:
    with sessions() as session:
        session.execute(text("UPDATE sync_runs SET status = 'succeeded', finished_at = now() WHERE status = 'running'"))
        session.commit()


def apply(sessions, sync_id: int, batch: int, products, errors=(), at: datetime = NOW, max_age_s: float = WEEK_S):
    with sessions() as session:
        result = supplier.apply_batch(session, supplier=SUPPLIER, sync_id=sync_id, batch=batch, fetched_at=at,
                                      products=products, errors=errors, details_max_age_s=max_age_s)
        session.commit()
        return result


def details(sessions, sync_id: int, part: str, body: dict | None = None, at: datetime = NOW):
    with sessions() as session:
        result = supplier.apply_details(session, supplier=SUPPLIER, sync_id=sync_id, part_number=part,
                                        details=body, fetched_at=at)
        session.commit()
        return result


def follow(sessions, *parts: str, sku: str | None = None) -> int:
    with sessions() as session:
        new = supplier.add_products(session, SUPPLIER, [(part, sku) for part in parts])
        session.commit()
        return new


def run_row(sessions, sync_id: int):
    with sessions() as session:
        return session.execute(text("SELECT * FROM sync_runs WHERE id = :s"), {"s": sync_id}).mappings().one()


def stored(sessions, part: str):
    with sessions() as session:
        return session.execute(text("SELECT * FROM supplier_products WHERE part_number = :p"), {"p": part}
                               ).mappings().one()


def test_details_are_asked_only_for_new_changed_or_old_products(sessions):
    parts = ["A1", "B2", "C3", "D4", "E5"]
    follow(sessions, *parts)
    first = new_run(sessions, 1, 5)
    result = apply(sessions, first, 1, [product(p) for p in parts])
    assert (result.applied, sorted(result.detail_parts), result.changed, result.unchanged) == (True, parts, 5, 0)
    for part in parts:
        details(sessions, first, part, {"ingramPartNumber": part})
    assert run_row(sessions, first)["status"] == "succeeded"

    # Next sync: B2's price moved, C3's stock moved in one warehouse, D4's class changed, E5's details
    # are older than the allowed age; A1 is the same.
    second = new_run(sessions, 1, 5)
    with sessions() as session:
        session.execute(text("UPDATE supplier_products SET details_fetched_at = :t WHERE part_number = 'E5'"),
                        {"t": NOW - timedelta(days=8)})
        session.commit()
    result = apply(sessions, second, 1, [product("A1"), product("B2", price="10.50"), product("C3", stock=4),
                                         product("D4", product_class="D"), product("E5")],
                   at=NOW + timedelta(hours=1))
    assert sorted(result.detail_parts) == ["B2", "C3", "D4", "E5"]
    assert (result.changed, result.unchanged) == (3, 2)
    row = stored(sessions, "B2")
    assert row["price"] == Decimal("10.50") and row["last_changed_at"] == NOW + timedelta(hours=1)
    assert stored(sessions, "A1")["last_changed_at"] == NOW and stored(sessions, "A1")["last_seen_sync_id"] == second
    assert stored(sessions, "C3")["warehouses"] == {"10": {"location": "Mira Loma, CA", "available": 4,
                                                           "backordered": 0},
                                                    "20": {"location": None, "available": 1, "backordered": 0}}


def test_product_errors_are_recorded_and_keep_the_last_good_data(sessions):
    follow(sessions, "A1", "B2")
    first = new_run(sessions, 1, 2)
    apply(sessions, first, 1, [product("A1"), product("B2", price="7.00")])
    finish_running(sessions)
    second = new_run(sessions, 1, 2)
    result = apply(sessions, second, 1, [product("A1")], errors=[ProductError("B2", "E", "Invalid SKU")])
    # A1 is unchanged but its details were never fetched: it gets a details call; B2 does not.
    assert (result.products, result.errors, result.detail_parts) == (1, 1, ["A1"])
    row = stored(sessions, "B2")
    assert (row["error"], row["error_code"], row["price"]) == ("Invalid SKU", "E", Decimal("7.00"))
    assert row["last_seen_sync_id"] == first
    run = run_row(sessions, second)
    assert (run["items"], run["missing"], run["details"]["product_errors"]) == (1, 1, 1)
    # Priced again: the error goes.
    finish_running(sessions)
    apply(sessions, new_run(sessions, 1, 2), 1, [product("A1"), product("B2", price="7.00")])
    assert stored(sessions, "B2")["error"] is None


def test_a_redelivered_batch_changes_nothing_and_returns_its_detail_parts(sessions):
    follow(sessions, "A1", "B2")
    sync_id = new_run(sessions, 2, 2)
    first = apply(sessions, sync_id, 1, [product("A1"), product("B2")])
    again = apply(sessions, sync_id, 1, [product("A1", price="99.00"), product("B2")])
    assert (again.applied, sorted(again.detail_parts)) == (False, ["A1", "B2"])
    assert first.applied and stored(sessions, "A1")["price"] == Decimal("10.00")
    run = run_row(sessions, sync_id)
    assert (run["pages_done"], run["items"], run["details"]["details_total"]) == (1, 2, 2)


def test_the_run_closes_with_the_last_details_call_and_counts_each_product_once(sessions):
    follow(sessions, "A1", "B2", "C3")
    sync_id = new_run(sessions, 2, 3)
    apply(sessions, sync_id, 1, [product("A1"), product("B2")])
    assert details(sessions, sync_id, "A1", {"ingramPartNumber": "A1"}).finished is False
    assert details(sessions, sync_id, "A1", {"ingramPartNumber": "A1"}).applied is False  # a second delivery
    apply(sessions, sync_id, 2, [product("C3")])
    assert details(sessions, sync_id, "B2", None).finished is False  # 404: no details
    last = details(sessions, sync_id, "C3", {"ingramPartNumber": "C3"})
    assert (last.applied, last.finished, last.status) == (True, True, "succeeded")
    run = run_row(sessions, sync_id)
    assert run["status"] == "succeeded" and run["finished_at"] is not None
    assert supplier.run_counters(run["details"]) == {"details_total": 3, "details_done": 3, "details_none": 1,
                                                     "details_failed": 0, "product_errors": 0}
    assert (stored(sessions, "B2")["details_status"], stored(sessions, "B2")["details"]) == ("none", None)


def test_a_run_with_nothing_to_fetch_closes_with_its_last_batch(sessions):
    follow(sessions, "A1")
    first = new_run(sessions, 1, 1)
    apply(sessions, first, 1, [product("A1")])
    details(sessions, first, "A1", {})
    second = new_run(sessions, 1, 1)
    result = apply(sessions, second, 1, [product("A1")], at=NOW + timedelta(minutes=5))
    assert (result.detail_parts, result.finished, result.status) == ([], True, "succeeded")


def test_a_details_failure_counts_toward_completion(sessions):
    follow(sessions, "A1", "B2")
    sync_id = new_run(sessions, 1, 2)
    apply(sessions, sync_id, 1, [product("A1"), product("B2")])
    with sessions() as session:
        supplier.record_details_failure(session, supplier=SUPPLIER, sync_id=sync_id, part_number="A1",
                                        error="ServerError: boom")
        session.commit()
    assert stored(sessions, "A1")["error"] == "ServerError: boom"
    assert details(sessions, sync_id, "B2", {}).finished is True


def test_batches_applied_concurrently_close_the_run_exactly_once(sessions):
    parts = [f"P{i:03d}" for i in range(100)]
    follow(sessions, *parts)
    first = new_run(sessions, 10, 100)
    for batch in range(10):
        apply(sessions, first, batch + 1, [product(p) for p in parts[batch * 10:batch * 10 + 10]])
    for part in parts:
        details(sessions, first, part, {})
    second = new_run(sessions, 10, 100)
    finished = []

    def worker(batch: int) -> None:
        result = apply(sessions, second, batch + 1, [product(p) for p in parts[batch * 10:batch * 10 + 10]],
                       at=NOW + timedelta(minutes=1))
        finished.append(result.finished)

    threads = [threading.Thread(target=worker, args=(batch,)) for batch in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert finished.count(True) == 1
    run = run_row(sessions, second)
    assert (run["status"], run["pages_done"], run["items"], run["unchanged"]) == ("succeeded", 10, 100, 100)


def test_products_are_linked_to_variations_by_sku_or_vendor_part_number(sessions):
    with sessions() as session:
        session.execute(text("INSERT INTO variations (sku) VALUES ('MY-SKU'), ('V-B2')"))
        session.commit()
    assert follow(sessions, "A1", sku="MY-SKU") == 1
    assert follow(sessions, "A1", "B2") == 1  # A1 is known: only B2 is new, and A1 keeps its SKU
    assert stored(sessions, "A1")["sku"] == "MY-SKU" and stored(sessions, "A1")["variation_id"] is not None
    assert stored(sessions, "B2")["variation_id"] is None
    sync_id = new_run(sessions, 1, 2)
    apply(sessions, sync_id, 1, [product("A1"), product("B2")])  # B2's vendor part number is a variation's SKU
    with sessions() as session:
        linked = dict(session.execute(text("SELECT p.part_number, v.sku FROM supplier_products p "
                                           "JOIN variations v ON v.id = p.variation_id")).all())
    assert linked == {"A1": "MY-SKU", "B2": "V-B2"}


def test_a_bad_part_number_is_refused_naming_it(sessions):
    with pytest.raises(ValueError, match="'has space' is not a part number"):
        follow(sessions, "has space")
    with sessions() as session:
        assert supplier.part_numbers(session, SUPPLIER) == []
