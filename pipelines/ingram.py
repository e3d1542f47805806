"""The Ingram Micro supplier sync as plain functions: open a run, price a batch, fetch details.

A run prices every followed product in batches of at most 50 (one call each, under the fleet-wide
quota and at most ``max_concurrent`` batches at once), then fetches details only for products
new, changed or with old details.  Each step is idempotent per (run, batch) or (run, product), so
a re-delivered message costs at most one call and changes nothing.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

from clients.ingram import (DETAILS, MAX_PRODUCTS, TOKEN, PriceAvailability, ProductError, RequestRecord,
                            check_batch_size)
from core.errors import MalformedMessage
from db import supplier, syncs
from runtime import metrics, resources, sync_stats
from runtime.queues import ingram_queues
from runtime.clients import ingram_batch_slots, ingram_client
from runtime.settings import Settings, get_settings

#: The supplier this pipeline syncs (``supplier_products.supplier`` and ``sync_runs.target``).
SUPPLIER = "ingram"
SYNC_KIND = supplier.SYNC_KIND


@dataclass(frozen=True)
class OpenedSync:
    """A supplier run that was let in, and the batches to enqueue for it."""

    sync_id: int
    batches: list[list[str]]
    max_concurrent: int | None
    queue: str
    details_queue: str


def sync_policy() -> syncs.SyncPolicy:
    """Cooldowns and staleness of supplier syncs, from the settings."""
    settings = get_settings()
    return syncs.SyncPolicy(settings.ingram_cooldown_scheduled_s, settings.ingram_cooldown_manual_s,
                            settings.sync_stale_after_s)


def queues(settings: Settings | None = None) -> list[str]:
    """The queues of this pipeline the workers consume: batch, details and the extra ones."""
    return ingram_queues(settings or get_settings())


def check_queue(queue: str, settings: Settings | None = None) -> str:
    """Return ``queue`` if the workers consume it; raise ``ValueError`` naming the ones they do."""
    known = queues(settings)
    if queue not in known:
        raise ValueError(f"queue {queue!r} is not one the workers consume ({', '.join(known)}); "
                         "add it to INGRAM_EXTRA_QUEUES for workers and CLI alike")
    return queue


def check_parts(part_numbers: object) -> list[str]:
    """Decode a batch's part numbers; raise :class:`MalformedMessage` naming what is wrong."""
    if not isinstance(part_numbers, list) or not 1 <= len(part_numbers) <= MAX_PRODUCTS:
        size = len(part_numbers) if isinstance(part_numbers, list) else type(part_numbers).__name__
        raise MalformedMessage(f"part_numbers must be a list of 1 to {MAX_PRODUCTS} part numbers, got {size}")
    for index, part in enumerate(part_numbers):
        try:
            supplier.check_part_number(part)
        except ValueError as error:
            raise MalformedMessage(f"part_numbers[{index}]: {error}") from None
    return part_numbers


def check_part(part_number: object) -> str:
    """Decode one product's part number; raise :class:`MalformedMessage` naming what is wrong."""
    try:
        return supplier.check_part_number(part_number)
    except ValueError as error:
        raise MalformedMessage(f"part_number: {error}") from None


def open_sync(*, trigger: str = "manual", force: bool = False, batch_size: int | None = None,
              max_concurrent: int | None = None, queue: str | None = None,
              details_queue: str | None = None) -> OpenedSync:
    """Open a supplier sync run (lock + cooldown) over every followed product, cut into batches.

    Raises:
      ValueError: A batch size above 50, a concurrency below 1, or a queue the workers do not consume.
      db.syncs.SyncRefused: A supplier sync is running, the cooldown has not passed, or no product
        is followed.
    """
    settings = get_settings()
    batch_size = check_batch_size(settings.ingram_batch_size if batch_size is None else batch_size)
    if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)
                                       or max_concurrent < 1):
        raise ValueError(f"max_concurrent must be a positive integer, got {max_concurrent!r}")
    queue = check_queue(queue or settings.ingram_batch_queue, settings)
    details_queue = check_queue(details_queue or settings.ingram_details_queue, settings)
    with resources.sessions()() as session:
        parts = supplier.part_numbers(session, SUPPLIER)
        if not parts:
            raise syncs.SyncRefused("no Ingram Micro products are followed yet: add them with "
                                    "`stocksync ingram add-products`")
        options = {"batch_size": batch_size, "max_concurrent": max_concurrent or settings.ingram_max_concurrent,
                   "queue": queue, "details_queue": details_queue}
        run = syncs.begin_run(session, kind=SYNC_KIND, target=SUPPLIER, trigger=trigger, policy=sync_policy(),
                              force=force, details=options)
        batches = [parts[i:i + batch_size] for i in range(0, len(parts), batch_size)]
        supplier.set_totals(session, run.id, batches=len(batches), products=len(parts))
        session.commit()
    return OpenedSync(run.id, batches, max_concurrent, queue, details_queue)


async def price_batch(sync_id: int, batch: int, parts: list[str], max_concurrent: int | None = None) -> list[str]:
    """Price a batch in one call (once per run: a re-delivery skips it) and apply it in one transaction.

    Returns the part numbers whose details are to be fetched.
    """
    settings = get_settings()
    detail_parts = await asyncio.to_thread(_applied_batch_parts, sync_id, batch)
    if detail_parts is None:  # not applied yet
        async with ingram_batch_slots().hold(max_concurrent or settings.ingram_max_concurrent):
            fetched_at = datetime.now(timezone.utc)
            products, errors, seen = await _price(sync_id, batch, parts, settings.ingram_partial_retries)
            detail_parts = await asyncio.to_thread(_apply_batch, sync_id, batch, fetched_at, products, errors, seen)
    return detail_parts


