"""The Ingram Micro actors in one process (stub broker, fakeredis, real PostgreSQL, sandbox), and the CLI.

Fast checks of the pipeline's logic; ``test_ingram_e2e`` repeats the important ones on real
``dramatiq`` processes and a real Redis.
"""
from __future__ import annotations

import dramatiq
import pytest
from click.testing import CliRunner
from dramatiq.middleware import CurrentMessage
from sqlalchemy import text

from clients.errors import MalformedResponse, ServerError
from clients.ingram import DETAILS, PRICE_AVAILABILITY, TOKEN, RequestRecord
from runtime import resources
from runtime.settings import get_settings
from sandbox.ingram import IngramSandbox
from sandbox.server import serve_in_thread
from workers.cli import main

SCALE = 0.01


@pytest.fixture
def pipeline(monkeypatch, database_url):
    sandbox = IngramSandbox(products=23, seed=8, time_scale=SCALE)
    server = serve_in_thread(sandbox.build_app())
    for name, value in {"DATABASE_URL": database_url, "REDIS_URL": "", "INGRAM_BASE_URL": server.url,
                        "INGRAM_CLIENT_ID": "sandbox-client", "INGRAM_CLIENT_SECRET": "sandbox-secret",
                        "INGRAM_CUSTOMER_NUMBER": "20-222222", "INGRAM_TIME_SCALE": str(SCALE),
                        "INGRAM_RATE_MARGIN_S": "0.01", "INGRAM_BATCH_SIZE": "5"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    resources.database_url.cache_clear()
    from actors import ingram

    broker = ingram.price_availability_batch.broker
    broker.flush_all()
    resources.sync_redis().flushall()  # limiter, token and per-run counters: every test's ids start at 1
    with resources.sessions()() as session:
        from db import supplier

        supplier.add_products(session, ingram.SUPPLIER, [(part, None) for part in sandbox.part_numbers()])
        session.commit()
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    worker.start()
    yield ingram, sandbox, broker
    worker.stop()
    broker.flush_all()
    server.stop()
    get_settings.cache_clear()
    resources.database_url.cache_clear()


def run_to_end(broker) -> None:
    for _ in range(3):  # batches enqueue details while they run
        for queue in ("ingram-batch", "ingram-details"):
            broker.join(queue, fail_fast=False, timeout=60_000)


def run_row(sync_id: int):
    with resources.sessions()() as session:
        return session.execute(text("SELECT * FROM sync_runs WHERE id = :s"), {"s": sync_id}).mappings().one()


def prices() -> dict:
    with resources.sessions()() as session:
        return dict(session.execute(text("SELECT part_number, price FROM supplier_products")).all())


def test_a_sync_prices_every_product_fetches_details_and_closes_its_run(pipeline):
    ingram, sandbox, broker = pipeline
    sync_id = ingram.begin_supplier_sync(trigger="manual")
    run_to_end(broker)
    run = run_row(sync_id)
    assert run["status"] == "succeeded", run["error"]
    assert (run["total_pages"], run["pages_done"], run["items"], run["total_items"]) == (5, 5, 23, 23)
    assert run["details"]["details_total"] == run["details"]["details_done"] == 23
    assert prices() == {part: truth["price"] for part, truth in sandbox.truth().items()}
    stats = sandbox.stats()
    # A token, 5 batches, 23 details (and a retry for any 429 jitter caused on this busy machine).
    assert run["api_calls"] == stats["total_requests"] == 1 + 5 + 23 + stats["rate_limited"]


def test_a_redelivered_batch_calls_nothing_and_its_details_change_nothing(pipeline):
    ingram, sandbox, broker = pipeline
    sync_id = ingram.begin_supplier_sync(trigger="manual")
    run_to_end(broker)
    before = sandbox.stats()["total_requests"]
    parts = sandbox.part_numbers()[:5]
    ingram.price_availability_batch.send(sync_id, 1, parts)  # as if its worker died after the commit
    run_to_end(broker)
    assert sandbox.stats()["total_requests"] == before  # neither the batch nor its details called the API
    assert run_row(sync_id)["details"]["details_done"] == 23


def test_a_transient_failure_retries_on_the_schedule_and_ends_right(pipeline):
    ingram, sandbox, broker = pipeline
    sandbox.fail_next(4)  # the first call's 4 HTTP attempts all fail: the message itself retries
    sync_id = ingram.begin_supplier_sync(trigger="manual", batch_size=25, max_concurrent=1)
    run_to_end(broker)
    run = run_row(sync_id)
    assert run["status"] == "succeeded", run["error"]
    assert sandbox.stats()["by_status"]["500"] == 4
    assert run["retries"] >= 4 and run["errors"] >= 4
    assert prices() == {part: truth["price"] for part, truth in sandbox.truth().items()}


def test_refusals_are_clear(pipeline):
    ingram, sandbox, broker = pipeline
    with pytest.raises(ValueError, match="batch size 51 refused: Ingram Micro's price & availability takes 1 to 50"):
        ingram.begin_supplier_sync(batch_size=51)
    with pytest.raises(ValueError, match="queue 'fast' is not one the workers consume"):
        ingram.begin_supplier_sync(queue="fast")
    ingram.begin_supplier_sync(trigger="manual")
    from db.syncs import SyncRefused

    with pytest.raises(SyncRefused, match="already running"):
        ingram.begin_supplier_sync(trigger="manual", force=True)
    run_to_end(broker)


def message(retries: int) -> dramatiq.Message:
    return dramatiq.Message(queue_name="q", actor_name="a", args=(), kwargs={}, options={"retries": retries})


def test_scheduled_retries_follow_the_schedule_then_let_the_error_through():
    from actors.ingram import scheduled_retries

    current = CurrentMessage()
    for retries, delay_s in ((0, 30), (1, 60), (2, 120)):
        current.before_process_message(None, message(retries))
        with pytest.raises(dramatiq.Retry) as retry:
            with scheduled_retries([30, 60, 120], 0.5):
                raise ServerError("busy", api="ingram", status=503)
        assert delay_s * 500 <= retry.value.delay <= delay_s * 500 * 1.25
        assert "ServerError" in str(retry.value)
    current.before_process_message(None, message(3))
    with pytest.raises(ServerError):  # past the schedule: the dead letters get the real error
        with scheduled_retries([30, 60, 120], 0.5):
            raise ServerError("busy", api="ingram", status=503)
    current.before_process_message(None, message(0))
    with pytest.raises(MalformedResponse):  # permanent: no retry at all
        with scheduled_retries([30, 60, 120], 0.5):
            raise MalformedResponse("not an array", api="ingram")
    current.after_process_message(None, message(0))


def test_attempts_are_counted_once_and_token_calls_are_never_retries():
    from pipelines.ingram import count_attempts as _count_attempts

    records = [RequestRecord("ingram", TOKEN, 200, 1, 0.01, 0),
               RequestRecord("ingram", PRICE_AVAILABILITY, 503, 1, 0, 0),
               RequestRecord("ingram", PRICE_AVAILABILITY, 200, 2, 0, 0)]
    assert _count_attempts(records, first_is_retry=False) == {"api_calls": 3, "retries": 1, "errors": 1}
    assert _count_attempts(records, first_is_retry=True) == {"api_calls": 3, "retries": 2, "errors": 1}
    no_details = [RequestRecord("ingram", DETAILS, 404, 1, 0, 0)]
    assert _count_attempts(no_details, first_is_retry=False) == {"api_calls": 1, "retries": 0, "errors": 0}


def test_cli_refuses_a_batch_size_above_50_and_a_bad_product_line_clearly():
    runner = CliRunner()
    refused = runner.invoke(main, ["ingram", "sync", "--batch-size", "51"])
    assert refused.exit_code == 2
    assert "batch size 51 refused: Ingram Micro's price & availability takes 1 to 50 products" in refused.output
    bad = runner.invoke(main, ["ingram", "add-products", "A1", "not a part"])
    assert bad.exit_code == 2 and "argument line 2: 'not a part' is not a part number" in bad.output
    concurrency = runner.invoke(main, ["ingram", "sync", "--max-concurrent", "0"])
    assert concurrency.exit_code == 2 and "--max-concurrent" in concurrency.output
