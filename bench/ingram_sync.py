"""Ingram Micro supplier sync benchmark: how close to the supplier's quotas a sync runs.

    .venv/bin/python bench/ingram_sync.py [--products 1000] [--time-scale 0.2] [--processes 2]
                                          [--threads 8] [--change 0.05] [--margin-s 0.001]

N sandbox products → ``stocksync ingram`` through real ``dramatiq`` worker processes on a real
Redis → a real PostgreSQL (fsync on), at the default quotas (60 price & availability requests a
minute, details at least 0.5 s apart) with the sandbox **and** the fleet's limiters on the same
time scale (0.2: a minute lasts 12 s), so a run takes under two minutes rather than eight.

1. First sync (every product new): time from start to the run closed (every batch applied and
   every details call done), and its quota bound ``max(batches / P&A rate, details calls /
   details rate)``; prints the ratio.
2. Re-sync after ``--change`` of the products changed at the sandbox: its time as a share of the
   first.

Both runs are checked product by product against the sandbox's truth, and the sandbox's own
counters say whether any quota window was exceeded.  ``--margin-s`` is ``INGRAM_RATE_MARGIN_S``:
what each limiter window adds for arrival jitter (loopback here; production defaults to 20 ms).
The per-call costs that do not shrink with the time scale (the limiter's wake-up, the margin, the
start) are printed, measured, under "what bounds it"."""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from db.engine import session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from runtime.local_servers import PostgresServer, RedisServer, wait_until  # noqa: E402
from sandbox.ingram import DETAILS, PA, IngramSandbox  # noqa: E402
from sandbox.server import serve_in_thread  # noqa: E402
from tests.fleet import WorkerFleet, fleet_env  # noqa: E402

DURABLE = ("synchronous_commit=on",)
PA_PER_MINUTE = 60
DETAILS_INTERVAL_S = 0.5
BATCH_SIZE = 50


def local_products(sessions) -> dict[str, dict]:
    """What the database holds per part number, in the sandbox truth's shape."""
    with sessions() as session:
        rows = session.execute(text(
            "SELECT part_number, price, currency, total_availability, warehouses, status, product_class, "
            "details_status FROM supplier_products")).mappings().all()
    return {row["part_number"]: {"price": row["price"], "currency": row["currency"], "total": row["total_availability"],
                                 "warehouses": {w: v["available"] for w, v in (row["warehouses"] or {}).items()},
                                 "status": row["status"], "product_class": row["product_class"],
                                 "details": row["details_status"]} for row in rows}


def wrong_products(sessions, sandbox: IngramSandbox) -> list[str]:
    """Part numbers whose stored price, stock, status or details presence differ from the sandbox."""
    local = local_products(sessions)
    wrong = []
    for part, truth in sandbox.truth().items():
        row = local.get(part)
        expected_details = "ok" if sandbox.details_json(part) is not None else "none"
        if row is None or row.pop("details") != expected_details or row != truth:
            wrong.append(part)
    return wrong


def run_sync(sessions, force: bool = True) -> tuple[int, float, float]:
    """Start a supplier sync and wait for its run to close.

    Returns (sync id, when it was started on the monotonic clock the sandbox also uses, its
    duration in seconds from the run's own row: created → closed, both PostgreSQL's clock).
    """
    from actors.ingram import begin_supplier_sync
    from db.syncs import get_run

    started = time.monotonic()
    sync_id = begin_supplier_sync(trigger="manual", force=force)

    def done():
        with sessions() as session:
            return get_run(session, sync_id).status != "running"

    # Polled gently: this process also serves the sandbox, whose clock times the quotas.
    wait_until(done, 3600, interval=0.1, what=f"supplier sync {sync_id} to finish")
    with sessions() as session:
        return sync_id, started, get_run(session, sync_id).duration_s


def run_row(sessions, sync_id: int):
    with sessions() as session:
        return session.execute(text("SELECT * FROM sync_runs WHERE id = :s"), {"s": sync_id}).mappings().one()


def quota_bound(batches: int, details: int, scale: float) -> float:
    """max(batches / P&A rate, details calls / details rate), in scaled seconds."""
    pa_rate = PA_PER_MINUTE / (60.0 * scale)
    details_rate = 1 / (DETAILS_INTERVAL_S * scale)
    return max(batches / pa_rate, details / details_rate)


