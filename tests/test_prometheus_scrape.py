"""A real Prometheus (Debian's ``prometheus`` package) scrapes a real worker fleet.

Two dramatiq masters (as two hosts or two worker groups would be) serve ``/metrics`` on their own
ports; Prometheus runs on loopback with ``deploy/prometheus/prometheus.yml`` (its scrape interval
shortened) and a targets file naming them.  After two sandbox syncs, one with a page that
fails for good and a sandbox quota tighter than the fleet's (so it answers 429s), the project's
metrics have non-zero values in Prometheus's own query API, and the alert rules of
``deploy/prometheus/alerts.yml`` are loaded and evaluate cleanly against them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from db.engine import session_factory
from runtime.local_servers import free_port, wait_until
from sandbox.backmarket import BackMarketSandbox
from sandbox.server import serve_in_thread
from tests.fleet import ROOT, WorkerFleet, fleet_env

PROMETHEUS = shutil.which("prometheus")
PROMETHEUS_DIR = ROOT / "deploy/prometheus"
TOKEN = "scrape-token"
LISTINGS = 500
PAGES = LISTINGS // 50

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian: apt-get install "
                                                  "prometheus; `make system-deps` installs it)"),
]


class PrometheusServer:
    """A Prometheus server on loopback, with the repo's scrape config and the given targets."""

    def __init__(self, folder: Path, targets: dict[str, int]) -> None:
        self.folder = folder
        self.port = free_port()
        self.targets = targets
        self.process: subprocess.Popen | None = None

    def start(self) -> "PrometheusServer":
        """Write the config (the repo's, scraping every second) and start; wait until it is ready."""
        config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
        # Rule files are read relative to the config's folder, which is not the repo's here.
        config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        (self.folder / "targets").mkdir()
        (self.folder / "targets/test.yml").write_text(yaml.safe_dump(
            [{"targets": [f"127.0.0.1:{port}"], "labels": {"process": name}} for name, port in self.targets.items()]))
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.folder / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(self.folder / "prometheus.log", "ab"), stderr=subprocess.STDOUT)
        wait_until(self._ready, 30, what="prometheus to be ready")
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited; see {self.folder / 'prometheus.log'}")
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1).status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict]:
        """The result vector of an instant query."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = json.load(urllib.request.urlopen(url, timeout=5))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def rule_health(self) -> dict[tuple[str, str], str]:
        """The health (ok, err, unknown) of every rule loaded, by (group, rule name)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/rules"
        answer = json.load(urllib.request.urlopen(url, timeout=5))
        assert answer["status"] == "success", answer
        return {(group["name"], rule["name"]): rule["health"] for group in answer["data"]["groups"]
                for rule in group["rules"]}

    def value(self, expr: str) -> float:
        """The value of a query that sums to one number (0 when it has no series)."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def stop(self) -> None:
        """Stop the server."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


