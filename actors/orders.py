"""Order intake actors: turn marketplace orders into the events pipeline's stock events.

- ``refurbed_order_notified(order_id)``: a Refurbed webhook said ``{"order_id": n}`` and nothing
  else (unsigned, at least once): re-fetch the order with ``OrderService/GetOrder`` and emit its
  events.
- ``poll_orders(marketplace)``: the backstop walk.  Back Market has no order webhooks: walk
  ``GET /ws/orders`` by ``date_modification`` from a watermark; Refurbed's webhooks announce new
  orders only: walk ``ListOrders`` over the last ``REFURBED_ORDERS_LOOKBACK_S`` to see
  cancellations and missed notifications.

Every order line gives ``order_created`` when it holds stock, and ``order_created`` then
``order_cancelled`` (chained: the cancel runs only after the create is booked) when it gave the
stock back before shipping.  Both are idempotent in the ledger (marketplace + order + line), so a
re-sent webhook, a re-read page or a webhook and a poll of the same order change the stock once.
A Redis memo of what was already sent (line and its last event) spares re-sending on every walk;
losing it costs only no-op messages.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta, timezone

import dramatiq

from actors.retry import MalformedMessage, transient_only
from clients.backmarket_orders import HOLDING_LINE_STATES, RELEASED_LINE_STATES, Order, parse_time, walk_orders
from clients.refurbed import HOLDING_ITEM_STATES, RELEASED_ITEM_STATES, RefurbedOrder
from runtime import queues, resources
from runtime.clients import backmarket_orders_client, refurbed_client
from runtime.producer import InvalidEvent, StockEvent, StockEvents, make_event
from runtime.settings import get_settings

logger = logging.getLogger(__name__)

#: The marketplaces ``poll_orders`` can walk.
POLLED_MARKETPLACES = ("backmarket", "refurbed")

#: Seconds a poll may hold its lock: the actor's time limit, so a killed poll cannot block for good.
POLL_LOCK_S = 15 * 60

#: How long the memo of sent (line, event) pairs lives beyond the re-read windows.
MEMO_SLACK_S = 24 * 3600

#: One order line's events, sent as a chain (each only after the previous one is booked).
EventChain = list[StockEvent]


# -- order lines → events --------------------------------------------------------------------------


def backmarket_order_events(order: Order, *, now: datetime | None = None) -> list[EventChain]:
    """The events of a Back Market order, one chain per line that holds or held stock.

    A line holds its quantity from the moment the order was placed (its ``date_creation``); one
    cancelled or refunded before shipping gave it back at the order's ``date_modification``.
    Marketplace times ahead of our clock are taken as now; a line that cannot be booked (say, a
    SKU longer than the ledger takes) is logged and left out rather than failing the whole walk.
    """
    now = now or datetime.now(timezone.utc)
    chains = []
    for line in order.orderlines:
        if line.state not in HOLDING_LINE_STATES and line.state not in RELEASED_LINE_STATES:
            continue
        common = {"marketplace": "backmarket", "order_id": order.order_id, "order_line_id": line.id,
                  "sku": line.sku, "quantity": line.quantity, "source": "poll"}
        placed_at = min(_utc(line.date_creation or order.date_creation or order.date_modification), now)
        try:
            chain = [make_event("order_created", event_time=placed_at, now=now, **common)]
            if line.state in RELEASED_LINE_STATES:
                chain.append(make_event("order_cancelled", event_time=min(_utc(order.date_modification), now),
                                        now=now, **common))
        except InvalidEvent as invalid:
            logger.warning("back market order %s line %s cannot be booked: %s", order.order_id, line.id, invalid)
            continue
        chains.append(chain)
    return chains


def refurbed_order_events(order: RefurbedOrder, *, observed_at: datetime, source: str) -> list[EventChain]:
    """The events of a Refurbed order: one unit per item (items have no quantity).

    Refurbed gives no time for an item's cancellation: ``observed_at`` stands in for it.  Items
    without a SKU (old offers made without one), or that cannot be booked, are logged and left out.
    """
    chains = []
    for item in order.items:
        if item.state not in HOLDING_ITEM_STATES and item.state not in RELEASED_ITEM_STATES:
            continue
        if not item.sku:
            logger.warning("refurbed order %s item %s has no SKU: its stock cannot be booked", order.id, item.id)
            continue
        common = {"marketplace": "refurbed", "order_id": order.id, "order_line_id": item.id, "sku": item.sku,
                  "quantity": 1, "source": source}
        placed_at = _utc(order.released_at) if order.released_at else observed_at
        try:
            chain = [make_event("order_created", event_time=min(placed_at, observed_at), now=observed_at, **common)]
            if item.state in RELEASED_ITEM_STATES:
                chain.append(make_event("order_cancelled", event_time=observed_at, now=observed_at, **common))
        except InvalidEvent as invalid:
            logger.warning("refurbed order %s item %s cannot be booked: %s", order.id, item.id, invalid)
            continue
        chains.append(chain)
    return chains


def _utc(text: str) -> datetime:
    return parse_time(text).astimezone(timezone.utc)


def send_chains(chains: list[EventChain], broker: dramatiq.Broker) -> int:
    """Enqueue each chain (one message, or a pipeline of two); return how many events were sent."""
    events = StockEvents(broker)
    for chain in chains:
        events.send_in_order(chain)
    return sum(len(chain) for chain in chains)


# -- Refurbed webhook follow-up --------------------------------------------------------------------


@dramatiq.actor(queue_name=queues.ORDERS, retry_when=transient_only(12), min_backoff=2_000, max_backoff=600_000,
                max_age=3 * 24 * 3600 * 1000, time_limit=5 * 60 * 1000)
async def refurbed_order_notified(order_id: str, received_at: str | None = None) -> None:
    """Re-fetch a notified Refurbed order (``GetOrder``) and emit the events not sent yet."""
    sent = await book_refurbed_order(order_id, refurbed_order_notified.broker)
    logger.info("refurbed order %s (notified at %s): %d events sent", order_id, received_at, sent)


async def book_refurbed_order(order_id: str, broker: dramatiq.Broker) -> int:
    """What ``refurbed_order_notified`` does; returns how many events were sent."""
    if not isinstance(order_id, str) or not order_id.isdigit():
        raise MalformedMessage(f"order_id must be a string of digits, got {order_id!r}")
    order = await refurbed_client().get_order(order_id)
    chains = refurbed_order_events(order, observed_at=datetime.now(timezone.utc), source="webhook")
    state = IntakeState(resources.async_redis(), get_settings().redis_namespace, "refurbed")
    return await state.send_new(chains, broker)


# -- the backstop walks ----------------------------------------------------------------------------


@dramatiq.actor(queue_name=queues.ORDERS, retry_when=transient_only(3), min_backoff=5_000, max_backoff=60_000,
                max_age=3600 * 1000, time_limit=POLL_LOCK_S * 1000)
async def poll_orders(marketplace: str = "backmarket") -> None:
    """Walk ``marketplace``'s recent orders and emit the events not sent yet (the scheduler's hook)."""
    counts = await walk_orders_of(marketplace, poll_orders.broker)
    if counts is not None:
        logger.info("orders of %s polled: %s", marketplace, counts)


async def walk_orders_of(marketplace: str, broker: dramatiq.Broker) -> dict | None:
    """What ``poll_orders`` does; returns the walk's counts (pages, orders, events, watermark).

    One walk at a time per marketplace (a Redis lock); a second one finds it held and returns None.
    """
    if marketplace not in POLLED_MARKETPLACES:
        raise MalformedMessage(f"poll_orders cannot walk {marketplace!r}: expected one of "
                               f"{', '.join(POLLED_MARKETPLACES)}")
    state = IntakeState(resources.async_redis(), get_settings().redis_namespace, marketplace)
    if not await state.lock():
        logger.info("orders of %s are being polled already: this poll stops here", marketplace)
        return None
    try:
        walk = walk_backmarket if marketplace == "backmarket" else walk_refurbed
        return await walk(state, broker)
    finally:
        await state.unlock()


async def walk_backmarket(state: IntakeState, broker: dramatiq.Broker) -> dict:
    """Walk ``/ws/orders`` modified since the watermark (minus the overlap); advance the watermark."""
    settings = get_settings()
    watermark = await state.watermark()
    since = (watermark - timedelta(seconds=settings.intake_orders_overlap_s) if watermark is not None
             else datetime.now(timezone.utc) - timedelta(seconds=settings.intake_orders_lookback_s))
    newest, counts = watermark, {"pages": 0, "orders": 0, "events": 0}
    async for page in walk_orders(backmarket_orders_client(), page_size=50,
                                  date_modification=since.strftime("%Y-%m-%dT%H:%M:%SZ")):
        counts["pages"] += 1
        counts["orders"] += len(page.results)
        counts["events"] += await state.send_new(
            [chain for order in page.results for chain in backmarket_order_events(order)], broker)
        for order in page.results:
            modified = _utc(order.date_modification)
            newest = modified if newest is None else max(newest, modified)
    # Only after every event of the walk is enqueued: a walk that fails half-way is read again.
    if newest is not None and newest != watermark:
        await state.set_watermark(newest)
    counts["watermark"] = newest.isoformat() if newest else None
    return counts


async def walk_refurbed(state: IntakeState, broker: dramatiq.Broker) -> dict:
    """Walk Refurbed orders released in the lookback window; emit what no webhook brought."""
    settings = get_settings()
    now = datetime.now(timezone.utc)
    released_since = (now - timedelta(seconds=settings.refurbed_orders_lookback_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    client = refurbed_client()
    counts, cursor = {"pages": 0, "orders": 0, "events": 0}, None
    while True:
        page = await client.list_orders(starting_after=cursor, released_at_ge=released_since)
        counts["pages"] += 1
        counts["orders"] += len(page.orders)
        counts["events"] += await state.send_new(
            [chain for order in page.orders for chain in refurbed_order_events(order, observed_at=now, source="poll")],
            broker)
        if not page.has_more or not page.orders:
            break
        cursor = page.orders[-1].id
    counts["watermark"] = None
    return counts


class IntakeState:
    """What the intake keeps in Redis for one marketplace: the poll lock, the watermark, the memo.

    The memo remembers which events of which order lines were sent (the line and the last event
    of its chain), so a walk re-reading its overlap, or a re-sent webhook, sends nothing twice.
    The watermark and the memo live beside the messages they led to: if Redis loses those, it
    loses these too, and the next poll reads its window again.
    """

    def __init__(self, redis, namespace: str, marketplace: str) -> None:
        self.redis = redis
        self.marketplace = marketplace
        self.prefix = f"{namespace}:orders:{marketplace}"
        self._token = uuid.uuid4().hex

    async def lock(self) -> bool:
        """Take the marketplace's poll lock (expires after :data:`POLL_LOCK_S`)."""
        return bool(await self.redis.set(f"{self.prefix}:poll-lock", self._token, nx=True, ex=POLL_LOCK_S))

    async def unlock(self) -> None:
        """Release the lock if it is still ours (compare and delete in one step)."""
        await self.redis.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
                              "end return 0", 1, f"{self.prefix}:poll-lock", self._token)

    async def watermark(self) -> datetime | None:
        """The newest ``date_modification`` a finished walk saw, or None."""
        raw = await self.redis.get(f"{self.prefix}:watermark")
        return datetime.fromisoformat(raw.decode()) if raw else None

    async def set_watermark(self, moment: datetime) -> None:
        """Store the walk's newest ``date_modification`` (after its events were enqueued)."""
        await self.redis.set(f"{self.prefix}:watermark", moment.isoformat())

    async def send_new(self, chains: list[EventChain], broker: dramatiq.Broker) -> int:
        """Send the chains the memo does not know, then remember them; return the events sent.

        Sent first, remembered after: a crash in between re-sends (harmless), never skips.
        """
        if not chains:
            return 0
        keys = [f"{self.prefix}:sent:{_chain_key(chain)}" for chain in chains]
        seen = await self.redis.mget(keys)
        fresh = [(key, chain) for key, chain, hit in zip(keys, chains, seen) if hit is None]
        if not fresh:
            return 0
        sent = await asyncio.to_thread(send_chains, [chain for _, chain in fresh], broker)
        settings = get_settings()
        ttl = int(max(settings.intake_orders_lookback_s, settings.refurbed_orders_lookback_s,
                      settings.intake_orders_overlap_s) + MEMO_SLACK_S)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, _ in fresh:
                pipe.set(key, 1, ex=ttl)
            await pipe.execute()
        return sent


def _chain_key(chain: EventChain) -> str:
    # A line moving between two states that hold stock (paid → accepted → shipped) needs nothing new.
    fields = chain[-1].fields
    return f"{fields['order_id']}:{fields['order_line_id']}:{chain[-1].kind}"
