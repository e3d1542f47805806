"""deploy/grafana: every panel's query names metrics the code exports, and is valid PromQL."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from runtime import metrics
from tests.fleet import ROOT

DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/stocksync.json").read_text())
DATASOURCES = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())

#: PromQL words that are not metric names.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring", "group_left",
            "group_right"}


def panels() -> list[dict]:
    """Every panel but the rows, rows' own panels included."""
    found = []
    for panel in DASHBOARD["panels"]:
        found += panel.get("panels", []) if panel["type"] == "row" else [panel]
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        if not match.group(2) and match.group(1).lower() not in KEYWORDS:
            names.add(match.group(1))
    return names


def dramatiq_names() -> set[str]:
    """The samples dramatiq's Prometheus middleware exports (made in a process of their own: its boot
    sets the multiprocess environment, which this test process must not inherit)."""
    code = (
        "import json, os, sys, tempfile\n"
        "os.environ['dramatiq_prom_db'] = tempfile.mkdtemp()\n"
        "from dramatiq.middleware.prometheus import Prometheus\n"
        "m = Prometheus(); m.after_process_boot(None)\n"
        "names = [f.name + s for v in vars(m).values() if hasattr(v, 'describe') for f in v.describe()\n"
        "         for s in {'counter': ['_total'], 'gauge': [''],\n"
        "                   'histogram': ['_bucket', '_sum', '_count']}[f.type]]\n"
        "print(json.dumps(names))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(done.stdout))


def test_every_panel_queries_metrics_the_code_exports():
    exported = metrics.exported_names() | dramatiq_names()
    assert "dramatiq_messages_total" in exported and "stocksync_api_requests_total" in exported
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} queries {sorted(unknown)}, which nothing exports"


def test_the_dashboard_covers_what_operators_watch():
    read = {name for panel in panels() for target in panel["targets"] for name in metric_names(target["expr"])}
    families = {re.sub(r"(_bucket|_sum|_count)$", "", name) for name in read}
    for family in ("stocksync_sync_pages_done", "stocksync_sync_pages_total", "stocksync_sync_duration_seconds",
                   "stocksync_sync_last_success_timestamp_seconds", "stocksync_api_requests_total",
                   "stocksync_api_rate_limited_total", "stocksync_api_quota_requests",
                   "stocksync_rate_limit_wait_seconds", "stocksync_events_applied_total", "stocksync_event_lag_seconds",
                   "stocksync_duplicate_events_total", "dramatiq_messages_total",
                   "dramatiq_message_duration_milliseconds", "stocksync_ledger_changes_total",
                   "stocksync_oversold_total", "stocksync_reconciliation_discrepancies_total",
                   "stocksync_dead_letters_total", "stocksync_dead_letters_waiting", "stocksync_queue_messages",
                   "stocksync_queue_oldest_message_age_seconds", "stocksync_queue_wait_seconds"):
        assert family in families, f"no panel shows {family}"


def test_panels_use_the_provisioned_datasource_and_fit_the_grid():
    uid = DATASOURCES["datasources"][0]["uid"]
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(target["datasource"]["uid"] == uid for target in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    assert DASHBOARD["uid"] and DASHBOARD["title"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
def test_every_query_is_valid_promql(tmp_path):
    # promtool checks the queries as recording rules, with Grafana's interval variable filled in.
    rules = [{"record": f"stocksync:panel_{panel['id']}_{target['refId']}",
              "expr": target["expr"].replace("$__rate_interval", "1m")}
             for panel in panels() for target in panel["targets"]]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-compose.yml"])
def test_the_scrape_configs_are_valid(config):
    checked = subprocess.run(["promtool", "check", "config", str(ROOT / "deploy/prometheus" / config)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_metric_names_are_read_from_promql():
    expr = ('histogram_quantile(0.95, sum by (le, api) (rate(stocksync_api_request_duration_seconds_bucket'
            '{status=~"5..|x"}[$__rate_interval]))) / on(api) group_left max(stocksync_api_quota_requests) '
            'and time() - stocksync_sync_last_success_timestamp_seconds offset 5m')
    assert metric_names(expr) == {"stocksync_api_request_duration_seconds_bucket", "stocksync_api_quota_requests",
                                  "stocksync_sync_last_success_timestamp_seconds"}
