"""A Shopify Admin GraphQL API client: catalogue pages, one item's level, compare-and-set writes, orders.

Every call is ``POST /admin/api/{SHOPIFY_API_VERSION}/graphql.json`` with ``X-Shopify-Access-Token``
and ``{"query", "variables"}``; the documents are the module's constants (and
:func:`variants_query` / :func:`level_query`, which name one aliased ``inventoryLevel`` per location),
so a test can run the very strings this client sends.  IDs travel as Shopify's GIDs
(``gid://shopify/InventoryItem/123``); stocksync keeps the number (:func:`gid_number`), so a
listing, an order and an order line are named alike by a webhook and by a poll.

Shopify meters GraphQL by query cost (a leaky bucket per app and shop).  With a
:class:`clients.costbucket.FleetCostBucket`, every call first debits its requested cost (the cost
Shopify last reported for that operation, or an upper bound), then gives back what it did not use
and lowers the fleet's bucket to Shopify's ``throttleStatus``.  A ``THROTTLED`` answer (HTTP 200, no
data) is charged nothing: its cost is given back and the call waits in the bucket for the points,
then goes again (at most ``throttled_attempts`` times).  Errors are the typed errors of
:mod:`clients.errors`; the token never shows in an error, a log line or a repr.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from clients.errors import ApiError, BadRequest, Forbidden, MalformedResponse, RateLimited, ServerError
from clients.http import AttemptHeaders, ErrorDetails, JsonApi, RequestRecord, RetryPolicy, Secret, json_kind, text, \
    with_hint
from core.accounts import MAX_SHOP_LOCATIONS
from core.platforms import SHOPIFY_API_VERSION

if TYPE_CHECKING:
    from clients.costbucket import FleetCostBucket

#: The API's name in errors, records and metrics.
API = "shopify"

#: The route of every call (errors and metrics name the operation after it).
GRAPHQL = "POST /admin/api/{version}/graphql.json"

#: The largest ``first`` Shopify's connections accept.
MAX_PAGE_LIMIT = 250

#: Variants per catalogue page: 100 variants at one location cost about 400 points (a standard
#: plan restores 100 a second), and a page stays well under the bucket with a few locations.
DEFAULT_PAGE_LIMIT = 100

#: Locations one query may name (each is an aliased ``inventoryLevel``: its cost grows with them).
MAX_LOCATIONS = MAX_SHOP_LOCATIONS

#: The CAS refusal of ``inventorySetQuantities`` in 2026-01 (``changeFromQuantity`` no longer matches).
STALE_CODES = frozenset({"CHANGE_FROM_QUANTITY_STALE", "COMPARE_QUANTITY_STALE"})

#: What Shopify last asked for each (shop, operation) in this process: the next call of it debits that much.
_REQUESTED: dict[tuple[str, str], float] = {}

_HINTS = {
    401: "the access token was refused: check the account's credential variable",
    403: "the app lacks a scope (stocksync needs read_products, read_inventory, write_inventory, read_orders)",
    404: "no such shop or API version",
    429: "over Shopify's request limit",
}

LOCATIONS_QUERY = """query StocksyncLocations($first: Int!) {
  locations(first: $first) { edges { node { id } } }
}"""

SET_MUTATION = """mutation StocksyncSetAvailable($input: InventorySetQuantitiesInput!) {
  inventorySetQuantities(input: $input) {
    inventoryAdjustmentGroup { id reason changes { name delta } }
    userErrors { field message code }
  }
}"""

#: Orders per page and lines (and refund lines) per order: an order costs 3 + 50 points for its lines and
#: 3 + 2 × 50 for its refunds' lines (each names its line item), so 6 a page stay under Shopify's 1,000-point
#: single query limit.
ORDERS_PAGE_LIMIT, ORDER_LINES = 6, 50
ORDER_COST = 3 + ORDER_LINES + 3 + 2 * ORDER_LINES

ORDERS_QUERY = """query StocksyncOrders($first: Int!, $after: String, $query: String) {
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {
    edges { cursor node {
      id name createdAt updatedAt cancelledAt
      lineItems(first: 50) { nodes { id sku quantity } pageInfo { hasNextPage } }
      refunds { refundLineItems(first: 50) { nodes { lineItem { id } quantity restockType } } }
    } }
    pageInfo { hasNextPage endCursor }
  }
}"""

_AVAILABLE = 'quantities(names: ["available"]) { name quantity }'


def _levels(count: int) -> str:
    """One aliased ``inventoryLevel`` per location (``at0``, ``at1``...), each on its own variable."""
    return " ".join(f"at{i}: inventoryLevel(locationId: $l{i}) {{ {_AVAILABLE} }}" for i in range(count))


def _location_vars(count: int) -> str:
    return "".join(f", $l{i}: ID!" for i in range(count))


def variants_query(locations: int) -> str:
    """The catalogue page query for ``locations`` locations: variants with SKU, inventory item and levels."""
    return (f"query StocksyncVariants($first: Int!, $after: String{_location_vars(locations)}) {{\n"
            "  productVariants(first: $first, after: $after) {\n"
            f"    edges {{ cursor node {{ id sku inventoryItem {{ id tracked {_levels(locations)} }} }} }}\n"
            "    pageInfo { hasNextPage endCursor }\n  }\n}")


def bulk_variants_query(locations: list[str]) -> str:
    """The catalogue as one bulk query (no paging, no variables: the locations written in), one line a variant.

    The same selection as :func:`variants_query`, so :func:`parse_variant` reads a file's line as a page's node.
    """
    _check_locations(locations)
    levels = " ".join(f'at{i}: inventoryLevel(locationId: "{gid("Location", location)}") {{ {_AVAILABLE} }}'
                      for i, location in enumerate(locations))
    return ("query StocksyncBulkVariants {\n"
            f"  productVariants {{ edges {{ node {{ id sku inventoryItem {{ id tracked {levels} }} }} }} }}\n}}")


def level_query(locations: int) -> str:
    """One inventory item's ``available`` at ``locations`` locations."""
    return (f"query StocksyncLevel($id: ID!{_location_vars(locations)}) {{\n"
            f"  inventoryItem(id: $id) {{ id tracked {_levels(locations)} }}\n}}")


