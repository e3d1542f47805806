"""Two accounts synced at once under their quotas; CPU per 1,000 listings; a top-up's time to the marketplace.

    .venv/bin/python bench/accounts_sync.py [--listings 20000] [--topups 30] [--processes 2] [--threads 8]
        [--backmarket-quota 20 --backmarket-window 10] [--refurbed-quota 10 --refurbed-window 1]

Real ``redis-server`` and PostgreSQL (durable: fsync and ``synchronous_commit`` on), one real
``dramatiq workers.fleet`` (2 processes x 8 threads, as docker-compose runs it), and two sandboxes on
loopback in this process: the main Back Market account (``--listings`` listings, numbered pages of
50, the sandbox enforcing Back Market's quota of 20 requests per 10 s, the fleet's
``BACKMARKET_QUOTA_*`` the same) and the main Refurbed account (``add_offers(--listings)``: the same
catalogue, cursor pages of ``REFURBED_PAGE_SIZE`` = 100, the sandbox enforcing the fleet's
``REFURBED_QUOTA_*``, 10 per second by default).  The catalogue is seeded in PostgreSQL as a sync
left it an hour ago, so every sync here is a re-sync (the daily case, not a first import); before
each sync 2% of each marketplace's stock moves (sales), so each one applies changes.

1. Back Market alone, Refurbed alone (the baselines), then both at once: each run's wall time
   (opened to closed, from ``sync_runs``), its quota bound (pages / quota rate), the slowest bound
   and wall / slowest bound (the issue's target: within 1.05x); 429s the sandboxes answered; every
   row checked against the sandbox.
2. CPU seconds per 1,000 listings applied: the worker processes (psutil over the fleet's process
   tree), beside PostgreSQL, Redis and this process (the sandboxes), for each of those runs.
3. A top-up's time from ``StockEvents.stock_topup`` to the sandbox showing the new stock
   (``quantity(listing)`` / ``stock(sku)``, polled every 10 ms), p50 / p99 per account: on an idle
   fleet (one top-up per account at a time, 0.5 to 2 s apart), then during a sync of both accounts
   (sent at a steady pace over the first half of each account's quota bound, whether or not the
   previous one has shown).
"""
from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dramatiq  # noqa: E402
import psutil  # noqa: E402
from sqlalchemy import text  # noqa: E402

from db.engine import session_factory  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from runtime.broker import build_broker  # noqa: E402
from runtime.local_servers import PostgresServer, RedisServer, wait_until  # noqa: E402
from runtime.producer import StockEvents  # noqa: E402
from runtime.queues import STOCK_SYNC  # noqa: E402
from runtime.settings import Settings  # noqa: E402
from sandbox.backmarket import BackMarketSandbox  # noqa: E402
from sandbox.refurbed import RefurbedSandbox  # noqa: E402
from sandbox.server import serve_in_thread  # noqa: E402
from tests.fleet import WorkerFleet, fleet_env, seed_catalogue  # noqa: E402

SEED = 15
TOKEN = "bench-accounts-token"
BACKMARKET_PAGE = 50
REFURBED_PAGE = 100
DURABLE = ("synchronous_commit=on",)
#: Share of each marketplace's listings whose stock moves before each sync (sales between syncs).
DRIFT = 0.02
TARGET = 1.05


