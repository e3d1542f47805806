"""Marketplace orders become stock-event chains: the one place for Back Market, Refurbed and Shopify.

Every order line gives ``order_created`` when it holds stock, and ``order_created`` then
``order_cancelled`` (a chain: the cancel runs only once the create is booked) when it gave the
stock back before shipping, so a line first seen already cancelled nets to zero.  Both are
idempotent in the ledger (marketplace + line), so a webhook and a poll of the same order change
the stock once; the Redis memo of :class:`IntakeState` only spares re-sending.  What was sent is
also kept until the ledger shows it booked: each walk re-sends the chains still unbooked
``INTAKE_ORDERS_RESEND_AFTER_S`` after they were sent (their messages died, or vanished with a
Redis restart), up to :data:`MAX_SENDS` times.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import dramatiq

from clients.backmarket_orders import HOLDING_LINE_STATES, RELEASED_LINE_STATES, Order, parse_time, walk_orders
from clients.refurbed import HOLDING_ITEM_STATES, RELEASED_ITEM_STATES, SETTLED_ITEM_STATES, RefurbedOrder
from clients.refurbed import MAX_PAGE_LIMIT as REFURBED_PAGE_LIMIT
from clients.shopify import ShopifyOrder
from core.events import InvalidStockEvent, StockEvent
from db.ledger import booked_keys
from runtime import accounts, resources
from runtime.clients import account_client, orders_client
from runtime.producer import StockEvents
from runtime.settings import get_settings

logger = logging.getLogger(__name__)

#: Shopify topics that move stock; the intake acknowledges and ignores the others.
SHOPIFY_TOPICS = ("orders/create", "orders/cancelled")

#: Seconds a poll may hold its lock: the actor's time limit, so a killed poll cannot block for good.
POLL_LOCK_S = 15 * 60

#: How long the memo of sent (line, event) pairs lives beyond the re-read windows.
MEMO_SLACK_S = 24 * 3600

#: How many times a chain is sent before an unbooked one is left to an operator (its dead letters).
MAX_SENDS = 3

#: One order line's events, sent as a chain (each only after the previous one is booked).
EventChain = list[StockEvent]


class MalformedOrder(ValueError):
    """An order payload is not an order (no id, no lines, a time that does not parse).  Permanent."""

    permanent = True


# -- orders → event chains -----------------------------------------------------------------------


def backmarket_order_events(order: Order, *, now: datetime | None = None, account: str = "backmarket"
                            ) -> list[EventChain]:
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
        common = {"marketplace": account, "order_id": order.order_id, "order_line_id": line.id,
                  "sku": line.sku, "quantity": line.quantity, "source": "poll"}
        placed_at = min(_utc(line.date_creation or order.date_creation or order.date_modification), now)
        try:
            chain = [StockEvent.of("order_created", event_time=placed_at, now=now, **common)]
            if line.state in RELEASED_LINE_STATES:
                chain.append(StockEvent.of("order_cancelled", event_time=min(_utc(order.date_modification), now),
                                           now=now, **common))
        except InvalidStockEvent as invalid:
            logger.warning("back market order %s line %s cannot be booked: %s", order.order_id, line.id, invalid)
            continue
        chains.append(chain)
    return chains


def refurbed_order_events(order: RefurbedOrder, *, observed_at: datetime, source: str, account: str = "refurbed"
                          ) -> list[EventChain]:
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
        common = {"marketplace": account, "order_id": order.id, "order_line_id": item.id, "sku": item.sku,
                  "quantity": 1, "source": source}
        placed_at = _utc(order.released_at) if order.released_at else observed_at
        try:
            chain = [StockEvent.of("order_created", event_time=min(placed_at, observed_at), now=observed_at,
                                   **common)]
            if item.state in RELEASED_ITEM_STATES:
                chain.append(StockEvent.of("order_cancelled", event_time=observed_at, now=observed_at, **common))
        except InvalidStockEvent as invalid:
            logger.warning("refurbed order %s item %s cannot be booked: %s", order.id, item.id, invalid)
            continue
        chains.append(chain)
    return chains


def shopify_order_events(order: Any, topic: str, marketplace: str, *, now: datetime | None = None,
                         source: str = "webhook") -> tuple[list[EventChain], list[str]]:
    """The event chains of a Shopify order webhook payload, and the line ids left out (no SKU).

    Only the body is signed (``X-Shopify-Topic`` is not), so what is booked comes from the body:
    ``order_created`` per line at ``created_at``, then ``order_cancelled`` (at the body's own
    ``cancelled_at``, with the units Shopify restocked by its refund lines: :func:`shopify_restocked`)
    when that is set, chained, so a cancellation whose creation was never
    received still books both and nets to zero.  The topic only has to agree: ``orders/cancelled``
    with a body that is not cancelled (an ``orders/create`` body re-sent under another topic) is
    refused.  Unlike a poll, a bad line refuses the whole payload: the webhook is answered 400.

    Raises:
      MalformedOrder: The payload is not an order, or not the cancelled order its topic says.
      InvalidStockEvent: A field of a line is wrong.
    """
    if not isinstance(order, dict) or "id" not in order or not isinstance(order.get("line_items"), list):
        raise MalformedOrder("expected a Shopify order object with id and line_items")
    created_at = order.get("created_at")
    if not isinstance(created_at, str):
        raise MalformedOrder("the order has no created_at")
    cancelled_at = order.get("cancelled_at")
    if cancelled_at is not None and not isinstance(cancelled_at, str):
        raise MalformedOrder("cancelled_at must be an ISO 8601 time or null")
    if topic == "orders/cancelled" and cancelled_at is None:
        raise MalformedOrder("the topic is orders/cancelled but the signed body has no cancelled_at: nothing booked")
    # Shopify's clock ahead of ours must not refuse the order (Shopify would retry it, then give up).
    now = now or datetime.now(timezone.utc)
    created_at = min(_aware(created_at, "created_at"), now)
    if cancelled_at is not None:
        cancelled_at = min(_aware(cancelled_at, "cancelled_at"), now)
    restocked = shopify_restocked(order) if cancelled_at is not None else {}
    chains, skipped = [], []
    for index, line in enumerate(order["line_items"]):
        if not isinstance(line, dict) or "id" not in line:
            raise MalformedOrder(f"line_items[{index}] must be an object with an id")
        if not line.get("sku"):
            skipped.append(str(line["id"])[:64])
            continue
        common = {"marketplace": marketplace, "order_id": order["id"], "order_line_id": line["id"],
                  "sku": line["sku"], "quantity": line.get("quantity"), "source": source}
        chain = [StockEvent.of("order_created", event_time=created_at, now=now, **common)]
        if cancelled_at is not None:
            chain.append(StockEvent.of("order_cancelled", event_time=cancelled_at, now=now,
                                       restocked=_capped(restocked.get(str(line["id"])), line.get("quantity")),
                                       **common))
        chains.append(chain)
    return chains, skipped


#: Shopify's refund line restock types (REST spelling) that put the units back in the shop's stock.
SHOPIFY_RESTOCKING = frozenset({"cancel", "return", "legacy_restock"})
SHOPIFY_RESTOCK_TYPES = SHOPIFY_RESTOCKING | {"no_restock"}


def shopify_restocked(order: dict) -> dict[str, int]:
    """Line id -> the units Shopify restocked, by the order's refund lines (``refunds[].refund_line_items[]``:
    ``line_item_id``, ``quantity``, ``restock_type``); a line no refund line names is left out (Shopify said
    nothing of it: the account's default decides).

    Raises:
      MalformedOrder: A refund or refund line is not of Shopify's shape, or names an unknown restock type.
    """
    refunds = order.get("refunds") or []
    if not isinstance(refunds, list):
        raise MalformedOrder("refunds must be a list")
    found: dict[str, int] = {}
    for at, refund in enumerate(refunds):
        items = refund.get("refund_line_items") if isinstance(refund, dict) else None
        if not isinstance(items, list):
            raise MalformedOrder(f"refunds[{at}] must be an object with a refund_line_items list")
        for index, item in enumerate(items):
            where = f"refunds[{at}].refund_line_items[{index}]"
            if not isinstance(item, dict) or item.get("line_item_id") is None:
                raise MalformedOrder(f"{where} must be an object with a line_item_id")
            quantity, kind = item.get("quantity"), item.get("restock_type")
            if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 0:
                raise MalformedOrder(f"{where}.quantity must be a whole number of units, got {quantity!r}"[:200])
            if kind not in SHOPIFY_RESTOCK_TYPES:
                raise MalformedOrder(f"{where}.restock_type must be one of {', '.join(sorted(SHOPIFY_RESTOCK_TYPES))}"
                                     f", got {str(kind)[:40]!r}")
            line = str(item["line_item_id"])
            found[line] = found.get(line, 0) + (quantity if kind in SHOPIFY_RESTOCKING else 0)
    return found


def _capped(restocked: int | None, quantity: Any) -> int | None:
    # Refund lines summing past the line (a return after a cancel's restock) restock no more than the line.
    if restocked is None or not isinstance(quantity, int):
        return restocked
    return min(restocked, quantity)


#: The times of a Shopify order body; the newest is when Shopify made the body (a retry resends it as it was).
SHOPIFY_BODY_TIMES = ("created_at", "updated_at", "cancelled_at")


def shopify_body_time(order: dict) -> datetime:
    """When Shopify made this (signed) order body: the newest of its ``created_at``, ``updated_at``,
    ``cancelled_at``, in UTC.

    Raises:
      MalformedOrder: One of them is set but not an ISO 8601 time with a zone, or none is set.
    """
    times = []
    for name in SHOPIFY_BODY_TIMES:
        value = order.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise MalformedOrder(f"{name} must be an ISO 8601 time or null")
        times.append(_aware(value, name))
    if not times:
        raise MalformedOrder("the order has no created_at")
    return max(times)


def _aware(text: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedOrder(f"{name} is not an ISO 8601 time: {text[:40]!r}") from None
    if moment.tzinfo is None:
        raise MalformedOrder(f"{name} has no time zone: {text[:40]!r}")
    return moment.astimezone(timezone.utc)


def _utc(text: str) -> datetime:
    return parse_time(text).astimezone(timezone.utc)


def send_chains(chains: list[EventChain], broker: dramatiq.Broker) -> int:
    """Enqueue each chain (one message, or a pipeline of two); return how many events were sent."""
    events = StockEvents(broker)
    for chain in chains:
        events.send_in_order(chain)
    return sum(len(chain) for chain in chains)


# -- the Refurbed webhook follow-up and the backstop walks ----------------------------------------


async def book_refurbed_order(order_id: str, broker: dramatiq.Broker, account: str = "refurbed") -> int:
    """Re-fetch a notified Refurbed order (``GetOrder``) and send the events not sent yet; return how many."""
    view = accounts.account(account, "poll_orders")
    order = await account_client(view).get_order(order_id)
    chains = refurbed_order_events(order, observed_at=datetime.now(timezone.utc), source="webhook", account=account)
    state = IntakeState(resources.async_redis(), get_settings().redis_namespace, account)
    return await state.send_new(chains, broker)


async def walk_orders_of(marketplace: str, broker: dramatiq.Broker) -> dict | None:
    """Walk account ``marketplace``'s recent orders and send the events not sent yet; return the walk's counts.

    One walk at a time per account (a Redis lock); a second one finds it held and returns None.
    """
    view = accounts.account(marketplace, "poll_orders")
    state = IntakeState(resources.async_redis(), get_settings().redis_namespace, marketplace)
    if not await state.lock():
        logger.info("orders of %s are being polled already: this poll stops here", marketplace)
        return None
    try:
        walk = {"backmarket": walk_backmarket, "shopify": walk_shopify}.get(view.platform.name, walk_refurbed)
        counts = await walk(state, broker, view)
        counts["resent"] = await state.resend_unbooked(broker)
        return counts
    finally:
        await state.unlock()


def _since(watermark: datetime | None) -> datetime:
    """Where a watermark walk starts: the watermark minus the overlap, or the lookback before the first walk."""
    settings = get_settings()
    if watermark is not None:
        return watermark - timedelta(seconds=settings.intake_orders_overlap_s)
    return datetime.now(timezone.utc) - timedelta(seconds=settings.intake_orders_lookback_s)


async def walk_backmarket(state: IntakeState, broker: dramatiq.Broker, view: accounts.AccountView) -> dict:
    """Walk ``/ws/orders`` modified since the watermark (minus the overlap); advance the watermark."""
    watermark = await state.watermark()
    since = _since(watermark)
    newest, counts = watermark, {"pages": 0, "orders": 0, "events": 0}
    async for page in walk_orders(orders_client(view), page_size=50,
                                  date_modification=since.strftime("%Y-%m-%dT%H:%M:%SZ")):
        counts["pages"] += 1
        counts["orders"] += len(page.results)
        counts["events"] += await state.send_new(
            [chain for order in page.results for chain in backmarket_order_events(order, account=view.code)], broker)
        for order in page.results:
            modified = _utc(order.date_modification)
            newest = modified if newest is None else max(newest, modified)
    # Only after every event of the walk is enqueued: a walk that fails half-way is read again.
    if newest is not None and newest != watermark:
        await state.set_watermark(newest)
    counts["watermark"] = newest.isoformat() if newest else None
    return counts


async def walk_refurbed(state: IntakeState, broker: dramatiq.Broker, view: accounts.AccountView) -> dict:
    """Walk the Refurbed orders that may have changed; send what no webhook brought.

    Refurbed's orders carry no update time (``ListOrders`` filters on ``released_at``, ``state``, ``id``...)
    and an item's cancellation moves nothing a filter sees, so a watermark alone would find the new
    orders (webhooks bring those) and miss the cancellations this walk is for.  A walk reads the orders
    released since the newest one seen (minus ``INTAKE_ORDERS_OVERLAP_S``) and, by id, those the last
    walk left open (an item still NEW or ACCEPTED), within ``REFURBED_ORDERS_LOOKBACK_S``; the first walk,
    or one after Redis lost the walk's state, reads the whole window.
    """
    settings = get_settings()
    now = datetime.now(timezone.utc)
    window = now - timedelta(seconds=settings.refurbed_orders_lookback_s)
    watermark, left_open = await state.watermark(), await state.open_orders()
    since = window if watermark is None or left_open is None else max(
        window, watermark - timedelta(seconds=settings.intake_orders_overlap_s))
    reads = [{"released_at_ge": since.strftime("%Y-%m-%dT%H:%M:%SZ")}] + [
        {"ids": left_open[start:start + REFURBED_PAGE_LIMIT]}
        for start in range(0, len(left_open or ()), REFURBED_PAGE_LIMIT)]
    client = orders_client(view)
    newest, still_open, seen = watermark, [], set()
    counts = {"pages": 0, "orders": 0, "events": 0}
    for read in reads:
        cursor = None
        while True:
            page = await client.list_orders(starting_after=cursor, **read)
            counts["pages"] += 1
            fresh = [order for order in page.orders if order.id not in seen]
            seen.update(order.id for order in fresh)
            counts["orders"] += len(fresh)
            counts["events"] += await state.send_new(
                [chain for order in fresh
                 for chain in refurbed_order_events(order, observed_at=now, source="poll", account=view.code)], broker)
            for order in fresh:
                released = _utc(order.released_at) if order.released_at else None
                if released is not None and (newest is None or released > newest):
                    newest = released
                if (released is None or released >= window) and any(
                        item.state not in SETTLED_ITEM_STATES for item in order.items):
                    still_open.append(order.id)
            if not page.has_more or not page.orders:
                break
            cursor = page.orders[-1].id
    # Only after every event of the walk is enqueued: a walk that fails half-way is read again.
    await state.set_walk(newest, still_open)
    counts["watermark"] = newest.isoformat() if newest else None
    counts["open"] = len(still_open)
    return counts


def shopify_polled_events(order: ShopifyOrder, marketplace: str, *, now: datetime | None = None) -> list[EventChain]:
    """The event chains of a polled Shopify order: the same as its webhook's (same order and line numbers,
    so a webhook and a poll book it once); an order that cannot be booked is logged and left out."""
    body = {"id": int(order.id), "created_at": order.created_at, "cancelled_at": order.cancelled_at,
            "line_items": [{"id": int(line.id), "sku": line.sku, "quantity": line.quantity} for line in order.lines],
            "refunds": [{"refund_line_items": [{"line_item_id": int(item.line_id), "quantity": item.quantity,
                                                "restock_type": item.restock_type.lower()}
                                               for item in order.refund_lines]}]}
    topic = "orders/create" if order.cancelled_at is None else "orders/cancelled"
    try:
        return shopify_order_events(body, topic, marketplace, now=now, source="poll")[0]
    except (MalformedOrder, InvalidStockEvent) as invalid:
        logger.warning("shopify order %s (%s) cannot be booked: %s", order.name or order.id, marketplace, invalid)
        return []


async def walk_shopify(state: IntakeState, broker: dramatiq.Broker, view: accounts.AccountView) -> dict:
    """Walk the shop's orders updated since the watermark (minus the overlap), cancellations included."""
    watermark = await state.watermark()
    since = _since(watermark)
    client = orders_client(view)
    newest, counts, cursor = watermark, {"pages": 0, "orders": 0, "events": 0}, None
    while True:
        page = await client.orders_page(since.strftime("%Y-%m-%dT%H:%M:%SZ"), cursor)
        counts["pages"] += 1
        counts["orders"] += len(page.orders)
        counts["events"] += await state.send_new(
            [chain for order in page.orders for chain in shopify_polled_events(order, view.code)], broker)
        for order in page.orders:
            updated = _aware(order.updated_at, "updatedAt")
            newest = updated if newest is None else max(newest, updated)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    # Only after every event of the walk is enqueued: a walk that fails half-way is read again.
    if newest is not None and newest != watermark:
        await state.set_watermark(newest)
    counts["watermark"] = newest.isoformat() if newest else None
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

    async def open_orders(self) -> list[str] | None:
        """The orders the last finished walk left open (they may still change), or None before one."""
        raw = await self.redis.get(f"{self.prefix}:open-orders")
        return json.loads(raw) if raw else None

    async def set_walk(self, watermark: datetime | None, open_orders: list[str]) -> None:
        """Store a finished walk's watermark and the orders it left open, together (after its events were enqueued)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if watermark is not None:
                pipe.set(f"{self.prefix}:watermark", watermark.isoformat())
            pipe.set(f"{self.prefix}:open-orders", json.dumps(open_orders))
            await pipe.execute()

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
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, chain in fresh:
                pipe.set(key, 1, ex=ttl)
                pipe.hset(self.unconfirmed_key, _chain_key(chain), _unconfirmed(chain, now, sends=1))
            await pipe.execute()
        return sent

    @property
    def unconfirmed_key(self) -> str:
        """The hash of chains sent and not seen booked yet: chain key -> events, when sent, how often."""
        return f"{self.prefix}:unconfirmed"

    async def resend_unbooked(self, broker: dramatiq.Broker, *, now: float | None = None) -> int:
        """Re-send the chains sent over ``INTAKE_ORDERS_RESEND_AFTER_S`` ago that the ledger has not booked.

        A chain whose events are all booked is forgotten; one sent :data:`MAX_SENDS` times and still
        unbooked is logged and forgotten (its dead letters say why).  Returns the events re-sent.
        """
        now = time.time() if now is None else now
        grace = get_settings().intake_orders_resend_after_s
        entries = {name.decode(): json.loads(raw)
                   for name, raw in (await self.redis.hgetall(self.unconfirmed_key)).items()}
        due = {name: entry for name, entry in entries.items() if entry["sent_at"] <= now - grace}
        if not due:
            return 0
        chains = {name: [StockEvent.of(e["kind"], **e["fields"]) for e in entry["events"]]
                  for name, entry in due.items()}
        booked = await asyncio.to_thread(_booked, [event.key for chain in chains.values() for event in chain])
        resend, forget = [], []
        for name, entry in due.items():
            if all(event.key in booked for event in chains[name]):
                forget.append(name)
            elif entry["sends"] >= MAX_SENDS:
                logger.error("order line %s (%s): not booked after %d sends; see the stock-events dead letters",
                             name, self.marketplace, entry["sends"])
                forget.append(name)
            else:
                resend.append((name, entry))
        sent = await asyncio.to_thread(send_chains, [chains[name] for name, _ in resend], broker) if resend else 0
        async with self.redis.pipeline(transaction=False) as pipe:
            if forget:
                pipe.hdel(self.unconfirmed_key, *forget)
            for name, entry in resend:
                pipe.hset(self.unconfirmed_key, name, _unconfirmed(chains[name], now, sends=entry["sends"] + 1))
            await pipe.execute()
        if sent:
            logger.warning("orders of %s: re-sent %d event(s) of %d order line(s) not booked after %.0f s",
                           self.marketplace, sent, len(resend), grace)
        return sent


def unbooked_order_lines(marketplace: str) -> dict[str, list[dict]]:
    """The order lines of ``marketplace`` the intake sent and the ledger has not booked, by SKU (drift evidence).

    Read from the intake's memo (:attr:`IntakeState.unconfirmed_key`): each is an order the marketplace
    took whose ``order_created`` is not in the ledger yet.
    """
    state = IntakeState(None, get_settings().redis_namespace, marketplace)
    entries = [json.loads(raw) for raw in resources.sync_redis().hvals(state.unconfirmed_key)]
    created = [StockEvent.of(e["kind"], **e["fields"]) for entry in entries for e in entry["events"]
               if e["kind"] == "order_created"]
    booked = _booked([event.key for event in created])
    lines: dict[str, list[dict]] = {}
    for event in created:
        if event.key not in booked:
            lines.setdefault(event.sku, []).append({"order_id": event.order_id, "order_line_id": event.order_line_id,
                                                    "quantity": event.quantity})
    return lines


def _unconfirmed(chain: EventChain, sent_at: float, *, sends: int) -> str:
    return json.dumps({"events": [{"kind": e.kind, "fields": e.fields} for e in chain], "sent_at": sent_at,
                       "sends": sends})


def _booked(keys: list[str]) -> set[str]:
    with resources.sessions()() as session:
        return booked_keys(session, keys)


def _chain_key(chain: EventChain) -> str:
    # A line moving between two states that hold stock (paid → accepted → shipped) needs nothing new.
    return f"{chain[-1].order_id}:{chain[-1].order_line_id}:{chain[-1].kind}"
