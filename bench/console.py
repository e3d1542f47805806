"""Console benchmark: how fast the stock page and the ledger page answer on a real catalogue.

    .venv/bin/python bench/console.py [--variations 100000] [--ledger-rows 10000] [--requests 500]

A real PostgreSQL (durable settings) with ``--variations`` variations stocked on Back Market, one
of them (the SKU under test) with ``--ledger-rows`` ledger rows; the console app served on
loopback in this process's background thread (as ``stocksync console`` serves it), logged in as a
viewer; one client on a keep-alive connection sending ``--requests`` requests of each kind one after
the other (client time included).  Prints p50/p99/max per page.

Baselines in the same run: ``GET /healthz`` (the HTTP, session-free floor) and the page's queries
run bare on one connection (what the page costs beyond its SQL).  Goal: p99 < 50 ms for both pages.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import fakeredis  # noqa: E402
import psycopg  # noqa: E402
from dramatiq.brokers.stub import StubBroker  # noqa: E402

from db import console_queries, users  # noqa: E402
from db.engine import session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from runtime.local_servers import PostgresServer  # noqa: E402
from runtime.settings import Settings  # noqa: E402

DURABLE = ("synchronous_commit=on",)
PASSWORD = "bench password 1234"
GOAL_MS = 50.0


def seed(pg: PostgresServer, database: str, variations: int, ledger_rows: int) -> int:
    """The catalogue, and ``ledger_rows`` changes of the first variation; returns that variation's id."""
    with psycopg.connect(pg.conninfo(database)) as conn:
        # The migrations add the main accounts' rows: the bench's stock is on Back Market's.
        conn.execute("INSERT INTO marketplaces (code, name) VALUES ('backmarket', 'Back Market') "
                     "ON CONFLICT (code) DO NOTHING")
        conn.execute("INSERT INTO variations (sku, title, total_stock) SELECT 'BENCH-' || lpad(n::text, 7, '0'), "
                     "'Phone ' || n, n %% 41 FROM generate_series(1, %s) AS n", (variations,))
        conn.execute("INSERT INTO marketplace_stock (variation_id, marketplace_id, listed, last_api_quantity, "
                     "last_synced_at, push_state) SELECT v.id, m.id, v.total_stock, v.total_stock, "
                     "now() - interval '1 hour', 'pushed' FROM variations v CROSS JOIN marketplaces m "
                     "WHERE m.code = 'backmarket'")
        conn.execute("INSERT INTO listings (marketplace_id, external_id, variation_id, sku, title, api_quantity) "
                     "SELECT s.marketplace_id, md5(v.sku), v.id, v.sku, v.title, s.listed FROM variations v "
                     "JOIN marketplace_stock s ON s.variation_id = v.id")
        variation_id, stock_id = conn.execute(
            "SELECT v.id, s.id FROM variations v JOIN marketplace_stock s ON s.variation_id = v.id "
            "WHERE v.sku = 'BENCH-0000001'").fetchone()
        # Its history (a top-up, then an order, ...), and one sync row for every other variation so
        # the ledger is not made of this SKU alone.
        conn.execute("INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, "
                     "quantity_after, change, change_type, order_id, order_line_id, reference, actor, "
                     "idempotency_key, event_time) SELECT %s, %s, 1, n, n + 1, 1, "
                     "CASE WHEN n %% 2 = 0 THEN 'topup' ELSE 'order_created' END, 'O-' || n, 'L-' || n, "
                     "'PO-' || n, 'bench', 'bench:' || n, now() - (%s - n) * interval '1 second' "
                     "FROM generate_series(1, %s) AS n", (stock_id, variation_id, ledger_rows, ledger_rows))
        conn.execute("INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, "
                     "quantity_after, change, change_type, idempotency_key, event_time) SELECT s.id, s.variation_id, "
                     "1, 0, s.listed, s.listed, 'sync', 'sync:' || s.id, now() - interval '1 hour' "
                     "FROM marketplace_stock s WHERE s.variation_id <> %s", (variation_id,))
        conn.execute("ANALYZE")
    return variation_id


