"""``stocksync scheduler``: the periodic jobs of the fleet (APScheduler 3, cron triggers).

The scheduler does no work itself: each job only *enqueues* a dramatiq message, by actor name, at
the times its crontab setting says (``SCHEDULER_*_CRON`` in :mod:`runtime.settings`).  The actors
do the work under their own locks (a running sync, an order walk), so a message sent twice is
refused there.

Only one scheduler acts at a time, across hosts: the one holding a Redis leader lock
(:class:`LeaderLock`, redis-py's ``Lock``: ``SET NX PX``, renewed only by its holder).  Any other scheduler
waits; when the leader dies its lock expires and a waiting one takes over within
``SCHEDULER_LOCK_TTL_S``.  A leader that cannot renew in time stops its jobs before the lock can
pass to another.  Within one scheduler no job overlaps itself (``max_instances=1``) and missed
fires are collapsed into one (``coalesce``).
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from runtime.locks import LeaderLock  # noqa: F401  (re-exported: the scheduler's lock)
from runtime.settings import Settings

logger = logging.getLogger(__name__)

#: ``send(actor_name, args, kwargs)``: enqueue one message; returns the message, or None if skipped.
Send = Callable[[str, tuple, dict], Any]


@dataclass(frozen=True)
class Job:
    """One periodic job: its crontab setting and the message it enqueues."""

    name: str
    setting: str
    actor: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def each_account(actor: str, capability: str | tuple[str, ...], *args: Any, auto_sync_only: bool = False,
                 **kwargs: Any) -> tuple:
    """The arguments of an ``each_account`` message: ``actor(code, *args, **kwargs)`` for every ready account."""
    capability = list(capability) if isinstance(capability, tuple) else capability
    return (actor, capability, list(args), kwargs, auto_sync_only)


#: The job -> actor table.  A per-account job sends ``each_account``, which runs its actor for every
#: enabled account whose platform can (``core.platforms``) and whose credential the worker has.
#: Actors that no pipeline defines yet are skipped (with one warning) until they exist.
JOBS: tuple[Job, ...] = (
    Job("stock_sync", "scheduler_stock_sync_cron", "each_account",
        each_account("start_stock_sync", "paging", False, "scheduled", auto_sync_only=True)),
    Job("ingram_sync", "scheduler_ingram_sync_cron", "start_supplier_sync", (False, "scheduled")),
    Job("stock_alerts", "scheduler_stock_alerts_cron", "check_stock_alerts"),
    Job("reconciliation", "scheduler_reconciliation_cron", "each_account",
        each_account("reconcile_stock", "paging", trigger="scheduled")),
    Job("order_polling", "scheduler_order_polling_cron", "each_account", each_account("poll_orders", "poll_orders")),
    Job("stock_sweep", "scheduler_stock_sweep_cron", "each_account",
        each_account("sweep_stock", ("push", "read_one"))),
    Job("stock_sync_resume", "scheduler_stock_sync_resume_cron", "each_account",
        each_account("resume_stalled_syncs", "paging")),
    Job("listing_reads_prune", "scheduler_listing_reads_prune_cron", "prune_listing_reads"),
)

#: Jobs by name; the names of before accounts (one job per marketplace) name the job that replaced them.
JOBS_BY_NAME = {job.name: job for job in JOBS}
JOBS_BY_NAME.update(backmarket_stock_sync=JOBS_BY_NAME["stock_sync"], all_stores_sync=JOBS_BY_NAME["stock_sync"])


class SchedulerConfigError(ValueError):
    """A scheduler setting is wrong (a crontab string that does not parse, a bad time zone)."""


# -- the leader lock (runtime.locks.LeaderLock) ------------------------------------------------------


class Leadership:
    """The renewal loop: wait for the lock, hold it while renewing, step down when it is lost.

    :meth:`run` blocks until :meth:`stop`; ``on_elected`` / ``on_deposed`` are called in its thread
    when this process becomes / stops being the leader.  A renewal that fails because Redis is
    unreachable keeps the leadership only until the lock could have expired (then it steps down,
    since another process may take over from then on).
    """

    def __init__(self, lock: LeaderLock, renew_every_s: float, on_elected: Callable[[], None] = lambda: None,
                 on_deposed: Callable[[], None] = lambda: None) -> None:
        self.lock = lock
        self.renew_every_s = renew_every_s
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.is_leader = False
        self._stop = threading.Event()
        self._release_on_stop = True
        self._renewing = True

    def stop(self, release: bool = True) -> None:
        """End :meth:`run`; with ``release``, give the lock up so a standby takes over at once."""
        self._release_on_stop = release
        self._stop.set()

    def stop_renewing(self) -> None:
        """Stop talking to Redis but keep running (tests: a leader that hangs, dead to the others)."""
        self._renewing = False

    def run(self) -> None:
        """Contend for the lock, then renew it, until :meth:`stop`."""
        last_renewed = 0.0
        ttl_s = self.lock.ttl_ms / 1000
        try:
            while not self._stop.is_set():
                try:
                    if not self._renewing:
                        pass  # hung, as far as Redis can tell
                    elif not self.is_leader:
                        if self.lock.acquire():
                            last_renewed = time.monotonic()
                            self._elected()
                    elif self._renewing:
                        if self.lock.renew():
                            last_renewed = time.monotonic()
                        else:
                            logger.warning("scheduler leader lock %s was lost: stepping down", self.lock.key)
                            self._deposed()
                except Exception as error:  # Redis unreachable: keep going, but not past the expiry
                    logger.warning("scheduler leader lock %s: %s", self.lock.key, error)
                if self.is_leader and time.monotonic() - last_renewed >= ttl_s * 0.9:
                    logger.warning("scheduler leader lock %s not renewed in time: stepping down", self.lock.key)
                    self._deposed()
                self._stop.wait(self.renew_every_s)
        finally:
            if self.is_leader:
                self._deposed()
                if self._release_on_stop:
                    try:
                        self.lock.release()
                    except Exception as error:
                        logger.warning("could not release scheduler leader lock %s: %s", self.lock.key, error)

    def _elected(self) -> None:
        self.is_leader = True
        logger.info("scheduler %s is the leader (lock %s)", self.lock.owner, self.lock.key)
        self.on_elected()

    def _deposed(self) -> None:
        self.is_leader = False
        self.on_deposed()


# -- the jobs ---------------------------------------------------------------------------------------


def job_trigger(settings: Settings, job: Job):
    """The job's :class:`CronTrigger` from its setting; None if the setting is empty (job off).

    Raises:
      SchedulerConfigError: The crontab string or the time zone does not parse (names the setting).
    """
    from apscheduler.triggers.cron import CronTrigger

    crontab = str(getattr(settings, job.setting)).strip()
    if not crontab:
        return None
    try:
        return CronTrigger.from_crontab(crontab, timezone=settings.scheduler_timezone)
    except Exception as error:
        raise SchedulerConfigError(f"{job.setting.upper()}={crontab!r} is not a valid crontab string "
                                   f"(minute hour day month day-of-week) in time zone "
                                   f"{settings.scheduler_timezone!r}: {error}") from None


def fire(job: Job, send: Send):
    """Enqueue ``job``'s message through ``send``; never raises (a failure is logged)."""
    try:
        message = send(job.actor, job.args, dict(job.kwargs))
    except Exception:
        logger.exception("scheduled job %s could not enqueue %s", job.name, job.actor)
        return None
    if message is not None:
        logger.info("scheduled job %s enqueued %s (message %s)", job.name, job.actor,
                    getattr(message, "message_id", "?"))
    return message


