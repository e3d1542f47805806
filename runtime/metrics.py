"""The fleet's Prometheus metrics: every definition, the multiprocess set-up and the ``/metrics`` servers.

Every process kind serves ``/metrics`` on ``METRICS_HOST:METRICS_PORT`` (loopback by default):

- a ``dramatiq workers.fleet`` master: :class:`FleetPrometheus` (dramatiq's own Prometheus
  middleware) makes each of its worker processes write its samples, dramatiq's message metrics and
  ours alike, to prometheus_client's multiprocess files in a folder of that master only
  (``METRICS_DIR/dramatiq-<pid>-<start time>``, so it is new, hence empty, at every start), and forks
  one server that serves them all, plus the dead letters waiting per queue, read from Redis when scraped;
- any other process (the scheduler, the intake): :func:`start_exposition_server`.

Code records what happens through the small functions below (:func:`api_request`,
:func:`sync_progress`, :func:`ledger_change`, ...); they never raise and never block on I/O.  Labels
carry names (APIs, route templates, queues, actors, marketplaces), never a URL, an argument or a secret.

prometheus_client picks its storage (memory or multiprocess files) when it is first imported, so it
is imported lazily and the metrics are made on first use.  A process that never booted as a
dramatiq worker (the in-process demo, the CLI, tests) keeps them in the default registry.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

# dramatiq's Prometheus module makes its folder and reads its address from the environment when it
# is imported.  An empty folder name (what the test fleets set) would fail the import, and its
# default address is every interface: give both safe values first.
if not os.environ.get("dramatiq_prom_db"):
    os.environ["dramatiq_prom_db"] = os.path.join(tempfile.gettempdir(), "dramatiq-prometheus")
os.environ.setdefault("dramatiq_prom_host", "127.0.0.1")

import dramatiq  # noqa: E402
from dramatiq.common import q_name  # noqa: E402
from dramatiq.middleware import prometheus as dramatiq_prometheus  # noqa: E402

from runtime.queue_stats import redis_queue_stats  # noqa: E402

logger = logging.getLogger(__name__)

#: Buckets of API request durations (seconds).
API_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Buckets of rate-limiter waits (seconds); a free slot costs only the round trip to Redis (< 5 ms).
RATE_LIMIT_WAIT_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets of whole sync runs (seconds).
SYNC_DURATION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
#: Buckets of the time from an event happening to its ledger entry (seconds).
EVENT_LAG_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

#: Buckets of the time a message waits on its queue before a worker starts it (seconds).
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

#: Prefix of a dramatiq master's metrics folder inside ``METRICS_DIR``; its pid and start time follow.
MASTER_FOLDER_PREFIX = "dramatiq-"


class _Metrics:
    """The metric objects, made once per process by :func:`_metrics`."""

    def __init__(self, prom) -> None:
        counter, gauge, histogram = prom.Counter, prom.Gauge, prom.Histogram
        self.api_requests = counter(
            "stocksync_api_requests", "HTTP attempts to external APIs, by API, endpoint (route template) and "
            "status (the HTTP status, or 'transport_error' when no answer came back).", ["api", "endpoint", "status"])
        self.api_request_duration = histogram(
            "stocksync_api_request_duration_seconds", "Duration of HTTP attempts to external APIs (seconds).",
            ["api", "endpoint"], buckets=API_DURATION_BUCKETS)
        self.api_rate_limited = counter(
            "stocksync_api_rate_limited", "HTTP 429 answers from external APIs.", ["api", "endpoint"])
        self.rate_limit_wait = histogram(
            "stocksync_rate_limit_wait_seconds", "Time spent getting a slot of a fleet-wide rate limiter "
            "(seconds).", ["limiter"], buckets=RATE_LIMIT_WAIT_BUCKETS)
        # Gauges of a multiprocess app need a rule to merge the processes' values: "max" suits values
        # that only grow (pages done, a timestamp) or that every process sets alike (a quota).
        self.quota_requests = gauge(
            "stocksync_api_quota_requests", "Requests a fleet-wide rate limiter allows per window.", ["limiter"],
            multiprocess_mode="max")
        self.quota_window = gauge(
            "stocksync_api_quota_window_seconds", "Window of a fleet-wide rate limiter (seconds).", ["limiter"],
            multiprocess_mode="max")
        self.sync_pages_done = gauge(
            "stocksync_sync_pages_done", "Pages a sync run has applied so far.", ["sync_id"], multiprocess_mode="max")
        self.sync_pages_total = gauge(
            "stocksync_sync_pages_total", "Pages of a sync run (known once its first page is fetched).", ["sync_id"],
            multiprocess_mode="max")
        self.sync_pages_applied = counter(
            "stocksync_sync_pages_applied", "Pages applied by syncs.", ["kind", "target"])
        self.sync_duration = histogram(
            "stocksync_sync_duration_seconds", "Duration of finished sync runs (seconds), by outcome.",
            ["kind", "target", "status"], buckets=SYNC_DURATION_BUCKETS)
        self.sync_last_success = gauge(
            "stocksync_sync_last_success_timestamp_seconds", "When the last successful sync of a target finished "
            "(Unix time).", ["kind", "target"], multiprocess_mode="max")
        self.ledger_changes = counter(
            "stocksync_ledger_changes", "Stock ledger rows written, by change type.", ["change_type"])
        self.duplicate_events = counter(
            "stocksync_duplicate_events", "Stock events skipped because their idempotency key was already in the "
            "ledger (repeated webhooks, redelivered messages).", ["source"])
        self.events_applied = counter(
            "stocksync_events_applied", "Stock events written to the ledger, by type and source.",
            ["event_type", "source"])
        self.event_lag = histogram(
            "stocksync_event_lag_seconds", "Time from a stock event happening to its ledger entry (seconds).",
            ["event_type"], buckets=EVENT_LAG_BUCKETS)
        self.oversold = counter(
            "stocksync_oversold", "Stock changes that left a marketplace's available stock below zero.",
            ["marketplace"])
        self.ledger_broken_rows = gauge(
            "stocksync_ledger_broken_rows", "Stock rows whose ledger did not add up at the last reconciliation's "
            "check (0: the ledger invariant held).", ["marketplace"], multiprocess_mode="livemostrecent")
        self.discrepancies = counter(
            "stocksync_reconciliation_discrepancies", "Stock rows a reconciliation found different from the "
            "marketplace.", ["marketplace"])
        self.drift = counter(
            "stocksync_drift", "Stock rows a reconciliation found different from the marketplace, by cause (drift "
            "explained: stale_read, push_lost, unbooked_order, one_sided_restock, hand_edit).",
            ["marketplace", "cause"])
        self.dead_letters = counter(
            "stocksync_dead_letters", "Messages that failed for good and went to their queue's dead letters.",
            ["queue", "actor"])
        self.messages_recovered = counter(
            "stocksync_messages_recovered", "Unacked messages put back on their queue: a dead worker's, or "
            "the delayed ones a live worker dropped when its connection to Redis failed (a delay queue counts "
            "as its queue).", ["queue"])
        # Set by whichever process ran the last check: the most recent value of a live process wins.
        self.stock_alerts_firing = gauge(
            "stocksync_stock_alerts_firing", "Stock alerts firing after the last check.",
            multiprocess_mode="livemostrecent")
        self.push_backlog = gauge(
            "stocksync_push_backlog", "Stock rows waiting for a push (pending or failed) at the last drain of "
            "each marketplace.", ["marketplace"], multiprocess_mode="livemostrecent")
        self.push_backlog_eta = gauge(
            "stocksync_push_backlog_eta_seconds", "Estimated time to push the backlog at the marketplace's quotas "
            "(the line budget left in the window, then whole windows).", ["marketplace"],
            multiprocess_mode="livemostrecent")
        self.pushes = counter(
            "stocksync_pushes", "Pushes of stock rows that reached a state (the push log's states: waiting, sent, "
            "confirmed, superseded, refused, failed, retried), per account.", ["marketplace", "state"])
        self.pushes_waiting = gauge(
            "stocksync_pushes_waiting", "Pushes waiting for their turn (the data limit, a read within the clock "
            "skew) at the last drain of each account.", ["marketplace"], multiprocess_mode="livemostrecent")
        self.stock_alert_notifications = counter(
            "stocksync_stock_alert_notifications", "Stock alert notifications by event (fired, resolved) and "
            "outcome (sent, failed: one per failed delivery attempt of a message).", ["event", "outcome"])
        self.queue_wait = histogram(
            "stocksync_queue_wait_seconds", "Time from a message being enqueued (or due, for a delayed one) to a "
            "worker starting it (seconds), per queue.", ["queue"], buckets=QUEUE_WAIT_BUCKETS)
        self.intake_requests = counter(
            "stocksync_intake_requests", "Requests the HTTP intake answered, by route template (never the "
            "path: a webhook secret may be in it) and status.", ["route", "status"])
        self.intake_duration = histogram(
            "stocksync_intake_request_duration_seconds", "Time the HTTP intake took to answer (seconds).",
            ["route"], buckets=API_DURATION_BUCKETS)

    def all(self) -> list:
        """Every metric object."""
        return list(vars(self).values())


_made: _Metrics | None = None
_made_lock = threading.Lock()


def _metrics() -> _Metrics:
    global _made
    if _made is None:
        with _made_lock:
            if _made is None:
                import prometheus_client

                _made = _Metrics(prometheus_client)
    return _made


def _safely(record):
    """Decorate a recording function so that it never fails the work it measures."""
    def recording(*args, **kwargs):
        try:
            record(*args, **kwargs)
        except Exception:
            logger.exception("could not record metric %s", record.__name__)
    recording.__name__ = record.__name__
    recording.__doc__ = record.__doc__
    return recording


@_safely
def api_request(record) -> None:
    """Count one HTTP attempt (a ``clients.backmarket.RequestRecord`` or alike): the ``on_request`` hook."""
    metrics = _metrics()
    status = "transport_error" if record.status is None else str(record.status)
    metrics.api_requests.labels(record.api, record.endpoint, status).inc()
    metrics.api_request_duration.labels(record.api, record.endpoint).observe(record.elapsed_s)
    if record.status == 429:
        metrics.api_rate_limited.labels(record.api, record.endpoint).inc()


def request_hook(then=None):
    """An ``on_request`` hook that counts every HTTP attempt, then passes it on to ``then`` (if any)."""
    if then is None:
        return api_request

    def on_request(record) -> None:
        api_request(record)
        then(record)
    return on_request


@_safely
def rate_limit_wait(limiter: str, waited_s: float) -> None:
    """Observe one rate-limiter acquisition and its wait: the limiter's ``on_wait`` hook."""
    _metrics().rate_limit_wait.labels(limiter).observe(waited_s)


