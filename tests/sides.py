"""Each marketplace's sandbox as the end-to-end tests drive it: a "side" per platform, one set of verbs.

A side owns its sandbox and knows its account (the fleet's ``marketplace`` code), the fleet settings that
point at the sandbox, how to seed the catalogue as a sync left it, what the marketplace holds by SKU, and
how a customer orders and cancels there.  The race e2e, the fault e2e and the events e2e all drive the
platforms through these, so a helper written once (``send_order``, ``seed_from``, ``local_by_sku``) works
on every account.
"""
from __future__ import annotations

import itertools
import json
import queue
import random
import time
from datetime import datetime, timezone

from aiohttp import web
from sqlalchemy import text

from db import accounts as account_rows
from sandbox.backmarket import BackMarketSandbox
from sandbox.refurbed import RefurbedSandbox
from sandbox.shopify import ShopifySandbox
from tests.fleet import seed_catalogue

TOKEN = "e2e-side-token"
LISTINGS = 120
#: Where a fleet without a Back Market account sends Back Market calls: nothing listens there.
NO_BACKMARKET = "http://127.0.0.1:9"


class Side:
    """What every platform's side does unless it says otherwise."""

    account = ""
    name = ""
    #: What a sync of the platform records as a listing's publication state (Back Market's alone has one).
    publication_state: int | None = None
    #: What the marketplace said of its last cancellation (Shopify's refund lines): whether it restocked the
    #: unit; None: it says nothing, the account's default holds.
    said: bool | None = None

    def app(self) -> web.Application:
        return self.sandbox.build_app()

    def add_account(self, sessions, url: str) -> None:
        """The main account of the platform's settings is used."""

    def env(self, url: str) -> dict:
        """The fleet settings that point the account at the sandbox served on ``url``."""
        raise NotImplementedError

    def items(self) -> list[dict]:
        """Every listing as a catalogue page carries it (``id``, ``sku``, ``quantity``, ``title``...)."""
        raise NotImplementedError

    def truth(self) -> dict[str, int]:
        """SKU -> what the marketplace lists now."""
        return {item["sku"]: self.quantity(item["sku"]) for item in self.items()}

    def quantity(self, sku: str) -> int:
        raise NotImplementedError

    def walk_cursors(self) -> list[str | None]:
        """The cursor each catalogue page was read from, in the answered order (a cursor walk's sandbox records it)."""
        return self.sandbox.walk_cursors()

    def order(self, sku: str) -> tuple[str, str, str]:
        """(order id, line id, event time) of a new one-unit order of ``sku``: the marketplace's stock goes down."""
        raise NotImplementedError

    def arm(self, sku: str) -> None:
        """A push of ``sku`` is coming (only a compare-and-set shop has an order wait for it)."""

    def ambushed(self) -> list[tuple[str, str, str, str]]:
        """``(order, line, SKU, event time)`` of orders placed between a push's read and its write since last asked."""
        return []

    def moves(self, sku: str) -> list[str]:
        return []


class BackMarketSide(Side):
    """The sandbox Back Market: listings by SKU, an order line, its cancellation."""

    account = "backmarket"
    name = "Back Market"
    publication_state = 2

    def __init__(self, restocks: bool = True, *, listings: int = LISTINGS, seed: int = 77, token: str = TOKEN,
                 **dials) -> None:
        self.sandbox = BackMarketSandbox(listings=listings, seed=seed, token=token, quota_requests=0,
                                         restock_on_cancel=restocks, **dials)
        self.token = token
        self.ids = {listing["sku"]: listing["id"] for listing in map(self.sandbox.listing, range(listings))}

    def env(self, url: str) -> dict:
        return {"backmarket_url": url, "token": self.token}

    def items(self) -> list[dict]:
        return [self.sandbox.listing(i) for i in range(self.sandbox.listing_count())]

    def quantity(self, sku: str) -> int:
        return self.sandbox.quantity(self.ids[sku])

    def order(self, sku: str) -> tuple[str, str, str]:
        order = self.sandbox.orders.place_order([(self.ids[sku], 1)])
        return str(order["order_id"]), str(order["orderlines"][0]["id"]), order["date_creation"]

    def cancel(self, order_id: str, line_id: str) -> str:
        return self.sandbox.orders.set_line_state(int(order_id), int(line_id), 4)["date_modification"]

    def moves(self, sku: str) -> list[str]:
        offset = time.time() - time.monotonic()  # the sandbox's clock is monotonic
        return [f"  marketplace {datetime.fromtimestamp(offset + change.at, timezone.utc):%H:%M:%S.%f} "
                f"{change.before} -> {change.after} ({change.cause})"
                for change in self.sandbox.stock_changes() if change.listing == self.ids[sku]]


