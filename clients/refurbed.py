"""The Refurbed Merchant API client, orders and offers' stock (sandbox/specs/refurbed-merchant-openapi.json), over its HTTP gateway.

Every call is ``POST <base>/refb.merchant.v1.<Service>/<Method>`` with a JSON body mirroring the
proto request and ``Authorization: Plain <token>``.  JSON follows the proto: snake_case names,
int64 ids as strings, enums as strings, RFC 3339 times.  Errors are ``google.rpc.Status``
(``{"code", "message", "details"}``) behind the gateway's HTTP status; they become the typed
errors of :mod:`clients.errors` (401/403/404/400 permanent; 429, 5xx, timeouts transient and
retried here with backoff, a 429 until ``X-RateLimit-Reset``).

What the intake needs: :meth:`RefurbedClient.get_order` (a webhook says only ``{"order_id": n}``,
so the order is always re-fetched) and :meth:`RefurbedClient.list_orders` (the backstop walk).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

import aiohttp

from clients.errors import MalformedResponse
from clients.http import AttemptHeaders, ErrorDetails, JsonApi, RequestRecord, RetryPolicy, Secret, with_hint

if TYPE_CHECKING:
    from clients.ratelimit import FleetRateLimiter

#: The API's name in errors, records and metrics.
API = "refurbed"

GET_ORDER = "POST /refb.merchant.v1.OrderService/GetOrder"
LIST_ORDERS = "POST /refb.merchant.v1.OrderService/ListOrders"
LIST_OFFERS = "POST /refb.merchant.v1.OfferService/ListOffers"

#: The largest ``pagination.limit`` Refurbed accepts.
MAX_PAGE_LIMIT = 100

#: Order item states (``OrderItemState``) in which the item holds stock: placed and not given up.
HOLDING_ITEM_STATES = frozenset({"NEW", "ACCEPTED", "SHIPPED", "RETURNED"})
#: Item states that gave the stock back before shipping (REJECTED by the merchant, CANCELLED by the customer).
RELEASED_ITEM_STATES = frozenset({"REJECTED", "CANCELLED"})

_GRPC_CODES = {3: "INVALID_ARGUMENT", 5: "NOT_FOUND", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
               9: "FAILED_PRECONDITION", 13: "INTERNAL", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}

_HINTS = {
    401: "the token was refused: send 'Authorization: Plain <token>' with the token from the account manager",
    403: "the token may not do this",
    404: "no such order for this merchant",
    429: "rate limited by Refurbed",
}


@dataclass(frozen=True)
class RefurbedOrderItem:
    """One ``OrderItem``: one unit of one offer (Refurbed items have no quantity).

    ``sku`` is the merchant's SKU; it may be empty for old offers made without one.
    """

    id: str
    order_id: str
    sku: str
    state: str
    name: str | None


@dataclass(frozen=True)
class RefurbedOrder:
    """The fields of an ``Order`` the intake needs, validated; ``raw`` is the order as returned."""

    id: str
    state: str
    released_at: str | None
    items: tuple[RefurbedOrderItem, ...]
    raw: dict


@dataclass(frozen=True)
class OrdersPage:
    """One ``ListOrders`` answer."""

    orders: tuple[RefurbedOrder, ...]
    has_more: bool


@dataclass(frozen=True)
class RefurbedOffer:
    """The fields of an ``Offer`` a stock read needs: ``stock`` is market-independent; ``sku`` may be empty."""

    id: str
    sku: str
    stock: int
    state: str
    instance_name: str | None


@dataclass(frozen=True)
class OffersPage:
    """One ``OfferService/ListOffers`` answer."""

    offers: tuple[RefurbedOffer, ...]
    has_more: bool


class RefurbedClient:
    """A Refurbed Merchant API client on the process's aiohttp session.

    Parameters:
      session(aiohttp.ClientSession): The process's HTTP session.
      base_url(str): ``https://api.refurbed.com`` (or a sandbox).
      token(str): Sent as ``Authorization: Plain <token>``; never in an error, a log or a repr.
      limiter(FleetRateLimiter): Optional fleet-wide quota; every HTTP attempt takes a slot first.
      timeout_s(float): Total time for one HTTP attempt.
      attempts(int): HTTP attempts per call for transient errors (429, 5xx, transport).
      backoff_s(float): First backoff after a 5xx or transport error; doubles each attempt (≤ 30 s).
      on_request(Callable[[RequestRecord], None]): Called once per HTTP attempt.
    """

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, token: str,
                 limiter: FleetRateLimiter | None = None, timeout_s: float = 30, attempts: int = 4,
                 backoff_s: float = 0.5, on_request: Callable[[RequestRecord], None] | None = None) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self.attempts = attempts
        self.on_request = on_request
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self._http = JsonApi(
            session, api=API, base_url=base_url, describe_error=_describe_error, reset_at=_reset_at,
            auth=AttemptHeaders({"Authorization": f"Plain {token}"}, Secret(token)),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            # A 429 without a reset time pauses the fleet for a second.
            retry=RetryPolicy(attempts=attempts, backoff_s=backoff_s, penalty_s=1.0),
            timeout_s=timeout_s, on_request=on_request, logger=self.logger)
        self.timeout = self._http.timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, token=<hidden>)"

    async def get_order(self, order_id: str | int) -> RefurbedOrder:
        """``OrderService/GetOrder``: one order with its items.

        Raises:
          NotFound: No such order for this merchant.
          MalformedResponse: The answer is not ``{"order": Order}`` with valid items.
        """
        order_id = _int64_text("order_id", order_id)
        body = await self._call(GET_ORDER, {"id": order_id})
        if not isinstance(body, dict) or not isinstance(body.get("order"), dict):
            raise MalformedResponse(f"order {order_id}: expected {{\"order\": {{...}}}}, got {_kind(body)}",
                                    api=API, endpoint=GET_ORDER, status=200)
        return _parse_order(body["order"], GET_ORDER, f"order {order_id}")

    async def list_orders(self, *, starting_after: str | None = None, limit: int = MAX_PAGE_LIMIT,
                          states: list[str] | None = None, released_at_ge: str | None = None) -> OrdersPage:
        """``OrderService/ListOrders``: one page of orders by ascending id, after ``starting_after``."""
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"limit must be in 1..{MAX_PAGE_LIMIT}, got {limit!r}")
        pagination: dict[str, Any] = {"limit": limit}
        if starting_after is not None:
            pagination["starting_after"] = _int64_text("starting_after", starting_after)
        request: dict[str, Any] = {"pagination": pagination, "sort": {"by": "ID", "order": "ASC"}}
        filters: dict[str, Any] = {}
        if states:
            filters["state"] = {"any_of": list(states)}
        if released_at_ge:
            filters["released_at"] = {"ge": released_at_ge}
        if filters:
            request["filter"] = filters
        body = await self._call(LIST_ORDERS, request)
        if not isinstance(body, dict):
            raise MalformedResponse(f"expected {{\"orders\": [...], \"has_more\": bool}}, got {_kind(body)}", api=API,
                                    endpoint=LIST_ORDERS, status=200)
        # proto3 JSON leaves out empty lists and false booleans.
        raw_orders = body.get("orders", [])
        if not isinstance(raw_orders, list):
            raise MalformedResponse(f"orders must be a list, got {_kind(raw_orders)}", api=API, endpoint=LIST_ORDERS,
                                    status=200)
        orders = tuple(_parse_order(order, LIST_ORDERS, f"orders[{index}]") for index, order in enumerate(raw_orders))
        return OrdersPage(orders=orders, has_more=bool(body.get("has_more", False)))

    async def iter_orders(self, *, starting_after: str | None = None, states: list[str] | None = None,
                          released_at_ge: str | None = None, limit: int = MAX_PAGE_LIMIT
                          ) -> AsyncIterator[RefurbedOrder]:
        """Every order after ``starting_after``, by ascending id, following ``has_more``."""
        cursor = starting_after
        while True:
            page = await self.list_orders(starting_after=cursor, limit=limit, states=states,
                                          released_at_ge=released_at_ge)
            for order in page.orders:
                yield order
            if not page.has_more or not page.orders:
                return
            cursor = page.orders[-1].id

    async def list_offers(self, *, starting_after: str | None = None, limit: int = MAX_PAGE_LIMIT) -> OffersPage:
        """``OfferService/ListOffers``: one page of this merchant's offers by ascending id (sandbox/specs/refurbed-merchant-openapi.json).

        Raises:
          MalformedResponse: The answer is not ``{"offers": [Offer...], "has_more": bool}`` of valid offers.
        """
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"limit must be in 1..{MAX_PAGE_LIMIT}, got {limit!r}")
        pagination: dict[str, Any] = {"limit": limit}
        if starting_after is not None:
            pagination["starting_after"] = _int64_text("starting_after", starting_after)
        body = await self._call(LIST_OFFERS, {"pagination": pagination, "sort": {"by": "ID", "order": "ASC"}})
        if not isinstance(body, dict) or not isinstance(body.get("offers", []), list):
            raise MalformedResponse(f"expected {{\"offers\": [...], \"has_more\": bool}}, got {_kind(body)}",
                                    api=API, endpoint=LIST_OFFERS, status=200)
        offers = tuple(_parse_offer(offer, index) for index, offer in enumerate(body.get("offers", [])))
        return OffersPage(offers=offers, has_more=bool(body.get("has_more", False)))

    async def _call(self, route: str, request: dict) -> Any:
        # Every gateway call is a POST of the proto request; the route template carries the path.
        answer = await self._http.call("POST", route, route.split(" ", 1)[1], body=request, limiter=self.limiter)
        return answer.body


def _describe_error(status: int, raw: bytes, headers) -> ErrorDetails:
    """Read an error answer (``google.rpc.Status`` behind the gateway's status) for :class:`JsonApi`."""
    message, code = "", None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):  # google.rpc.Status
        message = str(body.get("message") or "")
        if isinstance(body.get("code"), int):
            code = _GRPC_CODES.get(body["code"], str(body["code"]))
    elif raw:
        message = _text(raw)[:200]
    return ErrorDetails(with_hint(message, _HINTS.get(status)), code=code)