@_safely
def quota(limiter: str, requests: int, window_s: float) -> None:
    """Publish a fleet-wide limiter's quota, so dashboards can draw the calls against it."""
    metrics = _metrics()
    metrics.quota_requests.labels(limiter).set(requests)
    metrics.quota_window.labels(limiter).set(window_s)


@_safely
def sync_progress(sync_id: int, pages_done: int, total_pages: int | None) -> None:
    """Publish a running sync's progress: ``pages_done`` of ``total_pages`` (None while unknown)."""
    metrics = _metrics()
    metrics.sync_pages_done.labels(str(sync_id)).set(pages_done)
    if total_pages is not None:
        metrics.sync_pages_total.labels(str(sync_id)).set(total_pages)


@_safely
def sync_page_applied(kind: str, target: str, result) -> None:
    """Count a page a sync applied (a ``db.snapshot.PageResult``) and its ledger rows (type ``sync``)."""
    if not result.applied:
        return  # a redelivered page changed nothing
    _metrics().sync_pages_applied.labels(kind, target).inc()
    ledger_change("sync", result.changed)


@_safely
def sync_finished(run) -> None:
    """Observe a finished sync run (a ``db.models.SyncRun``): its duration and, if it succeeded, its time."""
    if run is None or run.finished_at is None:
        return
    metrics = _metrics()
    metrics.sync_duration.labels(run.kind, run.target, run.status).observe(run.duration_s)
    if run.status == "succeeded":
        metrics.sync_last_success.labels(run.kind, run.target).set(run.finished_at.timestamp())


