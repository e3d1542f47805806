"""Engine and session factory, one engine per process and database URL."""
from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """The process's engine for ``url`` (pooled; ``pool_pre_ping`` survives a database restart)."""
    # psycopg prepares a statement after 5 runs, and PostgreSQL may then switch to a generic plan
    # that cannot see how small a page's arrays are (5x slower page applies, measured): always
    # plan for the actual parameters.
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True,
                         connect_args={"options": "-c plan_cache_mode=force_custom_plan"})


def session_factory(url: str) -> sessionmaker[Session]:
    """A session factory bound to the engine for ``url``."""
    return sessionmaker(get_engine(url), expire_on_commit=False)