def gid(kind: str, number: str | int) -> str:
    """Shopify's global id of ``kind`` number ``number`` (``gid://shopify/InventoryItem/123``)."""
    return f"gid://shopify/{kind}/{number}"


_GID = re.compile(r"gid://shopify/([A-Za-z]+)/(\d+)(?:\?.*)?")


def gid_number(value: Any, kind: str) -> str:
    """The number of a GID of ``kind`` (:class:`MalformedResponse` otherwise)."""
    found = _GID.fullmatch(value) if isinstance(value, str) else None
    if found is None or found.group(1) != kind:
        raise MalformedResponse(f"expected a gid://shopify/{kind}/... id, got {str(value)[:60]!r}", api=API,
                                endpoint=GRAPHQL, status=200)
    return found.group(2)


@dataclass(frozen=True)
class VariantStock:
    """A variant: its SKU (may be empty), its inventory item and ``available`` at each location asked.

    ``levels`` has one entry per location asked, ``None`` where the item is not stocked there;
    ``tracked`` False: Shopify does not count this item's stock.
    """

    variant_id: str
    sku: str
    inventory_item_id: str
    tracked: bool
    levels: tuple[int | None, ...]


@dataclass(frozen=True)
class VariantsPage:
    """One page of variants and the cursor of the next one (None: the last page)."""

    variants: list[VariantStock]
    next_cursor: str | None


@dataclass(frozen=True)
class OrderLine:
    """A line of an order: its number (``gid://shopify/LineItem/N``), SKU and quantity."""

    id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class RefundLine:
    """A refund's line: ``quantity`` units of line ``line_id``, restocked or not (``restock_type``: CANCEL,
    RETURN, LEGACY_RESTOCK or NO_RESTOCK, Shopify's ``RefundLineItemRestockType``)."""

    line_id: str
    quantity: int
    restock_type: str


@dataclass(frozen=True)
class ShopifyOrder:
    """An order as the poll needs it; times are Shopify's ISO 8601 strings."""

    id: str
    name: str
    created_at: str
    updated_at: str
    cancelled_at: str | None
    lines: list[OrderLine]
    refund_lines: list[RefundLine] = field(default_factory=list)


@dataclass(frozen=True)
class OrdersPage:
    orders: list[ShopifyOrder]
    next_cursor: str | None


@dataclass(frozen=True)
class QueryCost:
    """``extensions.cost`` of one answer."""

    requested: float
    actual: float | None
    available: float
    maximum: float
    restore_rate: float


