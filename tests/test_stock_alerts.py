"""Stock alerts on real PostgreSQL, with a real aiohttp webhook receiver on loopback.

Most tests run the actors in this process (a dramatiq worker on the fleet's broker, in-process
mode); ``test_on_real_workers_...`` runs ``dramatiq workers.fleet`` on a real Redis to see a failing
webhook retried, then dead-lettered with the failure on the alert.
"""
from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import dramatiq
import pytest
import redis as redis_lib
from aiohttp import web
from click.testing import CliRunner
from sqlalchemy import text

from db import alerts as alerts_db
from db.engine import session_factory
from runtime import resources
from runtime.local_servers import wait_until
from runtime.settings import get_settings
from sandbox.server import serve_in_thread

#: A Slack-like URL: the path is the secret, and must never show in an error or a log line.
SECRET_PATH = "/hooks/T0001/B0002/s3cr3t-t0k3n-xyz"


class Receiver:
    """A webhook receiver: records every POST and answers from a plan of statuses (then ``default``)."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.plan: list[int] = []
        self.default = 200
        self.delay_s = 0.0
        self._lock = threading.Lock()

    def build_app(self) -> web.Application:
        """The aiohttp application: POST /hooks/... only."""
        app = web.Application()
        app.router.add_post("/hooks/{rest:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        """Record the POST and answer the next planned status."""
        body = await request.json()
        with self._lock:
            self.posts.append({"path": request.path, "content_type": request.content_type, "json": body})
            status = self.plan.pop(0) if self.plan else self.default
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slow receiver, so that two deliveries overlap
        # An error answer that echoes the URL's path, as some receivers do.
        return web.Response(status=status, text="ok" if status < 300 else f"invalid_token for {request.path}")

    def count(self) -> int:
        """How many POSTs arrived."""
        with self._lock:
            return len(self.posts)

    def texts(self) -> list[str]:
        """The ``text`` of every POST, in order."""
        with self._lock:
            return [post["json"]["text"] for post in self.posts]


def _env(monkeypatch, values: dict) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))
    get_settings.cache_clear()
    resources.database_url.cache_clear()


@pytest.fixture
def world(monkeypatch, database_url):
    """In-process mode on a fresh database, a webhook receiver, and a dramatiq worker for the alerts queue."""
    receiver = Receiver()
    server = serve_in_thread(receiver.build_app())
    url = server.url + SECRET_PATH
    _env(monkeypatch, {"DATABASE_URL": database_url, "REDIS_URL": "", "STOCK_ALERT_WEBHOOK_URL": url,
                       "STOCK_ALERT_WEBHOOK_BACKOFF_S": "0.01", "STOCK_ALERT_WEBHOOK_ATTEMPTS": "3",
                       "STOCK_ALERT_WEBHOOK_TIMEOUT_S": "5", "STOCK_ALERT_DEFAULT_THRESHOLD": "0",
                       "STOCK_ALERT_HYSTERESIS": "0"})
    from actors import alerts as actors
    from pipelines import alerts as pipeline

    broker = actors.notify_stock_alert.broker
    broker.flush_all()
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    sessions = session_factory(database_url)
    state = SimpleNamespace(receiver=receiver, url=url, sessions=sessions, actors=actors, pipeline=pipeline,
                            broker=broker)
    yield state
    worker.stop()
    broker.flush_all()
    server.stop()
    get_settings.cache_clear()
    resources.database_url.cache_clear()


def setting(monkeypatch, **values) -> None:
    """Change settings mid-test (the actors read them on every call)."""
    _env(monkeypatch, {name.upper(): value for name, value in values.items()})


def stock(world, sku: str, quantities: dict[str, int | tuple[int, int]]) -> None:
    """Set ``sku``'s listed (and locked) stock per marketplace code; the total follows, as the ledger keeps it."""
    with world.sessions() as session:
        session.execute(text("INSERT INTO variations (sku, title) VALUES (:sku, :title) ON CONFLICT (sku) DO NOTHING"),
                        {"sku": sku, "title": f"Refurbished {sku}"})
        for code, value in quantities.items():
            listed, locked = value if isinstance(value, tuple) else (value, 0)
            session.execute(text("INSERT INTO marketplaces (code, name) VALUES (:c, :n) ON CONFLICT (code) DO NOTHING"),
                            {"c": code, "n": code.title()})
            session.execute(text(
                "INSERT INTO marketplace_stock (variation_id, marketplace_id, listed, locked) "
                "SELECT v.id, m.id, :listed, :locked FROM variations v, marketplaces m "
                "WHERE v.sku = :sku AND m.code = :c "
                "ON CONFLICT (variation_id, marketplace_id) DO UPDATE SET listed = EXCLUDED.listed, "
                "locked = EXCLUDED.locked"), {"sku": sku, "c": code, "listed": listed, "locked": locked})
        session.execute(text("UPDATE variations v SET total_stock = (SELECT COALESCE(sum(listed), 0) FROM "
                             "marketplace_stock s WHERE s.variation_id = v.id) WHERE v.sku = :sku"), {"sku": sku})
        session.commit()


