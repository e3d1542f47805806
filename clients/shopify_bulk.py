"""Shopify bulk query operations: start one, poll it, read its JSONL file a page at a time.

``bulkOperationRunQuery`` (10 points) starts a query over a whole connection in the background;
``bulkOperation(id:)`` (1 point, 2026-01) says how it goes and, once ``COMPLETED``, gives ``url``:
a signed link to a JSONL file on Shopify's storage host, not the shop's.  That file is read with a
plain GET on the process's session **without** the access token (the credential goes to the
shop's host only, ``clients/http.py``), no redirects followed, from a byte offset (``Range``), one
page of lines at a time, never the whole file in memory.

A walk through a file is a cursor, ``bulk:<operation number>:<byte offset>``, so it rides the one
catalogue pipeline's cursor chain: each page keeps the next one's cursor in PostgreSQL, and a
resumed walk asks for the operation again (a fresh link) and reads on from that offset.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from clients.errors import ApiError, BadRequest, MalformedResponse, TransportError
from clients.http import RequestRecord, json_kind
from clients.shopify import API, GRAPHQL, ShopifyClient, gid, gid_number

#: The cursor of a page 1 that starts a bulk operation instead of reading a page.
BULK_START = "bulk:start"

RUN_MUTATION = """mutation StocksyncBulkRun($query: String!) {
  bulkOperationRunQuery(query: $query) {
    bulkOperation { id status createdAt }
    userErrors { field message code }
  }
}"""

OPERATION_QUERY = """query StocksyncBulkOperation($id: ID!) {
  bulkOperation(id: $id) { id status errorCode objectCount url partialDataUrl createdAt completedAt }
}"""

#: Route name of a file read in errors and records (never its signed URL).
FILE_ROUTE = "GET <bulk operation file>"

#: Statuses after which an operation will not change any more.
FINISHED = frozenset({"COMPLETED", "FAILED", "CANCELED", "EXPIRED"})

_CURSOR = re.compile(r"bulk:(\d+):(\d+)")


@dataclass(frozen=True)
class BulkOperation:
    """A bulk operation as stocksync needs it; times are Shopify's ISO 8601 strings."""

    id: str
    status: str
    created_at: str
    error_code: str | None = None
    object_count: int = 0
    url: str | None = None
    completed_at: str | None = None

    @property
    def number(self) -> str:
        """The operation's number (its GID's)."""
        return gid_number(self.id, "BulkOperation")


@dataclass(frozen=True)
class FilePage:
    """Lines of a bulk file (decoded) and the byte offset of the next one (None: the file ended)."""

    lines: list[dict[str, Any]]
    next_offset: int | None


def cursor(number: str, offset: int) -> str:
    """The walk's cursor at ``offset`` bytes into operation ``number``'s file."""
    return f"bulk:{number}:{offset}"


def parse_cursor(value: str) -> tuple[str, int]:
    """``(operation number, byte offset)`` of a walk's cursor; ValueError when it is not one."""
    found = _CURSOR.fullmatch(value)
    if found is None:
        raise ValueError(f"not a bulk cursor: {value[:40]!r}")
    return found.group(1), int(found.group(2))


async def start(client: ShopifyClient, query: str) -> BulkOperation:
    """Run ``query`` as a bulk operation; a user error (one already running, an invalid query) is a BadRequest."""
    data = await client.execute(RUN_MUTATION, {"query": query}, name="bulk-run", estimate=10)
    payload = data.get("bulkOperationRunQuery")
    if not isinstance(payload, dict):
        raise _malformed(f"bulkOperationRunQuery: expected an object, got {json_kind(payload)}")
    errors = payload.get("userErrors") or []
    if errors:
        described = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors if isinstance(e, dict))
        raise BadRequest(f"bulkOperationRunQuery refused: {described}"[:300], api=API, endpoint=GRAPHQL, status=200,
                         code=str(errors[0].get("code")) if isinstance(errors[0], dict) else None)
    return _operation(payload.get("bulkOperation"))


async def operation(client: ShopifyClient, number: str) -> BulkOperation:
    """Bulk operation ``number`` now (a fresh file link when it is COMPLETED)."""
    data = await client.execute(OPERATION_QUERY, {"id": gid("BulkOperation", number)}, name="bulk-poll", estimate=1)
    found = data.get("bulkOperation")
    if found is None:
        raise ApiError(f"no bulk operation {number} on this shop", api=API, endpoint=GRAPHQL, status=200,
                       code="NOT_FOUND")
    return _operation(found)