@dataclass
class Account:
    """One account of the bench: its sandbox, its quota, how to read one SKU's stock there."""

    code: str
    sandbox: BackMarketSandbox | RefurbedSandbox
    page_size: int
    quota: int
    window_s: float
    listings: int
    ids: dict[str, str] = field(default_factory=dict)  # SKU -> Back Market listing uuid

    @property
    def pages(self) -> int:
        return math.ceil(self.listings / self.page_size)

    @property
    def bound_s(self) -> float:
        """The quota bound of one sync: its pages at the quota's rate."""
        return self.pages / (self.quota / self.window_s)

    @property
    def earliest_s(self) -> float:
        """The least a sliding window allows: the first ``quota`` pages at once, the next each window later."""
        return (math.ceil(self.pages / self.quota) - 1) * self.window_s

    def shown(self, sku: str) -> int:
        """What the marketplace lists of ``sku`` now."""
        if self.code == "backmarket":
            return self.sandbox.quantity(self.ids[sku])
        return self.sandbox.stock(sku)

    def truth(self) -> dict[str, int]:
        if self.code == "backmarket":
            by_id = self.sandbox.quantities()
            return {sku: by_id[listing] for sku, listing in self.ids.items()}
        return self.sandbox.quantities()

    def drift(self, count: int, seed: str) -> set[str]:
        """Move the stock of ``count`` random listings (sales between syncs); return their SKUs."""
        if self.code == "backmarket":
            skus = {listing: sku for sku, listing in self.ids.items()}
            return {skus[listing] for listing in self.sandbox.change_stock(count, rng_seed=seed)}
        rng = random.Random(seed)
        chosen = rng.sample(sorted(self.sandbox.quantities()), count)
        for sku in chosen:
            self.sandbox.set_offer_stock(sku, (self.sandbox.stock(sku) + rng.randint(1, 40)) % 41)
        return set(chosen)

    def rate_limited(self) -> int:
        return self.sandbox.stats()["rate_limited"]


class TreeCpu:
    """CPU seconds (user + system) of process trees: a root, its descendants and its reaped children."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots

    def sample(self) -> dict[str, float]:
        totals = {}
        for name, pid in self.roots.items():
            root = psutil.Process(pid)
            total = 0.0
            for process in [root, *root.children(recursive=True)]:
                try:
                    times = process.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += times.user + times.system + times.children_user + times.children_system
            totals[name] = total
        totals["bench (sandboxes)"] = time.process_time()
        return totals


@dataclass
class Run:
    """One sync phase's figures."""

    name: str
    accounts: list[Account]
    wall_s: float
    runs: list[dict]
    cpu: dict[str, float]
    rate_limited: dict[str, int]
    correct: dict[str, bool]

    @property
    def items(self) -> int:
        return sum(run["items"] for run in self.runs)