def rule(world, threshold: int, sku: str | None = None, marketplace: str | None = None) -> int:
    """Add (or change) a rule; return its id."""
    with world.sessions() as session:
        rule_id, _ = alerts_db.set_rule(session, sku=sku, marketplace=marketplace, threshold=threshold)
        session.commit()
    return rule_id


def alert_rows(world, state: str | None = None) -> list:
    """Every alert (or those in ``state``), oldest first."""
    with world.sessions() as session:
        return alerts_db.list_alerts(session, state=state, limit=1000)[::-1]  # oldest first


def check_via_workers(world) -> None:
    """``check_stock_alerts`` through the broker, and every notification it enqueues."""
    world.actors.check_stock_alerts.send()
    world.broker.join("alerts", fail_fast=True, timeout=30_000)


def test_crossing_below_fires_once_and_a_second_check_does_not_notify_again(world):
    stock(world, "SKU-A", {"backmarket": 10})
    rule(world, 5, sku="SKU-A")
    check_via_workers(world)
    assert alert_rows(world) == [] and world.receiver.count() == 0  # 10 is not below 5

    stock(world, "SKU-A", {"backmarket": 3})
    check_via_workers(world)
    [alert] = alert_rows(world)
    assert (alert.state, alert.quantity, alert.threshold, alert.marketplace) == ("firing", 3, 5, None)
    assert alert.notified_state == "firing" and alert.last_notified_at is not None and alert.notify_error is None
    assert world.receiver.count() == 1
    assert "SKU-A" in world.receiver.texts()[0] and "is 3, below its threshold of 5" in world.receiver.texts()[0]

    check_via_workers(world)  # the same stock: nothing new
    stock(world, "SKU-A", {"backmarket": 1})  # lower still, but already firing
    check_via_workers(world)
    assert [a.id for a in alert_rows(world)] == [alert.id] and world.receiver.count() == 1


def test_recovery_resolves_and_notifies_and_a_new_crossing_fires_again(world, monkeypatch):
    setting(monkeypatch, stock_alert_hysteresis=2)
    stock(world, "SKU-B", {"backmarket": 3})
    rule(world, 5, sku="SKU-B")
    check_via_workers(world)
    [first] = alert_rows(world, "firing")

    stock(world, "SKU-B", {"backmarket": 6})  # at the threshold, inside the hysteresis: still firing
    check_via_workers(world)
    assert alert_rows(world, "firing")[0].id == first.id and world.receiver.count() == 1

    stock(world, "SKU-B", {"backmarket": 7})  # threshold + hysteresis: resolved
    check_via_workers(world)
    [resolved] = alert_rows(world)
    assert (resolved.id, resolved.state, resolved.resolved_quantity) == (first.id, "resolved", 7)
    assert resolved.notified_state == "resolved" and resolved.resolved_at is not None
    assert world.receiver.count() == 2 and "Stock recovered: SKU-B (total stock) is back at 7" in \
        world.receiver.texts()[1]
    check_via_workers(world)
    assert world.receiver.count() == 2

    stock(world, "SKU-B", {"backmarket": 4})  # crosses below again: a new alert, notified again
    check_via_workers(world)
    rows = alert_rows(world)
    assert [(a.id == first.id, a.state) for a in rows] == [(True, "resolved"), (False, "firing")]
    assert world.receiver.count() == 3 and "is 4, below its threshold of 5" in world.receiver.texts()[2]


