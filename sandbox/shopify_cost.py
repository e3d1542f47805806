"""Shopify's calculated query cost and its leaky bucket, as the Shopify sandbox applies them.

Shopify's rules (``GraphQL Admin API rate limits``), simplified and stated here:

- a scalar or enum field costs 0; an object field 1 plus what is selected in it;
- a connection (a type named ``...Connection``) costs 2 plus, for each item, what one item's
  selection costs: requested with ``first`` (or ``last``) items, actually with the items returned
  (``edges`` and ``pageInfo`` are part of the 2, each ``node`` costs as an object);
- a plain list of objects costs one element when requested and each element returned actually;
- a top-level mutation field costs 10, whatever it selects; ``__typename`` and introspection 0.

The bucket is Shopify's standard plan (``maximumAvailable`` 2000 points, ``restoreRate`` 100
points a second): a query whose requested cost is over what is available is refused
(``THROTTLED``) and takes nothing; one that runs takes its requested cost, then gets back the
difference to its actual cost.  A single query may not request more than 1000 points.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)

__all__ = ["CostBucket", "MAX_QUERY_COST", "MUTATION_COST", "query_cost"]

#: Shopify's standard plan: the bucket's size and how many points come back each second.
STANDARD_MAXIMUM_AVAILABLE = 2000.0
STANDARD_RESTORE_RATE = 100.0
#: The most one query may request.
MAX_QUERY_COST = 1000
#: What one top-level mutation field costs.
MUTATION_COST = 10
CONNECTION_COST = 2


class CostBucket:
    """Shopify's leaky bucket of query-cost points (not thread-safe: the sandbox calls it under its lock)."""

    def __init__(self, maximum: float = STANDARD_MAXIMUM_AVAILABLE, restore_rate: float = STANDARD_RESTORE_RATE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.maximum = float(maximum)
        self.restore_rate = float(restore_rate)
        self._available = self.maximum
        self._at = clock()

    def reconfigure(self, maximum: float, restore_rate: float) -> None:
        """New figures; what is available is kept, capped at the new maximum."""
        self._refill()
        self.maximum, self.restore_rate = float(maximum), float(restore_rate)
        self._available = min(self._available, self.maximum)

    def available(self) -> float:
        """The points available now."""
        self._refill()
        return self._available

    def take(self, points: float) -> bool:
        """Take ``points`` if that many are available (True), else take nothing (False)."""
        self._refill()
        if points > self._available:
            return False
        self._available -= points
        return True

    def give_back(self, points: float) -> None:
        """Return points taken but not spent (a requested cost above the actual one)."""
        self._refill()
        self._available = min(self.maximum, self._available + max(0.0, points))

    def throttle_status(self) -> dict[str, float]:
        """``extensions.cost.throttleStatus`` as Shopify writes it."""
        return {"maximumAvailable": self.maximum, "currentlyAvailable": int(self.available()),
                "restoreRate": self.restore_rate}

    def _refill(self) -> None:
        now = self._clock()
        self._available = min(self.maximum, self._available + (now - self._at) * self.restore_rate)
        self._at = now


def query_cost(schema: GraphQLSchema, operation: OperationDefinitionNode,
               fragments: dict[str, FragmentDefinitionNode], variables: dict[str, Any] | None,
               data: dict[str, Any] | None = None) -> int:
    """The cost of ``operation``: requested when ``data`` is None, else actual for the ``data`` it answered."""
    if operation.operation == OperationType.MUTATION:
        return MUTATION_COST * sum(1 for _ in _fields(operation.selection_set, schema.mutation_type, schema, fragments))
    walker = _Walker(schema, fragments, variables or {})
    return walker.selection(operation.selection_set, schema.query_type, data, requested=data is None)


class _Walker:
    def __init__(self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode],
                 variables: dict[str, Any]) -> None:
        self.schema, self.fragments, self.variables = schema, fragments, variables

    def selection(self, selection_set: SelectionSetNode | None, parent: GraphQLObjectType, data: Any,
                  requested: bool) -> int:
        if selection_set is None:
            return 0
        total = 0
        for node, owner in _fields(selection_set, parent, self.schema, self.fragments):
            name = node.name.value
            if name.startswith("__"):
                continue
            definition = owner.fields[name]
            value = None if requested else (data or {}).get(node.alias.value if node.alias else name)
            total += self.field(node, definition, value, requested)
        return total

    def field(self, node: FieldNode, definition: Any, value: Any, requested: bool) -> int:
        named = get_named_type(definition.type)
        if not isinstance(named, GraphQLObjectType):
            return 0
        if named.name.endswith("Connection"):
            return self.connection(node, definition, named, value, requested)
        if _is_list(definition.type):
            if requested:
                return 1 + self.selection(node.selection_set, named, None, True)
            return sum(1 + self.selection(node.selection_set, named, item, False) for item in value or [] if item)
        if requested:
            return 1 + self.selection(node.selection_set, named, None, True)
        return 0 if value is None else 1 + self.selection(node.selection_set, named, value, False)

    def connection(self, node: FieldNode, definition: Any, connection: GraphQLObjectType, value: Any,
                   requested: bool) -> int:
        if not requested and value is None:
            return 0
        total = CONNECTION_COST
        size = self.int_argument(node, "first") or self.int_argument(node, "last") or 0
        for sub, owner in _fields(node.selection_set, connection, self.schema, self.fragments):
            name = sub.name.value
            if name not in ("edges", "nodes"):
                continue  # pageInfo and __typename are in the connection's own cost
            item_type = get_named_type(owner.fields[name].type)
            if requested:
                total += size * self.item(name, sub, item_type, None, True)
            else:
                items = value.get(sub.alias.value if sub.alias else name) or []
                total += sum(self.item(name, sub, item_type, item, False) for item in items)
        return total

    def int_argument(self, node: FieldNode, name: str) -> int | None:
        """An Int argument's value, written in the query or given as a variable (validation ran before)."""
        for argument in node.arguments or ():
            if argument.name.value != name:
                continue
            if isinstance(argument.value, IntValueNode):
                return int(argument.value.value)
            if isinstance(argument.value, VariableNode):
                value = self.variables.get(argument.value.name.value)
                return value if isinstance(value, int) and not isinstance(value, bool) else None
        return None

    def item(self, name: str, node: FieldNode, item_type: GraphQLObjectType, item: Any, requested: bool) -> int:
        if name == "nodes":
            return 1 + self.selection(node.selection_set, item_type, item, requested)
        return self.selection(node.selection_set, item_type, item, requested)  # an edge: its node costs


def _is_list(field_type: Any) -> bool:
    while isinstance(field_type, GraphQLNonNull):
        field_type = field_type.of_type
    return isinstance(field_type, GraphQLList)


def _fields(selection_set: SelectionSetNode | None, parent: GraphQLObjectType, schema: GraphQLSchema,
            fragments: dict[str, FragmentDefinitionNode]):
    """The field nodes of a selection set, fragments spread, each with the object type it selects from."""
    for selection in (selection_set.selections if selection_set else ()):
        if isinstance(selection, FieldNode):
            yield selection, parent
        elif isinstance(selection, InlineFragmentNode):
            owner = schema.get_type(selection.type_condition.name.value) if selection.type_condition else parent
            yield from _fields(selection.selection_set, owner, schema, fragments)
        elif isinstance(selection, FragmentSpreadNode):
            fragment = fragments[selection.name.value]
            yield from _fields(fragment.selection_set, schema.get_type(fragment.type_condition.name.value), schema,
                               fragments)