@_safely
def ledger_change(change_type: str, count: int = 1) -> None:
    """Count ``count`` ledger rows of ``change_type`` (``sync``, ``order_created``, ``reconciliation``, ...)."""
    if count:
        _metrics().ledger_changes.labels(change_type).inc(count)


@_safely
def duplicate_event(source: str) -> None:
    """Count an event skipped as a duplicate (its idempotency key was already in the ledger)."""
    _metrics().duplicate_events.labels(source).inc()


@_safely
def event_applied(event_type: str, source: str, event_time: datetime | float | None = None) -> None:
    """Count an event written to the ledger and, given when it happened, observe how late it landed."""
    metrics = _metrics()
    metrics.events_applied.labels(event_type, source).inc()
    if event_time is not None:
        happened = event_time.timestamp() if isinstance(event_time, datetime) else float(event_time)
        metrics.event_lag.labels(event_type).observe(max(0.0, time.time() - happened))


@_safely
def oversold(marketplace: str, count: int = 1) -> None:
    """Count stock changes that left ``marketplace``'s available stock below zero."""
    _metrics().oversold.labels(marketplace).inc(count)


@_safely
def ledger_broken_rows(marketplace: str, count: int) -> None:
    """How many of ``marketplace``'s stock rows broke the ledger invariant at the last check."""
    _metrics().ledger_broken_rows.labels(marketplace).set(count)


