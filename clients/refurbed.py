"""The Refurbed Merchant API client, orders and offers' stock (sandbox/specs/refurbed-merchant-openapi.json), over its HTTP gateway.

Every call is ``POST <base>/refb.merchant.v1.<Service>/<Method>`` with a JSON body mirroring the
proto request and ``Authorization: Plain <token>``.  JSON follows the proto: snake_case names,
int64 ids as strings, enums as strings, RFC 3339 times.  Errors are ``google.rpc.Status``
(``{"code", "message", "details"}``) behind the gateway's HTTP status; they become the typed
errors of :mod:`clients.errors` (401/403/404/400 permanent; 429, 5xx, timeouts transient and
retried by :class:`clients.http.JsonApi` with backoff, a 429 until ``Retry-After`` or else
``X-RateLimit-Reset``).

Orders: :meth:`RefurbedClient.get_order` (a webhook says only ``{"order_id": n}``, so the order is
always re-fetched) and :meth:`RefurbedClient.list_orders` (the backstop walk).  Offers:
:meth:`~RefurbedClient.list_offers` (by cursor, or some offers by id), :meth:`~RefurbedClient.get_offer`,
:meth:`~RefurbedClient.update_offer` and :meth:`~RefurbedClient.batch_update_offers` (1 to 50 a call).

**Stock is absolute and there is no compare-and-set.**  ``UpdateOffer`` sets ``stock`` to the
number sent (a uint32), whatever it was; ``Offer.version`` changes on every update but no request
can make an update conditional on it.  A caller must read first (``get_offer``, or the page it
applies) and write the number it means, knowing that a sale Refurbed books between that read and
the write is overwritten: the same contract as Back Market's ``quantity``.

Rate limits: Refurbed publishes no numbers but sends ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``
and ``X-RateLimit-Reset`` (a unix time).  The client keeps the last ones seen in
:attr:`RefurbedClient.rate_limit`, reports each to ``on_rate_limit``, and when ``Remaining`` reaches
0 it pauses its fleet-wide limiter until the reset, so the fleet slows down before a 429.

Safety (:class:`clients.http.JsonApi`): redirects are never followed (a 3xx is a permanent error),
so the token only ever goes to the base URL's host, and answers are capped; the base URL itself
must be a plain ``http(s)://host`` URL.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable
from urllib.parse import urlsplit

import aiohttp

from clients.errors import ApiError, MalformedResponse, error_class
from clients.http import (
    AttemptHeaders,
    ErrorDetails,
    JsonApi,
    RequestRecord,
    RetryPolicy,
    Secret,
    rate_limit_reset,
    retry_after,
    with_hint,
)

if TYPE_CHECKING:
    from clients.ratelimit import FleetRateLimiter

#: The API's name in errors, records and metrics.
API = "refurbed"

GET_ORDER = "POST /refb.merchant.v1.OrderService/GetOrder"
LIST_ORDERS = "POST /refb.merchant.v1.OrderService/ListOrders"
LIST_OFFERS = "POST /refb.merchant.v1.OfferService/ListOffers"
GET_OFFER = "POST /refb.merchant.v1.OfferService/GetOffer"
UPDATE_OFFER = "POST /refb.merchant.v1.OfferService/UpdateOffer"
BATCH_UPDATE_OFFERS = "POST /refb.merchant.v1.OfferService/BatchUpdateOffers"

#: The largest ``pagination.limit`` Refurbed accepts.
MAX_PAGE_LIMIT = 100
#: ``BatchUpdateOffersRequest.offers``: "Between 1 and 50."
MAX_BATCH_UPDATE = 50
#: ``Offer.stock`` is a proto uint32.
MAX_STOCK = 2**32 - 1
#: The longest SKU Refurbed accepts (``Offer.sku``: "Max. length is 256 unicode characters").
MAX_SKU_CHARS = 256
#: The longest pause ``Remaining: 0`` puts on the fleet (a reset further away is a clock problem).
MAX_SLOWDOWN_S = 60.0

#: Order item states (``OrderItemState``) in which the item holds stock: placed and not given up.
HOLDING_ITEM_STATES = frozenset({"NEW", "ACCEPTED", "SHIPPED", "RETURNED"})
#: Item states that gave the stock back before shipping (REJECTED by the merchant, CANCELLED by the customer).
RELEASED_ITEM_STATES = frozenset({"REJECTED", "CANCELLED"})
#: Item states no later change gives stock back from (NEW and ACCEPTED may still be rejected or cancelled;
#: SHIPPED only becomes RETURNED, which keeps it).
SETTLED_ITEM_STATES = frozenset({"SHIPPED", "RETURNED", "REJECTED", "CANCELLED"})

_GRPC_CODES = {3: "INVALID_ARGUMENT", 5: "NOT_FOUND", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
               9: "FAILED_PRECONDITION", 13: "INTERNAL", 14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}
#: The HTTP status grpc-gateway gives a gRPC code: a batch item's error becomes the same typed error.
_GRPC_HTTP_STATUS = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400,
                     12: 501, 13: 500, 14: 503, 15: 500, 16: 401}

_HINTS = {
    401: "the token was refused: send 'Authorization: Plain <token>' with the token from the account manager",
    403: "the token may not do this",
    404: "no such order or offer for this merchant",
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
    """The fields of an ``Offer`` a stock read needs: ``stock`` is market-independent; ``sku`` may be empty.

    ``version`` changes on every update of the offer (it is no compare-and-set token: see the module).
    """

    id: str
    sku: str
    stock: int
    state: str
    instance_name: str | None
    version: str | None = None


@dataclass(frozen=True)
class OfferStockUpdate:
    """Set one offer's stock to ``stock`` (absolute), the offer named by ``offer_id`` or ``sku`` (exactly one).

    Validated when made: a ``ValueError`` names what is wrong, before anything is sent.
    """

    stock: int
    offer_id: str | None = None
    sku: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stock", _stock("stock", self.stock))
        if (self.offer_id is None) == (self.sku is None):
            raise ValueError("name the offer by exactly one of offer_id and sku")
        if self.offer_id is not None:
            object.__setattr__(self, "offer_id", _int64_text("offer_id", self.offer_id))
        else:
            _check_sku(self.sku)

    def identifier(self) -> dict[str, str]:
        """The ``OfferIdentifier`` (a oneof: ``id`` or ``sku``)."""
        return {"id": self.offer_id} if self.offer_id is not None else {"sku": self.sku}

    def describe(self) -> str:
        return f"offer {self.offer_id}" if self.offer_id is not None else f"SKU {self.sku!r}"


@dataclass(frozen=True)
class OfferUpdateResult:
    """One ``BatchUpdateOffersResponse.Result``, in request order: the updated offer, or the item's error."""

    update: OfferStockUpdate
    offer: RefurbedOffer | None
    error: ApiError | None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class RateLimitStatus:
    """The ``X-RateLimit-*`` headers of one answer; a header absent or unreadable is ``None``.

    ``reset_at`` is epoch seconds; ``status`` is the HTTP status of the answer that carried them.
    """

    limit: int | None
    remaining: int | None
    reset_at: float | None
    status: int

    @classmethod
    def from_headers(cls, status: int, headers: Mapping[str, str]) -> RateLimitStatus | None:
        """The headers' values, or None when the answer carried none of them."""
        if not any(f"X-RateLimit-{name}" in headers for name in ("Limit", "Remaining", "Reset")):
            return None
        return cls(_count(headers.get("X-RateLimit-Limit")), _count(headers.get("X-RateLimit-Remaining")),
                   rate_limit_reset(headers), status)


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
      on_rate_limit(Callable[[RateLimitStatus], None]): Called with the ``X-RateLimit-*`` headers of
        every answer that has them (429s included), e.g. to tune a fleet-wide limiter.

    Raises:
      ValueError: ``base_url`` is not an ``http(s)://host[:port][/path]`` URL (no credentials, query
        or fragment in it).
    """

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str, token: str,
                 limiter: FleetRateLimiter | None = None, timeout_s: float = 30, attempts: int = 4,
                 backoff_s: float = 0.5, on_request: Callable[[RequestRecord], None] | None = None,
                 on_rate_limit: Callable[[RateLimitStatus], None] | None = None) -> None:
        self.session = session
        self.base_url = _check_base_url(base_url)
        self.limiter = limiter
        self.attempts = attempts
        self.on_request = on_request
        self.on_rate_limit = on_rate_limit
        #: The ``X-RateLimit-*`` headers of the last answer that had them (None before).
        self.rate_limit: RateLimitStatus | None = None
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self._http = JsonApi(
            session, api=API, base_url=self.base_url, describe_error=_describe_error, reset_at=_reset_at,
            auth=AttemptHeaders({"Authorization": f"Plain {token}"}, Secret(token)),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            # A 429 without a reset time pauses the fleet for a second.
            retry=RetryPolicy(attempts=attempts, backoff_s=backoff_s, penalty_s=1.0),
            timeout_s=timeout_s, on_request=on_request, on_answer=self._learn_rate_limit, logger=self.logger)
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
                          states: list[str] | None = None, released_at_ge: str | None = None,
                          ids: list[str] | None = None) -> OrdersPage:
        """``OrderService/ListOrders``: one page of orders by ascending id, after ``starting_after``
        (only ``ids``, at most a page of them, when given)."""
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"limit must be in 1..{MAX_PAGE_LIMIT}, got {limit!r}")
        if ids is not None and not 1 <= len(ids) <= MAX_PAGE_LIMIT:
            raise ValueError(f"between 1 and {MAX_PAGE_LIMIT} order ids, got {len(ids)}")
        pagination: dict[str, Any] = {"limit": limit}
        if starting_after is not None:
            pagination["starting_after"] = _int64_text("starting_after", starting_after)
        request: dict[str, Any] = {"pagination": pagination, "sort": {"by": "ID", "order": "ASC"}}
        filters: dict[str, Any] = {}
        if states:
            filters["state"] = {"any_of": list(states)}
        if released_at_ge:
            filters["released_at"] = {"ge": released_at_ge}
        if ids is not None:
            filters["id"] = {"any_of": [_int64_text("ids", order_id) for order_id in ids]}
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

    async def list_offers(self, *, starting_after: str | None = None, limit: int = MAX_PAGE_LIMIT,
                          ids: Sequence[str | int] | None = None) -> OffersPage:
        """``OfferService/ListOffers``: one page of this merchant's offers by ascending id (sandbox/specs/refurbed-merchant-openapi.json).

        ``ids``: only these offers (``filter.id.any_of``; at most ``limit``, so one page holds them all).

        Raises:
          ValueError: A bad limit or id (nothing is sent).
          MalformedResponse: The answer is not ``{"offers": [Offer...], "has_more": bool}`` of valid offers.
        """
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise ValueError(f"limit must be in 1..{MAX_PAGE_LIMIT}, got {limit!r}")
        pagination: dict[str, Any] = {"limit": limit}
        if starting_after is not None:
            pagination["starting_after"] = _int64_text("starting_after", starting_after)
        request: dict[str, Any] = {"pagination": pagination, "sort": {"by": "ID", "order": "ASC"}}
        if ids is not None:
            if not 1 <= len(ids) <= limit:
                raise ValueError(f"ids must name 1 to {limit} offers (one page), got {len(ids)}")
            request["filter"] = {"id": {"any_of": [_int64_text(f"ids[{n}]", i) for n, i in enumerate(ids)]}}
        body = await self._call(LIST_OFFERS, request)
        if not isinstance(body, dict) or not isinstance(body.get("offers", []), list):
            raise MalformedResponse(f"expected {{\"offers\": [...], \"has_more\": bool}}, got {_kind(body)}",
                                    api=API, endpoint=LIST_OFFERS, status=200)
        offers = tuple(_parse_offer(offer, LIST_OFFERS, f"offers[{index}]")
                       for index, offer in enumerate(body.get("offers", [])))
        return OffersPage(offers=offers, has_more=bool(body.get("has_more", False)))

    async def get_offer(self, offer_id: str | int | None = None, *, sku: str | None = None) -> RefurbedOffer:
        """``OfferService/GetOffer``: one offer, by its id or by the merchant's SKU (exactly one).

        Raises:
          ValueError: Neither or both of ``offer_id`` and ``sku``, or one that is not valid.
          NotFound: No such offer for this merchant.
          MalformedResponse: The answer is not ``{"offer": Offer}``.
        """
        identifier = _identifier(offer_id, sku)
        body = await self._call(GET_OFFER, {"identifier": identifier})
        return _offer_answer(body, GET_OFFER, _describe_identifier(identifier))

    async def update_offer(self, offer_id: str | int | None = None, *, sku: str | None = None,
                           stock: int) -> RefurbedOffer:
        """``OfferService/UpdateOffer``: set one offer's ``stock`` (absolute, 0..2³²−1); returns the updated offer.

        No compare-and-set: read first (see the module), then write the number you mean.

        Raises:
          ValueError: A bad identifier or stock (nothing is sent).
          NotFound: No such offer.  BadRequest: Refurbed refused the data.
          MalformedResponse: The answer is not ``{"offer": Offer}``.
        """
        update = OfferStockUpdate(stock, offer_id=None if offer_id is None else str(offer_id), sku=sku)
        body = await self._call(UPDATE_OFFER, {"identifier": update.identifier(), "stock": update.stock})
        return _offer_answer(body, UPDATE_OFFER, update.describe())

    async def batch_update_offers(self, updates: Sequence[OfferStockUpdate]) -> list[OfferUpdateResult]:
        """``OfferService/BatchUpdateOffers``: set the stock of 1 to 50 offers in one call.

        Each item succeeds or fails on its own: the results come in request order, each with the
        updated offer or the item's typed error (e.g. :class:`clients.errors.NotFound`).  The whole
        call fails (raises) only when the request does.

        Raises:
          ValueError: No updates, more than 50, or not :class:`OfferStockUpdate` items (nothing is sent).
          MalformedResponse: The answer is not one ``Result`` per update.
        """
        updates = list(updates)
        if not 1 <= len(updates) <= MAX_BATCH_UPDATE:
            raise ValueError(f"a batch update takes 1 to {MAX_BATCH_UPDATE} offers, got {len(updates)}")
        for index, update in enumerate(updates):
            if not isinstance(update, OfferStockUpdate):
                raise ValueError(f"updates[{index}] must be an OfferStockUpdate, got {_kind(update)}")
        request = {"offers": [{"identifier": update.identifier(), "stock": update.stock} for update in updates]}
        body = await self._call(BATCH_UPDATE_OFFERS, request)

        def malformed(problem: str) -> MalformedResponse:
            return MalformedResponse(problem, api=API, endpoint=BATCH_UPDATE_OFFERS, status=200)

        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(updates):
            raise malformed(f"expected {{\"results\": [...]}} with {len(updates)} results, got "
                            f"{len(results) if isinstance(results, list) else _kind(results)}")
        return [_parse_result(result, update, index) for index, (result, update) in enumerate(zip(results, updates))]

    async def _call(self, route: str, request: dict) -> Any:
        # Every gateway call is a POST of the proto request; the route template carries the path.
        answer = await self._http.call("POST", route, route.split(" ", 1)[1], body=request, limiter=self.limiter)
        await self._slow_down()
        return answer.body

    def _learn_rate_limit(self, status: int, headers: Mapping[str, str]) -> None:
        learned = RateLimitStatus.from_headers(status, headers)
        if learned is None:
            return
        self.rate_limit = learned
        if self.on_rate_limit is not None:
            self.on_rate_limit(learned)

    async def _slow_down(self) -> None:
        """The quota is used up (``Remaining: 0``): hold the whole fleet until the reset, not until a 429."""
        learned = self.rate_limit
        if self.limiter is None or learned is None or learned.remaining != 0 or learned.reset_at is None:
            return
        wait_s = learned.reset_at - time.time()
        if wait_s > 0:
            await self.limiter.penalize(min(wait_s, MAX_SLOWDOWN_S))


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
    hint = _HINTS.get(status)
    if 300 <= status < 400:
        hint = "a redirect, not followed: the base URL must be the API's own"
    return ErrorDetails(with_hint(message, hint), code=code)


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


def _parse_offer(offer: Any, route: str, where: str) -> RefurbedOffer:
    """Validate one ``Offer`` (proto3 JSON leaves out empty and zero fields); ``where`` names it in errors."""
    def malformed(problem: str) -> MalformedResponse:
        return MalformedResponse(f"{where}: {problem}", api=API, endpoint=route, status=200)

    offer_id = _object_id(offer, "Offer", malformed)
    sku, state, stock = offer.get("sku", ""), offer.get("state", "UNSPECIFIED"), offer.get("stock", 0)
    if isinstance(stock, str) and stock.isdigit():
        stock = int(stock)
    if not isinstance(stock, int) or isinstance(stock, bool) or stock < 0:
        raise malformed(f"(offer {offer_id}) stock must be a non-negative integer, got {stock!r}")
    if not isinstance(sku, str) or not isinstance(state, str):
        raise malformed(f"(offer {offer_id}) sku and state must be strings")
    name, version = offer.get("instance_name"), offer.get("version")
    return RefurbedOffer(id=offer_id, sku=sku.strip(), stock=stock, state=state,
                         instance_name=name if isinstance(name, str) else None,
                         version=str(version) if isinstance(version, (str, int)) else None)


def _offer_answer(body: Any, route: str, what: str) -> RefurbedOffer:
    """The ``Offer`` of a ``{"offer": Offer}`` answer (GetOffer, UpdateOffer)."""
    if not isinstance(body, dict) or not isinstance(body.get("offer"), dict):
        raise MalformedResponse(f"{what}: expected {{\"offer\": {{...}}}}, got {_kind(body)}", api=API,
                                endpoint=route, status=200)
    return _parse_offer(body["offer"], route, what)


def _parse_result(result: Any, update: OfferStockUpdate, index: int) -> OfferUpdateResult:
    """One ``BatchUpdateOffersResponse.Result``: ``status`` (google.rpc.Status; code 0 or absent is OK) and ``offer``."""
    where = f"results[{index}] ({update.describe()})"

    def malformed(problem: str) -> MalformedResponse:
        return MalformedResponse(f"{where}: {problem}", api=API, endpoint=BATCH_UPDATE_OFFERS, status=200)

    if not isinstance(result, dict):
        raise malformed(f"expected a Result object, got {_kind(result)}")
    status = result.get("status") or {}
    code = status.get("code", 0) if isinstance(status, dict) else None
    if not isinstance(code, int) or isinstance(code, bool):
        raise malformed(f"status must be a google.rpc.Status with an integer code, got {status!r:.80}")
    if code == 0:
        return OfferUpdateResult(update, _parse_offer(result.get("offer"), BATCH_UPDATE_OFFERS, where), None)
    http_status = _GRPC_HTTP_STATUS.get(code, 500)
    message = with_hint(str(status.get("message") or ""), _HINTS.get(http_status)) or "no message"
    error = error_class(http_status)(f"{where}: {message}", api=API, endpoint=BATCH_UPDATE_OFFERS,
                                     status=http_status, code=_GRPC_CODES.get(code, str(code)))
    return OfferUpdateResult(update, None, error)


def _identifier(offer_id: str | int | None, sku: str | None) -> dict[str, str]:
    """An ``OfferIdentifier`` oneof from exactly one of ``offer_id`` and ``sku``; ``ValueError`` otherwise."""
    if (offer_id is None) == (sku is None):
        raise ValueError("name the offer by exactly one of offer_id and sku")
    if offer_id is not None:
        return {"id": _int64_text("offer_id", offer_id)}
    _check_sku(sku)
    return {"sku": sku}


def _describe_identifier(identifier: dict[str, str]) -> str:
    return f"offer {identifier['id']}" if "id" in identifier else f"SKU {identifier['sku']!r}"


def _check_sku(sku: Any) -> None:
    """A SKU Refurbed can hold: a non-empty string of at most 256 characters, no surrounding whitespace."""
    if not isinstance(sku, str) or not sku or sku != sku.strip() or len(sku) > MAX_SKU_CHARS:
        raise ValueError(f"sku must be 1..{MAX_SKU_CHARS} characters without surrounding whitespace, got {sku!r:.80}")


def _stock(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_STOCK:
        raise ValueError(f"{name} must be an integer in 0..{MAX_STOCK} (a uint32), got {value!r}")
    return value


def _count(value: str | None) -> int | None:
    """A non-negative integer header value, or None."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _check_base_url(base_url: str) -> str:
    """``base_url`` without its trailing ``/``, if it is an ``http(s)://host`` URL with nothing secret or odd in it."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password \
            or parts.query or parts.fragment:
        raise ValueError("base_url must be an http(s)://host[:port][/path] URL without credentials, query or fragment")
    return base_url.rstrip("/")


def _int64_text(name: str, value: Any) -> str:
    """An int64 id as the proto JSON carries it (a string of digits); accepts an int too."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return str(value)
    if isinstance(value, str) and value.isdigit() and 0 < int(value) < 2**63:
        return str(int(value))
    raise ValueError(f"{name} must be a positive int64 (as a string of digits), got {value!r}")


def _reset_at(headers: Mapping[str, str]) -> float | None:
    """When a 429 ends: ``Retry-After`` when Refurbed sends one, else ``X-RateLimit-Reset``."""
    return retry_after(headers) or rate_limit_reset(headers)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
