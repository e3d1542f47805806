"""Re-check burst benchmark: flagged rows read back under the catalog quota, per-row messages against the drain.

    .venv/bin/python bench/recheck_drain.py [--rows 200] [--quota 20] [--window 10] [--threads 8]

Real ``redis-server``, PostgreSQL, the Back Market sandbox over HTTP (its quota off: ours paces
the reads) and one real ``dramatiq workers.fleet`` process.  ``--rows`` rows are flagged for a
re-check at once (what a burst of events close to a sync leaves), then read back twice:

1. per row (main's path): one ``recheck_stock`` message per row, read at once; over the
   ``STOCK_RECHECK_THREADS`` budget a message goes back to the delay queue and comes round again
   (dramatiq logs a WARNING "was skipped" each time);
2. drained: one ``drain_rechecks`` request; the drain takes the due rows in batches and waits for
   the fleet limiter in-process.

Printed for each: rows checked (the sandbox's GETs), messages handled (skip cycles + runs),
WARNING lines and wall time.  The issue measured main on 551 rows: 61,819 skip cycles in 5 minutes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from db.engine import session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from runtime.local_servers import PostgresServer, RedisServer, wait_until  # noqa: E402
from sandbox.backmarket import BackMarketSandbox  # noqa: E402
from sandbox.server import serve_in_thread  # noqa: E402
from tests.fleet import WorkerFleet, fleet_env, seed_catalogue  # noqa: E402

TOKEN = "bench-drain-token"


def flag_all(sessions) -> None:
    with sessions() as session:
        session.execute(text("UPDATE marketplace_stock SET needs_recheck = true, recheck_since = :t, "
                             "recheck_due_at = NULL, recheck_attempts = 0"),
                        {"t": datetime.now(timezone.utc) - timedelta(hours=1)})
        session.commit()


def flagged(sessions) -> int:
    with sessions() as session:
        return session.execute(text("SELECT count(*) FROM marketplace_stock WHERE needs_recheck")).scalar()


def phase(name, args, env, folder, sessions, sandbox, listings, send) -> dict:
    flag_all(sessions)
    sandbox.reset_stats()
    log = folder / f"{name}.log"
    fleet = WorkerFleet(env, processes=1, threads=args.threads, log_path=log).start()
    try:
        started = time.monotonic()
        send()
        wait_until(lambda: flagged(sessions) == 0, args.rows * args.window / args.quota * 2 + 120, interval=0.2,
                   what=f"{name}: every row re-checked")
        elapsed = time.monotonic() - started
    finally:
        fleet.stop()
    lines = log.read_text().splitlines()
    skipped = sum("was skipped" in line for line in lines)
    runs = sum("drain of backmarket" in line for line in lines) if name == "drained" else args.rows
    return {"phase": name, "rows checked": sandbox.stats()["by_endpoint"].get("GET /ws/listings/{listingId}", 0),
            "messages": skipped + runs, "skip cycles": skipped,
            "WARNING lines": sum(" WARNING " in line or '"WARNING"' in line for line in lines),
            "seconds": round(elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--quota", type=int, default=20, help="catalog requests per window")
    parser.add_argument("--window", type=float, default=10.0, help="catalog window (seconds)")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-drain-"))
    redis = RedisServer(folder / "redis").start()
    postgres = PostgresServer(folder / "pg").start()
    sandbox = BackMarketSandbox(listings=args.rows, seed=5, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    try:
        url = postgres.create_database("bench")
        upgrade(url)
        sessions = session_factory(url)
        listings = [sandbox.listing(i) for i in range(args.rows)]
        seed_catalogue(sessions, listings)
        env = fleet_env(redis_url=redis.url, database_url=url, backmarket_url=server.url, token=TOKEN,
                        quota_requests=args.quota, quota_window_s=args.window, backmarket_penalty_s=10)
        from runtime.broker import build_broker
        from runtime.settings import Settings

        broker = build_broker(Settings(redis_url=redis.url))
        from actors import events

        def per_row():
            for listing in listings:
                broker.enqueue(events.recheck_stock.message_with_options(
                    args=("backmarket", listing["sku"]), kwargs={"refresh": True}))

        def drained():
            broker.enqueue(events.drain_rechecks.message("backmarket"))

        results = [phase("per-row", args, env, folder, sessions, sandbox, listings, per_row),
                   phase("drained", args, env, folder, sessions, sandbox, listings, drained)]
        print(f"{args.rows} flagged rows, catalog quota {args.quota} per {args.window:g} s, 1 process x "
              f"{args.threads} threads")
        for result in results:
            print("  " + ", ".join(f"{key}: {value}" for key, value in result.items()))
        print("  main in the issue: 551 rows, 61,819 skip cycles (a WARNING each) over 5 minutes")
        broker.close()
    finally:
        server.stop()
        postgres.stop()
        redis.stop()


if __name__ == "__main__":
    main()