class RefurbedSide(Side):
    """The sandbox Refurbed: offers by SKU (Back Market's catalogue of the same seed), an order item, a cancellation."""

    account = "refurbed"
    name = "Refurbed"

    def __init__(self, restocks: bool = True, *, offers: int = LISTINGS, seed: int = 77, token: str = TOKEN,
                 **dials) -> None:
        self.sandbox = RefurbedSandbox(token=token, restock_on_cancel=restocks, **dials)
        self.sandbox.add_offers(offers, seed=seed)
        self.token = token

    def env(self, url: str) -> dict:
        return {"refurbed_base_url": url, "refurbed_token": self.token}

    def items(self) -> list[dict]:
        return [{"id": offer["id"], "sku": offer["sku"], "quantity": offer["stock"], "title": offer["instance_name"]}
                for offer in self.sandbox.offers()]

    def truth(self) -> dict[str, int]:
        return self.sandbox.quantities()

    def quantity(self, sku: str) -> int:
        return self.sandbox.stock(sku)

    def order(self, sku: str) -> tuple[str, str, str]:
        order = self.sandbox.place_order([sku], notify=False)
        return order["id"], order["items"][0]["id"], order["released_at"]

    def cancel(self, order_id: str, line_id: str) -> str:
        self.sandbox.set_item_state(line_id, "CANCELLED")
        return datetime.now(timezone.utc).isoformat()  # Refurbed gives no time: the intake takes the observed one


class ShopifySide(Side):
    """The sandbox Shopify shop (one location): an order line, its cancellation.

    An account of its own (``shop``, on the sandbox's loopback URL).  ``bucket``: the shop's query-cost
    bucket (None: Shopify's standard plan, the fleet's defaults); :data:`SMALL_PLAN` (100 points, 40 a
    second: a page of 10 variants costs 32) makes a walk take seconds, the pushes' reads and
    compare-and-set writes waiting in it beside the pages.  ``bulk``: every sync of the shop reads a bulk
    operation's file (exported in about 2 s) instead of pages; without it a sync is bulk as the fleet's
    ``SHOPIFY_BULK_MIN_VARIANTS`` chooses.  ``account``: a second shop of the seller has a code of its own
    (its token in ``STOCKSYNC_ACCOUNT_<CODE>_TOKEN``).  A customer lies in wait for each armed SKU:
    when a push's write of that item reaches the shop, it orders one unit just before the shop runs it,
    so that the write's ``changeFromQuantity`` is stale and the shop refuses it.
    """

    account = "shop"
    name = "Shop"
    SMALL_PLAN = {"cost_maximum": 100, "cost_restore_rate": 40}
    #: The account's options (its ``restock_on_cancel``); none: the platform's defaults.
    options: dict | None = None

    def __init__(self, restocks: bool = True, *, products: int = LISTINGS // 2, locations: int = 1, seed: int = 77,
                 token: str = TOKEN, bucket: dict | None = None, bulk: bool = False, mixed: bool = False,
                 account: str = "shop", **dials) -> None:
        # mixed: each cancellation restocks or not at random, as a merchant chooses per order, whatever the dial.
        self.mixed, self._choices = mixed, random.Random(seed)
        self.bucket = bucket
        self.account, self.name = account, "Shop" if account == "shop" else f"Shop {account}"
        self.credentials_env = f"STOCKSYNC_ACCOUNT_{account.upper().replace('-', '_')}_TOKEN"
        self.sandbox = ShopifySandbox(products=products, variants_per_product=2, locations=locations, token=token,
                                      restock_on_cancel=restocks, seed=seed,
                                      **{"bulk_startup_s": 1.0, "bulk_objects_per_s": 100, **(bucket or {}), **dials})
        self.bulk = bulk
        self.token = token
        self.skus = {str(variant["inventory_item_id"]): variant["sku"] for variant in self.sandbox.variants()}
        self._armed: set[str] = set()
        self._ambushed: queue.SimpleQueue = queue.SimpleQueue()

    def app(self) -> web.Application:
        app = self.sandbox.build_app()
        app.middlewares.append(self._customer)  # inside the sandbox's own: after its authentication
        return app

    def env(self, url: str) -> dict:
        env = {"accounts_allow_loopback": "true", self.credentials_env.lower(): self.token}
        if self.bucket:
            env.update(shopify_cost_bucket_points=self.bucket["cost_maximum"],
                       shopify_cost_restore_per_s=self.bucket["cost_restore_rate"])
        return {**env, **self.bulk_env()}

    def bulk_env(self) -> dict:
        """With ``bulk``: every sync a bulk export, asked about twice a second (the default is every 2 s)."""
        return {"shopify_bulk_min_variants": 0, "shopify_bulk_poll_s": 0.5} if self.bulk else {}

    def add_account(self, sessions, url: str) -> None:
        with sessions() as session:
            account_rows.add_account(session, platform="shopify", code=self.account, name=self.name,
                                     credentials_env=self.credentials_env, base_url=url, allow_loopback=True,
                                     options=self.options)
            session.commit()

    def items(self) -> list[dict]:
        quantities = self.sandbox.quantities()
        return [{"id": item, "sku": sku, "quantity": quantities[sku], "title": None} for item, sku in self.skus.items()]

    def truth(self) -> dict[str, int]:
        return self.sandbox.quantities()

    def walk_cursors(self) -> list[str | None]:
        """A bulk side's file reads as the walk's cursors (``bulk:<operation>:<offset>``); else its pages'."""
        if not self.bulk:
            return self.sandbox.walk_cursors()
        from clients.shopify_bulk import cursor

        return [cursor(number, offset) for number, offset in self.sandbox.file_reads()]

    def quantity(self, sku: str) -> int:
        return self.sandbox.available(sku) or 0

    def order(self, sku: str) -> tuple[str, str, str]:
        order = self.sandbox.place_order({sku: 1}, notify=False)
        return str(order["id"]), str(order["line_items"][0]["id"]), order["created_at"]

    def cancel(self, order_id: str, line_id: str) -> str:
        restock = self._choices.random() < 0.5 if self.mixed else None
        cancelled = self.sandbox.cancel_order(int(order_id), restock=restock, notify=False)
        # What the signed body says of the line (its one refund line's restock type), as the intake reads it.
        self.said = cancelled["refunds"][-1]["refund_line_items"][0]["restock_type"] == "cancel"
        return cancelled["cancelled_at"]

    def arm(self, sku: str) -> None:
        self._armed.add(sku)

    def ambushed(self) -> list[tuple[str, str, str, str]]:
        found = []
        while not self._ambushed.empty():
            found.append(self._ambushed.get())
        return found

    @web.middleware
    async def _customer(self, request: web.Request, handler) -> web.StreamResponse:
        if self._armed and request.path.endswith("/graphql.json"):
            asked = json.loads(await request.read())  # read again by the handler (aiohttp keeps the body)
            if "StocksyncSetAvailable" in str(asked.get("query")):
                item = asked["variables"]["input"]["quantities"][0]["inventoryItemId"].rsplit("/", 1)[-1]
                sku = self.skus.get(item)
                if sku in self._armed and self.quantity(sku) > 0:  # the push has read: the customer buys now
                    self._armed.discard(sku)
                    order_id, line_id, moment = self.order(sku)
                    self._ambushed.put((order_id, line_id, sku, moment))
        return await handler(request)


