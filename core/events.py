"""The stock-event contract: the four kinds, their fields and limits, and the one validation.

Every way in (the producer API, the signed HTTP endpoint, a message on a queue, the booking in
``db.events``) builds a :class:`StockEvent` here, so a field is checked the same way wherever it
comes from, and a bad one raises :class:`InvalidStockEvent` naming it.  ``stock_event.schema.json``
beside this module is the JSON Schema of the same models, for producers in other languages
(``python -m core.events`` prints it).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal, Mapping, Sequence, Union, get_args

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, RootModel,
                      StrictBool, StringConstraints, TypeAdapter, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError

#: The kinds of event, by the name of the actor that books them.
Kind = Literal["order_created", "order_cancelled", "stock_topup", "manual_adjustment"]
EVENT_KINDS: tuple[str, ...] = get_args(Kind)

#: The ledger's ``change_type`` of each kind.
CHANGE_TYPE_OF = {"order_created": "order_created", "order_cancelled": "order_cancelled", "stock_topup": "topup",
                  "manual_adjustment": "manual"}
#: Ledger change types the marketplace applies to its own stock at their event time (orders).
MARKETPLACE_CHANGE_TYPES = ("order_created", "order_cancelled")
#: Ledger change types the marketplace learns of only through a push.
LOCAL_CHANGE_TYPES = ("topup", "manual")
CHANGE_TYPES = MARKETPLACE_CHANGE_TYPES + LOCAL_CHANGE_TYPES

#: The largest quantity (or adjustment) one event may carry: a typo guard, far above any real order,
#: and far from the ledger's 32-bit columns.
MAX_QUANTITY = 100_000

#: The most events one batch message (``stock_events_batch``) carries: one transaction holds a row
#: lock per SKU until it commits, and a message stays well under Redis' comfortable sizes.
MAX_BATCH = 500

#: How far ahead of our clock an event time may be: a little clock skew, not a date typed wrong.  An
#: event "from the future" would stay on top of every stock snapshot until that time comes.
MAX_FUTURE = timedelta(minutes=5)

#: Column sizes of ``stock_ledger`` (db/models.py), and the note's and source's own limits: longer is
#: refused here, never cut there.
ID_CHARS, SKU_CHARS, TEXT_CHARS, SOURCE_CHARS, NOTE_CHARS, KEY_CHARS = 64, 200, 200, 32, 2000, 300
MARKETPLACE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class InvalidStockEvent(ValueError):
    """An event field is missing or wrong; ``field`` names it.  Permanent: retrying cannot help."""

    permanent = True

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


#: The producer API's name for the same error.
InvalidEvent = InvalidStockEvent


# -- field types -------------------------------------------------------------------------------------


def _no_bad_characters(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("blank", "must not be empty")
    # PostgreSQL text holds neither a NUL nor a lone surrogate (JSON's "\\ud800" decodes to one).
    if "\x00" in text:
        raise PydanticCustomError("nul", "must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("unicode", "must be valid Unicode text (it holds a lone surrogate)") from None
    return text


def _text(limit: int, description: str) -> Any:
    return Annotated[str, Field(strict=True, min_length=1, max_length=limit, description=description),
                     AfterValidator(_no_bad_characters)]


def _id_as_text(value: Any) -> Any:
    # Marketplace ids are integers (Back Market) or int64 as strings (Refurbed): kept as text.
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise PydanticCustomError("negative", "must not be negative, got {value}", {"value": value})
        return str(value)
    return value


def _non_zero(value: int) -> int:
    if value == 0:
        raise PydanticCustomError("zero", f"must be a non-zero integer within ±{MAX_QUANTITY}, got 0")
    return value


def parse_event_time(value: Any, now: datetime | None = None) -> datetime:
    """An event time (an aware datetime or an ISO 8601 string with a zone) in UTC, at most
    :data:`MAX_FUTURE` ahead of ``now``; raise :class:`InvalidStockEvent` naming ``event_time``."""
    try:
        return _EVENT_TIME.validate_python(value, context={"now": now})
    except ValidationError as error:
        raise _invalid(error, None) from None


def _iso_time(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError("iso_time", "must be an ISO 8601 time like 2026-11-23T09:35:24Z, got "
                                                  "{given}", {"given": repr(value[:40])}) from None
    if not isinstance(value, datetime):
        raise PydanticCustomError("time_type", "must be an ISO 8601 string or a datetime, got {kind}",
                                  {"kind": _type_name(value)})
    return value


def _utc_not_future(value: datetime, info: ValidationInfo) -> datetime:
    if value.utcoffset() is None:
        raise PydanticCustomError("naive_time", "must carry a time zone (e.g. Z or +01:00): a local time is "
                                                "ambiguous")
    now = _now(info)
    if value - now > MAX_FUTURE:
        raise PydanticCustomError("future", "is in the future ({time}, now {now})",
                                  {"time": value.isoformat(), "now": now.isoformat()})
    return value.astimezone(timezone.utc)


def _now(info: ValidationInfo) -> datetime:
    given = (info.context or {}).get("now")
    return given if given is not None else _wall_clock()


def _wall_clock() -> datetime:
    return datetime.now(timezone.utc)


Marketplace = Annotated[str, Field(strict=True, pattern=MARKETPLACE_PATTERN,
                                   description="a marketplace code like 'backmarket'")]
Sku = _text(SKU_CHARS, "the variation's SKU")
Identifier = Annotated[
    str, BeforeValidator(_id_as_text, json_schema_input_type=Union[
        Annotated[str, StringConstraints(min_length=1, max_length=ID_CHARS)], Annotated[int, Field(ge=0)]]),
    Field(strict=True, min_length=1, max_length=ID_CHARS), AfterValidator(_no_bad_characters)]
Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY, description="units")]
Change = Annotated[int, Field(strict=True, ge=-MAX_QUANTITY, le=MAX_QUANTITY, json_schema_extra={"not": {"const": 0}},
                              description="signed units, not 0"), AfterValidator(_non_zero)]
EventTime = Annotated[datetime, BeforeValidator(_iso_time, json_schema_input_type=datetime),
                      AfterValidator(_utc_not_future),
                      PlainSerializer(datetime.isoformat, return_type=str, when_used="json"),
                      Field(description="ISO 8601 with a zone; default now; at most 5 minutes ahead")]
def _restocked_value(value: Any) -> Any:
    # One clear message for every wrong kind (a union would name its first member's complaint).
    if isinstance(value, bool) or (isinstance(value, int) and 0 <= value <= MAX_QUANTITY):
        return value
    raise PydanticCustomError("restocked", "must be true, false or a count of units from 0 to the quantity, got "
                                           "{given}", {"given": _short(value)})


Restocked = Annotated[Union[StrictBool, Annotated[int, Field(strict=True, ge=0, le=MAX_QUANTITY)]],
                      BeforeValidator(_restocked_value),
                      Field(description="units the marketplace gave back itself: true (all), false (none) or a "
                                        "count up to quantity; absent: the account's restock_on_cancel")]
Reference = _text(TEXT_CHARS, "what makes it happen once (a delivery, a count): its idempotency key")
Person = _text(TEXT_CHARS, "who did it (on POST /events replaced by the producer's key id: producer:<id>)")
Note = _text(NOTE_CHARS, "free text")
Source = _text(SOURCE_CHARS, "where the order came from: api, webhook, poll (on POST /events replaced by the "
                                "producer's key id: producer:<id>)")

_EVENT_TIME = TypeAdapter(EventTime)


# -- the kinds ---------------------------------------------------------------------------------------


class _Fields(BaseModel):
    """What every kind shares: closed field sets, immutable, and "absent" and null alike."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Kind
    marketplace: Marketplace

    @model_validator(mode="before")
    @classmethod
    def _absent_is_null(cls, data: Any, info: ValidationInfo) -> Any:
        # A null is "not given": a required field then says "is required", an optional one takes
        # its default, and a missing event time is now (by the caller's clock when it gives one).
        if isinstance(data, Mapping):
            data = {name: value for name, value in data.items() if value is not None}
            data.setdefault("event_time", _now(info))
        return data