def build_scheduler(settings: Settings, send: Send, scheduler_cls=None):
    """An APScheduler (not started) with one cron job per non-empty ``SCHEDULER_*_CRON`` setting.

    Each job calls :func:`fire`; no job overlaps itself (``max_instances=1``) and fires missed
    while the process was busy are collapsed into one (``coalesce``).

    Raises:
      SchedulerConfigError: A crontab setting does not parse.
    """
    if scheduler_cls is None:
        from apscheduler.schedulers.background import BackgroundScheduler as scheduler_cls

    triggers = [(job, job_trigger(settings, job)) for job in JOBS]  # every setting checked first
    scheduler = scheduler_cls(timezone=settings.scheduler_timezone,
                              job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 300})
    for job, trigger in triggers:
        if trigger is None:
            logger.info("scheduled job %s is off (%s is empty)", job.name, job.setting.upper())
            continue
        scheduler.add_job(fire, trigger, args=(job, send), id=job.name, name=job.name, replace_existing=True)
    return scheduler


def broker_sender(broker) -> Send:
    """A :data:`Send` that enqueues on ``broker`` by actor name; unknown actors: one warning, then skipped."""
    import dramatiq.errors

    warned: set[str] = set()

    def send(actor_name: str, args: tuple, kwargs: dict):
        try:
            actor = broker.get_actor(actor_name)
        except dramatiq.errors.ActorNotFound:
            if actor_name not in warned:
                warned.add(actor_name)
                logger.warning("actor %s is not defined in this fleet: its scheduled job is skipped", actor_name)
            return None
        return actor.send(*args, **kwargs)

    return send


