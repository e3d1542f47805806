"""The Shopify sandbox's GraphQL Admin API: the schema (``shopify.graphql``), its resolvers, cost and throttling.

Schema-first: ``sandbox/shopify.graphql`` holds the types in Shopify's own names, ariadne binds the
resolvers below, graphql-core parses, validates and executes.  :func:`answer` is the whole of a
``POST /admin/api/{version}/graphql.json`` after authentication: it parses the query, prices it
(:mod:`sandbox.shopify_cost`), refuses it ``THROTTLED`` (HTTP 200, no ``data``) when the bucket
lacks the points, runs it under the shop's lock (one query sees and changes one consistent shop)
and answers ``{"data", "errors"?, "extensions": {"cost": ...}}``.

The resolvers read the shop through ``info.context``, a :class:`sandbox.shopify.ShopifySandbox`
whose lock is held while they run (its ``*_locked`` methods).
"""
from __future__ import annotations

import base64
import bisect
import binascii
import json
from contextvars import ContextVar
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from ariadne import MutationType, ObjectType, QueryType, ScalarType, make_executable_schema
from graphql import (
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    execute,
    parse,
    validate,
)

from sandbox.shopify_cost import MAX_QUERY_COST, CostBucket, query_cost

if TYPE_CHECKING:
    from sandbox.shopify import ShopifySandbox

__all__ = ["BULK", "MAX_PAGE_SIZE", "answer", "gid", "iso_datetime", "parse_gid", "schema"]

#: The most items one connection page may hold (Shopify's limit).
MAX_PAGE_SIZE = 250

_query, _mutation = QueryType(), MutationType()
_variant, _item, _level, _order, _refund = (ObjectType("ProductVariant"), ObjectType("InventoryItem"),
                                            ObjectType("InventoryLevel"), ObjectType("Order"), ObjectType("Refund"))
_datetime, _url, _uint64 = ScalarType("DateTime"), ScalarType("URL"), ScalarType("UnsignedInt64")

#: True while a bulk operation's query runs: its connections are walked whole (no first/last).
BULK: ContextVar[bool] = ContextVar("shopify_bulk", default=False)


def gid(kind: str, number: int) -> str:
    """A Shopify global id: ``gid://shopify/<kind>/<number>``."""
    return f"gid://shopify/{kind}/{number}"


def iso_datetime(moment: datetime) -> str:
    """A ``DateTime`` as Shopify writes it: UTC, to the second, ``2026-01-09T19:35:56Z``."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_gid(value: Any, kind: str) -> int | None:
    """The number in ``gid://shopify/<kind>/<number>``; None when ``value`` is not such an id."""
    prefix = f"gid://shopify/{kind}/"
    if not isinstance(value, str) or not value.startswith(prefix):
        return None
    number = value[len(prefix):]
    return int(number) if number.isascii() and number.isdigit() else None


# -- connections ---------------------------------------------------------------------------------------


def _cursor(key: int | tuple[int, ...]) -> str:
    """An opaque cursor: the item's sort key (an id, or a time and an id), base64 JSON."""
    return base64.urlsafe_b64encode(json.dumps({"k": key}).encode()).decode()


def _uncursor(cursor: str, argument: str) -> int | tuple[int, ...]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))["k"]
        if isinstance(key, list) and all(isinstance(part, int) for part in key):
            return tuple(key)
        if isinstance(key, int):
            return key
        raise ValueError
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeError):
        raise GraphQLError(f"Invalid cursor for '{argument}': {cursor!r}") from None


def connection(items: Sequence[tuple[Any, Any]], *, first: int | None = None, after: str | None = None,
               last: int | None = None, before: str | None = None, reverse: bool = False,
               view: Callable[[Any], Any] = lambda source: source) -> dict[str, Any]:
    """One page of ``(key, source)`` pairs, sorted by key ascending, as a Shopify connection, cursors opaque.

    The cursors are found by bisection and ``view`` makes nodes of the page's sources only, so a
    page of a large shop costs what the page holds, not what the shop holds.

    Raises:
      GraphQLError: Neither or both of ``first`` and ``last``, a size outside 0..250, a bad cursor.
    """
    if first is None and last is None and BULK.get():
        first = len(items)  # a bulk query reads the whole connection
    elif (first is None) == (last is None):
        raise GraphQLError("you must provide one of first or last")
    size = first if first is not None else last
    if not 0 <= size <= MAX_PAGE_SIZE and not BULK.get():
        raise GraphQLError(f"The maximum number of items that can be requested is {MAX_PAGE_SIZE}, got {size}.")
    low, high = 0, len(items)  # the items between the cursors: items[low:high]

    def position(mark: Any, right: bool) -> int:
        return (bisect.bisect_right if right else bisect.bisect_left)(items, mark, key=lambda pair: pair[0])

    if after is not None:
        mark = _uncursor(after, "after")
        low, high = (low, min(high, position(mark, False))) if reverse else (max(low, position(mark, True)), high)
    if before is not None:
        mark = _uncursor(before, "before")
        low, high = (max(low, position(mark, True)), high) if reverse else (low, min(high, position(mark, False)))
    between = max(0, high - low)
    count = min(size, between)
    # Walked in the order asked for; "first" takes from its start, "last" from its end.
    from_start = (first is not None) != reverse
    indexes = range(low, low + count) if from_start else range(high - count, high)
    page = [items[i] for i in (reversed(indexes) if reverse else indexes)]
    if first is not None:
        more_after, more_before = between > size, after is not None
    else:
        more_after, more_before = before is not None, between > size
    edges = [{"cursor": _cursor(key), "node": view(source)} for key, source in page]
    return {"edges": edges, "nodes": [edge["node"] for edge in edges],
            "pageInfo": {"hasNextPage": more_after, "hasPreviousPage": more_before,
                         "startCursor": edges[0]["cursor"] if edges else None,
                         "endCursor": edges[-1]["cursor"] if edges else None}}


