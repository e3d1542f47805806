"""Order events benchmark: producer → Redis → worker processes → committed ledger rows.

    .venv/bin/python bench/order_events.py [--events 20000] [--rate 500] [--rate-seconds 10]
                                           [--processes 2] [--threads 8] [--skus 1000] [--duplicates 0.1]
                                           [--batch-size 20] [--buffer-delay-ms 5]

Real servers: PostgreSQL with durable settings (fsync on, synchronous_commit on), ``redis-server``,
and ``--processes`` real ``dramatiq workers.fleet`` processes.  Events are ``order_created`` sent
with the Python producer API (:class:`runtime.producer.StockEvents`) over ``--skus`` SKUs, each with
its idempotency key checked in the ledger's transaction; ``--duplicates`` of them are sent twice
(a re-delivery), which must book nothing.

Commit time is when a ledger row becomes visible: a trigger added for the benchmark does
``pg_notify`` on insert, which PostgreSQL delivers at commit, and a listener here stamps it.
Enqueue time is taken just before the producer's enqueue call.

1. Throughput: ``--events`` events enqueued as fast as one producer thread can; events/s from
   the first enqueue to the last commit.  Once a message per event, once in batches of
   ``--batch-size`` (``StockEvents.send_batch``: one message and one commit a batch).
2. Latency: events at a fixed ``--rate`` per second for ``--rate-seconds``; p50/p90/p99/max of
   enqueue-to-commit; once a message per event, once through ``BufferedStockEvents`` (batches of
   up to ``--batch-size`` sent within ``--buffer-delay-ms``).
3. Baseline, same database: the naive synchronous path (what the old system did in the request):
   one connection, per event ``SELECT ... FOR UPDATE`` the stock row, check the key, ``UPDATE``,
   ``INSERT`` the ledger row, ``COMMIT``; events/s and per-event round trip.

CPU use per process group is sampled from /proc during each phase: on a small machine it tells
what bounds the figure.
"""
from __future__ import annotations

import argparse
import os
import random
import select
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from db.migrate import upgrade  # noqa: E402
from runtime.local_servers import PostgresServer, RedisServer, wait_until  # noqa: E402
from tests.fleet import WorkerFleet, fleet_env  # noqa: E402

DURABLE = ("synchronous_commit=on",)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- set-up --------------------------------------------------------------------------------------


#: Each stock row's quantity before the run: a shop sells what it has, so no order oversells here
#: (an oversold order is booked the same way, plus a warning line and a metric).
STARTING_STOCK = 1_000_000


def seed(conninfo: str, skus: int) -> list[str]:
    """A marketplace and ``skus`` variations with a stock row each, at :data:`STARTING_STOCK`."""
    names = [f"EV-{n:06d}" for n in range(skus)]
    with psycopg.connect(conninfo) as conn:
        conn.execute("INSERT INTO marketplaces (code, name) VALUES ('backmarket', 'Back Market') "
                     "ON CONFLICT (code) DO NOTHING")
        conn.execute("INSERT INTO variations (sku) SELECT unnest(%s::text[])", (names,))
        conn.execute("INSERT INTO marketplace_stock (variation_id, marketplace_id, listed) "
                     "SELECT v.id, m.id, %s FROM variations v, marketplaces m WHERE m.code = 'backmarket'",
                     (STARTING_STOCK,))
        # The benchmark's own probe: a notification per ledger row, delivered when its transaction commits.
        conn.execute("CREATE FUNCTION bench_notify_ledger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "PERFORM pg_notify('bench_ledger', COALESCE(NEW.order_id, '')); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER bench_notify_ledger AFTER INSERT ON stock_ledger FOR EACH ROW "
                     "EXECUTE FUNCTION bench_notify_ledger()")
        conn.execute("ANALYZE")
    return names


class CommitListener:
    """Stamps the moment each ledger row's commit is announced (``LISTEN bench_ledger``)."""

    def __init__(self, conninfo: str) -> None:
        self.connection = psycopg.connect(conninfo, autocommit=True)
        self.connection.execute("LISTEN bench_ledger")
        self.committed: dict[str, float] = {}
        self.rows = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        pgconn = self.connection.pgconn
        while not self._stop.is_set():
            if select.select([self.connection.fileno()], [], [], 0.1)[0]:
                now = time.time()
                pgconn.consume_input()
                while (notify := pgconn.notifies()) is not None:
                    self.rows += 1
                    self.committed.setdefault(notify.extra.decode(), now)

    def close(self) -> None:
        """Stop listening."""
        self._stop.set()
        self._thread.join(5)
        self.connection.close()