class ShopifyClient:
    """A Shopify Admin GraphQL client for one shop, on the process's aiohttp session.

    Parameters:
      session(aiohttp.ClientSession): The process's HTTP session.
      base_url(str): ``https://{shop}.myshopify.com`` (or a sandbox).
      token(str): The Admin API access token (``X-Shopify-Access-Token``); never in an error or a log.
      api_version(str): The pinned version (:data:`core.platforms.SHOPIFY_API_VERSION`).
      cost_bucket(FleetCostBucket): The shop's fleet-wide query-cost budget; None: no pacing but Shopify's answers.
      timeout_s(float): Total time for one HTTP attempt.
      attempts(int): HTTP attempts per call for transient errors (429, 5xx, transport).
      backoff_s(float): First backoff after a 5xx or transport error; doubles each attempt (≤ 30 s).
      throttled_attempts(int): ``THROTTLED`` answers one call waits out before it gives up (RateLimited).
      on_request(Callable[[RequestRecord], None]): Called once per HTTP attempt.
    """

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, token: str,
                 api_version: str = SHOPIFY_API_VERSION, cost_bucket: FleetCostBucket | None = None,
                 timeout_s: float = 30, attempts: int = 4, backoff_s: float = 0.5, throttled_attempts: int = 20,
                 on_request: Callable[[RequestRecord], None] | None = None) -> None:
        if attempts < 1 or throttled_attempts < 1:
            raise ValueError(f"attempts and throttled_attempts must be at least 1, got {attempts!r}, "
                             f"{throttled_attempts!r}")
        if not re.fullmatch(r"\d{4}-\d{2}|unstable", api_version):
            raise ValueError(f"api_version must look like 2026-01, got {api_version!r}")
        self.base_url = base_url.rstrip("/")
        #: The process's session and the attempt callback, for calls off the API's host (a bulk file).
        self.session = session
        self.on_request = on_request
        self.api_version = api_version
        self.cost_bucket = cost_bucket
        self.throttled_attempts = throttled_attempts
        #: The last ``extensions.cost`` seen, and how many THROTTLED answers this client waited out.
        self.last_cost: QueryCost | None = None
        self.throttled = 0
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self._path = f"/admin/api/{api_version}/graphql.json"
        self._http = JsonApi(
            session, api=API, base_url=self.base_url, describe_error=_describe_error,
            request_id_header="X-Request-Id", auth=AttemptHeaders({"X-Shopify-Access-Token": token}, Secret(token)),
            headers={"Accept": "application/json"},
            retry=RetryPolicy(attempts=attempts, backoff_s=backoff_s, penalty_s=1.0),
            timeout_s=timeout_s, on_request=on_request, logger=self.logger)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_version={self.api_version!r}, token=<hidden>)"

    # -- the verbs -----------------------------------------------------------------------------------

    async def location_ids(self) -> list[str]:
        """The numbers of the shop's active locations (Shopify's ``locations`` lists the active ones)."""
        data = await self.execute(LOCATIONS_QUERY, {"first": 50}, name="locations", estimate=52)
        return [gid_number(edge.get("node", {}).get("id"), "Location")
                for edge in _path(data, "locations", "edges", kind=list)]

    async def variants_page(self, locations: list[str], cursor: str | None = None, *,
                            limit: int = DEFAULT_PAGE_LIMIT) -> VariantsPage:
        """One page of variants with their ``available`` at ``locations`` (location numbers)."""
        _check_locations(locations)
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"limit must be in 1..{MAX_PAGE_LIMIT}, got {limit!r}")
        variables: dict[str, Any] = {"first": limit, "after": cursor, **_location_variables(locations)}
        data = await self.execute(variants_query(len(locations)), variables, name=f"variants:{len(locations)}",
                                  estimate=2 + limit * (2 + len(locations)))
        connection = _path(data, "productVariants", kind=dict)
        variants = []
        for index, edge in enumerate(_path(connection, "edges", kind=list)):
            node = edge.get("node") if isinstance(edge, dict) else None
            variants.append(parse_variant(node, len(locations), f"productVariants.edges[{index}]"))
        return VariantsPage(variants, _next_cursor(connection))

    async def levels(self, inventory_item: str, locations: list[str]) -> tuple[bool, tuple[int | None, ...]]:
        """``(tracked, available at each location)`` of one inventory item (its number); an unknown item is an ApiError."""
        _check_locations(locations)
        data = await self.execute(level_query(len(locations)),
                                  {"id": gid("InventoryItem", inventory_item), **_location_variables(locations)},
                                  name=f"level:{len(locations)}", estimate=2 + len(locations))
        item = data.get("inventoryItem")
        if not isinstance(item, dict):
            raise ApiError(f"no inventory item {inventory_item} on this shop", api=API, endpoint=GRAPHQL, status=200,
                           code="NOT_FOUND")
        return item.get("tracked") is not False, _levels_of(item, len(locations))

    async def set_available(self, inventory_item: str, location: str, quantity: int, *, change_from: int | None,
                            reference: str) -> bool:
        """Set ``available`` of one item at one location, if it still is ``change_from`` (the compare-and-set).

        Returns True when set, False when Shopify refused a stale ``change_from`` (nothing was written).
        Any other user error raises :class:`BadRequest` (permanent) naming Shopify's code and message.
        """
        variables = {"input": {
            "name": "available", "reason": "correction", "referenceDocumentUri": reference,
            "quantities": [{"inventoryItemId": gid("InventoryItem", inventory_item),
                            "locationId": gid("Location", location), "quantity": quantity,
                            "changeFromQuantity": change_from}]}}
        data = await self.execute(SET_MUTATION, variables, name="set", estimate=10)
        payload = _path(data, "inventorySetQuantities", kind=dict)
        errors = payload.get("userErrors") or []
        if not isinstance(errors, list):
            raise _malformed("inventorySetQuantities.userErrors must be a list")
        if any(isinstance(e, dict) and e.get("code") in STALE_CODES for e in errors):
            return False
        if errors:
            described = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))
            raise BadRequest(f"inventorySetQuantities refused: {described}"[:300], api=API, endpoint=GRAPHQL,
                             status=200, code=str(errors[0].get("code")) if isinstance(errors[0], dict) else None)
        return True

    async def orders_page(self, updated_since: str, cursor: str | None = None, *,
                          limit: int = ORDERS_PAGE_LIMIT) -> OrdersPage:
        """Orders updated at or after ``updated_since`` (ISO 8601, UTC), oldest change first, one page."""
        variables = {"first": limit, "after": cursor, "query": f"updated_at:>='{updated_since}'"}
        data = await self.execute(ORDERS_QUERY, variables, name="orders", estimate=2 + limit * ORDER_COST)
        connection = _path(data, "orders", kind=dict)
        orders = []
        for index, edge in enumerate(_path(connection, "edges", kind=list)):
            node = edge.get("node") if isinstance(edge, dict) else None
            if not isinstance(node, dict):
                raise _malformed(f"orders.edges[{index}]: expected a node")
            orders.append(_parse_order(node))
        return OrdersPage(orders, _next_cursor(connection))

    # -- GraphQL -------------------------------------------------------------------------------------

    async def execute(self, query: str, variables: Mapping[str, Any], *, name: str, estimate: float) -> dict:
        """Run one document and return its ``data``, paced by the cost bucket, THROTTLED answers waited out."""
        route = f"{GRAPHQL} {name}"
        for _ in range(self.throttled_attempts):
            requested = _REQUESTED.get((self.base_url, name), estimate)
            if self.cost_bucket is not None:
                await self.cost_bucket.debit(requested)
            try:
                answer = await self._http.call("POST", route, self._path,
                                               body={"query": query, "variables": dict(variables)})
            except BaseException:
                # Not run (or not known to have run): its points come back with Shopify's next figures.
                if self.cost_bucket is not None:
                    await self.cost_bucket.credit(requested)
                raise
            body = answer.body
            if not isinstance(body, dict):
                raise _malformed(f"expected a JSON object, got {json_kind(body)}", route)
            cost = _cost(body)
            throttled = _throttled(body)
            if cost is not None:
                self.last_cost = cost
                _REQUESTED[(self.base_url, name)] = cost.requested
                if self.cost_bucket is not None:
                    # A throttled query is charged nothing; otherwise what it did not use comes back.
                    charged = 0.0 if throttled else (cost.actual if cost.actual is not None else cost.requested)
                    await self.cost_bucket.credit(requested - charged)
                    await self.cost_bucket.observe(cost.available, cost.maximum, cost.restore_rate)
            if throttled and cost is None and self.cost_bucket is not None:
                # No figures with it: take the bucket as empty, so the retry waits for the points.
                await self.cost_bucket.observe(0, self.cost_bucket.maximum, self.cost_bucket.restore_rate)
            if throttled:
                self.throttled += 1
                self.logger.info("Shopify answered THROTTLED to %s: waiting for the bucket", name)
                if self.cost_bucket is None:
                    raise RateLimited("THROTTLED: over the shop's query-cost budget", api=API, endpoint=route,
                                      status=200, code="THROTTLED")
                continue
            if body.get("errors"):
                raise _graphql_error(body["errors"], route)
            data = body.get("data")
            if not isinstance(data, dict):
                raise _malformed(f"expected data to be an object, got {json_kind(data)}", route)
            return data
        raise RateLimited(f"THROTTLED {self.throttled_attempts} times in a row", api=API, endpoint=route, status=200,
                          code="THROTTLED")


