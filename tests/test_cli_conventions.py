"""CLI conventions on real PostgreSQL and Redis: --json on every list, data on stdout, bars on stderr,
--version, non-zero exits when the work failed, no dependency warnings."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from sqlalchemy import text

from db.engine import session_factory
from runtime.local_servers import free_port
from sandbox.backmarket import BackMarketSandbox
from sandbox.server import serve_in_thread
from tests.fleet import ROOT

TOKEN = "cli-token-7a1b2c"


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    # No XDG_RUNTIME_DIR, as under cron, sudo or a container: nothing may warn about it.
    environment = {key: value for key, value in os.environ.items() if key != "XDG_RUNTIME_DIR"}
    environment.update(env)
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def env(redis_url, database_url):
    return {"REDIS_URL": redis_url, "DATABASE_URL": database_url,
            "STOCKSYNC_ACCOUNT_SHOP_CLI_TOKEN": "shpat_cli_secret_1"}


def test_version():
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == "stocksync, version 0.1.0"


def test_every_list_command_has_json(env, database_url):
    sessions = session_factory(database_url)
    with sessions() as session:
        session.execute(text("INSERT INTO sync_runs (kind, target, trigger, status, total_pages, pages_done, items) "
                             "VALUES ('stock', 'backmarket', 'manual', 'succeeded', 3, 3, 150)"))
        session.execute(text("INSERT INTO variations (sku, title) VALUES ('SKU-J', 'Phone')"))
        session.commit()
    added = cli("accounts", "add", "shopify", "shop-cli", "--credentials-env", "STOCKSYNC_ACCOUNT_SHOP_CLI_TOKEN",
                "--no-auto-sync", "--option", "shop_domain=shop-cli.myshopify.com", **env)
    assert added.returncode == 0, added.stderr
    assert cli("alerts", "rules", "add", "--variation", "SKU-J", "--threshold", "3", **env).returncode == 0
    assert cli("alerts", "check", **env).returncode == 0  # fires (0 < 3); a worker would notify

    def listed(*args: str):
        done = cli(*args, "--json", **env)
        assert done.returncode == 0, (args, done.stderr)
        return json.loads(done.stdout)

    [shop] = [account for account in listed("accounts", "list") if account["code"] == "shop-cli"]
    assert (shop["platform"], shop["credentials_env"], shop["configured"]) == \
        ("shopify", "STOCKSYNC_ACCOUNT_SHOP_CLI_TOKEN", True)
    assert listed("stores", "list") == listed("accounts", "list")  # the name of before accounts
    [alert] = listed("alerts", "list")
    assert (alert["sku"], alert["state"], alert["threshold"], alert["scope"]) == ("SKU-J", "firing", 3, "SKU-J")
    rules = listed("alerts", "rules", "list")
    assert [rule["variation"] for rule in rules["rules"]] == ["SKU-J"] and rules["default_threshold"] == 0
    jobs = listed("scheduler", "--list")
    assert {job["job"] for job in jobs} >= {"stock_sync", "stock_alerts"}
    assert all(len(job["next_runs"]) == 3 for job in jobs if job["cron"])
    [run] = [run for run in listed("syncs") if run["kind"] == "stock"]
    assert (run["target"], run["status"], run["items"], run["pages_done"]) == ("backmarket", "succeeded", 150, 3)
    runs = listed("monitor", "--once")
    assert any(progress["id"] == run["id"] and progress["status"] == "succeeded" for progress in runs)
    dead = cli("dlq", "list", "--json", **env)  # JSON lines, one dead letter each: none here
    assert dead.returncode == 0 and dead.stdout == ""
    everything = "".join(cli(*args, **env).stdout for args in (("accounts", "list", "--json"), ("accounts", "list")))
    assert "shpat_cli_secret_1" not in everything


def test_a_sync_prints_its_bar_on_stderr_and_its_table_on_stdout(database_url):
    sandbox = BackMarketSandbox(listings=200, seed=3, token=TOKEN, quota_requests=0)
    server = serve_in_thread(sandbox.build_app())
    try:
        # No REDIS_URL: the sync runs on worker threads of the command itself.
        done = cli("sync", "backmarket", "--wait", DATABASE_URL=database_url, REDIS_URL="",
                   BACKMARKET_BASE_URL=server.url, BACKMARKET_TOKEN=TOKEN, BACKMARKET_QUOTA_REQUESTS="1000",
                   BACKMARKET_QUOTA_WINDOW_S="1")
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and "4/4" in done.stdout  # the summary table
    bar = re.compile(r"sync \d+ .*\d+/\d+ pages")
    assert bar.search(done.stderr) and not bar.search(done.stdout), done.stderr  # the bar is for people: stderr
    assert TOKEN not in done.stdout + done.stderr
    assert "Warning" not in done.stderr


def test_alerts_check_exits_non_zero_when_its_notifications_failed(database_url):
    sessions = session_factory(database_url)
    with sessions() as session:
        session.execute(text("INSERT INTO variations (sku, title) VALUES ('SKU-N', 'Phone')"))
        session.commit()
    env = {"DATABASE_URL": database_url, "REDIS_URL": "",
           "STOCK_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/hooks/cli-secret-path",
           "STOCK_ALERT_WEBHOOK_ATTEMPTS": "1", "STOCK_ALERT_WEBHOOK_TIMEOUT_S": "2"}
    assert cli("alerts", "rules", "add", "--variation", "SKU-N", "--threshold", "2", **env).returncode == 0
    done = cli("alerts", "check", **env)  # in-process: the notification is sent here, to a closed port
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FIRED" in done.stdout and "notification failed" in done.stderr
    assert "cli-secret-path" not in done.stdout + done.stderr