def quantile_ms(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (seconds), in milliseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def percentiles(samples: list[float]) -> str:
    return (f"p50 {quantile_ms(samples, 0.50):.2f} ms, p99 {quantile_ms(samples, 0.99):.2f} ms, "
            f"max {max(samples) * 1000:.2f} ms, mean {statistics.fmean(samples) * 1000:.2f} ms ({len(samples)} requests)")


async def log_in(client: aiohttp.ClientSession) -> None:
    """Log ``client`` in to the console as the bench's viewer (the login form's CSRF token first)."""
    page = await (await client.get("/login")).text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    async with client.post("/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token},
                           allow_redirects=False) as response:
        assert response.status == 303, response.status


async def measure(base: str, paths: dict[str, str | Callable[[int], str]], requests: int, *,
                  before: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Log in, then ``requests`` sequential GETs of each path (after 20 warm-up ones); a path may be a function
    of the request's number (a different one each time), and ``before`` runs, untimed, before each request."""
    results: dict[str, list[float]] = {}
    async with aiohttp.ClientSession(base_url=base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        await log_in(client)
        for name, path in paths.items():
            samples = []
            for index in range(requests + 20):
                if before is not None:
                    before()
                started = time.perf_counter()
                async with client.get(path(index) if callable(path) else path, allow_redirects=False) as response:
                    await response.read()
                    assert response.status == 200, (path, response.status)
                if index >= 20:
                    samples.append(time.perf_counter() - started)
            results[name] = samples
    return results


def bare_queries(sessions, variation_id: int, before_id: int, requests: int) -> dict[str, list[float]]:
    """The pages' queries alone, on one pooled connection, same count."""
    results = {"stock page queries": [], "ledger page query": []}
    with sessions() as session:
        for index in range(requests + 20):
            started = time.perf_counter()
            console_queries.get_variation(session, variation_id)
            console_queries.stock_rows(session, variation_id)
            console_queries.ledger_page(session, variation_id, limit=50)
            console_queries.marketplace_codes(session)
            elapsed = time.perf_counter() - started
            started = time.perf_counter()
            console_queries.ledger_page(session, variation_id, before_id=before_id, limit=50)
            if index >= 20:
                results["stock page queries"].append(elapsed)
                results["ledger page query"].append(time.perf_counter() - started)
            session.rollback()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variations", type=int, default=100_000)
    parser.add_argument("--ledger-rows", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()

    from sandbox.server import serve_in_thread
    from workers.console.app import build_console_app

    with tempfile.TemporaryDirectory(prefix="stocksync-bench-console-") as folder:
        pg = PostgresServer(Path(folder) / "pg", options=DURABLE).start()
        try:
            url = pg.create_database("bench_console")
            upgrade(url)
            started = time.perf_counter()
            variation_id = seed(pg, "bench_console", args.variations, args.ledger_rows)
            print(f"catalogue: {args.variations} variations, {args.ledger_rows} ledger rows on BENCH-0000001 "
                  f"(seeded in {time.perf_counter() - started:.1f} s)")
            sessions = session_factory(url)
            with sessions() as session:
                users.add_user(session, "bench", PASSWORD, "viewer")
                session.commit()
                rows, _ = console_queries.ledger_page(session, variation_id, limit=args.ledger_rows // 2)
                before_id = rows[-1].id  # half way down its history
            app = build_console_app(Settings(console_page_size=50), sessions=sessions,
                                    redis=fakeredis.FakeRedis(), broker=StubBroker(), dead_letters=None)
            server = serve_in_thread(app)
            try:
                paths = {"GET /healthz (baseline)": "/healthz",
                         "stock page GET /variations/{id}": f"/variations/{variation_id}",
                         "ledger page GET /variations/{id}/ledger?before= (row 5,000 of 10,000)":
                             f"/variations/{variation_id}/ledger?before={before_id}",
                         "SKU search GET /stock?q=BENCH-00012": "/stock?q=BENCH-00012&exact=0"}
                results = asyncio.run(measure(server.url, paths, args.requests))
            finally:
                server.stop()
            results.update(bare_queries(sessions, variation_id, before_id, args.requests))
            for name, samples in results.items():
                print(f"{name}: {percentiles(samples)}")
            for name in list(paths)[1:3]:
                p99 = sorted(results[name])[min(len(results[name]) - 1, int(0.99 * len(results[name])))] * 1000
                print(f"goal p99 < {GOAL_MS:.0f} ms, {name.split(' GET')[0]}: {'met' if p99 < GOAL_MS else 'NOT met'} "
                      f"({p99:.2f} ms)")
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
