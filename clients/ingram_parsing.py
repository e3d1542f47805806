"""Ingram Micro Reseller API v6 answers: routes, result types and parsing.

No HTTP here: :mod:`clients.ingram` sends the requests; this module names the calls, validates the
answers (price & availability, token, details' dimensions, error envelopes) and holds what they
become.

Where the reseller SDK's models and the docs' examples differ, both shapes are read: ``expires_in``
is a string in the SDK and a number in the docs; ``additionalInformation`` ``height``, ``width``,
``length`` and ``netWeight`` are strings with a unit in the SDK (``"5.2 Inches"``, ``"10 lb"``) and
numbers (with ``dimensionUnit``) in older answers.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from clients.errors import MalformedResponse
from clients.http import ErrorDetails, is_int as _is_int, json_kind as _kind, text as _text

__all__ = ["API", "DETAILS", "MAX_PART_NUMBER", "MAX_PRODUCTS", "PRICE_AVAILABILITY", "TOKEN", "Measure",
           "PriceAvailability", "PriceAvailabilityResult", "ProductDimensions", "ProductError", "WarehouseStock",
           "check_batch_size", "describe_error", "parse_dimensions", "parse_price_availability", "parse_token"]

#: The API's name in errors, records and metrics.
API = "ingram"

#: Route templates: how calls are named in records, metrics and errors.
TOKEN = "POST /oauth/oauth20/token"
PRICE_AVAILABILITY = "POST /resellers/v6/catalog/priceandavailability"
DETAILS = "GET /resellers/v6/catalog/details/{ingramPartNumber}"

#: The most products one price & availability request may carry.
MAX_PRODUCTS = 50

#: Ingram part numbers (``ingramPartNumber``) are at most this long (the reseller SDK's limit).
MAX_PART_NUMBER = 6

_INTEGER = re.compile(r"^[0-9]+$")
_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")
# A measure as the SDK shows it: a number, then its unit ("5.2 Inches", "10 lb", "13in").
_MEASURE = re.compile(r"^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*((?:[^\W\d_]|[\"'\u2033]).*)?$")


def check_batch_size(batch_size: int) -> int:
    """Return ``batch_size`` if a price & availability request may carry that many products; else raise.

    Raises:
      ValueError: saying why (Ingram Micro takes 1 to 50 products a request).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_PRODUCTS:
        raise ValueError(f"batch size {batch_size!r} refused: Ingram Micro's price & availability takes 1 to "
                         f"{MAX_PRODUCTS} products a request")
    return batch_size



# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarehouseStock:
    """Stock of one product in one Ingram Micro warehouse."""

    warehouse_id: str
    location: str | None
    quantity_available: int
    quantity_backordered: int

    def to_json(self) -> dict[str, Any]:
        """The JSON stored per warehouse (keyed by ``warehouse_id`` by the caller)."""
        return {"location": self.location, "available": self.quantity_available,
                "backordered": self.quantity_backordered}


@dataclass(frozen=True)
class PriceAvailability:
    """One product of a price & availability answer, validated.

    ``price`` is the reseller's price (``pricing.customerPrice``); ``status`` is ``productStatus``
    (whether the product is active), ``product_class`` Ingram's stocking class (A, B, ... D
    discontinued, ...), ``status_code``/``status_message`` the item's ``productStatusCode`` and
    message (``W`` warnings land here; ``E`` errors become :class:`ProductError` instead).
    """

    part_number: str
    vendor_part_number: str | None
    customer_part_number: str | None
    upc: str | None
    vendor_name: str | None
    description: str | None
    status: str | None
    status_code: str | None
    status_message: str | None
    product_class: str | None
    available: bool | None
    total_availability: int | None
    warehouses: tuple[WarehouseStock, ...]
    price: Decimal | None
    retail_price: Decimal | None
    currency: str | None

    @property
    def warehouses_json(self) -> dict[str, dict[str, Any]]:
        """Per-warehouse stock as stored: ``{warehouseId: {location, available, backordered}}``."""
        return {w.warehouse_id: w.to_json() for w in self.warehouses}


@dataclass(frozen=True)
class ProductError:
    """A product the API answered with an error inside a 200/207 (or left out of its answer)."""

    part_number: str
    code: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.part_number}: {self.message}" + (f" (code {self.code})" if self.code else "")


