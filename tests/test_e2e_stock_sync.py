"""End to end: real ``dramatiq`` worker processes, real Redis and PostgreSQL, the sandbox.

The sync is started with the real CLI (``stocksync sync backmarket``) and checked row by row
against the sandbox's truth.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from sqlalchemy import text

from db.engine import session_factory
from db.ledger import check_invariant
from runtime.local_servers import wait_until
from sandbox.backmarket import BackMarketSandbox
from sandbox.server import serve_in_thread
from tests.fleet import ROOT, WorkerFleet, fleet_env

pytestmark = pytest.mark.e2e
TOKEN = "e2e-token"


def start_sync(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", "sync", "backmarket", "--no-wait", *extra],
                          cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


def run_row(sessions):
    with sessions() as session:
        return session.execute(text("SELECT * FROM sync_runs ORDER BY id DESC LIMIT 1")).mappings().first()


def local_stock(sessions) -> dict[str, int]:
    with sessions() as session:
        return dict(session.execute(text(
            "SELECT l.external_id, s.listed FROM listings l JOIN marketplace_stock s "
            "ON s.variation_id = l.variation_id AND s.marketplace_id = l.marketplace_id")).all())


def wait_finished(sessions, timeout: float):
    wait_until(lambda: (row := run_row(sessions)) is not None and row["status"] != "running", timeout,
               interval=0.2, what="the sync run to finish")
    return run_row(sessions)


@pytest.fixture
def sandbox():
    sandbox = BackMarketSandbox(listings=5000, seed=21, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    sandbox.url = server.url
    yield sandbox
    server.stop()


def test_fleet_syncs_5000_listings_exactly(tmp_path, redis_url, database_url, sandbox):
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=sandbox.url, token=TOKEN)
    fleets = [WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / f"w{i}.log").start() for i in range(2)]
    sessions = session_factory(database_url)
    try:
        started = start_sync(env)
        assert started.returncode == 0, started.stderr
        assert "started" in started.stdout
        run = wait_finished(sessions, 180)
        assert run["status"] == "succeeded", run["error"]
        pages = math.ceil(5000 / 50)
        assert (run["pages_done"], run["total_pages"], run["items"]) == (pages, pages, 5000)
        # ceil(N / 50) listing-page calls plus counted retries, nothing per country.
        assert run["api_calls"] == pages + run["retries"]
        assert sandbox.listing_page_requests() == run["api_calls"]
        assert local_stock(sessions) == sandbox.quantities()
        with sessions() as session:
            assert check_invariant(session) == []
            assert session.execute(text("SELECT count(*) FROM stock_ledger")).scalar() == run["changed"]

        # A second sync after the sandbox moved: only the moved rows change, each with one ledger row.
        moved = sandbox.change_stock(250, rng_seed=3)
        again = start_sync(env)
        assert again.returncode != 0 and "cooldown" in again.stderr  # manual cooldown, 30 min
        assert start_sync(env, "--force").returncode == 0
        wait_until(lambda: run_row(sessions)["id"] != run["id"], 30, what="the second run")
        second = wait_finished(sessions, 180)
        assert second["status"] == "succeeded", second["error"]
        assert second["changed"] == len(moved)
        assert local_stock(sessions) == sandbox.quantities()
        with sessions() as session:
            assert check_invariant(session) == []
    finally:
        for fleet in fleets:
            fleet.stop()


def test_sigkilled_worker_mid_sync_still_ends_with_every_row_right(tmp_path, redis_url, database_url, sandbox):
    # Latency keeps pages in flight long enough to kill a worker with work in its hands.
    sandbox.configure(latency_s=0.05)
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=sandbox.url, token=TOKEN)
    victim = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "victim.log").start()
    survivor = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "survivor.log").start()
    sessions = session_factory(database_url)
    try:
        assert start_sync(env).returncode == 0
        wait_until(lambda: (row := run_row(sessions)) is not None and row["pages_done"] >= 15, 120,
                   interval=0.05, what="the sync to be under way")
        victim.kill()
        assert run_row(sessions)["status"] == "running"
        # The killed worker's messages come back after the heartbeat timeout (3 s in tests).
        run = wait_finished(sessions, 240)
        assert run["status"] == "succeeded", run["error"]
        assert run["pages_done"] == run["total_pages"] == 100
        assert local_stock(sessions) == sandbox.quantities()
        with sessions() as session:
            assert check_invariant(session) == []
    finally:
        victim.kill()
        survivor.stop()


def test_page_that_fails_for_good_dead_letters_and_fails_the_run(tmp_path, redis_url, database_url, sandbox):
    sandbox.configure(malformed_pages={7})
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=sandbox.url, token=TOKEN)
    fleet = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "w.log").start()
    sessions = session_factory(database_url)
    try:
        assert start_sync(env).returncode == 0
        run = wait_finished(sessions, 180)
        assert run["status"] == "failed"
        assert "page 7 failed for good" in run["error"] and "MalformedResponse" in run["error"]
        import json

        import redis

        client = redis.Redis.from_url(redis_url)
        dead = [json.loads(raw) for raw in client.hvals("dramatiq:stock-fetch.XQ.msgs")]
        assert [(m["actor_name"], m["args"][1]) for m in dead] == [("fetch_listings_page", 7)]
        note = json.loads(client.get(f"stocksync:dead-letter-errors:{dead[0]['message_id']}"))
        assert note["error"].startswith("MalformedResponse") and note["failed_attempts"] == 1  # permanent: no retry
        # Every other page was still applied, and the ledger is whole.
        wait_until(lambda: run_row(sessions)["pages_done"] == 99, 60, what="the other pages")
        with sessions() as session:
            assert check_invariant(session) == []
            flagged = session.execute(text("SELECT count(*) FROM listings WHERE missing_since IS NOT NULL")).scalar()
            assert flagged == 0  # a failed run saw only part of the catalogue: it flags nothing
    finally:
        fleet.stop()


def test_two_worker_processes_never_exceed_the_quota_in_any_window(tmp_path, redis_url, database_url):
    # Back Market's catalog quota, time-scaled: 20 requests per 1 s instead of per 10 s.
    sandbox = BackMarketSandbox(listings=2000, seed=8, token=TOKEN, quota_requests=20, quota_window_s=1.0)
    server = serve_in_thread(sandbox.build_app())
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=server.url, token=TOKEN,
                    quota_requests=20, quota_window_s=1.0, rate_limit_margin_s="0.3")  # covers scheduling jitter on a loaded 2-core box
    fleets = [WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / f"w{i}.log").start() for i in range(2)]
    sessions = session_factory(database_url)
    try:
        assert start_sync(env).returncode == 0
        run = wait_finished(sessions, 120)
        assert run["status"] == "succeeded", run["error"]
        stats = sandbox.stats()
        assert stats["rate_limited"] == 0
        assert sandbox.max_in_any_window(1.0) <= 20
        assert run["api_calls"] == 40 and local_stock(sessions) == sandbox.quantities()
    finally:
        for fleet in fleets:
            fleet.stop()
        server.stop()
