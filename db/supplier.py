"""Supplier products (Ingram Micro) and the set-based steps of a supplier sync.

A batch of at most 50 products is one transaction and a few statements whatever its size; only
products new, changed or with old details come back for a details call.  The run is complete when
every batch is applied and every details call it asked for is done (or failed for good), and the
step that completes it closes it in its own transaction.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterable, Mapping, Protocol, Sequence

from sqlalchemy import (BigInteger, Boolean, DateTime, ForeignKey, Integer, Numeric, String, Text, UniqueConstraint,
                        func, text)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from db import syncs
from db.models import Base

#: The ``sync_runs.kind`` of supplier syncs.
SYNC_KIND = "supplier"

#: Counters of a supplier run kept in ``sync_runs.details``.
DETAIL_COUNTERS = ("details_total", "details_done", "details_none", "details_failed", "product_errors")

_PART_NUMBER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$")


class SupplierProduct(Base):
    """A supplier's product the seller follows, as the supplier last reported it."""

    __tablename__ = "supplier_products"
    __table_args__ = (UniqueConstraint("supplier", "part_number"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    #: Which supplier, e.g. ``"ingram"``.
    supplier: Mapped[str] = mapped_column(String(32))
    #: The supplier's part number (Ingram: ``ingramPartNumber``).
    part_number: Mapped[str] = mapped_column(String(64))
    #: The seller's SKU this product supplies, when the seller said so.
    sku: Mapped[str | None] = mapped_column(String(200))
    #: The variation it supplies: by ``sku``, else by the vendor part number equal to a variation's SKU.
    variation_id: Mapped[int | None] = mapped_column(ForeignKey("variations.id"), index=True)
    vendor_part_number: Mapped[str | None] = mapped_column(String(100))
    customer_part_number: Mapped[str | None] = mapped_column(String(100))
    upc: Mapped[str | None] = mapped_column(String(32))
    vendor_name: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    #: The reseller's price (Ingram ``pricing.customerPrice``), the retail price and their currency.
    price: Mapped[Decimal | None] = mapped_column(Numeric(14, 4))
    retail_price: Mapped[Decimal | None] = mapped_column(Numeric(14, 4))
    currency: Mapped[str | None] = mapped_column(String(3))
    available: Mapped[bool | None] = mapped_column(Boolean)
    total_availability: Mapped[int | None] = mapped_column(Integer)
    #: Stock per warehouse: ``{warehouseId: {"location": ..., "available": n, "backordered": n}}``.
    warehouses: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    #: ``productStatus`` (active or not) and Ingram's stocking class (A, B, ..., D discontinued).
    status: Mapped[str | None] = mapped_column(String(64))
    product_class: Mapped[str | None] = mapped_column(String(4))
    #: The item's ``productStatusCode``/``productStatusMessage`` (warnings land here).
    status_code: Mapped[str | None] = mapped_column(String(16))
    status_message: Mapped[str | None] = mapped_column(Text)
    #: The details answer as the supplier gave it (None: never fetched, or the supplier has none).
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    #: ``ok`` or ``none`` (the supplier answered 404: no details).
    details_status: Mapped[str | None] = mapped_column(String(8))
    details_fetched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The sync that last fetched the details: a second delivery of the same call changes nothing.
    details_sync_id: Mapped[int | None] = mapped_column(BigInteger)
    #: The last per-product error of price & availability, kept until the product is priced again.
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: When the supplier last priced it, in which sync, and when its price/availability/status last changed.
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_seen_sync_id: Mapped[int | None] = mapped_column(BigInteger)
    last_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class SupplierSyncBatch(Base):
    """A batch applied by a supplier sync: the key that makes a re-delivered batch change nothing.

    ``detail_parts`` are the products the batch asked details for, so a batch re-delivered after
    its transaction committed (its worker died before enqueueing them) enqueues them again.
    """

    __tablename__ = "supplier_sync_batches"

    sync_id: Mapped[int] = mapped_column(ForeignKey("sync_runs.id", ondelete="CASCADE"), primary_key=True)
    batch: Mapped[int] = mapped_column(Integer, primary_key=True)
    products: Mapped[int] = mapped_column(Integer)
    changed: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    detail_parts: Mapped[list[str]] = mapped_column(ARRAY(Text))
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())



class ProductSnapshot(Protocol):
    """What a batch needs of one priced product (``clients.ingram.PriceAvailability`` is one)."""

    part_number: str
    vendor_part_number: str | None
    customer_part_number: str | None
    upc: str | None
    vendor_name: str | None
    description: str | None
    status: str | None
    status_code: str | None
    status_message: str | None
    product_class: str | None
    available: bool | None
    total_availability: int | None
    price: Decimal | None
    retail_price: Decimal | None
    currency: str | None

    @property
    def warehouses_json(self) -> Mapping[str, Any]: ...


class ProductFailure(Protocol):
    """What a batch needs of a product answered with an error (``clients.ingram.ProductError`` is one)."""

    part_number: str
    code: str | None
    message: str


@dataclass(frozen=True)
class BatchResult:
    """What applying a batch did.  ``applied`` is False for a re-delivered batch (nothing changed)."""

    applied: bool
    detail_parts: list[str]
    products: int = 0
    changed: int = 0
    unchanged: int = 0
    errors: int = 0
    #: True when this batch completed its run and the run was closed in this transaction.
    finished: bool = False
    status: str | None = None


@dataclass(frozen=True)
class DetailsResult:
    """What applying one product's details did.  ``applied`` is False for a second delivery."""

    applied: bool
    finished: bool = False
    status: str | None = None


# -- the followed products -----------------------------------------------------------------------


def check_part_number(part: Any) -> str:
    """Return ``part`` stripped if it looks like a supplier part number; raise ``ValueError`` naming it."""
    if not isinstance(part, str) or not _PART_NUMBER.match(part.strip()):
        raise ValueError(f"{part!r} is not a part number (1 to 64 letters, digits, '.', '_', '/' or '-')")
    return part.strip()


def add_products(session: Session, supplier: str, products: Iterable[tuple[str, str | None]]) -> int:
    """Follow ``(part_number, sku)`` products of ``supplier``; return how many were new.  Does not commit.

    A product already followed keeps its data; a SKU given now replaces the one it had.  Products
    whose SKU is a variation's are linked to it.
    """
    rows: dict[str, str | None] = {}
    for part, sku in products:
        rows[check_part_number(part)] = sku.strip() if isinstance(sku, str) and sku.strip() else None
    if not rows:
        return 0
    params = {"sup": supplier, "parts": list(rows), "skus": list(rows.values())}
    new = session.execute(text(
        "INSERT INTO supplier_products (supplier, part_number, sku) "
        "SELECT :sup, t.part, t.sku FROM unnest(CAST(:parts AS text[]), CAST(:skus AS text[])) AS t(part, sku) "
        "ORDER BY t.part ON CONFLICT (supplier, part_number) DO UPDATE "
        "SET sku = COALESCE(EXCLUDED.sku, supplier_products.sku), updated_at = now() "
        "RETURNING (xmax = 0) AS inserted"), params).scalars().all()
    link_variations(session, supplier)
    return sum(1 for inserted in new if inserted)


def link_variations(session: Session, supplier: str) -> int:
    """Link unlinked products to variations: by their SKU, else by vendor part number = a variation's SKU.

    Returns how many were linked.  Does not commit.
    """
    return session.execute(text(
        "UPDATE supplier_products p SET variation_id = COALESCE("
        "  (SELECT v.id FROM variations v WHERE v.sku = p.sku),"
        "  (SELECT v.id FROM variations v WHERE v.sku = p.vendor_part_number)), updated_at = now() "
        "WHERE p.supplier = :sup AND p.variation_id IS NULL AND EXISTS ("
        "  SELECT 1 FROM variations v WHERE v.sku IN (p.sku, p.vendor_part_number))"), {"sup": supplier}).rowcount


def part_numbers(session: Session, supplier: str) -> list[str]:
    """Every followed part number of ``supplier``, in the order they were added."""
    return list(session.execute(text("SELECT part_number FROM supplier_products WHERE supplier = :sup ORDER BY id"),
                                {"sup": supplier}).scalars())


def set_totals(session: Session, sync_id: int, *, batches: int, products: int) -> None:
    """Record how many batches and products a run has (before any batch is sent).  Does not commit."""
    syncs.set_totals(session, sync_id, total_pages=batches, total_items=products,
                     details={name: 0 for name in DETAIL_COUNTERS})


# -- a batch -------------------------------------------------------------------------------------


def batch_detail_parts(session: Session, sync_id: int, batch: int, *, pending_only: bool = False) -> list[str] | None:
    """The products an already applied batch asked details for; None if the batch is not applied.

    ``pending_only`` leaves out those whose details this sync already stored: a batch re-delivered
    after its details ran asks for none of them again.
    """
    row = session.execute(text("SELECT detail_parts FROM supplier_sync_batches WHERE sync_id = :s AND batch = :b"),
                          {"s": sync_id, "b": batch}).first()
    if row is None:
        return None
    parts = list(row.detail_parts)
    if pending_only and parts:
        done = set(session.execute(text(
            "SELECT part_number FROM supplier_products WHERE part_number = ANY(CAST(:p AS text[])) "
            "AND details_sync_id = :s"), {"p": parts, "s": sync_id}).scalars())
        parts = [part for part in parts if part not in done]
    return parts


def apply_batch(session: Session, *, supplier: str, sync_id: int, batch: int, fetched_at: datetime,
                products: Sequence[ProductSnapshot], errors: Sequence[ProductFailure] = (),
                errors_seen: int | None = None, details_max_age_s: float) -> BatchResult:
    """Apply one priced batch in the caller's transaction (the caller commits).

    Idempotent per (sync_id, batch): a re-delivered batch finds its claim and changes nothing (it
    returns the products it asked details for).  ``errors`` are the products still in error,
    ``errors_seen`` every per-product error of the batch's calls (default: ``len(errors)``).
    """
    products = list({p.part_number: p for p in products}.values())
    errors = [e for e in {e.part_number: e for e in errors}.values()
              if e.part_number not in {p.part_number for p in products}]
    claimed = session.execute(text(
        "INSERT INTO supplier_sync_batches (sync_id, batch, products, changed, errors, detail_parts, fetched_at) "
        "VALUES (:s, :b, :n, 0, :e, '{}', :t) ON CONFLICT DO NOTHING RETURNING batch"),
        {"s": sync_id, "b": batch, "n": len(products), "e": len(errors), "t": fetched_at}).first()
    if claimed is None:
        return BatchResult(applied=False, detail_parts=batch_detail_parts(session, sync_id, batch) or [])

    rows = []
    if products:
        columns = {
            "part": [p.part_number for p in products], "vpn": [p.vendor_part_number for p in products],
            "cpn": [p.customer_part_number for p in products], "upc": [p.upc for p in products],
            "vendor": [p.vendor_name for p in products], "descr": [p.description for p in products],
            "status": [p.status for p in products], "scode": [p.status_code for p in products],
            "smsg": [p.status_message for p in products], "pclass": [p.product_class for p in products],
            "avail": [p.available for p in products], "total": [p.total_availability for p in products],
            "wh": [json.dumps(dict(p.warehouses_json), sort_keys=True) for p in products],
            "price": [p.price for p in products], "retail": [p.retail_price for p in products],
            "cur": [p.currency for p in products],
        }
        rows = session.execute(text(_APPLY_PRODUCTS), {**columns, "sup": supplier, "s": sync_id, "t": fetched_at,
                                                       "max_age": float(details_max_age_s)}).all()
    if errors:
        session.execute(text(
            "UPDATE supplier_products p SET error = t.msg, error_code = t.code, error_at = :t, updated_at = now() "
            "FROM unnest(CAST(:parts AS text[]), CAST(:codes AS text[]), CAST(:msgs AS text[])) AS t(part, code, msg) "
            "WHERE p.supplier = :sup AND p.part_number = t.part"),
            {"parts": [e.part_number for e in errors], "codes": [(e.code or "")[:32] or None for e in errors],
             "msgs": [e.message for e in errors], "sup": supplier, "t": fetched_at})

    changed = sum(1 for row in rows if row.is_new or row.changed)
    detail_parts = [row.part_number for row in rows if row.is_new or row.changed or row.stale]
    session.execute(text(
        "UPDATE supplier_sync_batches SET changed = :c, detail_parts = CAST(:d AS text[]) "
        "WHERE sync_id = :s AND batch = :b"), {"c": changed, "d": detail_parts, "s": sync_id, "b": batch})
    progress = syncs.record_page(session, sync_id, items=len(rows), changed=changed, unchanged=len(rows) - changed,
                                 missing=len(errors), counters={
                                     "details_total": len(detail_parts),
                                     "product_errors": len(errors) if errors_seen is None else errors_seen})
    status, finished = _finish_if_complete(session, sync_id, progress)
    return BatchResult(applied=True, detail_parts=detail_parts, products=len(rows), changed=changed,
                       unchanged=len(rows) - changed, errors=len(errors), finished=finished, status=status)


def apply_details(session: Session, *, supplier: str, sync_id: int, part_number: str,
                  details: Mapping[str, Any] | None, fetched_at: datetime) -> DetailsResult:
    """Store one product's details (None: the supplier has none) in the caller's transaction.

    Idempotent per (sync_id, part_number): the product row records which sync fetched its details,
    so a second delivery changes nothing and is not counted twice.
    """
    claimed = session.execute(text(
        "UPDATE supplier_products SET details = CAST(:d AS jsonb), details_status = :st, details_fetched_at = :t,"
        "  details_sync_id = :s, updated_at = now()"
        " WHERE supplier = :sup AND part_number = :p AND details_sync_id IS DISTINCT FROM :s RETURNING id"),
        {"d": None if details is None else json.dumps(details), "st": "none" if details is None else "ok",
         "t": fetched_at, "s": sync_id, "sup": supplier, "p": part_number}).first()
    progress = None if claimed is None else syncs.add_counters(
        session, sync_id, {"details_done": 1, "details_none": 1 if details is None else 0})
    if progress is None:
        return DetailsResult(applied=False)
    status, finished = _finish_if_complete(session, sync_id, progress)
    return DetailsResult(applied=True, finished=finished, status=status)


def record_details_failure(session: Session, *, supplier: str, sync_id: int, part_number: str, error: str) -> None:
    """Count a details call that failed for good on its run and note the error on the product.  Does not commit."""
    session.execute(text(
        "UPDATE supplier_products SET error = :e, error_code = 'details', error_at = now(), updated_at = now() "
        "WHERE supplier = :sup AND part_number = :p"), {"e": error[:4000], "sup": supplier, "p": part_number})
    syncs.add_counters(session, sync_id, {"details_failed": 1})


def run_counters(details: Mapping[str, Any] | None) -> dict[str, int]:
    """The supplier counters of a run's ``details`` JSON (0 for any not there yet)."""
    details = details or {}
    return {name: int(details.get(name) or 0) for name in DETAIL_COUNTERS}


def _finish_if_complete(session: Session, sync_id: int, progress: syncs.Progress) -> tuple[str, bool]:
    """Close the run if ``progress`` (the row just updated, still locked) shows nothing left to do."""
    counters = run_counters(progress.details)
    complete = (progress.total_pages is not None and progress.pages_done >= progress.total_pages
                and counters["details_done"] + counters["details_failed"] >= counters["details_total"])
    if not complete or progress.status != "running":
        return progress.status, False
    # The row lock held since the UPDATE serialises this: exactly one step sees the last increment.
    syncs.succeed_run(session, sync_id)
    return "succeeded", True


# One statement: compare each priced product with what was stored (new? changed? details stale?),
# store the new values, and return the comparison.  ``before`` reads the rows as they were.
_APPLY_PRODUCTS = """
WITH incoming AS (
    SELECT * FROM unnest(
        CAST(:part AS text[]), CAST(:vpn AS text[]), CAST(:cpn AS text[]), CAST(:upc AS text[]),
        CAST(:vendor AS text[]), CAST(:descr AS text[]), CAST(:status AS text[]), CAST(:scode AS text[]),
        CAST(:smsg AS text[]), CAST(:pclass AS text[]), CAST(:avail AS boolean[]), CAST(:total AS int[]),
        CAST(:wh AS text[]), CAST(:price AS numeric[]), CAST(:retail AS numeric[]), CAST(:cur AS text[]))
    AS t(part, vpn, cpn, upc, vendor, descr, status, scode, smsg, pclass, avail, total, wh, price, retail, cur)
), before AS (
    SELECT p.id, i.part,
           p.last_seen_at IS NULL AS is_new,
           (p.price IS DISTINCT FROM i.price OR p.currency IS DISTINCT FROM i.cur
            OR p.available IS DISTINCT FROM i.avail OR p.total_availability IS DISTINCT FROM i.total
            OR p.warehouses IS DISTINCT FROM CAST(i.wh AS jsonb)
            OR p.status IS DISTINCT FROM i.status OR p.product_class IS DISTINCT FROM i.pclass) AS changed,
           (p.details_fetched_at IS NULL
            OR p.details_fetched_at < CAST(:t AS timestamptz) - make_interval(secs => :max_age)) AS stale
    FROM supplier_products p JOIN incoming i ON i.part = p.part_number
    WHERE p.supplier = :sup
), updated AS (
    UPDATE supplier_products p SET
        vendor_part_number = i.vpn, customer_part_number = i.cpn, upc = i.upc, vendor_name = i.vendor,
        description = i.descr, status = i.status, status_code = i.scode, status_message = i.smsg,
        product_class = i.pclass, available = i.avail, total_availability = i.total,
        warehouses = CAST(i.wh AS jsonb), price = i.price, retail_price = i.retail, currency = i.cur,
        error = NULL, error_code = NULL, error_at = NULL,
        last_seen_at = :t, last_seen_sync_id = :s,
        last_changed_at = CASE WHEN b.is_new OR b.changed THEN CAST(:t AS timestamptz) ELSE p.last_changed_at END,
        variation_id = COALESCE(p.variation_id, (SELECT v.id FROM variations v WHERE v.sku = p.sku),
                                (SELECT v.id FROM variations v WHERE v.sku = i.vpn)),
        updated_at = now()
    FROM before b JOIN incoming i ON i.part = b.part
    WHERE p.id = b.id
    RETURNING p.part_number, b.is_new, b.changed, b.stale
)
SELECT part_number, is_new, changed, stale FROM updated ORDER BY part_number
"""


__all__ = ["SYNC_KIND", "BatchResult", "DetailsResult", "ProductFailure", "ProductSnapshot", "SupplierProduct",
           "SupplierSyncBatch", "add_products", "apply_batch", "apply_details", "batch_detail_parts",
           "check_part_number", "link_variations", "part_numbers", "record_details_failure", "run_counters",
           "set_totals"]