def test_the_most_specific_rule_wins(world, monkeypatch):
    for sku in ("V1", "V2", "V3", "V4"):
        stock(world, sku, {"backmarket": 0, "refurbed": 0})
    rule(world, 10, sku="V1")               # variation: V1's total and V1 wherever a marketplace rule applies
    rule(world, 4, marketplace="backmarket")  # every variation on backmarket
    rule(world, 1, sku="V2", marketplace="backmarket")
    rule(world, 0, sku="V4")                 # off for V4's total (and V4 on backmarket)

    def thresholds(default: int) -> dict[str, int]:
        with world.sessions() as session:
            result = alerts_db.check(session, default_threshold=default)
            session.rollback()
        assert result.resolved == []
        return {alert.scope: alert.threshold for alert in result.fired}

    # No catch-all rule: totals use the setting; refurbed has no rule, so it is not checked.
    assert thresholds(default=2) == {"V1": 10, "V2": 2, "V3": 2,
                                     "V1 on backmarket": 10, "V2 on backmarket": 1, "V3 on backmarket": 4}
    assert thresholds(default=0) == {"V1": 10, "V1 on backmarket": 10, "V2 on backmarket": 1, "V3 on backmarket": 4}
    rule(world, 3)  # catch-all: replaces the setting
    assert thresholds(default=2) == {"V1": 10, "V2": 3, "V3": 3,
                                     "V1 on backmarket": 10, "V2 on backmarket": 1, "V3 on backmarket": 4}


def test_marketplace_checks_read_available_stock_and_a_removed_rule_resolves(world):
    stock(world, "SKU-M", {"backmarket": (6, 3), "refurbed": 20})  # total 26, available on backmarket 3
    rule_id = rule(world, 5, marketplace="backmarket")
    check_via_workers(world)
    [alert] = alert_rows(world)
    assert (alert.scope, alert.quantity, alert.threshold) == ("SKU-M on backmarket", 3, 5)
    assert "SKU-M (available on Back Market) is 3" in world.receiver.texts()[0]
    with world.sessions() as session:
        assert alerts_db.remove_rule(session, rule_id)
        session.commit()
    check_via_workers(world)
    [alert] = alert_rows(world)
    assert alert.state == "resolved" and alert.resolved_quantity == 3 and alert.rule_id is None
    assert "is 3, no longer checked against this threshold" in world.receiver.texts()[1]


def test_the_body_is_slack_compatible(world):
    sku = "IPH<13>&PRO"
    stock(world, sku, {"backmarket": 1})
    rule(world, 2, sku=sku)
    check_via_workers(world)
    [post] = world.receiver.posts
    assert post["path"] == SECRET_PATH and post["content_type"] == "application/json"
    body = post["json"]
    assert set(body) == {"text", "blocks"}
    assert "IPH&lt;13&gt;&amp;PRO (total stock) is 1, below its threshold of 2" in body["text"]  # mrkdwn: escaped
    header, section, context = body["blocks"]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert len(header["text"]["text"]) <= 150 and sku in header["text"]["text"]  # plain text: no escaping
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    assert "IPH&lt;13&gt;&amp;PRO" in section["text"]["text"] and "<13>" not in section["text"]["text"]
    assert 1 <= len(section["fields"]) <= 10
    assert all(field["type"] == "mrkdwn" and len(field["text"]) <= 2000 for field in section["fields"])
    fields = {field["text"].split("\n")[0]: field["text"].split("\n")[1] for field in section["fields"]}
    assert fields["*Stock*"] == "1" and fields["*Threshold*"] == "2"
    assert context["type"] == "context" and context["elements"][0]["type"] == "mrkdwn"


def test_a_failed_delivery_is_recorded_then_retried_and_never_shows_the_url(world, caplog):
    from clients.errors import ServerError

    stock(world, "SKU-F", {"backmarket": 0})
    rule(world, 1, sku="SKU-F")
    due: list[int] = []
    world.pipeline.run_check(notify=due.append)
    [alert_id] = due
    world.receiver.plan = [500, 502, 503]  # every attempt of the first delivery (3 attempts inside it)
    with pytest.raises(ServerError) as failed:
        world.pipeline.deliver(alert_id)
    assert world.receiver.count() == 3
    [alert] = alert_rows(world)
    assert alert.notified_state is None and alert.notify_attempts == 1 and "HTTP 503" in alert.notify_error
    assert not failed.value.permanent  # the message is retried (transient_only)
    assert world.actors.notify_stock_alert.options["retry_when"](0, failed.value)
    for shown in (str(failed.value), alert.notify_error, caplog.text):
        assert "s3cr3t" not in shown and SECRET_PATH not in shown and world.url not in shown

    assert world.pipeline.deliver(alert_id) == "sent"  # the retry: the receiver is back
    [alert] = alert_rows(world)
    assert alert.notified_state == "firing" and alert.notify_error is None and world.receiver.count() == 4
    assert world.pipeline.deliver(alert_id) == "skipped"  # a redelivered message sends nothing
    assert world.receiver.count() == 4


