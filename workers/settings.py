"""Settings read from the environment (and an optional ``.env`` file).

Every knob of the fleet lives here so the workers, the CLI, the scheduler and the intake read the
same values.  Secrets are :class:`pydantic.SecretStr`, so they never show up in a ``repr``, a log
line or an error message.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """The fleet's configuration.  Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    #: PostgreSQL URL (``postgresql+psycopg://...``).  Empty: embedded PostgreSQL in ``data_dir``.
    database_url: str = ""
    #: Redis URL.  Empty: an in-process broker and limiter (demo only).
    redis_url: str = ""
    #: Folder for the embedded PostgreSQL data and other local state.
    data_dir: Path = Path(".stocksync")
    #: Namespace for every Redis key the fleet owns (limiter, tokens, locks, stats).
    redis_namespace: str = "stocksync"

    backmarket_base_url: str = "https://www.backmarket.fr"
    backmarket_token: SecretStr = SecretStr("")
    backmarket_user_agent: str = "BM-Stocksync-Stock;ops@example.com"
    backmarket_language: str = "fr-fr"
    #: Listings per page (Back Market allows at most 50).
    backmarket_page_size: int = Field(50, ge=1, le=50)
    #: Catalog quota: requests per window across the whole fleet.
    backmarket_quota_requests: int = Field(20, ge=1)
    backmarket_quota_window_s: float = Field(10.0, gt=0)
    #: Added to every limiter window: a request granted at T reaches the API a few ms later, and
    #: the API measures its window by arrival, so an exact limiter would touch the edge.
    rate_limit_margin_s: float = Field(0.25, ge=0)
    #: How long the whole fleet backs off after a 429 (Back Market blocks for about 10 s).
    backmarket_penalty_s: float = Field(10.0, ge=0)
    backmarket_timeout_s: float = Field(30.0, gt=0)
    #: HTTP attempts per call inside the client (429 / 5xx / timeouts) before the message retries.
    backmarket_http_attempts: int = Field(4, ge=1)

    #: Cooldown between two stock syncs of one marketplace, by trigger (seconds).
    sync_cooldown_scheduled_s: float = 6 * 3600
    sync_cooldown_manual_s: float = 30 * 60
    #: A running sync that made no progress for this long is considered dead and may be replaced.
    sync_stale_after_s: float = 15 * 60

    #: Dramatiq broker tuning; tests lower the heartbeat so a killed worker's messages come back fast.
    dramatiq_heartbeat_timeout_ms: int = 60_000
    dramatiq_maintenance_chance: int = 1_000
    #: Threads of the in-process worker used by the demo (no REDIS_URL).
    inprocess_worker_threads: int = 8

    # --- stock events, intake, reconciliation (add fields below this line) ---

    # --- Ingram Micro (add fields below this line) ---

    # --- operations: metrics, scheduler, stores, alerts (add fields below this line) ---


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