@_safely
def discrepancies(marketplace: str, count: int) -> None:
    """Count ``count`` stock rows a reconciliation of ``marketplace`` found different."""
    if count:
        _metrics().discrepancies.labels(marketplace).inc(count)


@_safely
def drift(marketplace: str, cause: str, count: int) -> None:
    """Count ``count`` differences of a reconciliation of ``marketplace`` whose cause is ``cause``."""
    if count:
        _metrics().drift.labels(marketplace, cause).inc(count)


@_safely
def intake_request(route: str, status: int, elapsed_s: float) -> None:
    """Count one request the HTTP intake answered: ``route`` is the route's template, never the path."""
    metrics = _metrics()
    metrics.intake_requests.labels(route, str(status)).inc()
    metrics.intake_duration.labels(route).observe(elapsed_s)


@_safely
def dead_lettered(queue: str, actor: str) -> None:
    """Count a message dead-lettered on ``queue`` (a delay queue counts as its queue)."""
    _metrics().dead_letters.labels(q_name(queue), actor).inc()


@_safely
def queue_wait(queue: str, waited_s: float) -> None:
    """Observe how long a message waited on ``queue`` before a worker started it."""
    _metrics().queue_wait.labels(q_name(queue)).observe(max(0.0, waited_s))


class QueueWait(dramatiq.Middleware):
    """Record :func:`queue_wait` for each message a worker starts.

    A message is waiting from its enqueue time, or from its ``eta`` when it was delayed (a retry's
    backoff is not time spent waiting for a worker).
    """

    def before_process_message(self, broker, message):
        """Observe the wait, from the message's own timestamps."""
        ready_ms = max(message.message_timestamp, int(message.options.get("eta") or 0))
        queue_wait(message.queue_name, (time.time() * 1000 - ready_ms) / 1000)


@_safely
def messages_recovered(queue: str, count: int) -> None:
    """Count ``count`` messages of dead workers put back on ``queue`` (a delay queue counts as its queue)."""
    if count:
        _metrics().messages_recovered.labels(q_name(queue)).inc(count)


@_safely
def stock_alerts_firing(count: int) -> None:
    """Publish how many stock alerts are firing (after a check)."""
    _metrics().stock_alerts_firing.set(count)