class _OrderLine(_Fields):
    order_id: Identifier
    order_line_id: Identifier
    sku: Sku
    quantity: Quantity
    event_time: EventTime = Field(default_factory=_wall_clock)
    source: Source = "api"


class OrderCreated(_OrderLine):
    """An order line took ``quantity`` units of ``sku`` (the marketplace lowered its own stock)."""

    type: Literal["order_created"]


class OrderCancelled(_OrderLine):
    """An order line was cancelled before shipping: its ``quantity`` units come back.

    ``restocked``: what the marketplace did with them, when it says (Shopify: the refund lines'
    restock type): how many it gave back itself (``true``: all, ``false``: none); the rest stocksync
    pushes.  Absent: the account's default (``restock_on_cancel``).
    """

    type: Literal["order_cancelled"]
    restocked: Restocked | None = None

    @field_validator("restocked")
    @classmethod
    def _within_quantity(cls, value: bool | int | None, info: ValidationInfo) -> bool | int | None:
        quantity = info.data.get("quantity")
        if type(value) is int and quantity is not None and value > quantity:
            raise PydanticCustomError("restocked_over", "must be at most the quantity ({quantity}), got {given}",
                                      {"quantity": quantity, "given": value})
        return value


class StockTopup(_Fields):
    """``quantity`` units of ``sku`` arrived; ``reference`` (the delivery) makes it happen once."""

    type: Literal["stock_topup"]
    sku: Sku
    quantity: Quantity
    reference: Reference
    actor: Person | None = None
    note: Note | None = None
    event_time: EventTime = Field(default_factory=_wall_clock)


