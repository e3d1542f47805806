"""Fixtures: a real redis-server and a real PostgreSQL on loopback, in temporary folders.

Each test gets its own database, copied from a migrated template, and a flushed Redis.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile

import pytest

from db.migrate import upgrade
from runtime.local_servers import PostgresServer, RedisServer

_database_numbers = itertools.count(1)

#: This run's metric files (METRICS_DIR, inherited by every worker a test starts): a folder of its own,
#: made before any settings are read, never a fixed path another run (or user) of the machine shares.
_METRICS_DIR = tempfile.mkdtemp(prefix="stocksync-test-metrics-")
os.environ["METRICS_DIR"] = _METRICS_DIR


def pytest_sessionfinish(session, exitstatus):
    """Remove this run's metric files."""
    shutil.rmtree(_METRICS_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A redis-server process for the whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """URL of the session's Redis, flushed before the test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A PostgreSQL server for the whole session, with a migrated template database."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    upgrade(server.create_database("stocksync_template"))
    yield server
    server.stop()


@pytest.fixture
def database_url(pg_server):
    """URL of a fresh database for this test, copied from the migrated template."""
    name = f"t{os.getpid()}_{next(_database_numbers)}"
    url = pg_server.create_database(name, template="stocksync_template")
    yield url
    from db.engine import get_engine

    get_engine.cache_clear()