# -- parsing --------------------------------------------------------------------------------------------


def _malformed(message: str, route: str = GRAPHQL) -> MalformedResponse:
    return MalformedResponse(message, api=API, endpoint=route, status=200)


def _path(data: Any, *keys: str, kind: type) -> Any:
    value = data
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    if not isinstance(value, kind):
        raise _malformed(f"{'.'.join(keys)}: expected {kind.__name__}, got {json_kind(value)}")
    return value


def _next_cursor(connection: dict) -> str | None:
    info = _path(connection, "pageInfo", kind=dict)
    if not info.get("hasNextPage"):
        return None
    cursor = info.get("endCursor")
    if not isinstance(cursor, str) or not cursor:
        raise _malformed("pageInfo.hasNextPage is true but endCursor is missing")
    return cursor


def parse_variant(node: Any, locations: int, where: str) -> VariantStock:
    """A ``ProductVariant`` as the catalogue queries select it (a page's node, a bulk file's line)."""
    if not isinstance(node, dict) or not isinstance(node.get("inventoryItem"), dict):
        raise _malformed(f"{where}: expected a node with an inventoryItem")
    sku = node.get("sku") or ""
    if not isinstance(sku, str):
        raise _malformed(f"{where}.sku must be a string")
    item = node["inventoryItem"]
    return VariantStock(gid_number(node.get("id"), "ProductVariant"), sku.strip(),
                        gid_number(item.get("id"), "InventoryItem"), item.get("tracked") is not False,
                        _levels_of(item, locations))