def report(name: str, row, started: float, seconds: float, sandbox: IngramSandbox, scale: float, margin_s: float,
           sessions) -> dict:
    counters = row["details"]
    details = int(counters.get("details_done", 0)) + int(counters.get("details_failed", 0))
    bound = quota_bound(row["total_pages"], details, scale)
    wrong = wrong_products(sessions, sandbox)
    stats = sandbox.stats()
    pa_window = 60.0 * scale
    details_window = DETAILS_INTERVAL_S * scale
    print(f"{name}: {seconds:.2f} s, status {row['status']}; {row['total_pages']} batches, {details} details calls "
          f"({counters.get('details_none', 0)} without details), changed {row['changed']}, "
          f"api_calls {row['api_calls']} (retries {row['retries']}, errors {row['errors']})")
    print(f"  quota bound max({row['total_pages']} / {PA_PER_MINUTE / pa_window:.1f}/s, "
          f"{details} / {1 / details_window:.1f}/s) = {bound:.2f} s; ratio {seconds / bound:.3f}")
    print(f"  sandbox: 429s {stats['rate_limited']}, most P&A in any {pa_window:g} s window "
          f"{sandbox.max_in_any_window(PA, pa_window)} (quota {PA_PER_MINUTE}), most details in any "
          f"{details_window * 1000:g} ms window {sandbox.max_in_any_window(DETAILS, details_window)} (quota 1), "
          f"shortest details gap {1000 * (sandbox.min_gap_s(DETAILS) or 0):.2f} ms; products wrong: {len(wrong)}")
    calls = sandbox.quota_requests(DETAILS, admitted_only=True)
    if len(calls) > 1:
        gaps = sorted(b - a for a, b in zip(calls, calls[1:]))
        mean = sum(gaps) / len(gaps)
        refused = len(sandbox.quota_requests(DETAILS)) - len(calls)
        print(f"  what bounds it: start → first details call {1000 * (calls[0] - started):.0f} ms, then "
              f"{len(calls)} admitted details calls at a mean gap of {1000 * mean:.2f} ms (median "
              f"{1000 * gaps[len(gaps) // 2]:.2f}, p99 {1000 * gaps[int(len(gaps) * 0.99)]:.2f}) = the "
              f"{1000 * details_window:g} ms quota + {1000 * margin_s:g} ms margin + "
              f"{1000 * (mean - details_window - margin_s):.2f} ms of limiter wake-up and {refused} 429s "
              f"(a refused call gives its slot back and waits for X-RateLimit-Reset)")
    return {"seconds": seconds, "bound": bound, "wrong": len(wrong), "details": details}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--time-scale", type=float, default=0.2,
                        help="quota windows and retry delays multiplier, for the sandbox and the fleet")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--change", type=float, default=0.05, help="share of products changed before the re-sync")
    parser.add_argument("--margin-s", type=float, default=0.001, help="INGRAM_RATE_MARGIN_S (absolute seconds)")
    parser.add_argument("--worker-timeout-ms", type=int, default=0,
                        help="how often idle queues are polled (dramatiq_worker_timeout; default: 500 ms x scale)")
    args = parser.parse_args()
    scale = args.time_scale

    folder = Path(tempfile.mkdtemp(prefix="stocksync-bench-ingram-"))
    pg = PostgresServer(folder / "pg", options=DURABLE).start()
    redis = RedisServer(folder / "redis").start()
    sandbox = IngramSandbox(products=args.products, seed=3, time_scale=scale)
    server = serve_in_thread(sandbox.build_app())
    fleet = None
    try:
        url = pg.create_database("bench_ingram")
        upgrade(url)
        env = fleet_env(redis_url=redis.url, database_url=url, backmarket_url="http://127.0.0.1:9", token="unused",
                        ingram_base_url=server.url, ingram_client_id="sandbox-client",
                        ingram_client_secret="sandbox-secret", ingram_customer_number="20-222222",
                        ingram_time_scale=scale, ingram_rate_margin_s=args.margin_s, ingram_max_concurrent=4)
        # Idle queues are polled every second by default; on a scaled clock that is scaled too.
        env["dramatiq_worker_timeout"] = str(args.worker_timeout_ms or max(10, round(1000 * scale / 2)))
        os.environ.update(env)
        from runtime.settings import get_settings

        get_settings.cache_clear()
        from pipelines.ingram import SUPPLIER
        from db import supplier

        sessions = session_factory(url)
        with sessions() as session:
            supplier.add_products(session, SUPPLIER, [(part, None) for part in sandbox.part_numbers()])
            session.commit()
        log = folder / "workers.log"
        fleet = WorkerFleet(env, processes=args.processes, threads=args.threads, log_path=log).start()
        # Let the workers boot before the clock starts: we time the sync, not Python start-up.
        wait_until(lambda: log.exists() and log.read_text(errors="ignore").count("is ready for action")
                   >= args.processes, 60, what="workers to boot")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (other work on the machine "
              f"adds arrival jitter, hence 429s); {args.processes} worker processes x {args.threads} threads; "
              f"{args.products} products; time scale {scale:g} (P&A quota {PA_PER_MINUTE} per {60 * scale:g} s, "
              f"details at least {DETAILS_INTERVAL_S * scale * 1000:g} ms apart); limiter margin "
              f"{args.margin_s * 1000:g} ms; idle queues polled every {env['dramatiq_worker_timeout']} ms")

        first_id, first_start, first_s = run_sync(sessions)
        first = report("first sync", run_row(sessions, first_id), first_start, first_s, sandbox, scale, args.margin_s,
                       sessions)
        changed = sandbox.change_products(max(1, math.ceil(args.products * args.change)), rng_seed=5)
        sandbox.reset_stats()
        second_id, second_start, second_s = run_sync(sessions)
        second = report(f"re-sync after {len(changed)} products changed", run_row(sessions, second_id),
                        second_start, second_s, sandbox, scale, args.margin_s, sessions)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        print(f"first sync / quota bound: {first['seconds'] / first['bound']:.3f} (target <= 1.05)")
        print(f"re-sync / first sync: {second['seconds'] / first['seconds']:.3f} (target <= 0.15)")
    finally:
        if fleet is not None:
            fleet.stop()
        server.stop()
        redis.stop()
        pg.stop()


if __name__ == "__main__":
    main()
