"""``each_account``: run one per-account actor for every account that can do what it needs (the scheduler's fan-out).

A scheduled job names an actor and a capability, never a list of account codes: the accounts come
from PostgreSQL when the job fires (:func:`runtime.accounts.ready`), so an account added, enabled or
disabled is in or out of every job from its next fire.
"""
from __future__ import annotations

import logging
from typing import Any

import dramatiq

from actors.retry import MalformedMessage
from core.platforms import CAPABILITIES
from runtime import accounts, queues

logger = logging.getLogger(__name__)

#: The actors a job may run for every account; each takes the account's code as its first argument.
PER_ACCOUNT = frozenset({"start_stock_sync", "resume_stalled_syncs", "poll_orders", "reconcile_stock", "sweep_stock"})


def check_fan_out(actor_name: Any, capability: Any, args: Any, kwargs: Any) -> tuple[str, ...]:
    """The capabilities asked for (any of them will do), once the message is known to be sound.

    Raises :class:`MalformedMessage` naming what is wrong: an actor that is not a per-account one,
    a capability no platform has, arguments that are not a list or an object.
    """
    if actor_name not in PER_ACCOUNT:
        raise MalformedMessage(f"each_account: actor must be one of {', '.join(sorted(PER_ACCOUNT))}, got "
                               f"{str(actor_name)[:60]!r}")
    wanted = (capability,) if isinstance(capability, str) else capability
    if not isinstance(wanted, (list, tuple)) or not wanted or any(name not in CAPABILITIES for name in wanted):
        raise MalformedMessage(f"each_account: capability must be one of {', '.join(CAPABILITIES)} (or a list of "
                               f"them), got {str(capability)[:60]!r}")
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        raise MalformedMessage("each_account: args must be a list and kwargs an object")
    return tuple(wanted)


@dramatiq.actor(queue_name=queues.STOCK_SYNC, max_retries=3, min_backoff=1000, max_backoff=30000,
                time_limit=60 * 1000)
def each_account(actor_name: str, capability: str | list[str], args: list | None = None,
                 kwargs: dict | None = None, auto_sync_only: bool = False) -> list[str]:
    """Send ``actor_name(code, *args, **kwargs)`` for every ready account; return their codes.

    Ready: enabled, its platform has ``capability`` (any of a list), its credential is set in this
    worker's environment, and (``auto_sync_only``) synced by the schedule.
    """
    args, kwargs = [] if args is None else args, {} if kwargs is None else kwargs
    capabilities = check_fan_out(actor_name, capability, args, kwargs)
    codes = [view.code for view in accounts.ready(capabilities, auto_sync_only=bool(auto_sync_only))]
    actor = each_account.broker.get_actor(actor_name)
    for code in codes:
        actor.send(code, *args, **kwargs)
    logger.debug("each_account %s (%s): sent for %s", actor_name, "|".join(capabilities), codes or "no account")
    return codes


__all__ = ["PER_ACCOUNT", "check_fan_out", "each_account"]