async def fetch_details(sync_id: int, part: str) -> None:
    """Fetch one product's details (404: it has none) and store them; the last one may close the run.

    No look before the call: a re-delivered batch sends only the details still missing, and a
    second delivery of this step costs one call and changes nothing (``db.supplier.apply_details``).
    """
    records: list[RequestRecord] = []
    first = await _first_attempt(sync_id, f"details:{part}")
    fetched_at = datetime.now(timezone.utc)
    try:
        details = await ingram_client(on_request=records.append).product_details(part)
    finally:
        await _count(sync_id, records, first)
    await asyncio.to_thread(_apply_details, sync_id, part, details, fetched_at)


def fail_batch(sync_id: int, batch: object, error: str) -> None:
    """A batch failed for good: its run fails."""
    with resources.sessions()() as session:
        if syncs.fail_run(session, sync_id, f"batch {batch} failed for good (price_availability_batch): {error}"):
            metrics.sync_finished(syncs.get_run(session, sync_id))


def fail_details(sync_id: int, part: str, error: str) -> None:
    """A product's details failed for good: noted on the product, and its run fails."""
    with resources.sessions()() as session:
        supplier.record_details_failure(session, supplier=SUPPLIER, sync_id=sync_id, part_number=part, error=error)
        session.commit()
        if syncs.fail_run(session, sync_id, f"details of {part} failed for good (product_details): {error}"):
            metrics.sync_finished(syncs.get_run(session, sync_id))


async def _price(sync_id: int, batch: int, parts: list[str], partial_retries: int
                 ) -> tuple[list[PriceAvailability], list[ProductError], int]:
    """Price ``parts``; ask again (``partial_retries`` times) for the products answered with an error."""
    records: list[RequestRecord] = []
    first = await _first_attempt(sync_id, f"batch:{batch}")
    client = ingram_client(on_request=records.append)
    try:
        result = await client.price_and_availability(parts)
        products = {p.part_number: p for p in result.products}
        errors = {e.part_number: e for e in result.errors}
        seen = len(result.errors)
        for _ in range(partial_retries):
            if not errors:
                break
            again = await client.price_and_availability(list(errors))
            seen += len(again.errors)
            products.update({p.part_number: p for p in again.products})
            errors = {e.part_number: e for e in again.errors}
    finally:
        await _count(sync_id, records, first)
    return list(products.values()), list(errors.values()), seen


def count_attempts(records: Sequence[RequestRecord], first_is_retry: bool) -> dict[str, int]:
    """The run counters of one step's HTTP attempts: token calls are never retries, a details 404 no error."""
    return sync_stats.count_attempts(records, first_is_retry, never_retries=(TOKEN,), is_error=_is_error)


def _is_error(record: RequestRecord) -> bool:
    # A details 404 is an answer ("no details"), not an error.
    return record.status is None or record.status >= 400 and not (record.endpoint == DETAILS
                                                                   and record.status == 404)


async def _count(sync_id: int, records: Sequence[RequestRecord], first: bool) -> None:
    settings = get_settings()
    await sync_stats.add(resources.async_redis(), settings.redis_namespace, sync_id,
                         count_attempts(records, first_is_retry=not first))


async def _first_attempt(sync_id: int, what: str) -> bool:
    # Set when a step's work first starts: a later start (a Dramatiq retry) is a retry.
    settings = get_settings()
    key = f"{settings.redis_namespace}:sync:{sync_id}:started:{what}"
    return bool(await resources.async_redis().set(key, 1, nx=True, ex=sync_stats.STATS_TTL_S))


def _applied_batch_parts(sync_id: int, batch: int) -> list[str] | None:
    with resources.sessions()() as session:
        return supplier.batch_detail_parts(session, sync_id, batch, pending_only=True)


def _apply_batch(sync_id: int, batch: int, fetched_at: datetime, products: list[PriceAvailability],
                 errors: list[ProductError], seen: int) -> list[str]:
    settings = get_settings()
    with resources.sessions()() as session:
        result = supplier.apply_batch(session, supplier=SUPPLIER, sync_id=sync_id, batch=batch, fetched_at=fetched_at,
                                      products=products, errors=errors, errors_seen=seen,
                                      details_max_age_s=settings.ingram_details_max_age_s)
        if result.finished:
            _copy_counts(session, sync_id)
        session.commit()
        _observe_pages(session, sync_id, result.finished)
    return result.detail_parts


def _apply_details(sync_id: int, part: str, details: dict | None, fetched_at: datetime) -> None:
    with resources.sessions()() as session:
        result = supplier.apply_details(session, supplier=SUPPLIER, sync_id=sync_id, part_number=part,
                                        details=details, fetched_at=fetched_at)
        if result.finished:
            _copy_counts(session, sync_id)
        session.commit()
        _observe_pages(session, sync_id, result.finished)


def _observe_pages(session, sync_id: int, finished: bool) -> None:
    # After the commit: metrics tell what the database holds, never what a rollback undid.
    run = syncs.get_run(session, sync_id)
    if run is not None:
        metrics.sync_progress(sync_id, run.pages_done, run.total_pages)
        if finished:
            metrics.sync_finished(run)


def _copy_counts(session, sync_id: int) -> None:
    # Same transaction as the close: whoever sees the run finished sees its counters too.
    settings = get_settings()
    syncs.add_counts(session, sync_id, **sync_stats.read(resources.sync_redis(), settings.redis_namespace, sync_id))