def _levels_of(item: dict, count: int) -> tuple[int | None, ...]:
    levels = []
    for i in range(count):
        level = item.get(f"at{i}")
        if level is None:
            levels.append(None)  # not stocked at that location
            continue
        quantities = level.get("quantities") if isinstance(level, dict) else None
        if not isinstance(quantities, list):
            raise _malformed(f"inventoryLevel: expected quantities, got {json_kind(quantities)}")
        available = [q.get("quantity") for q in quantities if isinstance(q, dict) and q.get("name") == "available"]
        if len(available) != 1 or not isinstance(available[0], int) or isinstance(available[0], bool):
            raise _malformed("inventoryLevel: expected one integer 'available' quantity")
        levels.append(available[0])
    return tuple(levels)


def _parse_order(node: dict) -> ShopifyOrder:
    order_id = gid_number(node.get("id"), "Order")
    for name in ("createdAt", "updatedAt"):
        if not isinstance(node.get(name), str):
            raise _malformed(f"order {order_id}: {name} must be an ISO 8601 time")
    cancelled = node.get("cancelledAt")
    if cancelled is not None and not isinstance(cancelled, str):
        raise _malformed(f"order {order_id}: cancelledAt must be an ISO 8601 time or null")
    if node.get("lineItems", {}).get("pageInfo", {}).get("hasNextPage"):
        # Lines past the first ORDER_LINES are not booked by the poll (its webhook carries them all).
        logging.getLogger(__name__).error("order %s has over %d lines: the poll books the first %d", order_id,
                                          ORDER_LINES, ORDER_LINES)
    lines = []
    for line in _path(node, "lineItems", "nodes", kind=list):
        if not isinstance(line, dict):
            raise _malformed(f"order {order_id}: a line item is not an object")
        quantity = line.get("quantity")
        if not isinstance(quantity, int) or isinstance(quantity, bool):
            raise _malformed(f"order {order_id}: a line item's quantity must be an integer")
        sku = line.get("sku") or ""
        lines.append(OrderLine(gid_number(line.get("id"), "LineItem"), sku.strip() if isinstance(sku, str) else "",
                               quantity))
    return ShopifyOrder(order_id, str(node.get("name") or ""), node["createdAt"], node["updatedAt"], cancelled, lines,
                        _refund_lines(order_id, node))