def _page(items: Iterable[tuple[Any, Any]], kwargs: dict[str, Any],
          view: Callable[[Any], Any] = lambda source: source, *, ordered: bool = False) -> dict[str, Any]:
    items = items if ordered else sorted(items, key=lambda pair: pair[0])
    return connection(items, **{name: kwargs.get(name) for name in ("first", "after", "last", "before")},
                      reverse=bool(kwargs.get("reverse")), view=view)


# -- resolvers (the shop's lock is held) -------------------------------------------------------------------


@_query.field("productVariants")
def _resolve_variants(_: Any, info: Any, **kwargs: Any) -> dict[str, Any]:
    shop: ShopifySandbox = info.context
    page = _page(shop.variant_pairs_locked(), kwargs, shop.variant_view_locked, ordered=True)
    if kwargs.get("query") is None:  # a catalogue walk's page (answered: a bad cursor raised above)
        shop.walked_locked(kwargs.get("after"))
    return page


@_query.field("productVariant")
def _resolve_variant(_: Any, info: Any, id: str) -> dict[str, Any] | None:
    shop: ShopifySandbox = info.context
    variant = shop.variant_locked(parse_gid(id, "ProductVariant"))
    return shop.variant_view_locked(variant) if variant else None


@_query.field("inventoryItem")
def _resolve_item(_: Any, info: Any, id: str) -> dict[str, Any] | None:
    shop: ShopifySandbox = info.context
    variant = shop.variant_of_item_locked(parse_gid(id, "InventoryItem"))
    return shop.item_view_locked(variant) if variant else None


@_query.field("locations")
def _resolve_locations(_: Any, info: Any, **kwargs: Any) -> dict[str, Any]:
    shop: ShopifySandbox = info.context
    return _page(((location["id"], shop.location_view_locked(location["id"])) for location in shop.locations_locked()),
                 kwargs)


@_query.field("location")
def _resolve_location(_: Any, info: Any, id: str | None = None) -> dict[str, Any] | None:
    shop: ShopifySandbox = info.context
    if id is None:  # Shopify: the shop's primary location
        return shop.location_view_locked(shop.locations_locked()[0]["id"])
    number = parse_gid(id, "Location")
    return shop.location_view_locked(number) if number in shop.location_ids_locked() else None


@_query.field("orders")
def _resolve_orders(_: Any, info: Any, query: str | None = None, sortKey: str = "ID", **kwargs: Any) -> dict[str, Any]:
    shop: ShopifySandbox = info.context
    try:
        return _page(shop.orders_locked(query, sortKey), kwargs, shop.order_view_locked)
    except ValueError as error:
        raise GraphQLError(f"Invalid search query {query!r}: {error}") from None


@_query.field("order")
def _resolve_order(_: Any, info: Any, id: str) -> dict[str, Any] | None:
    shop: ShopifySandbox = info.context
    return shop.order_view_locked(parse_gid(id, "Order"))


@_query.field("bulkOperation")
def _resolve_bulk_operation(_: Any, info: Any, id: str) -> dict[str, Any] | None:
    return info.context.bulk_view_locked(id)


@_query.field("currentBulkOperation")
def _resolve_current_bulk_operation(_: Any, info: Any, type: str = "QUERY") -> dict[str, Any] | None:
    return info.context.bulk_current_locked(type)


@_mutation.field("bulkOperationRunQuery")
def _resolve_bulk_run(_: Any, info: Any, query: str) -> dict[str, Any]:
    return info.context.bulk_run_locked(query)


@_variant.field("inventoryItem")
def _resolve_variant_item(variant: dict[str, Any], info: Any) -> dict[str, Any]:
    return info.context.item_view_locked(variant["_variant"])


@_item.field("inventoryLevel")
def _resolve_level(item: dict[str, Any], info: Any, locationId: str) -> dict[str, Any] | None:
    shop: ShopifySandbox = info.context
    location = parse_gid(locationId, "Location")
    if location not in shop.location_ids_locked():
        return None
    return shop.level_view_locked(item["_variant"], location)


