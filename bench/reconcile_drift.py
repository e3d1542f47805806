"""Reconciliation with causes (drift explained) against today's walk without them: same data, alternated.

    .venv/bin/python bench/reconcile_drift.py [--listings 20000] [--runs 3] [--hand-edit-pct 2] [--per-cause 100]
                                              [--statements]

Real ``redis-server`` and PostgreSQL (the test servers' settings: fsync off), the Back Market
sandbox over HTTP in this process (its quota off: this measures our side).  The catalogue is
seeded as a sync leaves it, then the bench makes differences whose cause it knows:

- ``hand_edit``: ``--hand-edit-pct`` of the listings moved on the sandbox (+1..+3, or -1), no order, no push;
- ``push_lost``: a top-up of 2 booked and pushed (the real push path), then the sandbox set back to
  what the push read (the push ten minutes ago, out of the clock skew);
- ``stale_read``: an order booked with an event time 5 minutes ago that the sandbox does not show,
  its ledger row's ``created_at`` moved a day ahead (booked after every run's read);
- ``one_sided_restock``: an order and its cancellation booked (restocked here), the sandbox kept the unit out;
- ``unbooked_order``: the sandbox sold one, the order is in the intake's memo (Redis), not in the ledger.

``--per-cause`` rows each for the last four.  Then ``run_reconciliation("backmarket", dry_run=True)``
(what ``stocksync reconcile backmarket --dry-run`` calls) runs in-process in two modes, alternated,
``--runs`` each after one untimed warm-up of each: *causes* (main) and *today's* (this process only
patches ``db.reconcile._explain`` to record no cause and ``pipelines.reconcile._unbooked_orders`` to
read no memo; the code is unchanged).  A dry run corrects nothing, so every run sees the same data.

Printed: wall time p50/min per mode and the ratio, rows found and explained, the causes found
against the causes made (per row: every report's cause against the one the bench made for it),
and CPU seconds of the PostgreSQL server (postmaster and its backends, from /proc) and of this
process (the sandbox included) per run.  With ``--statements``, one more run of each mode timed per
SQL statement (``bench/bulk_sync.py``'s cursor-event timer): where the difference between the modes goes.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from core.drift import CAUSES  # noqa: E402
from core.events import StockEvent  # noqa: E402
from db.events import record_stock_events  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from runtime.local_servers import PostgresServer, RedisServer  # noqa: E402
from sandbox.backmarket import BackMarketSandbox  # noqa: E402
from sandbox.server import serve_in_thread  # noqa: E402
from tests.fleet import seed_catalogue  # noqa: E402

TOKEN = "bench-reconcile-token"
TICK = os.sysconf("SC_CLK_TCK")


def pg_cpu_seconds(postmaster: int) -> float:
    """CPU seconds of the PostgreSQL server: the postmaster, its reaped children and its live backends."""
    def fields(pid: int) -> list[str]:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()

    own = fields(postmaster)
    ticks = sum(int(own[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = fields(int(entry))
            except OSError:
                continue  # gone meanwhile: the postmaster's cutime has it now
            if int(stat[1]) == postmaster:
                ticks += int(stat[11]) + int(stat[12])
    return ticks / TICK


def book(sessions, events: list[StockEvent]) -> None:
    with sessions() as session:
        record_stock_events(session, events)
        session.commit()


def make_drift(args, sandbox, listings, sessions) -> dict[str, str]:
    """Make the differences; returns listing id -> the cause the bench made."""
    from pipelines import events as pipeline
    from pipelines.orders import IntakeState, _unconfirmed
    from runtime import resources
    from runtime.settings import get_settings

    rng = random.Random(18)
    now = datetime.now(timezone.utc)
    # Orders need a unit to take: the causes that remove one pick listings with 2 or more.
    stocked = [l for l in listings if int(l["quantity"]) >= 2]
    rng.shuffle(stocked)
    picked = iter(stocked)
    made: dict[str, str] = {}

    def take(count: int, cause: str) -> list[dict]:
        chosen = [next(picked) for _ in range(count)]
        made.update({l["id"]: cause for l in chosen})
        return chosen

    hand = take(len(listings) * args.hand_edit_pct // 100, "hand_edit")
    for n, listing in enumerate(hand):
        quantity = int(listing["quantity"])
        sandbox.set_quantity(listing["id"], quantity - 1 if n % 4 == 3 else quantity + 1 + n % 3)

    lost = take(args.per_cause, "push_lost")
    book(sessions, [StockEvent.of("stock_topup", marketplace="backmarket", sku=l["sku"], quantity=2,
                                  event_time=now - timedelta(minutes=20), reference=f"PO-{n}")
                    for n, l in enumerate(lost)])
    outcomes = pipeline.push_rows("backmarket", [l["sku"] for l in lost], "bench-push", lease=pipeline.push_lease())
    assert [o.status for o in outcomes] == ["pushed"] * len(lost), Counter(o.status for o in outcomes)
    for listing in lost:
        sandbox.set_quantity(listing["id"], int(listing["quantity"]))
    with sessions() as session:
        # Pushed ten minutes ago: a read within the clock skew of a push is not trusted (deferred).
        session.execute(text("UPDATE marketplace_stock s SET pushed_at = pushed_at - interval '10 minutes' "
                             "FROM variations v WHERE v.id = s.variation_id AND v.sku = ANY(CAST(:skus AS text[]))"),
                        {"skus": [l["sku"] for l in lost]})
        session.commit()

    stale = take(args.per_cause, "stale_read")
    book(sessions, [StockEvent.of("order_created", marketplace="backmarket", sku=l["sku"], quantity=1,
                                  order_id=f"S-{n}", order_line_id=f"SL-{n}", event_time=now - timedelta(minutes=5))
                    for n, l in enumerate(stale)])
    with sessions() as session:
        # Booked after the read, for every run of the bench: the ledger row's booking time a day ahead.
        session.execute(text("UPDATE stock_ledger SET created_at = now() + interval '1 day' "
                             "WHERE order_id LIKE 'S-%' AND change_type = 'order_created'"))
        session.commit()

    restocked = take(args.per_cause, "one_sided_restock")
    book(sessions, [StockEvent.of(kind, marketplace="backmarket", sku=l["sku"], quantity=1, order_id=f"C-{n}",
                                  order_line_id=f"CL-{n}", event_time=now - timedelta(minutes=minutes))
                    for n, l in enumerate(restocked) for kind, minutes in (("order_created", 30),
                                                                           ("order_cancelled", 10))])
    for listing in restocked:
        sandbox.set_quantity(listing["id"], int(listing["quantity"]) - 1)

    unbooked = take(args.per_cause, "unbooked_order")
    memo = IntakeState(None, get_settings().redis_namespace, "backmarket").unconfirmed_key
    redis = resources.sync_redis()
    for n, listing in enumerate(unbooked):
        sandbox.set_quantity(listing["id"], int(listing["quantity"]) - 1)
        order = StockEvent.of("order_created", marketplace="backmarket", sku=listing["sku"], quantity=1,
                              order_id=f"U-{n}", order_line_id=f"UL-{n}", event_time=now - timedelta(minutes=3))
        redis.hset(memo, f"U-{n}:UL-{n}:order_created", _unconfirmed([order], time.time(), sends=1))
    return made


def no_causes(session, reports, fetched_at, unbooked_orders) -> Counter:
    """Today's walk: the report rows without a cause or evidence, nothing counted."""
    for report in reports:
        report.update(cause=None, evidence=None)
    return Counter()


