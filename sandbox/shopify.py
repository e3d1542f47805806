"""A simulated Shopify shop: the GraphQL Admin API (cost, throttling, compare-and-set writes, orders
and their webhooks) and the legacy Admin REST reads.

GraphQL, ``POST /admin/api/{version}/graphql.json`` (:mod:`sandbox.shopify_graphql`; the schema in
``sandbox/shopify.graphql``, Shopify's type names; the version ``core.platforms.SHOPIFY_API_VERSION``
is what stocksync sends, any is served): ``productVariants``, ``productVariant``, ``inventoryItem``
(``inventoryLevel(locationId:)``, ``inventoryLevels``, ``quantities(names:)``), ``locations``,
``location``, ``orders`` and ``order``; the mutation ``inventorySetQuantities`` with 2026-01's
compare-and-set (``changeFromQuantity``; a stale one answers ``CHANGE_FROM_QUANTITY_STALE`` and
writes nothing).  Every answer carries ``extensions.cost``; cost rules and the bucket (the standard
plan's 2000 points, 100 a second) are in :mod:`sandbox.shopify_cost`: a query over the points
available is answered ``THROTTLED`` (HTTP 200, no ``data``).  Behaviour the sandbox chooses where
Shopify's would differ:

- the shop keeps ``available`` only: ``on_hand`` reads the same, the other quantity names 0; an
  item is ``tracked`` when its level at every location is (``set_available(sku, None)`` untracks
  one); a write to an untracked level tracks it;
- an order takes its units from ``available`` at once (Shopify moves them to ``committed``);
- the ``orders`` search understands ``created_at``, ``updated_at`` and ``name`` terms and refuses
  the rest with an error naming it (Shopify ignores them with a warning).

Orders (:mod:`sandbox.shopify_orders`): :meth:`ShopifySandbox.place_order` lowers ``available`` at a
location, :meth:`ShopifySandbox.cancel_order` sets ``cancelledAt`` and restocks or not; both send
their webhook (``orders/create``, ``orders/cancelled``) signed as Shopify signs.

REST, served under ``/admin/api/{version}/``: ``products.json`` (products with their variants:
``sku``, ``inventory_item_id``), ``locations.json`` and ``inventory_levels.json?location_ids=...``
(one level per inventory item and location, ``available`` may be ``null`` when untracked).  Lists
take ``limit`` (at most 250, default 50) and page with a ``Link`` header whose ``rel="next"`` URL
carries an opaque ``page_info`` (with it, only ``limit`` and ``fields`` may be given, as on
Shopify).  REST calls go through a leaky bucket (``bucket_size`` 40, ``leak_per_s`` 2 by default)
reported in ``X-Shopify-Shop-Api-Call-Limit: used/size``; a call that would overflow it is
answered ``429`` with ``Retry-After``.

Every API call needs ``X-Shopify-Access-Token``.  Fault dials: ``latency_s``, ``error_rate`` (500s,
seeded), :meth:`ShopifySandbox.fail_next` (5xx), :meth:`ShopifySandbox.throttle_next` (GraphQL
``THROTTLED``), :meth:`ShopifySandbox.rate_limit_next` (REST 429).  ``/_sandbox/...`` control
routes (no authentication: loopback by default): ``stats``, ``config``, ``quantities``,
``available``, ``orders``, ``orders/{id}/cancel``, ``faults``.  :meth:`ShopifySandbox.quantities`
is the tests' truth.

Bulk query operations (:mod:`sandbox.shopify_bulk`): ``bulkOperationRunQuery``, ``bulkOperation``,
``currentBulkOperation``; their JSONL files are served under ``/_storage/bulk/`` by signed links
that need no access token (a storage host's).
"""
from __future__ import annotations

import base64
import hmac
import itertools
import json
import math
import random
import re
import threading
import time
from collections import Counter, deque
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from sandbox import shopify_graphql
from sandbox.shopify_bulk import STORAGE_PREFIX, BulkOperations
from sandbox.common import (Delivery, Dials, OutOfStock, admin_body, admin_error, injected_failure, optional_bool,
                            pause, serve_counted)
from sandbox.shopify_cost import STANDARD_MAXIMUM_AVAILABLE, STANDARD_RESTORE_RATE, CostBucket
from sandbox.shopify_graphql import gid, iso_datetime, parse_gid
from sandbox.shopify_orders import ShopifyOrders

__all__ = ["ShopifySandbox"]

_OPERATION = re.compile(r"\s*(?:query|mutation)\s+(\w+)")

DEFAULT_LIMIT = 50
MAX_LIMIT = 250
LOCATION_ID_BASE = 655_441_491
PRODUCT_ID_BASE = 632_910_392
VARIANT_ID_BASE = 808_950_810
INVENTORY_ITEM_ID_BASE = 39_072_856
ADJUSTMENT_GROUP_ID_BASE = 1_188_642_521
ADMIN_PREFIX = "/_sandbox/"
#: The largest quantity ``inventorySetQuantities`` accepts.
MAX_QUANTITY = 1_000_000_000
#: When the generated levels were last changed (what ``updatedAt`` says before a write).
LEVELS_CREATED_AT = datetime(2026, 1, 1, tzinfo=timezone.utc)
#: The quantity names Shopify knows (the sandbox keeps ``available``; ``on_hand`` reads the same).
QUANTITY_NAMES = ("available", "committed", "damaged", "incoming", "on_hand", "quality_control", "reserved",
                  "safety_stock")
