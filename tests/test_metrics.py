"""runtime.metrics in one process (the default registry, as in the in-process demo) and its folders."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from clients.backmarket import LIST_LISTINGS, RequestRecord
from runtime import metrics
from runtime.local_servers import free_port
from tests.fleet import ROOT


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_api_requests_count_by_status_with_latency_and_429s():
    before = {status: sample("stocksync_api_requests_total", api="backmarket", endpoint=LIST_LISTINGS, status=status)
              for status in ("200", "429", "transport_error")}
    limited = sample("stocksync_api_rate_limited_total", api="backmarket", endpoint=LIST_LISTINGS)
    seen = []
    hook = metrics.request_hook(seen.append)
    for status in (200, 429, None, 200):
        hook(RequestRecord("backmarket", LIST_LISTINGS, status, attempt=1, elapsed_s=0.02, waited_s=0.0))
    assert len(seen) == 4  # the caller's own hook still gets every record
    after = {status: sample("stocksync_api_requests_total", api="backmarket", endpoint=LIST_LISTINGS, status=status)
             for status in before}
    assert {status: after[status] - before[status] for status in before} == {"200": 2, "429": 1, "transport_error": 1}
    assert sample("stocksync_api_rate_limited_total", api="backmarket", endpoint=LIST_LISTINGS) - limited == 1
    assert sample("stocksync_api_request_duration_seconds_count", api="backmarket", endpoint=LIST_LISTINGS) >= 4
    assert metrics.request_hook(None) is metrics.api_request


def test_sync_progress_and_finish():
    metrics.sync_progress(991, 3, None)
    metrics.sync_progress(991, 4, 20)
    assert sample("stocksync_sync_pages_done", sync_id="991") == 4
    assert sample("stocksync_sync_pages_total", sync_id="991") == 20

    ledger = sample("stocksync_ledger_changes_total", change_type="sync")
    metrics.sync_page_applied("stock", "testmarket", SimpleNamespace(applied=True, changed=7))
    metrics.sync_page_applied("stock", "testmarket", SimpleNamespace(applied=False, changed=0))  # a redelivery
    assert sample("stocksync_sync_pages_applied_total", kind="stock", target="testmarket") == 1
    assert sample("stocksync_ledger_changes_total", change_type="sync") - ledger == 7

    finished = datetime(2026, 11, 23, 12, tzinfo=timezone.utc)
    run = SimpleNamespace(kind="stock", target="testmarket", status="succeeded", finished_at=finished,
                          duration_s=42.0)
    metrics.sync_finished(run)
    metrics.sync_finished(SimpleNamespace(kind="stock", target="testmarket", status="failed", finished_at=finished,
                                          duration_s=3.0))
    metrics.sync_finished(None)
    labels = {"kind": "stock", "target": "testmarket"}
    assert sample("stocksync_sync_last_success_timestamp_seconds", **labels) == finished.timestamp()
    assert sample("stocksync_sync_duration_seconds_sum", **labels, status="succeeded") == 42.0
    assert sample("stocksync_sync_duration_seconds_count", **labels, status="failed") == 1


def test_the_helpers_for_the_other_pipelines():
    metrics.ledger_change("order_created", 2)
    metrics.ledger_change("order_created", 0)
    metrics.duplicate_event("webhook-test")
    metrics.event_applied("order_created", "webhook-test", datetime.now(timezone.utc) - timedelta(seconds=3))
    metrics.event_applied("stock_topup", "producer-test")
    metrics.oversold("testmarket")
    metrics.discrepancies("testmarket", 5)
    metrics.discrepancies("testmarket", 0)
    metrics.dead_lettered("stock-test.DQ", "some_actor")
    metrics.rate_limit_wait("test-limiter", 0.25)
    metrics.quota("test-limiter", 20, 10.0)
    assert sample("stocksync_ledger_changes_total", change_type="order_created") >= 2
    assert sample("stocksync_duplicate_events_total", source="webhook-test") == 1
    assert sample("stocksync_events_applied_total", event_type="stock_topup", source="producer-test") == 1
    assert 3 <= sample("stocksync_event_lag_seconds_sum", event_type="order_created") < 60
    assert sample("stocksync_oversold_total", marketplace="testmarket") == 1
    assert sample("stocksync_reconciliation_discrepancies_total", marketplace="testmarket") == 5
    assert sample("stocksync_dead_letters_total", queue="stock-test", actor="some_actor") == 1  # the queue, not .DQ
    assert sample("stocksync_rate_limit_wait_seconds_sum", limiter="test-limiter") == 0.25
    assert sample("stocksync_api_quota_requests", limiter="test-limiter") == 20


def test_recording_never_fails_the_work_it_measures(caplog):
    metrics.api_request(object())  # not a RequestRecord: logged, not raised
    metrics.sync_page_applied("stock", "x", None)
    assert "could not record metric api_request" in caplog.text


def test_exposition_server_for_processes_that_are_not_workers():
    port = free_port()
    settings = SimpleNamespace(metrics_host="127.0.0.1", metrics_port=port)
    server = metrics.start_exposition_server(settings)
    try:
        metrics.oversold("exposition-test")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'stocksync_oversold_total{marketplace="exposition-test"} 1.0' in body
    finally:
        server.shutdown()
    assert metrics.start_exposition_server(SimpleNamespace(metrics_host="127.0.0.1", metrics_port=0)) is None


def test_each_dramatiq_master_gets_a_new_folder_and_dead_ones_are_removed(tmp_path):
    mine = metrics.master_folder(tmp_path, os.getpid())
    assert mine.name.startswith(f"dramatiq-{os.getpid()}-")
    mine.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / f"dramatiq-{gone.pid}-123").mkdir()
    (tmp_path / f"dramatiq-{os.getpid()}-1").mkdir()  # our pid, but another process's start time
    (tmp_path / "unrelated").mkdir()
    metrics.remove_stale_folders(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([mine.name, "unrelated"])


@pytest.mark.parametrize("value", ["", "/tmp/stocksync-test-prom"])
def test_importing_the_metrics_survives_any_dramatiq_prom_db(value):
    # The test fleets set dramatiq_prom_db to "", which dramatiq's own module cannot import with.
    env = {**os.environ, "dramatiq_prom_db": value}
    done = subprocess.run([sys.executable, "-c", "import runtime.metrics, os; print(os.environ['dramatiq_prom_host'])"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "127.0.0.1"
