"""The test servers and folders are private to the run: PostgreSQL asks for a password on TCP, and
metric files go to a folder of this run's own."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
import pytest

from runtime.settings import Settings, default_metrics_dir


def test_postgresql_refuses_a_client_without_the_password(pg_server):
    base = f"host=127.0.0.1 port={pg_server.port} user=postgres dbname=postgres connect_timeout=5"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(base).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"{base} password=not-{pg_server.password}").close()
    with psycopg.connect(pg_server.conninfo()) as connection:
        method = connection.execute("SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' LIMIT 1")
        assert method.fetchone()[0] == "scram-sha-256"
    assert (Path(pg_server.folder) / "password").stat().st_mode & 0o077 == 0  # readable by us alone
    assert pg_server.password in pg_server.url()


def test_metric_files_go_to_a_folder_of_this_run():
    folder = Settings().metrics_dir
    assert folder == Path(os.environ["METRICS_DIR"]) and folder.name.startswith("stocksync-test-metrics-")
    assert folder != Path(tempfile.gettempdir()) / "stocksync-metrics"


def test_the_default_metrics_folder_is_the_users_own(monkeypatch):
    monkeypatch.delenv("METRICS_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1234")
    assert Settings().metrics_dir == Path("/run/user/1234/stocksync-metrics")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_metrics_dir() == Path(tempfile.gettempdir()) / f"stocksync-metrics-{os.getuid()}"
