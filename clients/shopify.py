"""A Shopify Admin REST API client for inventory reads.

Auth is the ``X-Shopify-Access-Token`` header; paths are ``/admin/api/{version}/...json``.  Lists
page by the ``Link`` header (``<url?page_info=...>; rel="next"``): the next page's URL is taken
as given.  Shopify meters REST calls with a leaky bucket per app and store (40 calls, leaking 2 a
second on a standard plan) and reports it in ``X-Shopify-Shop-Api-Call-Limit: used/size``: this
client slows down before the bucket is full, and a ``429`` is waited out for its ``Retry-After``
(with a fleet-wide limiter, the whole fleet pauses) and retried.  Errors are the typed errors of
:mod:`clients.errors`; the token never shows in an error, a log line or a repr.

What the store integrations need: :meth:`ShopifyClient.iter_variants` (SKU and inventory item of
every variant), :meth:`ShopifyClient.list_locations` and :meth:`ShopifyClient.iter_inventory_levels`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp

from clients.errors import MalformedResponse
from clients.http import (ErrorDetails, JsonApi, RequestRecord, RetryPolicy, Secret, AttemptHeaders, json_kind,
                          retry_after, text, with_hint)

if TYPE_CHECKING:
    from clients.ratelimit import FleetRateLimiter

#: The API's name in errors, records and metrics.
API = "shopify"

#: The REST Admin API version used unless told otherwise.
DEFAULT_API_VERSION = "2025-01"

LIST_PRODUCTS = "GET /admin/api/{version}/products.json"
LIST_LOCATIONS = "GET /admin/api/{version}/locations.json"
LIST_INVENTORY_LEVELS = "GET /admin/api/{version}/inventory_levels.json"

#: The largest ``limit`` Shopify's REST lists accept.
MAX_PAGE_LIMIT = 250

CALL_LIMIT_HEADER = "X-Shopify-Shop-Api-Call-Limit"

_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?([a-z]+)"?')
_HINTS = {
    401: "the access token was refused: check the store integration's credential variable",
    403: "the app lacks a scope (inventory reads need read_inventory and read_products)",
    404: "no such shop, API version or resource",
    429: "over Shopify's REST call limit",
}


@dataclass(frozen=True)
class ShopifyVariant:
    """A product variant: its SKU (may be empty) and the inventory item that holds its stock."""

    id: str
    sku: str
    inventory_item_id: str
    title: str | None


@dataclass(frozen=True)
class InventoryLevel:
    """Stock of one inventory item at one location; ``available`` is ``None`` when it is not tracked."""

    inventory_item_id: str
    location_id: str
    available: int | None


class ShopifyClient:
    """A Shopify Admin REST client for one shop, on the process's aiohttp session.

    Parameters:
      session(aiohttp.ClientSession): The process's HTTP session.
      base_url(str): ``https://{shop}.myshopify.com`` (or a sandbox).
      token(str): The Admin API access token (``X-Shopify-Access-Token``); never in an error or a log.
      api_version(str): e.g. ``2025-01``.
      limiter(FleetRateLimiter): Optional fleet-wide quota of this shop; every attempt takes a slot
        first, and a 429 pauses every holder for ``Retry-After``.
      timeout_s(float): Total time for one HTTP attempt.
      attempts(int): HTTP attempts per call for transient errors (429, 5xx, transport).
      backoff_s(float): First backoff after a 5xx or transport error; doubles each attempt (≤ 30 s).
      leak_per_s(float): How fast the shop's bucket empties (2 a second on a standard plan).
      headroom(int): Calls kept free in the bucket: when the call-limit header says fewer are left,
        the next request waits until the bucket has leaked enough.
      on_request(Callable[[RequestRecord], None]): Called once per HTTP attempt.
    """

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, token: str,
                 api_version: str = DEFAULT_API_VERSION, limiter: FleetRateLimiter | None = None,
                 timeout_s: float = 30, attempts: int = 5, backoff_s: float = 0.5, leak_per_s: float = 2.0,
                 headroom: int = 2, on_request: Callable[[RequestRecord], None] | None = None) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts!r}")
        if not re.fullmatch(r"\d{4}-\d{2}|unstable", api_version):
            raise ValueError(f"api_version must look like 2025-01, got {api_version!r}")
        if leak_per_s <= 0:
            raise ValueError(f"leak_per_s must be positive, got {leak_per_s!r}")
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self.limiter = limiter
        self.leak_per_s = leak_per_s
        self.headroom = max(0, headroom)
        #: The last ``X-Shopify-Shop-Api-Call-Limit`` seen, as ``(used, size)``.
        self.call_limit: tuple[int, int] | None = None
        #: Seconds this client slept because the bucket was nearly full (not counting 429 waits).
        self.throttled_s = 0.0
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        secret = Secret(token)
        self._http = JsonApi(
            session, api=API, base_url=self.base_url, describe_error=_describe_error, reset_at=retry_after,
            request_id_header="X-Request-Id", auth=AttemptHeaders({"X-Shopify-Access-Token": token}, secret),
            headers={"Accept": "application/json"},
            # A 429 waits its Retry-After (at least one leak), then the call is tried again.
            retry=RetryPolicy(attempts=attempts, backoff_s=backoff_s, penalty_s=1.0 / leak_per_s),
            timeout_s=timeout_s, on_request=on_request, logger=self.logger)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_version={self.api_version!r}, token=<hidden>)"

    # -- reads ---------------------------------------------------------------------------------------

    async def list_locations(self) -> list[dict[str, Any]]:
        """Every location of the shop (``locations.json``; not paged), as returned."""
        body, _ = await self._get(LIST_LOCATIONS, self._url("locations.json"))
        locations = self._list_of(body, "locations", LIST_LOCATIONS)
        for index, location in enumerate(locations):
            if not isinstance(location, dict) or not _is_id(location.get("id")):
                raise MalformedResponse(f"locations[{index}]: expected an object with an integer id",
                                        api=API, endpoint=LIST_LOCATIONS, status=200)
        return locations

    async def iter_variants(self, *, limit: int = MAX_PAGE_LIMIT) -> AsyncIterator[list[ShopifyVariant]]:
        """Every product variant, a page of products at a time (``products.json``, Link paging)."""
        params = {"limit": str(_check_limit(limit)), "fields": "id,title,variants"}
        async for products in self._pages(LIST_PRODUCTS, self._url("products.json", params), "products"):
            variants = []
            for index, product in enumerate(products):
                if not isinstance(product, dict) or not isinstance(product.get("variants", []), list):
                    raise MalformedResponse(f"products[{index}]: expected an object with a variants list",
                                            api=API, endpoint=LIST_PRODUCTS, status=200)
                for variant in product.get("variants", []):
                    variants.append(_parse_variant(variant, product))
            yield variants

    async def variants_page(self, cursor: str | None = None, *, limit: int = MAX_PAGE_LIMIT
                            ) -> tuple[list[ShopifyVariant], str | None]:
        """One page of products' variants and the cursor of the next page (None: the last one).

        The cursor is the next page's path on this shop (from the ``Link`` header), so a walk can
        stop and resume at any page.
        """
        if cursor is None:
            url = self._url("products.json", {"limit": str(_check_limit(limit)), "fields": "id,title,variants"})
        else:
            url = self.base_url + cursor
        body, next_url = await self._get(LIST_PRODUCTS, url)
        variants = []
        for index, product in enumerate(self._list_of(body, "products", LIST_PRODUCTS)):
            if not isinstance(product, dict) or not isinstance(product.get("variants", []), list):
                raise MalformedResponse(f"products[{index}]: expected an object with a variants list",
                                        api=API, endpoint=LIST_PRODUCTS, status=200)
            variants.extend(_parse_variant(variant, product) for variant in product.get("variants", []))
        return variants, None if next_url is None else next_url[len(self.base_url):]

    async def levels_of(self, item_ids: list[str], location_ids: list[str | int]) -> list[InventoryLevel]:
        """The inventory levels of ``item_ids`` at ``location_ids`` (every page of them)."""
        if not item_ids or not location_ids:
            return []
        params = {"inventory_item_ids": ",".join(item_ids), "location_ids": ",".join(str(i) for i in location_ids),
                  "limit": str(MAX_PAGE_LIMIT)}
        levels: list[InventoryLevel] = []
        async for page in self._pages(LIST_INVENTORY_LEVELS, self._url("inventory_levels.json", params),
                                      "inventory_levels"):
            levels.extend(_parse_level(level, index) for index, level in enumerate(page))
        return levels

    async def iter_inventory_levels(self, location_ids: list[str | int], *, limit: int = MAX_PAGE_LIMIT
                                    ) -> AsyncIterator[list[InventoryLevel]]:
        """Every inventory level at ``location_ids``, a page at a time (``inventory_levels.json``)."""
        if not location_ids:
            raise ValueError("inventory_levels.json needs at least one location id")
        params = {"location_ids": ",".join(str(i) for i in location_ids), "limit": str(_check_limit(limit))}
        async for levels in self._pages(LIST_INVENTORY_LEVELS, self._url("inventory_levels.json", params),
                                        "inventory_levels"):
            yield [_parse_level(level, index) for index, level in enumerate(levels)]

    # -- HTTP ----------------------------------------------------------------------------------------

    def _url(self, resource: str, params: dict[str, str] | None = None) -> str:
        url = f"{self.base_url}/admin/api/{self.api_version}/{resource}"
        if params:
            url += "?" + urlencode(params)
        return url

    async def _pages(self, route: str, url: str, key: str) -> AsyncIterator[list]:
        next_url: str | None = url
        while next_url is not None:
            body, next_url = await self._get(route, next_url)
            yield self._list_of(body, key, route)

    def _list_of(self, body: Any, key: str, route: str) -> list:
        if not isinstance(body, dict) or not isinstance(body.get(key), list):
            raise MalformedResponse(f"expected {{\"{key}\": [...]}}, got {json_kind(body)}", api=API, endpoint=route,
                                    status=200)
        return body[key]

    async def _get(self, route: str, url: str) -> tuple[Any, str | None]:
        """GET ``url`` (on this shop) after the bucket allows it; the body and the next page's URL."""
        if not url.startswith(self.base_url + "/"):
            raise MalformedResponse("a Link header points outside the shop", api=API, endpoint=route, status=200)
        await self._respect_bucket()
        answer = await self._http.call("GET", route, url[len(self.base_url):], limiter=self.limiter)
        self._note_call_limit(answer.headers)
        return answer.body, _next_link(answer.headers.get("Link", ""))

    async def _respect_bucket(self) -> None:
        """Wait, when the last call-limit header left less than ``headroom`` calls, until it has leaked."""
        if self.call_limit is None:
            return
        used, size = self.call_limit
        excess = used - (size - self.headroom - 1)
        if excess > 0:
            delay = excess / self.leak_per_s
            self.throttled_s += delay
            self.logger.info("Shopify call limit %d/%d: waiting %.2fs", used, size, delay)
            self.call_limit = None
            await asyncio.sleep(delay)

    def _note_call_limit(self, headers: Mapping[str, str]) -> None:
        value = headers.get(CALL_LIMIT_HEADER, "")
        used, _, size = value.partition("/")
        if used.strip().isdigit() and size.strip().isdigit() and int(size) > 0:
            self.call_limit = (int(used), int(size))


