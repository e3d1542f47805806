"""Settings read from the environment (and an optional ``.env`` file).

Every knob of the fleet lives here so the workers, the CLI, the scheduler and the intake read the
same values.  Secrets are :class:`pydantic.SecretStr`, so they never show up in a ``repr``, a log
line or an error message.
"""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
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
    #: Data limit ("Data limitation" in the spec): SKU lines of listing updates per window across the
    #: fleet (Back Market accepts about 2,000 an hour and answers 429 beyond).  One push is one line.
    backmarket_push_lines_per_hour: int = Field(2000, ge=1)
    backmarket_push_lines_window_s: float = Field(3600.0, gt=0)
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
    #: A running sync with no page applied for this long has its missing pages fetched again
    #: (``resume_stalled_syncs``): longer than a dead worker's recovery (66 s) plus a page's longest
    #: retry backoff (60 s), so only pages whose messages are gone are fetched twice.
    sync_resume_after_s: float = Field(180.0, gt=0)

    #: Dramatiq broker tuning; tests lower the heartbeat so a killed worker's messages come back fast.
    dramatiq_heartbeat_timeout_ms: int = 60_000
    dramatiq_maintenance_chance: int = 1_000
    #: How often each worker process puts dead workers' messages back, on every queue (runtime/recovery.py):
    #: they are back at most heartbeat timeout + this after the worker died.
    dramatiq_recovery_interval_s: float = Field(5.0, gt=0)
    #: PostgreSQL or Redis unreachable is not a message's failure: it is retried without spending its
    #: retries for this long (backoff doubling from 1 s up to the maximum), then its retries count.
    outage_retry_for_s: float = Field(30 * 60, gt=0)
    outage_max_backoff_ms: int = Field(30_000, ge=1_000)
    #: Threads of the in-process worker used by the demo (no REDIS_URL).
    inprocess_worker_threads: int = 8

    # --- stock events, intake, reconciliation ---

    #: ``stocksync serve``: webhooks, the signed producer endpoint and the read API.  Loopback
    #: unless told otherwise: put a TLS-terminating proxy in front of it.
    intake_host: str = "127.0.0.1"
    intake_port: int = Field(8790, ge=1, le=65535)
    #: The largest request body the intake reads (a Shopify order is a few kB).
    intake_max_body_bytes: int = Field(1_000_000, ge=1024)
    #: Connections of the read API's pool (one event loop: a few connections keep it busy).
    intake_read_pool_size: int = Field(4, ge=1)
    #: Back Market order polling: the first poll reads this far back; later polls re-read this
    #: much before the last ``date_modification`` seen (orders that moved between pages during a
    #: walk).  Re-reads are free: every event has an idempotency key.
    intake_orders_lookback_s: float = Field(24 * 3600, gt=0)
    intake_orders_overlap_s: float = Field(600, ge=0)
    #: A polled order line's events not booked this long after they were sent are sent again
    #: (their messages died or vanished); longer than a booking takes, even behind a backlog.
    intake_orders_resend_after_s: float = Field(900, gt=0)
    #: Fleet-wide quota of Back Market's order endpoints (its general limit is ~200 per 10 s).
    intake_orders_quota_requests: int = Field(50, ge=1)
    intake_orders_quota_window_s: float = Field(10.0, gt=0)

    #: Refurbed signs nothing: the webhook URL ends with this secret (``/webhooks/refurbed/<secret>``).
    refurbed_webhook_secret: SecretStr = SecretStr("")
    refurbed_base_url: str = "https://api.refurbed.com"
    #: Offers per ``ListOffers`` page of a stock sync (Refurbed's maximum is 100).
    refurbed_page_size: int = Field(100, ge=1, le=100)
    #: Merchant API token, sent as ``Authorization: Plain <token>``.
    refurbed_token: SecretStr = SecretStr("")
    refurbed_timeout_s: float = Field(30.0, gt=0)
    refurbed_http_attempts: int = Field(4, ge=1)
    #: Refurbed publishes no numbers; a fleet-wide ceiling keeps a burst of webhooks polite.
    refurbed_quota_requests: int = Field(10, ge=1)
    refurbed_quota_window_s: float = Field(1.0, gt=0)
    #: The Refurbed backstop poll re-reads orders released this far back: webhooks announce new
    #: orders only, so a cancellation is seen by this walk (or a later webhook of the same order).
    refurbed_orders_lookback_s: float = Field(14 * 24 * 3600, gt=0)

    #: The main Shopify shop (the account ``shopify``, which names no credential variable of its own, as
    #: ``BACKMARKET_TOKEN`` and ``REFURBED_TOKEN`` serve the main Back Market and Refurbed accounts): its Admin
    #: API access token (``X-Shopify-Access-Token``; never printed), and where it is: ``shopify_base_url``
    #: (``https://SHOP.myshopify.com``, or a sandbox with ``ACCOUNTS_ALLOW_LOOPBACK``), else ``https://`` and
    #: ``shopify_shop_domain``.  Shopify has no default host: unset, the main shop is not used.
    shopify_token: SecretStr = SecretStr("")
    shopify_shop_domain: str = ""
    shopify_base_url: str = ""

    @field_validator("shopify_shop_domain")
    @classmethod
    def _shop_domain(cls, value: str) -> str:
        from core.accounts import AccountError, check_options
        from core.platforms import platform

        value = value.strip().lower()
        try:
            if value:
                check_options({"shop_domain": value}, platform("shopify"))  # a myshopify.com host, no path
        except AccountError:
            raise ValueError("expected the main shop's SHOP.myshopify.com domain (no scheme, no path)") from None
        return value

    @model_validator(mode="after")
    def _shop_base_url(self) -> "Settings":
        if not self.shopify_base_url and self.shopify_shop_domain:
            self.shopify_base_url = f"https://{self.shopify_shop_domain}"
        return self

    #: The app's client secret: ``X-Shopify-Hmac-Sha256`` is keyed with it.
    shopify_webhook_secret: SecretStr = SecretStr("")
    #: The previous secret, still accepted during a rotation (Shopify takes up to an hour to switch).
    shopify_previous_webhook_secret: SecretStr = SecretStr("")
    #: The marketplace code Shopify orders are booked on.
    shopify_marketplace: str = "shopify"
    #: How long a delivery id (``X-Shopify-Webhook-Id``) is remembered; Shopify retries for 4 hours.
    shopify_webhook_dedupe_ttl_s: int = Field(48 * 3600, ge=60)
    #: A webhook delivery whose signed body was made longer ago than this is refused (a captured
    #: delivery replayed later).  The age is read from the body (its newest of ``created_at``,
    #: ``updated_at``, ``cancelled_at``: headers are not signed); retries resend the body as it was,
    #: so this must exceed the sender's retry window (Shopify: 4 h since 2024-09, 48 h before).
    webhook_max_age_s: float = Field(48 * 3600, gt=0)

    #: Key of the signed endpoint for in-house producers (HMAC-SHA256 over timestamp + body).
    producer_hmac_key: SecretStr = SecretStr("")
    #: The name of that key, in the ledger as the ``actor`` of every event posted with it
    #: (``producer:<id>``): a producer cannot book an event under someone else's name.
    producer_key_id: str = Field("default", pattern=r"^[a-z0-9][a-z0-9_-]{0,22}$")
    #: Bearer tokens of the intake's read API and of ``/readyz``'s details (comma-separated: during a
    #: rotation the old and the new one are both valid).  Empty: the read API is off.
    read_api_tokens: SecretStr = SecretStr("")
    #: A signature older (or further in the future) than this is refused: no replays.
    producer_signature_tolerance_s: float = Field(300.0, gt=0)
    #: How long the producer API (``runtime.producer``) retries while Redis is unreachable or
    #: loading, with backoff, before it raises ``EventsNotSent`` naming the events not enqueued.
    producer_retry_s: float = Field(30.0, ge=0)

    #: Stock events (db/events.py): how far our clock and a marketplace's may disagree.  An order
    #: this close to a page's fetch time may or may not be in the page: the row is re-checked.
    stock_event_skew_s: float = Field(5.0, ge=0)
    #: Pushes of local stock changes (``POST /ws/listings/{id}``, queue ``stock-push``): retries
    #: (with exponential backoff between these bounds) before the dead letters and ``failed``.
    stock_push_max_retries: int = Field(6, ge=0)
    stock_push_min_backoff_ms: int = Field(1_000, ge=1)
    stock_push_max_backoff_ms: int = Field(120_000, ge=1)
    #: How many times a re-check reads a row that is still ambiguous (backing off up to a minute
    #: apart) before leaving it to the sweep.
    stock_recheck_attempts: int = Field(20, ge=1)
    #: Marketplaces that do NOT give a cancelled line's units back themselves (comma-separated):
    #: their cancellations are local changes, pushed.  The others' are counted by their next page.
    #: Back Market does not document it; if it is set wrong this way round the stock ends above
    #: the truth, the other way round below it (a lost sale, never an oversell): check with a test order.
    stock_not_restocking: str = ""
    #: Accounts may point at loopback hosts (the sandboxes, tests, the demo); never in production.
    accounts_allow_loopback: bool = False
    #: Drains (``drain_pushes`` / ``drain_rechecks``): rows taken per batch, how long one message
    #: works before handing over to the next, and the longest wait for a limiter slot it sits out
    #: (a longer one ends it and enqueues the next drain for when the slot is free).
    stock_drain_batch: int = Field(20, ge=1, le=500)
    stock_drain_run_s: float = Field(120.0, gt=0)
    stock_drain_max_wait_s: float = Field(30.0, ge=0)
    #: How long the push log keeps a push that ended (the sweep prunes older ones; open ones stay).
    push_log_retention_days: int = Field(30, ge=1, le=3650)
    #: Re-checks (queue ``stock-recheck``) running at once per worker process: they wait on the
    #: catalog quota, and must leave the other threads to order booking (the rest wait on their queue).
    stock_recheck_threads: int = Field(2, ge=1)
    #: ``stocksync reconcile``: alert when more rows than this differ; listing pages fetched at once.
    reconcile_alert_threshold: int = Field(10, ge=0)
    reconcile_concurrency: int = Field(4, ge=1)

    # --- Ingram Micro ---
    #: Ingram Micro Reseller API v6.  The vendor's sandbox is under ``/sandbox``.
    ingram_base_url: str = "https://api.ingrammicro.com:443"
    #: OAuth client credentials of the API app; the secret never shows in a repr, a log or an error.
    ingram_client_id: str = ""
    ingram_client_secret: SecretStr = SecretStr("")
    #: ``IM-CustomerNumber`` (must match the registered one), ``IM-CountryCode``, optional ``IM-SenderID``.
    ingram_customer_number: str = Field("", max_length=10)
    ingram_country_code: str = Field("US", pattern=r"^[A-Z]{2}$")
    ingram_sender_id: str = Field("", max_length=32)
    #: Fleet-wide quotas: price & availability requests per minute, least gap between two details calls.
    ingram_pa_per_minute: int = Field(60, ge=1)
    ingram_details_min_interval_s: float = Field(0.5, gt=0)
    #: Added to both Ingram limiter windows (seconds, never scaled): the supplier counts requests when
    #: they arrive, and arrival jitter (network, scheduling) must not make two grants look too close.
    ingram_rate_margin_s: float = Field(0.02, ge=0)
    #: Products per price & availability request (Ingram Micro takes at most 50).
    ingram_batch_size: int = Field(50, ge=1, le=50)
    #: Price & availability batches running at once across the whole fleet.
    ingram_max_concurrent: int = Field(4, ge=1)
    #: Details older than this are fetched again even when nothing changed (seconds).
    ingram_details_max_age_s: float = Field(7 * 24 * 3600, ge=0)
    #: Multiplies every Ingram quota window and retry delay (benchmarks and tests run at e.g. 0.05).
    ingram_time_scale: float = Field(1.0, gt=0)
    #: Delays before the retries of a failed message (seconds, before the time scale; up to 25% jitter is
    #: added); once they are used up the message goes to the dead letters.  JSON lists in the environment.
    ingram_batch_retry_delays_s: list[float] = [30.0, 60.0, 120.0]
    ingram_details_retry_delays_s: list[float] = [10.0, 30.0, 60.0]
    ingram_timeout_s: float = Field(30.0, gt=0)
    #: HTTP attempts per call inside the client (429 / 5xx / timeouts) before the message retries.
    ingram_http_attempts: int = Field(4, ge=1)
    #: The shared token is replaced this long before it expires (and it lives at most 24 h).
    ingram_token_refresh_before_s: float = Field(300.0, ge=0)
    #: A batch's concurrency slot is a lease renewed while it runs; a killed worker's lease ends after this.
    ingram_lease_ttl_s: float = Field(60.0, gt=0)
    #: How many more times a batch asks again for the products a 207 answered with an error.
    ingram_partial_retries: int = Field(1, ge=0)
    #: Queues of the pipeline; ``stocksync ingram sync --queue Q`` may also name one of the extra queues
    #: (comma-separated), which every worker declares so that it consumes them.
    ingram_batch_queue: str = "ingram-batch"
    ingram_details_queue: str = "ingram-details"
    ingram_extra_queues: str = ""
    #: Cooldown between two supplier syncs, by trigger (seconds).
    ingram_cooldown_scheduled_s: float = 6 * 3600
    ingram_cooldown_manual_s: float = 30 * 60

    # --- operations: metrics, scheduler, alerts ---
    #: Logging of every process (runtime/logs.py): the least level written (DEBUG also prints whole
    #: tracebacks), ``text`` lines or ``json`` objects, and where a long message is cut.
    log_level: str = Field("INFO", pattern=r"(?i)^(debug|info|warn|warning|error|critical)$")
    log_format: Literal["text", "json"] = "text"
    log_max_message_chars: int = Field(2000, ge=200)

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_any_case(cls, value):
        return value.strip().lower() if isinstance(value, str) else value
    #: Address every process's ``/metrics`` server binds: loopback unless Prometheus scrapes from
    #: another host or container (then e.g. ``0.0.0.0`` behind a firewall).
    metrics_host: str = "127.0.0.1"
    #: Port of this process's ``/metrics`` (0 turns it off).  Every process on one host needs its
    #: own: each dramatiq master, the scheduler, the intake (deploy/supervisor gives each one).
    metrics_port: int = Field(9191, ge=0, le=65535)
    #: Folder of the worker processes' metric files (prometheus_client multiprocess mode); each
    #: dramatiq master writes to a new sub-folder of its own, removed once the master is gone.
    #: Default: the user's own runtime folder (``$XDG_RUNTIME_DIR``), else one per user in the
    #: temporary folder; a deployment names a folder of its own (tests: one per run).
    metrics_dir: Path = Field(default_factory=lambda: default_metrics_dir())

    #: ``stocksync scheduler``: when each periodic job enqueues its message, as a five-field
    #: crontab string (minute hour day-of-month month day-of-week) in ``scheduler_timezone``.  An
    #: empty string turns the job off.  The job -> actor table is ``workers.scheduler.JOBS``.
    #: The stock sync of every enabled auto-sync account.  Read from the first of its names that is set:
    #: ``SCHEDULER_STOCK_SYNC_CRON``, then the names of before accounts (Back Market's sync, the stores').
    scheduler_stock_sync_cron: str = Field("0 */6 * * *", validation_alias=AliasChoices(
        "scheduler_stock_sync_cron", "scheduler_backmarket_stock_sync_cron", "scheduler_all_stores_sync_cron"))
    scheduler_ingram_sync_cron: str = "30 */6 * * *"
    scheduler_stock_alerts_cron: str = "15 * * * *"
    scheduler_reconciliation_cron: str = "0 2 * * *"
    scheduler_order_polling_cron: str = "*/2 * * * *"
    #: Re-checks of flagged rows and pushes a crash left pending (``sweep_stock``).
    scheduler_stock_sweep_cron: str = "*/15 * * * *"
    #: Running stock syncs that stopped moving get their missing pages fetched again (``resume_stalled_syncs``).
    scheduler_stock_sync_resume_cron: str = "* * * * *"
    #: Reads older than ``listing_reads_retention_days`` are pruned (``prune_listing_reads``).
    scheduler_listing_reads_prune_cron: str = "40 3 * * *"
    #: Time zone the crontab strings are read in.
    scheduler_timezone: str = "UTC"
    #: Leader lock: only the scheduler holding it enqueues.  It expires this long after its holder's
    #: last renewal (a dead scheduler is replaced within about this time); renewed every
    #: ``scheduler_lock_renew_s``, which must be well under the expiry.
    scheduler_lock_ttl_s: float = Field(30.0, gt=0)
    scheduler_lock_renew_s: float = Field(5.0, gt=0)

    #: Shopify calls: HTTP attempts per call and the timeout of each (also read under their names of
    #: before accounts, ``STORE_HTTP_ATTEMPTS`` and ``STORE_TIMEOUT_S``).
    shopify_http_attempts: int = Field(4, ge=1, validation_alias=AliasChoices("shopify_http_attempts",
                                                                              "store_http_attempts"))
    shopify_timeout_s: float = Field(30.0, gt=0, validation_alias=AliasChoices("shopify_timeout_s", "store_timeout_s"))
    #: A shop's GraphQL query-cost bucket (points) and restore rate (points a second) until Shopify's
    #: own ``throttleStatus`` says otherwise (every answer corrects them): a standard plan restores 100 a second.
    shopify_cost_bucket_points: float = Field(2000.0, gt=0)
    shopify_cost_restore_per_s: float = Field(100.0, gt=0)
    #: Variants per catalogue page of a Shopify sync (Shopify's connections take at most 250; a page of 100
    #: at one location costs 402 points: 2 + 4 a variant).
    shopify_page_size: int = Field(100, ge=1, le=250)
    #: Compare-and-set writes a push tries (each after a fresh read) before it waits for a later drain.
    shopify_push_attempts: int = Field(3, ge=1)
    #: How long a process reuses the shop's active locations it read (an account naming none): pages and
    #: pushes count a location the shop opens or closes within this.  0: read them for every message.
    shopify_locations_ttl_s: float = Field(60.0, ge=0)
    #: A Shopify sync walks a bulk operation's file instead of pages when the account's last
    #: successful sync listed at least this many variants (0: always; the crossover measured by
    #: ``bench/shopify_sync.py``, README "Benchmarks").
    shopify_bulk_min_variants: int = Field(560, ge=0)
    #: How long a bulk walk waits before asking again about an operation still running (seconds;
    #: each ask is one delayed message and 1 point, no worker waits).
    shopify_bulk_poll_s: float = Field(2.0, gt=0, le=300)

    #: Stock alerts (db/alerts.py): the threshold of every variation's total stock when no rule
    #: sets one; stock strictly below it fires an alert.  0: no alert unless a rule asks for one.
    stock_alert_default_threshold: int = Field(0, ge=0)
    #: A firing alert resolves once the stock is at least its threshold plus this (0: at the
    #: threshold), so a stock that wobbles around the threshold does not notify every hour.
    stock_alert_hysteresis: int = Field(0, ge=0)
    #: Where alert notifications are POSTed (a Slack incoming webhook or any receiver of
    #: ``{"text", "blocks"}``).  A secret: its path carries the token; never printed.  Empty: none.
    stock_alert_webhook_url: SecretStr = SecretStr("")
    #: Per POST; attempts inside one delivery (5xx, 408, 429, network) and the first wait between them.
    stock_alert_webhook_timeout_s: float = Field(10.0, gt=0)
    stock_alert_webhook_attempts: int = Field(3, ge=1)
    stock_alert_webhook_backoff_s: float = Field(1.0, ge=0)
    #: Retries of a failed delivery's message (with backoff between these bounds) before the dead letters.
    stock_alert_notify_max_retries: int = Field(5, ge=0)
    stock_alert_notify_min_backoff_ms: int = Field(30_000, ge=1)
    stock_alert_notify_max_backoff_ms: int = Field(30 * 60_000, ge=1)

    #: What the marketplaces' reads said (``listing_reads``, the timeline's reads) is kept this many
    #: days; each stock row's latest read is kept whatever its age (the next read is compared with it).
    listing_reads_retention_days: int = Field(400, ge=1)

    # --- operator console ---
    #: ``stocksync console``: the operator web console.  Loopback unless told otherwise: put a
    #: TLS-terminating proxy in front of it (and turn ``console_secure_cookies`` on).
    console_host: str = "127.0.0.1"
    console_port: int = Field(8800, ge=1, le=65535)
    #: A session lasts this long from its login, whatever is done meanwhile (seconds).
    console_session_lifetime_s: float = Field(8 * 3600, gt=0)
    #: Served over HTTPS by a TLS-terminating proxy: cookies are ``Secure`` and named ``__Host-...``, and
    #: every answer carries ``Strict-Transport-Security``.  Off for plain HTTP on loopback.
    console_secure_cookies: bool = False
    #: Proxies whose ``X-Forwarded-For`` is believed (comma-separated addresses or CIDRs; none by
    #: default, loopback included): behind one, the client is the right-most address not in these.
    console_trusted_proxies: str = ""
    #: Login attempts that fail per (account, client address), and per client address whatever the
    #: account, before each next attempt waits: ``console_login_delay_s``, doubling with each attempt,
    #: at most ``console_login_max_delay_s``.  Counts are forgotten after ``console_login_window_s``
    #: without an attempt; a good password forgets its (account, address) count.
    console_login_max_failures: int = Field(5, ge=1)
    console_login_max_failures_per_address: int = Field(20, ge=1)
    console_login_delay_s: float = Field(1.0, gt=0)
    console_login_max_delay_s: float = Field(15 * 60, gt=0)
    console_login_window_s: float = Field(15 * 60, gt=0)
    #: Unauthenticated requests refused (a bad login form token, a throttled or malformed login) are
    #: audited once per kind, client address and this window; the row says how many were not.
    console_audit_burst_window_s: int = Field(60, ge=1)

    @field_validator("console_trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        from core.console_rules import parse_networks

        parse_networks(value)  # a bad entry stops the start, naming it
        return value

    #: Rows per page of the ledger, the audit and the run lists.
    console_page_size: int = Field(50, ge=1, le=1000)
    #: The largest goods-received file ``stocksync stock import`` and the console's import take (bytes;
    #: 1 MiB is some 20,000 lines).  The console keeps an upload in Redis until confirmed, an hour at most.
    stock_import_max_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)


def default_metrics_dir() -> Path:
    """``$XDG_RUNTIME_DIR/stocksync-metrics``, else ``$TMPDIR/stocksync-metrics-<uid>``: never one path
    shared by every user of the machine."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return Path(runtime_dir) / "stocksync-metrics"
    return Path(tempfile.gettempdir()) / f"stocksync-metrics-{os.getuid()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