@_item.field("inventoryLevels")
def _resolve_levels(item: dict[str, Any], info: Any, **kwargs: Any) -> dict[str, Any]:
    shop: ShopifySandbox = info.context
    return _page(((location, location) for location in shop.location_ids_locked()), kwargs,
                 lambda location: shop.level_view_locked(item["_variant"], location))


@_level.field("quantities")
def _resolve_quantities(level: dict[str, Any], info: Any, names: list[str]) -> list[dict[str, Any]]:
    shop: ShopifySandbox = info.context
    try:
        return [shop.quantity_view_locked(level, name) for name in names]
    except ValueError as error:
        raise GraphQLError(str(error)) from None


@_order.field("lineItems")
def _resolve_line_items(order: dict[str, Any], info: Any, **kwargs: Any) -> dict[str, Any]:
    return _page(enumerate(order["_lineItems"]), kwargs)


@_order.field("refunds")
def _resolve_refunds(order: dict[str, Any], info: Any, first: int | None = None) -> list[dict[str, Any]]:
    return order["_refunds"][:first] if first is not None else order["_refunds"]


@_refund.field("refundLineItems")
def _resolve_refund_lines(refund: dict[str, Any], info: Any, **kwargs: Any) -> dict[str, Any]:
    return _page(enumerate(refund["_refundLineItems"]), kwargs)


@_mutation.field("inventorySetQuantities")
def _resolve_set_quantities(_: Any, info: Any, input: dict[str, Any]) -> dict[str, Any]:
    shop: ShopifySandbox = info.context
    return shop.set_quantities_locked(input)


def _load_schema() -> GraphQLSchema:
    type_defs = resources.files("sandbox").joinpath("shopify.graphql").read_text(encoding="utf-8")
    return make_executable_schema(type_defs, _query, _mutation, _variant, _item, _level, _order, _refund,
                                  _datetime, _url, _uint64)


#: The executable schema (built once: building it parses the SDL).
schema = _load_schema()


# -- one request -------------------------------------------------------------------------------------------


def answer(shop: ShopifySandbox, bucket: CostBucket, body: Any, *, throttled: bool = False) -> dict[str, Any]:
    """The JSON answer to one GraphQL request ``body`` (already JSON-decoded); the caller holds the shop's lock.

    ``throttled`` refuses the query ``THROTTLED`` whatever the bucket holds (the sandbox's dial).

    Raises:
      ValueError: ``body`` is not ``{"query": str, "variables"?: object, "operationName"?: str}``.
    """
    if not isinstance(body, dict) or not isinstance(body.get("query"), str) or not body["query"].strip():
        raise ValueError("the body must be a JSON object with a non-empty \"query\" string")
    variables = body.get("variables") or {}
    operation_name = body.get("operationName")
    if not isinstance(variables, dict) or not (operation_name is None or isinstance(operation_name, str)):
        raise ValueError("\"variables\" must be an object and \"operationName\" a string")
    try:
        document = parse(body["query"])
    except GraphQLError as error:
        return {"errors": [error.formatted]}
    errors = validate(schema, document)
    if errors:
        return {"errors": [error.formatted for error in errors]}
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    chosen = [o for o in operations if operation_name is None or (o.name and o.name.value == operation_name)]
    if len(chosen) != 1:
        message = (f"Unknown operation named {operation_name!r}." if operation_name else
                   "Must provide operation name if query contains multiple operations.")
        return {"errors": [{"message": message}]}
    operation = chosen[0]
    requested = query_cost(schema, operation, fragments, variables)
    if requested > MAX_QUERY_COST:
        return {"errors": [{"message": f"Query cost is {requested}, which exceeds the single query max cost limit "
                                       f"({MAX_QUERY_COST}).", "extensions": {"code": "MAX_COST_EXCEEDED",
                                                                              "cost": requested,
                                                                              "maxCost": MAX_QUERY_COST}}],
                "extensions": {"cost": _cost(requested, None, bucket)}}
    if throttled or not bucket.take(requested):
        return {"errors": [{"message": "Throttled", "extensions": {
                    "code": "THROTTLED",
                    "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                "extensions": {"cost": _cost(requested, None, bucket)}}
    result = execute(schema, document, context_value=shop, variable_values=variables, operation_name=operation_name)
    actual = query_cost(schema, operation, fragments, variables, result.data or {}) if result.data is not None \
        else requested
    bucket.give_back(requested - actual)
    answered: dict[str, Any] = {"data": result.data}
    if result.errors:
        answered["errors"] = [error.formatted for error in result.errors]
    answered["extensions"] = {"cost": _cost(requested, actual, bucket)}
    return answered


def _cost(requested: int, actual: int | None, bucket: CostBucket) -> dict[str, Any]:
    return {"requestedQueryCost": requested, "actualQueryCost": actual, "throttleStatus": bucket.throttle_status()}
