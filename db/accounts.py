"""Accounts in PostgreSQL: add, find, list, enable and disable (plain functions on a session).

None of them commits.  An account is a ``marketplaces`` row (:class:`db.models.Account`); the rules
it must meet are in :mod:`core.accounts`, what its platform can do in :mod:`core.platforms`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from core.accounts import AccountError, check_base_url, check_code, check_credentials_env, check_options
from core.platforms import platform as platform_named
from db.models import Account, SyncRun


def get_account(session: Session, code: str) -> Account | None:
    """The account called ``code``, or None."""
    return session.scalar(select(Account).where(Account.code == code))


def require_account(session: Session, code: str) -> Account:
    """The account called ``code``; an :class:`AccountError` naming it otherwise."""
    account = get_account(session, code)
    if account is None:
        raise AccountError(f"no account {code!r}: `stocksync accounts list` shows them")
    return account


def list_accounts(session: Session, *, enabled_only: bool = False) -> list[Account]:
    """Every account by code (only the enabled ones with ``enabled_only``)."""
    query = select(Account).order_by(Account.code)
    if enabled_only:
        query = query.where(Account.enabled)
    return list(session.scalars(query))


def add_account(session: Session, *, platform: str, code: str, name: str | None = None,
                credentials_env: str | None = None, base_url: str | None = None,
                options: Mapping[str, Any] | None = None, enabled: bool = True, auto_sync: bool = True,
                allow_loopback: bool = False) -> Account:
    """Create an account.  Flushes, does not commit.

    Raises:
      AccountError: a bad code or one taken, an unknown platform, a credential variable outside the
        accounts' prefix, a base URL that is not the platform's own, or an unknown or ill-typed option.
    """
    check_code(code)
    found = platform_named(platform)
    check_credentials_env(credentials_env, found)
    base_url = check_base_url(base_url, found, allow_loopback=allow_loopback)
    options = check_options(options or {}, found)
    if found.paging is not None and credentials_env is None:
        raise AccountError(f"account {code}: give the NAME of the environment variable that holds its credential")
    if base_url is None and found.name == "shopify":  # no default host: every shop has its own
        if not options.get("shop_domain"):
            raise AccountError(f"account {code}: a Shopify account needs its base URL (https://SHOP.myshopify.com) "
                               f"or its shop_domain option")
        base_url = f"https://{options['shop_domain']}"
    if get_account(session, code) is not None:
        raise AccountError(f"an account called {code!r} exists already")
    if name and name != code and get_account(session, name) is not None:
        # Orders, pages and alerts name accounts by code: a display name that is another's code misleads.
        raise AccountError(f"name {name!r} refused: it is the code of another account")
    account = Account(code=code, name=name or code, platform=platform, credentials_env=credentials_env,
                      base_url=base_url, options=options, enabled=enabled, auto_sync=auto_sync)
    session.add(account)
    session.flush()
    return account


def set_enabled(session: Session, code: str, enabled: bool) -> Account:
    """Enable or disable the account ``code`` (a disabled account is neither synced, polled nor pushed)."""
    account = require_account(session, code)
    account.enabled = enabled
    session.flush()
    return account


def set_base_url(session: Session, code: str, base_url: str, *, allow_loopback: bool = False) -> Account:
    """Point the account ``code`` at ``base_url`` (checked as when added: its platform's hosts).  Flushes."""
    account = require_account(session, code)
    account.base_url = check_base_url(base_url, platform_named(account.platform), allow_loopback=allow_loopback)
    session.flush()
    return account


def stock_of(session: Session, code: str) -> dict[str, int]:
    """Account ``code``'s listed stock by SKU."""
    return dict(session.execute(text(
        "SELECT v.sku, s.listed FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
        "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :c"), {"c": code}).all())


def pushed_rows(session: Session, code: str) -> int:
    """How many of account ``code``'s rows the marketplace has confirmed a push of."""
    return session.execute(text(
        "SELECT count(*) FROM marketplace_stock s JOIN marketplaces m ON m.id = s.marketplace_id "
        "WHERE m.code = :c AND s.pushed_at IS NOT NULL"), {"c": code}).scalar_one()


def last_runs(session: Session, kind: str) -> dict[str, SyncRun]:
    """The latest ``kind`` run of every target that has one."""
    runs = session.scalars(select(SyncRun).from_statement(text(
        "SELECT DISTINCT ON (target) * FROM sync_runs WHERE kind = :k ORDER BY target, id DESC")
        .bindparams(k=kind)))
    return {run.target: run for run in runs}


__all__ = ["add_account", "get_account", "last_runs", "list_accounts", "pushed_rows", "require_account", "set_enabled",
           "stock_of"]
