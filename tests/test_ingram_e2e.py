"""End to end: real ``dramatiq`` worker processes, real Redis and PostgreSQL, the sandbox Ingram Micro.

The quotas are the real ones in shape (P&A per minute, details at least an interval apart) on a
time scale of 0.05, so a minute lasts 3 s.  Every run is checked product by product against the
sandbox's truth, and the quotas against the sandbox's own per-window counters.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis
from sqlalchemy import text

from db.engine import session_factory
from runtime.local_servers import wait_until
from sandbox.ingram import DETAILS, PA, IngramSandbox
from sandbox.server import serve_in_thread
from tests.fleet import ROOT, WorkerFleet, fleet_env

pytestmark = pytest.mark.e2e

SCALE = 0.05  # one minute = 3 s
PA_WINDOW_S = 60 * SCALE
DETAILS_INTERVAL_S = 0.5 * SCALE
# Added to the fleet's limiter windows: it covers arrival jitter on a busy 2-core machine, where a
# request granted its slot can reach the sandbox tens of milliseconds late and the next one on time
# (the tests prove the quotas are never exceeded; bench/ingram_sync.py measures how close they run).
MARGIN_S = 0.1


def ingram_env(redis_url: str, database_url: str, sandbox_url: str, **extra) -> dict[str, str]:
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url="http://127.0.0.1:9",
                    token="unused", ingram_base_url=sandbox_url, ingram_client_id="sandbox-client",
                    ingram_client_secret="sandbox-secret", ingram_customer_number="20-222222",
                    ingram_time_scale=SCALE, ingram_rate_margin_s=MARGIN_S, **extra)
    # Idle queues are polled every 100 ms rather than every second: a scaled second is 50 ms.
    env["dramatiq_worker_timeout"] = "100"
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def follow_sandbox_products(env: dict[str, str], sandbox_url: str) -> None:
    result = cli(env, "ingram", "add-products", "--from-sandbox", sandbox_url)
    assert result.returncode == 0, result.stderr


def run_row(sessions, sync_id: int | None = None):
    with sessions() as session:
        query = "SELECT * FROM sync_runs WHERE kind = 'supplier' ORDER BY id DESC LIMIT 1" if sync_id is None else \
            "SELECT * FROM sync_runs WHERE id = :s"
        return session.execute(text(query), {"s": sync_id}).mappings().first()


def wait_finished(sessions, sync_id: int, timeout: float):
    wait_until(lambda: run_row(sessions, sync_id)["status"] != "running", timeout, interval=0.1,
               what=f"supplier sync {sync_id} to finish")
    return run_row(sessions, sync_id)


def start(env: dict[str, str], *extra: str) -> int:
    result = cli(env, "ingram", "sync", "--no-wait", *extra)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[2])


def wrong_products(sessions, sandbox: IngramSandbox) -> list[str]:
    """Part numbers whose price, stock (total and per warehouse), status or details differ from the truth."""
    with sessions() as session:
        rows = {row["part_number"]: row for row in session.execute(text(
            "SELECT part_number, price, currency, total_availability, warehouses, status, product_class, details, "
            "details_status FROM supplier_products")).mappings()}
    wrong = []
    for part, truth in sandbox.truth().items():
        row = rows.get(part)
        if row is None:
            wrong.append(part)
            continue
        local = {"price": row["price"], "currency": row["currency"], "total": row["total_availability"],
                 "warehouses": {w: v["available"] for w, v in row["warehouses"].items()}, "status": row["status"],
                 "product_class": row["product_class"]}
        details = sandbox.details_json(part)
        details_status = "none" if details is None else "ok"
        if local != truth or row["details"] != details or row["details_status"] != details_status:
            wrong.append(part)
    return wrong


@pytest.fixture
def served():
    servers = []

    def serve(sandbox: IngramSandbox) -> str:
        server = serve_in_thread(sandbox.build_app())
        servers.append(server)
        return server.url

    yield serve
    for server in servers:
        server.stop()


def test_two_worker_processes_keep_under_both_quotas_and_a_resync_fetches_only_what_changed(
        tmp_path, redis_url, database_url, served):
    # 40 products in batches of 5: 8 P&A calls against a quota of 4 a (scaled) minute, so the
    # fleet must wait a whole window; details at least 25 ms apart.
    sandbox = IngramSandbox(products=40, seed=11, time_scale=SCALE, pa_quota_requests=4, latency_s=0.03)
    url = served(sandbox)
    env = ingram_env(redis_url, database_url, url, ingram_pa_per_minute=4, ingram_batch_size=5,
                     ingram_max_concurrent=2)
    follow_sandbox_products(env, url)
    fleet = WorkerFleet(env, processes=2, threads=4, log_path=tmp_path / "workers.log").start()
    sessions = session_factory(database_url)
    try:
        first_id = start(env)
        run = wait_finished(sessions, first_id, 90)
        assert run["status"] == "succeeded", run["error"]
        assert (run["pages_done"], run["total_pages"], run["items"], run["changed"]) == (8, 8, 40, 40)
        no_details = sum(1 for part in sandbox.part_numbers() if sandbox.details_json(part) is None)
        assert run["details"]["details_total"] == run["details"]["details_done"] == 40
        assert run["details"]["details_none"] == no_details > 0
        assert wrong_products(sessions, sandbox) == []

        # The quotas, as the sandbox counted the requests that reached them (refused ones too).
        stats = sandbox.stats()
        assert stats["rate_limited"] == 0
        assert sandbox.max_in_any_window(PA, PA_WINDOW_S) <= 4
        assert sandbox.max_in_any_window(DETAILS, DETAILS_INTERVAL_S) <= 1
        assert stats["max_in_flight"][PA] <= 2  # --max-concurrent across both processes
        pa_times = sandbox.quota_requests(PA)
        assert pa_times[-1] - pa_times[0] >= PA_WINDOW_S  # the fleet waited for the window, it did not fail
        # Every HTTP attempt is counted once: token, 8 P&A, 40 details.
        assert run["api_calls"] == stats["total_requests"] == 1 + 8 + 40
        assert run["retries"] == run["errors"] == 0

        # Inside the cooldown a manual sync is refused; forced, only the changed products get details.
        changed = sandbox.change_products(5, rng_seed=2)
        refused = cli(env, "ingram", "sync", "--no-wait")
        assert refused.returncode != 0 and "cooldown" in refused.stderr
        sandbox.reset_stats()
        second_id = start(env, "--force")
        run = wait_finished(sessions, second_id, 90)
        assert run["status"] == "succeeded", run["error"]
        assert run["changed"] == len(changed) and run["unchanged"] == 40 - len(changed)
        assert run["details"]["details_total"] == run["details"]["details_done"] == len(changed)
        assert sandbox.stats()["requests"]["GET /resellers/v6/catalog/details/{ingramPartNumber}"] == len(changed)
        assert wrong_products(sessions, sandbox) == []
        assert sandbox.stats()["rate_limited"] == 0
        assert sandbox.max_in_any_window(PA, PA_WINDOW_S) <= 4
    finally:
        fleet.stop()


def test_partials_429s_an_expiring_token_and_5xx_bursts_all_end_with_every_product_right(
        tmp_path, redis_url, database_url, served):
    sandbox = IngramSandbox(products=30, seed=12, time_scale=SCALE, partial_rate=0.25)
    url = served(sandbox)
    env = ingram_env(redis_url, database_url, url, ingram_batch_size=5, ingram_max_concurrent=3,
                     ingram_timeout_s=0.5, ingram_http_attempts=3)
    follow_sandbox_products(env, url)
    # In the order the requests meet them: a 5xx burst longer than one call's attempts (so a
    # message retries on its schedule), a 429 whose reset is 0.3 s away, a request that hangs
    # past the client's timeout, then another burst.
    sandbox.fail_next(4, status=503)
    sandbox.throttle_next(1, reset_in_s=0.3)
    sandbox.hang_next(1, seconds=1.0)
    sandbox.fail_next(2, status=500)
    fleet = WorkerFleet(env, processes=2, threads=4, log_path=tmp_path / "workers.log").start()
    sessions = session_factory(database_url)
    try:
        sync_id = start(env)
        wait_until(lambda: run_row(sessions, sync_id)["details"].get("details_done", 0) >= 5, 60, interval=0.05,
                   what="details to be under way")
        assert sandbox.expire_tokens() >= 1  # every worker's next call meets a 401
        run = wait_finished(sessions, sync_id, 120)
        assert run["status"] == "succeeded", run["error"]
        assert wrong_products(sessions, sandbox) == []
        assert run["missing"] == 0 and run["details"]["product_errors"] > 0  # partials were asked again

        stats = sandbox.stats()
        assert stats["faults_injected"] == {"fail": 6, "throttle": 1, "hang": 1}
        assert stats["partial_errors"] > 0
        assert stats["by_status"]["401"] >= 1 and stats["tokens_issued"] >= 2
        assert stats["by_status"]["429"] == 1
        # The retries and errors are counted on the run: 6 5xx, a 429, a timeout, the 401s.
        assert run["errors"] >= 6 + 1 + 1 + 1 and run["retries"] >= 6
        assert sandbox.max_in_any_window(DETAILS, DETAILS_INTERVAL_S) <= 1
    finally:
        fleet.stop()


def test_a_malformed_answer_dead_letters_its_batch_and_fails_the_run(tmp_path, redis_url, database_url, served):
    sandbox = IngramSandbox(products=20, seed=13, time_scale=SCALE)
    url = served(sandbox)
    env = ingram_env(redis_url, database_url, url, ingram_batch_size=5, ingram_max_concurrent=1)
    follow_sandbox_products(env, url)
    sandbox.malformed_next(1)
    fleet = WorkerFleet(env, processes=1, threads=4, log_path=tmp_path / "workers.log").start()
    sessions = session_factory(database_url)
    try:
        sync_id = start(env)
        run = wait_finished(sessions, sync_id, 60)
        assert run["status"] == "failed"
        assert "failed for good (price_availability_batch)" in run["error"]
        assert "MalformedResponse" in run["error"] and "expected a top-level JSON array" in run["error"]

        client = redis.Redis.from_url(redis_url)
        dead = [json.loads(raw) for raw in client.hvals("dramatiq:ingram-batch.XQ.msgs")]
        assert [m["actor_name"] for m in dead] == ["price_availability_batch"]
        assert f"batch {dead[0]['args'][1]} failed" in run["error"]
        note = json.loads(client.get(f"stocksync:dead-letter-errors:{dead[0]['message_id']}"))
        assert note["error"].startswith("MalformedResponse") and note["failed_attempts"] == 1  # permanent: no retry
        # The other batches were still applied, and their products are right.
        wait_until(lambda: run_row(sessions, sync_id)["pages_done"] == 3, 60, what="the other batches")
        with sessions() as session:
            priced = session.execute(text("SELECT count(*) FROM supplier_products WHERE last_seen_at IS NOT NULL")
                                     ).scalar()
        assert priced == 15
    finally:
        fleet.stop()
