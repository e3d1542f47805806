"""The scheduler: the Redis leader lock, the cron table from the settings, what a job fire enqueues."""
from __future__ import annotations

import threading
from datetime import datetime, timezone

import dramatiq
import pytest
import redis
from dramatiq.brokers.stub import StubBroker

from runtime.local_servers import wait_until
from runtime.settings import Settings
from workers import scheduler as jobs

UTC = timezone.utc


def _settings(**overrides) -> Settings:
    return Settings(_env_file=None, **overrides)


def _lock(redis_url, ttl_s=1.0, owner="a"):
    return jobs.LeaderLock(redis.Redis.from_url(redis_url), "test:scheduler:leader", ttl_s, owner=owner)


def test_two_contenders_exactly_one_leader(redis_url):
    first, second = _lock(redis_url, owner="a"), _lock(redis_url, owner="b")
    results = []
    barrier = threading.Barrier(2)

    def contend(lock):
        barrier.wait()
        results.append(lock.acquire())

    threads = [threading.Thread(target=contend, args=(lock,)) for lock in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, True]
    leader, other = (first, second) if first.holder() == first.token else (second, first)
    assert leader.renew() and not other.renew()  # only the holder can extend
    assert not other.release() and leader.holder() == leader.token  # nor delete it
    assert leader.release() and other.acquire()


def test_standby_takes_over_when_the_leader_stops_renewing(redis_url):
    ttl_s = 1.0
    events = []
    leaders = {
        name: jobs.Leadership(_lock(redis_url, ttl_s, owner=name), renew_every_s=0.1,
                              on_elected=lambda name=name: events.append(("elected", name)),
                              on_deposed=lambda name=name: events.append(("deposed", name)))
        for name in ("a", "b")
    }
    threads = {}
    try:
        threads["a"] = threading.Thread(target=leaders["a"].run, daemon=True)
        threads["a"].start()
        wait_until(lambda: leaders["a"].is_leader, 2, what="a to lead")
        threads["b"] = threading.Thread(target=leaders["b"].run, daemon=True)
        threads["b"].start()
        # b contends through several renewals of a (well past one expiry) and never wins.
        wait_until(lambda: leaders["a"].lock.client.pttl(leaders["a"].lock.key) > 0, 1)
        renewed_until = []
        wait_until(lambda: renewed_until.append(leaders["a"].lock.client.pttl(leaders["a"].lock.key)) or
                   len(renewed_until) > 30, 5, what="a few renewals")
        assert not leaders["b"].is_leader and min(renewed_until) > 0

        leaders["a"].stop_renewing()  # a hangs: to the others it is dead
        stopped_at = datetime.now(UTC)
        wait_until(lambda: leaders["b"].is_leader, ttl_s + 1.0, what="b to take over")
        assert (datetime.now(UTC) - stopped_at).total_seconds() < ttl_s + 1.0
        # a stepped down on its own before its lock could expire: never two leaders at once.
        assert events.index(("deposed", "a")) < events.index(("elected", "b"))
        assert leaders["b"].lock.holder() == leaders["b"].lock.token
    finally:
        for leadership in leaders.values():
            leadership.stop()
        for thread in threads.values():
            thread.join(5)
    assert leaders["b"].lock.holder() is None  # a clean stop releases the lock