@dataclass(frozen=True)
class Measure:
    """A dimension or weight of a product: its number and its unit as Ingram wrote it (None: not said)."""

    value: Decimal
    unit: str | None

    def __str__(self) -> str:
        return f"{self.value} {self.unit}" if self.unit else str(self.value)


@dataclass(frozen=True)
class ProductDimensions:
    """``additionalInformation`` ``height``, ``width``, ``length`` and ``netWeight`` of a details answer."""

    height: Measure | None
    width: Measure | None
    length: Measure | None
    net_weight: Measure | None


@dataclass(frozen=True)
class PriceAvailabilityResult:
    """One price & availability call: the products priced and the products in error."""

    status: int
    products: list[PriceAvailability]
    errors: list[ProductError] = field(default_factory=list)



class _Invalid(ValueError):
    """A field of an answer is not what the spec promises (turned into :class:`MalformedResponse`)."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"field {field_name!r} {problem}")


# -- parsing -------------------------------------------------------------------------------------

#: What to tell an operator, by status, when the answer says nothing useful.
_HINTS = {
    400: "Ingram Micro refused the request as invalid",
    401: "the access token was refused",
    403: "forbidden: the API app may not be subscribed to this API",
    404: "not found",
    429: "too many requests: over Ingram Micro's quota",
}


def parse_price_availability(body: Any, requested: Sequence[str], status: int = 200) -> PriceAvailabilityResult:
    """Validate a price & availability answer (a top-level JSON array) against the products asked for.

    An item is matched to a requested product by ``ingramPartNumber``, else by ``index``.  An item
    with ``productStatusCode`` ``E`` is a :class:`ProductError`; a requested product with no item
    is one too ("not in the answer").

    Raises:
      MalformedResponse: naming the item, its part number and the field.
    """
    def malformed(problem: str) -> MalformedResponse:
        return MalformedResponse(f"price & availability answer: {problem}", api=API, endpoint=PRICE_AVAILABILITY,
                                 status=status)

    if not isinstance(body, list):
        what = f"an object with keys {', '.join(sorted(body)[:5])}" if isinstance(body, dict) else _kind(body)
        raise malformed(f"expected a top-level JSON array of products, got {what}")
    # Part numbers are matched as sent, else ignoring case (the API may answer in upper case).
    wanted = {part.upper(): part for part in requested}
    products: dict[str, PriceAvailability] = {}
    errors: dict[str, ProductError] = {}
    for position, item in enumerate(body):
        if not isinstance(item, dict):
            raise malformed(f"item {position} must be a JSON object, got {_kind(item)}")
        part = item.get("ingramPartNumber")
        index = item.get("index")
        if isinstance(part, str) and part.upper() in wanted:
            part = wanted[part.upper()]
        elif part in (None, "") and _is_int(index) and 0 <= index < len(requested):
            part = requested[index]  # an error item may name its product by position only
        elif part in (None, ""):
            raise malformed(f"item {position} has neither an ingramPartNumber nor a valid index")
        else:
            raise malformed(f"item {position} is for {part!r}, which was not asked for")
        code = item.get("productStatusCode")
        if isinstance(code, str) and code.strip().upper() == "E":
            message = item.get("productStatusMessage")
            errors[part] = ProductError(part, code, str(message) if message else "error (no message)")
            continue
        try:
            products[part] = _price_availability(part, item)
        except _Invalid as invalid:
            raise malformed(f"item {position} (product {part}): {invalid}") from None
    for part in requested:
        if part not in products and part not in errors:
            errors[part] = ProductError(part, None, "not in the answer")
    return PriceAvailabilityResult(status=status, products=[products[p] for p in requested if p in products],
                                   errors=[errors[p] for p in requested if p in errors])


def _price_availability(part: str, item: dict) -> PriceAvailability:
    availability = _optional_object(item, "availability")
    available = availability.get("available")
    if available is not None and not isinstance(available, bool):
        raise _Invalid("availability.available", f"must be a boolean, got {available!r}")
    total = _optional_count(availability, "totalAvailability", "availability.totalAvailability")
    warehouses = []
    by_warehouse = availability.get("availabilityByWarehouse") or []
    if not isinstance(by_warehouse, list):
        raise _Invalid("availability.availabilityByWarehouse", f"must be a list, got {_kind(by_warehouse)}")
    for n, warehouse in enumerate(by_warehouse):
        where = f"availability.availabilityByWarehouse[{n}]"
        if not isinstance(warehouse, dict):
            raise _Invalid(where, f"must be an object, got {_kind(warehouse)}")
        warehouse_id = warehouse.get("warehouseId")
        if _is_int(warehouse_id):
            warehouse_id = str(warehouse_id)
        if not isinstance(warehouse_id, str) or not warehouse_id:
            raise _Invalid(f"{where}.warehouseId", f"must be a non-empty string, got {warehouse_id!r}")
        location = warehouse.get("location")
        warehouses.append(WarehouseStock(
            warehouse_id, location if isinstance(location, str) else None,
            _optional_count(warehouse, "quantityAvailable", f"{where}.quantityAvailable") or 0,
            _optional_count(warehouse, "quantityBackordered", f"{where}.quantityBackordered") or 0))
    pricing = _optional_object(item, "pricing")
    currency = pricing.get("currencyCode")
    if currency is not None and not isinstance(currency, str):
        raise _Invalid("pricing.currencyCode", f"must be a string, got {currency!r}")
    return PriceAvailability(
        part_number=part, vendor_part_number=_optional_text(item, "vendorPartNumber"),
        customer_part_number=_optional_text(item, "customerPartNumber"), upc=_optional_text(item, "upc"),
        vendor_name=_optional_text(item, "vendorName"), description=_optional_text(item, "description"),
        status=_optional_text(item, "productStatus"), status_code=_optional_text(item, "productStatusCode"),
        status_message=_optional_text(item, "productStatusMessage"),
        product_class=_optional_text(item, "productClass"), available=available, total_availability=total,
        warehouses=tuple(warehouses), price=_optional_money(pricing, "customerPrice"),
        retail_price=_optional_money(pricing, "retailPrice"), currency=currency or None)


def _optional_object(item: dict, key: str) -> dict:
    """``item[key]``, an object that may be left out (``{}`` then); raises :class:`_Invalid` for anything else."""
    value = item.get(key)
    if value is not None and not isinstance(value, dict):
        raise _Invalid(key, f"must be an object, got {_kind(value)}")
    return value or {}


def _optional_count(container: dict, key: str, name: str) -> int | None:
    value = container.get(key)
    if value is None:
        return None
    # The stock webhook sends totalAvailability as a string; accept digits as a count.
    if isinstance(value, str) and _INTEGER.match(value.strip()):
        value = int(value)
    if not _is_int(value) or value < 0:
        raise _Invalid(name, f"must be a non-negative integer, got {value!r}")
    return value


def _optional_money(container: dict, key: str) -> Decimal | None:
    value = container.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Invalid(f"pricing.{key}", f"must be a number, got {_kind(value)}")
    try:
        money = Decimal(str(value))
    except InvalidOperation:
        raise _Invalid(f"pricing.{key}", f"must be a number, got {value!r}") from None
    if not money.is_finite():
        raise _Invalid(f"pricing.{key}", f"must be a finite number, got {value!r}")
    return money


def _optional_text(item: dict, key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if _is_int(value):
        return str(value)
    if not isinstance(value, str):
        raise _Invalid(key, f"must be a string, got {_kind(value)}")
    return value



def parse_token(body: Any) -> tuple[str, float]:
    """Validate a token answer; returns ``(access_token, expires_in seconds)``.

    Raises:
      MalformedResponse: Naming what is missing or wrong (never the token itself).
    """
    def malformed(problem: str) -> MalformedResponse:
        return MalformedResponse(f"token answer: {problem}", api=API, endpoint=TOKEN, status=200)

    if not isinstance(body, dict):
        raise malformed(f"expected a JSON object, got {_kind(body)}")
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise malformed("access_token is missing or not a string")
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise malformed(f"token_type must be Bearer, got {token_type!r}")
    given = expires_in = body.get("expires_in")
    # The SDK types expires_in as a string ("86399"); the docs' example is a number.
    if isinstance(expires_in, str) and _DECIMAL.match(expires_in.strip()):
        expires_in = float(expires_in)
    if not _is_number(expires_in) or expires_in <= 0:
        raise malformed(f"expires_in must be a positive number of seconds, got {given!r}")
    return token, float(expires_in)


#: The fields of ``additionalInformation`` read as measures, by the name :class:`ProductDimensions` gives them.
_MEASURES = (("height", "height"), ("width", "width"), ("length", "length"), ("net_weight", "netWeight"))
_LENGTHS = frozenset({"height", "width", "length"})


def parse_dimensions(details: Any, part_number: str | None = None) -> ProductDimensions:
    """Read the dimensions and net weight of a details answer (``ProductDetailResponse``).

    Each of ``additionalInformation.height/width/length/netWeight`` may be a string with a unit
    (the SDK: ``"5.2 Inches"``; the leading number is the value, the rest its unit), a bare number
    or numeric string (the unit is then ``dimensionUnit`` for the three lengths, and none for the
    weight), or left out / null / empty (None).

    Raises:
      MalformedResponse: Naming the field (``additionalInformation.height``, ...) and its value.
    """
    def malformed(problem: str) -> MalformedResponse:
        who = f"details of {part_number}" if part_number else "details answer"
        return MalformedResponse(f"{who}: {problem}", api=API, endpoint=DETAILS, status=200)

    if not isinstance(details, dict):
        raise malformed(f"expected a JSON object, got {_kind(details)}")
    try:
        info = _optional_object(details, "additionalInformation")
        unit = info.get("dimensionUnit")
        if unit is not None and not isinstance(unit, str):
            raise _Invalid("additionalInformation.dimensionUnit", f"must be a string, got {_kind(unit)}")
        unit = unit.strip() if unit and unit.strip() else None
        measures = {name: _measure(info, key, unit if key in _LENGTHS else None) for name, key in _MEASURES}
    except _Invalid as invalid:
        raise malformed(str(invalid)) from None
    return ProductDimensions(**measures)


def _measure(info: dict, key: str, default_unit: str | None) -> Measure | None:
    value = info.get(key)
    name = f"additionalInformation.{key}"
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if _is_number(value):
        if value < 0:
            raise _Invalid(name, f"must not be negative, got {value!r}")
        return Measure(Decimal(str(value)), default_unit)
    if not isinstance(value, str):
        raise _Invalid(name, f"must be a number or a string like '5.2 Inches', got {_kind(value)}")
    match = _MEASURE.match(value.strip())
    if match is None:
        raise _Invalid(name, f"must be a number with an optional unit like '5.2 Inches', got {value[:100]!r}")
    number, unit = match.groups()
    return Measure(Decimal(number), unit.strip() if unit else default_unit)


def describe_error(status: int, raw: bytes, headers) -> ErrorDetails:
    """Read an error answer for :class:`clients.http.JsonApi`: the API's words, else a hint by status."""
    message, code = _describe(raw, headers)
    return ErrorDetails(message or _HINTS.get(status) or "", code=code)