@_safely
def push_backlog(marketplace: str, rows: int, eta_s: float) -> None:
    """Publish ``marketplace``'s push backlog (rows waiting) and the estimated time to push it."""
    metrics = _metrics()
    metrics.push_backlog.labels(marketplace).set(rows)
    metrics.push_backlog_eta.labels(marketplace).set(eta_s)


@_safely
def pushes(marketplace: str, state: str, count: int = 1) -> None:
    """Count ``count`` pushes of ``marketplace`` that reached ``state`` (a push log state)."""
    if count:
        _metrics().pushes.labels(marketplace, state).inc(count)


@_safely
def pushes_waiting(marketplace: str, count: int) -> None:
    """Publish how many of ``marketplace``'s pushes wait for their turn."""
    _metrics().pushes_waiting.labels(marketplace).set(count)


@_safely
def stock_alert_notification(event: str, outcome: str) -> None:
    """Count a stock alert notification: ``event`` fired or resolved, ``outcome`` sent or failed."""
    _metrics().stock_alert_notifications.labels(event, outcome).inc()


def exported_names() -> set[str]:
    """The name of every sample this module exports (``..._total``, ``..._bucket``, ...), for checks."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    families = [family for metric in _metrics().all() for family in metric.describe()]
    names = {family.name + suffix for family in families for suffix in suffixes[family.type]}
    return names | {DEAD_LETTERS_WAITING, QUEUE_MESSAGES, QUEUE_OLDEST_AGE}


# --- worker processes: multiprocess files, one folder per dramatiq master ---------------------------------

def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot; Linux), or None if it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: the pid alone names the process
        return "0"
    # The command name (field 2) may hold spaces and parentheses: count fields after the last ")".
    return stat[stat.rindex(")") + 2:].split()[19]


def master_folder(metrics_dir: Path, master_pid: int | None = None) -> Path:
    """The metrics folder of a dramatiq master (this process's parent unless ``master_pid`` is given).

    It is named after the master's pid and start time: a restarted master gets a new, empty
    folder even when it gets its old pid back (always 1 in a container).
    """
    pid = master_pid or os.getppid()
    return Path(metrics_dir) / f"{MASTER_FOLDER_PREFIX}{pid}-{_started(pid)}"


def remove_stale_folders(metrics_dir: Path) -> None:
    """Remove the folders of dramatiq masters that are gone (their counters are history)."""
    for folder in Path(metrics_dir).glob(f"{MASTER_FOLDER_PREFIX}*-*"):
        pid, _, started = folder.name[len(MASTER_FOLDER_PREFIX):].partition("-")
        if pid.isdigit() and _started(int(pid)) != started:
            shutil.rmtree(folder, ignore_errors=True)


class FleetPrometheus(dramatiq_prometheus.Prometheus):
    """dramatiq's Prometheus middleware, writing to its master's own folder and served on ``METRICS_PORT``.

    dramatiq's version never clears its folder (a restarted fleet would add its counters to the
    last one's) and serves on every interface; this one gives each master a new folder and forks
    :func:`serve_fleet_metrics` instead, which also serves the project's metrics.

    Parameters:
      metrics_dir(Path): The folder holding one sub-folder per running dramatiq master.
    """

    def __init__(self, metrics_dir: Path) -> None:
        super().__init__()
        self.metrics_dir = Path(metrics_dir)
        self.booted = False

    @property
    def forks(self):
        """The exposition server, forked once by the dramatiq master."""
        return [serve_fleet_metrics]

    def after_process_boot(self, broker):
        """Point every metric of this worker process at its master's folder, then make dramatiq's."""
        if "prometheus_client" in sys.modules and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            logger.warning("prometheus_client was imported before the worker booted: this process's metrics "
                           "stay in memory and are not served")
        folder = master_folder(self.metrics_dir)
        remove_stale_folders(self.metrics_dir)
        folder.mkdir(parents=True, exist_ok=True)
        # dramatiq's middleware reads its folder from this module constant at boot, at shutdown
        # (to mark the process dead) and when serving: it must name this master's folder.
        dramatiq_prometheus.DB_PATH = str(folder)
        super().after_process_boot(broker)
        self.booted = True

    def after_enqueue(self, broker, message, delay):
        """Count retries, once booted (the scheduler and the intake enqueue through this broker too)."""
        if self.booted:
            super().after_enqueue(broker, message, delay)


#: Gauges read from the broker's Redis when a workers' ``/metrics`` is scraped (state kept by Redis).
DEAD_LETTERS_WAITING = "stocksync_dead_letters_waiting"
QUEUE_MESSAGES = "stocksync_queue_messages"
QUEUE_OLDEST_AGE = "stocksync_queue_oldest_message_age_seconds"



def known_queues() -> set[str]:
    """The fleet's queues, reported even when empty (an alert must see 0, not nothing)."""
    from runtime import queues
    from runtime.settings import get_settings

    return set(queues.fleet_queues(get_settings()))


class QueueMetrics:
    """A collector of each queue's messages by state, its oldest waiting message's age, and its dead letters.

    Dramatiq's Redis layout (``<ns>:<queue>``: the ids ready to fetch; ``.msgs``: every message of the
    queue not yet acked, fetched ones included; ``.DQ.msgs``: delayed ones, retries among them;
    ``.XQ``: dead letters) gives ``stocksync_queue_messages{queue,state}`` with ``state`` one of
    ``waiting`` (ready, no worker has it), ``in_progress`` (fetched by a worker, not acked: running,
    prefetched, or held by a dead worker until it is requeued), ``delayed`` (due later) and ``dead``.
    The oldest message's age counts from its enqueue time, or its eta when it was delayed.

    Parameters:
      redis_client: A blocking Redis client on the broker's Redis.
      namespace(str): Dramatiq's key prefix.
    """

    def __init__(self, redis_client, namespace: str = "dramatiq", queues: set[str] | None = None) -> None:
        self.redis = redis_client
        self.namespace = namespace
        self.queues = queues

    def _queue_names(self) -> list[str]:
        prefix = f"{self.namespace}:"
        found = set(self.queues if self.queues is not None else known_queues())
        for key in self.redis.scan_iter(match=f"{prefix}*", count=1000):
            name = (key.decode() if isinstance(key, bytes) else key)[len(prefix):]
            for suffix in (".DQ.msgs", ".XQ.msgs", ".msgs", ".XQ"):
                if name.endswith(suffix) and not name.startswith("__"):
                    found.add(name[:-len(suffix)])
                    break
        return sorted(name for name in found if name and not name.endswith(".DQ"))

    def collect(self):
        """The three gauge families; empty (and one warning) while Redis is unreachable."""
        from prometheus_client.core import GaugeMetricFamily

        messages = GaugeMetricFamily(QUEUE_MESSAGES, "Messages of each queue by state: waiting (ready, not fetched), "
                                     "in_progress (fetched by a worker, not acked), delayed (due later: retries, "
                                     "etas), dead (dead letters).", labels=["queue", "state"])
        oldest = GaugeMetricFamily(QUEUE_OLDEST_AGE, "Age of each queue's oldest waiting message (seconds since it "
                                   "was enqueued or became due; 0 when none waits).", labels=["queue"])
        dead = GaugeMetricFamily(DEAD_LETTERS_WAITING, "Messages waiting in each queue's dead letters.",
                                 labels=["queue"])
        try:
            names = self._queue_names()
            for stats in redis_queue_stats(self.redis, names, self.namespace):
                messages.add_metric([stats.queue, "waiting"], stats.ready)
                messages.add_metric([stats.queue, "in_progress"], stats.in_progress or 0)
                messages.add_metric([stats.queue, "delayed"], stats.delayed)
                messages.add_metric([stats.queue, "dead"], stats.dead)
                oldest.add_metric([stats.queue], stats.oldest_age_s or 0.0)
                dead.add_metric([stats.queue], stats.dead)
        except Exception as error:  # a scrape must still answer while Redis is down
            logger.warning("could not read the queues from Redis: %s", type(error).__name__)
        yield from (messages, oldest, dead)


class _MetricsServer:
    """``/metrics`` plus ``/healthz`` (alive) and ``/readyz`` (:mod:`runtime.health`) on one port."""

    def __init__(self, registry, ready) -> None:
        from prometheus_client import make_wsgi_app

        self.metrics = make_wsgi_app(registry)
        self.ready = ready

    def __call__(self, environ, start_response):
        import json

        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            status, body = 200, {"ok": True}
        elif path == "/readyz":
            from runtime.health import public_answer

            # Unauthenticated: the status and one word; what failed is in the probe's log lines.
            status, body = public_answer(self.ready() if self.ready is not None else [])
        else:
            return self.metrics(environ, start_response)
        data = json.dumps(body).encode()
        start_response(f"{status} {'OK' if status == 200 else 'Service Unavailable'}",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                        ("Cache-Control", "no-store")])
        return [data]


