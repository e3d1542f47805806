"""The Shopify sandbox's orders: placed from a location, cancelled with or without restock, searched
by the GraphQL ``orders`` query, announced by signed webhooks.

- **An order lowers ``available``** at its location (the first by default) by each line's quantity;
  a tracked level holding fewer units refuses the whole order (:class:`OutOfStock`; the sandbox
  shop does not oversell), an untracked level does not change.
- **A cancellation** sets ``cancelledAt`` and ``cancelReason`` and, with ``restock`` (default: the
  ``restock_on_cancel`` dial), gives every line's units back to the order's location, recorded as
  Shopify does: a ``Refund`` whose ``refundLineItems`` have ``restockType: CANCEL``, ``restocked:
  true`` and the ``location``.  Without restock the refund lines say ``NO_RESTOCK``; ``restock`` as
  ``{sku: units}`` gives back only those units of each line (a line restocked in part has a ``CANCEL``
  and a ``NO_RESTOCK`` refund line).  The webhook body says the same in REST:
  ``refunds[].refund_line_items[]`` with ``line_item_id``, ``quantity``, ``restock_type`` (``cancel``,
  ``no_restock``).
- **``updatedAt``** is set on creation and on cancellation (to the second, as Shopify writes it),
  so ``orders(query: "updated_at:>='<watermark>'", sortKey: UPDATED_AT)`` finds both.  The search
  syntax understood: ``created_at`` and ``updated_at`` with ``>=``, ``<=``, ``>``, ``<`` or ``:``
  (ISO 8601, quoted or not), ``name`` (``#1001`` or ``1001``), terms joined by spaces or ``AND``;
  anything else is refused with an error naming it (Shopify would ignore it with a warning).
- **Webhooks**: ``orders/create`` and ``orders/cancelled`` POST the order's REST body to
  ``webhook_url`` with Shopify's headers (``X-Shopify-Topic``, ``X-Shopify-Hmac-Sha256`` (base64
  HMAC-SHA256 of the raw body keyed with ``webhook_secret``), ``X-Shopify-Shop-Domain``,
  ``X-Shopify-Webhook-Id``, ``X-Shopify-Event-Id``, ``X-Shopify-API-Version``,
  ``X-Shopify-Triggered-At``); a failed delivery is retried with a doubling interval under the
  same webhook id.
"""
from __future__ import annotations

import itertools
import json
import re
import threading
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from core.platforms import SHOPIFY_API_VERSION
from core.signatures import shopify_hmac
from sandbox.common import OutOfStock, WebhookSender
from sandbox.shopify_graphql import gid, iso_datetime

if TYPE_CHECKING:
    from sandbox.shopify import ShopifySandbox

__all__ = ["CANCEL_REASONS", "ShopifyOrders"]

ORDER_ID_BASE = 450_789_469
LINE_ITEM_ID_BASE = 466_157_049
REFUND_ID_BASE = 509_562_969
ORDER_NUMBER_BASE = 1001
CANCEL_REASONS = ("CUSTOMER", "DECLINED", "FRAUD", "INVENTORY", "OTHER", "STAFF")
WEBHOOK_MAX_ATTEMPTS = 6
WEBHOOK_RETRY_S = 0.05

_TERM = re.compile(r"""(?P<field>\w+):(?P<op>>=|<=|>|<|=)?(?P<value>'[^']*'|"[^"]*"|[^\s'"]+)""")


