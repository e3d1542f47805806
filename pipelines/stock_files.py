"""Stock as files, end to end on the database: an import's preview (the file read and checked against
the catalogue, the accounts and the ledger) and an export's text, a page at a time.

Both the CLI (``stocksync stock import``, ``stock export``, ``ledger export``) and the console use these;
booking an import's events is the actors' (``actors.events.book_and_push``), as any top-up.
"""
from __future__ import annotations

from collections.abc import Iterator

from core import stock_files as files
from core.platforms import platform
from db import stock_files as queries
from db.accounts import list_accounts
from db.ledger import booked_keys
from runtime import resources

#: Rows per query of an export: the memory an export holds, whatever its size.
EXPORT_PAGE = 2000

#: What an export reads its pages with, by kind; and its columns.
EXPORTS = {"stock": (queries.stock_page, files.STOCK_COLUMNS), "ledger": (queries.ledger_page, files.LEDGER_COLUMNS)}


def preview_import(data: bytes, *, actor: str, max_bytes: int, note: str | None = None,
                   sessions=None) -> files.ImportPreview:
    """What importing ``data`` (a goods-received CSV) would book, and every line it would not.

    Raises :class:`core.stock_files.StockFileError` when the file as a whole cannot be read.  Books nothing.
    """
    parsed = files.parse_goods_received(data, max_bytes=max_bytes)
    with (sessions or resources.sessions())() as session:
        skus = queries.known_skus(session, [line.sku for line in parsed.lines])
        accounts = {row.code: files.AccountFacts(platform(row.platform), row.enabled)
                    for row in list_accounts(session)}
        return files.check_goods_received(parsed, skus=skus, accounts=accounts,
                                          booked=lambda keys: booked_keys(session, keys), actor=actor, note=note)


def export_chunks(kind: str, fmt: str, *, sessions=None, page: int = EXPORT_PAGE, **filters) -> Iterator[str]:
    """The ``kind`` export (``stock`` or ``ledger``) in ``fmt``, as text chunks of one page each."""
    read, columns = EXPORTS[kind]
    yield files.header(columns, fmt)
    after = 0
    while True:
        with (sessions or resources.sessions())() as session:
            rows = read(session, after_id=after, limit=page, **filters)
        if rows:
            yield files.encode_rows(rows, columns, fmt)
        if len(rows) < page:
            return
        after = rows[-1]["id"]


__all__ = ["EXPORTS", "EXPORT_PAGE", "export_chunks", "preview_import"]
