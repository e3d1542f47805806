"""``stocksync alerts``: stock alert rules, the alerts and a check run by hand (see README "Stock alerts").

    stocksync alerts rules add [--variation SKU] [--marketplace M] --threshold N
    stocksync alerts rules list
    stocksync alerts rules remove ID
    stocksync alerts list [--state firing|resolved] [--limit N]
    stocksync alerts check [--dry-run]
"""
from __future__ import annotations

from datetime import datetime

import click

from runtime.settings import get_settings


class _DatabaseCommands(click.Group):
    """A group whose commands talk to PostgreSQL: an unreachable database is one line, not a traceback."""

    def invoke(self, ctx):
        """Run the command; turn a connection failure into a clear message (no URL, no password)."""
        from sqlalchemy.exc import OperationalError

        try:
            return super().invoke(ctx)
        except OperationalError as error:
            reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else type(error).__name__
            raise click.ClickException(f"cannot reach PostgreSQL: {reason}") from None


def _sessions():
    from runtime import resources

    return resources.sessions()


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M}"


def _scope(sku: str | None, marketplace: str | None) -> str:
    if sku is None and marketplace is None:
        return "every variation (total stock)"
    if marketplace is None:
        return f"{sku} (total stock)"
    if sku is None:
        return f"every variation on {marketplace}"
    return f"{sku} on {marketplace}"


@click.group("alerts", cls=_DatabaseCommands)
def alerts_group() -> None:
    """Stock alerts: thresholds (rules), the alerts fired and resolved, and a check by hand."""


@alerts_group.group("rules", cls=_DatabaseCommands)
def rules_group() -> None:
    """Stock thresholds: per variation, per marketplace, or for everything (most specific wins)."""


@rules_group.command("add")
@click.option("--variation", "sku", metavar="SKU", help="The variation's SKU (default: every variation).")
@click.option("--marketplace", metavar="CODE", help="A marketplace code such as backmarket (default: total stock).")
@click.option("--threshold", required=True, type=click.IntRange(min=0),
              help="Alert when stock is below this (0: no alert for this scope).")
def rules_add(sku: str | None, marketplace: str | None, threshold: int) -> None:
    """Set the threshold of a scope (adds the rule, or changes the existing one's threshold)."""
    from db.alerts import AlertRuleError, set_rule

    if sku is not None and not sku.strip():
        raise click.BadParameter("must not be empty", param_hint="--variation")
    if marketplace is not None and not marketplace.strip():
        raise click.BadParameter("must not be empty", param_hint="--marketplace")
    with _sessions()() as session:
        try:
            rule_id, created = set_rule(session, sku=sku, marketplace=marketplace, threshold=threshold)
        except AlertRuleError as error:
            raise click.ClickException(str(error)) from None
        session.commit()
    what = "no alert" if threshold == 0 else f"alert below {threshold}"
    click.echo(f"rule {rule_id} {'added' if created else 'updated'}: {_scope(sku, marketplace)}: {what}")


@rules_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the rules and the defaults as JSON.")
def rules_list(as_json: bool) -> None:
    """Every rule, most specific first, and the default threshold from the settings."""
    from db.alerts import list_rules

    with _sessions()() as session:
        rules = list_rules(session)
    settings = get_settings()
    if as_json:
        from workers.cli.common import echo_json

        echo_json({"rules": [{"id": rule.id, "variation": rule.sku, "marketplace": rule.marketplace,
                              "threshold": rule.threshold, "updated_at": rule.updated_at} for rule in rules],
                   "default_threshold": settings.stock_alert_default_threshold,
                   "hysteresis": settings.stock_alert_hysteresis})
        return
    for rule in rules:
        click.echo(f"{rule.id:>5}  {_scope(rule.sku, rule.marketplace):<48} threshold {rule.threshold:>5}  "
                   f"(set {_when(rule.updated_at)})")
    if not rules:
        click.echo("no rules")
    default = settings.stock_alert_default_threshold
    click.echo(f"default (STOCK_ALERT_DEFAULT_THRESHOLD): {default if default else '0 (no alert)'}; "
               f"hysteresis (STOCK_ALERT_HYSTERESIS): {settings.stock_alert_hysteresis}")