class ShopifyOrders:
    """The orders of one :class:`~sandbox.shopify.ShopifySandbox`, under its lock."""

    def __init__(self, shop: ShopifySandbox, lock: threading.Lock) -> None:
        self._shop, self._lock = shop, lock
        self._orders: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(ORDER_ID_BASE)
        self._line_ids = itertools.count(LINE_ITEM_ID_BASE)
        self._refund_ids = itertools.count(REFUND_ID_BASE)
        self.webhooks = WebhookSender("shopify-webhook", "Shopify-Captain-Hook")

    def place(self, lines: dict[str, int] | list[tuple[str, int]], *, location_id: int | None,
              notify: bool) -> dict[str, Any]:
        """See :meth:`ShopifySandbox.place_order`."""
        pairs = list(lines.items()) if isinstance(lines, dict) else list(lines)
        if not pairs:
            raise ValueError("an order needs at least one line")
        for sku, quantity in pairs:
            if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
                raise ValueError(f"the quantity of {sku!r} must be a positive integer, got {quantity!r}")
        with self._lock:
            shop = self._shop
            location = location_id if location_id is not None else shop.location_ids_locked()[0]
            if location not in shop.location_ids_locked():
                raise KeyError(f"no location {location}")
            variants = {sku: self._variant_of_sku(sku) for sku, _ in pairs}
            wanted = Counter()
            for sku, quantity in pairs:
                wanted[sku] += quantity
            short = [f"{sku!r} ({count} wanted, {shop.level_locked(variants[sku], location)} available)"
                     for sku, count in wanted.items()
                     if shop.level_locked(variants[sku], location) is not None
                     and shop.level_locked(variants[sku], location) < count]
            if short:
                raise OutOfStock(f"not enough stock at location {location} for {', '.join(short)}")
            moment = shop.now()
            order_id = next(self._ids)
            order = {"id": order_id, "number": ORDER_NUMBER_BASE + len(self._orders), "created_at": moment,
                     "updated_at": moment, "cancelled_at": None, "cancel_reason": None, "location_id": location,
                     "lines": [{"id": next(self._line_ids), "variant": variants[sku], "quantity": quantity}
                               for sku, quantity in pairs],
                     "refunds": []}
            for line in order["lines"]:
                shop.change_level_locked(line["variant"]["inventory_item_id"], location, -line["quantity"])
            self._orders[order_id] = order
            body = self._body(order)
        if notify:
            self._notify("orders/create", order_id)
        return body

    def cancel(self, order_id: int, *, restock: bool | dict[str, int] | None, reason: str, notify: bool
               ) -> dict[str, Any]:
        """See :meth:`ShopifySandbox.cancel_order`."""
        if reason not in CANCEL_REASONS:
            raise ValueError(f"reason must be one of {', '.join(CANCEL_REASONS)}, got {reason!r}")
        with self._lock:
            order = self._orders.get(order_id)
            if order is None:
                raise KeyError(f"no order {order_id}")
            if order["cancelled_at"] is not None:
                raise ValueError(f"order {order_id} is already cancelled")
            restock = self._shop.restock_on_cancel_locked() if restock is None else restock
            moment = self._shop.now()
            order["cancelled_at"] = order["updated_at"] = moment
            order["cancel_reason"] = reason
            items = []
            for line in order["lines"]:
                back = _units_back(restock, line)
                if back:
                    self._shop.change_level_locked(line["variant"]["inventory_item_id"], order["location_id"], back)
                # One refund line per restock type: a line restocked in part has two, as Shopify records it.
                items += [{"id": next(self._refund_ids), "line": line, "quantity": units, "restock_type": kind,
                           "restocked": kind == "CANCEL",
                           "location_id": order["location_id"] if kind == "CANCEL" else None}
                          for kind, units in (("CANCEL", back), ("NO_RESTOCK", line["quantity"] - back)) if units]
            order["refunds"].append({"id": next(self._refund_ids), "created_at": moment, "lines": items})
            body = self._body(order)
        if notify:
            self._notify("orders/cancelled", order_id)
        return body

    def body(self, order_id: int) -> dict[str, Any]:
        """The order's webhook (REST) body.  Raises ``KeyError``."""
        with self._lock:
            return self._body(self._orders[order_id])

    def count_locked(self) -> int:
        """How many orders the shop has taken."""
        return len(self._orders)

    def search_locked(self, query: str | None, sort_key: str) -> list[tuple[Any, int]]:
        """``(sort key, order id)`` of the orders matching ``query``.  Raises ``ValueError``."""
        tests = _parse_query(query or "")
        return [(_sort_key(order, sort_key), order["id"]) for order in self._orders.values()
                if all(test(order) for test in tests)]

    def view_locked(self, order_id: int | None) -> dict[str, Any] | None:
        """One ``Order`` view, or None."""
        order = self._orders.get(order_id)
        return self._view(order) if order is not None else None

    # -- (lock held) -------------------------------------------------------------------------------------

    def _variant_of_sku(self, sku: str) -> dict[str, Any]:
        for variant in self._shop.variants_locked():
            if variant["sku"] == sku:
                return variant
        raise KeyError(f"no variant with SKU {sku!r}")

    def _view(self, order: dict[str, Any]) -> dict[str, Any]:
        shop = self._shop
        lines = {line["id"]: {"id": gid("LineItem", line["id"]), "sku": line["variant"]["sku"],
                              "name": line["variant"]["title"], "quantity": line["quantity"],
                              "currentQuantity": 0 if order["cancelled_at"] else line["quantity"],
                              "variant": shop.variant_view_locked(line["variant"])}
                 for line in order["lines"]}
        refunds = [{"id": gid("Refund", refund["id"]), "createdAt": iso_datetime(refund["created_at"]),
                    "_refundLineItems": [
                        {"id": gid("RefundLineItem", item["id"]), "lineItem": lines[item["line"]["id"]],
                         "quantity": item["quantity"], "restockType": item["restock_type"],
                         "restocked": item["restocked"],
                         "location": shop.location_view_locked(item["location_id"]) if item["location_id"] else None}
                        for item in refund["lines"]]}
                   for refund in order["refunds"]]
        return {"id": gid("Order", order["id"]), "legacyResourceId": str(order["id"]), "name": f"#{order['number']}",
                "createdAt": iso_datetime(order["created_at"]), "processedAt": iso_datetime(order["created_at"]),
                "updatedAt": iso_datetime(order["updated_at"]),
                "cancelledAt": iso_datetime(order["cancelled_at"]) if order["cancelled_at"] else None,
                "cancelReason": order["cancel_reason"], "_lineItems": list(lines.values()), "_refunds": refunds}

    def _body(self, order: dict[str, Any]) -> dict[str, Any]:
        """The REST order resource, as the webhooks send it."""
        def rest_time(moment: datetime | None) -> str | None:
            return moment.astimezone(timezone.utc).isoformat(timespec="seconds") if moment else None

        return {
            "id": order["id"], "admin_graphql_api_id": gid("Order", order["id"]), "name": f"#{order['number']}",
            "order_number": order["number"], "created_at": rest_time(order["created_at"]),
            "updated_at": rest_time(order["updated_at"]), "processed_at": rest_time(order["created_at"]),
            "cancelled_at": rest_time(order["cancelled_at"]),
            "cancel_reason": order["cancel_reason"].lower() if order["cancel_reason"] else None,
            "currency": "EUR", "financial_status": "paid", "location_id": order["location_id"],
            "line_items": [{"id": line["id"], "admin_graphql_api_id": gid("LineItem", line["id"]),
                            "variant_id": line["variant"]["id"], "product_id": line["variant"]["product_id"],
                            "sku": line["variant"]["sku"], "title": line["variant"]["title"],
                            "quantity": line["quantity"], "price": line["variant"]["price"]}
                           for line in order["lines"]],
            "refunds": [{"id": refund["id"], "created_at": rest_time(refund["created_at"]), "refund_line_items": [
                {"id": item["id"], "line_item_id": item["line"]["id"], "quantity": item["quantity"],
                 "restock_type": item["restock_type"].lower(), "location_id": item["location_id"]}
                for item in refund["lines"]]} for refund in order["refunds"]],
        }

    def _notify(self, topic: str, order_id: int) -> None:
        dials = self._shop.dials()
        if dials["webhook_url"] is None:
            return
        body = json.dumps(self.body(order_id)).encode()
        headers = {"X-Shopify-Topic": topic, "X-Shopify-Hmac-Sha256": shopify_hmac(dials["webhook_secret"], body),
                   "X-Shopify-Shop-Domain": dials["shop_domain"], "X-Shopify-Webhook-Id": str(uuid.uuid4()),
                   "X-Shopify-Event-Id": str(uuid.uuid4()), "X-Shopify-API-Version": SHOPIFY_API_VERSION,
                   "X-Shopify-Triggered-At": datetime.now(timezone.utc).isoformat()}
        self.webhooks.send(order_id, 0, dials["webhook_url"], lambda: (body, headers), WEBHOOK_MAX_ATTEMPTS,
                           WEBHOOK_RETRY_S)