def test_a_refused_webhook_is_not_retried(world):
    stock(world, "SKU-R", {"backmarket": 0})
    rule(world, 1, sku="SKU-R")
    due: list[int] = []
    world.pipeline.run_check(notify=due.append)
    world.receiver.default = 404
    with pytest.raises(Exception) as refused:
        world.pipeline.deliver(due[0])
    assert refused.value.permanent and world.receiver.count() == 1  # no attempt after a 404
    assert world.actors.notify_stock_alert.options["retry_when"](0, refused.value) is False
    assert "HTTP 404" in alert_rows(world)[0].notify_error and "s3cr3t" not in alert_rows(world)[0].notify_error


def test_an_unreachable_webhook_is_transient_and_its_url_is_not_shown(world, monkeypatch):
    from runtime.local_servers import free_port

    stock(world, "SKU-U", {"backmarket": 0})
    rule(world, 1, sku="SKU-U")
    due: list[int] = []
    world.pipeline.run_check(notify=due.append)
    setting(monkeypatch, stock_alert_webhook_url=f"http://127.0.0.1:{free_port()}{SECRET_PATH}",
            stock_alert_webhook_attempts=2)
    with pytest.raises(Exception) as failed:
        world.pipeline.deliver(due[0])
    assert not failed.value.permanent and "no answer" in str(failed.value)
    assert "s3cr3t" not in str(failed.value) and "s3cr3t" not in alert_rows(world)[0].notify_error


def test_without_a_webhook_url_the_alert_says_so(world, monkeypatch):
    setting(monkeypatch, stock_alert_webhook_url="")
    stock(world, "SKU-N", {"backmarket": 0})
    rule(world, 1, sku="SKU-N")
    check_via_workers(world)
    [alert] = alert_rows(world)
    assert alert.state == "firing" and alert.notified_state is None and "not set" in alert.notify_error


def test_two_checks_at_once_open_each_alert_once(world):
    for i in range(30):
        stock(world, f"C-{i:02d}", {"backmarket": i % 3})
    rule(world, 5, marketplace="backmarket")
    rule(world, 5)
    barrier = threading.Barrier(2)
    sent: list[int] = []
    errors: list[BaseException] = []

    def one_check() -> None:
        try:
            barrier.wait(10)
            world.pipeline.run_check(notify=sent.append)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=one_check) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    rows = alert_rows(world)
    assert len(rows) == 60 and all(a.state == "firing" for a in rows)  # 30 totals + 30 on backmarket
    assert sorted(sent) == sorted(a.id for a in rows)  # each enqueued once, by one of the two checks


