"""Bulk stock sync benchmark: end to end, and the set-based apply against the old per-row pattern.

    .venv/bin/python bench/bulk_sync.py [--listings 100000] [--processes 2] [--threads 8]
                                        [--baseline-rows 5000] [--skip-e2e] [--statements]
                                        [--reads-attempts 3] [--ledger-index]

1. End to end: N sandbox listings (unthrottled) → real ``dramatiq`` worker processes on a real
   Redis → a real PostgreSQL (durable settings: fsync on).  Prints the wall time of the sync.
2. Apply step, same data, same database server, one connection each:
   - set-based: ``db.snapshot.apply_page`` per page of 50 (one transaction per page);
   - per-row (the old system): per listing SELECT the stock row, UPDATE it, INSERT a history row,
     COMMIT.  Run on the first ``--baseline-rows`` rows (it is slow by design).
   Prints rows/s for both and the ratio.
3. What keeping the marketplace's reads costs (``listing_reads``, the timeline's reads): the set-based
   apply with and without them, same data, same server, each into a new database: a first sync
   (every row's first read is written), then a second sync where one row in ten changed (only those
   are written; the others cost the lookup of their previous read).  Prints rows/s of both and the
   cost in per cent.  With ``--statements``, also where the set-based
   apply's time goes: each statement's mean client-side time per page (timed by SQLAlchemy
   cursor events around every statement, so the rows/s of that run include the timing itself).
4. With ``--ledger-index``, only this: what the SKU timeline's indexes (migration 0016:
   ``stock_ledger (stock_id, created_at) INCLUDE (id)``, and the reads' ``(stock_id, read_at)`` index
   carrying ``INCLUDE (id, quantity)``) cost the apply, measured as 3. is, with them and without.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import event, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from db.engine import session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.snapshot import PageItem, apply_page, ensure_marketplace  # noqa: E402
from db.syncs import SyncPolicy, begin_run  # noqa: E402
from runtime.local_servers import PostgresServer, RedisServer, wait_until  # noqa: E402
from sandbox.backmarket import BackMarketSandbox  # noqa: E402
from sandbox.server import serve_in_thread  # noqa: E402
from tests.fleet import WorkerFleet, fleet_env  # noqa: E402

PAGE = 50
DURABLE = ("synchronous_commit=on",)


def end_to_end(folder: Path, pg: PostgresServer, redis: RedisServer, listings: int, processes: int,
               threads: int) -> dict:
    """Sync ``listings`` sandbox listings through real worker processes; return the run's figures."""
    url = pg.create_database("bench_e2e")
    upgrade(url)
    sandbox = BackMarketSandbox(listings=listings, seed=5, token="bench-token", quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    env = fleet_env(redis_url=redis.url, database_url=url, backmarket_url=server.url, token="bench-token")
    fleet = WorkerFleet(env, processes=processes, threads=threads, log_path=folder / "workers.log").start()
    os.environ.update(env)
    from runtime.settings import get_settings

    get_settings.cache_clear()
    from actors.stock_sync import begin_stock_sync
    from db.syncs import get_run

    sessions = session_factory(url)
    try:
        # Let the workers boot before the clock starts: we time the sync, not Python start-up.
        wait_until(lambda: "Worker process is ready" in (folder / "workers.log").read_text(errors="ignore")
                   or "is ready for action" in (folder / "workers.log").read_text(errors="ignore"), 60,
                   what="workers to boot")
        started = time.perf_counter()
        sync_id = begin_stock_sync("backmarket", trigger="manual", force=True)

        def done():
            with sessions() as session:
                return get_run(session, sync_id).status != "running"

        wait_until(done, 600, interval=0.05, what="the sync to finish")
        elapsed = time.perf_counter() - started
        with sessions() as session:
            run = get_run(session, sync_id)
            truth = sandbox.quantities()
            local = dict(session.execute(text("SELECT l.external_id, s.listed FROM listings l JOIN marketplace_stock s "
                                              "ON s.variation_id = l.variation_id")).all())
        return {"status": run.status, "seconds": elapsed, "pages": run.pages_done, "items": run.items,
                "api_calls": run.api_calls, "retries": run.retries, "correct": local == truth,
                "requests_at_sandbox": sandbox.stats()["total_requests"] if callable(getattr(sandbox, "stats", None))
                else None}
    finally:
        fleet.stop()
        server.stop()


def page_items(listings: int) -> list[list[PageItem]]:
    """The benchmark's data: ``listings`` items in pages of 50, from the sandbox catalogue."""
    sandbox = BackMarketSandbox(listings=listings, seed=9, token="x", quota_requests=0)
    rows = [sandbox.listing(i) for i in range(listings)]
    items = [PageItem(r["id"], r["listing_id"], r["sku"], r["title"], int(r["quantity"]), r["publication_state"],
                      r["price"], r["currency"]) for r in rows]
    return [items[i:i + PAGE] for i in range(0, len(items), PAGE)]


#: The index on the ledger the SKU chart's range reads would use (bench/timeline.py), its cost weighed here.
#: The schema without the SKU timeline's indexes of migration 0016 (the reads' index as it was before).
WITHOUT_TIMELINE_INDEXES = ("DROP INDEX ix_stock_ledger_stock_created", "DROP INDEX ix_listing_reads_stock_read_ids",
                            "CREATE INDEX ix_listing_reads_stock_read ON listing_reads (stock_id, read_at)")


def set_based(pg: PostgresServer, pages: list[list[PageItem]], database: str = "bench_set",
              keep_reads: bool = True, resync: list[list[PageItem]] | None = None,
              timeline_indexes: bool = True) -> float | tuple[float, float]:
    """Rows/s of ``apply_page``, one transaction per page, into a new database ``database``; with ``resync``,
    the rows/s of a second sync of those pages too; not ``timeline_indexes``: :data:`WITHOUT_TIMELINE_INDEXES`."""
    url = pg.create_database(database)
    upgrade(url)
    sessions = session_factory(url)
    if not timeline_indexes:
        with sessions() as session:
            for statement in WITHOUT_TIMELINE_INDEXES:
                session.execute(text(statement))
            session.commit()
    with sessions() as session:
        marketplace_id = ensure_marketplace(session, "backmarket")
        session.commit()
    rates = []
    for sync_pages in [pages] + ([resync] if resync else []):
        with sessions() as session:
            sync_id = begin_run(session, kind="stock", target="backmarket", trigger="manual",
                                policy=SyncPolicy(0, 0, 900), force=True).id
        now = datetime.now(timezone.utc)
        rows = sum(len(p) for p in sync_pages)
        started = time.perf_counter()
        with sessions() as session:
            for number, page in enumerate(sync_pages, start=1):
                apply_page(session, marketplace_id=marketplace_id, sync_id=sync_id, page=number, fetched_at=now,
                           items=page, total_pages=len(sync_pages) if number == 1 else None, keep_reads=keep_reads)
                session.commit()
        rates.append(rows / (time.perf_counter() - started))
    return tuple(rates) if resync else rates[0]


def one_in_ten_changed(pages: list[list[PageItem]]) -> list[list[PageItem]]:
    """The same pages with every tenth listing's quantity one higher (a second sync's catalogue)."""
    from dataclasses import replace

    return [[replace(item, quantity=item.quantity + 1) if (n * PAGE + i) % 10 == 0 else item
             for i, item in enumerate(page)] for n, page in enumerate(pages)]


def apply_cost(pg: PostgresServer, pages: list[list[PageItem]], what: str, option: str,
               attempts: int = 3) -> list[str]:
    """The apply with and without ``what`` (``set_based``'s ``option`` true or false): a first sync and a
    second one (one row in ten changed)."""
    resync = one_in_ten_changed(pages)
    lines = []
    # Alternated, ``attempts`` times each, best of them: the machine is shared, the first run warms the server.
    rates = {True: [], False: []}
    for attempt in range(attempts):
        for on in (False, True):
            rates[on].append(set_based(pg, pages, database=f"bench_{option}_{int(on)}_{attempt}", resync=resync,
                                       **{option: on}))
    for index, phase in enumerate(("first sync (every read new)", "second sync (1 in 10 changed)")):
        without = max(r[index] for r in rates[False])
        with_it = max(r[index] for r in rates[True])
        lines.append(f"apply with {what}, {phase}: {with_it:,.0f} rows/s; without: {without:,.0f} rows/s; "
                     f"cost {100 * (without / with_it - 1):+.1f}% time per row (best of {attempts} each, alternated)")
    return lines


def per_row(pg: PostgresServer, pages: list[list[PageItem]], limit: int) -> tuple[float, int]:
    """Rows/s of the old pattern: SELECT, UPDATE, INSERT history, COMMIT, per row."""
    import psycopg

    url = pg.create_database("bench_rows")
    upgrade(url)
    items = [item for page in pages for item in page][:limit]
    with psycopg.connect(pg.conninfo("bench_rows")) as conn:
        conn.execute("INSERT INTO marketplaces (code, name) VALUES ('backmarket', 'Back Market') "
                     "ON CONFLICT (code) DO NOTHING")  # the migrations make the main accounts
        conn.execute("INSERT INTO variations (sku) SELECT unnest(%s::text[])", ([i.sku for i in items],))
        conn.execute("INSERT INTO marketplace_stock (variation_id, marketplace_id, listed) "
                     "SELECT id, 1, 0 FROM variations")
        conn.commit()
        started = time.perf_counter()
        for n, item in enumerate(items):
            row = conn.execute("SELECT s.id, s.listed FROM marketplace_stock s JOIN variations v ON "
                               "v.id = s.variation_id WHERE v.sku = %s AND s.marketplace_id = 1", (item.sku,)).fetchone()
            if row[1] != item.quantity:
                conn.execute("UPDATE marketplace_stock SET listed = %s, last_synced_at = now() WHERE id = %s",
                             (item.quantity, row[0]))
                conn.execute("INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, "
                             "quantity_after, change, change_type, idempotency_key, event_time) "
                             "SELECT id, variation_id, 1, %s, %s, %s, 'sync', %s, now() FROM marketplace_stock "
                             "WHERE id = %s", (row[1], item.quantity, item.quantity - row[1], f"row:{n}", row[0]))
            conn.commit()
        return len(items) / (time.perf_counter() - started), len(items)


class StatementTimes:
    """Client-side time of each SQL statement while active (SQLAlchemy cursor events), by its first words."""

    def __init__(self) -> None:
        self.totals: dict[str, list] = {}
        self._started: dict[int, float] = {}

    def __enter__(self) -> "StatementTimes":
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *exc_info) -> None:
        event.remove(Engine, "before_cursor_execute", self._before)
        event.remove(Engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self._started[id(cursor)] = time.perf_counter()

    def _after(self, conn, cursor, statement, parameters, context, executemany) -> None:
        elapsed = time.perf_counter() - self._started.pop(id(cursor), time.perf_counter())
        entry = self.totals.setdefault(" ".join(statement.split())[:60], [0, 0.0])
        entry[0] += 1
        entry[1] += elapsed

    def report(self, pages: int, most: int = 8, min_count: int | None = None) -> list[str]:
        """One line per statement run on every page or more (``min_count`` times, if given): mean ms per
        page, slowest first."""
        least = pages if min_count is None else min_count
        rows = [(total / pages * 1000, text_) for text_, (count, total) in self.totals.items() if count >= least]
        return [f"  {ms:6.2f} ms/page  {text_}" for ms, text_ in sorted(rows, reverse=True)[:most]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listings", type=int, default=100_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--baseline-rows", type=int, default=5_000)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--reads-attempts", type=int, default=3,
                        help="syncs with and without listing_reads, alternated, each this many times (best kept)")
    parser.add_argument("--ledger-index", action="store_true",
                        help="only the apply with and without the SKU timeline's indexes (migration 0016), "
                             "alternated --reads-attempts times each")
    parser.add_argument("--statements", action="store_true",
                        help="also time the set-based apply's statements (a separate, instrumented run)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="stocksync-bench-"))
    pg = PostgresServer(folder / "pg", options=DURABLE).start()
    redis = RedisServer(folder / "redis").start()
    try:
        print(f"machine: {os.cpu_count()} cores; PostgreSQL durable (fsync on, synchronous_commit on)")
        if args.ledger_index:
            print("\n".join(apply_cost(pg, page_items(args.listings), "the timeline's indexes (migration 0016)",
                                        "timeline_indexes", args.reads_attempts)))
            return
        if not args.skip_e2e:
            figures = end_to_end(folder, pg, redis, args.listings, args.processes, args.threads)
            pages = math.ceil(args.listings / PAGE)
            print(f"end to end: {args.listings} listings, {figures['pages']}/{pages} pages, "
                  f"{args.processes} processes x {args.threads} threads: {figures['seconds']:.2f} s "
                  f"({args.listings / figures['seconds']:,.0f} listings/s), status {figures['status']}, "
                  f"api_calls {figures['api_calls']} (retries {figures['retries']}), "
                  f"every stock row right: {figures['correct']}")
        pages = page_items(args.listings)
        set_rate = set_based(pg, pages)
        row_rate, rows = per_row(pg, pages, args.baseline_rows)
        print(f"apply, set-based (one transaction per page of {PAGE}): {set_rate:,.0f} rows/s "
              f"over {args.listings} rows")
        print(f"apply, per-row (select, update, insert history, commit; old system): {row_rate:,.0f} rows/s "
              f"over {rows} rows")
        print(f"ratio set-based / per-row: {set_rate / row_rate:.1f}x")
        print("\n".join(apply_cost(pg, pages, "listing_reads", "keep_reads", args.reads_attempts)))
        if args.statements:
            with StatementTimes() as times:
                instrumented = set_based(pg, pages, database="bench_statements")
            print(f"where a page's apply goes (instrumented run, {instrumented:,.0f} rows/s):")
            print("\n".join(times.report(len(pages))))
    finally:
        redis.stop()
        pg.stop()


if __name__ == "__main__":
    main()
