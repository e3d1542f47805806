"""SKU page benchmark with its timeline and chart: a SKU with 10,000 ledger rows and a year of reads.

    .venv/bin/python bench/timeline.py [--variations 20000] [--ledger-rows 10000] [--read-hours 8760]
                                       [--requests 300]

A real PostgreSQL (durable settings) with ``--variations`` variations on two accounts (Back Market
and Refurbed); the SKU under test has ``--ledger-rows`` ledger rows booked over the last year on both
accounts (syncs, orders, top-ups) and, on each account, a read every hour of that year whose quantity
changed (``--read-hours``: the most a year of hourly syncs can keep).  The console is served as in
production, in a process of its own (``workers.console.app.run`` on loopback, a real Redis, the same
database); this process is only the client, logged in as a viewer: one keep-alive connection sends
``--requests`` requests one after the other (client time included).

Baseline in the same run: the same page with its timeline section swapped for nothing (what the page
cost before the timeline; a second server process), and ``pipelines.timeline.timeline`` alone in this
process on one connection (the section's queries, merge and chart, without HTTP or the template).  Besides the page as of now and as of half a
year ago (each repeated: its drawn chart a lookup), three views no cache answers: an "as of" moment an
hour earlier at each request (rolled-up columns shared, no drawn chart), and the first view ever, as of
now and as of half a year ago (``chart_cells`` emptied and drawn charts forgotten before each request,
untimed).  The load average is printed at the start and the end.  Goal: p99 < 100 ms for the page with it.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from dramatiq.brokers.stub import StubBroker  # noqa: E402

from bench.console import DURABLE, PASSWORD, measure, percentiles, quantile_ms  # noqa: E402
from db import users  # noqa: E402
from db.engine import session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from runtime.local_servers import PostgresServer, RedisServer, free_port, wait_until  # noqa: E402
from runtime.settings import Settings  # noqa: E402

GOAL_MS = 100.0
SKU = "BENCH-0000001"


def seed(pg: PostgresServer, database: str, variations: int, ledger_rows: int, read_hours: int) -> int:
    """The catalogue on two accounts, and the SKU's year of history; returns its variation id."""
    with psycopg.connect(pg.conninfo(database)) as conn:
        conn.execute("INSERT INTO variations (sku, title, total_stock) SELECT 'BENCH-' || lpad(n::text, 7, '0'), "
                     "'Phone ' || n, 0 FROM generate_series(1, %s) AS n", (variations,))
        conn.execute("INSERT INTO marketplace_stock (variation_id, marketplace_id, listed, last_api_quantity, "
                     "last_synced_at, push_state, pushed_at, pushed_quantity) "
                     "SELECT v.id, m.id, 0, 0, now() - interval '1 hour', 'pushed', now() - interval '2 days', 0 "
                     "FROM variations v CROSS JOIN marketplaces m WHERE m.code IN ('backmarket', 'refurbed')")
        conn.execute("INSERT INTO listings (marketplace_id, external_id, variation_id, sku, title, api_quantity) "
                     "SELECT s.marketplace_id, md5(v.sku || s.marketplace_id), v.id, v.sku, v.title, 0 "
                     "FROM variations v JOIN marketplace_stock s ON s.variation_id = v.id")
        variation_id = conn.execute("SELECT id FROM variations WHERE sku = %s", (SKU,)).fetchone()[0]
        # A first sync of 20 on each account, then its history: listed == sum(change) holds.
        conn.execute("INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, "
                     "quantity_after, change, change_type, idempotency_key, event_time, created_at) "
                     "SELECT id, variation_id, marketplace_id, 0, 20, 20, 'sync', 'bench:first:' || id, "
                     "now() - interval '366 days', now() - interval '366 days' FROM marketplace_stock "
                     "WHERE variation_id = %s", (variation_id,))
        # The SKU's ledger: a chain per account (each row starts where the one before ended), booked
        # evenly over the last year: orders, top-ups and syncs.
        conn.execute("""
            WITH steps AS (
                SELECT n, s.id AS stock_id, s.marketplace_id,
                       CASE WHEN n %% 5 = 0 THEN 'topup' WHEN n %% 7 = 0 THEN 'sync' ELSE 'order_created' END AS kind,
                       CASE WHEN n %% 5 = 0 THEN 3 WHEN n %% 7 = 0 THEN 1 ELSE -1 END AS change
                FROM generate_series(1, %(rows)s) AS n
                JOIN marketplace_stock s ON s.variation_id = %(v)s
                 AND s.marketplace_id = (SELECT id FROM marketplaces WHERE code =
                                         CASE WHEN n %% 2 = 0 THEN 'backmarket' ELSE 'refurbed' END)
            ), chained AS (
                SELECT *, 20 + sum(change) OVER (PARTITION BY stock_id ORDER BY n) AS after FROM steps
            )
            INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, quantity_after, change,
                                      change_type, order_id, order_line_id, reference, actor, idempotency_key,
                                      event_time, created_at)
            SELECT stock_id, %(v)s, marketplace_id, after - change, after, change, kind,
                   CASE WHEN kind = 'order_created' THEN 'O-' || n END, CASE WHEN kind = 'order_created' THEN 'L-' || n END,
                   CASE WHEN kind = 'topup' THEN 'PO-' || n END, 'bench', 'bench:' || n,
                   now() - interval '365 days' * (1 - n::float / %(rows)s),
                   now() - interval '365 days' * (1 - n::float / %(rows)s)
            FROM chained ORDER BY n""", {"rows": ledger_rows, "v": variation_id})
        conn.execute("UPDATE marketplace_stock s SET listed = l.total FROM (SELECT stock_id, sum(change) AS total "
                     "FROM stock_ledger GROUP BY stock_id) l WHERE l.stock_id = s.id")
        conn.execute("UPDATE variations v SET total_stock = t.total FROM (SELECT variation_id, sum(listed) AS total "
                     "FROM marketplace_stock GROUP BY variation_id) t WHERE t.variation_id = v.id")
        # A year of hourly reads of the SKU on each account, every one a change (the most that is kept),
        # and one read of every other row (the table is not made of this SKU alone).
        conn.execute("INSERT INTO listing_reads (stock_id, variation_id, marketplace_id, quantity, read_at, source) "
                     "SELECT s.id, s.variation_id, s.marketplace_id, 10 + (h %% 9), "
                     "now() - interval '1 hour' * (%s - h), 'page' FROM marketplace_stock s "
                     "CROSS JOIN generate_series(1, %s) AS h WHERE s.variation_id = %s",
                     (read_hours, read_hours, variation_id))
        conn.execute("INSERT INTO listing_reads (stock_id, variation_id, marketplace_id, quantity, read_at, source) "
                     "SELECT id, variation_id, marketplace_id, 0, now() - interval '1 hour', 'page' "
                     "FROM marketplace_stock WHERE variation_id <> %s", (variation_id,))
        conn.execute("ANALYZE")
    return variation_id