@rules_group.command("remove")
@click.argument("rule_id", type=click.IntRange(min=1))
def rules_remove(rule_id: int) -> None:
    """Delete rule RULE_ID (its alerts stay, as history; a firing one resolves at the next check)."""
    from db.alerts import remove_rule

    with _sessions()() as session:
        removed = remove_rule(session, rule_id)
        session.commit()
    if not removed:
        raise click.ClickException(f"no rule {rule_id} (see `stocksync alerts rules list`)")
    click.echo(f"rule {rule_id} removed")


def _print_alerts(rows) -> None:
    click.echo(f"{'id':>6}  {'state':<8}  {'scope':<36}  {'stock':>6}  {'thr':>5}  {'fired':<16}  {'resolved':<16}  "
               f"notified")
    for alert in rows:
        stock = alert.quantity if alert.state == "firing" else alert.resolved_quantity
        if alert.notify_failed_at is not None:
            notified = f"FAILED: {alert.notify_error}"
        elif alert.notified_state == alert.state:
            notified = f"yes {_when(alert.last_notified_at)}"
        elif alert.notify_error:
            notified = f"pending ({alert.notify_attempts} failed: {alert.notify_error})"
        else:
            notified = "pending"
        click.echo(f"{alert.id:>6}  {alert.state:<8}  {alert.scope:<36}  {'-' if stock is None else stock:>6}  "
                   f"{alert.threshold:>5}  {_when(alert.fired_at):<16}  {_when(alert.resolved_at):<16}  {notified}")


def _alert_dict(alert) -> dict:
    """An alert row as JSON-able data (its columns, and the scope shown by the table)."""
    import dataclasses

    return {**dataclasses.asdict(alert), "scope": alert.scope}


@alerts_group.command("list")
@click.option("--state", type=click.Choice(["firing", "resolved"]), help="Only alerts in this state.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000), help="Newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the alerts as JSON (every field).")
def alerts_list(state: str | None, limit: int, as_json: bool) -> None:
    """Alerts, newest first: scope, stock, threshold, when fired and resolved, notification state."""
    from db.alerts import list_alerts

    with _sessions()() as session:
        rows = list_alerts(session, state=state, limit=limit)
    if as_json:
        from workers.cli.common import echo_json

        echo_json([_alert_dict(alert) for alert in rows])
        return
    if not rows:
        click.echo(f"no {state + ' ' if state else ''}alerts")
        return
    _print_alerts(rows)


@alerts_group.command("check")
@click.option("--dry-run", is_flag=True, help="Only print what would fire and resolve: nothing stored or sent.")
def alerts_check(dry_run: bool) -> None:
    """Run the stock alert check now, in this process, and print what fired and resolved.

    Notifications go through the workers (queue ``alerts``); without REDIS_URL they are sent
    from this process.
    """
    from pipelines.alerts import deliver, run_check
    from runtime import resources

    failures: list[str] = []

    def deliver_here(alert_id: int) -> None:
        try:
            deliver(alert_id)
        except Exception as error:  # recorded on the alert; the command goes on
            failures.append(f"alert {alert_id}: notification failed: {error}")

    if resources.in_process():
        notify = deliver_here
    else:
        from workers.cli.common import fleet

        notify = fleet().alerts.notify_stock_alert.send
    result = run_check(notify, dry_run=dry_run)
    fire, resolve = ("WOULD FIRE", "WOULD RESOLVE") if dry_run else ("FIRED", "RESOLVED")
    for alert in result.fired:
        click.echo(f"{fire:<13} {alert.scope}: {alert.quantity} < {alert.threshold}")
    for alert in result.resolved:
        now = alert.resolved_quantity
        back = f"back at {now}" if now is not None and now >= alert.threshold else f"ended at {now} (rule changed)"
        click.echo(f"{resolve:<13} {alert.scope}: {back} (threshold {alert.threshold})")
    verb = "would fire" if dry_run else "fired"
    click.echo(f"checked {result.checked} scopes: {len(result.fired)} {verb}, {len(result.resolved)} "
               f"{'would resolve' if dry_run else 'resolved'}; {result.firing} firing"
               + (" (dry run: nothing stored or sent)" if dry_run else ""))
    for failure in failures:
        click.echo(failure, err=True)
    if failures:  # the check ran, but its work (telling someone) did not get done
        raise SystemExit(1)


__all__ = ["alerts_group", "register"]