def _object_id(value: Any, kind: str, malformed: Callable[[str], MalformedResponse]) -> str:
    """The int64 ``id`` of a proto object ``kind``, as text; ``malformed(problem)`` is raised otherwise."""
    if not isinstance(value, dict):
        raise malformed(f"expected an {kind} object, got {_kind(value)}")
    try:
        return _int64_text("id", value.get("id"))
    except ValueError as error:
        raise malformed(str(error)) from None


def _parse_order(order: Any, route: str, where: str) -> RefurbedOrder:
    def malformed(problem: str) -> MalformedResponse:
        return MalformedResponse(f"{where}: {problem}", api=API, endpoint=route, status=200)

    order_id = _object_id(order, "Order", malformed)
    state = order.get("state", "UNSPECIFIED")
    released_at = order.get("released_at")
    if not isinstance(state, str):
        raise malformed(f"state must be an enum string, got {_kind(state)}")
    if released_at is not None and not isinstance(released_at, str):
        raise malformed(f"released_at must be an RFC 3339 string, got {_kind(released_at)}")
    raw_items = order.get("items", [])
    if not isinstance(raw_items, list):
        raise malformed(f"items must be a list, got {_kind(raw_items)}")
    items = []
    for index, item in enumerate(raw_items):
        if not isinstance(item, dict):
            raise malformed(f"items[{index}] must be an OrderItem object, got {_kind(item)}")
        try:
            item_id = _int64_text(f"items[{index}].id", item.get("id"))
        except ValueError as error:
            raise malformed(str(error)) from None
        sku, item_state = item.get("sku", ""), item.get("state", "UNSPECIFIED")
        if not isinstance(sku, str) or not isinstance(item_state, str):
            raise malformed(f"items[{index}] (item {item_id}): sku and state must be strings")
        name = item.get("name")
        items.append(RefurbedOrderItem(id=item_id, order_id=str(item.get("order_id") or order_id), sku=sku,
                                       state=item_state, name=name if isinstance(name, str) else None))
    return RefurbedOrder(id=order_id, state=state, released_at=released_at, items=tuple(items), raw=order)