def test_cron_table_builds_the_jobs_with_their_next_run_times():
    settings = _settings()
    sent = []
    scheduler = jobs.build_scheduler(settings, lambda *message: sent.append(message))
    scheduler.start(paused=True)  # the job defaults apply once started; paused: nothing fires
    try:
        built = {job.id: job for job in scheduler.get_jobs()}
    finally:
        scheduler.shutdown(wait=False)
    assert set(built) == {job.name for job in jobs.JOBS}
    for job in built.values():
        assert job.max_instances == 1 and job.coalesce is True
    assert built["stock_sync"].next_run_time.hour % 6 == 0
    assert (built["stock_sync"].next_run_time.minute, built["stock_sync"].next_run_time.second) == (0, 0)
    assert sent == []

    now = datetime(2026, 3, 10, 1, 30, tzinfo=UTC)
    times = jobs.next_fire_times(settings, now, count=4)
    hours = lambda name: [(moment.day, moment.hour, moment.minute) for moment in times[name]]  # noqa: E731
    assert hours("stock_sync") == [(10, 6, 0), (10, 12, 0), (10, 18, 0), (11, 0, 0)]
    assert hours("reconciliation") == [(10, 2, 0), (11, 2, 0), (12, 2, 0), (13, 2, 0)]
    assert [(m.hour, m.minute) for m in times["stock_alerts"]] == [(2, 15), (3, 15), (4, 15), (5, 15)]
    assert [m.hour for m in times["ingram_sync"]] == [6, 12, 18, 0]
    gaps = {(b - a).total_seconds() for a, b in zip(times["order_polling"], times["order_polling"][1:])}
    assert gaps == {120.0}

    # the trigger APScheduler runs is the same one
    fire = built["stock_sync"].trigger.get_next_fire_time(None, now)
    assert fire == datetime(2026, 3, 10, 6, 0, tzinfo=UTC)


def test_the_stock_sync_crontab_is_read_under_its_names_of_before_accounts(monkeypatch):
    assert _settings().scheduler_stock_sync_cron == "0 */6 * * *"
    monkeypatch.setenv("SCHEDULER_ALL_STORES_SYNC_CRON", "0 */4 * * *")
    assert _settings().scheduler_stock_sync_cron == "0 */4 * * *"
    monkeypatch.setenv("SCHEDULER_BACKMARKET_STOCK_SYNC_CRON", "0 */3 * * *")
    assert _settings().scheduler_stock_sync_cron == "0 */3 * * *"
    monkeypatch.setenv("SCHEDULER_STOCK_SYNC_CRON", "")  # the new name wins, even to turn the job off
    assert "stock_sync" not in {job.id for job in jobs.build_scheduler(_settings(), lambda *m: None).get_jobs()}
    # `stocksync scheduler --once backmarket_stock_sync` (and the console's "run now") still work.
    assert jobs.JOBS_BY_NAME["backmarket_stock_sync"] is jobs.JOBS_BY_NAME["all_stores_sync"] \
        is jobs.JOBS_BY_NAME["stock_sync"]


def test_an_empty_crontab_turns_its_job_off():
    scheduler = jobs.build_scheduler(_settings(scheduler_stock_alerts_cron=""), lambda *message: None)
    assert "stock_alerts" not in {job.id for job in scheduler.get_jobs()}


@pytest.mark.parametrize("value", ["0 */6 * *", "61 * * * *", "every six hours"])
def test_a_bad_crontab_names_its_setting(value):
    with pytest.raises(jobs.SchedulerConfigError, match="SCHEDULER_INGRAM_SYNC_CRON") as raised:
        jobs.build_scheduler(_settings(scheduler_ingram_sync_cron=value), lambda *message: None)
    assert repr(value) in str(raised.value)


def test_the_cli_reports_a_bad_crontab_in_one_line(monkeypatch):
    from click.testing import CliRunner

    from runtime import settings as settings_module
    from workers.cli import main

    monkeypatch.setenv("SCHEDULER_RECONCILIATION_CRON", "0 25 * * *")
    settings_module.get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["scheduler", "--list"])
    finally:
        settings_module.get_settings.cache_clear()
    assert result.exit_code == 1
    assert "SCHEDULER_RECONCILIATION_CRON='0 25 * * *'" in result.output
    assert "Traceback" not in result.output