#: ``inventorySetQuantities`` reasons (Shopify's inventory adjustment reasons).
SET_REASONS = frozenset({"correction", "cycle_count_available", "damaged", "movement_canceled", "movement_created",
                         "movement_received", "movement_updated", "other", "promotion", "quality_control", "received",
                         "reservation_created", "reservation_deleted", "reservation_updated", "restock",
                         "safety_stock", "shrinkage"})


class ShopifySandbox(Dials):
    """The products, locations, inventory and orders of one simulated shop, and the app that serves them.

    Dials (constructor keywords, :meth:`configure` and ``POST /_sandbox/config``): ``token`` (what
    ``X-Shopify-Access-Token`` must carry), ``bucket_size`` and ``leak_per_s`` (the REST leaky
    bucket), ``cost_maximum`` and ``cost_restore_rate`` (the GraphQL cost bucket, Shopify's standard
    plan by default), ``latency_s`` (added to every API request), ``error_rate`` (the share of API
    requests answered 500, seeded), ``restock_on_cancel`` (whether a cancelled order gives its units
    back by default), ``webhook_url``, ``webhook_secret`` and ``shop_domain`` (the order webhooks);
    bulk operations (:mod:`sandbox.shopify_bulk`): ``bulk_startup_s`` and ``bulk_objects_per_s`` (how
    long one runs), ``bulk_max_running`` (2026-01: 5), ``bulk_url_ttl_s`` (a file link's life, 7
    days) and ``storage_url`` (the files' host; None: the address the API was called on).
    ``products`` × ``variants_per_product`` variants, SKUs ``SHOP-0001-1``...; every
    ``no_sku_every``-th variant has an empty SKU (0: none); ``skus`` instead: one product of one
    variant per SKU given (a catalogue listed on other marketplaces too).  Every method takes the sandbox's lock;
    the ``*_locked`` ones are for :mod:`sandbox.shopify_graphql`'s resolvers, which run under it.
    """

    _DIALS = ("token", "bucket_size", "leak_per_s", "latency_s", "error_rate", "cost_maximum", "cost_restore_rate",
              "restock_on_cancel", "webhook_url", "webhook_secret", "shop_domain", "bulk_startup_s",
              "bulk_objects_per_s", "bulk_max_running", "bulk_url_ttl_s", "storage_url")

    def __init__(self, *, products: int = 10, variants_per_product: int = 2, locations: int = 2,
                 token: str = "shpat_sandbox_token", bucket_size: int = 40, leak_per_s: float = 2.0,
                 latency_s: float = 0.0, error_rate: float = 0.0, cost_maximum: float = STANDARD_MAXIMUM_AVAILABLE,
                 cost_restore_rate: float = STANDARD_RESTORE_RATE, restock_on_cancel: bool = True,
                 webhook_url: str | None = None, webhook_secret: str = "shopify-sandbox-webhook-secret",
                 shop_domain: str = "sandbox-shop.myshopify.com", no_sku_every: int = 0, seed: int = 1,
                 skus: list[str] | None = None, bulk_startup_s: float = 2.0, bulk_objects_per_s: float = 1000.0,
                 bulk_max_running: int = 5, bulk_url_ttl_s: float = 7 * 24 * 3600, storage_url: str | None = None,
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], datetime] | None = None) -> None:
        if products < 0 or variants_per_product < 1 or locations < 1:
            raise ValueError("products must be >= 0, variants_per_product and locations >= 1")
        if skus is not None:  # a catalogue listed elsewhere too: one product of one variant per SKU
            products, variants_per_product = len(skus), 1
        self._clock = clock
        self.now = now or (lambda: datetime.now(timezone.utc))
        self._lock = threading.Lock()
        rng = random.Random(f"shopify:{seed}")
        self._error_rng = random.Random(f"shopify-errors:{seed}")
        self._locations = [{"id": LOCATION_ID_BASE + i, "name": f"Warehouse {i + 1}", "active": True,
                            "legacy": False} for i in range(locations)]
        self._products: list[dict[str, Any]] = []
        #: (inventory_item_id, location_id) -> available (None: not tracked).
        self._levels: dict[tuple[int, int], int | None] = {}
        self._variants_by_id: dict[int, dict[str, Any]] = {}
        self._variants_by_item: dict[int, dict[str, Any]] = {}
        number = 0
        for p in range(products):
            variants = []
            for v in range(variants_per_product):
                number += 1
                sku = "" if no_sku_every and number % no_sku_every == 0 else f"SHOP-{p + 1:04d}-{v + 1}"
                sku = skus[p] if skus is not None else sku
                item_id = INVENTORY_ITEM_ID_BASE + number
                variant = {"id": VARIANT_ID_BASE + number, "product_id": PRODUCT_ID_BASE + p,
                           "title": f"Grade {'ABC'[v % 3]}", "sku": sku, "inventory_item_id": item_id,
                           "inventory_management": "shopify", "price": "199.00"}
                variants.append(variant)
                self._variants_by_id[variant["id"]] = self._variants_by_item[item_id] = variant
                for location in self._locations:
                    self._levels[item_id, location["id"]] = rng.randint(0, 6)
            self._products.append({"id": PRODUCT_ID_BASE + p, "title": f"Refurbished phone {p + 1}",
                                   "variants": variants})
        self._variant_pairs = sorted(self._variants_by_id.items())
        self._level_updated: dict[tuple[int, int], datetime] = {}
        self._bucket_used = 0.0
        self._bucket_at = clock()
        self._cost_bucket = CostBucket(cost_maximum, cost_restore_rate, clock)
        self._forced_429 = 0
        self._forced_throttles = 0
        self._faults: deque[int] = deque()  # HTTP statuses of the next API answers
        self._requests: Counter[str] = Counter()
        self._statuses: Counter[int] = Counter()
        self._writes = {"applied": 0, "refused_stale": 0, "refused_other": 0}
        self._throttled = 0  # GraphQL answers THROTTLED (by the bucket or the dial)
        self._walk_cursors: list[str | None] = []  # each unfiltered productVariants page's ``after``
        #: Operation name -> [answers run, requested cost, actual cost] of the GraphQL queries run (not throttled).
        self._costs: dict[str, list[float]] = {}
        self._groups = itertools.count(ADJUSTMENT_GROUP_ID_BASE)
        self._orders = ShopifyOrders(self, self._lock)
        self._bulk = BulkOperations(self, clock)
        self._storage = {"requests": 0, "with_token": 0}
        self._file_reads: list[tuple[str, int]] = []  # each bulk file read answered: (operation, Range start)
        self._request_base = "http://127.0.0.1"
        self.configure(token=token, bucket_size=bucket_size, leak_per_s=leak_per_s, latency_s=latency_s,
                       error_rate=error_rate, cost_maximum=cost_maximum, cost_restore_rate=cost_restore_rate,
                       restock_on_cancel=restock_on_cancel, webhook_url=webhook_url, webhook_secret=webhook_secret,
                       shop_domain=shop_domain, bulk_startup_s=bulk_startup_s,
                       bulk_objects_per_s=bulk_objects_per_s, bulk_max_running=bulk_max_running,
                       bulk_url_ttl_s=bulk_url_ttl_s, storage_url=storage_url)

    def _check_dial(self, name: str, value: Any) -> Any:
        if name in ("cost_maximum", "cost_restore_rate", "bucket_size", "leak_per_s") and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
        if name in ("bulk_objects_per_s", "bulk_url_ttl_s") and not (
                isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
        if name == "bulk_startup_s" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                             and value >= 0):
            raise ValueError(f"bulk_startup_s must be a number >= 0, got {value!r}")
        if name == "bulk_max_running" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"bulk_max_running must be an integer >= 1, got {value!r}")
        if name == "storage_url" and value is not None and not (
                isinstance(value, str) and urlsplit(value).scheme in ("http", "https") and urlsplit(value).netloc):
            raise ValueError(f"storage_url must be an http(s) base URL or null, got {value!r}")
        if name == "error_rate" and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ValueError(f"error_rate must be a number in 0..1, got {value!r}")
        if name == "restock_on_cancel" and not isinstance(value, bool):
            raise ValueError(f"restock_on_cancel must be true or false, got {value!r}")
        return value

    def _dials_changed(self) -> None:
        self._cost_bucket.reconfigure(self._cost_maximum, self._cost_restore_rate)

    # -- faults --------------------------------------------------------------------------------------

    def rate_limit_next(self, calls: int) -> None:
        """Answer the next ``calls`` REST calls with 429 and ``Retry-After``, whatever the bucket holds."""
        with self._lock:
            self._forced_429 = calls

    def throttle_next(self, queries: int) -> None:
        """Answer the next ``queries`` GraphQL queries ``THROTTLED``, whatever the cost bucket holds."""
        with self._lock:
            self._forced_throttles = queries

    def fail_next(self, calls: int = 1, status: int = 503) -> None:
        """Answer the next ``calls`` API calls (REST or GraphQL) with ``status``, a 5xx."""
        if not 500 <= status <= 599:
            raise ValueError(f"status must be a 5xx, got {status!r}")
        with self._lock:
            self._faults.extend([status] * calls)

    def fail_next_bulk(self, error_code: str = "INTERNAL_SERVER_ERROR") -> None:
        """The next bulk operation ends ``FAILED`` with ``error_code`` (half its lines at ``partialDataUrl``)."""
        with self._lock:
            self._bulk.fail_next_locked(error_code)

    def expire_bulk_operations(self) -> int:
        """Every finished bulk operation ``EXPIRED`` (its file gone, as after seven days); how many."""
        with self._lock:
            return self._bulk.expire_locked()

    def throttle_status(self) -> dict[str, float]:
        """The GraphQL cost bucket now, as ``extensions.cost.throttleStatus`` shows it."""
        with self._lock:
            return self._cost_bucket.throttle_status()

    # -- the shop's stock -----------------------------------------------------------------------------

    def variants(self) -> list[dict[str, Any]]:
        """Every variant (copies)."""
        with self._lock:
            return [dict(v) for p in self._products for v in p["variants"]]

    def location_ids(self) -> list[int]:
        """The locations' ids."""
        with self._lock:
            return [location["id"] for location in self._locations]

    def add_location(self, available: int = 0) -> int:
        """Open another active location with every item stocked there at ``available``; return its id."""
        with self._lock:
            location_id = LOCATION_ID_BASE + len(self._locations)
            self._locations.append({"id": location_id, "name": f"Warehouse {len(self._locations) + 1}",
                                    "active": True, "legacy": False})
            for item_id in self._variants_by_item:
                self._levels[item_id, location_id] = available
            return location_id

    def set_available(self, sku: str, available: int | None, location_id: int | None = None) -> None:
        """Set a SKU's ``available`` at one location (default: the first); ``None`` untracks it."""
        with self._lock:
            item_id = self._item_of(sku)
            self._levels[item_id, location_id or self._locations[0]["id"]] = available

    def available(self, sku: str, location_id: int | None = None) -> int | None:
        """A SKU's ``available`` at one location (default: the first); None when untracked."""
        with self._lock:
            return self._levels[self._item_of(sku), location_id or self._locations[0]["id"]]

    def quantities(self, location_id: int | None = None) -> dict[str, int]:
        """SKU -> available at ``location_id`` (None: summed over every location), the tests' truth.

        Untracked levels count 0; variants without a SKU are left out.
        """
        with self._lock:
            locations = [location_id] if location_id is not None else [loc["id"] for loc in self._locations]
            return {variant["sku"]: sum(self._levels[variant["inventory_item_id"], loc] or 0 for loc in locations)
                    for product in self._products for variant in product["variants"] if variant["sku"]}

    def truth(self) -> dict[str, int]:
        """SKU -> available summed over locations (untracked levels left out), for variants with a SKU."""
        return self.quantities()

    def stats(self) -> dict[str, Any]:
        """Requests by resource, answers by status, GraphQL answers THROTTLED, writes applied and refused, orders."""
        with self._lock:
            return {"requests": dict(self._requests), "by_status": dict(self._statuses), "throttled": self._throttled,
                    "query_costs": {name: {"answers": int(runs), "requested": requested, "actual": actual}
                                    for name, (runs, requested, actual) in self._costs.items()},
                    "total_requests": sum(self._requests.values()), "inventory_writes": dict(self._writes),
                    "storage": dict(self._storage),
                    "orders": self._orders.count_locked()}

    def walk_cursors(self) -> list[str | None]:
        """The ``after`` of every unfiltered ``productVariants`` page answered (a catalogue walk's pages), in order."""
        with self._lock:
            return list(self._walk_cursors)

    def file_reads(self) -> list[tuple[str, int]]:
        """``(operation number, byte offset)`` of every bulk file read answered (the ``Range`` start; 0 without)."""
        with self._lock:
            return list(self._file_reads)

    # -- views for the GraphQL resolvers (lock held) -------------------------------------------------------

    def walked_locked(self, after: str | None) -> None:
        """Note a catalogue walk's page asked from ``after`` (see :meth:`walk_cursors`)."""
        self._walk_cursors.append(after)

    def variants_locked(self) -> list[dict[str, Any]]:
        """Every variant (the shop's own dicts: read only)."""
        return [variant for product in self._products for variant in product["variants"]]

    def variant_pairs_locked(self) -> list[tuple[int, dict[str, Any]]]:
        """``(id, variant)`` of every variant, by id (made once: the catalogue does not change)."""
        return self._variant_pairs

    def variant_locked(self, variant_id: int | None) -> dict[str, Any] | None:
        """The variant with this id, or None."""
        return self._variants_by_id.get(variant_id)

    def variant_of_item_locked(self, item_id: int | None) -> dict[str, Any] | None:
        """The variant whose inventory item has this id, or None."""
        return self._variants_by_item.get(item_id)

    def locations_locked(self) -> list[dict[str, Any]]:
        """The locations (read only)."""
        return self._locations

    def location_ids_locked(self) -> list[int]:
        """The locations' ids."""
        return [location["id"] for location in self._locations]

    def variant_view_locked(self, variant: dict[str, Any]) -> dict[str, Any]:
        """A ``ProductVariant`` (its ``inventoryItem`` is resolved on demand)."""
        product = self._products[variant["product_id"] - PRODUCT_ID_BASE]
        levels = [self._levels[variant["inventory_item_id"], loc] for loc in self.location_ids_locked()]
        return {"id": gid("ProductVariant", variant["id"]), "legacyResourceId": str(variant["id"]),
                "sku": variant["sku"], "title": variant["title"], "price": variant["price"],
                "displayName": f"{product['title']} - {variant['title']}",
                "inventoryQuantity": sum(level or 0 for level in levels),
                "product": {"id": gid("Product", product["id"]), "legacyResourceId": str(product["id"]),
                            "title": product["title"]},
                "_variant": variant}

    def item_view_locked(self, variant: dict[str, Any]) -> dict[str, Any]:
        """An ``InventoryItem``: tracked when every level is (its levels are resolved on demand)."""
        item_id = variant["inventory_item_id"]
        return {"id": gid("InventoryItem", item_id), "legacyResourceId": str(item_id), "sku": variant["sku"],
                "tracked": all(self._levels[item_id, loc] is not None for loc in self.location_ids_locked()),
                "variant": self.variant_view_locked(variant), "_variant": variant}

    def location_view_locked(self, location_id: int) -> dict[str, Any]:
        """A ``Location``."""
        location = next(loc for loc in self._locations if loc["id"] == location_id)
        return {"id": gid("Location", location_id), "legacyResourceId": str(location_id), "name": location["name"],
                "isActive": location["active"]}

    def level_view_locked(self, variant: dict[str, Any], location_id: int) -> dict[str, Any]:
        """An ``InventoryLevel`` of a variant's item at a location (its quantities resolved on demand)."""
        item_id = variant["inventory_item_id"]
        updated = self._level_updated.get((item_id, location_id), LEVELS_CREATED_AT)
        return {"id": f"gid://shopify/InventoryLevel/{location_id}?inventory_item_id={item_id}",
                "updatedAt": iso_datetime(updated), "location": self.location_view_locked(location_id),
                "item": self.item_view_locked(variant), "_key": (item_id, location_id)}

    def quantity_view_locked(self, level: dict[str, Any], name: str) -> dict[str, Any]:
        """An ``InventoryQuantity``: ``available`` and ``on_hand`` are the level's units, the other names 0.

        Raises:
          ValueError: A name Shopify does not know.
        """
        if name not in QUANTITY_NAMES:
            raise ValueError(f"Invalid quantity name {name!r}; valid names: {', '.join(QUANTITY_NAMES)}")
        units = self._levels[level["_key"]] or 0
        item_id, location_id = level["_key"]
        return {"id": f"gid://shopify/InventoryQuantity/{location_id}?inventory_item_id={item_id}&name={name}",
                "name": name, "quantity": units if name in ("available", "on_hand") else 0,
                "updatedAt": level["updatedAt"]}

    def set_quantities_locked(self, given: dict[str, Any]) -> dict[str, Any]:
        """``inventorySetQuantities``: every quantity set, or none (any user error refuses the whole set)."""
        errors: list[dict[str, Any]] = []

        def refuse(code: str, field: list[str], message: str) -> None:
            errors.append({"code": code, "field": field, "message": message})

        if given["name"] not in ("available", "on_hand"):
            refuse("INVALID_NAME", ["input", "name"], "The quantity name must be either 'available' or 'on_hand'.")
        if given["reason"] not in SET_REASONS:
            refuse("INVALID_REASON", ["input", "reason"], f"The specified reason {given['reason']!r} is invalid.")
        uri = given.get("referenceDocumentUri")
        if uri is not None and not _is_uri(uri):
            refuse("INVALID_REFERENCE_DOCUMENT", ["input", "referenceDocumentUri"],
                   "The specified reference document is invalid.")
        writes: list[tuple[dict[str, Any], int, int, int]] = []
        seen: set[tuple[int, int]] = set()
        stale = False
        for index, quantity in enumerate(given["quantities"]):
            where = ["input", "quantities", str(index)]
            variant = self.variant_of_item_locked(parse_gid(quantity["inventoryItemId"], "InventoryItem"))
            location = parse_gid(quantity["locationId"], "Location")
            if variant is None:
                refuse("INVALID_INVENTORY_ITEM", where + ["inventoryItemId"],
                       "The specified inventory item could not be found.")
                continue
            if location not in self.location_ids_locked():
                refuse("INVALID_LOCATION", where + ["locationId"], "The specified location could not be found.")
                continue
            key = (variant["inventory_item_id"], location)
            if key in seen:
                refuse("NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR", where,
                       "The combination of inventoryItemId and locationId must be unique.")
                continue
            seen.add(key)
            if quantity["quantity"] < 0:
                refuse("INVALID_QUANTITY_NEGATIVE", where + ["quantity"], "The quantity can't be negative.")
                continue
            if quantity["quantity"] > MAX_QUANTITY:
                refuse("INVALID_QUANTITY_TOO_HIGH", where + ["quantity"],
                       f"The total quantity can't be higher than {MAX_QUANTITY:,}.")
                continue
            current = self._levels[key] or 0
            # 2026-01: changeFromQuantity, when given (even null), decides; the deprecated compareQuantity
            # and ignoreCompareQuantity only count without it.
            if "changeFromQuantity" in quantity:
                expected, field = quantity["changeFromQuantity"], "changeFromQuantity"
                code = "CHANGE_FROM_QUANTITY_STALE"
            elif given.get("ignoreCompareQuantity"):
                expected, code, field = None, "", ""
            elif quantity.get("compareQuantity") is not None:
                expected, code, field = quantity["compareQuantity"], "COMPARE_QUANTITY_STALE", "compareQuantity"
            else:
                refuse("COMPARE_QUANTITY_REQUIRED", where + ["changeFromQuantity"],
                       "changeFromQuantity must be given for each quantity (null to skip the check).")
                continue
            if expected is not None and expected != current:
                stale = True
                refuse(code, where + [field], f"The {field} value does not match persisted value.")
                continue
            writes.append((variant, location, quantity["quantity"], current))
        if errors:
            self._writes["refused_stale" if stale else "refused_other"] += 1
            return {"inventoryAdjustmentGroup": None, "userErrors": errors}
        moment = self.now()
        changes = []
        for variant, location, target, before in writes:
            key = (variant["inventory_item_id"], location)
            self._levels[key] = target
            self._level_updated[key] = moment
            changes.append({"name": "available", "delta": target - before, "quantityAfterChange": target,
                            "ledgerDocumentUri": None, "item": self.item_view_locked(variant),
                            "location": self.location_view_locked(location)})
        self._writes["applied"] += 1
        group = {"id": gid("InventoryAdjustmentGroup", next(self._groups)), "createdAt": iso_datetime(moment),
                 "reason": given["reason"], "referenceDocumentUri": uri, "changes": changes}
        return {"inventoryAdjustmentGroup": group, "userErrors": []}

    def bulk_run_locked(self, query: str) -> dict[str, Any]:
        """``bulkOperationRunQuery`` (:mod:`sandbox.shopify_bulk`)."""
        return self._bulk.run_locked(query, self._bulk_dials(), self._storage_base())

    def bulk_view_locked(self, op_id: str) -> dict[str, Any] | None:
        """``bulkOperation(id:)``."""
        return self._bulk.view_locked(op_id, self._bulk_dials(), self._storage_base())

    def bulk_current_locked(self, kind: str) -> dict[str, Any] | None:
        """``currentBulkOperation(type:)``."""
        return self._bulk.current_locked(kind, self._bulk_dials(), self._storage_base())

    def _bulk_dials(self) -> dict[str, Any]:
        return {name: getattr(self, f"_{name}") for name in ("bulk_startup_s", "bulk_objects_per_s",
                                                              "bulk_max_running", "bulk_url_ttl_s")}

    def _storage_base(self) -> str:
        return (self._storage_url or self._request_base).rstrip("/")

    def level_locked(self, variant: dict[str, Any], location_id: int) -> int | None:
        """A variant's ``available`` at a location (None: untracked)."""
        return self._levels[variant["inventory_item_id"], location_id]

    def restock_on_cancel_locked(self) -> bool:
        """The ``restock_on_cancel`` dial."""
        return self._restock_on_cancel

    def change_level_locked(self, item_id: int, location_id: int, delta: int) -> None:
        """Add ``delta`` units at a level (an order, a restock); an untracked level does not change."""
        key = (item_id, location_id)
        if self._levels[key] is not None:
            self._levels[key] += delta
            self._level_updated[key] = self.now()

    # -- orders (sandbox/shopify_orders.py) ----------------------------------------------------------------

    def place_order(self, lines: dict[str, int] | list[tuple[str, int]], *, location_id: int | None = None,
                    notify: bool = True) -> dict[str, Any]:
        """Take an order of ``{sku: quantity}`` from ``location_id`` (default: the first location).

        Each line lowers ``available`` at that location (an untracked level does not change); the
        ``orders/create`` webhook is sent when ``notify`` and a ``webhook_url`` is set.  Returns the
        order as its webhook body shows it.

        Raises:
          OutOfStock: A tracked level holds fewer units than the order's (nothing changes).
          KeyError: No variant has one of the SKUs, or no such location.
        """
        return self._orders.place(lines, location_id=location_id, notify=notify)

    def cancel_order(self, order_id: int, *, restock: bool | dict[str, int] | None = None, reason: str = "CUSTOMER",
                     notify: bool = True) -> dict[str, Any]:
        """Cancel an order; its units go back to its location when ``restock`` (default: the dial), or
        as many of each line's as ``restock`` gives its SKU (``{sku: units}``: a line restocked in part).

        Raises:
          KeyError: No such order.  ValueError: Already cancelled, or a reason Shopify does not know.
        """
        return self._orders.cancel(order_id, restock=restock, reason=reason, notify=notify)

    def order(self, order_id: int) -> dict[str, Any]:
        """One order as its webhook body shows it.  Raises ``KeyError``."""
        return self._orders.body(order_id)

    def deliveries(self) -> list[Delivery]:
        """Every webhook attempt so far, oldest first."""
        return self._orders.webhooks.deliveries()

    def wait_for_deliveries(self, timeout: float = 30.0) -> None:
        """Wait until every queued webhook was delivered or gave up; raise ``TimeoutError``."""
        self._orders.webhooks.wait(timeout)

    def close(self) -> None:
        """Stop the webhook sender once its queue is empty; delete the bulk operations' files."""
        self._orders.webhooks.close()
        self._bulk.close()

    def orders_locked(self, query: str | None, sort_key: str) -> list[tuple[Any, int]]:
        """``(sort key, order id)`` of the orders matching a search ``query``.  Raises ``ValueError``."""
        return self._orders.search_locked(query, sort_key)

    def order_view_locked(self, order_id: int | None) -> dict[str, Any] | None:
        """One ``Order`` view, or None."""
        return self._orders.view_locked(order_id)

    # -- the app --------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """A new aiohttp application serving this sandbox (REST, GraphQL and ``/_sandbox/`` admin routes)."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/admin/api/{version}/products.json", self._products_json)
        app.router.add_get("/admin/api/{version}/locations.json", self._locations_json)
        app.router.add_get("/admin/api/{version}/inventory_levels.json", self._levels_json)
        app.router.add_post("/admin/api/{version}/graphql.json", self._graphql_json)
        app.router.add_get(ADMIN_PREFIX + "stats", self._admin_stats)
        app.router.add_get(ADMIN_PREFIX + "config", self._admin_get_config)
        app.router.add_post(ADMIN_PREFIX + "config", self._admin_set_config)
        app.router.add_get(ADMIN_PREFIX + "quantities", self._admin_quantities)
        app.router.add_post(ADMIN_PREFIX + "available", self._admin_set_available)
        app.router.add_post(ADMIN_PREFIX + "orders", self._admin_place)
        app.router.add_post(ADMIN_PREFIX + "orders/{order_id}/cancel", self._admin_cancel)
        app.router.add_post(ADMIN_PREFIX + "faults", self._admin_faults)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIX):
            return await handler(request)
        if request.path.startswith(STORAGE_PREFIX):
            return await self._storage_file(request)
        with self._lock:
            self._requests[request.path.rsplit("/", 1)[-1]] += 1
        limit: list[str] = []  # the REST call-limit header, for the answer
        response = await serve_counted(request, handler, lambda r: self._gate(r, limit), self._count)
        if limit:
            response.headers["X-Shopify-Shop-Api-Call-Limit"] = limit[0]
        return response

    async def _gate(self, request: web.Request, limit: list[str]) -> web.Response | None:
        """Authentication, latency, injected faults, and the REST bucket (GraphQL has its cost bucket)."""
        with self._lock:
            token, latency = self._token, self._latency_s
        await pause(latency)
        given = request.headers.get("X-Shopify-Access-Token", "")
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return self._answer(401, {"errors": "[API] Invalid API key or access token (unrecognized login or "
                                                "wrong password)"})
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            if fault is None and injected_failure(self._error_rng, self._error_rate):
                fault = 500
        if fault is not None:
            return self._answer(fault, {"errors": "Internal Server Error" if fault == 500 else "Service Unavailable"})
        if request.path.endswith("/graphql.json"):
            return None
        retry_after = None
        with self._lock:
            now = self._clock()
            self._bucket_used = max(0.0, self._bucket_used - (now - self._bucket_at) * self._leak_per_s)
            self._bucket_at = now
            size = self._bucket_size
            if self._forced_429 > 0 or self._bucket_used + 1 > size:
                retry_after = 1.0 / self._leak_per_s if self._forced_429 > 0 else \
                    (self._bucket_used + 1 - size) / self._leak_per_s
                self._forced_429 = max(0, self._forced_429 - 1)
            else:
                self._bucket_used += 1
            limit.append(f"{math.ceil(self._bucket_used)}/{size}")
        if retry_after is not None:
            return self._answer(429, {"errors": "Exceeded 2 calls per second for api client. Reduce request "
                                                "rates to resume uninterrupted service."},
                                {"Retry-After": f"{retry_after:.1f}"})
        return None

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(body, status=status, headers=headers)

    def _count(self, status: int) -> None:
        with self._lock:
            self._statuses[status] += 1

    async def _graphql_json(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._answer(400, {"errors": "the request body is not JSON"})
        with self._lock:
            self._request_base = f"{request.scheme}://{request.host}"
            throttled = self._forced_throttles > 0
            self._forced_throttles = max(0, self._forced_throttles - 1)
            try:
                answered = shopify_graphql.answer(self, self._cost_bucket, body, throttled=throttled)
            except ValueError as error:
                return self._answer(400, {"errors": str(error)})
            self._throttled += any(isinstance(e, dict) and e.get("extensions", {}).get("code") == "THROTTLED"
                                   for e in answered.get("errors", ()))
            cost = answered.get("extensions", {}).get("cost", {})
            if "data" in answered and cost.get("actualQueryCost") is not None:
                named = _OPERATION.match(body.get("query", "")) if isinstance(body, dict) else None
                totals = self._costs.setdefault(named.group(1) if named else "(anonymous)", [0, 0.0, 0.0])
                totals[0] += 1
                totals[1] += cost["requestedQueryCost"]
                totals[2] += cost["actualQueryCost"]
        return web.json_response(answered)

    async def _storage_file(self, request: web.Request) -> web.StreamResponse:
        """A bulk operation's file on the storage host: a signed link, no access token (Range honoured)."""
        name = request.path[len(STORAGE_PREFIX):]
        with self._lock:
            self._storage["requests"] += 1
            self._storage["with_token"] += "X-Shopify-Access-Token" in request.headers
            status, found, size = self._bulk.file_locked(name, request.query.get("Expires", ""),
                                                         request.query.get("Signature", ""))
        if status != 200:
            return web.Response(status=status, text=f"<Error><Code>{found}</Code></Error>",
                                content_type="application/xml")
        start = re.match(r"bytes=(\d+)-", request.headers.get("Range", ""))
        with self._lock:
            self._file_reads.append((name.removesuffix(".jsonl"), int(start.group(1)) if start else 0))
        if size is not None:  # partial data: served whole, no Range
            with open(found, "rb") as file:
                return web.Response(body=file.read(size), content_type="application/jsonl")
        return web.FileResponse(found, headers={"Content-Type": "application/jsonl"})

    def _paged(self, request: web.Request, key: str, rows: Callable[[dict[str, str]], list[dict[str, Any]]],
               ) -> web.Response:
        query = dict(request.query)
        try:
            limit = int(query.pop("limit", DEFAULT_LIMIT))
        except ValueError:
            return self._answer(400, {"errors": {"limit": "must be an integer"}})
        if not 1 <= limit <= MAX_LIMIT:
            return self._answer(400, {"errors": {"limit": f"must be between 1 and {MAX_LIMIT}"}})
        fields = query.pop("fields", None)
        offset = 0
        if "page_info" in query:
            page_info = query.pop("page_info")
            if query:
                return self._answer(400, {"errors": {"page_info": "only limit and fields may go with page_info"}})
            try:
                cursor = json.loads(base64.urlsafe_b64decode(page_info.encode()))
                offset, query = int(cursor["offset"]), dict(cursor["query"])
            except (ValueError, KeyError, TypeError):
                return self._answer(400, {"errors": {"page_info": "Invalid value."}})
        try:
            with self._lock:
                found = rows(query)
        except ValueError as error:
            return self._answer(422, {"errors": str(error)})
        page = found[offset:offset + limit]
        headers = {}
        if offset + limit < len(found):
            cursor = base64.urlsafe_b64encode(json.dumps({"offset": offset + limit, "query": query}).encode()).decode()
            params = {"limit": str(limit), "page_info": cursor}
            if fields:
                params["fields"] = fields
            url = f"{request.scheme}://{request.host}{request.path}?{urlencode(params)}"
            headers["Link"] = f'<{url}>; rel="next"'
        if fields:
            wanted = set(fields.split(","))
            page = [{name: value for name, value in row.items() if name in wanted} for row in page]
        return web.json_response({key: page}, headers=headers)

    async def _products_json(self, request: web.Request) -> web.Response:
        return self._paged(request, "products", lambda query: json.loads(json.dumps(self._products)))

    async def _locations_json(self, request: web.Request) -> web.Response:
        with self._lock:
            locations = [dict(location) for location in self._locations]
        return web.json_response({"locations": locations})

    async def _levels_json(self, request: web.Request) -> web.Response:
        def rows(query: dict[str, str]) -> list[dict[str, Any]]:
            locations = _ids(query.get("location_ids"))
            items = _ids(query.get("inventory_item_ids"))
            if not locations and not items:
                raise ValueError("inventory_item_ids or location_ids must be present")
            return [{"inventory_item_id": item, "location_id": location, "available": available,
                     "updated_at": "2026-01-09T19:35:56-05:00",
                     "admin_graphql_api_id": f"gid://shopify/InventoryLevel/{location}?inventory_item_id={item}"}
                    for (item, location), available in sorted(self._levels.items())
                    if (not locations or location in locations) and (not items or item in items)]
        return self._paged(request, "inventory_levels", rows)

    # -- admin routes ---------------------------------------------------------------------------------

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _admin_quantities(self, request: web.Request) -> web.Response:
        """``?location_id=N`` (default: summed over every location): SKU -> available."""
        try:
            location = request.query.get("location_id")
            location_id = int(location) if location is not None else None
            if location_id is not None and location_id not in self.location_ids():
                return admin_error(404, f"no location {location_id}")
        except ValueError:
            return admin_error(400, "location_id must be an integer")
        return web.json_response(self.quantities(location_id))

    async def _admin_set_available(self, request: web.Request) -> web.Response:
        """``{"sku", "available", "location_id"?}``: set one level, as the merchant's admin would."""
        try:
            body = await admin_body(request)
            available = body["available"]
            if available is not None and (not isinstance(available, int) or isinstance(available, bool)):
                raise ValueError(f"available must be an integer or null, got {available!r}")
            location_id = body.get("location_id")
            if location_id is not None and location_id not in self.location_ids():
                return admin_error(404, f"no location {location_id}")
            self.set_available(str(body["sku"]), available, location_id)
        except KeyError as error:
            return admin_error(404 if "SKU" in str(error) else 400, f"expected {{\"sku\", \"available\"}}: {error}")
        except (TypeError, ValueError) as error:
            return admin_error(400, str(error))
        return web.json_response({"sku": body["sku"], "available": self.available(str(body["sku"]), location_id)})

    async def _admin_place(self, request: web.Request) -> web.Response:
        """``{"lines": {"<sku>": quantity, ...}, "location_id"?, "notify"?}``: a customer's order."""
        try:
            body = await admin_body(request)
            lines = body["lines"]
            if not isinstance(lines, dict) or not lines:
                raise ValueError("lines must be a non-empty object of SKU -> quantity")
            order = self.place_order(lines, location_id=body.get("location_id"),
                                     notify=optional_bool(body, "notify", True))
        except OutOfStock as error:
            return admin_error(409, str(error))
        except KeyError as error:
            return admin_error(404 if "no " in str(error) else 400,
                               f"expected {{\"lines\": {{sku: quantity}}}}: {error}")
        except (TypeError, ValueError) as error:
            return admin_error(400, str(error))
        return web.json_response(order, status=201)

    async def _admin_cancel(self, request: web.Request) -> web.Response:
        """``{"restock"?, "reason"?, "notify"?}``: cancel an order, with or without restocking it."""
        try:
            body = await admin_body(request)
            order = self.cancel_order(int(request.match_info["order_id"]), restock=optional_bool(body, "restock"),
                                      reason=str(body.get("reason", "CUSTOMER")),
                                      notify=optional_bool(body, "notify", True))
        except KeyError as error:
            return admin_error(404, str(error))
        except (TypeError, ValueError) as error:
            return admin_error(400, str(error))
        return web.json_response(order)

    async def _admin_faults(self, request: web.Request) -> web.Response:
        """``{"throttle": n}`` (GraphQL THROTTLED), ``{"rate_limit": n}`` (REST 429), ``{"fail": n, "status": 5xx}``,
        ``{"bulk_fail": "<errorCode>"}`` (the next bulk operation FAILED), ``{"bulk_expire": true}``."""
        try:
            body = await admin_body(request)
            if "bulk_fail" in body:
                self.fail_next_bulk(str(body["bulk_fail"]))
            if body.get("bulk_expire") is True:
                self.expire_bulk_operations()
            for name in ("throttle", "rate_limit", "fail"):
                if name in body and (not isinstance(body[name], int) or isinstance(body[name], bool) or body[name] < 0):
                    raise ValueError(f"{name} must be an integer >= 0")
            if "throttle" in body:
                self.throttle_next(body["throttle"])
            if "rate_limit" in body:
                self.rate_limit_next(body["rate_limit"])
            if "fail" in body:
                self.fail_next(body["fail"], int(body.get("status", 503)))
        except (TypeError, ValueError) as error:
            return admin_error(400, str(error))
        with self._lock:
            return web.json_response({"pending_failures": len(self._faults),
                                      "pending_throttles": self._forced_throttles, "pending_429s": self._forced_429})

    def _item_of(self, sku: str) -> int:
        for product in self._products:
            for variant in product["variants"]:
                if variant["sku"] == sku:
                    return variant["inventory_item_id"]
        raise KeyError(f"no variant with SKU {sku!r}")



def _ids(text: str | None) -> set[int]:
    if not text:
        return set()
    try:
        return {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise ValueError("ids must be comma-separated integers") from None


def _is_uri(text: str) -> bool:
    parts = urlsplit(text)
    return bool(parts.scheme) and bool(parts.netloc or parts.path)
