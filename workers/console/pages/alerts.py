"""Alerts: the rules (add and remove: admin) and the alerts, firing and resolved, with their notification state."""
from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from db import alerts
from workers.console.context import CONSOLE
from workers.console.security import Done, Refused, action

routes = web.RouteTableDef()


@routes.get("/alerts")
@aiohttp_jinja2.template("alerts.html")
async def alerts_page(request: web.Request):
    """Rules, most specific first, and the latest alerts (``state``: firing or resolved)."""
    console = request.app[CONSOLE]
    state = request.query.get("state") or None
    if state not in (None, "firing", "resolved"):
        raise web.HTTPBadRequest(text="state must be firing or resolved")

    def load(session):
        return {"rules": alerts.list_rules(session), "alerts": alerts.list_alerts(session, state=state, limit=200)}

    data = await console.read(load)
    data.update(state=state, default_threshold=console.settings.stock_alert_default_threshold)
    return data


@routes.post("/alerts/rules/add")
@action("alerts.rule_add", role="admin")
async def add_rule(request: web.Request) -> Done:
    """Set the threshold of a scope (a variation, a marketplace, both, or everything)."""
    console = request.app[CONSOLE]
    form = await request.post()
    sku = str(form.get("sku") or "").strip() or None
    marketplace = str(form.get("marketplace") or "").strip() or None
    try:
        threshold = int(str(form.get("threshold") or "").strip())
    except ValueError:
        raise Refused("threshold must be a whole number, 0 or more") from None
    try:
        rule_id, created = await console.write(alerts.set_rule, sku=sku, marketplace=marketplace,
                                               threshold=threshold)
    except alerts.AlertRuleError as error:
        raise Refused(str(error)) from None
    return Done(f"rule {rule_id} {'added' if created else 'changed'}", "/alerts", detail=f"rule {rule_id}")


@routes.post("/alerts/rules/{rule_id:\\d{1,9}}/remove")
@action("alerts.rule_remove", role="admin")
async def remove_rule(request: web.Request) -> Done:
    """Remove a rule (its firing alerts resolve at the next check)."""
    console = request.app[CONSOLE]
    rule_id = int(request.match_info["rule_id"])
    if not await console.write(alerts.remove_rule, rule_id):
        raise Refused(f"no rule {rule_id}", status=404)
    return Done(f"rule {rule_id} removed", "/alerts")
