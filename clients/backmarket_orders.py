"""Back Market orders (sandbox/specs/backmarket-openapi.yml): ``GET /ws/orders`` pages, validated.

Back Market sends no order webhooks, so the fleet polls ``/ws/orders`` by ``date_modification``
(see ``actors.orders.poll_orders``).  The HTTP call is :meth:`BackMarketClient.get_orders_page`
(the client's auth, limiter, retries and typed errors); this module turns its pages into
:class:`Order` and :class:`OrderLine` and walks them.

Order lines and stock (``OrderLineState``): Back Market lowers its stock when an order is placed,
so every line that was placed holds stock (:data:`HOLDING_LINE_STATES`), and a line cancelled
(4) or refunded before shipping (5) gave it back (:data:`RELEASED_LINE_STATES`).  A line refunded
after shipping (6) does not: the unit left the warehouse.  ``/ws/orders`` never lists orders in
state 0 or 8, so lines in 7 (not paid) do not show up.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator

from clients.errors import MalformedResponse
from clients.http import is_int as _is_int
from clients.http import json_kind as _kind

if TYPE_CHECKING:
    from clients.backmarket import BackMarketClient

API = "backmarket"
LIST_ORDERS = "GET /ws/orders"

#: Line states whose quantity left Back Market's stock when the order was placed.
HOLDING_LINE_STATES = frozenset({0, 1, 2, 3, 6, 8, 9})
#: Line states that gave the quantity back before shipping: cancelled (4), refunded before shipping (5).
RELEASED_LINE_STATES = frozenset({4, 5})

#: A walk stops after this many pages past the count announced on page 1 (a safety net, not a limit).
_EXTRA_PAGES = 20


@dataclass(frozen=True)
class OrderLine:
    """The fields of an ``OrderLine`` the stock needs: ``sku`` is the line's ``listing`` (the seller SKU)."""

    id: int
    sku: str
    listing_id: int | None
    quantity: int
    state: int
    date_creation: str | None


@dataclass(frozen=True)
class Order:
    """The fields of an ``Order`` the stock needs."""

    order_id: int
    state: int
    date_creation: str | None
    date_modification: str
    country_code: str | None
    orderlines: tuple[OrderLine, ...]


@dataclass(frozen=True)
class OrdersPage:
    """One page of ``GET /ws/orders``; ``count`` is the number of orders over all pages."""

    page: int
    count: int
    next: str | None
    results: tuple[Order, ...]


def parse_orders_page(page: int, body: Any) -> OrdersPage:
    """Validate a ``{count, next, previous, results: Order[]}`` page.

    Raises:
      MalformedResponse: The message names the page, the order, the line and the field.
    """
    def malformed(problem: str) -> MalformedResponse:
        return MalformedResponse(f"orders page {page}: {problem}", api=API, endpoint=LIST_ORDERS, status=200)

    if not isinstance(body, dict):
        raise malformed(f"expected a JSON object envelope, got {_kind(body)}")
    count, next_url, results = body.get("count"), body.get("next"), body.get("results")
    if not _is_int(count) or count < 0:
        raise malformed(f"count must be a non-negative integer, got {count!r}")
    if next_url is not None and not isinstance(next_url, str):
        raise malformed(f"next must be a URL string or null, got {_kind(next_url)}")
    if not isinstance(results, list):
        raise malformed(f"results must be a list, got {_kind(results)}")
    orders = []
    for index, item in enumerate(results):
        try:
            orders.append(parse_order(item))
        except ValueError as invalid:
            ident = item.get("order_id") if isinstance(item, dict) else None
            raise malformed(f"order {index}{f' ({ident})' if ident is not None else ''}: {invalid}") from None
    return OrdersPage(page=page, count=count, next=next_url, results=tuple(orders))


def parse_order(item: Any) -> Order:
    """Validate one ``Order``; raises ``ValueError`` naming the field (and the line) that is wrong."""
    if not isinstance(item, dict):
        raise ValueError(f"must be an Order object, got {_kind(item)}")
    for name in ("order_id", "state"):
        if not _is_int(item.get(name)):
            raise ValueError(f"{name} must be an integer, got {item.get(name)!r}")
    if not _is_time(item.get("date_modification")):
        raise ValueError(f"date_modification must be an RFC 3339 time, got {item.get('date_modification')!r}")
    raw_lines = item.get("orderlines")
    if not isinstance(raw_lines, list):
        raise ValueError(f"orderlines must be a list, got {_kind(raw_lines)}")
    lines = []
    for index, line in enumerate(raw_lines):
        if not isinstance(line, dict):
            raise ValueError(f"orderlines[{index}] must be an OrderLine object, got {_kind(line)}")
        for name in ("id", "state", "quantity"):
            if not _is_int(line.get(name)):
                raise ValueError(f"orderlines[{index}].{name} must be an integer, got {line.get(name)!r}")
        if line["quantity"] < 1:
            raise ValueError(f"orderlines[{index}].quantity must be at least 1, got {line['quantity']}")
        if not isinstance(line.get("listing"), str) or not line["listing"]:
            raise ValueError(f"orderlines[{index}].listing (the SKU) must be a non-empty string, "
                             f"got {line.get('listing')!r}")
        listing_id = line.get("listing_id")
        created = line.get("date_creation")
        created = created if _is_time(created) else None
        lines.append(OrderLine(id=line["id"], sku=line["listing"],
                               listing_id=listing_id if _is_int(listing_id) else None,
                               quantity=line["quantity"], state=line["state"],
                               date_creation=created))
    created = item.get("date_creation")
    country = item.get("country_code")
    return Order(order_id=item["order_id"], state=item["state"],
                 date_creation=created if _is_time(created) else None,
                 date_modification=item["date_modification"],
                 country_code=country if isinstance(country, str) else None,
                 orderlines=tuple(lines))


async def walk_orders(client: BackMarketClient, *, page_size: int = 50, **filters: str | int
                      ) -> AsyncIterator[OrdersPage]:
    """Every page of ``GET /ws/orders`` with ``filters`` (e.g. ``date_modification``), in order.

    Follows pages until ``next`` is null.  Orders modified during the walk can move between
    pages (seen twice, or not at all): the caller re-reads an overlap on its next walk.
    """
    page, last = 1, None
    while True:
        result = parse_orders_page(page, await client.get_orders_page(page, page_size, **filters))
        yield result
        if last is None:
            last = max(1, -(-result.count // page_size)) + _EXTRA_PAGES
        if result.next is None or not result.results or page >= last:
            return
        page += 1


def parse_time(text: str) -> datetime:
    """An RFC 3339 time of the API as an aware datetime (a time without an offset is taken as UTC)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _is_time(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_time(value)
    except ValueError:
        return False
    return True