class ManualAdjustment(_Fields):
    """A person moved ``sku``'s stock by ``change`` (either sign); ``reference`` makes it happen once."""

    type: Literal["manual_adjustment"]
    sku: Sku
    change: Change
    reference: Reference
    actor: Person | None = None
    note: Note | None = None
    event_time: EventTime = Field(default_factory=_wall_clock)


_KINDS: dict[str, type[_Fields]] = {"order_created": OrderCreated, "order_cancelled": OrderCancelled,
                                    "stock_topup": StockTopup, "manual_adjustment": ManualAdjustment}
#: Each kind's fields in order (the order of its actor's positional arguments), ``type`` aside.
FIELDS: dict[str, tuple[str, ...]] = {kind: tuple(name for name in model.model_fields if name != "type")
                                      for kind, model in _KINDS.items()}
AnyKind = Annotated[Union[OrderCreated, OrderCancelled, StockTopup, ManualAdjustment], Field(discriminator="type")]


def order_line_key(marketplace: str, order_line_id: str | None, change_type: str) -> str:
    """The idempotency key of an order line's event: one ``order_created`` and one ``order_cancelled``."""
    return f"{marketplace}:{order_line_id}:{change_type}"


class StockEvent(RootModel[AnyKind]):
    """One validated stock event of any kind, immutable; the ledger's view of it as properties.

    Build one with :meth:`of` (keyword fields), :meth:`from_json` (``{"type": ..., ...}``) or
    :meth:`from_message` (an actor's arguments); each raises :class:`InvalidStockEvent`.  ``now``
    (default the wall clock) is the clock the event time is checked against.
    """

    model_config = ConfigDict(frozen=True, title="StockEvent")

    @classmethod
    def of(cls, kind: str, *, now: datetime | None = None, **fields: Any) -> StockEvent:
        """The ``kind`` event with these fields."""
        return cls.from_json({**fields, "type": kind}, now=now)

    @classmethod
    def from_json(cls, data: Any, *, now: datetime | None = None) -> StockEvent:
        """The event in a decoded JSON object ``{"type": "<kind>", <fields>...}``."""
        if not isinstance(data, Mapping):
            raise InvalidStockEvent("event", f"must be a JSON object, got {_type_name(data)}")
        kind = data.get("type")
        if kind is None:
            raise InvalidStockEvent("type", f"is required: one of {', '.join(EVENT_KINDS)}")
        try:
            return cls.model_validate(data, context={"now": now})
        except ValidationError as error:
            raise _invalid(error, kind if isinstance(kind, str) and kind in _KINDS else None) from None

    @classmethod
    def from_message(cls, kind: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, *,
                     now: datetime | None = None) -> StockEvent:
        """The event a ``kind`` actor's message carries (positional arguments in :data:`FIELDS` order)."""
        fields = dict(kwargs or {})
        names = FIELDS.get(kind, ())
        if len(args) > len(names):
            raise InvalidStockEvent("arguments", f"{kind} takes at most {len(names)} positional arguments, got "
                                                 f"{len(args)}")
        for name, value in zip(names, args):
            if name in fields:
                raise InvalidStockEvent(name, "is given twice (positional and keyword)")
            fields[name] = value
        if "type" in fields:
            raise InvalidStockEvent("type", f"is not a field of {kind}: the actor's name is the kind")
        return cls.of(kind, now=now, **fields)

    # -- what it is --------------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """``order_created``, ``order_cancelled``, ``stock_topup`` or ``manual_adjustment``."""
        return self.root.type

    @property
    def fields(self) -> dict[str, Any]:
        """Its fields as JSON values (the keyword arguments of its actor's message)."""
        return self.root.model_dump(mode="json", exclude={"type"})

    @property
    def marketplace(self) -> str:
        return self.root.marketplace

    @property
    def sku(self) -> str:
        return self.root.sku

    @property
    def event_time(self) -> datetime:
        """When it happened, in UTC."""
        return self.root.event_time

    @property
    def quantity(self) -> int:
        """Its units (orders, top-ups); for a manual adjustment, the signed change."""
        return self.root.change if isinstance(self.root, ManualAdjustment) else self.root.quantity

    @property
    def order_id(self) -> str | None:
        return getattr(self.root, "order_id", None)

    @property
    def order_line_id(self) -> str | None:
        return getattr(self.root, "order_line_id", None)

    @property
    def reference(self) -> str | None:
        return getattr(self.root, "reference", None)

    @property
    def actor(self) -> str | None:
        """Who did it: the person of a top-up or adjustment, the source of an order (the ledger's ``actor``)."""
        return getattr(self.root, "actor", None) if self.source is None else self.source

    @property
    def note(self) -> str | None:
        return getattr(self.root, "note", None)

    @property
    def restocked(self) -> int | None:
        """A cancellation's units the marketplace gave back itself, when it said; None: the account's default."""
        value = getattr(self.root, "restocked", None)
        if isinstance(value, bool):
            return self.root.quantity if value else 0
        return value

    @property
    def source(self) -> str | None:
        """Where an order came from (``api``, ``webhook``, ``poll``); None for local events."""
        return getattr(self.root, "source", None)

    def booked_by(self, actor: str) -> StockEvent:
        """This event with ``actor`` as the ledger's actor (a channel's own name, e.g. ``producer:erp``).

        The actor of a local event, the source of an order: what the sender put there is replaced.
        Raises :class:`InvalidStockEvent` if ``actor`` does not fit the field.
        """
        field = "source" if self.source is not None else "actor"
        return StockEvent.from_json({**self.root.model_dump(), field: actor})

    # -- the ledger's view -------------------------------------------------------------------------

    @property
    def change_type(self) -> str:
        """The ledger's change type: ``order_created``, ``order_cancelled``, ``topup`` or ``manual``."""
        return CHANGE_TYPE_OF[self.kind]

    @property
    def change(self) -> int:
        """The signed change the event asks for (before any absorption)."""
        if isinstance(self.root, ManualAdjustment):
            return self.root.change
        return -self.root.quantity if self.kind == "order_created" else self.root.quantity

    @property
    def key(self) -> str:
        """The idempotency key: marketplace + order line + change type for orders, + reference otherwise."""
        if self.change_type in MARKETPLACE_CHANGE_TYPES:
            return order_line_key(self.marketplace, self.order_line_id, self.change_type)
        return f"{self.marketplace}:{self.change_type}:{self.reference}"