def _parse_offer(offer: Any, index: int) -> RefurbedOffer:
    """Validate one ``Offer`` of a ListOffers page (proto3 JSON leaves out empty and zero fields)."""
    def malformed(problem: str) -> MalformedResponse:
        return MalformedResponse(f"offers[{index}]: {problem}", api=API, endpoint=LIST_OFFERS, status=200)

    offer_id = _object_id(offer, "Offer", malformed)
    sku, state, stock = offer.get("sku", ""), offer.get("state", "UNSPECIFIED"), offer.get("stock", 0)
    if isinstance(stock, str) and stock.isdigit():
        stock = int(stock)
    if not isinstance(stock, int) or isinstance(stock, bool) or stock < 0:
        raise malformed(f"(offer {offer_id}) stock must be a non-negative integer, got {stock!r}")
    if not isinstance(sku, str) or not isinstance(state, str):
        raise malformed(f"(offer {offer_id}) sku and state must be strings")
    name = offer.get("instance_name")
    return RefurbedOffer(id=offer_id, sku=sku.strip(), stock=stock, state=state,
                         instance_name=name if isinstance(name, str) else None)


def _int64_text(name: str, value: Any) -> str:
    """An int64 id as the proto JSON carries it (a string of digits); accepts an int too."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return str(value)
    if isinstance(value, str) and value.isdigit() and 0 < int(value) < 2**63:
        return str(int(value))
    raise ValueError(f"{name} must be a positive int64 (as a string of digits), got {value!r}")


def _reset_at(headers) -> float | None:
    value = headers.get("X-RateLimit-Reset")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