def _units_back(restock: bool | dict[str, int], line: dict[str, Any]) -> int:
    """How many of a cancelled line's units go back: all or none, or as many as ``restock`` gives its SKU."""
    if isinstance(restock, dict):
        return max(0, min(int(restock.get(line["variant"]["sku"], 0)), line["quantity"]))
    return line["quantity"] if restock else 0


def _second(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(microsecond=0)


def _sort_key(order: dict[str, Any], sort_key: str) -> Any:
    if sort_key == "UPDATED_AT":
        return (int(_second(order["updated_at"]).timestamp()), order["id"])
    if sort_key in ("CREATED_AT", "PROCESSED_AT"):
        return (int(_second(order["created_at"]).timestamp()), order["id"])
    return order["id"]


def _parse_query(query: str) -> list:
    """The tests of an orders search ``query`` (see the module's docstring).  Raises ``ValueError``."""
    tests = []
    rest = _TERM.sub(" ", query)
    leftover = [word for word in rest.split() if word != "AND"]
    if leftover:
        raise ValueError(f"the sandbox understands only created_at, updated_at and name terms, not {leftover[0]!r}")
    for match in _TERM.finditer(query):
        field, op, value = match["field"], match["op"] or "=", match["value"].strip("'\"")
        if field in ("created_at", "updated_at"):
            try:
                bound = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"{field} must be an ISO 8601 time, got {value!r}") from None
            bound = bound if bound.tzinfo else bound.replace(tzinfo=timezone.utc)
            tests.append(_compare(field, op, bound))
        elif field == "name" and op == "=":
            tests.append(lambda order, name=value.lstrip("#"): str(order["number"]) == name)
        else:
            raise ValueError(f"the sandbox understands only created_at, updated_at and name terms, not {field!r}")
    return tests


def _compare(field: str, op: str, bound: datetime):
    def test(order: dict[str, Any]) -> bool:
        moment = _second(order[field])
        return {">=": moment >= bound, "<=": moment <= bound, ">": moment > bound, "<": moment < bound,
                "=": moment == bound}[op]
    return test
