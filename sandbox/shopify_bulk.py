"""The Shopify sandbox's bulk query operations: ``bulkOperationRunQuery``, ``bulkOperation(id:)``,
``currentBulkOperation`` and the JSONL files they write.

What the sandbox does, as Shopify documents it (``Perform bulk operations with the GraphQL Admin
API``), simplified:

- the query is one top-level connection without ``first``/``after`` and without variables; it is
  parsed and validated against ``sandbox/shopify.graphql`` and really executed (the same resolvers
  as every query), its connections walked whole;
- the result is a JSONL file, one object per line: each connection's nodes on lines of their own
  (``edges``/``node`` dropped), a nested connection's nodes after their parent with
  ``__parentId`` (the parent's ``id``); plain nested objects stay inside their line;
- **when the quantities are read**: the sandbox executes the query at once, under the shop's
  lock, when the mutation runs: the file is a snapshot of that moment, its ``createdAt`` (a real
  shop reads while the operation runs, between ``createdAt`` and ``completedAt``);
- it then stays ``RUNNING`` for ``bulk_startup_s`` + its objects / ``bulk_objects_per_s`` before
  it is ``COMPLETED`` (the dials; an assumption, not a measured Shopify figure);
- the mutation costs 10 points and a poll 1 (``sandbox.shopify_cost``); the bulk query itself
  draws nothing from the bucket;
- at most ``bulk_max_running`` query operations run at once per shop (2026-01: five; before it
  one): one more is refused with the user error Shopify gives (``LIMIT_REACHED``, or
  ``OPERATION_IN_PROGRESS`` when only one may run);
- ``url`` is a signed link on the storage host (``storage_url``: by default the sandbox's own
  address, under ``/_storage/``, which takes no access token), valid ``bulk_url_ttl_s``; every
  poll signs a fresh one; an expired link is answered 403 ``ExpiredToken``.

Faults: :meth:`BulkOperations.fail_next` (the next operation ends ``FAILED`` with an
``errorCode``; half its lines at ``partialDataUrl``) and :meth:`BulkOperations.expire` (every
finished operation ``EXPIRED``: its file is gone, as seven days after on Shopify).
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from graphql import FieldNode, OperationDefinitionNode, OperationType, execute, get_named_type, parse, validate
from graphql.error import GraphQLError

from sandbox import shopify_graphql
from sandbox.shopify_graphql import gid, iso_datetime, parse_gid

if TYPE_CHECKING:
    from sandbox.shopify import ShopifySandbox

__all__ = ["BULK_ERROR_CODES", "BulkOperations", "STORAGE_PREFIX"]

#: Where the sandbox serves the files (no access token: a storage host's signed links).
STORAGE_PREFIX = "/_storage/bulk/"
BULK_OPERATION_ID_BASE = 726_270_413
#: ``BulkOperationErrorCode``.
BULK_ERROR_CODES = ("ACCESS_DENIED", "INTERNAL_SERVER_ERROR", "TIMEOUT")


@dataclass
class _Operation:
    id: int
    query: str
    created_at: datetime
    done_at: float  # on the sandbox's monotonic clock
    duration_s: float
    objects: int
    roots: int
    path: Path
    size: int
    error_code: str | None = None
    expired: bool = False


class BulkOperations:
    """The bulk query operations of one shop; every ``*_locked`` method runs under the shop's lock."""

    def __init__(self, shop: ShopifySandbox, clock: Callable[[], float]) -> None:
        self._shop = shop
        self._clock = clock
        self._ids = itertools.count(BULK_OPERATION_ID_BASE)
        self._operations: dict[int, _Operation] = {}
        self._fail_next: str | None = None
        self._key = os.urandom(16)
        self._directory: Path | None = None

    # -- faults --------------------------------------------------------------------------------------

    def fail_next_locked(self, error_code: str) -> None:
        """The next operation ends ``FAILED`` with ``error_code`` (a ``BulkOperationErrorCode``)."""
        if error_code not in BULK_ERROR_CODES:
            raise ValueError(f"error_code must be one of {', '.join(BULK_ERROR_CODES)}, got {error_code!r}")
        self._fail_next = error_code

    def expire_locked(self) -> int:
        """Every finished operation ``EXPIRED`` (its file gone); how many."""
        now = self._clock()
        expired = [op for op in self._operations.values() if op.done_at <= now and not op.expired]
        for op in expired:
            op.expired = True
        return len(expired)

    # -- GraphQL -------------------------------------------------------------------------------------

    def run_locked(self, query: str, dials: dict[str, Any], storage_url: str) -> dict[str, Any]:
        """``bulkOperationRunQuery``: the payload (the new operation, or the user errors)."""
        now = self._clock()
        running = [op for op in self._operations.values() if op.done_at > now]
        if len(running) >= dials["bulk_max_running"]:
            if dials["bulk_max_running"] == 1:
                return _refused("OPERATION_IN_PROGRESS", "A bulk query operation for this app and shop is "
                                f"already in progress: {gid('BulkOperation', running[0].id)}.")
            return _refused("LIMIT_REACHED", "Bulk operations limit reached. Please try again later.")
        try:
            data = _execute(self._shop, query)
        except GraphQLError as error:
            return _refused("INVALID", f"Invalid bulk query: {error.message}")
        lines = list(_flatten(data))
        op_id = next(self._ids)
        path = self._write(op_id, lines)
        duration = dials["bulk_startup_s"] + len(lines) / dials["bulk_objects_per_s"]
        op = _Operation(op_id, query, self._shop.now(), now + duration, duration, len(lines),
                        sum("__parentId" not in line for line in lines), path, path.stat().st_size,
                        error_code=self._fail_next)
        self._fail_next = None
        self._operations[op_id] = op
        return {"bulkOperation": self._view(op, dials, storage_url), "userErrors": []}

    def view_locked(self, op_id: str, dials: dict[str, Any], storage_url: str) -> dict[str, Any] | None:
        """``bulkOperation(id:)``: one operation, or None."""
        op = self._operations.get(parse_gid(op_id, "BulkOperation"))
        return None if op is None else self._view(op, dials, storage_url)

    def current_locked(self, kind: str, dials: dict[str, Any], storage_url: str) -> dict[str, Any] | None:
        """``currentBulkOperation``: the most recent one (the sandbox runs queries only)."""
        if kind != "QUERY" or not self._operations:
            return None
        return self._view(self._operations[max(self._operations)], dials, storage_url)

    def _view(self, op: _Operation, dials: dict[str, Any], storage_url: str) -> dict[str, Any]:
        done = self._clock() >= op.done_at
        status = "RUNNING" if not done else "EXPIRED" if op.expired else "FAILED" if op.error_code else "COMPLETED"
        # While running, the counts grow with the time spent (the file is written as it goes).
        share = 1.0 if done else min(1.0, max(0.0, 1 - (op.done_at - self._clock()) / op.duration_s))
        link = None
        if done and not op.expired:
            link = self._sign(op, dials["bulk_url_ttl_s"], storage_url, partial=op.error_code is not None)
        return {"id": gid("BulkOperation", op.id), "type": "QUERY", "status": status,
                "errorCode": op.error_code if done else None, "query": op.query,
                "createdAt": iso_datetime(op.created_at),
                "completedAt": iso_datetime(op.created_at + timedelta(seconds=op.duration_s)) if done else None,
                "objectCount": str(int(op.objects * share)), "rootObjectCount": str(int(op.roots * share)),
                "fileSize": str(op.size) if status == "COMPLETED" else None,
                "url": link if status == "COMPLETED" else None,
                "partialDataUrl": link if status == "FAILED" else None}

    # -- files ---------------------------------------------------------------------------------------

    def _write(self, op_id: int, lines: list[dict[str, Any]]) -> Path:
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="shopify-bulk-"))
        path = self._directory / f"{op_id}.jsonl"
        with path.open("w", encoding="utf-8") as file:
            for line in lines:
                file.write(json.dumps(line, separators=(",", ":")) + "\n")
        return path

    def _sign(self, op: _Operation, ttl_s: float, storage_url: str, *, partial: bool) -> str:
        expires = int(self._shop.now().timestamp() + ttl_s)
        name = f"{op.id}{'-partial' if partial else ''}.jsonl"
        return f"{storage_url}{STORAGE_PREFIX}{name}?Expires={expires}&Signature={self._signature(name, expires)}"

    def _signature(self, name: str, expires: int) -> str:
        return hmac.new(self._key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def file_locked(self, name: str, expires: str, signature: str) -> tuple[int, Path | str, int | None]:
        """What the storage host answers for a link: ``(200, path, bytes to serve)``, or ``(status, message, None)``."""
        try:
            expiry = int(expires)
        except ValueError:
            return 400, "Expires must be an integer", None
        if not hmac.compare_digest(signature.encode(), self._signature(name, expiry).encode()):
            return 403, "SignatureDoesNotMatch", None
        if self._shop.now().timestamp() > expiry:
            return 403, "ExpiredToken: the signed link has expired", None
        number = name.removesuffix(".jsonl").removesuffix("-partial")
        op = self._operations.get(int(number)) if number.isdigit() else None
        if op is None or op.expired:
            return 404, "NoSuchKey", None
        # A failed operation's partial data: the first half of its lines.
        return 200, op.path, _partial_size(op.path) if name.endswith("-partial.jsonl") else None

    def close(self) -> None:
        """Delete the files."""
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


def _partial_size(path: Path) -> int:
    with path.open("rb") as file:
        lines = file.readlines()
    return sum(len(line) for line in lines[:len(lines) // 2])


def _refused(code: str, message: str) -> dict[str, Any]:
    return {"bulkOperation": None, "userErrors": [{"code": code, "field": ["query"], "message": message}]}


def _execute(shop: ShopifySandbox, query: str) -> dict[str, Any]:
    """Run a bulk query (the shop's lock held): its data.  Raises :class:`GraphQLError` when it is not one."""
    document = parse(query)
    errors = validate(shopify_graphql.schema, document)
    if errors:
        raise errors[0]
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if len(operations) != 1 or operations[0].operation != OperationType.QUERY:
        raise GraphQLError("a bulk query is one query operation")
    operation = operations[0]
    if operation.variable_definitions:
        raise GraphQLError("a bulk query takes no variables")
    fields = [s for s in operation.selection_set.selections if isinstance(s, FieldNode)]
    if len(fields) != 1 or len(operation.selection_set.selections) != 1:
        raise GraphQLError("a bulk query selects one top-level field")
    definition = shopify_graphql.schema.query_type.fields[fields[0].name.value]
    if not get_named_type(definition.type).name.endswith("Connection"):
        raise GraphQLError(f"the top-level field {fields[0].name.value!r} is not a connection")
    token = shopify_graphql.BULK.set(True)
    try:
        result = execute(shopify_graphql.schema, document, context_value=shop)
    finally:
        shopify_graphql.BULK.reset(token)
    if result.errors:
        raise result.errors[0]
    return result.data or {}


def _is_connection(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and set(value) <= {"edges", "nodes", "pageInfo"} and (
        isinstance(value.get("edges"), list) or isinstance(value.get("nodes"), list))


def _nodes(connection: dict[str, Any]) -> list[dict[str, Any]]:
    if isinstance(connection.get("edges"), list):
        return [edge["node"] for edge in connection["edges"] if isinstance(edge, dict) and edge.get("node")]
    return [node for node in connection["nodes"] if node]


def _flatten(data: dict[str, Any]):
    """The JSONL objects of a bulk query's data, each parent before its children."""
    (top,) = data.values()
    for node in _nodes(top):
        yield from _lines(node, None)


def _lines(node: dict[str, Any], parent: str | None):
    children: list[dict[str, Any]] = []
    line = _strip(node, children)
    if parent is not None:
        line["__parentId"] = parent
    yield line
    for connection in children:
        for child in _nodes(connection):
            yield from _lines(child, node.get("id"))


def _strip(value: dict[str, Any], children: list[dict[str, Any]]) -> dict[str, Any]:
    """``value`` without its connections (collected in ``children``), nested objects kept inline."""
    kept: dict[str, Any] = {}
    for key, item in value.items():
        if _is_connection(item):
            children.append(item)
        elif isinstance(item, dict):
            kept[key] = _strip(item, children)
        else:
            kept[key] = item
    return kept