def bare_timeline(sessions, variation_id: int, requests: int) -> list[float]:
    """``pipelines.timeline.timeline`` as the page calls it, on one pooled connection."""
    from pipelines import timeline
    from workers.console.pages.stock import TIMELINE_ENTRIES

    samples = []
    with sessions() as session:
        for index in range(requests + 20):
            started = time.perf_counter()
            timeline.timeline(session, variation_id, SKU, limit=TIMELINE_ENTRIES)
            if index >= 20:
                samples.append(time.perf_counter() - started)
            session.rollback()
    return samples


def load() -> str:
    """The machine's load averages over 1, 5 and 15 minutes (what ``uptime`` prints)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class GcPauses:
    """The server's garbage collections, timed per generation (a ``gc.callbacks`` entry)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}

    def note(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.pauses[info["generation"]].append(time.perf_counter() - self.started)

    def summary(self) -> str:
        return "; ".join(f"gen{g} {len(p)} x, max {max(p, default=0) * 1000:.1f} ms, total {sum(p) * 1000:.0f} ms"
                         for g, p in self.pauses.items())


pauses = GcPauses()


def serve(without_timeline: bool) -> None:
    """The console server process: ``workers.console.app.run`` on loopback (DATABASE_URL, REDIS_URL and
    BENCH_PORT from the environment).  A line ``forget`` on stdin empties the rolled-up columns and the
    drawn charts and answers ``ok``; the end of stdin stops the server."""
    import redis
    from sqlalchemy import text

    from pipelines import timeline
    from workers.console.app import build_console_app, run
    from workers.console.pages import stock

    settings = Settings(console_page_size=50)
    sessions = session_factory(settings.database_url)
    app = build_console_app(settings, sessions=sessions, redis=redis.Redis.from_url(settings.redis_url),
                            broker=StubBroker(), dead_letters=None)
    if without_timeline:
        stock.timeline_section = lambda *_: None  # the page as it was before the timeline

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "forget":  # what a first view finds: no rolled-up column, no chart drawn before
                with sessions() as session:
                    if session.execute(text("SELECT to_regclass('chart_cells')")).scalar() is not None:
                        session.execute(text("TRUNCATE chart_cells"))
                        session.commit()
                # main's tree (the comparison run) keeps its charts in _charts and has no clear_chart_cache
                getattr(timeline, "clear_chart_cache", getattr(timeline, "_charts", {}).clear)()
                print("ok", flush=True)
        print(pauses.summary(), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=commands, daemon=True).start()
    gc.callbacks.append(pauses.note)
    run("127.0.0.1", int(os.environ["BENCH_PORT"]), app)


class ServerProcess:
    """A console server process (:func:`serve`, of ``script``: this file or another checkout's) on the bench's
    database and Redis, on a free loopback port."""

    def __init__(self, database_url: str, redis_url: str, *, without_timeline: bool = False,
                 script: str = __file__) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, script, "--serve"] + (["--without-timeline"] if without_timeline else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "BENCH_PORT": str(port)})
        wait_until(self._answers, 60, what=f"the console server on port {port}")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the console server exited with status {self.process.returncode}")
        try:
            with urllib.request.urlopen(f"{self.url}/login", timeout=2):
                return True
        except OSError:
            return False

    def forget(self) -> None:
        """Empty the server's rolled-up columns and drawn charts (untimed, before a first view)."""
        self.process.stdin.write("forget\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        assert answer == "ok", f"the console server answered {answer!r} to forget"

    def stop(self) -> str:
        """Close its stdin (it stops itself) and wait for it to exit; returns its garbage collections' pauses."""
        self.process.stdin.close()
        collections = self.process.stdout.readline().strip()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return collections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variations", type=int, default=20_000)
    parser.add_argument("--ledger-rows", type=int, default=10_000)
    parser.add_argument("--read-hours", type=int, default=365 * 24)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server process
    parser.add_argument("--without-timeline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.without_timeline)
        return

    with tempfile.TemporaryDirectory(prefix="stocksync-bench-timeline-") as folder:
        pg = PostgresServer(Path(folder) / "pg", options=DURABLE).start()
        redis_server = RedisServer(Path(folder) / "redis").start()
        try:
            url = pg.create_database("bench_timeline")
            upgrade(url)
            started = time.perf_counter()
            variation_id = seed(pg, "bench_timeline", args.variations, args.ledger_rows, args.read_hours)
            print(f"load average (uptime) at the start: {load()}")
            print(f"catalogue: {args.variations} variations on 2 accounts; {SKU}: {args.ledger_rows} ledger rows over "
                  f"a year, {args.read_hours} reads on each account (seeded in {time.perf_counter() - started:.1f} s)")
            sessions = session_factory(url)
            with sessions() as session:
                users.add_user(session, "bench", PASSWORD, "viewer")
                session.commit()
            path = f"/variations/{variation_id}"
            with_name = "SKU page with timeline and chart GET /variations/{id}"
            without_name = "SKU page without the timeline (baseline)"
            as_of_name = "SKU page as of half a year ago GET /variations/{id}?as_of="
            moving_name = "SKU page as of a different moment each request (no chart cached; roll-ups kept)"
            first_now = "first view, as of now: roll-ups and cached charts emptied before each request"
            first_as_of = "first view, as of half a year ago: roll-ups and cached charts emptied before each request"
            half_year = time.time() - 182 * 86400

            def as_of(moment: float) -> str:
                return f"{path}?as_of={time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(moment))}"

            server = ServerProcess(url, redis_server.url)
            try:
                results = asyncio.run(measure(server.url, {with_name: path, as_of_name: as_of(half_year),
                                                           moving_name: lambda i: as_of(half_year - 3607 * i)},
                                              args.requests))
                results.update(asyncio.run(measure(server.url, {first_now: path, first_as_of: as_of(half_year)},
                                                   args.requests, before=server.forget)))
            finally:
                collections = server.stop()
            server = ServerProcess(url, redis_server.url, without_timeline=True)
            try:
                results.update(asyncio.run(measure(server.url, {without_name: path}, args.requests)))
            finally:
                baseline_collections = server.stop()
            results["pipelines.timeline.timeline alone, in this process (queries, merge, chart)"] = bare_timeline(
                sessions, variation_id, args.requests)
            for name, samples in results.items():
                print(f"{name}: {percentiles(samples)}")
            extra = quantile_ms(results[with_name], 0.99) - quantile_ms(results[without_name], 0.99)
            print(f"the timeline adds {extra:.2f} ms to the page's p99")
            for name in (with_name, as_of_name, moving_name, first_now, first_as_of):
                p99 = quantile_ms(results[name], 0.99)
                print(f"goal p99 < {GOAL_MS:.0f} ms, {name.split(' GET')[0]}: {'met' if p99 < GOAL_MS else 'NOT met'} "
                      f"({p99:.2f} ms)")
            print(f"server process with the timeline, garbage collections: {collections}")
            print(f"server process without the timeline, garbage collections: {baseline_collections}")
            print(f"load average (uptime) at the end: {load()}")
        finally:
            redis_server.stop()
            pg.stop()

if __name__ == "__main__":
    main()