class CpuSampler:
    """CPU seconds used by each group of processes (workers, postgres, redis, this bench) in a phase."""

    GROUPS = (("dramatiq workers", "dramatiq"), ("postgres", "postgres"), ("redis", "redis-server"),
              ("bench (producer, listener)", "order_events.py"))

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.before = self._sample()

    def _sample(self) -> dict[str, float]:
        totals = {name: 0.0 for name, _ in self.GROUPS}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            for name, marker in self.GROUPS:
                if marker in command:
                    totals[name] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
                    break
        return totals

    def report(self) -> str:
        """``group NN%`` of one core each, over the phase."""
        elapsed = time.monotonic() - self.started
        after = self._sample()
        used = {name: (after[name] - self.before.get(name, 0.0)) / elapsed * 100 for name in after}
        busy = sum(used.values())
        return ", ".join(f"{name} {share:.0f}%" for name, share in used.items()) + \
            f" (sum {busy:.0f}% of {os.cpu_count() * 100}%)"


# -- phases --------------------------------------------------------------------------------------


def throughput(producer, listener: CommitListener, skus: list[str], events: int, duplicates: float,
               rng: random.Random, batch_size: int | None = None, prefix: str = "tp") -> dict:
    """Enqueue ``events`` (some twice) as fast as possible; wait for every row; return the figures.

    With ``batch_size``, the producer sends them with ``send_batch`` (``batch_size`` events a message).
    """
    from runtime.producer import make_event

    sent: dict[str, float] = {}
    cpu = CpuSampler()
    started = time.time()
    messages = 0
    pending = []
    for n in range(events):
        order_id = f"{prefix}-{n}"
        sent[order_id] = time.time()
        copies = 2 if rng.random() < duplicates else 1
        for _ in range(copies):
            event = make_event("order_created", marketplace="backmarket", order_id=order_id,
                               order_line_id=f"L{order_id}", sku=rng.choice(skus), quantity=1,
                               event_time=datetime.now(timezone.utc))
            messages += 1
            if batch_size is None:
                producer.send(event)
            else:
                pending.append(event)
                if len(pending) == batch_size:
                    producer.send_batch(pending, batch_size)
                    pending = []
    if pending:
        producer.send_batch(pending, batch_size)
    enqueued = time.time()
    wait_until(lambda: all(order_id in listener.committed for order_id in sent), 600, interval=0.05,
               what="every throughput event to commit")
    last = max(listener.committed[order_id] for order_id in sent)
    return {"events": events, "messages": messages, "seconds": last - started,
            "producer_rate": messages / (enqueued - started), "cpu": cpu.report()}


def fixed_rate(producer, listener: CommitListener, skus: list[str], rate: float, seconds: float,
               rng: random.Random, buffer=None, prefix: str = "rate") -> dict:
    """Send at ``rate`` per second for ``seconds``; return the enqueue-to-commit latencies.

    With ``buffer`` (a ``BufferedStockEvents``), each event is handed to it instead of enqueued
    on its own; its latency still counts from the hand-over.
    """
    from runtime.producer import make_event

    sent: dict[str, float] = {}
    count = int(rate * seconds)
    cpu = CpuSampler()
    start = time.perf_counter() + 0.1
    wall_offset = time.time() - time.perf_counter()
    late = 0
    for n in range(count):
        due = start + n / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        elif pause < -0.01:
            late += 1
        order_id = f"{prefix}-{n}"
        sent[order_id] = time.perf_counter() + wall_offset
        if buffer is None:
            producer.order_created("backmarket", order_id=order_id, order_line_id=f"L{order_id}",
                                   sku=rng.choice(skus), quantity=1, event_time=datetime.now(timezone.utc))
        else:
            buffer.send(make_event("order_created", marketplace="backmarket", order_id=order_id,
                                   order_line_id=f"L{order_id}", sku=rng.choice(skus), quantity=1,
                                   event_time=datetime.now(timezone.utc)))
    achieved = count / (time.perf_counter() - start)
    wait_until(lambda: all(order_id in listener.committed for order_id in sent), 120, interval=0.05,
               what="every fixed-rate event to commit")
    latencies = sorted(listener.committed[order_id] - sent[order_id] for order_id in sent)
    return {"count": count, "achieved": achieved, "late": late, "latencies": latencies, "cpu": cpu.report()}