def test_a_fire_enqueues_the_message_by_actor_name_and_skips_unknown_actors(caplog):
    broker = StubBroker()

    @dramatiq.actor(broker=broker, queue_name="stock-sync", actor_name="each_account")
    def each_account(actor_name, capability, args=None, kwargs=None, auto_sync_only=False):
        pass

    send = jobs.broker_sender(broker)
    message = jobs.fire(jobs.JOBS_BY_NAME["stock_sync"], send)
    assert message is not None
    queued = broker.queues["stock-sync"]
    assert queued.qsize() == 1
    assert (message.actor_name, message.args, message.kwargs) == \
        ("each_account", ("start_stock_sync", "paging", [False, "scheduled"], {}, True), {})

    with caplog.at_level("WARNING", logger="workers.scheduler"):
        assert jobs.fire(jobs.JOBS_BY_NAME["stock_alerts"], send) is None
        assert jobs.fire(jobs.JOBS_BY_NAME["stock_alerts"], send) is None
    warnings = [record for record in caplog.records if "check_stock_alerts" in record.getMessage()]
    assert len(warnings) == 1  # once, not at every fire


def test_a_failing_send_does_not_raise_into_the_scheduler(caplog):
    def send(actor_name, args, kwargs):
        raise redis.exceptions.ConnectionError("down")

    with caplog.at_level("ERROR", logger="workers.scheduler"):
        assert jobs.fire(jobs.JOBS_BY_NAME["order_polling"], send) is None
    assert "could not enqueue each_account" in caplog.text


def test_a_scheduled_job_fires_through_apscheduler():
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.triggers.date import DateTrigger

    fired = threading.Event()
    sent = []

    def send(actor_name, args, kwargs):
        sent.append((actor_name, args, kwargs))
        fired.set()
        return object()

    scheduler = jobs.build_scheduler(_settings(), send, scheduler_cls=BackgroundScheduler)
    scheduler.start()
    try:
        scheduler.reschedule_job("order_polling", trigger=DateTrigger(datetime.now(UTC)))
        wait_until(fired.is_set, 5, what="the job to fire")
    finally:
        scheduler.shutdown(wait=False)
    assert sent == [("each_account", ("poll_orders", "poll_orders", [], {}, False), {})]


def test_every_job_the_fleet_defines_accepts_the_scheduled_arguments():
    import inspect

    from actors.accounts import check_fan_out
    from workers import fleet

    def fits(actor_name, args, kwargs):
        inspect.signature(fleet.broker.get_actor(actor_name).fn).bind(*args, **kwargs)  # TypeError if not

    for job in jobs.JOBS:
        if job.actor not in fleet.broker.actors:
            continue  # not defined yet: skipped at run time
        fits(job.actor, job.args, job.kwargs)
        if job.actor == "each_account":  # and the actor it runs for each account takes the code first
            actor_name, capability, args, kwargs, _ = job.args
            check_fan_out(actor_name, capability, args, kwargs)
            fits(actor_name, ("an-account", *args), kwargs)
    per_account = {job.args[0]: job.args[1] for job in jobs.JOBS if job.actor == "each_account"}
    assert per_account == {"start_stock_sync": "paging", "reconcile_stock": "paging", "poll_orders": "poll_orders",
                           "sweep_stock": ["push", "read_one"], "resume_stalled_syncs": "paging"}


def test_run_leads_then_releases_the_lock_on_stop(redis_url):
    settings = _settings(redis_url=redis_url, metrics_port=0, scheduler_lock_ttl_s=2.0, scheduler_lock_renew_s=0.1)
    client = redis.Redis.from_url(redis_url)
    stop = threading.Event()
    thread = threading.Thread(target=jobs.run, args=(settings, stop), daemon=True)
    thread.start()
    try:
        wait_until(lambda: client.get(jobs.lock_key(settings)) is not None, 5, what="the scheduler to lead")
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert client.get(jobs.lock_key(settings)) is None


def test_run_refuses_a_renewal_slower_than_half_the_expiry(redis_url):
    settings = _settings(redis_url=redis_url, metrics_port=0, scheduler_lock_ttl_s=2.0, scheduler_lock_renew_s=1.5)
    with pytest.raises(jobs.SchedulerConfigError, match="SCHEDULER_LOCK_RENEW_S"):
        jobs.run(settings)