class World:
    """The servers, the fleet, the sandboxes and a producer, for every phase."""

    def __init__(self, args, folder: Path) -> None:
        self.args = args
        self.folder = folder
        self.pg = PostgresServer(folder / "pg", options=DURABLE).start()
        self.redis = RedisServer(folder / "redis").start()
        self.url = self.pg.create_database("bench_accounts")
        upgrade(self.url)
        self.sessions = session_factory(self.url)
        n = args.listings
        backmarket = BackMarketSandbox(listings=n, seed=SEED, token=TOKEN, quota_requests=args.backmarket_quota,
                                       quota_window_s=args.backmarket_window)
        refurbed = RefurbedSandbox(token=TOKEN, quota_requests=args.refurbed_quota,
                                   quota_window_s=args.refurbed_window)
        refurbed.add_offers(n, seed=SEED)
        listings = [backmarket.listing(i) for i in range(n)]
        self.backmarket = Account("backmarket", backmarket, BACKMARKET_PAGE, args.backmarket_quota,
                                  args.backmarket_window, n, {listing["sku"]: listing["id"] for listing in listings})
        self.refurbed = Account("refurbed", refurbed, REFURBED_PAGE, args.refurbed_quota, args.refurbed_window, n)
        seed_catalogue(self.sessions, listings)
        seed_catalogue(self.sessions, [{"id": offer["id"], "sku": offer["sku"], "title": offer["instance_name"],
                                        "quantity": int(offer["stock"])} for offer in refurbed.offers()],
                       marketplace="refurbed", name="Refurbed", publication_state=None)
        self.servers = [serve_in_thread(backmarket.build_app()), serve_in_thread(refurbed.build_app())]
        env = fleet_env(redis_url=self.redis.url, database_url=self.url, backmarket_url=self.servers[0].url,
                        token=TOKEN, quota_requests=args.backmarket_quota, quota_window_s=args.backmarket_window,
                        backmarket_penalty_s=Settings.model_fields["backmarket_penalty_s"].default,
                        refurbed_base_url=self.servers[1].url, refurbed_token=TOKEN,
                        refurbed_quota_requests=args.refurbed_quota, refurbed_quota_window_s=args.refurbed_window)
        self.log = folder / "fleet.log"
        self.fleet = WorkerFleet(env, processes=args.processes, threads=args.threads, log_path=self.log).start()
        wait_until(lambda: self.log.read_text(errors="ignore").count("is ready for action") >= args.processes
                   or "Worker process is ready" in self.log.read_text(errors="ignore"), 120, what="the workers")
        self.cpu = TreeCpu({"workers": self.fleet.process.pid, "postgres": self.pg.process.pid,
                            "redis": self.redis.process.pid})
        self.broker = build_broker(Settings(redis_url=self.redis.url))
        self.events = StockEvents(self.broker)
        self.touched: set[str] = set()  # SKUs drifted or topped up: the next top-ups pick others
        self.phase = 0

    def close(self) -> None:
        self.fleet.stop()
        self.broker.close()
        for server in self.servers:
            server.stop()
        self.redis.stop()
        self.pg.stop()

    # -- syncs ---------------------------------------------------------------------------------------

    def last_run_id(self) -> int:
        with self.sessions() as session:
            return session.execute(text("SELECT coalesce(max(id), 0) FROM sync_runs")).scalar()

    def runs_since(self, run_id: int) -> list[dict]:
        with self.sessions() as session:
            return [dict(row) for row in session.execute(text(
                "SELECT id, target, status, started_at, finished_at, pages_done, total_pages, items, changed, "
                "api_calls, retries FROM sync_runs WHERE id > :id ORDER BY id"), {"id": run_id}).mappings()]

    def start(self, accounts: list[Account]) -> int:
        """Move some stock on each marketplace, then start a forced sync of each account; return the last run id before."""
        self.phase += 1
        for account in accounts:
            self.touched |= account.drift(max(1, int(account.listings * DRIFT)), f"phase-{self.phase}")
        before = self.last_run_id()
        for account in accounts:
            self.broker.enqueue(dramatiq.Message(queue_name=STOCK_SYNC, actor_name="start_stock_sync", args=(),
                                                 kwargs={"marketplace": account.code, "force": True,
                                                         "trigger": "manual"}, options={}))
        wait_until(lambda: len(self.runs_since(before)) == len(accounts), 30, what="the syncs to open")
        return before

    def running(self, before: int) -> bool:
        return any(run["status"] == "running" for run in self.runs_since(before))

    def sync(self, name: str, accounts: list[Account]) -> Run:
        """Sync ``accounts`` at once; return the figures."""
        limited = {account.code: account.rate_limited() for account in accounts}
        cpu = self.cpu.sample()
        before = self.start(accounts)
        longest = max(account.bound_s for account in accounts)
        wait_until(lambda: not self.running(before), longest * 3 + 120, interval=0.1, what=f"{name}: the syncs")
        spent = {group: seconds - cpu[group] for group, seconds in self.cpu.sample().items()}
        runs = self.runs_since(before)
        wall = (max(run["finished_at"] for run in runs) - min(run["started_at"] for run in runs)).total_seconds()
        return Run(name, accounts, wall, runs, spent,
                   {account.code: account.rate_limited() - limited[account.code] for account in accounts},
                   {account.code: self.local(account.code) == account.truth() for account in accounts})

    def local(self, code: str) -> dict[str, int]:
        with self.sessions() as session:
            return dict(session.execute(text(
                "SELECT v.sku, s.listed FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
                "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :code"), {"code": code}).all())

    # -- top-ups -------------------------------------------------------------------------------------

    def fresh_skus(self, count: int, rng: random.Random) -> list[str]:
        """SKUs no drift and no earlier top-up touched (their rows equal the marketplace)."""
        chosen = rng.sample(sorted(set(self.backmarket.ids) - self.touched), count)
        self.touched |= set(chosen)
        return chosen