def _refund_lines(order_id: str, node: dict) -> list[RefundLine]:
    """The lines of an order's refunds (a cancellation's restock, or not, is one per line)."""
    found = []
    for refund in node.get("refunds") or []:
        if not isinstance(refund, dict):
            raise _malformed(f"order {order_id}: a refund is not an object")
        for item in _path(refund, "refundLineItems", "nodes", kind=list):
            quantity = item.get("quantity") if isinstance(item, dict) else None
            if not isinstance(quantity, int) or isinstance(quantity, bool):
                raise _malformed(f"order {order_id}: a refund line's quantity must be an integer")
            kind = item.get("restockType")
            if not isinstance(kind, str):
                raise _malformed(f"order {order_id}: a refund line's restockType must be a string")
            found.append(RefundLine(gid_number((item.get("lineItem") or {}).get("id"), "LineItem"), quantity, kind))
    return found


def _cost(body: dict) -> QueryCost | None:
    cost = body.get("extensions", {}).get("cost") if isinstance(body.get("extensions"), dict) else None
    if not isinstance(cost, dict) or not isinstance(cost.get("throttleStatus"), dict):
        return None
    status = cost["throttleStatus"]
    try:
        return QueryCost(float(cost["requestedQueryCost"]),
                         None if cost.get("actualQueryCost") is None else float(cost["actualQueryCost"]),
                         float(status["currentlyAvailable"]), float(status["maximumAvailable"]),
                         float(status["restoreRate"]))
    except (KeyError, TypeError, ValueError):
        raise _malformed("extensions.cost: expected requestedQueryCost and a throttleStatus of numbers") from None


def _codes(errors: Any) -> list[str]:
    if not isinstance(errors, list):
        return []
    return [str(e.get("extensions", {}).get("code")) for e in errors
            if isinstance(e, dict) and isinstance(e.get("extensions"), dict)]


def _throttled(body: dict) -> bool:
    return "THROTTLED" in _codes(body.get("errors"))


def _graphql_error(errors: Any, route: str) -> ApiError:
    """A GraphQL ``errors`` list as the typed error it amounts to."""
    messages = [str(e.get("message")) for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []
    message = "; ".join(messages)[:300] or text(json.dumps(errors).encode())[:300]
    codes = _codes(errors)
    code = codes[0] if codes else None
    if code in ("INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE"):
        return ServerError(message, api=API, endpoint=route, status=200, code=code)
    if code == "ACCESS_DENIED":
        return Forbidden(with_hint(message, _HINTS[403]), api=API, endpoint=route, status=200, code=code)
    return BadRequest(message, api=API, endpoint=route, status=200, code=code)


def _describe_error(status: int, raw: bytes, headers: Mapping[str, str]) -> ErrorDetails:
    """Shopify's ``{"errors": "..."}`` or ``{"errors": [{"message": ...}]}``."""
    message = ""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and "errors" in body:
        errors = body["errors"]
        if isinstance(errors, list):
            message = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
        else:
            message = str(errors)
    elif raw:
        message = text(raw)[:200]
    return ErrorDetails(message=with_hint(message, _HINTS.get(status)), request_id=headers.get("X-Request-Id"))


def _check_locations(locations: list[str]) -> None:
    if not 1 <= len(locations) <= MAX_LOCATIONS:
        raise ValueError(f"between 1 and {MAX_LOCATIONS} locations, got {len(locations)}")


def _location_variables(locations: list[str]) -> dict[str, str]:
    return {f"l{i}": gid("Location", location) for i, location in enumerate(locations)}


__all__ = ["API", "DEFAULT_PAGE_LIMIT", "LOCATIONS_QUERY", "MAX_PAGE_LIMIT", "ORDERS_QUERY", "OrderLine", "OrdersPage",
            "QueryCost", "RefundLine", "SET_MUTATION", "ShopifyClient", "ShopifyOrder", "VariantStock",
            "VariantsPage", "gid", "bulk_variants_query", "gid_number", "level_query", "parse_variant",
            "variants_query"]
