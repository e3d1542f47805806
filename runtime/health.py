"""Readiness checks: Redis and PostgreSQL reachable, the schema at the migrations' head.

``/readyz`` of the intake, the console and every ``/metrics`` server answers from :func:`readiness`;
``stocksync doctor`` runs the same checks and more.  Each check has a short timeout and says what is
wrong in words; none prints a URL's password or any other secret.  An unauthenticated ``/readyz``
gets the status code and :func:`public_answer`'s one word, never the checks' text (hosts, driver
errors): :class:`ReadinessProbe` logs what failed instead.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Callable

logger = logging.getLogger(__name__)

#: Seconds a check may take before it counts as failed (a readiness probe must answer quickly).
CHECK_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``ok``, and in ``detail`` what was found or what is wrong."""

    name: str
    ok: bool
    detail: str

    def asdict(self) -> dict:
        """JSON-able."""
        return asdict(self)


def _error(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def check_redis(url: str, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """Redis answers PING at ``url``."""
    import redis

    if not url:
        return Check("redis", False, "REDIS_URL is not set")
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        started = time.perf_counter()
        client.ping()
        return Check("redis", True, f"answered PING in {(time.perf_counter() - started) * 1000:.1f} ms")
    except Exception as error:
        return Check("redis", False, f"not reachable: {_error(error)}")
    finally:
        client.close()


@lru_cache(maxsize=8)
def probe_engine(url: str):
    """An engine without a pool for probes of ``url`` (cached per URL)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    # No pool: a probe every few seconds must not keep connections that the workers need.
    return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": max(1, int(CHECK_TIMEOUT_S))})


@lru_cache(maxsize=8)
def migration_heads(url: str) -> frozenset[str]:
    """The head revisions of the project's migrations (read from the migration scripts)."""
    from alembic.script import ScriptDirectory

    from db.migrate import alembic_config

    return frozenset(ScriptDirectory.from_config(alembic_config(url)).get_heads())


def check_database(url: str) -> list[Check]:
    """PostgreSQL answers at ``url``, and its schema is at the migrations' head (two checks)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import text

    if not url:
        return [Check("postgresql", False, "DATABASE_URL is not set"),
                Check("migrations", False, "not checked: no database")]
    try:
        started = time.perf_counter()
        with probe_engine(url).connect() as connection:
            connection.execute(text(f"SET statement_timeout = {int(CHECK_TIMEOUT_S * 1000)}"))
            connection.execute(text("SELECT 1"))
            elapsed_ms = (time.perf_counter() - started) * 1000
            current = frozenset(MigrationContext.configure(connection).get_current_heads())
    except Exception as error:
        return [Check("postgresql", False, f"not reachable: {_error(error)}"),
                Check("migrations", False, "not checked: no database")]
    checks = [Check("postgresql", True, f"answered in {elapsed_ms:.1f} ms")]
    heads = migration_heads(url)
    if current == heads:
        checks.append(Check("migrations", True, f"at head {', '.join(sorted(heads))}"))
    elif not current:
        checks.append(Check("migrations", False, "the database has no schema: run `stocksync db upgrade`"))
    else:
        checks.append(Check("migrations", False, f"at {', '.join(sorted(current))}, head is {', '.join(sorted(heads))}: "
                                                 "run `stocksync db upgrade` (or deploy the code that matches)"))
    return checks


def readiness(redis_url: str, database_url: str) -> list[Check]:
    """Every check a ready process passes: Redis (unless in-process: no ``REDIS_URL``), PostgreSQL, migrations."""
    redis_check = check_redis(redis_url) if redis_url else Check("redis", True, "in-process broker (no REDIS_URL)")
    return [redis_check, *check_database(database_url)]


class ReadinessProbe:
    """:func:`readiness` for a server's ``/readyz``, at most one run at a time (answers are cached 1 s).

    A flood of probes must not become a flood of connections to Redis and PostgreSQL.
    ``database_url`` may be a function, called at the first probe (an embedded database starts then).
    """

    def __init__(self, redis_url: str, database_url: str | Callable[[], str], cache_s: float = 1.0) -> None:
        self.redis_url, self.database_url, self.cache_s = redis_url, database_url, cache_s
        self._lock = threading.Lock()
        self._last: tuple[float, list[Check]] | None = None
        self._failing: tuple[tuple[str, str], ...] = ()

    def __call__(self) -> list[Check]:
        with self._lock:
            if self._last is None or time.monotonic() - self._last[0] > self.cache_s:
                url = self.database_url() if callable(self.database_url) else self.database_url
                self._last = (time.monotonic(), readiness(self.redis_url, url))
                self._log(self._last[1])
            return self._last[1]

    def _log(self, checks: list[Check]) -> None:
        """What failed goes to the log (the public answer does not say), once per change, not once per probe."""
        failing = tuple((check.name, check.detail) for check in checks if not check.ok)
        if failing and failing != self._failing:
            logger.warning("not ready: %s", "; ".join(f"{name}: {detail}" for name, detail in failing))
        elif not failing and self._failing:
            logger.info("ready again")
        self._failing = failing


def public_answer(checks: list[Check]) -> tuple[int, dict]:
    """The HTTP status (200 ready, 503 not) and the body anyone may see: ``{"status": "ok" | "not ok"}``."""
    ok = all(check.ok for check in checks)
    return (200 if ok else 503), {"status": "ok" if ok else "not ok"}


def answer(checks: list[Check]) -> tuple[int, dict]:
    """The HTTP status (200 ready, 503 not) and JSON body of a ``/readyz`` with each check's details
    (for an authenticated caller only: :func:`public_answer` for the others)."""
    ok = all(check.ok for check in checks)
    return (200 if ok else 503), {"ok": ok, "checks": {check.name: {"ok": check.ok, "detail": check.detail}
                                                      for check in checks}}
