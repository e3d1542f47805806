"""Engine and session factory, one engine per process and database URL."""
from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """The process's engine for ``url`` (pooled).

    No ``pool_pre_ping``: it costs a round trip on every checkout, i.e. on every message (a third
    of a stock event's round trips, measured).  After a database restart the first statement on
    a stale connection fails instead; SQLAlchemy then drops the whole pool, and the message is
    retried as any transient failure is.  ``pool_recycle`` retires connections that idle firewalls
    may have cut.
    """
    # psycopg prepares a statement after 5 runs, and PostgreSQL may then switch to a generic plan
    # that cannot see how small a page's arrays are (5x slower page applies, measured): always
    # plan for the actual parameters.
    return create_engine(url, pool_size=10, max_overflow=20, pool_recycle=1800,
                         connect_args={"options": "-c plan_cache_mode=force_custom_plan"})


@lru_cache(maxsize=8)
def session_factory(url: str) -> sessionmaker[Session]:
    """The session factory bound to the engine for ``url`` (one per process and URL).

    Cached: each ``sessionmaker`` makes a new Session class, whose event dispatch SQLAlchemy
    builds anew on first use (a fifth of a stock event's CPU, measured, when made per message).
    """
    return sessionmaker(get_engine(url), expire_on_commit=False)