class TopUps:
    """Top-ups sent through the producer API, each timed until its marketplace shows it (a polling thread)."""

    def __init__(self, world: World, label: str, timeout_s: float = 300.0) -> None:
        self.world = world
        self.label = label
        self.timeout_s = timeout_s
        self.pending: dict[tuple[str, str], tuple[Account, int, float]] = {}
        self.latencies: dict[str, list[float]] = {"backmarket": [], "refurbed": []}
        self.lost: dict[str, int] = {"backmarket": 0, "refurbed": 0}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def send(self, account: Account, sku: str, quantity: int) -> None:
        expected = account.shown(sku) + quantity
        with self.lock:
            self.pending[(account.code, sku)] = (account, expected, time.monotonic())
        self.world.events.stock_topup(account.code, sku=sku, quantity=quantity,
                                      reference=f"bench-{self.label}-{account.code}-{sku}", actor="bench")

    def waiting(self, code: str | None = None) -> int:
        with self.lock:
            return sum(1 for key in self.pending if code is None or key[0] == code)

    def _poll(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                items = list(self.pending.items())
            now = time.monotonic()
            for key, (account, expected, sent) in items:
                shown = account.shown(key[1])
                if shown == expected or now - sent > self.timeout_s:
                    with self.lock:
                        del self.pending[key]
                    if shown == expected:
                        self.latencies[account.code].append(now - sent)
                    else:
                        self.lost[account.code] += 1
            time.sleep(0.01)

    def close(self) -> None:
        wait_until(lambda: self.waiting() == 0, self.timeout_s + 10, interval=0.1, what=f"{self.label}: top-ups")
        self.stop.set()
        self.thread.join(5)


def idle_topups(world: World, count: int, rng: random.Random) -> TopUps:
    """``count`` top-ups per account, both accounts together, one pair at a time, 0.5 to 2 s apart."""
    topups = TopUps(world, "idle")
    for sku in world.fresh_skus(count, rng):
        time.sleep(rng.uniform(0.5, 2.0))
        for account in (world.backmarket, world.refurbed):
            topups.send(account, sku, rng.randint(1, 3))
        wait_until(lambda: topups.waiting() == 0, topups.timeout_s + 10, interval=0.01, what="an idle top-up")
    topups.close()
    return topups


def topups_during_sync(world: World, count: int, rng: random.Random) -> tuple[TopUps, dict[str, int], float]:
    """Sync both accounts; meanwhile send ``count`` top-ups per account at a steady pace over half its bound.

    Returns the top-ups, how many of each account's were sent while its sync ran, and how long the
    syncs took (the bench waits for them once every top-up has shown).
    """
    accounts = [world.backmarket, world.refurbed]
    skus = {account.code: world.fresh_skus(count, rng) for account in accounts}
    before = world.start(accounts)
    started = time.monotonic()
    topups = TopUps(world, "sync")
    plan = sorted((started + 1 + i * max(0.0, account.bound_s / 2 - 1) / count, account.code, i)
                  for account in accounts for i in range(count))
    by_code = {account.code: account for account in accounts}
    during = {account.code: 0 for account in accounts}
    for at, code, i in plan:
        time.sleep(max(0.0, at - time.monotonic()))
        runs = {run["target"]: run for run in world.runs_since(before)}
        during[code] += runs[code]["status"] == "running"
        topups.send(by_code[code], skus[code][i], rng.randint(1, 3))
    topups.close()
    wait_until(lambda: not world.running(before), max(a.bound_s for a in accounts) * 3 + 120, interval=0.2,
               what="the syncs under top-ups")
    runs = world.runs_since(before)
    wall = (max(run["finished_at"] for run in runs) - min(run["started_at"] for run in runs)).total_seconds()
    return topups, during, wall


# -- printing ----------------------------------------------------------------------------------------


def percentile(samples: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def print_run(run: Run) -> None:
    slowest = max(account.bound_s for account in run.accounts)
    bounds = ", ".join(f"{a.code} {a.pages} pages / ({a.quota}/{a.window_s:g} s) = {a.bound_s:.1f} s"
                       for a in run.accounts)
    earliest = max(account.earliest_s for account in run.accounts)
    print(f"{run.name}: wall {run.wall_s:.1f} s; quota bound {bounds}; slowest {slowest:.1f} s; "
          f"wall / slowest bound {run.wall_s / slowest:.3f}x (a sliding window's burst allows {earliest:.1f} s)")
    for sync in run.runs:
        span = (sync["finished_at"] - sync["started_at"]).total_seconds()
        print(f"  {sync['target']}: {sync['status']} in {span:.1f} s, pages {sync['pages_done']}/{sync['total_pages']}, "
              f"items {sync['items']} (changed {sync['changed']}), api_calls {sync['api_calls']} "
              f"(retries {sync['retries']}), 429s {run.rate_limited[sync['target']]}, "
              f"every row equal to the marketplace: {run.correct[sync['target']]}")
    per = {group: seconds / run.items * 1000 for group, seconds in run.cpu.items()}
    print(f"  CPU per 1,000 listings applied ({run.items} applied): workers {per['workers']:.3f} s "
          f"({run.cpu['workers']:.1f} s); postgres {per['postgres']:.3f} s; redis {per['redis']:.3f} s; "
          f"bench (sandboxes) {per['bench (sandboxes)']:.3f} s")


def print_topups(name: str, topups: TopUps, during: dict[str, int] | None = None) -> None:
    for code, samples in topups.latencies.items():
        extra = f", {during[code]} sent while its sync ran" if during else ""
        if not samples:
            print(f"{name}, {code}: no top-up shown ({topups.lost[code]} not shown within {topups.timeout_s:.0f} s)")
            continue
        print(f"{name}, {code}: top-up -> marketplace p50 {percentile(samples, 0.5):.2f} s, "
              f"p99 {percentile(samples, 0.99):.2f} s, max {max(samples):.2f} s, mean {sum(samples) / len(samples):.2f} s "
              f"({len(samples)} shown, {topups.lost[code]} not shown within {topups.timeout_s:.0f} s{extra})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listings", type=int, default=20_000, help="listings per account")
    parser.add_argument("--topups", type=int, default=30, help="top-ups per account, idle and during a sync")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--backmarket-quota", type=int, default=20, help="catalog requests per window")
    parser.add_argument("--backmarket-window", type=float, default=10.0, help="seconds")
    parser.add_argument("--refurbed-quota", type=int, default=10, help="requests per window")
    parser.add_argument("--refurbed-window", type=float, default=1.0, help="seconds")
    args = parser.parse_args()
    for name in ("listings", "topups", "processes", "threads", "backmarket_quota", "refurbed_quota"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.topups * 3 > args.listings // 2:  # fresh SKUs: neither drifted (up to 16%) nor topped up before
        parser.error(f"--topups {args.topups} is too many for {args.listings} listings")

    folder = Path(tempfile.mkdtemp(prefix="bench-accounts-"))
    rng = random.Random(SEED)
    world = World(args, folder)
    try:
        print(f"machine: {os.cpu_count()} cores; PostgreSQL durable; fleet {args.processes} processes x "
              f"{args.threads} threads; {args.listings} listings per account, the same catalogue on both, "
              f"{DRIFT:.0%} of each marketplace's stock moved before each sync")
        alone = [world.sync("Back Market alone", [world.backmarket]), world.sync("Refurbed alone", [world.refurbed])]
        both = world.sync("both at once", [world.backmarket, world.refurbed])
        for run in [*alone, both]:
            print_run(run)
        slowest = max(world.backmarket.bound_s, world.refurbed.bound_s)
        print(f"target: both at once within {TARGET}x the slowest bound: "
              f"{'met' if both.wall_s <= TARGET * slowest else 'NOT met'} ({both.wall_s / slowest:.3f}x); "
              f"alone, the slowest took {max(r.wall_s for r in alone) / slowest:.3f}x its bound")
        workers = {run.name: run.cpu["workers"] / run.items * 1000 for run in [*alone, both]}
        print("worker CPU per 1,000 listings: " + ", ".join(f"{name} {value:.3f} s" for name, value in workers.items()))
        print_topups("idle fleet", idle_topups(world, args.topups, rng))
        topups, during, wall = topups_during_sync(world, args.topups, rng)
        print_topups("during a sync of both", topups, during)
        print(f"  (that sync of both, with the top-ups, took {wall:.1f} s)")
        log = world.log.read_text(errors="ignore").splitlines()
        levels = {level: sum(f" {level} " in line or f'"{level}"' in line for line in log)
                  for level in ("WARNING", "ERROR")}
        print(f"fleet log: {len(log)} lines, {levels['WARNING']} WARNING, {levels['ERROR']} ERROR ({world.log})")
    finally:
        world.close()


if __name__ == "__main__":
    main()
