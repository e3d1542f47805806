"""The sync monitor: rows in, a table with done/total, rates and ETA out; and ``stocksync monitor``."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

from sqlalchemy import text
from workers.cli.monitor import format_duration, render_text, run_progress, runs_table

from db.engine import session_factory
from db.models import SyncRun
from tests.fleet import ROOT

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def sync_run(**fields) -> SyncRun:
    values = {"id": 1, "kind": "stock", "target": "backmarket", "trigger": "manual", "status": "running",
              "started_at": NOW - timedelta(seconds=20), "finished_at": None, "total_pages": 100, "pages_done": 40,
              "items": 2000, "changed": 10, "unchanged": 1990, "missing": 0, "api_calls": 0, "retries": 0,
              "errors": 0, "error": None, "details": {}}
    values.update(fields)
    return SyncRun(**values)


def test_a_running_stock_sync_shows_pages_rate_eta_and_live_counters():
    progress = run_progress(sync_run(), {"api_calls": 42, "retries": 2, "errors": 3}, now=NOW)
    (pages,) = progress.tracks
    assert (pages.name, pages.fraction, pages.rate, pages.eta_s) == ("pages", "40/100", 2.0, 30.0)
    assert (progress.api_calls, progress.retries, progress.errors, progress.eta_s) == (42, 2, 3, 30.0)
    table = render_text(runs_table([progress]))
    for expected in ("pages 40/100", "2.0 pages/s", "0:30", "42", "running", "backmarket"):
        assert expected in table


def test_a_supplier_sync_shows_batches_and_details_and_waits_for_the_slower():
    details = {"details_total": 300, "details_done": 100, "details_failed": 0}
    progress = run_progress(sync_run(id=7, kind="supplier", target="ingram", total_pages=20, pages_done=20,
                                     details=details), now=NOW)
    batches, detail = progress.tracks
    assert (batches.fraction, batches.eta_s) == ("20/20", 0.0)
    assert (detail.fraction, detail.rate, detail.eta_s) == ("100/300", 5.0, 40.0)
    assert progress.eta_s == 40.0
    text_ = render_text(runs_table([progress]))
    for expected in ("batches 20/20", "details 100/300", "1.0 batches/s", "5.0 details/s", "0:40", "supplier"):
        assert expected in text_
    # While batches still run, the details total is not final: shown as unknown.
    running = run_progress(sync_run(kind="supplier", total_pages=20, pages_done=5, details=details), now=NOW)
    assert running.tracks[1].fraction == "100/?"


def test_finished_and_failed_runs_show_their_stored_counters_and_error():
    done = run_progress(sync_run(id=3, status="succeeded", pages_done=100, finished_at=NOW - timedelta(seconds=5),
                                 api_calls=104, retries=4), {"api_calls": 999}, now=NOW)
    failed = run_progress(sync_run(id=4, status="failed", error="page 7 failed for good: " + "x" * 200), now=NOW)
    assert (done.api_calls, done.retries, done.eta_s, done.elapsed_s) == (104, 4, None, 15.0)
    table = render_text(runs_table([done, failed]))
    assert "succeeded" in table and "104" in table and "0:15" in table
    assert "page 7 failed for good" in table and "x" * 100 not in table


def test_durations_read_as_clock_times():
    assert [format_duration(s) for s in (None, 0, 59.6, 61, 3725)] == ["-", "0:00", "1:00", "1:01", "1:02:05"]


def monitor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", "monitor", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_the_monitor_command_shows_runs_of_every_kind_once_and_one_run_until_it_ends(database_url, redis_url):
    with session_factory(database_url)() as session:
        session.execute(text(
            "INSERT INTO sync_runs (kind, target, trigger, status, total_pages, pages_done, finished_at, details) "
            "VALUES ('stock', 'backmarket', 'manual', 'succeeded', 100, 100, now(), '{}'), "
            "('supplier', 'ingram', 'scheduled', 'running', 20, 5, NULL, "
            "'{\"details_total\": 80, \"details_done\": 40}')"))
        session.commit()
        supplier_id = session.execute(text("SELECT id FROM sync_runs WHERE kind = 'supplier'")).scalar()
        stock_id = session.execute(text("SELECT id FROM sync_runs WHERE kind = 'stock'")).scalar()
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    import redis

    redis.Redis.from_url(redis_url).hset(f"stocksync:sync:{supplier_id}:stats", mapping={"api_calls": 46, "retries": 1})

    shown = monitor(env, "--once")
    assert shown.returncode == 0, shown.stderr
    for expected in ("pages 100/100", "batches 5/20", "details 40/?", "supplier", "stock", "46"):
        assert expected in shown.stdout

    finished = monitor(env, str(stock_id), "--refresh", "0.1")  # a finished run: shown, and the command ends
    assert finished.returncode == 0 and "pages 100/100" in finished.stdout
    missing = monitor(env, "999999", "--once")
    assert missing.returncode != 0 and "no sync run 999999" in missing.stderr