async def read_lines(client: ShopifyClient, url: str, offset: int, count: int, *, timeout_s: float = 60
                     ) -> FilePage:
    """Up to ``count`` lines of a bulk file from byte ``offset``, streamed; no credential sent.

    Raises:
      ApiError: The storage host refused the link (an expired or bad signature: transient, the
        caller asks Shopify for the operation again and gets a fresh one) or answered an error.
      MalformedResponse: A line that is not a JSON object.  TransportError: No complete answer.
    """
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    started, status = time.monotonic(), None
    try:
        # A plain GET: the storage host gets no access token and no redirect is followed.
        async with client.session.get(url, headers=headers, allow_redirects=False,
                                      timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            status = response.status
            if status == 416:  # the offset is the file's end
                return FilePage([], None)
            if status not in (200, 206):
                body = (await response.content.read(300)).decode("utf-8", errors="replace")
                raise ApiError(f"the bulk file's host answered {status}: {_error_code(body)}", api=API,
                               endpoint=FILE_ROUTE, status=status, permanent=False)
            position = offset
            if status == 200 and offset:  # Range ignored: skip to the offset
                await response.content.readexactly(offset)
            total = _total_size(response, offset)
            lines: list[dict[str, Any]] = []
            while len(lines) < count:
                raw = await response.content.readline()
                if not raw:
                    return FilePage(lines, None)
                position += len(raw)
                lines.append(_line(raw, position))
            return FilePage(lines, None if total is not None and position >= total else position)
    except (TimeoutError, aiohttp.ClientError, ValueError) as error:
        status = None
        # The link's query is its signature (a bearer of the shop's data): never in an error.
        said = str(error).replace(url, url.split("?", 1)[0]).replace(url.split("?", 1)[-1], "<signature>")
        raise TransportError(f"reading the bulk file: {type(error).__name__}: {said}"[:300], api=API,
                             endpoint=FILE_ROUTE) from None
    finally:
        if client.on_request is not None:
            client.on_request(RequestRecord(API, FILE_ROUTE, status, 1, time.monotonic() - started, 0.0))


def _error_code(body: str) -> str:
    """A storage host's error, by its code only: its body may echo the signed request (the link's secret)."""
    found = re.search(r"<Code>([A-Za-z]{1,64})</Code>", body) or re.match(r"([A-Za-z]{1,64})(?::|$)", body.strip())
    return found.group(1) if found else "(body not shown)"


def _total_size(response: aiohttp.ClientResponse, offset: int) -> int | None:
    """The file's size: from ``Content-Range`` (``bytes a-b/total``), else what is left plus the offset."""
    found = re.fullmatch(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if found:
        return int(found.group(1))
    return None if response.content_length is None else response.content_length + offset


def _line(raw: bytes, position: int) -> dict[str, Any]:
    try:
        line = json.loads(raw)
    except ValueError:
        line = None
    if not isinstance(line, dict):
        raise MalformedResponse(f"the bulk file's line ending at byte {position} is not a JSON object", api=API,
                                endpoint=FILE_ROUTE, status=200)
    return line


def _operation(value: Any) -> BulkOperation:
    if not isinstance(value, dict) or not isinstance(value.get("status"), str) or \
            not isinstance(value.get("createdAt"), str):
        raise _malformed(f"bulkOperation: expected an object with a status and createdAt, got {json_kind(value)}")
    gid_number(value.get("id"), "BulkOperation")
    try:
        count = int(value.get("objectCount") or 0)
    except (TypeError, ValueError):
        raise _malformed("bulkOperation.objectCount must be an integer") from None
    return BulkOperation(value["id"], value["status"], value["createdAt"], value.get("errorCode"), count,
                         value.get("url"), value.get("completedAt"))


def _malformed(message: str) -> MalformedResponse:
    return MalformedResponse(message, api=API, endpoint=GRAPHQL, status=200)


__all__ = ["BULK_START", "BulkOperation", "FINISHED", "FilePage", "OPERATION_QUERY", "RUN_MUTATION", "cursor",
           "operation", "parse_cursor", "read_lines", "start"]
