"""End to end on real worker processes: a sync's DEBUG JSON logs (context, no secret) and its queue metrics.

One dramatiq master with ``LOG_LEVEL=DEBUG LOG_FORMAT=json`` and every secret setting set syncs a
sandbox Back Market under a tight quota, so pages queue up; its ``/metrics`` is scraped during the
sync and after it, and its ``/healthz`` and ``/readyz`` are asked.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest
from sqlalchemy import text

from db.engine import session_factory
from runtime.local_servers import free_port, wait_until
from sandbox.backmarket import BackMarketSandbox
from sandbox.server import serve_in_thread
from tests.fleet import ROOT, WorkerFleet, fleet_env

pytestmark = pytest.mark.e2e

TOKEN = "bm-e2e-token-5f1c9a"
SECRETS = {
    "INGRAM_CLIENT_SECRET": "ingram-secret-77c1d0",
    "REFURBED_TOKEN": "refurbed-token-91ab2e",
    "REFURBED_WEBHOOK_SECRET": "refurbed-hook-4e7f00",
    "SHOPIFY_WEBHOOK_SECRET": "shopify-secret-0d9a3c",
    "PRODUCER_HMAC_KEY": "producer-key-6b2e81",
    "STOCK_ALERT_WEBHOOK_URL": "https://hooks.slack.example/services/T0AAA/B0BBB/c0ffee1234",
    "SHOP_EU_TOKEN": "shpat_e2e_3c4d5e6f",
}
LISTINGS = 1000


def get(url: str) -> tuple[int, str]:
    try:
        answer = urllib.request.urlopen(url, timeout=10)
        return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(body: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a text exposition (labels in any order)."""
    for line in body.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            return float(match.group(2))
    return None


def test_a_sync_logs_json_with_its_context_and_no_secret_and_its_queues_are_measured(tmp_path, redis_url,
                                                                                     database_url):
    sandbox = BackMarketSandbox(listings=LISTINGS, seed=5, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    port = free_port()
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url=server.url, token=TOKEN,
                    quota_requests=5, quota_window_s=1.0, metrics_port=str(port), metrics_dir=str(tmp_path / "m"),
                    log_level="DEBUG", log_format="json", **SECRETS)
    log_path = tmp_path / "workers.log"
    fleet = WorkerFleet(env, processes=1, threads=8, log_path=log_path).start()
    sessions = session_factory(database_url)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get(f"{base}/healthz")[0] == 200 if _listening(port) else False, 60,
                   what="the workers' /healthz")
        status, body = get(f"{base}/readyz")
        assert (status, json.loads(body)) == (200, {"status": "ok"}), body  # details only in the log

        started = subprocess.run([sys.executable, "-m", "workers.cli", "-v", "sync", "backmarket", "--no-wait"],
                                 cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr

        # Pages wait for the quota: some scrape sees stock-fetch messages waiting or in progress.
        seen = {}

        def queued() -> bool:
            body = get(f"{base}/metrics")[1]
            counts = {state: sample(body, "stocksync_queue_messages", queue="stock-fetch", state=state)
                      for state in ("waiting", "in_progress", "delayed", "dead")}
            seen.update(body=body, counts=counts)
            return (counts["waiting"] or 0) + (counts["in_progress"] or 0) >= 2

        wait_until(queued, 60, interval=0.05, what="stock-fetch messages queued during the sync")
        assert sample(seen["body"], "stocksync_queue_oldest_message_age_seconds", queue="stock-fetch") is not None

        def finished():
            with sessions() as session:
                return session.execute(text("SELECT id, status FROM sync_runs WHERE status <> 'running'")).first()

        wait_until(finished, 120, interval=0.2, what="the sync to finish")
        run_id, status = finished()
        assert status == "succeeded"
        body = get(f"{base}/metrics")[1]
        pages = LISTINGS // 50
        assert sample(body, "stocksync_queue_wait_seconds_count", queue="stock-fetch") >= pages
        assert sample(body, "stocksync_queue_wait_seconds_count", queue="stock-apply") >= pages
        wait_until(lambda: sample(get(f"{base}/metrics")[1], "stocksync_queue_messages", queue="stock-fetch",
                                  state="in_progress") == 0, 30, what="stock-fetch to drain")
    finally:
        fleet.stop()
        server.stop()

    logged = log_path.read_text() + started.stderr
    for name, secret in {**SECRETS, "BACKMARKET_TOKEN": TOKEN}.items():
        assert secret not in logged, f"{name}'s value is in the logs"
    assert "hooks.slack.example" not in logged

    # Every line of the worker processes is JSON: only the dramatiq master's own few lines (boot, signals)
    # and its fork's "ready" line, written before any of our code runs there, are dramatiq's text.
    records, theirs = [], re.compile(r"^\[[^]]+\] \[PID \d+\] \[\w+\] \[dramatiq\.(MainProcess|ForkProcess\(\d+\))\]")
    for line in log_path.read_text().splitlines():
        if not theirs.match(line):
            records.append(json.loads(line))
    assert {"DEBUG", "INFO"} <= {record["level"] for record in records}
    assert any(record["logger"].startswith("dramatiq") for record in records)  # dramatiq's own lines too
    fetched = [record for record in records if record.get("actor") == "fetch_listings_page"]
    assert fetched, "no line carries the fetch actor"
    assert all(record["queue"] == "stock-fetch" and record["message_id"] and record["sync_id"] == run_id
               and record["marketplace"] == "backmarket" for record in fetched)
    applied = [record for record in records if record.get("actor") == "apply_listings_batch"]
    assert applied and all(record["sync_id"] == run_id for record in applied)
    assert max(len(line) for line in log_path.read_text().splitlines()) < 20_000


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0