def _describe(raw: bytes, headers) -> tuple[str, str | None]:
    """``(message, code)`` from an error body, whichever of Ingram Micro's envelopes it uses."""
    text = _text(raw).strip()
    if not text:
        return "", None
    try:
        body = json.loads(text)
    except ValueError:
        if "html" in headers.get("Content-Type", "") or text[:100].lower().lstrip().startswith(("<!doctype", "<html")):
            return "HTML page instead of JSON", None
        return text, None
    if isinstance(body, str):
        return body, None
    if not isinstance(body, dict):
        return text, None
    errors = body.get("errors")
    if isinstance(errors, list) and errors:  # v6 ErrorResponse, and the 429 body
        parts, code = [], None
        for error in errors:
            if not isinstance(error, dict):
                continue
            code = code or _str_or_none(error.get("type") or error.get("id"))
            message = str(error.get("message") or "")
            fields = error.get("fields") if isinstance(error.get("fields"), list) else []
            named = [f"{f.get('field')}: {f.get('message')}" for f in fields if isinstance(f, dict)]
            if error.get("field"):
                named.append(str(error["field"]))
            parts.append(message + (f" ({'; '.join(named)})" if named else ""))
        return "; ".join(p for p in parts if p) or text, code
    fault = body.get("fault")
    if isinstance(fault, dict):  # gateway fault
        detail = fault.get("detail") if isinstance(fault.get("detail"), dict) else {}
        return str(fault.get("faultstring") or text), _str_or_none(detail.get("errorcode"))
    if "faultstring" in body:
        return str(body["faultstring"]), _str_or_none(body.get("faultcode"))
    for key in ("message", "error_description", "error"):
        if isinstance(body.get(key), str):
            return body[key], None
    return text, None



def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)



def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))