def naive_serial(conninfo: str, skus: list[str], events: int, rng: random.Random) -> dict:
    """The old per-event path on one connection: lock, check key, update, insert, commit."""
    cpu = CpuSampler()
    round_trips = []
    with psycopg.connect(conninfo) as conn:
        started = time.perf_counter()
        for n in range(events):
            began = time.perf_counter()
            key = f"naive:backmarket:{n}:1:order_created"
            row = conn.execute("SELECT s.id, s.variation_id, s.marketplace_id, s.listed FROM marketplace_stock s "
                               "JOIN variations v ON v.id = s.variation_id WHERE v.sku = %s FOR UPDATE OF s",
                               (rng.choice(skus),)).fetchone()
            if conn.execute("SELECT 1 FROM stock_ledger WHERE idempotency_key = %s", (key,)).fetchone() is None:
                conn.execute("UPDATE marketplace_stock SET listed = listed - 1, updated_at = now() WHERE id = %s",
                             (row[0],))
                conn.execute("INSERT INTO stock_ledger (stock_id, variation_id, marketplace_id, quantity_before, "
                             "quantity_after, change, change_type, order_id, order_line_id, idempotency_key, "
                             "event_time) VALUES (%s, %s, %s, %s, %s, -1, 'order_created', %s, '1', %s, now())",
                             (row[0], row[1], row[2], row[3], row[3] - 1, f"naive-{n}", key))
            conn.commit()
            round_trips.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - started
    round_trips.sort()
    return {"rate": events / elapsed, "p50": round_trips[len(round_trips) // 2],
            "p99": round_trips[int(0.99 * len(round_trips))], "cpu": cpu.report()}


def percentile(ordered: list[float], p: float) -> float:
    """The ``p`` quantile of sorted values, in ms."""
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--rate-seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--skus", type=int, default=1000)
    parser.add_argument("--duplicates", type=float, default=0.1, help="Share of events sent twice.")
    parser.add_argument("--baseline-events", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=20, help="Events a message in the batched phase.")
    parser.add_argument("--buffer-delay-ms", type=float, default=5.0,
                        help="BufferedStockEvents' max_delay_s in the buffered latency phase (ms).")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="stocksync-bench-events-"))
    pg = PostgresServer(folder / "pg", options=DURABLE).start()
    redis = RedisServer(folder / "redis").start()
    fleet = listener = None
    rng = random.Random(7)
    try:
        url = pg.create_database("bench_events")
        upgrade(url)
        conninfo = pg.conninfo("bench_events")
        skus = seed(conninfo, args.skus)
        env = fleet_env(redis_url=redis.url, database_url=url, backmarket_url="http://127.0.0.1:9", token="unused")
        fleet = WorkerFleet(env, processes=args.processes, threads=args.threads, log_path=folder / "workers.log")
        fleet.start()
        os.environ.update(env)
        from runtime.broker import build_broker
        from runtime.producer import StockEvents
        from runtime.settings import Settings

        producer = StockEvents(build_broker(Settings(redis_url=redis.url)))
        listener = CommitListener(conninfo)
        # Warm up: the workers boot and every thread opens its database connection.
        for n in range(200):
            producer.order_created("backmarket", order_id=f"warm-{n}", order_line_id=f"Lwarm-{n}", sku=rng.choice(skus),
                                   quantity=1)
        wait_until(lambda: all(f"warm-{n}" in listener.committed for n in range(200)), 120, interval=0.05,
                   what="the workers to boot")

        print(f"machine: {os.cpu_count()} cores; PostgreSQL durable (fsync on, synchronous_commit on); "
              f"{args.processes} worker processes x {args.threads} threads; {args.skus} SKUs; "
              f"idempotency key checked on every event")
        result = throughput(producer, listener, skus, args.events, args.duplicates, rng)
        print(f"throughput: {result['events']} events ({result['messages']} messages, "
              f"{result['messages'] - result['events']} of them re-deliveries) committed in {result['seconds']:.2f} s "
              f"= {result['events'] / result['seconds']:,.0f} events/s "
              f"({result['messages'] / result['seconds']:,.0f} messages/s); one producer thread enqueues "
              f"{result['producer_rate']:,.0f}/s")
        print(f"  CPU: {result['cpu']}")
        batched = throughput(producer, listener, skus, args.events, args.duplicates, rng, args.batch_size, "tb")
        print(f"throughput, batches of {args.batch_size} (StockEvents.send_batch: one message and one commit a "
              f"batch): {batched['events']} events committed in {batched['seconds']:.2f} s "
              f"= {batched['events'] / batched['seconds']:,.0f} events/s")
        print(f"  CPU: {batched['cpu']}")
        timed = fixed_rate(producer, listener, skus, args.rate, args.rate_seconds, rng)
        ordered = timed["latencies"]
        print(f"latency at {args.rate:g}/s for {args.rate_seconds:g} s ({timed['count']} events, achieved "
              f"{timed['achieved']:.0f}/s): enqueue-to-commit p50 {percentile(ordered, 0.5):.1f} ms, "
              f"p90 {percentile(ordered, 0.9):.1f} ms, p99 {percentile(ordered, 0.99):.1f} ms, "
              f"max {ordered[-1] * 1000:.1f} ms, mean {statistics.fmean(ordered) * 1000:.1f} ms")
        print(f"  CPU: {timed['cpu']}")
        from runtime.producer import BufferedStockEvents

        with BufferedStockEvents(producer, max_events=args.batch_size, max_delay_s=args.buffer_delay_ms / 1000) as buffer:
            buffered = fixed_rate(producer, listener, skus, args.rate, args.rate_seconds, rng, buffer, "buffered")
        in_batches = buffered["latencies"]
        print(f"latency at {args.rate:g}/s through BufferedStockEvents (batches of up to {args.batch_size}, sent within "
              f"{args.buffer_delay_ms:g} ms): enqueue-to-commit p50 {percentile(in_batches, 0.5):.1f} ms, "
              f"p90 {percentile(in_batches, 0.9):.1f} ms, p99 {percentile(in_batches, 0.99):.1f} ms, "
              f"max {in_batches[-1] * 1000:.1f} ms")
        print(f"  CPU: {buffered['cpu']}")
        with psycopg.connect(conninfo) as conn:
            rows, keys = conn.execute("SELECT count(*), count(DISTINCT idempotency_key) FROM stock_ledger").fetchone()
            booked = conn.execute("SELECT -sum(change) FROM stock_ledger").scalar() if hasattr(conn, "scalar") else \
                conn.execute("SELECT -sum(change) FROM stock_ledger").fetchone()[0]
            listed = conn.execute("SELECT count(*) * %s - sum(listed) FROM marketplace_stock",
                                  (STARTING_STOCK,)).fetchone()[0]
        expected = 200 + 2 * args.events + timed["count"] + buffered["count"]
        print(f"check: {rows} ledger rows for {expected} distinct events (re-deliveries booked nothing: "
              f"{rows == expected == keys}); stock moved by {listed} = ledger {booked}")
        fleet.stop()
        fleet = None
        baseline = naive_serial(conninfo, skus, args.baseline_events, rng)
        print(f"baseline, naive synchronous per-event write (one connection: lock row, check key, update, insert, "
              f"commit): {baseline['rate']:,.0f} events/s, round trip p50 {baseline['p50'] * 1000:.1f} ms, "
              f"p99 {baseline['p99'] * 1000:.1f} ms")
        print(f"  CPU: {baseline['cpu']}")
        print(f"fleet / naive: {args.events / result['seconds'] / baseline['rate']:.1f}x the events/s a message per "
              f"event, {args.events / batched['seconds'] / baseline['rate']:.1f}x in batches")
        goal_rate = max(args.events / result["seconds"], args.events / batched["seconds"]) >= 1500
        goal_p99 = min(percentile(ordered, 0.99), percentile(in_batches, 0.99)) < 100
        print(f"goals: >= 1,500 events/s {'met' if goal_rate else 'NOT met'}; p99 < 100 ms at {args.rate:g}/s "
              f"{'met' if goal_p99 else 'NOT met'}")
    finally:
        if listener is not None:
            listener.close()
        if fleet is not None:
            fleet.stop()
        redis.stop()
        pg.stop()


if __name__ == "__main__":
    main()
