"""runtime.logs: one set-up for every process, text or JSON lines, context fields, cut lines, no secrets."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from runtime import logs
from runtime.settings import Settings
from tests.fleet import ROOT


@pytest.fixture
def configure():
    """Configure logging into a buffer; the root logger is put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def setup(**settings) -> io.StringIO:
        stream = io.StringIO()
        verbosity = settings.pop("verbosity", 0)
        logs.configure(Settings(**settings), stream=stream, verbosity=verbosity)
        return stream

    yield setup
    for handler in list(root.handlers):
        if getattr(handler, "_stocksync", False):
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
    logs._configured = False


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_time_level_logger_message_and_the_bound_context(configure):
    stream = configure(log_format="json")
    log = logging.getLogger("stocksync.test")
    with logs.bind(sync_id=42, marketplace="backmarket"):
        with logs.bind(sku="IPHONE13-128"):
            log.info("page %d applied", 3)
        log.debug("not at INFO")
    log.warning("outside")
    first, second = lines(stream)
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert first["time"].endswith("+00:00") and first["level"] == "INFO" and first["logger"] == "stocksync.test"
    assert (first["message"], first["sync_id"], first["marketplace"], first["sku"]) == \
        ("page 3 applied", 42, "backmarket", "IPHONE13-128")
    assert second["message"] == "outside" and "sync_id" not in second and "sku" not in second


def test_a_failure_is_one_line_with_a_cut_message_unless_debug(configure):
    stream = configure(log_format="text", log_max_message_chars=200)
    log = logging.getLogger("stocksync.test")
    try:
        raise ValueError("bad\nvalue " + "x" * 10_000)
    except ValueError:
        log.exception("apply failed for %s", "y" * 10_000_000)  # a 10 MB argument
    [line] = stream.getvalue().splitlines()
    assert len(line) < 1000
    assert "apply failed for yyy" in line and "more characters)" in line
    assert "ValueError: bad value xxx" in line and "(at test_logs.py:" in line

    stream = configure(log_format="text", verbosity=1)  # -v: DEBUG, whole tracebacks
    try:
        raise ValueError("deep")
    except ValueError:
        log.exception("apply failed")
    text = stream.getvalue()
    assert "Traceback (most recent call last)" in text and text.count("\n") > 2


def test_an_outage_logs_its_connection_error_once_per_interval_not_once_per_message(configure):
    import psycopg

    stream = configure(log_format="json")
    log = logging.getLogger("dramatiq.worker.WorkerThread")
    for number in range(200):  # every message of a busy fleet fails alike while PostgreSQL is down
        try:
            raise psycopg.OperationalError("connection failed: Connection refused")
        except psycopg.OperationalError:
            log.error("Failed to process message %d with unhandled exception.", number, exc_info=True)
    try:
        raise ValueError("a bad row")  # the message's own failure is always logged
    except ValueError:
        log.error("Failed to process message 200 with unhandled exception.", exc_info=True)
    logged = lines(stream)
    assert [line["message"] for line in logged] == ["Failed to process message 0 with unhandled exception.",
                                                    "Failed to process message 200 with unhandled exception."]


def test_levels_from_the_setting_and_the_verbosity(configure):
    log = logging.getLogger("stocksync.test")
    stream = configure(log_level="warning")
    log.info("hidden")
    log.warning("shown")
    assert stream.getvalue().count("\n") == 1 and "shown" in stream.getvalue()
    stream = configure(log_level="INFO", verbosity=-1)  # -q
    log.info("hidden")
    assert stream.getvalue() == ""
    with pytest.raises(ValueError, match="log_level"):
        Settings(log_level="chatty")
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")
    assert Settings(log_format="JSON").log_format == "json"


def test_secret_values_never_reach_a_line(configure, monkeypatch):
    monkeypatch.setenv("STOCKSYNC_ACCOUNT_SHOP_EU", "shpat_0123456789abcdef")  # an account's credential
    stream = configure(log_format="json", backmarket_token="bm-token-abcdef-123",
                       stock_alert_webhook_url="https://hooks.example.com/services/T000/B000/XXXX",
                       database_url="postgresql+psycopg://app:pg-password-42@db/stocksync")
    log = logging.getLogger("stocksync.test")
    log.error("401 from %s with bm-token-abcdef-123", "https://hooks.example.com/services/T000/B000/XXXX")
    try:
        raise RuntimeError("token shpat_0123456789abcdef refused; dsn app:pg-password-42@db")
    except RuntimeError:
        log.exception("boom")
    out = stream.getvalue()
    for secret in ("bm-token-abcdef-123", "hooks.example.com/services", "shpat_0123456789abcdef", "pg-password-42"):
        assert secret not in out
    assert out.count("<redacted>") >= 4


def test_the_middleware_binds_each_message_and_its_known_arguments(configure):
    stream = configure(log_format="json")
    broker = StubBroker()
    broker.add_middleware(logs.LogContext(), before=type(broker.middleware[0]))
    seen = []

    @dramatiq.actor(broker=broker, queue_name="stock-fetch", actor_name="fetch_test_page")
    def fetch_test_page(sync_id: int, page: int, marketplace: str = "backmarket") -> None:
        seen.append(logs.current())
        logging.getLogger("stocksync.test").info("fetching page %d", page)

    message = fetch_test_page.send(7, 2)
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    try:
        broker.join("stock-fetch", timeout=10_000)
        worker.join()
    finally:
        worker.stop()
    [line] = [line for line in lines(stream) if line["message"] == "fetching page 2"]
    assert {key: line[key] for key in ("sync_id", "message_id", "actor", "queue", "marketplace")} == {
        "sync_id": 7, "message_id": message.message_id, "actor": "fetch_test_page", "queue": "stock-fetch",
        "marketplace": "backmarket"}
    assert seen[0]["sync_id"] == 7
    assert logs.current() == {}  # nothing leaks into this thread


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "XDG_RUNTIME_DIR"}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env={**environment, **env},
                          capture_output=True, text=True, timeout=120)


def test_cli_logs_go_to_stderr_at_the_level_asked(database_url):
    # `db upgrade` logs through alembic at INFO: JSON lines on stderr, nothing on stdout; -q hides them.
    normal = run_cli("db", "upgrade", DATABASE_URL=database_url, LOG_FORMAT="json")
    assert normal.returncode == 0, normal.stderr
    records = [json.loads(line) for line in normal.stderr.splitlines()]
    assert records and {record["level"] for record in records} == {"INFO"}
    assert any(record["logger"].startswith("alembic") for record in records)
    assert "Warning" not in normal.stderr  # nor platformdirs' RuntimeDirWarning without XDG_RUNTIME_DIR
    quiet = run_cli("-q", "db", "upgrade", DATABASE_URL=database_url, LOG_FORMAT="json")
    assert quiet.returncode == 0 and quiet.stderr == ""
    debug = run_cli("-v", "db", "upgrade", DATABASE_URL=database_url)
    assert debug.returncode == 0 and " DEBUG " in debug.stderr
    bad = run_cli("db", "upgrade", LOG_LEVEL="chatty")
    assert bad.returncode != 0 and "log_level" in bad.stderr.lower() and "Traceback" not in bad.stderr