SIDES = {"backmarket": BackMarketSide, "refurbed": RefurbedSide, "shopify": ShopifySide}


def sides_env(served: list[tuple[Side, str]]) -> dict:
    """The fleet settings of every ``(side, url)`` served: ``fleet_env``'s keywords (no Back Market: a dead URL)."""
    env = {"backmarket_url": NO_BACKMARKET, "token": TOKEN}
    for side, url in served:
        env.update(side.env(url))
    return env


def seed_from(sessions, side: Side) -> None:
    """The side's catalogue as a stock sync of its account left it an hour ago."""
    seed_catalogue(sessions, side.items(), side.account, side.name, publication_state=side.publication_state)


_lines = itertools.count(1)


def send_order(broker, side: Side, sku: str) -> str:
    """A unit of ``sku`` sold on the marketplace (its stock goes down there first), then its order event; the line."""
    from actors import events  # message factories only: the test process enqueues, the fleet works

    order_id, line_id, moment = side.order(sku)
    broker.enqueue(events.order_created.message_with_options(kwargs=dict(
        marketplace=side.account, order_id=order_id, order_line_id=line_id, sku=sku, quantity=1,
        event_time=moment, source="webhook")))
    return line_id


def send_topup(broker, side: Side, sku: str, quantity: int, reference: str) -> None:
    """A delivery of ``quantity`` units of ``sku`` on ``side``'s account (``reference``: once): the fleet pushes it."""
    from actors import events

    broker.enqueue(events.stock_topup.message_with_options(kwargs=dict(
        marketplace=side.account, sku=sku, quantity=quantity, reference=reference,
        event_time=datetime.now(timezone.utc).isoformat())))


def local_by_sku(sessions, account: str) -> dict[str, int]:
    """SKU -> the stock row's ``listed`` of ``account``."""
    with sessions() as session:
        return dict(session.execute(text(
            "SELECT v.sku, s.listed FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
            "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :code"), {"code": account}).all())


def off_by(local: dict[str, int], truth: dict[str, int]) -> tuple[dict, dict]:
    """The rows above and below the truth: SKU -> (local, truth); a SKU missing on one side counts as 0 there."""
    pairs = {sku: (local.get(sku, 0), truth.get(sku, 0)) for sku in {*local, *truth}}
    return ({sku: pair for sku, pair in pairs.items() if pair[0] > pair[1]},
            {sku: pair for sku, pair in pairs.items() if pair[0] < pair[1]})


def settled(sessions) -> bool:
    """No sync running, and no stock row waiting for a push or a re-check (nor held by a push)."""
    with sessions() as session:
        return session.execute(text(
            "SELECT NOT EXISTS (SELECT 1 FROM sync_runs WHERE status = 'running') AND NOT EXISTS ("
            "SELECT 1 FROM marketplace_stock WHERE needs_recheck OR push_state IN ('pending', 'failed') "
            "OR push_lease_owner IS NOT NULL)")).scalar()
