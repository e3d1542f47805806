"""Read API benchmark: latency of ``GET /stock?sku=`` and ``GET /variations/{id}/stock`` under load.

    .venv/bin/python bench/read_api.py [--variations 20000] [--concurrency 4] [--seconds 10]

A real PostgreSQL (durable settings) with ``--variations`` variations, each stocked on two
marketplaces; ``stocksync serve`` in its own process (as in production) on loopback; a load loop
in this process: ``--concurrency`` clients on keep-alive connections, each sending its next
request as soon as the last one answered, random SKUs and ids, for ``--seconds`` after a warm-up.
Prints requests/s and p50/p90/p99/max latency as the client sees it (client time included).

Baseline, same loop: what the old system did per page view, one marketplace API call for the
stock (``GET /ws/listings/detail?sku=`` on the sandbox Back Market, on loopback, no latency and no
quota; the real one answers in tens of ms and allows ~20 catalog calls per 10 s).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import psycopg  # noqa: E402

from db.migrate import upgrade  # noqa: E402
from runtime.local_servers import PostgresServer, RedisServer, free_port, wait_until  # noqa: E402

DURABLE = ("synchronous_commit=on",)


def seed(pg: PostgresServer, database: str, variations: int) -> None:
    """``variations`` SKUs on Back Market and Refurbed, with synced-at times, in a few statements."""
    with psycopg.connect(pg.conninfo(database)) as conn:
        conn.execute("INSERT INTO marketplaces (code, name) VALUES ('backmarket', 'Back Market'), "
                     "('refurbed', 'Refurbed') ON CONFLICT (code) DO NOTHING")
        conn.execute("INSERT INTO variations (sku, title, total_stock) SELECT 'BENCH-' || lpad(n::text, 7, '0'), "
                     "'Phone ' || n, (n %% 41) * 2 FROM generate_series(1, %s) AS n", (variations,))
        conn.execute("INSERT INTO marketplace_stock (variation_id, marketplace_id, listed, last_api_quantity, "
                     "last_synced_at) SELECT v.id, m.id, v.total_stock / 2, v.total_stock / 2, "
                     "now() - interval '1 hour' FROM variations v CROSS JOIN marketplaces m "
                     "WHERE m.code IN ('backmarket', 'refurbed')")
        conn.execute("ANALYZE")


#: The intake's read token here (READ_API_TOKENS), and the sandbox's API token.
READ_AUTHORIZATION, SANDBOX_AUTHORIZATION = "Bearer bench-read-token", "Basic bench-token"


async def load(url_for, seconds: float, concurrency: int, warmup_s: float = 1.0,
               authorization: str = READ_AUTHORIZATION) -> tuple[list[float], int]:
    """Run ``concurrency`` clients for ``warmup_s + seconds``; return the latencies after warm-up and errors."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": "BM-Bench;ops@example.com",
                                                                   "Authorization": authorization}) as session:
        started = time.perf_counter()
        measure_from, stop_at = started + warmup_s, started + warmup_s + seconds

        async def client(seed: int) -> None:
            nonlocal errors
            rng = random.Random(seed)
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                async with session.get(url_for(rng)) as response:
                    await response.read()
                    ok = response.status == 200
                done = time.perf_counter()
                if sent >= measure_from:
                    latencies.append(done - sent)
                    errors += not ok

        await asyncio.gather(*(client(n) for n in range(concurrency)))
    return latencies, errors


def figures(name: str, latencies: list[float], errors: int, seconds: float) -> str:
    """One line: requests/s and percentiles in ms."""
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return (f"{name}: {len(ordered) / seconds:,.0f} req/s, p50 {pct(0.50):.2f} ms, p90 {pct(0.90):.2f} ms, "
            f"p99 {pct(0.99):.2f} ms, max {ordered[-1] * 1000:.2f} ms, mean {statistics.fmean(ordered) * 1000:.2f} ms "
            f"({len(ordered)} requests, {errors} not 200)")


def _answers(url: str) -> bool:
    import urllib.request

    try:
        return urllib.request.urlopen(url, timeout=1).status == 200
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variations", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="stocksync-bench-read-"))
    pg = PostgresServer(folder / "pg", options=DURABLE).start()
    redis = RedisServer(folder / "redis").start()
    intake = None
    try:
        url = pg.create_database("bench_read")
        upgrade(url)
        seed(pg, "bench_read", args.variations)
        port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis.url, "INTAKE_PORT": str(port),
               "INTAKE_READ_POOL_SIZE": str(max(2, args.concurrency)), "PYTHONUNBUFFERED": "1",
               "READ_API_TOKENS": READ_AUTHORIZATION.split()[1]}
        log = open(folder / "intake.log", "ab")
        intake = subprocess.Popen([sys.executable, "-m", "workers.cli", "serve"], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if intake.poll() is not None:
                raise RuntimeError(f"stocksync serve exited; see {folder / 'intake.log'}")
            return _answers(f"{base}/healthz")

        wait_until(ready, 60, what="stocksync serve")
        print(f"machine: {os.cpu_count()} cores; {args.variations:,} variations x 2 marketplaces; "
              f"{args.concurrency} concurrent clients for {args.seconds:g} s (after 1 s warm-up)")
        n = args.variations
        for concurrency in sorted({1, args.concurrency}):
            by_sku = asyncio.run(load(lambda rng: f"{base}/stock?sku=BENCH-{rng.randint(1, n):07d}", args.seconds,
                                      concurrency))
            print(figures(f"read API, GET /stock?sku=, {concurrency} client(s)", *by_sku, args.seconds))
        by_id = asyncio.run(load(lambda rng: f"{base}/variations/{rng.randint(1, n)}/stock", args.seconds,
                                 args.concurrency))
        print(figures(f"read API, GET /variations/{{id}}/stock, {args.concurrency} clients", *by_id, args.seconds))

        # The old way: one marketplace call per page view.  The sandbox runs in its own process too
        # (local, unthrottled, no latency: a floor for what the real API costs).
        listings, sandbox_port = min(n, 20_000), free_port()
        sandbox = subprocess.Popen([sys.executable, "-m", "workers.cli", "sandbox", "--listings", str(listings),
                                    "--seed", "2", "--port", str(sandbox_port), "--token", "bench-token",
                                    "--quota-requests", "0"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            sandbox_url = f"http://127.0.0.1:{sandbox_port}"
            wait_until(lambda: _answers(f"{sandbox_url}/_sandbox/stats"), 60, what="the sandbox")
            detail = f"{sandbox_url}/ws/listings/detail?sku=BM-2-"
            old = asyncio.run(load(lambda rng: f"{detail}{rng.randrange(listings):06d}",
                                   args.seconds, args.concurrency, authorization=SANDBOX_AUTHORIZATION))
        finally:
            sandbox.terminate()
            sandbox.wait(10)
        print(figures(f"baseline, one marketplace API call per read (local sandbox, no quota), "
                      f"{args.concurrency} clients", *old, args.seconds))
        print("baseline on the real Back Market: ~20 catalog calls per 10 s for the whole account, i.e. "
              "at most 2 such reads per second")
        p99 = sorted(by_sku[0])[int(0.99 * len(by_sku[0]))] * 1000
        print(f"goal p99 < 5 ms on GET /stock with {args.concurrency} clients: {'met' if p99 < 5 else 'NOT met'} "
              f"({p99:.2f} ms)")
    finally:
        if intake is not None:
            intake.terminate()
            intake.wait(10)
        redis.stop()
        pg.stop()


if __name__ == "__main__":
    main()