def make_event(kind: str, *, now: datetime | None = None, **fields: Any) -> StockEvent:
    """The ``kind`` event with these fields (the producer API's spelling of :meth:`StockEvent.of`)."""
    return StockEvent.of(kind, now=now, **fields)


def event_from_json(data: Any, *, now: datetime | None = None) -> StockEvent:
    """The event in a decoded JSON object (the signed endpoint's body); see :meth:`StockEvent.from_json`."""
    return StockEvent.from_json(data, now=now)


def check_sku(value: Any) -> str:
    """``value`` if it is a SKU the ledger can hold; :class:`InvalidStockEvent` naming ``sku`` otherwise."""
    try:
        return _SKU.validate_python(value)
    except ValidationError as error:
        problem = _problem(error.errors(include_url=False)[0], None)
        raise InvalidStockEvent("sku", problem) from None


_SKU = TypeAdapter(Sku)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one event, as committed in ``core/stock_event.schema.json``."""
    schema = StockEvent.model_json_schema()
    schema["description"] = ("A stocksync stock event. POST /events takes one, or {\"events\": [...]} (up to 1000), "
                             "signed with X-Stocksync-Signature. The ledger's actor of an event posted there is "
                             "the producer's key id (producer:<PRODUCER_KEY_ID>): an actor or source in the body "
                             "is accepted and replaced.")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# -- errors ------------------------------------------------------------------------------------------


def _invalid(error: ValidationError, kind: str | None) -> InvalidStockEvent:
    """The first problem pydantic found, as an :class:`InvalidStockEvent` naming the field."""
    details = error.errors(include_url=False)[0]
    loc = [part for part in details["loc"] if part not in _KINDS]  # a tagged union puts the kind first
    field = ".".join(str(part) for part in loc) or ("type" if details["type"].startswith("union_tag") else "event")
    return InvalidStockEvent(field, _problem(details, kind))


def _problem(details: dict, kind: str | None) -> str:
    what, ctx, given = details["type"], details.get("ctx") or {}, details.get("input")
    field = str(details["loc"][-1]) if details["loc"] else ""
    if what == "union_tag_not_found":
        return f"is required: one of {', '.join(EVENT_KINDS)}"
    if what == "union_tag_invalid":
        return f"must be one of {', '.join(EVENT_KINDS)}, got {_short(ctx.get('tag'))}"
    if what == "missing":
        return f"is required for {kind}" if kind else "is required"
    if what == "extra_forbidden":
        fields = f" (fields: {', '.join(FIELDS[kind])})" if kind else ""
        return f"is not a field of {kind or 'this event'}{fields}"
    if what == "string_pattern_mismatch":
        return f"must be a marketplace code like 'backmarket' (a-z, 0-9, _ or -), got {_short(given)}"
    if what == "string_type":
        if field == "marketplace":
            return f"must be a marketplace code like 'backmarket' (a-z, 0-9, _ or -), got {_short(given)}"
        return f"must be a string, got {_type_name(given)}"
    if what == "int_type":
        return f"must be an integer, got {_type_name(given)}"
    if what in ("unicode", "string_unicode"):
        return "must be valid Unicode text (it holds a lone surrogate)"
    if what == "string_too_short":
        return "must not be empty"
    if what == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters, got {len(given)}"
    if what in ("greater_than_equal", "less_than_equal"):
        if field == "change":
            return f"must be a non-zero integer within ±{MAX_QUANTITY}, got {given}"
        return f"must be an integer in 1..{MAX_QUANTITY}, got {given}"
    if what in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a JSON object, got {_type_name(given)}"
    return details["msg"]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any) -> str:
    if isinstance(value, (dict, list, tuple, set)):
        return f"a {_type_name(value)}"  # never the repr of what may be a huge or deeply nested value
    text = repr(value if not isinstance(value, str) else value[:100])
    return text if len(text) <= 60 else text[:57] + "..."


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2, ensure_ascii=False))
