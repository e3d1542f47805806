"""``stocksync doctor``: check a deployment from the command line and say what is wrong in words.

Settings valid, Redis and PostgreSQL reachable, the schema at the migrations' head, the
credentials the fleet needs set (names only, never values), and our clock against PostgreSQL's
and Redis's.  Exits 1 when any check fails; a warning alone (an optional credential unset) does
not fail.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import click

#: Credentials of optional features: unset turns the feature off (a warning, not a failure).
OPTIONAL_CREDENTIALS = {
    "REFURBED_TOKEN": "Refurbed order fetches and polling",
    "REFURBED_WEBHOOK_SECRET": "the Refurbed webhook endpoint",
    "SHOPIFY_WEBHOOK_SECRET": "the Shopify webhook endpoint",
    "PRODUCER_HMAC_KEY": "the signed /events endpoint",
    "INGRAM_CLIENT_ID": "the Ingram Micro supplier sync",
    "INGRAM_CLIENT_SECRET": "the Ingram Micro supplier sync",
    "STOCK_ALERT_WEBHOOK_URL": "stock and operations alert notifications (alerts are still recorded)",
}


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``level`` is ok, warning or error."""

    check: str
    level: str
    detail: str


def _settings_findings() -> tuple[object | None, list[Finding]]:
    from pydantic import ValidationError

    from runtime.settings import Settings, get_settings

    get_settings.cache_clear()
    try:
        return get_settings(), [Finding("settings", "ok", "every setting is valid")]
    except ValidationError as error:
        findings, bad = [], set()
        for problem in error.errors():
            bad.add(str(problem["loc"][0]))
            name = "_".join(str(part) for part in problem["loc"]).upper()
            # The message, never the value (it may be a secret).
            findings.append(Finding("settings", "error", f"{name}: {problem['msg']}"))
        # Go on with the rest: the bad settings at their defaults, every other one as set.
        defaults = {field: Settings.model_fields[field].get_default(call_default_factory=True) for field in bad
                    if field in Settings.model_fields}
        try:
            return Settings(**defaults), findings
        except ValidationError:
            return Settings.model_construct(), findings


def _credential_findings(settings, sessions) -> list[Finding]:
    findings = []
    token = settings.backmarket_token.get_secret_value()
    findings.append(Finding("credentials", "ok" if token else "error",
                            "BACKMARKET_TOKEN is set" if token else "BACKMARKET_TOKEN is not set: the Back Market "
                            "stock sync and order polling will be refused (401)"))
    for name, feature in OPTIONAL_CREDENTIALS.items():
        value = getattr(settings, name.lower(), "")
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        findings.append(Finding("credentials", "ok" if value else "warning",
                                f"{name} is set" if value else f"{name} is not set: {feature} off"))
    if sessions is not None:
        from db.accounts import list_accounts

        try:
            with sessions() as session:
                found = [account for account in list_accounts(session, enabled_only=True)
                         if account.credentials_env is not None]  # the main accounts' settings are above
        except Exception as error:
            return findings + [Finding("credentials", "error", f"could not read the accounts: "
                                                                f"{type(error).__name__}")]
        from core.accounts import AccountError, check_credentials_env
        from core.platforms import platform

        for account in found:
            try:  # an account of before accounts (a store) may name a variable outside the prefix
                check_credentials_env(account.credentials_env, platform(account.platform))
            except AccountError as refused:
                findings.append(Finding("credentials", "error", f"account {account.code}: {refused}"))
                continue
            present = bool(os.environ.get(account.credentials_env))
            findings.append(Finding("credentials", "ok" if present else "error",
                                    f"account {account.code}: {account.credentials_env} is set" if present else
                                    f"account {account.code}: {account.credentials_env} is not set here (the "
                                    "workers need it too): the scheduler leaves it out, a sync by hand is refused"))
    return findings


def _clock_findings(settings, engine_url: str | None, redis_url: str) -> list[Finding]:
    findings = []
    limit = max(settings.stock_event_skew_s, 1.0)

    def judge(source: str, skew_s: float) -> Finding:
        ok = abs(skew_s) <= limit
        return Finding("clock", "ok" if ok else "error",
                       f"this host is {abs(skew_s):.2f} s {'ahead of' if skew_s > 0 else 'behind'} {source}"
                       + ("" if ok else f": more than STOCK_EVENT_SKEW_S ({limit:g} s); fix NTP on this host or "
                                        f"{source}'s, or events are booked against the wrong page"))

    if engine_url:
        from sqlalchemy import text

        from runtime.health import probe_engine

        try:
            with probe_engine(engine_url).connect() as connection:
                before = time.time()
                theirs = connection.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar()
                after = time.time()
            findings.append(judge("PostgreSQL", (before + after) / 2 - float(theirs)))
        except Exception as error:
            findings.append(Finding("clock", "error", f"could not read PostgreSQL's clock: {type(error).__name__}"))
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=3, socket_connect_timeout=3)
        try:
            before = time.time()
            seconds, micros = client.time()
            after = time.time()
            findings.append(judge("Redis (the limiter's clock)", (before + after) / 2 - (seconds + micros / 1e6)))
        except Exception as error:
            findings.append(Finding("clock", "error", f"could not read Redis's clock: {type(error).__name__}"))
        finally:
            client.close()
    return findings


def diagnose() -> list[Finding]:
    """Every check, in the order an operator would fix them."""
    from runtime.health import check_database, check_redis

    settings, findings = _settings_findings()
    redis_url = getattr(settings, "redis_url", "") or ""
    redis_ok = False
    if redis_url:
        check = check_redis(redis_url)
        redis_ok = check.ok
        findings.append(Finding("redis", "ok" if check.ok else "error", check.detail))
    else:
        findings.append(Finding("redis", "error", "REDIS_URL is not set: the fleet needs Redis (without it every "
                                                  "process runs a broker of its own, for the demo only)"))
    database_url = getattr(settings, "database_url", "") or ""
    if not database_url:
        findings.append(Finding("postgresql", "error", "DATABASE_URL is not set: the embedded PostgreSQL is for "
                                                       "the demo only"))
        database_checks = []
    else:
        database_checks = check_database(database_url)
    for check in database_checks:
        findings.append(Finding(check.name, "ok" if check.ok else "error", check.detail))
    reachable = bool(database_checks) and all(check.ok for check in database_checks)
    sessions = None
    if reachable:
        from db.engine import session_factory

        sessions = session_factory(database_url)
    findings += _credential_findings(settings, sessions)
    findings += _clock_findings(settings, database_url if database_checks and database_checks[0].ok else None,
                                redis_url if redis_ok else "")
    return findings


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor_command(as_json: bool) -> None:
    """Check this deployment: settings, Redis, PostgreSQL, migrations, credentials, clock skew.

    Exits 1 when something is wrong (warnings alone exit 0).  Credentials are named, never shown.
    """
    findings = diagnose()
    failed = any(finding.level == "error" for finding in findings)
    if as_json:
        click.echo(json.dumps({"ok": not failed, "findings": [vars(finding) for finding in findings]}, indent=2))
    else:
        marks = {"ok": "ok  ", "warning": "warn", "error": "FAIL"}
        for finding in findings:
            click.echo(f"{marks[finding.level]}  {finding.check:<12} {finding.detail}")
        errors = sum(finding.level == "error" for finding in findings)
        click.echo(f"{errors} problem(s) found" if failed else "everything checked is fine", err=True)
    if failed:
        raise SystemExit(1)