def test_two_deliveries_of_one_alert_at_once_post_once(world):
    stock(world, "SKU-D", {"backmarket": 0})
    rule(world, 1, sku="SKU-D")
    due: list[int] = []
    world.pipeline.run_check(notify=due.append)
    world.receiver.delay_s = 0.3
    outcomes: list[str] = []
    threads = [threading.Thread(target=lambda: outcomes.append(world.pipeline.deliver(due[0]))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["sent", "skipped"] and world.receiver.count() == 1


def test_a_lost_notification_is_sent_by_the_next_check(world):
    stock(world, "SKU-L", {"backmarket": 0})
    rule(world, 1, sku="SKU-L")
    world.pipeline.run_check(notify=lambda alert_id: None)  # the message never reached Redis
    with world.sessions() as session:  # ... and that was long enough ago
        session.execute(text("UPDATE stock_alerts SET fired_at = now() - interval '1 hour'"))
        session.commit()
    check_via_workers(world)
    [alert] = alert_rows(world)
    assert alert.notified_state == "firing" and world.receiver.count() == 1


def test_metrics_count_firing_alerts_and_notifications(world):
    from prometheus_client import REGISTRY

    def sample(name: str, **labels) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    sent_before = sample("stocksync_stock_alert_notifications_total", event="fired", outcome="sent")
    failed_before = sample("stocksync_stock_alert_notifications_total", event="fired", outcome="failed")
    for sku in ("SKU-X", "SKU-Y"):
        stock(world, sku, {"backmarket": 0})
    rule(world, 1)
    world.receiver.plan = [500]
    check_via_workers(world)
    assert sample("stocksync_stock_alerts_firing") == 2
    assert sample("stocksync_stock_alert_notifications_total", event="fired", outcome="sent") == sent_before + 2
    assert sample("stocksync_stock_alert_notifications_total", event="fired", outcome="failed") == failed_before + 1
    stock(world, "SKU-X", {"backmarket": 5})
    check_via_workers(world)
    assert sample("stocksync_stock_alerts_firing") == 1


def test_the_scheduler_job_names_the_check_actor_on_the_alerts_queue(world):
    from workers.scheduler import JOBS_BY_NAME

    actor = world.broker.get_actor(JOBS_BY_NAME["stock_alerts"].actor)
    assert actor.queue_name == "alerts" and actor.actor_name == "check_stock_alerts"


# -- the CLI ----------------------------------------------------------------------------------------------


def stocksync(*args: str):
    """Run ``stocksync alerts ARGS`` with click's runner."""
    from workers.cli import main

    return CliRunner().invoke(main, ["alerts", *args])


def test_cli_rules_add_list_remove_and_their_errors(world):
    stock(world, "SKU-C", {"backmarket": 2})
    missing = stocksync("rules", "add")
    assert missing.exit_code == 2 and "Missing option '--threshold'" in missing.output
    negative = stocksync("rules", "add", "--threshold", "-1")
    assert negative.exit_code == 2 and "--threshold" in negative.output
    unknown = stocksync("rules", "add", "--variation", "NOPE", "--threshold", "3")
    assert unknown.exit_code == 1 and "no variation has SKU 'NOPE'" in unknown.output
    bad_mp = stocksync("rules", "add", "--marketplace", "ebay", "--threshold", "3")
    assert bad_mp.exit_code == 1 and "no marketplace 'ebay' (known: backmarket, refurbed, shopify)" in bad_mp.output

    added = stocksync("rules", "add", "--variation", "SKU-C", "--marketplace", "backmarket", "--threshold", "3")
    assert added.exit_code == 0 and "added: SKU-C on backmarket: alert below 3" in added.output
    again = stocksync("rules", "add", "--variation", "SKU-C", "--marketplace", "backmarket", "--threshold", "4")
    assert again.exit_code == 0 and "updated" in again.output
    assert stocksync("rules", "add", "--threshold", "1").exit_code == 0
    listed = stocksync("rules", "list")
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert "SKU-C on backmarket" in lines[0] and "threshold     4" in lines[0]
    assert "every variation (total stock)" in lines[1] and "STOCK_ALERT_DEFAULT_THRESHOLD" in lines[2]
    rule_id = lines[0].split()[0]
    assert stocksync("rules", "remove", rule_id).exit_code == 0
    gone = stocksync("rules", "remove", rule_id)
    assert gone.exit_code == 1 and f"no rule {rule_id}" in gone.output


def test_cli_check_dry_run_stores_and_sends_nothing_then_check_and_list(world):
    stock(world, "SKU-K", {"backmarket": 2})
    assert stocksync("rules", "add", "--variation", "SKU-K", "--threshold", "5").exit_code == 0
    dry = stocksync("check", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "WOULD FIRE    SKU-K: 2 < 5" in dry.output and "1 would fire" in dry.output
    assert alert_rows(world) == [] and world.receiver.count() == 0

    done = stocksync("check")  # no REDIS_URL: the notification is sent from this process
    assert done.exit_code == 0 and "FIRED         SKU-K: 2 < 5" in done.output and "1 firing" in done.output
    assert world.receiver.count() == 1
    firing = stocksync("list", "--state", "firing")
    assert firing.exit_code == 0 and "SKU-K" in firing.output and "yes " in firing.output
    assert "no resolved alerts" in stocksync("list", "--state", "resolved").output
    bad = stocksync("list", "--state", "open")
    assert bad.exit_code == 2 and "'open' is not one of 'firing', 'resolved'" in bad.output


def test_cli_says_when_postgresql_is_unreachable(world, monkeypatch):
    from runtime.local_servers import free_port

    setting(monkeypatch, database_url=f"postgresql+psycopg://user:pa55word@127.0.0.1:{free_port()}/nope")
    result = stocksync("rules", "list")
    assert result.exit_code == 1 and "cannot reach PostgreSQL" in result.output and "pa55word" not in result.output


# -- schema ---------------------------------------------------------------------------------------------


def test_the_migration_matches_the_models_and_goes_down_and_up(pg_server):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine, inspect

    import db.alert_models  # noqa: F401
    from db.migrate import downgrade, upgrade
    from db.models import Base

    url = pg_server.create_database("alerts_migration")
    upgrade(url)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        ours = [entry for entry in diff if "alert" in repr(entry)]
        assert ours == []
        with engine.connect() as connection:
            indexes = {ix["name"] for ix in inspect(connection).get_indexes("stock_alerts")}
        assert "uq_stock_alerts_firing" in indexes
        downgrade(url, "0004")
        assert not {"alert_rules", "stock_alerts"} & set(inspect(engine).get_table_names())
        upgrade(url)
        assert {"alert_rules", "stock_alerts"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


# -- real workers on a real Redis -------------------------------------------------------------------------


@pytest.mark.e2e
def test_on_real_workers_a_failing_webhook_is_retried_then_dead_lettered(tmp_path, redis_url, database_url):
    from dramatiq import Message

    from runtime.broker import build_broker
    from runtime.settings import Settings
    from tests.fleet import WorkerFleet, fleet_env

    receiver = Receiver()
    receiver.default = 500
    server = serve_in_thread(receiver.build_app())
    world = SimpleNamespace(sessions=session_factory(database_url))
    stock(world, "SKU-E1", {"backmarket": 0})
    stock(world, "SKU-E2", {"backmarket": 9})
    rule(world, 1)
    env = fleet_env(redis_url=redis_url, database_url=database_url, backmarket_url="http://127.0.0.1:9", token="x",
                    stock_alert_webhook_url=server.url + SECRET_PATH, stock_alert_webhook_attempts=2,
                    stock_alert_webhook_backoff_s=0.01, stock_alert_notify_max_retries=2,
                    stock_alert_notify_min_backoff_ms=50, stock_alert_notify_max_backoff_ms=200)
    fleet = WorkerFleet(env, processes=1, threads=2, queues=("alerts",), log_path=tmp_path / "fleet.log").start()
    broker = build_broker(Settings(redis_url=redis_url))
    client = redis_lib.Redis.from_url(redis_url)

    def check() -> None:
        broker.enqueue(Message(queue_name="alerts", actor_name="check_stock_alerts", args=(), kwargs={}, options={}))

    try:
        check()
        # 1 delivery + 2 retries, 2 attempts each, then the dead letters and the alert says so.
        wait_until(lambda: client.zcard("dramatiq:alerts.XQ") == 1 and alert_rows(world)[0].notify_failed_at,
                   60, what="the notification in the dead letters")
        [alert] = alert_rows(world)
        assert receiver.count() == 6 and alert.notify_attempts == 3 and "HTTP 500" in alert.notify_error
        assert alert.notified_state is None and "s3cr3t" not in alert.notify_error
        assert "s3cr3t" not in (tmp_path / "fleet.log").read_text()

        # The receiver heals after two more failures: the next alert is delivered by its first retry.
        receiver.plan, receiver.default = [500, 500], 200
        stock(world, "SKU-E2", {"backmarket": 0})
        check()
        wait_until(lambda: any(a.sku == "SKU-E2" and a.notified_state == "firing" for a in alert_rows(world)), 60,
                   what="the second alert's notification")
        second = next(a for a in alert_rows(world) if a.sku == "SKU-E2")
        assert second.notify_attempts == 1 and second.notify_error is None and second.notify_failed_at is None
        assert receiver.count() == 6 + 3 and client.zcard("dramatiq:alerts.XQ") == 1
    finally:
        fleet.stop()
        broker.close()
        server.stop()


def test_operations_alerts_reach_the_same_webhook_and_never_show_its_secret(world, caplog, monkeypatch):
    from runtime.alert_hooks import raise_alert

    # A reconciliation that found too many differences raises its alert as it always has...
    raise_alert("reconciliation_discrepancies", "12 stock rows differ from backmarket",
                {"run_id": 7, "discrepancies": 12, "marketplace": "backmarket"})
    # ...and the handler this module registered sends it to the webhook through the alerts queue.
    wait_until(lambda: world.receiver.count() == 1, 30, what="the operations alert's POST")
    [text_sent] = world.receiver.texts()
    assert "reconciliation_discrepancies" in text_sent and "discrepancies: 12" in text_sent
    assert "run_id: 7" in text_sent and world.receiver.posts[0]["json"]["blocks"]
    # Without a webhook configured, raising an alert enqueues nothing.
    setting(monkeypatch, stock_alert_webhook_url="")
    raise_alert("ledger_invariant", "ledger broken", {})
    world.broker.join("alerts")
    assert world.receiver.count() == 1
    assert SECRET_PATH not in caplog.text
