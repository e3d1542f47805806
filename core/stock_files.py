"""Stock as files: the goods-received CSV read and checked (plain functions, no database), and the
export formats (CSV, JSON lines) of the stock and the ledger.

A goods-received file is a CSV with a header naming the columns ``sku``, ``account``, ``quantity`` and
``reference`` (any case, any order, more columns ignored; comma or semicolon separated, UTF-8).  Each
line is a top-up (``core.events`` ``stock_topup``) whose reference goes under the console's prefix
(:func:`core.console_rules.console_reference`), as the console's Top-up form books it: the ledger
keys an event by account and reference, so a line imported twice, by file or by form, books once.

:func:`parse_goods_received` reads the file (a whole-file problem raises :class:`StockFileError`, a
line's problem is a :class:`BadLine`); :func:`check_goods_received` checks the lines against what the
database knows (handed in: SKUs, accounts, booked keys) and builds their events.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timezone

from core.console_rules import console_reference
from core.events import MAX_QUANTITY, InvalidStockEvent, StockEvent, make_event
from core.platforms import Platform

#: The columns a goods-received file must have.
COLUMNS = ("sku", "account", "quantity", "reference")

#: Export formats: CSV (a header line, then one line per row) or JSON lines (one object per line).
FORMATS = ("csv", "jsonl")
MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}

#: Columns of the stock export (one row per account and SKU) and of the ledger export.
STOCK_COLUMNS = ("account", "sku", "quantity", "listing", "last_synced_at")
LEDGER_COLUMNS = ("id", "account", "sku", "change_type", "quantity_before", "quantity_after", "change", "order_id",
                  "order_line_id", "reference", "actor", "note", "sync_id", "event_time", "created_at")

_WHOLE_NUMBER = re.compile(r"^[+-]?\d+$")


class StockFileError(ValueError):
    """The file as a whole cannot be read: too big, not UTF-8 text, no header, a column missing."""


class FileTooBig(StockFileError):
    """The file is larger than the import takes."""


@dataclass(frozen=True)
class GoodsLine:
    """One readable line of a goods-received file (``line``: its line number in the file, the header is 1)."""

    line: int
    sku: str
    account: str
    quantity: int
    reference: str


@dataclass(frozen=True)
class BadLine:
    """A line that will not be booked, and why."""

    line: int
    reason: str


@dataclass(frozen=True)
class ParsedFile:
    """The readable lines of a file and the unreadable ones."""

    lines: tuple[GoodsLine, ...]
    bad: tuple[BadLine, ...]


@dataclass(frozen=True)
class ImportPreview:
    """What a confirm would book (each good line with its event) and every line it would not."""

    good: tuple[tuple[GoodsLine, StockEvent], ...]
    bad: tuple[BadLine, ...]

    @property
    def units(self) -> int:
        """The units the good lines add."""
        return sum(line.quantity for line, _ in self.good)

    @property
    def events(self) -> list[StockEvent]:
        return [event for _, event in self.good]

    def as_dict(self) -> dict:
        """JSON-able: the good lines, the bad ones, and the counts (the CLI's ``--json``)."""
        return {"good": [{"line": line.line, "sku": line.sku, "account": line.account, "quantity": line.quantity,
                          "reference": line.reference, "key": event.key} for line, event in self.good],
                "bad": [{"line": bad.line, "reason": bad.reason} for bad in self.bad],
                "lines": len(self.good) + len(self.bad), "units": self.units}


# -- reading the file ----------------------------------------------------------------------------------


def decode_text(data: bytes, *, max_bytes: int) -> str:
    """``data`` as text: at most ``max_bytes``, UTF-8 (a BOM is dropped), no NUL; :class:`StockFileError` otherwise."""
    if len(data) > max_bytes:
        raise FileTooBig(f"the file is {len(data)} bytes, more than the {max_bytes} allowed: split it")
    if b"\x00" in data:
        raise StockFileError("the file is not a text file (it holds NUL bytes): upload a CSV")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise StockFileError(f"the file is not UTF-8 text (byte {error.start + 1} cannot be read): save it as "
                             "'CSV UTF-8'") from None
    if not text.strip():
        raise StockFileError("the file is empty: it needs a header line (sku,account,quantity,reference) and lines")
    return text


def parse_goods_received(data: bytes, *, max_bytes: int) -> ParsedFile:
    """The lines of a goods-received CSV; every unreadable one named by its line number and why."""
    text = decode_text(data, max_bytes=max_bytes)
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except csv.Error as error:
        raise StockFileError(f"line 1 (the header) cannot be read: {error}") from None
    positions = _columns(header)
    lines: list[GoodsLine] = []
    bad: list[BadLine] = []
    seen: dict[tuple[str, str], int] = {}
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            bad.append(BadLine(reader.line_num, f"cannot be read as CSV: {error}"))
            break  # the reader cannot resume after a broken quote
        number = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        if len(cells) < len(header) or any(cell.strip() for cell in cells[len(header):]):
            bad.append(BadLine(number, f"has {len(cells)} cells, the header has {len(header)} (a separator "
                                       "inside a cell must be quoted)"))
            continue
        values = {name: cells[index].strip() for name, index in positions.items()}
        line, problem = _line(number, values)
        reference_key = (values["account"].lower(), values["reference"])
        if problem is None and reference_key in seen:
            problem = (f"duplicate reference {values['reference']!r} for account {values['account']!r}: line "
                       f"{seen[reference_key]} has it already")
        if values["reference"]:
            seen.setdefault(reference_key, number)
        if problem is not None:
            bad.append(BadLine(number, problem))
        else:
            lines.append(line)
    if not lines and not bad:
        raise StockFileError("the file has a header but no lines")
    return ParsedFile(tuple(lines), tuple(bad))


def _columns(header: list[str]) -> dict[str, int]:
    names = [cell.strip().lower() for cell in header]
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        raise StockFileError(f"line 1 (the header) has no column {', '.join(missing)}: the columns are "
                             f"{','.join(COLUMNS)}")
    twice = sorted({column for column in COLUMNS if names.count(column) > 1})
    if twice:
        raise StockFileError(f"line 1 (the header) names column {', '.join(twice)} twice")
    return {column: names.index(column) for column in COLUMNS}


def _line(number: int, values: dict[str, str]) -> tuple[GoodsLine | None, str | None]:
    for column in COLUMNS:
        if not values[column]:
            return None, f"{column} is empty"
    quantity = parse_quantity(values["quantity"])
    if isinstance(quantity, str):
        return None, quantity
    return GoodsLine(number, values["sku"], values["account"].lower(), quantity, values["reference"]), None


def parse_quantity(text: str) -> int | str:
    """A top-up's quantity (1 to :data:`core.events.MAX_QUANTITY`), or why ``text`` is not one."""
    if not _WHOLE_NUMBER.match(text) or len(text) > 20:
        return f"quantity must be a whole number, got {text[:40]!r}"
    quantity = int(text)
    if quantity == 0:
        return "quantity must be at least 1, got 0"
    if quantity < 0:
        return f"quantity must be at least 1, got {quantity} (a top-up adds stock: take stock out with an adjustment)"
    if quantity > MAX_QUANTITY:
        return f"quantity must be at most {MAX_QUANTITY}, got {quantity} (a typo?)"
    return quantity


# -- checking it against what the database knows ---------------------------------------------------------


@dataclass(frozen=True)
class AccountFacts:
    """What an import needs to know of an account: its platform and whether it is enabled."""

    platform: Platform
    enabled: bool


def check_goods_received(parsed: ParsedFile, *, skus: set[str], accounts: Mapping[str, AccountFacts],
                         booked: Callable[[list[str]], set[str]], actor: str, note: str | None = None,
                         now: datetime | None = None) -> ImportPreview:
    """Each readable line as a top-up event, or a bad line: an unknown SKU or account, a disabled one,
    one that cannot take a local change, a field the event refuses, a reference already booked.

    ``booked(keys)`` says which idempotency keys the ledger holds (asked once, for every candidate line).
    """
    bad = list(parsed.bad)
    candidates: list[tuple[GoodsLine, StockEvent]] = []
    for line in parsed.lines:
        problem = _account_problem(line.account, accounts.get(line.account))
        if problem is None and line.sku not in skus:
            problem = f"unknown SKU {line.sku[:60]!r} (no variation has it)"
        if problem is None:
            try:
                event = make_event("stock_topup", now=now, marketplace=line.account, sku=line.sku,
                                   quantity=line.quantity, reference=console_reference(line.reference),
                                   actor=actor, note=note)
            except InvalidStockEvent as invalid:
                problem = str(invalid)
            else:
                candidates.append((line, event))
                continue
        bad.append(BadLine(line.line, problem))
    already = booked([event.key for _, event in candidates]) if candidates else set()
    good = []
    for line, event in candidates:
        if event.key in already:
            bad.append(BadLine(line.line, f"reference {line.reference!r} is already booked on account "
                                          f"{line.account!r}"))
        else:
            good.append((line, event))
    return ImportPreview(tuple(good), tuple(sorted(bad, key=lambda item: item.line)))


def _account_problem(code: str, facts: AccountFacts | None) -> str | None:
    if facts is None:
        return f"unknown account {code[:64]!r}"
    if not facts.enabled:
        return f"account {code!r} is disabled"
    if not facts.platform.takes_local_changes:
        return (f"account {code!r} is on {facts.platform.title}, which cannot take a local change (stocksync "
                "cannot push it, and its next sync would erase it)")
    return None


# -- export formats --------------------------------------------------------------------------------------


def parse_bound(text: str | None, name: str) -> datetime | None:
    """A ``from`` / ``to`` bound: a date (its midnight, UTC) or an ISO 8601 time (UTC when it has no zone)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=timezone.utc)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} must be a date (2026-11-24) or an ISO 8601 time (2026-11-24T09:30:00Z), got "
                         f"{text[:40]!r}") from None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=timezone.utc)


def check_format(name: str) -> str:
    """``name`` if it is an export format; ValueError naming the formats otherwise."""
    if name not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {name[:20]!r}")
    return name


def header(columns: tuple[str, ...], fmt: str) -> str:
    """What a file starts with: the CSV header line; nothing for JSON lines."""
    return _csv([columns]) if fmt == "csv" else ""


def encode_rows(rows: Iterable[Mapping], columns: tuple[str, ...], fmt: str) -> str:
    """``rows`` (mappings holding ``columns``) as CSV lines or JSON lines; times in ISO 8601."""
    if fmt == "csv":
        return _csv([["" if row[column] is None else _text(row[column]) for column in columns] for row in rows])
    return "".join(json.dumps({column: _json(row[column]) for column in columns}, ensure_ascii=False) + "\n"
                   for row in rows)


def _csv(rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


#: What a spreadsheet reads as a formula at the start of a cell.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        # A SKU, note or reference typed by anyone must not run as a formula in the operator's spreadsheet
        # (OWASP's CSV injection advice): the leading quote keeps it text.  Numbers are left as they are.
        return "'" + value
    return str(value)


def _json(value):
    return value.isoformat() if isinstance(value, datetime) else value


__all__ = ["COLUMNS", "FORMATS", "LEDGER_COLUMNS", "MEDIA_TYPES", "STOCK_COLUMNS", "AccountFacts", "BadLine",
           "FileTooBig", "GoodsLine", "ImportPreview", "ParsedFile", "StockFileError", "check_format", "check_goods_received",
           "decode_text", "encode_rows", "header", "parse_bound", "parse_goods_received", "parse_quantity"]