def next_fire_times(settings: Settings, now: datetime, count: int = 1) -> dict[str, list[datetime]]:
    """The next ``count`` fire times of every enabled job after ``now`` (for ``--list`` and tests)."""
    times: dict[str, list[datetime]] = {}
    for job in JOBS:
        trigger = job_trigger(settings, job)
        if trigger is None:
            continue
        found, previous, moment = [], None, now
        for _ in range(count):
            moment = trigger.get_next_fire_time(previous, moment)
            if moment is None:
                break
            found.append(moment)
            previous, moment = moment, moment + timedelta(seconds=1)
        times[job.name] = found
    return times


# -- the process ------------------------------------------------------------------------------------


def lock_key(settings: Settings) -> str:
    """The Redis key of the scheduler leader lock."""
    return f"{settings.redis_namespace}:scheduler:leader"


def run(settings: Settings, stop: threading.Event | None = None) -> None:
    """The ``stocksync scheduler`` process: serve /metrics, contend for leadership, run the jobs while leader.

    Returns when ``stop`` is set, or on SIGTERM / SIGINT (when run in the main thread); a leader
    stops its jobs and releases the lock so a standby takes over at once.
    """
    import redis

    from runtime import metrics

    if not settings.redis_url:
        raise SchedulerConfigError("the scheduler needs REDIS_URL: its leader lock and the broker live in Redis")
    if settings.scheduler_lock_renew_s * 2 > settings.scheduler_lock_ttl_s:
        raise SchedulerConfigError(f"SCHEDULER_LOCK_RENEW_S={settings.scheduler_lock_renew_s} must be at most half "
                                   f"of SCHEDULER_LOCK_TTL_S={settings.scheduler_lock_ttl_s}")
    for job in JOBS:
        job_trigger(settings, job)  # a bad crontab fails now, not when elected
    metrics.start_exposition_server(settings)

    from workers import fleet  # the broker and every actor

    lock = LeaderLock(redis.Redis.from_url(settings.redis_url), lock_key(settings), settings.scheduler_lock_ttl_s)
    to_broker = broker_sender(fleet.broker)
    current: dict[str, Any] = {}
    leadership: Leadership

    def send(actor_name: str, args: tuple, kwargs: dict):
        # A deposed leader's jobs are shut down, but one may be firing right then: check first.
        # (The renewal loop steps down before the lock can expire, so this flag is never stale.)
        if not leadership.is_leader:
            logger.warning("not the leader any more: %s not enqueued", actor_name)
            return None
        return to_broker(actor_name, args, kwargs)

    def elected() -> None:
        scheduler = build_scheduler(settings, send)
        scheduler.start()
        current["scheduler"] = scheduler
        for job in scheduler.get_jobs():
            logger.info("job %s -> next run %s", job.id, job.next_run_time)

    def deposed() -> None:
        scheduler = current.pop("scheduler", None)
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        logger.info("scheduler %s is on standby", lock.owner)

    leadership = Leadership(lock, settings.scheduler_lock_renew_s, elected, deposed)
    if stop is not None:
        threading.Thread(target=lambda: (stop.wait(), leadership.stop()), daemon=True).start()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: leadership.stop())
    logger.info("scheduler %s waiting for the leader lock %s", lock.owner, lock.key)
    leadership.run()
    logger.info("scheduler %s stopped", lock.owner)


def send_now(settings: Settings, name: str):
    """Enqueue job ``name``'s message once, now (``stocksync scheduler --once``); the message or None."""
    from workers import fleet

    job = JOBS_BY_NAME[name]
    return fire(job, broker_sender(fleet.broker))