def _describe_error(status: int, raw: bytes, headers: Mapping[str, str]) -> ErrorDetails:
    """Shopify's ``{"errors": "..."}``, ``{"errors": [...]}`` or ``{"errors": {"field": [...]}}``."""
    message = ""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and "errors" in body:
        errors = body["errors"]
        if isinstance(errors, dict):
            message = "; ".join(f"{key}: {value}" for key, value in errors.items())
        elif isinstance(errors, list):
            message = "; ".join(map(str, errors))
        else:
            message = str(errors)
    elif raw:
        message = text(raw)[:200]
    return ErrorDetails(message=with_hint(message, _HINTS.get(status)), request_id=headers.get("X-Request-Id"))


def _next_link(link: str) -> str | None:
    """The ``rel="next"`` URL of a ``Link`` header, or ``None`` on the last page."""
    for url, rel in _LINK.findall(link or ""):
        if rel == "next":
            return url
    return None


def _parse_variant(variant: Any, product: dict) -> ShopifyVariant:
    if not isinstance(variant, dict) or not _is_id(variant.get("id")) or not _is_id(variant.get("inventory_item_id")):
        raise MalformedResponse(f"product {product.get('id')}: a variant lacks an integer id or inventory_item_id",
                                api=API, endpoint=LIST_PRODUCTS, status=200)
    sku = variant.get("sku") or ""
    if not isinstance(sku, str):
        raise MalformedResponse(f"variant {variant['id']}: sku must be a string", api=API, endpoint=LIST_PRODUCTS,
                                status=200)
    titles = [t for t in (product.get("title"), variant.get("title")) if isinstance(t, str) and t
              and t != "Default Title"]
    return ShopifyVariant(id=str(variant["id"]), sku=sku.strip(), inventory_item_id=str(variant["inventory_item_id"]),
                          title=" / ".join(titles) or None)


def _parse_level(level: Any, index: int) -> InventoryLevel:
    if (not isinstance(level, dict) or not _is_id(level.get("inventory_item_id"))
            or not _is_id(level.get("location_id"))):
        raise MalformedResponse(f"inventory_levels[{index}]: expected inventory_item_id and location_id integers",
                                api=API, endpoint=LIST_INVENTORY_LEVELS, status=200)
    available = level.get("available")
    if available is not None and (not isinstance(available, int) or isinstance(available, bool)):
        raise MalformedResponse(f"inventory_levels[{index}]: available must be an integer or null, got "
                                f"{json_kind(available)}", api=API, endpoint=LIST_INVENTORY_LEVELS, status=200)
    return InventoryLevel(str(level["inventory_item_id"]), str(level["location_id"]), available)


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValueError(f"limit must be in 1..{MAX_PAGE_LIMIT}, got {limit!r}")
    return limit


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
