"""Ingram Micro supplier sync (DESIGN.md §3): start → price & availability batches → product details.

::

    start_supplier_sync ──► price_availability_batch × ⌈N / 50⌉    queue ingram-batch; at most
                                │                                  max_concurrent running fleet-wide
                                └─► product_details(part)          queue ingram-details; only for products
                                                                   new, changed or with old details

Actors are thin: they decode the message, call the code that does the work (``clients.ingram``,
``db.supplier``, ``db.syncs``) and enqueue what follows.  The fleet-wide quotas (price &
availability per minute, details at least an interval apart) are :class:`FleetRateLimiter`
instances that wait; the batches' concurrency limit is a :class:`FleetSemaphore` that waits.

Retries follow a fixed schedule per actor (batch 30/60/120 s, details 10/30/60 s, times
``INGRAM_TIME_SCALE``, up to 25% jitter added): a transient failure raises ``dramatiq.Retry`` with
the schedule's next delay; past the schedule the error itself is raised and the message goes to
the dead letters, which marks its run failed.  (Dramatiq's own backoff doubles, which the details
schedule 10/30/60 does not.)  Permanent errors (401, malformed answers or messages) skip the
schedule and go to the dead letters at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from datetime import datetime, timezone
from typing import Iterator, Sequence

import dramatiq
from dramatiq.middleware import CurrentMessage

from actors.retry import MalformedMessage, transient_only
from clients.ingram import (
    DETAILS,
    MAX_PRODUCTS,
    TOKEN,
    FleetSemaphore,
    IngramClient,
    PriceAvailability,
    ProductError,
    RequestRecord,
    SharedToken,
    check_batch_size,
)
from clients.ratelimit import FleetRateLimiter
from db import supplier, syncs
from runtime import metrics, resources, sync_stats
from runtime.clients import fleet_limiter
from runtime.failures import message_argument, on_dead_letter
from runtime.settings import Settings, get_settings

#: The supplier this pipeline syncs (``supplier_products.supplier`` and ``sync_runs.target``).
SUPPLIER = "ingram"
SYNC_KIND = supplier.SYNC_KIND

#: How long a message may live, retries included, before it goes to the dead letters (ms).
MAX_AGE_MS = 24 * 3600 * 1000
#: How long one attempt may take, waits for slots included (ms).
TIME_LIMIT_MS = 30 * 60 * 1000
#: The most jitter added to a scheduled retry delay (a share of the delay).
RETRY_JITTER = 0.25


# -- settings-made resources ---------------------------------------------------------------------


def sync_policy() -> syncs.SyncPolicy:
    """Cooldowns and staleness of supplier syncs, from the settings."""
    settings = get_settings()
    return syncs.SyncPolicy(settings.ingram_cooldown_scheduled_s, settings.ingram_cooldown_manual_s,
                            settings.sync_stale_after_s)


def queues(settings: Settings | None = None) -> list[str]:
    """The queues of this pipeline the workers consume: batch, details and the extra ones."""
    settings = settings or get_settings()
    extra = [q.strip() for q in settings.ingram_extra_queues.split(",") if q.strip()]
    return list(dict.fromkeys([settings.ingram_batch_queue, settings.ingram_details_queue, *extra]))


def pa_limiter() -> FleetRateLimiter:
    """The fleet-wide price & availability quota: ``INGRAM_PA_PER_MINUTE`` per (scaled) minute."""
    settings = get_settings()
    return fleet_limiter("ingram-pa", settings.ingram_pa_per_minute, 60.0 * settings.ingram_time_scale,
                         settings.ingram_rate_margin_s)


def details_limiter() -> FleetRateLimiter:
    """The fleet-wide details quota: one call per ``INGRAM_DETAILS_MIN_INTERVAL_S`` (scaled)."""
    settings = get_settings()
    return fleet_limiter("ingram-details", 1, settings.ingram_details_min_interval_s * settings.ingram_time_scale,
                         settings.ingram_rate_margin_s)


def batch_slots() -> FleetSemaphore:
    """The fleet-wide limit on price & availability batches running at once."""
    settings = get_settings()
    return FleetSemaphore(resources.async_redis(), "ingram-batches", namespace=settings.redis_namespace,
                          ttl_s=settings.ingram_lease_ttl_s)


def shared_token() -> SharedToken:
    """The fleet's OAuth token for this API app (one per base URL and client id)."""
    settings = get_settings()
    app = hashlib.sha1(f"{settings.ingram_base_url}|{settings.ingram_client_id}".encode()).hexdigest()[:12]
    return SharedToken(resources.async_redis(), f"ingram:{app}", namespace=settings.redis_namespace,
                       refresh_before_s=settings.ingram_token_refresh_before_s,
                       lock_ttl_s=settings.ingram_timeout_s * 2)


