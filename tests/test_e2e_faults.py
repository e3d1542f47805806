"""The fleet under faults, end to end: real ``dramatiq workers.fleet`` processes, real Redis and PostgreSQL.

Each test runs the production defaults of the broker (heartbeat 60 s, maintenance chance 0.1%,
recovery every 5 s, outages ridden out for 30 minutes) unless it says why not.
"""
from __future__ import annotations

import time

import pytest
import redis

from db.engine import session_factory
from db.ledger import check_invariant
from runtime.local_servers import wait_until
from runtime.settings import Settings
from sandbox.backmarket import BackMarketSandbox
from sandbox.server import serve_in_thread
from tests.fleet import WorkerFleet, fleet_env
from tests.test_e2e_stock_sync import TOKEN, local_stock, run_row, start_sync, wait_finished

pytestmark = pytest.mark.e2e

DEFAULTS = Settings(_env_file=None)
#: The broker settings of production, which tests/fleet.py lowers for the other e2e tests.
PRODUCTION_BROKER = {"dramatiq_heartbeat_timeout_ms": str(DEFAULTS.dramatiq_heartbeat_timeout_ms),
                     "dramatiq_maintenance_chance": str(DEFAULTS.dramatiq_maintenance_chance)}
#: What the README states: heartbeat timeout + one recovery interval + an idle consumer's poll (1 s).
RECOVERY_BOUND_S = DEFAULTS.dramatiq_heartbeat_timeout_ms / 1000 + DEFAULTS.dramatiq_recovery_interval_s + 1


@pytest.fixture
def sandbox():
    sandbox = BackMarketSandbox(listings=5000, seed=21, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    sandbox.url = server.url
    yield sandbox
    server.stop()


def unacked(client: redis.Redis) -> int:
    """Messages fetched by some worker and not acked yet, over every queue."""
    return sum(client.scard(key) for key in client.scan_iter("dramatiq:__acks__.*"))


def test_sigkilled_worker_group_mid_sync_its_messages_come_back_within_the_bound(tmp_path, redis_url, database_url,
                                                                                   sandbox):
    # Latency keeps pages in flight long enough to kill a worker with work in its hands.
    sandbox.configure(latency_s=0.05)
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=sandbox.url, token=TOKEN,
                    **PRODUCTION_BROKER)
    victim = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "victim.log").start()
    survivor = WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / "survivor.log").start()
    sessions = session_factory(database_url)
    client = redis.Redis.from_url(redis_url)
    try:
        assert start_sync(env).returncode == 0
        wait_until(lambda: (row := run_row(sessions)) is not None and row["pages_done"] >= 15, 120,
                   interval=0.05, what="the sync to be under way")
        held = unacked(client)
        victim.kill()
        killed_at = time.monotonic()
        assert held > 0 and run_row(sessions)["status"] == "running"
        run = wait_finished(sessions, RECOVERY_BOUND_S + 60)
        took = time.monotonic() - killed_at
        assert run["status"] == "succeeded", run["error"]
        assert run["pages_done"] == run["total_pages"] == 100
        # Every page left after the kill is a few seconds of work: the wait was the recovery.
        assert took <= RECOVERY_BOUND_S + 10, f"the sync finished {took:.0f} s after the kill"
        assert "message(s) of dead workers back on queue stock-" in (tmp_path / "survivor.log").read_text()
        assert local_stock(sessions) == sandbox.quantities()
        with sessions() as session:
            assert check_invariant(session) == []
        wait_until(lambda: unacked(client) == 0, 10, what="no message left unacked")
        print(f"sync finished {took:.1f} s after the SIGKILL (bound {RECOVERY_BOUND_S:.0f} s)")
    finally:
        victim.kill()
        survivor.stop()