def _serve(registry, host: str, port: int, ready=None):
    """Start the metrics and health HTTP server in a daemon thread; return (server, thread)."""
    from wsgiref.simple_server import make_server

    from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler

    class Server(ThreadingWSGIServer):
        """prometheus_client's threading server, with the address family of ``host``."""

    Server.address_family, host = _get_best_family(host, port)
    server = make_server(host, port, _MetricsServer(registry, ready), Server, handler_class=_SilentHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True)
    thread.start()
    return server, thread


def readiness_probe(settings):
    """The ``/readyz`` probe of this process's settings (Redis and PostgreSQL), or None without Redis."""
    if not settings.redis_url:
        return None
    from runtime import resources
    from runtime.health import ReadinessProbe

    return ReadinessProbe(settings.redis_url, settings.database_url or resources.database_url)


def serve_fleet_metrics() -> int:
    """Serve the metrics of this dramatiq master's worker processes (run in a process forked by the master)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from runtime import logs
    from runtime.settings import get_settings

    logs.ensure_configured()
    settings = get_settings()
    if not settings.metrics_port:
        return 0
    folder = master_folder(settings.metrics_dir)
    folder.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    if settings.redis_url:
        import redis

        registry.register(QueueMetrics(redis.Redis.from_url(settings.redis_url, socket_timeout=5)))
    try:
        _, thread = _serve(registry, settings.metrics_host, settings.metrics_port, readiness_probe(settings))
    except OSError as error:
        logger.error("cannot serve /metrics on %s:%d: %s (give each dramatiq master on a host its own "
                     "METRICS_PORT)", settings.metrics_host, settings.metrics_port, error)
        return 1
    logger.info("serving the workers' /metrics on %s:%d", settings.metrics_host, settings.metrics_port)
    thread.join()
    return 0


# --- other processes (scheduler, intake) ------------------------------------------------------------------

def start_exposition_server(settings=None, port: int | None = None, ready=None):
    """Serve this process's metrics on ``METRICS_HOST:METRICS_PORT`` in a daemon thread.

    For the processes that are not dramatiq workers: the scheduler, the intake.  Under a
    multiprocess server (``PROMETHEUS_MULTIPROC_DIR`` set) it serves every process's files.
    ``/healthz`` and ``/readyz`` answer beside ``/metrics``; ``ready`` is the readiness probe
    (default: Redis and PostgreSQL of the settings, when there is a ``REDIS_URL``).

    Returns:
      The HTTP server (call ``shutdown()`` to stop it), or ``None`` when the port is 0 (off).
    """
    from prometheus_client import REGISTRY, CollectorRegistry

    if settings is None:
        from runtime.settings import get_settings

        settings = get_settings()
    port = settings.metrics_port if port is None else port
    if not port:
        return None
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    _metrics()  # every metric is listed from the first scrape, even at zero
    if ready is None and getattr(settings, "redis_url", ""):
        ready = readiness_probe(settings)
    server, _ = _serve(registry, settings.metrics_host, port, ready)
    logger.info("serving /metrics on %s:%d", settings.metrics_host, port)
    return server