def ingram_client(on_request=None) -> IngramClient:
    """An Ingram Micro client on this process's session, shared token, limiters and settings."""
    settings = get_settings()
    return IngramClient(
        resources.http_session(), base_url=settings.ingram_base_url, client_id=settings.ingram_client_id,
        client_secret=settings.ingram_client_secret.get_secret_value(),
        customer_number=settings.ingram_customer_number, country_code=settings.ingram_country_code,
        sender_id=settings.ingram_sender_id or None, tokens=shared_token(), pa_limiter=pa_limiter(),
        details_limiter=details_limiter(), timeout_s=settings.ingram_timeout_s,
        attempts=settings.ingram_http_attempts, backoff_s=0.5 * settings.ingram_time_scale,
        min_penalty_s=0.05 * settings.ingram_time_scale, on_request=on_request)


# -- checks --------------------------------------------------------------------------------------


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


# -- retries -------------------------------------------------------------------------------------


@contextlib.contextmanager
def scheduled_retries(delays_s: Sequence[float], time_scale: float) -> Iterator[None]:
    """Turn a transient failure into ``dramatiq.Retry`` with the schedule's next delay.

    The message's ``retries`` option says which delay is next; once the schedule is used up, the
    error itself goes on (and the actor's ``retry_when`` sends the message to the dead letters
    with it).  Permanent errors go on at once.
    """
    try:
        yield
    except dramatiq.Retry:
        raise
    except Exception as error:
        if getattr(error, "permanent", False):
            raise
        message = CurrentMessage.get_current_message()
        retries = message.options.get("retries", 0) if message is not None else len(delays_s)
        if retries >= len(delays_s):
            raise
        delay_ms = max(1, round(delays_s[retries] * time_scale * random.uniform(1, 1 + RETRY_JITTER) * 1000))
        raise dramatiq.Retry(f"{type(error).__name__}: {error}", delay=delay_ms) from error


def _count_attempts(records: Sequence[RequestRecord], first_is_retry: bool) -> dict[str, int]:
    """Counters for one message's HTTP attempts: token calls are API calls, never retries."""
    counts = {"api_calls": 0, "retries": 0, "errors": 0}
    seen: set[str] = set()
    for record in records:
        counts["api_calls"] += 1
        if record.endpoint != TOKEN and (first_is_retry or record.endpoint in seen):
            counts["retries"] += 1
        seen.add(record.endpoint)
        # A details 404 is an answer ("no details"), not an error.
        if record.status is None or record.status >= 400 and not (record.endpoint == DETAILS and record.status == 404):
            counts["errors"] += 1
    return counts


async def _count(sync_id: int, records: Sequence[RequestRecord], first: bool) -> None:
    settings = get_settings()
    await sync_stats.add(resources.async_redis(), settings.redis_namespace, sync_id,
                         _count_attempts(records, first_is_retry=not first))


async def _first_attempt(sync_id: int, what: str) -> bool:
    # Set when a message's work first starts: a later start (a Dramatiq retry) is a retry.
    settings = get_settings()
    key = f"{settings.redis_namespace}:sync:{sync_id}:started:{what}"
    return bool(await resources.async_redis().set(key, 1, nx=True, ex=sync_stats.STATS_TTL_S))


# -- starting a sync -----------------------------------------------------------------------------


