"""Ingram Micro supplier sync: start → price & availability batches → product details.

::

    start_supplier_sync ──► price_availability_batch × ⌈N / 50⌉    queue ingram-batch; at most
                                │                                  max_concurrent running fleet-wide
                                └─► product_details(part)          queue ingram-details; only for products
                                                                   new, changed or with old details

Retries follow a fixed schedule per actor (batch 30/60/120 s, details 10/30/60 s, times
``INGRAM_TIME_SCALE``, up to 25% jitter): dramatiq's own backoff doubles, which 10/30/60 does not.
Past the schedule the error goes to the dead letters, which fails the run; permanent errors go
there at once.
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterator, Sequence

import dramatiq
from dramatiq.middleware import CurrentMessage

from actors.retry import MalformedMessage, transient_only
from db import syncs
from pipelines import ingram
from pipelines.ingram import SUPPLIER
from runtime.failures import message_argument, on_dead_letter
from runtime.settings import get_settings

#: How long a message may live, retries included, before it goes to the dead letters (ms).
MAX_AGE_MS = 24 * 3600 * 1000
#: How long one attempt may take, waits for slots included (ms).
TIME_LIMIT_MS = 30 * 60 * 1000
#: The most jitter added to a scheduled retry delay (a share of the delay).
RETRY_JITTER = 0.25

__all__ = ["SUPPLIER", "begin_supplier_sync", "price_availability_batch", "product_details", "scheduled_retries",
           "start_supplier_sync"]


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


def begin_supplier_sync(*, trigger: str = "manual", force: bool = False, batch_size: int | None = None,
                        max_concurrent: int | None = None, queue: str | None = None,
                        details_queue: str | None = None) -> int:
    """Open a supplier sync run and enqueue all its batches; return the run id (see ``pipelines.ingram.open_sync``)."""
    opened = ingram.open_sync(trigger=trigger, force=force, batch_size=batch_size, max_concurrent=max_concurrent,
                              queue=queue, details_queue=details_queue)
    for number, batch in enumerate(opened.batches, start=1):
        message = price_availability_batch.message(opened.sync_id, number, batch,
                                                   max_concurrent=opened.max_concurrent,
                                                   details_queue=opened.details_queue)
        _enqueue(message, opened.queue)
    return opened.sync_id


def _enqueue(message: dramatiq.Message, queue: str) -> None:
    dramatiq.get_broker().enqueue(message.copy(queue_name=queue) if queue != message.queue_name else message)


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


@dramatiq.actor(queue_name=get_settings().ingram_batch_queue,
                retry_when=transient_only(len(get_settings().ingram_batch_retry_delays_s)),
                max_age=MAX_AGE_MS, time_limit=TIME_LIMIT_MS)
async def price_availability_batch(sync_id: int, batch: int, part_numbers: list, max_concurrent: int | None = None,
                                   details_queue: str | None = None) -> None:
    """Price up to 50 products in one call, apply them in one transaction, ask details for what changed."""
    parts = ingram.check_parts(part_numbers)
    settings = get_settings()
    with scheduled_retries(settings.ingram_batch_retry_delays_s, settings.ingram_time_scale):
        detail_parts = await ingram.price_batch(sync_id, batch, parts, max_concurrent)
    queue = details_queue or settings.ingram_details_queue
    for part in detail_parts:
        _enqueue(product_details.message(sync_id, part), queue)


@dramatiq.actor(queue_name=get_settings().ingram_details_queue,
                retry_when=transient_only(len(get_settings().ingram_details_retry_delays_s)),
                max_age=MAX_AGE_MS, time_limit=TIME_LIMIT_MS)
async def product_details(sync_id: int, part_number: str) -> None:
    """Fetch one product's details (404: it has none) and store them; the last one may close the run."""
    part = ingram.check_part(part_number)
    settings = get_settings()
    with scheduled_retries(settings.ingram_details_retry_delays_s, settings.ingram_time_scale):
        await ingram.fetch_details(sync_id, part)


@on_dead_letter("price_availability_batch")
def _fail_batch_run(message: dramatiq.Message, error: str) -> None:
    ingram.fail_batch(int(message_argument(message, 0, "sync_id")), message_argument(message, 1, "batch"), error)


@on_dead_letter("product_details")
def _fail_details_run(message: dramatiq.Message, error: str) -> None:
    ingram.fail_details(int(message_argument(message, 0, "sync_id")),
                        str(message_argument(message, 1, "part_number")), error)


def _declare_extra_queues() -> None:
    # A worker consumes only declared queues: the extra ones must exist for `--queue Q` to be served.
    broker = dramatiq.get_broker()
    for queue in ingram.queues():
        broker.declare_queue(queue)


_declare_extra_queues()
