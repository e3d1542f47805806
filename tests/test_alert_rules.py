"""deploy/prometheus/alerts.yml: valid rules, their promtool unit tests pass and cover every alert, and
every alert's runbook is a heading of README.md's troubleshooting runbook.

promtool comes with Debian's ``prometheus`` package (``make system-deps``); these tests fail rather
than skip without it, so that rules nobody tested never pass CI.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from tests.fleet import ROOT
from tests.test_grafana_dashboard import metric_names
from runtime import metrics

PROMETHEUS_DIR = ROOT / "deploy/prometheus"
RULES_FILE = PROMETHEUS_DIR / "alerts.yml"
TESTS_FILE = PROMETHEUS_DIR / "alerts_test.yml"
RULES = [rule for group in yaml.safe_load(RULES_FILE.read_text())["groups"] for rule in group["rules"]]
ALERTS = [rule for rule in RULES if "alert" in rule]
RUNBOOK_SECTION = "Troubleshooting runbook"

#: Metrics the rules read that the code does not export yet: the queue age gauge is being added
#: (workers' /metrics, read from Redis), and nothing reports a broken ledger as a metric so far.
NOT_EXPORTED_YET = {"stocksync_queue_oldest_message_age_seconds", "stocksync_ledger_broken_rows"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    """Run promtool; fail (not skip) when it is missing."""
    path = shutil.which("promtool")
    assert path, "promtool is not installed (Debian: apt-get install prometheus; `make system-deps` installs it)"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR)


def github_anchors(markdown: str) -> dict[str, str]:
    """The anchor GitHub gives each heading (outside code blocks), mapped to its heading's text."""
    anchors: dict[str, str] = {}
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        text = heading.group(1)
        slug = re.sub(r"[^\w\- ]", "", text.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors[slug if count == 0 else f"{slug}-{count}"] = text
    return anchors


def runbook_headings(markdown: str) -> set[str]:
    """The headings below README's "Troubleshooting runbook" heading, up to the next heading of its level."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if re.fullmatch(rf"#+ {RUNBOOK_SECTION}", line))
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    found = set()
    for line in lines[start + 1:]:
        heading = re.match(r"(#+) (.*)", line)
        if heading and len(heading.group(1)) <= level:
            break
        if heading:
            found.add(heading.group(2).strip())
    return found


def test_promtool_checks_the_rules():
    checked = promtool("check", "rules", RULES_FILE.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in checked.stdout


def test_the_unit_tests_of_the_rules_pass():
    tested = promtool("test", "rules", TESTS_FILE.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_firing_and_a_healthy_unit_test():
    tests = yaml.safe_load(TESTS_FILE.read_text())
    assert tests["rule_files"] == [RULES_FILE.name]
    cases = [case for group in tests["tests"] for case in group["alert_rule_test"]]
    for alert in ALERTS:
        mine = [case for case in cases if case["alertname"] == alert["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"no test where {alert['alert']} fires"
        assert any(not case["exp_alerts"] for case in mine), f"no test where {alert['alert']} stays quiet"
    assert {case["alertname"] for case in cases} <= {alert["alert"] for alert in ALERTS}


def test_every_alert_says_how_long_how_bad_what_and_where_to_look():
    assert len(ALERTS) == len(RULES) == len({alert["alert"] for alert in ALERTS})
    for alert in ALERTS:
        name = alert["alert"]
        assert re.fullmatch(r"Stocksync[A-Z]\w+", name), name
        assert re.fullmatch(r"\d+[smh]", alert.get("for", "")), f"{name}: no `for:`"
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        annotations = alert["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert annotations["runbook"] == f"README.md#{name.lower()}", name


def test_every_runbook_anchor_is_a_heading_of_the_readme_runbook():
    readme = (ROOT / "README.md").read_text()
    anchors = github_anchors(readme)
    section = runbook_headings(readme)
    for alert in ALERTS:
        path, _, anchor = alert["annotations"]["runbook"].partition("#")
        assert path == "README.md", alert["alert"]
        assert anchor in anchors, f"{alert['alert']}: README.md has no heading #{anchor}"
        assert anchors[anchor] in section, f"{alert['alert']}: #{anchor} is not under {RUNBOOK_SECTION!r}"


def test_the_rules_read_metrics_the_code_exports():
    exported = metrics.exported_names() | NOT_EXPORTED_YET | {"up"}  # up: Prometheus's own, per target
    for rule in RULES:
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert not names - exported, f"{rule['alert']} reads {sorted(names - exported)}, which nothing exports"


def test_github_anchors_are_computed_like_github():
    anchors = github_anchors("# A `b` c\n## Dead letters\n```\n# not a heading\n```\n### Dead letters\n#### X_y-z!\n")
    assert list(anchors) == ["a-b-c", "dead-letters", "dead-letters-1", "x_y-z"]
