"""The accounts as this process sees them: looked up by code, briefly cached, with their credentials.

Every capability check asks :func:`account` (its platform's row of :data:`core.platforms.PLATFORMS`),
never a list of codes.  A credential is read from the environment when a client is built, never kept.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from sqlalchemy.exc import DBAPIError

from core.accounts import AccountError, check_base_url, check_credentials_env
from core.platforms import Platform, platform as platform_named
from db import accounts as account_rows
from runtime import resources
from runtime.settings import Settings, get_settings

#: How long a process trusts what it read of an account (an edit shows within this).
CACHE_S = 5.0


@dataclass(frozen=True)
class AccountView:
    """One account as read from PostgreSQL: what the fleet needs to sync, poll and push it."""

    code: str
    name: str
    platform: Platform
    credentials_env: str | None
    base_url: str | None
    options: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    auto_sync: bool = True

    @property
    def restocks_on_cancel(self) -> bool:
        """Whether a cancelled order gives its units back on the marketplace by itself."""
        return bool(self.options.get("restock_on_cancel", self.platform.restocks_on_cancel))

    def require(self, capability: str) -> AccountView:
        """This account if its platform has ``capability``; :class:`core.platforms.NotSupported` otherwise."""
        self.platform.require(capability, self.code)
        return self


_cache: dict[tuple[str, str], tuple[float, AccountView | None]] = {}
_cache_lock = Lock()


def view_of(row) -> AccountView:
    """An account row (:class:`db.models.Account`) as a view."""
    return AccountView(row.code, row.name, platform_named(row.platform), row.credentials_env, row.base_url,
                       dict(row.options or {}), row.enabled, row.auto_sync)


def find(code: str) -> AccountView | None:
    """The account ``code`` (cached for :data:`CACHE_S`), or None.

    While PostgreSQL cannot be reached, the last view read is used however old: a page fetch or a
    push needs no database, and an outage must not stop them.
    """
    key = (resources.database_url(), code)
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and now - cached[0] < CACHE_S:
        return cached[1]
    try:
        with resources.sessions()() as session:
            row = account_rows.get_account(session, code)
            view = view_of(row) if row is not None else None
    except DBAPIError:
        if cached is None:
            raise
        return cached[1]
    with _cache_lock:
        _cache[key] = (now, view)
    return view


def account(code: str, capability: str | None = None) -> AccountView:
    """The account ``code`` (which must have ``capability``, when given); a clear permanent error otherwise."""
    view = find(code)
    if view is None:
        raise AccountError(f"no account {code!r}: `stocksync accounts list` shows them")
    return view.require(capability) if capability else view


def every(*, capability: str | None = None, enabled_only: bool = True) -> list[AccountView]:
    """Every account (enabled ones by default), those whose platform has ``capability`` when given."""
    with resources.sessions()() as session:
        views = [view_of(row) for row in account_rows.list_accounts(session, enabled_only=enabled_only)]
    return [view for view in views if capability is None or getattr(view.platform, capability)]


def forget() -> None:
    """Drop what this process cached (after an edit it made itself, in tests)."""
    with _cache_lock:
        _cache.clear()


def credential(view: AccountView, environ: Mapping[str, str] | None = None,
               settings: Settings | None = None) -> str:
    """The account's credential, read now: its variable, or the platform's default setting.

    Raises :class:`AccountError` naming the variable (never a value) when it is not set here.
    """
    environ = os.environ if environ is None else environ
    check_credentials_env(view.credentials_env, view.platform)
    if view.credentials_env is None:
        settings = settings or get_settings()
        secret = getattr(settings, view.platform.default_credential.lower(), None)
        value = secret.get_secret_value() if secret is not None else ""
        name = view.platform.default_credential
    else:
        value, name = environ.get(view.credentials_env, ""), view.credentials_env
    if not value:
        raise AccountError(f"account {view.code}: environment variable {name} is not set in this process")
    return value


def base_url(view: AccountView, settings: Settings | None = None) -> str:
    """Where the account's API is: its own base URL (checked again here), or the platform's setting."""
    settings = settings or get_settings()
    if view.base_url is None:
        default = getattr(settings, f"{view.platform.name}_base_url", None)
        if not default:
            hint = " (set SHOPIFY_SHOP_DOMAIN or SHOPIFY_BASE_URL)" if view.platform.name == "shopify" else ""
            raise AccountError(f"account {view.code}: no base URL, and {view.platform.title} has no default{hint}")
        if view.platform.name == "shopify":
            # No vendor default: the setting alone says where the main shop's token goes, so it meets the accounts' rules.
            return check_base_url(default, view.platform, allow_loopback=settings.accounts_allow_loopback)
        return default
    return check_base_url(view.base_url, view.platform, allow_loopback=settings.accounts_allow_loopback)


def main_webhook_account(platform: str, settings: Settings | None = None
                         ) -> tuple[str, list[str], str | None] | None:
    """``(code, secrets, shop domain)`` of the main account on ``platform``, from the settings alone (no database).

    Refurbed: ``REFURBED_WEBHOOK_SECRET`` (account ``refurbed``, no domain); Shopify: ``SHOPIFY_WEBHOOK_SECRET``
    and the previous one during a rotation (account ``SHOPIFY_MARKETPLACE``), its domain
    ``SHOPIFY_SHOP_DOMAIN`` (None when unset: any shop's delivery the secret signs).  None when no secret is set.
    """
    settings = settings or get_settings()
    code, secrets, domain = {
        "refurbed": ("refurbed", [settings.refurbed_webhook_secret], None),
        "shopify": (settings.shopify_marketplace,
                    [settings.shopify_webhook_secret, settings.shopify_previous_webhook_secret],
                    settings.shopify_shop_domain or None)}.get(platform, ("", [], None))
    secrets = [secret.get_secret_value() for secret in secrets if secret.get_secret_value()]
    return (code, secrets, domain) if secrets else None


def webhook_secrets(platform: str, environ: Mapping[str, str] | None = None, settings: Settings | None = None
                    ) -> list[tuple[str, list[str], str | None]]:
    """``(code, webhook secrets, shop domain)`` of every other enabled account on ``platform`` (reads the database).

    An account's secret is the variable its ``webhook_secret_env`` option names (under the accounts'
    prefix, like its credential); accounts with none are left out.
    """
    environ = os.environ if environ is None else environ
    main = main_webhook_account(platform, settings)
    found = []
    for view in every():
        if view.platform.name != platform or (main is not None and view.code == main[0]):
            continue
        name = view.options.get("webhook_secret_env")
        try:
            secret = environ.get(name, "") if check_credentials_env(name, view.platform) else ""
        except AccountError:
            secret = ""
        if secret:
            found.append((view.code, [secret], view.options.get("shop_domain")))
    return found


def configured(view: AccountView, environ: Mapping[str, str] | None = None, settings: Settings | None = None
               ) -> bool:
    """Whether the account's credential (and, for a main account, its base URL) is set in this process (a main
    account may be left unused)."""
    try:
        credential(view, environ, settings)
        if view.base_url is None:
            base_url(view, settings)
    except AccountError:
        return False
    return True


def ready(capabilities: Iterable[str], *, auto_sync_only: bool = False,
          environ: Mapping[str, str] | None = None) -> list[AccountView]:
    """Enabled accounts whose platform has any of ``capabilities`` and whose credential is set here.

    What the scheduler's jobs run for: an account left without its credential in this process (a
    main account the seller does not use) is skipped, not sent to the dead letters every minute.
    ``auto_sync_only``: only the accounts the schedule syncs.
    """
    wanted = tuple(capabilities)
    return [view for view in every()
            if any(getattr(view.platform, name) for name in wanted)
            and (view.auto_sync or not auto_sync_only) and configured(view, environ)]


__all__ = ["AccountView", "account", "base_url", "configured", "credential", "every", "find", "forget",
           "main_webhook_account", "ready", "view_of", "webhook_secrets"]
