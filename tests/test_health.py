"""/healthz and /readyz of the intake, and ``stocksync doctor``, against real Redis and PostgreSQL."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from types import SimpleNamespace

import pytest

from runtime import health, metrics
from runtime.local_servers import free_port
from runtime.settings import Settings
from sandbox.server import serve_in_thread
from tests.fleet import ROOT
from workers.intake.app import build_intake_app


READ_TOKEN = "health-read-token-5e2d1c0b"


def get(url: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=15)
        return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def unmigrated_url(pg_server):
    """A database with no schema at all."""
    return pg_server.create_database(f"bare{os.getpid()}_{free_port()}")


def intake(redis_url: str, database_url: str):
    from dramatiq.brokers.stub import StubBroker

    settings = Settings(redis_url=redis_url, database_url=database_url, read_api_tokens=READ_TOKEN)
    return serve_in_thread(build_intake_app(settings, broker=StubBroker(), database_url=database_url))


def test_intake_readyz_checks_redis_postgresql_and_migrations(redis_url, database_url, unmigrated_url):
    server = intake(redis_url, database_url)
    try:
        assert get(f"{server.url}/healthz") == (200, {"ok": True})
        assert get(f"{server.url}/readyz") == (200, {"status": "ok"})  # public: ok or not, nothing more
        status, body = get(f"{server.url}/readyz", token=READ_TOKEN)
        assert status == 200 and body["status"] == "ok", body
        assert {name: check["ok"] for name, check in body["checks"].items()} == \
            {"redis": True, "postgresql": True, "migrations": True}
    finally:
        server.stop()

    down = intake(f"redis://127.0.0.1:{free_port()}/0", unmigrated_url)
    try:
        assert get(f"{down.url}/healthz")[0] == 200  # alive, not ready
        assert get(f"{down.url}/readyz") == (503, {"status": "not ok"})  # no driver text for the public
        status, body = get(f"{down.url}/readyz", token="not-the-read-token")
        assert status == 401 and "checks" not in body
        status, body = get(f"{down.url}/readyz", token=READ_TOKEN)
        assert status == 503 and body["status"] == "not ok"
        assert "not reachable" in body["checks"]["redis"]["detail"]
        assert body["checks"]["postgresql"]["ok"]
        assert "stocksync db upgrade" in body["checks"]["migrations"]["detail"]
    finally:
        down.stop()


def test_readiness_names_an_unreachable_database_without_its_password():
    [database, migrations] = health.check_database(
        f"postgresql+psycopg://app:s3cret-pw-1@127.0.0.1:{free_port()}/stocksync")
    assert not database.ok and "not reachable" in database.detail and "s3cret-pw-1" not in database.detail
    assert not migrations.ok


def test_a_metrics_servers_readyz_answers_ok_or_not_and_logs_what_failed(redis_url, database_url, caplog):
    port = free_port()
    settings = SimpleNamespace(metrics_host="127.0.0.1", metrics_port=port, redis_url=redis_url,
                               database_url=database_url)
    probe = health.ReadinessProbe(f"redis://127.0.0.1:{free_port()}/0",
                                  f"postgresql+psycopg://app:s3cret-pw-2@127.0.0.1:{free_port()}/stocksync", cache_s=0)
    server = metrics.start_exposition_server(settings, ready=probe)
    caplog.set_level("INFO", logger="runtime.health")
    try:
        for _ in range(3):  # unauthenticated: the status and one word, no host, port or driver error
            assert get(f"http://127.0.0.1:{port}/readyz") == (503, {"status": "not ok"})
        said = [record.getMessage() for record in caplog.records if record.name == "runtime.health"]
        assert len(said) == 1, said  # what failed, in the log once, not once per probe
        assert "redis: not reachable" in said[0] and "postgresql: not reachable" in said[0]
        assert "s3cret-pw-2" not in caplog.text
        probe.redis_url, probe.database_url = redis_url, database_url
        assert get(f"http://127.0.0.1:{port}/readyz") == (200, {"status": "ok"})
        assert [record.getMessage() for record in caplog.records if record.name == "runtime.health"][1:] == \
            ["ready again"]
    finally:
        server.shutdown()


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("BACKMARKET_", "INGRAM_", "REFURBED_", "SHOPIFY_", "STOCK_ALERT_"))}
    return subprocess.run([sys.executable, "-m", "workers.cli", "doctor", *args], cwd=ROOT,
                          env={**environment, **env}, capture_output=True, text=True, timeout=120)


def test_doctor_passes_a_good_deployment_and_names_credentials_never_their_values(redis_url, database_url):
    done = doctor(REDIS_URL=redis_url, DATABASE_URL=database_url, BACKMARKET_TOKEN="bm-doctor-token-x1",
                  STOCK_ALERT_WEBHOOK_URL="https://hooks.example/T0/B0/doctorsecret")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bm-doctor-token-x1" not in done.stdout + done.stderr and "doctorsecret" not in done.stdout
    assert "BACKMARKET_TOKEN is set" in done.stdout
    assert "REFURBED_TOKEN is not set: Refurbed order fetches and polling off" in done.stdout  # a warning only
    assert "migrations" in done.stdout and "at head" in done.stdout
    assert "ahead of PostgreSQL" in done.stdout or "behind PostgreSQL" in done.stdout
    report = json.loads(doctor("--json", REDIS_URL=redis_url, DATABASE_URL=database_url,
                               BACKMARKET_TOKEN="bm-doctor-token-x1").stdout)
    assert report["ok"] is True
    assert {finding["check"] for finding in report["findings"]} >= {"settings", "redis", "postgresql", "migrations",
                                                                    "credentials", "clock"}


def test_doctor_says_what_is_wrong_and_exits_non_zero(unmigrated_url):
    done = doctor(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", DATABASE_URL=unmigrated_url,
                  BACKMARKET_PAGE_SIZE="500")
    assert done.returncode == 1
    out = done.stdout
    assert "FAIL  settings     BACKMARKET_PAGE_SIZE: Input should be less than or equal to 50" in out
    assert "FAIL  redis        not reachable" in out
    assert "FAIL  migrations   the database has no schema: run `stocksync db upgrade`" in out
    assert "FAIL  credentials  BACKMARKET_TOKEN is not set" in out
    assert "Traceback" not in done.stderr and "problem(s) found" in done.stderr
