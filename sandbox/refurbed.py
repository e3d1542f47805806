"""A simulated Refurbed Merchant API (orders, offers' stock, quotas) and its "Instant Order Notifications" webhook.

What it serves and how it behaves where the vendor's docs are silent: :class:`RefurbedSandbox`.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
from collections import Counter, deque
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from aiohttp import web

from sandbox.common import (
    Delivery,
    Dials,
    Draws,
    OutOfStock,
    SlidingWindowQuota,
    WebhookSender,
    admin_body,
    admin_error,
    credential_matches,
    injected_failure,
    optional_bool,
    pause,
    serve_counted,
)

__all__ = ["Delivery", "OutOfStock", "RefurbedSandbox"]

SERVICE = "/refb.merchant.v1."
ORDER_ID_BASE = 9_100_000
ITEM_ID_BASE = 77_000_000
MAX_LIMIT = 100
OFFER_ID_BASE = 5_200_000
#: ``BatchUpdateOffersRequest.offers``: "Between 1 and 50."
MAX_BATCH_UPDATE = 50
#: ``Offer.stock`` is a proto uint32.
MAX_STOCK = 2**32 - 1
ADMIN_PREFIX = "/_sandbox/"

ORDER_ITEM_STATES = ("NEW", "REJECTED", "CANCELLED", "ACCEPTED", "SHIPPED", "RETURNED")
#: Item state changes a merchant (or the customer) may make (OrderItemState in the Swagger).
_TRANSITIONS = {"NEW": {"REJECTED", "CANCELLED", "ACCEPTED"}, "ACCEPTED": {"CANCELLED", "SHIPPED"},
                "SHIPPED": {"RETURNED"}}
#: Item states that give the unit up before it ships: the ones that may restock the offer.
RELEASED_ITEM_STATES = frozenset({"REJECTED", "CANCELLED"})

# gRPC status codes the gateway maps to HTTP statuses.
OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, RESOURCE_EXHAUSTED, FAILED_PRECONDITION = 0, 3, 5, 6, 8, 9
INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 13, 14, 16
_HTTP_STATUS = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, ALREADY_EXISTS: 409, RESOURCE_EXHAUSTED: 429,
                FAILED_PRECONDITION: 400, INTERNAL: 500, UNAVAILABLE: 503, UNAUTHENTICATED: 401}

#: ``UpdateOfferRequest`` / ``BatchUpdateOffersRequest.Update`` fields, and the enums the sandbox checks.
_UPDATE_FIELDS = frozenset({"identifier", "grading", "warranty", "stock", "shipping_profile_id",
                            "secondary_shipping_profile_id", "delete_secondary_shipping_profile_id", "taxation",
                            "reference_currency_code", "reference_price", "reference_min_price",
                            "delete_reference_min_price"})
_ENUMS = {"grading": ("A", "B", "C", "AA"), "warranty": ("M12", "M18", "M24", "M30", "M36"),
          "taxation": ("GROSS", "MARGINAL")}

_ADDRESS = {"first_name": "Erika", "family_name": "Mustermann", "entity": "FEMALE", "country_code": "AT",
            "post_code": "1010", "town": "Wien", "street_name": "Stephansplatz", "house_no": "1",
            "phone_number": "+4312345678"}


class _RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _page_limit(pagination: Any) -> int:
    """An Int64Pagination's ``limit`` (default and maximum 100); :class:`_RpcError` if it is not one."""
    if not isinstance(pagination, dict):
        raise _RpcError(INVALID_ARGUMENT, "pagination must be an Int64Pagination object")
    limit = pagination.get("limit") or MAX_LIMIT
    if isinstance(limit, str) and limit.isdigit():
        limit = int(limit)
    if not isinstance(limit, int) or limit < 1:
        raise _RpcError(INVALID_ARGUMENT, "pagination limit must be a positive integer")
    if limit > MAX_LIMIT:
        raise _RpcError(INVALID_ARGUMENT, "pagination limit is too large (>100)")
    return limit


def _paginate(items: list[dict[str, Any]], pagination: dict, limit: int, descending: bool
              ) -> tuple[list[dict[str, Any]], bool]:
    """One page of ``items`` (sorted, each with an int64 ``id``) by an ``Int64Pagination`` cursor.

    The cursor is a primary key: ``starting_after`` follows the sort direction (items after that
    one), ``ending_before`` takes the ``limit`` items just before it; ``has_more`` says whether more
    lie beyond the page in the direction walked.
    """
    after, before = pagination.get("starting_after"), pagination.get("ending_before")
    if after is not None and before is not None:
        raise _RpcError(INVALID_ARGUMENT, "both \"ending_before\" and \"starting_after\" are specified in pagination")
    if before is not None:
        cursor = _int64(before, "pagination.ending_before")
        position = next((i for i, item in enumerate(items) if int(item["id"]) == cursor), None)
        if position is None:
            position = sum(1 for item in items if (int(item["id"]) > cursor if descending else int(item["id"]) < cursor))
        start = max(0, position - limit)
        return items[start:position], start > 0
    if after is not None:
        cursor = _int64(after, "pagination.starting_after")
        position = next((i for i, item in enumerate(items) if int(item["id"]) == cursor), None)
        items = items[position + 1:] if position is not None else [
            item for item in items if (int(item["id"]) < cursor if descending else int(item["id"]) > cursor)]
    return items[:limit], len(items) > limit


