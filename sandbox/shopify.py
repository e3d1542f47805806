"""A simulated Shopify shop: the Admin REST reads a stock sync makes.

Served under ``/admin/api/{version}/``: ``products.json`` (products with their variants: ``sku``,
``inventory_item_id``), ``locations.json`` and ``inventory_levels.json?location_ids=...`` (one
level per inventory item and location, ``available`` may be ``null`` when untracked).  Lists take
``limit`` (at most 250, default 50) and page with a ``Link`` header whose ``rel="next"`` URL carries
an opaque ``page_info`` (with it, only ``limit`` and ``fields`` may be given, as on Shopify).

Every request needs ``X-Shopify-Access-Token``.  Calls go through a leaky bucket (``bucket_size``
40, ``leak_per_s`` 2 by default) reported in ``X-Shopify-Shop-Api-Call-Limit: used/size``; a call
that would overflow it is answered ``429`` with ``Retry-After``.  :meth:`ShopifySandbox.rate_limit_next`
makes the next N calls 429 whatever the bucket says (the 429 dial).
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import math
import random
import threading
import time
from typing import Any, Callable
from urllib.parse import urlencode

from aiohttp import web

__all__ = ["ShopifySandbox"]

DEFAULT_LIMIT = 50
MAX_LIMIT = 250
LOCATION_ID_BASE = 655_441_491
PRODUCT_ID_BASE = 632_910_392
VARIANT_ID_BASE = 808_950_810
INVENTORY_ITEM_ID_BASE = 39_072_856


class ShopifySandbox:
    """The products, locations and inventory of one simulated shop, and the app that serves them.

    Dials (constructor keywords, and :meth:`configure`): ``token`` (what ``X-Shopify-Access-Token``
    must carry), ``bucket_size`` and ``leak_per_s`` (the REST leaky bucket), ``latency_s`` (added to
    every request).  ``products`` × ``variants_per_product`` variants, SKUs ``SHOP-0001-1``...; every
    ``no_sku_every``-th variant has an empty SKU (0: none).  Every method takes the sandbox's lock.
    """

    _DIALS = ("token", "bucket_size", "leak_per_s", "latency_s")

    def __init__(self, *, products: int = 10, variants_per_product: int = 2, locations: int = 2,
                 token: str = "shpat_sandbox_token", bucket_size: int = 40, leak_per_s: float = 2.0,
                 latency_s: float = 0.0, no_sku_every: int = 0, seed: int = 1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if products < 0 or variants_per_product < 1 or locations < 1:
            raise ValueError("products must be >= 0, variants_per_product and locations >= 1")
        self._clock = clock
        self._lock = threading.Lock()
        rng = random.Random(f"shopify:{seed}")
        self._locations = [{"id": LOCATION_ID_BASE + i, "name": f"Warehouse {i + 1}", "active": True,
                            "legacy": False} for i in range(locations)]
        self._products: list[dict[str, Any]] = []
        #: (inventory_item_id, location_id) -> available (None: not tracked).
        self._levels: dict[tuple[int, int], int | None] = {}
        number = 0
        for p in range(products):
            variants = []
            for v in range(variants_per_product):
                number += 1
                sku = "" if no_sku_every and number % no_sku_every == 0 else f"SHOP-{p + 1:04d}-{v + 1}"
                item_id = INVENTORY_ITEM_ID_BASE + number
                variants.append({"id": VARIANT_ID_BASE + number, "product_id": PRODUCT_ID_BASE + p,
                                 "title": f"Grade {'ABC'[v % 3]}", "sku": sku, "inventory_item_id": item_id,
                                 "inventory_management": "shopify", "price": "199.00"})
                for location in self._locations:
                    self._levels[item_id, location["id"]] = rng.randint(0, 6)
            self._products.append({"id": PRODUCT_ID_BASE + p, "title": f"Refurbished phone {p + 1}",
                                   "variants": variants})
        self._bucket_used = 0.0
        self._bucket_at = clock()
        self._forced_429 = 0
        self._requests: dict[str, int] = {}
        self._statuses: dict[int, int] = {}
        self.configure(token=token, bucket_size=bucket_size, leak_per_s=leak_per_s, latency_s=latency_s)

    def configure(self, **dials: Any) -> None:
        """Change dials at run time (names as in the constructor)."""
        unknown = sorted(set(dials) - set(self._DIALS))
        if unknown:
            raise TypeError(f"unknown sandbox dials: {', '.join(unknown)} (known: {', '.join(self._DIALS)})")
        with self._lock:
            for name, value in dials.items():
                setattr(self, f"_{name}", value)

    def rate_limit_next(self, calls: int) -> None:
        """Answer the next ``calls`` API calls with 429 and ``Retry-After``, whatever the bucket holds."""
        with self._lock:
            self._forced_429 = calls

    # -- the shop's stock -----------------------------------------------------------------------------

    def variants(self) -> list[dict[str, Any]]:
        """Every variant (copies)."""
        with self._lock:
            return [dict(v) for p in self._products for v in p["variants"]]

    def location_ids(self) -> list[int]:
        """The locations' ids."""
        with self._lock:
            return [location["id"] for location in self._locations]

    def set_available(self, sku: str, available: int | None, location_id: int | None = None) -> None:
        """Set a SKU's ``available`` at one location (default: the first); ``None`` untracks it."""
        with self._lock:
            item_id = self._item_of(sku)
            self._levels[item_id, location_id or self._locations[0]["id"]] = available

    def truth(self) -> dict[str, int]:
        """SKU -> available summed over locations (untracked levels left out), for variants with a SKU."""
        with self._lock:
            totals: dict[str, int] = {}
            for product in self._products:
                for variant in product["variants"]:
                    if not variant["sku"]:
                        continue
                    levels = [self._levels[variant["inventory_item_id"], loc["id"]] for loc in self._locations]
                    totals[variant["sku"]] = sum(level for level in levels if level is not None)
            return totals

    def stats(self) -> dict[str, Any]:
        """Requests by resource and answers by status."""
        with self._lock:
            return {"requests": dict(self._requests), "by_status": dict(self._statuses),
                    "total_requests": sum(self._requests.values())}

    # -- the app --------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """A new aiohttp application serving this sandbox."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/admin/api/{version}/products.json", self._products_json)
        app.router.add_get("/admin/api/{version}/locations.json", self._locations_json)
        app.router.add_get("/admin/api/{version}/inventory_levels.json", self._levels_json)
        app.router.add_get("/_sandbox/stats", self._admin_stats)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path.startswith("/_sandbox/"):
            return await handler(request)
        with self._lock:
            resource = request.path.rsplit("/", 1)[-1]
            self._requests[resource] = self._requests.get(resource, 0) + 1
            token, latency = self._token, self._latency_s
        if latency > 0:
            await asyncio.sleep(latency)
        given = request.headers.get("X-Shopify-Access-Token", "")
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            self._count(401)
            return self._answer(401, {"errors": "[API] Invalid API key or access token (unrecognized login or "
                                                "wrong password)"})
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
            used = math.ceil(self._bucket_used)
        if retry_after is not None:
            self._count(429)
            return self._answer(429, {"errors": "Exceeded 2 calls per second for api client. Reduce request "
                                                "rates to resume uninterrupted service."},
                                {"Retry-After": f"{retry_after:.1f}",
                                 "X-Shopify-Shop-Api-Call-Limit": f"{used}/{size}"})
        response = await handler(request)
        response.headers["X-Shopify-Shop-Api-Call-Limit"] = f"{used}/{size}"
        self._count(response.status)
        return response

    def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(body, status=status, headers=headers)

    def _count(self, status: int) -> None:
        with self._lock:
            self._statuses[status] = self._statuses.get(status, 0) + 1

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

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

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