def run_once(mode: str, postmaster: int, sessions) -> dict:
    import db.reconcile
    import pipelines.reconcile
    from pipelines.reconcile import run_reconciliation

    with ExitStack() as patches:
        if mode == "today":
            patches.enter_context(mock.patch.object(db.reconcile, "_explain", no_causes))
            patches.enter_context(mock.patch.object(pipelines.reconcile, "_unbooked_orders", lambda marketplace: {}))
        pg_before, own_before = pg_cpu_seconds(postmaster), time.process_time()
        started = time.perf_counter()
        summary = run_reconciliation("backmarket", dry_run=True, threshold=10**9, trigger="manual")
        seconds = time.perf_counter() - started
        pg_cpu, own_cpu = pg_cpu_seconds(postmaster) - pg_before, time.process_time() - own_before
    with sessions() as session:
        rows = dict(session.execute(text("SELECT listing, cause FROM reconciliation_reports WHERE run_id = :r"),
                                    {"r": summary.run_id}).all())
    return {"mode": mode, "seconds": seconds, "pg_cpu": pg_cpu, "own_cpu": own_cpu, "summary": summary, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listings", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per mode (after one untimed warm-up each)")
    parser.add_argument("--hand-edit-pct", type=int, default=2)
    parser.add_argument("--per-cause", type=int, default=100, help="rows each of the other four causes")
    parser.add_argument("--statements", action="store_true",
                        help="then one instrumented run per mode: each statement's client-side ms per page")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    redis = RedisServer(folder / "redis").start()
    postgres = PostgresServer(folder / "pg").start()
    sandbox = BackMarketSandbox(listings=args.listings, seed=18, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    try:
        url = postgres.create_database("bench")
        upgrade(url)
        os.environ.update({"DATABASE_URL": url, "REDIS_URL": redis.url, "BACKMARKET_BASE_URL": server.url,
                           "BACKMARKET_TOKEN": TOKEN, "BACKMARKET_QUOTA_REQUESTS": "1000000",
                           "BACKMARKET_QUOTA_WINDOW_S": "1", "METRICS_PORT": "0"})
        from runtime import resources
        from runtime.settings import get_settings

        get_settings.cache_clear()
        resources.database_url.cache_clear()
        sessions = resources.sessions()
        listings = [sandbox.listing(i) for i in range(args.listings)]
        seed_catalogue(sessions, listings)
        made = make_drift(args, sandbox, listings, sessions)
        expected = Counter(made.values())

        results = []
        for mode in ("causes", "today"):
            warm = run_once(mode, postgres.process.pid, sessions)
            print(f"warm-up {mode}: {warm['seconds']:.2f} s", flush=True)
        for n in range(args.runs):
            for mode in ("causes", "today") if n % 2 == 0 else ("today", "causes"):
                result = run_once(mode, postgres.process.pid, sessions)
                results.append(result)
                print(f"run {n + 1} {mode}: {result['seconds']:.2f} s, PostgreSQL CPU {result['pg_cpu']:.2f} s, "
                      f"bench process CPU {result['own_cpu']:.2f} s", flush=True)

        print(f"\n{args.listings} listings, {sum(expected.values())} differences made, "
              f"{len(results) // 2} timed dry runs per mode, alternated; {os.cpu_count()} cores")
        times = {}
        for mode in ("causes", "today"):
            runs = [r for r in results if r["mode"] == mode]
            seconds = [r["seconds"] for r in runs]
            times[mode] = statistics.median(seconds)
            summary = runs[-1]["summary"]
            explained = sum(cause is not None for cause in runs[-1]["rows"].values())
            print(f"  {mode:6}: p50 {times[mode]:.2f} s, min {min(seconds):.2f} s "
                  f"({summary.listings / times[mode]:,.0f} listings/s); PostgreSQL CPU p50 "
                  f"{statistics.median(r['pg_cpu'] for r in runs):.2f} s, bench process CPU p50 "
                  f"{statistics.median(r['own_cpu'] for r in runs):.2f} s; pages {summary.pages}, "
                  f"listings {summary.listings}, rows differing {summary.discrepancies}, explained {explained}, "
                  f"deferred {summary.deferred}")
        print(f"  ratio causes / today: {times['causes'] / times['today']:.2f}x")

        print("  causes found (last run with causes) against made:")
        summary = [r for r in results if r["mode"] == "causes"][-1]["summary"]
        for cause in CAUSES:
            flag = "" if summary.causes[cause] == expected[cause] else "   <- differs"
            print(f"    {cause:18} found {summary.causes[cause]:5}  made {expected[cause]:5}{flag}")
        for result in results:
            rows = result["rows"]
            if result["mode"] == "causes":
                wrong = {listing: (cause, made.get(listing)) for listing, cause in rows.items()
                         if made.get(listing) != cause}
                missed = sorted(set(made) - set(rows))
            else:
                wrong = {listing: (cause, None) for listing, cause in rows.items() if cause is not None}
                missed = sorted(set(made) - set(rows))
            if wrong or missed or len(rows) != len(made):
                print(f"    run {result['summary'].run_id} ({result['mode']}): {len(wrong)} rows with another cause "
                      f"(found, made) {list(wrong.items())[:5]}, {len(missed)} made and not found {missed[:5]}")
        if all(r["rows"].keys() == made.keys() for r in results) and all(
                r["rows"] == made for r in results if r["mode"] == "causes"):
            print("    every run found exactly the rows made; every run with causes gave each row the cause made")
        if args.statements:
            from bench.bulk_sync import StatementTimes

            for mode in ("causes", "today"):
                with StatementTimes() as statements:
                    result = run_once(mode, postgres.process.pid, sessions)
                print(f"  where a page's time goes, {mode} (instrumented run, {result['seconds']:.2f} s):")
                print("\n".join(statements.report(result["summary"].pages, most=14, min_count=1)))
    finally:
        server.stop()
        postgres.stop()
        redis.stop()


if __name__ == "__main__":
    main()