def _sort(body: dict, allowed: tuple[str, ...]) -> tuple[str, bool]:
    """A request's ``sort`` (``by`` among ``allowed``, default ``ID``; ``order`` ASC or DESC) as (by, descending)."""
    sort = body.get("sort") or {}
    if not isinstance(sort, dict):
        raise _RpcError(INVALID_ARGUMENT, "sort must be an object")
    by, order = sort.get("by", "ID"), sort.get("order", "ASC")
    if by not in allowed:
        raise _RpcError(INVALID_ARGUMENT, f"sort.by {by!r} is not supported by the sandbox (only {', '.join(allowed)})")
    if order not in ("ASC", "DESC"):
        raise _RpcError(INVALID_ARGUMENT, f"sort.order must be ASC or DESC, got {order!r}")
    return by, order == "DESC"


def rfc3339(moment: datetime) -> str:
    """``2026-11-23T09:35:24.123456Z`` (UTC)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RefurbedSandbox(Dials):
    """One simulated Refurbed merchant: its offers and orders, the app that serves them, the webhook sender.

    Shapes follow Refurbed's Swagger (``sandbox/specs/refurbed-merchant-openapi.json``): the HTTP
    gateway of a gRPC API, so every call is ``POST
    /refb.merchant.v1.<Service>/<Method>`` with a JSON body, ``Authorization: Plain <token>``,
    snake_case fields, int64 ids as strings, enums as strings, errors as ``google.rpc.Status``
    (``{"code", "message", "details"}``) behind the gateway's HTTP status.

    Served:

    - ``OrderService/GetOrder`` (``{"id"}`` → ``{"order"}``), ``OrderService/ListOrders``
      (``Int64Pagination``: ``limit`` ≤ 100, ``starting_after`` or ``ending_before``; sort by ``ID``
      or ``RELEASED_AT``; filters ``id``, ``state`` and ``released_at``; → ``{"orders", "has_more"}``),
      ``OrderItemService/UpdateOrderItemState`` (accept, reject, cancel or ship an item).
    - ``OfferService/ListOffers`` (the same pagination, sort by ``ID``, filters ``id`` and ``sku``
      ``any_of``; → ``{"offers", "has_more"}``), ``OfferService/GetOffer`` (``{"identifier": {"id"} |
      {"sku"}}`` → ``{"offer"}``), ``OfferService/UpdateOffer`` (an identifier and the fields to set,
      ``stock`` absolute → ``{"offer"}``), ``OfferService/BatchUpdateOffers`` (1 to 50 updates, else
      400; → ``{"results": [{"status", "offer"}]}`` in request order, each update on its own).
    - ``/_sandbox/...``: admin routes for tests and the demo (stats, config, offers, stock, orders,
      item states, faults); no authentication, so the sandbox binds to loopback unless told otherwise.

    Behaviour the spec leaves open, and what the sandbox does:

    - **An order lowers the offer's stock**: one unit per item (Refurbed items have no quantity),
      on the offer with the item's SKU; an order for more units than the offer holds raises
      :class:`OutOfStock` (Refurbed does not sell what is not in stock).  An item whose SKU has no
      offer here changes no stock (orders-only tests need no catalogue).
    - **Cancellations**: Refurbed documents no restock.  An item moving to ``REJECTED`` (by the
      merchant) or ``CANCELLED`` (by the customer) before it ships gives its unit back to the offer
      when the ``restock_on_cancel`` dial says so (default True, as the Back Market sandbox's; the
      tests run both ways), once; ``set_item_state(..., restock=)`` overrides it per call.  A
      ``RETURNED`` item never restocks: the unit comes back to the merchant, not to the offer.
    - **Stock** is an absolute uint32 (0..2³²−1, an integer or a string of digits, as proto3 JSON
      reads it), with no compare-and-set; every update bumps the offer's ``version``.  proto3 JSON
      leaves out zero values, so an offer with no stock has no ``stock`` field.
    - **Unknown request fields** are refused (``INVALID_ARGUMENT``), to catch a client's typo; the
      real gateway may ignore them.
    - **SKUs are unique** among offers (``CreateOffer`` answers ``ALREADY_EXISTS`` for a second one).
    - **Quota**: ``quota_requests`` per ``quota_window_s`` over every API call of the merchant (a
      sliding window; a refused call does not count), checked after authentication.  Every
      answer past authentication carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
      ``X-RateLimit-Reset`` (unix seconds, rounded up); a refused call is 429 ``RESOURCE_EXHAUSTED``
      with ``Retry-After`` (whole seconds, rounded up) as well.  Refurbed publishes no numbers:
      the quota is off unless a test or the command line sets one.

    The webhook: when :meth:`RefurbedSandbox.place_order` releases an order, a sender thread POSTs
    ``{"order_id": <int>}`` (nothing else, unsigned, as Refurbed does: the receiver's URL carries its
    secret) to ``webhook_url``.  Refurbed delivers at least once, so the sandbox makes duplicates
    happen: every notification is delivered ``1 + webhook_resends`` times (at least one re-send by
    default), and a delivery that fails (no 2xx, or no answer) is retried with a doubling interval
    up to ``webhook_max_attempts`` times.  ``deliveries()`` lists every attempt;
    ``wait_for_deliveries()`` waits until the queue is empty.

    Dials (constructor keywords, :meth:`configure` and ``POST /_sandbox/config``):

    - ``token``: what ``Authorization: Plain <token>`` must carry.
    - ``webhook_url``: where notifications go (None: not sent).
    - ``webhook_resends``: extra deliveries of every notification (at least once more by default).
    - ``webhook_max_attempts``, ``webhook_retry_s``: retries of a failed delivery, doubling from
      ``webhook_retry_s`` seconds.
    - ``latency_s``: added to every API request; ``error_rate``: the share answered 500 (seeded).
    - ``quota_requests`` per ``quota_window_s`` (0: no quota).
    - ``restock_on_cancel``: see above.

    Faults for one-off tests: :meth:`rate_limit_next` and :meth:`fail_next` answer the next calls
    429 or 5xx, whatever the quota says; :meth:`fail_offer_updates` fails the next updates of some
    offers alone (one line of a batch).  ``clock`` (default ``time.monotonic``) times the quota;
    ``wall_clock`` (default ``time.time``) makes ``X-RateLimit-Reset``.

    Every method takes the sandbox's lock: the app runs on its own thread.
    """

    _DIALS = ("token", "webhook_url", "webhook_resends", "webhook_max_attempts", "webhook_retry_s", "latency_s",
              "error_rate", "quota_requests", "quota_window_s", "restock_on_cancel")

    def __init__(self, *, token: str = "refurbed-sandbox-token", webhook_url: str | None = None,
                 webhook_resends: int = 1, webhook_max_attempts: int = 6, webhook_retry_s: float = 0.05,
                 latency_s: float = 0.0, error_rate: float = 0.0, quota_requests: int = 0,
                 quota_window_s: float = 1.0, restock_on_cancel: bool = True, seed: int = 1,
                 now: Callable[[], datetime] | None = None, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.now = now or (lambda: datetime.now(timezone.utc))
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._orders: dict[int, dict[str, Any]] = {}
        self._order_ids = itertools.count(ORDER_ID_BASE)
        self._item_ids = itertools.count(ITEM_ID_BASE)
        self._error_rng = random.Random(f"refurbed-errors:{seed}")
        self._quota = SlidingWindowQuota(None, None)
        self._faults: deque[tuple[int, float]] = deque()  # (HTTP status, Retry-After seconds for a 429)
        self._update_faults: dict[str, list[int]] = {}  # SKU -> the gRPC codes its next updates fail with
        self._walk_cursors: list[str | None] = []  # each unfiltered ListOffers call's starting_after
        self._requests: Counter[str] = Counter()
        self._statuses: Counter[int] = Counter()
        self._offer_updates = 0
        self._offers: dict[int, dict[str, Any]] = {}  # OfferService (sandbox/specs/refurbed-merchant-openapi.json)
        self._by_sku: dict[str, int] = {}
        self._item_offers: dict[str, int] = {}  # order item id -> the offer its unit came from
        self._webhooks = WebhookSender("refurbed-webhook", "refurbed-ion-sandbox")
        self.configure(token=token, webhook_url=webhook_url, webhook_resends=webhook_resends,
                       webhook_max_attempts=webhook_max_attempts, webhook_retry_s=webhook_retry_s,
                       latency_s=latency_s, error_rate=error_rate, quota_requests=quota_requests,
                       quota_window_s=quota_window_s, restock_on_cancel=restock_on_cancel)

    def _check_dial(self, name: str, value: Any) -> Any:
        if (name == "webhook_resends" and value < 0) or (name == "webhook_max_attempts" and value < 1):
            raise ValueError("webhook_resends must be >= 0 and webhook_max_attempts >= 1")
        if name == "quota_requests" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"quota_requests must be an integer >= 0, got {value!r}")
        if name == "quota_window_s" and (not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"quota_window_s must be a positive number, got {value!r}")
        if name == "restock_on_cancel" and not isinstance(value, bool):
            raise ValueError(f"restock_on_cancel must be true or false, got {value!r}")
        return value

    def _dials_changed(self) -> None:
        self._quota.reconfigure(self._quota_requests, self._quota_window_s)

    @property
    def restock_on_cancel(self) -> bool:
        """Whether a rejected or cancelled item gives its unit back to the offer by itself."""
        with self._lock:
            return self._restock_on_cancel

    # -- faults --------------------------------------------------------------------------------------

    def rate_limit_next(self, calls: int = 1, retry_after_s: float = 1.0) -> None:
        """Answer the next ``calls`` API calls 429 with ``Retry-After`` ``retry_after_s``, whatever the quota holds."""
        with self._lock:
            self._faults.extend([(429, retry_after_s)] * calls)

    def fail_next(self, calls: int = 1, status: int = 503) -> None:
        """Answer the next ``calls`` API calls with ``status`` (a 5xx: ``INTERNAL`` or ``UNAVAILABLE``)."""
        if not 500 <= status <= 599:
            raise ValueError(f"status must be a 5xx, got {status!r}")
        with self._lock:
            self._faults.extend([(status, 0.0)] * calls)

    def fail_offer_updates(self, skus: Iterable[str], status: int = 503, calls: int = 1) -> None:
        """Fail the next ``calls`` updates of each offer of ``skus`` with ``status`` (a 5xx), the call around them
        going through: in ``BatchUpdateOffers`` that update's ``Result`` carries the error, the others apply."""
        if not 500 <= status <= 599:
            raise ValueError(f"status must be a 5xx, got {status!r}")
        with self._lock:
            for sku in skus:
                self._update_faults.setdefault(sku, []).extend([UNAVAILABLE if status == 503 else INTERNAL] * calls)

    # -- orders --------------------------------------------------------------------------------------

    def place_order(self, skus: Iterable[str], *, notify: bool = True, state: str = "NEW") -> dict[str, Any]:
        """Release an order of one item per SKU (Refurbed items have no quantity) and notify the webhook.

        Each item takes one unit from the offer with its SKU (none when no offer has it).
        Returns the ``Order`` as ``GetOrder`` shows it.

        Raises:
          OutOfStock: An offer holds fewer units than the order's items of its SKU (nothing changes).
        """
        skus = list(skus)
        if not skus:
            raise ValueError("an order needs at least one item")
        if state not in ORDER_ITEM_STATES:
            raise ValueError(f"state must be one of {ORDER_ITEM_STATES}, got {state!r}")
        with self._lock:
            wanted = Counter(sku for sku in skus if sku in self._by_sku)
            short = [f"{sku!r} ({count} wanted, {self._offer_of(sku)['stock']} in stock)"
                     for sku, count in wanted.items() if self._offer_of(sku)["stock"] < count]
            if short:
                raise OutOfStock(f"not enough stock for {', '.join(short)}")
            order_id = next(self._order_ids)
            items = [self._item(order_id, sku, state) for sku in skus]
            if state not in RELEASED_ITEM_STATES:
                for sku, count in wanted.items():
                    self._change_stock(self._offer_of(sku), -count)
            order = {
                "id": str(order_id), "released_at": rfc3339(self.now()), "state": state, "labels": [],
                "customer_email": f"customer{order_id}@example.com", "shipping_address": dict(_ADDRESS),
                "invoice_address": dict(_ADDRESS), "currency_code": "EUR", "settlement_currency_code": "EUR",
                "settlement_exchange_rate": "1", "total_charged": _money(len(items) * 24900),
                "settlement_total_charged": _money(len(items) * 24900), "total_discount": "0.00",
                "total_paid": _money(len(items) * 24900), "total_refunded": "0.00",
                "total_vat_charged": "0.00", "is_refundable": True, "refund_eligibility": "ELIGIBLE",
                "is_invoiceable": True, "has_invoice": False, "items": items, "payment_method": "STRIPE_CARDS",
            }
            self._orders[order_id] = order
            shown = json.loads(json.dumps(order))
        if notify:
            self.notify(order_id)
        return shown

    def set_item_state(self, item_id: str | int, state: str, *, restock: bool | None = None) -> dict[str, Any]:
        """Move an item (e.g. to ``CANCELLED``); the order's state follows.  Returns the OrderItem.

        Into ``REJECTED`` or ``CANCELLED``, the unit goes back to its offer when ``restock`` (default:
        the ``restock_on_cancel`` dial).

        Raises:
          KeyError: No such item.
          ValueError: A change Refurbed does not allow (e.g. SHIPPED → CANCELLED).
        """
        with self._lock:
            order, item = self._find_item(str(item_id))
            if state not in _TRANSITIONS.get(item["state"], ()):
                raise ValueError(f"item {item_id} cannot go from {item['state']} to {state}")
            self._move_item(order, item, state, self._restock_on_cancel if restock is None else restock)
            return json.loads(json.dumps(item))

    def order(self, order_id: int | str) -> dict[str, Any]:
        """One ``Order``.  Raises ``KeyError``."""
        with self._lock:
            return json.loads(json.dumps(self._orders[int(order_id)]))

    # -- offers (OfferService) ------------------------------------------------------------------------

    def add_offer(self, sku: str, stock: int, *, state: str = "OK", grading: str = "A",
                  name: str | None = None) -> dict[str, Any]:
        """Create an offer (``sku`` may be empty, as for old offers) and return it as GetOffer shows it.

        Raises:
          ValueError: ``stock`` is not a uint32, or another offer has this SKU.
        """
        stock = _check_stock(stock)
        with self._lock:
            if sku and sku in self._by_sku:
                raise ValueError(f"an offer with SKU {sku!r} already exists")
            offer_id = OFFER_ID_BASE + len(self._offers)
            offer = {
                "id": str(offer_id), "version": "1", "is_current": True, "created_at": rfc3339(self.now()),
                "instance_id": str(offer_id + 500_000),
                "instance_name": name or f"Refurbished device {sku or offer_id}", "state": state, "sku": sku,
                "grading": grading, "warranty": "M12", "stock": stock, "shipping_profile_id": "1",
                "shipping_profile_name": "Standard", "taxation": "MARGINAL", "reference_currency_code": "EUR",
                "reference_price": "249.00", "reference_min_price": "199.00", "set_market_prices": [],
                "calculated_market_prices": [],
            }
            self._offers[offer_id] = offer
            if sku:
                self._by_sku[sku] = offer_id
            return _shown(offer)

    def add_offers(self, count: int, *, seed: int = 1) -> list[str]:
        """Add ``count`` offers of the Back Market sandbox's catalogue made from ``seed``; return their SKUs.

        Same SKUs and titles as ``BackMarketSandbox(seed=seed)``'s listings (one catalogue listed on
        both marketplaces), each with its own stock (0..40, seeded); SKUs already offered are skipped.
        """
        from sandbox.backmarket import catalogue_entry  # the one generated catalogue of the sandboxes

        added = []
        for index in range(count):
            entry = catalogue_entry(seed, index)
            with self._lock:
                if entry.sku in self._by_sku:
                    continue
            self.add_offer(entry.sku, Draws("refurbed-stock", seed, index).below(41), name=entry.title)
            added.append(entry.sku)
        return added

    def quantities(self) -> dict[str, int]:
        """Every offer's stock, by SKU."""
        return {offer["sku"]: int(offer["stock"]) for offer in self.offers()}

    def set_offer_stock(self, sku: str, stock: int) -> None:
        """Set the stock of the offer with ``sku`` (as ``UpdateOffer`` would).  Raises ``KeyError``."""
        stock = _check_stock(stock)
        with self._lock:
            if sku not in self._by_sku:
                raise KeyError(f"no offer with SKU {sku!r}")
            self._set_stock(self._offer_of(sku), stock)

    def stock(self, sku: str) -> int:
        """The true stock of the offer with ``sku``.  Raises ``KeyError``."""
        with self._lock:
            if sku not in self._by_sku:
                raise KeyError(f"no offer with SKU {sku!r}")
            return self._offer_of(sku)["stock"]

    def offers(self) -> list[dict[str, Any]]:
        """Every offer, by id (copies, with ``stock`` even when 0)."""
        with self._lock:
            return json.loads(json.dumps([offer for _, offer in sorted(self._offers.items())]))

    def stats(self) -> dict[str, Any]:
        """Requests by method name, answers by status, 429s, offer updates applied, webhook deliveries."""
        with self._lock:
            return {"requests": dict(self._requests), "by_status": {str(k): v for k, v in sorted(self._statuses.items())},
                    "rate_limited": self._statuses.get(429, 0), "offer_updates": self._offer_updates,
                    "deliveries": len(self._webhooks.deliveries())}

    def walk_cursors(self) -> list[str | None]:
        """The ``starting_after`` of every unfiltered ``ListOffers`` call (a catalogue walk's pages), in order."""
        with self._lock:
            return list(self._walk_cursors)

    # -- the webhook ---------------------------------------------------------------------------------

    def notify(self, order_id: int) -> None:
        """Queue the ``{"order_id": n}`` notification of an order (delivered 1 + ``webhook_resends`` times)."""
        with self._lock:
            url, copies = self._webhook_url, 1 + self._webhook_resends
            attempts, retry_s = self._webhook_max_attempts, self._webhook_retry_s
        if url is None:
            return
        # Unsigned, as Refurbed's: the receiver's URL carries its secret.
        body = json.dumps({"order_id": order_id}).encode()
        for copy in range(copies):
            self._webhooks.send(order_id, copy, url, lambda: (body, {}), attempts, retry_s)

    def deliveries(self) -> list[Delivery]:
        """Every webhook attempt so far, oldest first."""
        return self._webhooks.deliveries()

    def wait_for_deliveries(self, timeout: float = 30.0) -> None:
        """Wait until every queued notification was delivered or gave up; raise ``TimeoutError``."""
        self._webhooks.wait(timeout)

    def close(self) -> None:
        """Stop the sender thread once its queue is empty."""
        self._webhooks.close()

    # -- the app -------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """A new aiohttp application serving this sandbox (API and ``/_sandbox/`` admin routes)."""
        app = web.Application(middlewares=[self._middleware])
        rpc = app.router.add_post
        rpc(SERVICE + "OrderService/GetOrder", self._rpc(self._get_order))
        rpc(SERVICE + "OrderService/ListOrders", self._rpc(self._list_orders))
        rpc(SERVICE + "OrderItemService/UpdateOrderItemState", self._rpc(self._update_item_state))
        rpc(SERVICE + "OfferService/ListOffers", self._rpc(self._list_offers))
        rpc(SERVICE + "OfferService/GetOffer", self._rpc(self._get_offer))
        rpc(SERVICE + "OfferService/UpdateOffer", self._rpc(self._update_offer))
        rpc(SERVICE + "OfferService/BatchUpdateOffers", self._rpc(self._batch_update_offers))
        app.router.add_get(ADMIN_PREFIX + "stats", self._admin_stats)
        app.router.add_get(ADMIN_PREFIX + "config", self._admin_get_config)
        app.router.add_post(ADMIN_PREFIX + "config", self._admin_set_config)
        app.router.add_get(ADMIN_PREFIX + "offers", self._admin_offers)
        app.router.add_post(ADMIN_PREFIX + "offers", self._admin_add_offer)
        app.router.add_post(ADMIN_PREFIX + "stock", self._admin_set_stock)
        app.router.add_post(ADMIN_PREFIX + "orders", self._admin_place)
        app.router.add_post(ADMIN_PREFIX + "items/{item_id}/state", self._admin_item_state)
        app.router.add_post(ADMIN_PREFIX + "faults", self._admin_faults)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path.startswith(ADMIN_PREFIX):
            return await handler(request)
        with self._lock:
            self._requests[request.path.rsplit("/", 1)[-1]] += 1
        quota: list[tuple[int, int, float]] = []  # the gate's X-RateLimit-* values, for the answer
        response = await serve_counted(request, handler, lambda r: self._gate(r, quota), self._count_status)
        if quota:
            limit, remaining, reset_at = quota[0]
            response.headers["X-RateLimit-Limit"] = str(limit)
            response.headers["X-RateLimit-Remaining"] = str(remaining)
            response.headers["X-RateLimit-Reset"] = str(math.ceil(reset_at))
        return response

    async def _gate(self, request: web.Request, quota: list[tuple[int, int, float]]) -> web.Response | None:
        """Authentication, the quota, the faults and the latency; an answer refuses the call, None lets it through."""
        with self._lock:
            token, latency = self._token, self._latency_s
        if not credential_matches(request.headers.get("Authorization"), "Plain", token, exact_scheme=True):
            return _status(UNAUTHENTICATED, "missing or invalid authorization header: send 'Plain <token>'")
        with self._lock:
            admission = self._quota.admit(self._clock())
            fault = None
            if admission.admitted:  # a fault is spent on a call the quota let through
                fault = self._faults.popleft() if self._faults else None
                if fault is None and injected_failure(self._error_rng, self._error_rate):
                    fault = (500, 0.0)
            if self._quota.enabled:
                quota.append((self._quota.limit, admission.remaining, self._wall_clock() + admission.reset_in_s))
        if not admission.admitted or (fault is not None and fault[0] == 429):
            retry_s = admission.reset_in_s if not admission.admitted else fault[1]
            if quota and admission.admitted:  # a forced 429 says the window is used up too
                quota[0] = (quota[0][0], 0, max(quota[0][2], self._wall_clock() + retry_s))
            return _status(RESOURCE_EXHAUSTED, "rate limit exceeded",
                           headers={"Retry-After": str(max(1, math.ceil(retry_s)))})
        await pause(latency)
        if fault is not None:
            code = UNAVAILABLE if fault[0] == 503 else INTERNAL
            return _status(code, "internal error (injected by the sandbox)", http_status=fault[0])
        return None

    def _count_status(self, status: int) -> None:
        with self._lock:
            self._statuses[status] += 1

    def _rpc(self, method: Callable[[dict], dict]) -> Callable:
        async def handle(request: web.Request) -> web.Response:
            try:
                body = json.loads(await request.read() or b"{}")
                if not isinstance(body, dict):
                    raise _RpcError(INVALID_ARGUMENT, "the request body must be a JSON object")
                with self._lock:
                    answer = method(body)
            except ValueError:
                return _status(INVALID_ARGUMENT, "the request body is not valid JSON")
            except _RpcError as error:
                return _status(error.code, error.message)
            return web.json_response(answer)
        return handle

    # -- RPC handlers (lock held) ---------------------------------------------------------------------

    def _get_order(self, body: dict) -> dict:
        order = self._orders.get(_int64(body.get("id"), "id"))
        if order is None:
            raise _RpcError(NOT_FOUND, "order not found")
        return {"order": order}

    def _list_orders(self, body: dict) -> dict:
        pagination = body.get("pagination") or {}
        limit = _page_limit(pagination)
        by, descending = _sort(body, ("ID", "RELEASED_AT"))
        orders = [order for _, order in sorted(self._orders.items()) if _matches(order, body.get("filter") or {})]
        if by == "RELEASED_AT":
            orders.sort(key=lambda order: (order["released_at"], int(order["id"])))
        if descending:
            orders.reverse()
        page, has_more = _paginate(orders, pagination, limit, descending)
        return {"orders": page, "has_more": has_more}

    def _update_item_state(self, body: dict) -> dict:
        item_id = str(_int64(body.get("id"), "id"))
        try:
            order, item = self._find_item(item_id)
        except KeyError:
            raise _RpcError(NOT_FOUND, "order item not found") from None
        state = body.get("state")
        if state not in _TRANSITIONS.get(item["state"], ()):
            raise _RpcError(INVALID_ARGUMENT, f"illegal state transition from {item['state']} to {state}")
        if state == "SHIPPED":
            if not body.get("parcel_tracking_url"):
                raise _RpcError(INVALID_ARGUMENT, "parcel_tracking_url is required to ship an item")
            item["parcel_tracking_url"] = body["parcel_tracking_url"]
        self._move_item(order, item, state, self._restock_on_cancel)
        return {"order_item": item}

    def _list_offers(self, body: dict) -> dict:
        """``ListOffers``: Int64Pagination, sort by ``ID``, filters ``id`` and ``sku`` (``any_of``)."""
        pagination = body.get("pagination") or {}
        limit = _page_limit(pagination)
        _, descending = _sort(body, ("ID",))
        filters = body.get("filter") or {}
        if not isinstance(filters, dict):
            raise _RpcError(INVALID_ARGUMENT, "filter must be an object")
        offers = [offer for _, offer in sorted(self._offers.items(), reverse=descending)]
        skus = (filters.get("sku") or {}).get("any_of")
        if skus:
            offers = [offer for offer in offers if offer["sku"] in skus]
        ids = (filters.get("id") or {}).get("any_of")
        if ids:
            offers = [offer for offer in offers if offer["id"] in {str(i) for i in ids}]
        page, has_more = _paginate(offers, pagination, limit, descending)
        if not filters:
            self._walk_cursors.append(pagination.get("starting_after"))
        return {"offers": [_shown(offer) for offer in page], "has_more": has_more}

    def _get_offer(self, body: dict) -> dict:
        _only_fields(body, {"identifier"}, "GetOfferRequest")
        return {"offer": _shown(self._identified(body.get("identifier")))}

    def _update_offer(self, body: dict) -> dict:
        offer = self._identified(body.get("identifier"))
        changes = self._offer_changes(body, "")
        self._apply(offer, changes)
        return {"offer": _shown(offer)}

    def _batch_update_offers(self, body: dict) -> dict:
        _only_fields(body, {"offers"}, "BatchUpdateOffersRequest")
        updates = body.get("offers")
        if not isinstance(updates, list) or not 1 <= len(updates) <= MAX_BATCH_UPDATE:
            got = len(updates) if isinstance(updates, list) else type(updates).__name__
            raise _RpcError(INVALID_ARGUMENT, f"offers: between 1 and {MAX_BATCH_UPDATE} updates, got {got}")
        results = []
        for index, update in enumerate(updates):
            # Each update stands on its own: one bad item fails alone, in its Result.
            try:
                if not isinstance(update, dict):
                    raise _RpcError(INVALID_ARGUMENT, f"offers[{index}] must be an object")
                offer = self._identified(update.get("identifier"))
                self._apply(offer, self._offer_changes(update, f"offers[{index}]."))
                results.append({"status": {"code": OK, "message": "", "details": []}, "offer": _shown(offer)})
            except _RpcError as error:
                results.append({"status": {"code": error.code, "message": error.message, "details": []}})
        return {"results": results}

    # -- admin routes ---------------------------------------------------------------------------------

    async def _admin_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _admin_offers(self, request: web.Request) -> web.Response:
        return web.json_response({"offers": self.offers()})

    async def _admin_add_offer(self, request: web.Request) -> web.Response:
        """``{"sku", "stock"}`` adds one offer; ``{"count", "seed"}`` adds generated ones (see :meth:`add_offers`)."""
        try:
            body = await admin_body(request)
            if "count" in body:
                return web.json_response({"added": self.add_offers(int(body["count"]), seed=int(body.get("seed", 1)))},
                                         status=201)
            return web.json_response(self.add_offer(str(body["sku"]), body["stock"]), status=201)
        except (KeyError, TypeError, ValueError) as error:
            return admin_error(400, f"expected {{\"sku\", \"stock\"}} or {{\"count\", \"seed\"}}: {error}")

    async def _admin_set_stock(self, request: web.Request) -> web.Response:
        """``{"<sku>": stock, ...}``: set offers' stock, as the merchant's back office would."""
        try:
            body = await admin_body(request)
            stocks = {sku: _check_stock(stock) for sku, stock in body.items()}
        except (TypeError, ValueError) as error:
            return admin_error(400, str(error))
        with self._lock:
            unknown = sorted(set(stocks) - set(self._by_sku))
        if unknown:
            return admin_error(404, f"no offers with SKUs {', '.join(unknown[:5])}")
        for sku, stock in stocks.items():
            self.set_offer_stock(sku, stock)
        return web.json_response({sku: self.stock(sku) for sku in stocks})

    async def _admin_place(self, request: web.Request) -> web.Response:
        try:
            body = await admin_body(request)
            order = self.place_order(body["skus"], notify=bool(body.get("notify", True)))
        except OutOfStock as error:
            return admin_error(409, str(error))
        except (KeyError, TypeError, ValueError) as error:
            return admin_error(400, f"expected {{\"skus\": [...], \"notify\": bool}}: {error}")
        return web.json_response(order, status=201)

    async def _admin_item_state(self, request: web.Request) -> web.Response:
        """``{"state", "restock"?}``: move an item as the customer or the merchant would."""
        try:
            body = await admin_body(request)
            restock = optional_bool(body, "restock")
            item = self.set_item_state(request.match_info["item_id"], str(body["state"]), restock=restock)
        except KeyError as error:
            return admin_error(404 if "order item" in str(error) else 400, str(error))
        except (TypeError, ValueError) as error:
            return admin_error(400, str(error))
        return web.json_response(item)

    async def _admin_faults(self, request: web.Request) -> web.Response:
        """``{"rate_limit": n, "retry_after_s": s}`` and/or ``{"fail": n, "status": 5xx}``."""
        try:
            body = await admin_body(request)
            if "rate_limit" in body:
                self.rate_limit_next(int(body["rate_limit"]), float(body.get("retry_after_s", 1.0)))
            if "fail" in body:
                self.fail_next(int(body["fail"]), int(body.get("status", 503)))
        except (TypeError, ValueError) as error:
            return admin_error(400, str(error))
        with self._lock:
            return web.json_response({"pending_faults": len(self._faults)})

    # -- helpers (lock held) -------------------------------------------------------------------------

    def _offer_of(self, sku: str) -> dict[str, Any]:
        return self._offers[self._by_sku[sku]]

    def _identified(self, identifier: Any) -> dict[str, Any]:
        """The offer an ``OfferIdentifier`` (a oneof: ``id`` or ``sku``) names; NOT_FOUND or INVALID_ARGUMENT."""
        if not isinstance(identifier, dict) or len(identifier) != 1 or not {"id", "sku"} >= set(identifier):
            raise _RpcError(INVALID_ARGUMENT, "identifier must set exactly one of \"id\" and \"sku\"")
        if "id" in identifier:
            offer = self._offers.get(_int64(identifier["id"], "identifier.id"))
        else:
            sku = identifier["sku"]
            if not isinstance(sku, str) or not sku:
                raise _RpcError(INVALID_ARGUMENT, "identifier.sku must be a non-empty string")
            offer_id = self._by_sku.get(sku)
            offer = self._offers.get(offer_id) if offer_id is not None else None
        if offer is None:
            raise _RpcError(NOT_FOUND, "offer not found")
        return offer

    def _offer_changes(self, update: dict, where: str) -> dict[str, Any]:
        """The fields an ``UpdateOfferRequest`` sets, checked; INVALID_ARGUMENT names the first bad one."""
        unknown = sorted(set(update) - _UPDATE_FIELDS)
        if unknown:
            raise _RpcError(INVALID_ARGUMENT, f"unknown field {where}{unknown[0]!r}")
        changes = {name: value for name, value in update.items() if name != "identifier" and value is not None}
        if "stock" in changes:
            try:
                changes["stock"] = _check_stock(changes["stock"])
            except ValueError as error:
                raise _RpcError(INVALID_ARGUMENT, f"{where}{error}") from None
        for name, allowed in _ENUMS.items():
            if name in changes and changes[name] not in allowed:
                raise _RpcError(INVALID_ARGUMENT, f"{where}{name} must be one of {', '.join(allowed)}")
        return changes

    def _apply(self, offer: dict[str, Any], changes: dict[str, Any]) -> None:
        faults = self._update_faults.get(offer["sku"])
        if faults:
            raise _RpcError(faults.pop(0), "internal error (injected by the sandbox for this offer)")
        if changes.pop("delete_reference_min_price", False):
            offer.pop("reference_min_price", None)
        if changes.pop("delete_secondary_shipping_profile_id", False):
            offer.pop("secondary_shipping_profile_id", None)
        offer.update(changes)
        offer["version"] = str(int(offer["version"]) + 1)
        self._offer_updates += 1

    def _set_stock(self, offer: dict[str, Any], stock: int) -> None:
        offer["stock"] = stock
        offer["version"] = str(int(offer["version"]) + 1)

    def _change_stock(self, offer: dict[str, Any], change: int) -> None:
        self._set_stock(offer, max(0, min(MAX_STOCK, offer["stock"] + change)))

    def _move_item(self, order: dict[str, Any], item: dict[str, Any], state: str, restock: bool) -> None:
        """Set an item's state (the order's follows); a unit released before shipping restocks its offer if ``restock``."""
        offer_id = self._item_offers.get(item["id"])
        if (restock and offer_id in self._offers and state in RELEASED_ITEM_STATES
                and item["state"] not in RELEASED_ITEM_STATES):
            self._change_stock(self._offers[offer_id], +1)
        item["state"] = state
        order["state"] = _order_state(i["state"] for i in order["items"])

    def _item(self, order_id: int, sku: str, state: str) -> dict[str, Any]:
        item_id = next(self._item_ids)
        offer_id = self._by_sku.get(sku)
        offer = self._offers[offer_id] if offer_id is not None else None
        if offer is not None and state not in RELEASED_ITEM_STATES:
            self._item_offers[str(item_id)] = offer_id
        return {
            "id": str(item_id), "order_id": str(order_id), "name": offer["instance_name"] if offer else
            f"Refurbished device {sku}", "state": state,
            "sku": sku, "currency_code": "EUR", "settlement_currency_code": "EUR", "total_charged": "249.00",
            "settlement_total_charged": "249.00", "total_discount": "0.00", "total_paid": "249.00",
            "settlement_total_paid": "249.00", "total_refunded": "0.00", "settlement_total_refunded": "0.00",
            "taxation": "MARGINAL", "is_refundable": True, "refund_eligibility": "ELIGIBLE",
            "offer_data": {"offer_id": offer["id"] if offer else str(item_id + 1_000_000),
                           "offer_version": offer["version"] if offer else "1", "offer_grading": "A",
                           "offer_warranty": "M12", "shipping_profile_id": "1", "shipping_profile_version": "1",
                           "shipping_costs": "0.00"},
            "parcel_tracking_url": "", "item_identifiers": [], "shipment_status": "UNSPECIFIED",
            "return_initiated": False, "vat_rate": "0.00", "vat_country": "AT", "vat_charged": "0.00",
            "weight_kg": 0.3, "manufacturing_country": "CN", "hs_code": "85171300",
        }

    def _find_item(self, item_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        for order in self._orders.values():
            for item in order["items"]:
                if item["id"] == item_id:
                    return order, item
        raise KeyError(f"no order item {item_id}")


def _order_state(item_states: Iterable[str]) -> str:
    """The order's state from its items' (OrderState in the Swagger)."""
    states = set(item_states)
    if "NEW" in states:
        return "NEW"
    if len(states) == 1:
        return states.pop()
    if "ACCEPTED" in states:
        return "ACCEPTED"
    fulfilled, unfulfilled = states & {"SHIPPED", "RETURNED"}, states & {"REJECTED", "CANCELLED"}
    if fulfilled and unfulfilled:
        return "PARTIALLY_FULFILLED"
    return "FULFILLED" if fulfilled else "UNFULFILLED"


def _matches(order: dict[str, Any], filters: dict[str, Any]) -> bool:
    state = filters.get("state") or {}
    if state.get("any_of") and order["state"] not in state["any_of"]:
        return False
    if order["state"] in (state.get("none_of") or ()):
        return False
    ids = filters.get("id") or {}
    if ids.get("any_of") and order["id"] not in {str(i) for i in ids["any_of"]}:
        return False
    released = filters.get("released_at") or {}
    at = datetime.fromisoformat(order["released_at"])
    for name, keep in (("ge", at.__ge__), ("gt", at.__gt__), ("le", at.__le__), ("lt", at.__lt__)):
        if name in released:
            try:
                bound = datetime.fromisoformat(released[name])
            except (TypeError, ValueError):
                raise _RpcError(INVALID_ARGUMENT, f"filter.released_at.{name} is not an RFC 3339 time") from None
            if not keep(bound):
                return False
    return True


def _int64(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise _RpcError(INVALID_ARGUMENT, f"{name} must be an int64 (a string of digits), got {value!r}")
    return int(value)


def _status(code: int, message: str, *, http_status: int | None = None,
            headers: dict[str, str] | None = None) -> web.Response:
    """A ``google.rpc.Status`` answer behind the HTTP status grpc-gateway gives its code."""
    return web.json_response({"code": code, "message": message, "details": []},
                             status=http_status or _HTTP_STATUS.get(code, 400), headers=headers)


def _shown(offer: dict[str, Any]) -> dict[str, Any]:
    """An offer as the API shows it (a copy): proto3 JSON leaves out a zero ``stock``."""
    return {name: value for name, value in json.loads(json.dumps(offer)).items() if not (name == "stock" and value == 0)}


def _check_stock(value: Any) -> int:
    """A uint32 stock, an integer or (as proto3 JSON reads integers) a string of digits; ``ValueError`` otherwise."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_STOCK:
        raise ValueError(f"stock must be an integer in 0..{MAX_STOCK} (a uint32), got {value!r}")
    return value


def _only_fields(body: dict, known: set[str], message: str) -> None:
    unknown = sorted(set(body) - known)
    if unknown:
        raise _RpcError(INVALID_ARGUMENT, f"unknown field {unknown[0]!r} in {message}")


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"