def run_sync(env: dict[str, str], sessions, *extra: str):
    """Start a stock sync with the real CLI and wait for it to finish; return its row."""
    before = _last_run_id(sessions)
    started = subprocess.run([sys.executable, "-m", "workers.cli", "sync", "backmarket", "--no-wait", *extra],
                             cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr

    def finished():
        with sessions() as session:
            row = session.execute(text("SELECT * FROM sync_runs ORDER BY id DESC LIMIT 1")).mappings().first()
        return row if row is not None and row["id"] != before and row["status"] != "running" else None

    wait_until(finished, 90, interval=0.2, what="the sync to finish")
    return finished()


def _pages_done(sessions, sync_id: int) -> int:
    with sessions() as session:
        return session.execute(text("SELECT pages_done FROM sync_runs WHERE id = :i"), {"i": sync_id}).scalar()


def _last_run_id(sessions):
    with sessions() as session:
        return session.execute(text("SELECT max(id) FROM sync_runs")).scalar()


def test_prometheus_scrapes_the_fleet_and_sees_a_sandbox_sync(tmp_path, redis_url, database_url):
    # The sandbox allows fewer requests than the fleet's limiter (set wide open here): it answers 429s.
    sandbox = BackMarketSandbox(listings=LISTINGS, seed=5, token=TOKEN, quota_requests=6, quota_window_s=1.0,
                                malformed_pages={4})
    server = serve_in_thread(sandbox.build_app())
    ports = {"stock-workers": free_port(), "more-workers": free_port()}
    fleets = []
    prometheus = None
    try:
        for name, port in ports.items():
            env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=server.url, token=TOKEN,
                            metrics_port=port, metrics_dir=tmp_path / "metrics")
            fleets.append(WorkerFleet(env, processes=1, threads=8, log_path=tmp_path / f"{name}.log").start())
        prometheus = PrometheusServer(tmp_path, ports).start()
        wait_until(lambda: prometheus.value('count(up{job="stocksync"} == 1)') == len(ports), 60,
                   interval=0.5, what="prometheus to scrape both workers' /metrics")
        # Every alert rule of the repo is loaded and evaluates without an error ("unknown": not yet).
        alerts = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
        wanted = {(group["name"], rule["alert"]) for group in alerts for rule in group["rules"]}
        wait_until(lambda: set(prometheus.rule_health()) == wanted
                   and "unknown" not in prometheus.rule_health().values(), 30, interval=0.5,
                   what="prometheus to load and evaluate every alert rule")
        assert prometheus.rule_health() == dict.fromkeys(wanted, "ok")

        sessions = session_factory(database_url)
        failed = run_sync(env, sessions)
        assert failed["status"] == "failed" and "page 4 failed for good" in failed["error"]
        # The run fails as soon as page 4 dies, maybe before page 1 told it how many pages there are.
        wait_until(lambda: _pages_done(sessions, failed["id"]) == PAGES - 1, 60, what="the failed run's other pages")
        sandbox.configure(malformed_pages=())
        succeeded = run_sync(env, sessions, "--force")
        assert succeeded["status"] == "succeeded", succeeded["error"]

        # What the dashboards draw, as Prometheus sees it (each query must become non-zero).
        expected = {
            'sum(stocksync_api_requests_total{api="backmarket"})': None,
            'sum(stocksync_api_rate_limited_total{api="backmarket"})': None,
            "sum(stocksync_api_request_duration_seconds_count)": None,
            "sum(stocksync_rate_limit_wait_seconds_sum)": None,
            "max(stocksync_api_quota_requests)": None,
            f'max(stocksync_sync_pages_done{{sync_id="{succeeded["id"]}"}})': PAGES,
            f'max(stocksync_sync_pages_total{{sync_id="{succeeded["id"]}"}})': PAGES,
            'sum(stocksync_sync_pages_applied_total{kind="stock",target="backmarket"})': None,
            'max(stocksync_sync_last_success_timestamp_seconds{target="backmarket"})': None,
            'sum(stocksync_sync_duration_seconds_count{status="succeeded"})': 1,
            'sum(stocksync_sync_duration_seconds_count{status="failed"})': 1,
            'sum(stocksync_ledger_changes_total{change_type="sync"})': None,
            'sum(stocksync_dead_letters_total{queue="stock-fetch",actor="fetch_listings_page"})': 1,
            'max(stocksync_dead_letters_waiting{queue="stock-fetch"})': 1,
            'sum(dramatiq_messages_total{queue_name="stock-apply"})': None,
            'sum(dramatiq_message_rejects_total{queue_name="stock-fetch"})': 1,
        }

        with sessions() as session:
            ledger_rows = session.execute(text("SELECT count(*) FROM stock_ledger")).scalar()
        # Totals the scrape must catch up with: both runs are over, so only the scrape lags.
        totals = {
            'sum(stocksync_ledger_changes_total{change_type="sync"})': ledger_rows,
            "sum(stocksync_api_rate_limited_total)": sandbox.stats()["rate_limited"],
            "sum(stocksync_api_requests_total)": sandbox.listing_page_requests(),
        }

        def all_seen() -> bool:
            return (all(prometheus.value(expr) > 0 for expr in expected)
                    and all(prometheus.value(expr) == total for expr, total in totals.items()))

        wait_until(all_seen, 30, interval=0.5, what="every metric and total to reach prometheus")
        for expr, exact in expected.items():
            value = prometheus.value(expr)
            assert value > 0, expr
            if exact is not None:
                assert value == exact, (expr, value)
        # Every request and every ledger row of both runs was counted, whichever process made it.
        for expr, total in totals.items():
            assert prometheus.value(expr) == total, (expr, total)
        # The 429s paused the fleet: someone waited for the limiter.
        assert prometheus.value("sum(stocksync_rate_limit_wait_seconds_sum)") > 0.5
        # The page that died waits in the dead letters: its alert is pending (it fires after its `for:`).
        wait_until(lambda: prometheus.query('ALERTS{alertname="StocksyncDeadLettersWaiting", queue="stock-fetch"}'),
                   30, interval=0.5, what="the dead letters' alert to be pending")
    finally:
        if prometheus:
            prometheus.stop()
        for fleet in fleets:
            fleet.stop()
        server.stop()