def begin_supplier_sync(*, trigger: str = "manual", force: bool = False, batch_size: int | None = None,
                        max_concurrent: int | None = None, queue: str | None = None,
                        details_queue: str | None = None) -> int:
    """Open a supplier sync run (lock + cooldown) and enqueue all its batches; return the run id.

    Every followed product (``stocksync ingram add-products``) is synced, in batches of
    ``batch_size`` (default ``INGRAM_BATCH_SIZE``).

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
    broker = price_availability_batch.broker
    for number, batch in enumerate(batches, start=1):
        message = price_availability_batch.message(run.id, number, batch, max_concurrent=max_concurrent,
                                                   details_queue=details_queue)
        broker.enqueue(message.copy(queue_name=queue) if queue != message.queue_name else message)
    return run.id


@dramatiq.actor(queue_name=get_settings().ingram_batch_queue, max_retries=3, min_backoff=1000, max_backoff=30000)
def start_supplier_sync(force: bool = False, trigger: str = "scheduled", batch_size: int | None = None,
                        max_concurrent: int | None = None, queue: str | None = None,
                        details_queue: str | None = None) -> int | None:
    """Start a supplier sync unless one runs or the cooldown has not passed (then log why, and stop)."""
    try:
        return begin_supplier_sync(trigger=trigger, force=force, batch_size=batch_size,
                                   max_concurrent=max_concurrent, queue=queue, details_queue=details_queue)
    except ValueError as error:
        raise MalformedMessage(str(error)) from None
    except syncs.SyncRefused as refused:
        dramatiq.get_logger(__name__).info("supplier sync not started: %s", refused.reason)
        return None


# -- a batch -------------------------------------------------------------------------------------


@dramatiq.actor(queue_name=get_settings().ingram_batch_queue,
                retry_when=transient_only(len(get_settings().ingram_batch_retry_delays_s)),
                max_age=MAX_AGE_MS, time_limit=TIME_LIMIT_MS)
async def price_availability_batch(sync_id: int, batch: int, part_numbers: list, max_concurrent: int | None = None,
                                   details_queue: str | None = None) -> None:
    """Price up to 50 products in one call, apply them in one transaction, ask details for what changed."""
    parts = check_parts(part_numbers)
    settings = get_settings()
    details_queue = details_queue or settings.ingram_details_queue
    with scheduled_retries(settings.ingram_batch_retry_delays_s, settings.ingram_time_scale):
        detail_parts = await asyncio.to_thread(_applied_batch_parts, sync_id, batch)
        if detail_parts is None:  # not applied yet (a re-delivered batch skips the call)
            async with batch_slots().hold(max_concurrent or settings.ingram_max_concurrent):
                fetched_at = datetime.now(timezone.utc)
                products, errors, seen = await _price(sync_id, batch, parts, settings.ingram_partial_retries)
                detail_parts = await asyncio.to_thread(_apply_batch, sync_id, batch, fetched_at, products, errors,
                                                       seen)
    if detail_parts:
        await asyncio.to_thread(_enqueue_details, sync_id, detail_parts, details_queue)


async def _price(sync_id: int, batch: int, parts: list[str], partial_retries: int
                 ) -> tuple[list[PriceAvailability], list[ProductError], int]:
    """Price ``parts``; ask again (``partial_retries`` times) for the products answered with an error."""
    records: list[RequestRecord] = []
    first = await _first_attempt(sync_id, f"batch:{batch}")
    client = ingram_client(on_request=metrics.request_hook(records.append))
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


def _enqueue_details(sync_id: int, parts: Sequence[str], queue: str) -> None:
    broker = product_details.broker
    for part in parts:
        message = product_details.message(sync_id, part)
        broker.enqueue(message.copy(queue_name=queue) if queue != message.queue_name else message)


# -- details -------------------------------------------------------------------------------------


@dramatiq.actor(queue_name=get_settings().ingram_details_queue,
                retry_when=transient_only(len(get_settings().ingram_details_retry_delays_s)),
                max_age=MAX_AGE_MS, time_limit=TIME_LIMIT_MS)
async def product_details(sync_id: int, part_number: str) -> None:
    """Fetch one product's details (404: it has none) and store them; the last one may close the run."""
    try:
        part = supplier.check_part_number(part_number)
    except ValueError as error:
        raise MalformedMessage(f"part_number: {error}") from None
    settings = get_settings()
    with scheduled_retries(settings.ingram_details_retry_delays_s, settings.ingram_time_scale):
        # No look before the call: a re-delivered batch sends only the details still missing, and a
        # second delivery of this message costs one call and changes nothing (apply_details).
        records: list[RequestRecord] = []
        first = await _first_attempt(sync_id, f"details:{part}")
        fetched_at = datetime.now(timezone.utc)
        try:
            details = await ingram_client(on_request=metrics.request_hook(records.append)).product_details(part)
        finally:
            await _count(sync_id, records, first)
        await asyncio.to_thread(_apply_details, sync_id, part, details, fetched_at)


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


# -- failures ------------------------------------------------------------------------------------


@on_dead_letter("price_availability_batch")
def _fail_batch_run(message: dramatiq.Message, error: str) -> None:
    sync_id = message_argument(message, 0, "sync_id")
    batch = message_argument(message, 1, "batch")
    with resources.sessions()() as session:
        if syncs.fail_run(session, int(sync_id), f"batch {batch} failed for good (price_availability_batch): {error}"):
            metrics.sync_finished(syncs.get_run(session, int(sync_id)))


@on_dead_letter("product_details")
def _fail_details_run(message: dramatiq.Message, error: str) -> None:
    sync_id = message_argument(message, 0, "sync_id")
    part = message_argument(message, 1, "part_number")
    with resources.sessions()() as session:
        supplier.record_details_failure(session, supplier=SUPPLIER, sync_id=int(sync_id), part_number=str(part),
                                        error=error)
        session.commit()
        if syncs.fail_run(session, int(sync_id), f"details of {part} failed for good (product_details): {error}"):
            metrics.sync_finished(syncs.get_run(session, int(sync_id)))


def _declare_extra_queues() -> None:
    # A worker consumes only declared queues: the extra ones must exist for `--queue Q` to be served.
    broker = dramatiq.get_broker()
    for queue in queues():
        broker.declare_queue(queue)


_declare_extra_queues()
