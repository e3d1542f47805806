"""Store integrations in PostgreSQL: add, list, disable, and apply a store's stock through the snapshot path.

Plain functions on a session (none of them commits unless it says so).  A store's items reach the
stock rows of the integration's own marketplace by the same set-based statements as a Back Market
page (:func:`db.snapshot.upsert_catalogue` then :func:`db.snapshot.apply_snapshot`), so every
quantity change has its ledger row and the no-stale-snapshot rules hold for stores too.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from db import syncs
from db.snapshot import PageItem, apply_snapshot, ensure_marketplace, upsert_catalogue
from db.store_models import PLATFORMS, StoreIntegration, StoreSyncLog

#: What an environment variable's name may look like (and what a credential usually does not).
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")

#: Integration names: they are marketplace codes too.
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

#: ``sync_runs.kind`` of a store sync (its ``target`` is the integration's name).
SYNC_KIND = "store"

#: The listings' ``prices`` key of store items (stores' prices are not read).
PRICE_KEY = "store"


class StoreError(ValueError):
    """A store integration request that cannot be carried out (unknown platform, bad name, ...).

    Permanent: retrying the same request fails the same way.  The message never holds a credential.
    """

    permanent = True


class StoreItemLike(Protocol):
    """What :func:`apply_store_batch` reads of an item (``clients.stores.StoreItem``)."""

    sku: str
    quantity: int
    external_id: str
    title: str | None


@dataclass(frozen=True)
class StoreCounts:
    """What applying store items did: items seen, stock rows created, updated and skipped."""

    items: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0

    def __add__(self, other: StoreCounts) -> StoreCounts:
        return StoreCounts(self.items + other.items, self.created + other.created, self.updated + other.updated,
                           self.skipped + other.skipped)


def check_platform(platform: str) -> str:
    """``platform`` if an adapter exists for it; a :class:`StoreError` naming the known ones otherwise."""
    if platform not in PLATFORMS:
        raise StoreError(f"unknown platform {platform!r}: expected one of {', '.join(PLATFORMS)}")
    return platform


def check_credentials_env(name: str, environ: Mapping[str, str] | None = None, *, require_set: bool = True) -> str:
    """``name`` if it is an environment variable's name (and, with ``require_set``, set and not empty).

    The error never repeats ``name`` when it does not look like a name: it may be the secret itself.
    """
    if not name or not ENV_NAME.match(name):
        raise StoreError("the credentials must be given as the NAME of an environment variable (A-Z, 0-9 and _, "
                         "e.g. SHOPIFY_EU_TOKEN), never as the secret itself")
    environ = os.environ if environ is None else environ
    if require_set and not environ.get(name):
        raise StoreError(f"environment variable {name} is not set (or empty): export it where the workers run, "
                         f"then add the store")
    return name


def check_name(name: str) -> str:
    """``name`` if it can name an integration (and its marketplace code)."""
    if not NAME.match(name or ""):
        raise StoreError(f"store name {name!r} refused: use 1-64 of a-z, 0-9, '.', '_', '-' (it is also the "
                         f"marketplace code), starting with a letter or digit")
    return name


def resolve_credentials(integration: StoreIntegration, environ: Mapping[str, str] | None = None) -> str:
    """The credential of ``integration``, read from its environment variable now.

    Raises:
      StoreError: The variable is not set in this process (the error names the variable, never a value).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(integration.credentials_env, "")
    if not value:
        raise StoreError(f"store {integration.name}: environment variable {integration.credentials_env} is not set "
                         f"in this worker's environment")
    return value


def add_integration(session: Session, *, platform: str, name: str, credentials_env: str, base_url: str | None = None,
                    active: bool = True, auto_sync: bool = True, environ: Mapping[str, str] | None = None
                    ) -> StoreIntegration:
    """Create an integration and its marketplace (code = ``name``).  Flushes, does not commit.

    Raises:
      StoreError: Unknown platform, bad name, a credential variable that is not a name or not set, a
        base URL that is not http(s), or a name already taken.
    """
    check_platform(platform)
    check_name(name)
    check_credentials_env(credentials_env, environ)
    if base_url is not None and not re.match(r"^https?://[^\s/]+", base_url):
        raise StoreError(f"base URL {base_url!r} refused: expected http(s)://host[:port][/path]")
    if session.scalar(select(StoreIntegration.id).where(StoreIntegration.name == name)) is not None:
        raise StoreError(f"a store named {name!r} exists already")
    marketplace_id = ensure_marketplace(session, name, f"{name} ({platform})")
    integration = StoreIntegration(platform=platform, name=name, credentials_env=credentials_env,
                                   base_url=base_url.rstrip("/") if base_url else None, marketplace_id=marketplace_id,
                                   active=active, auto_sync=auto_sync)
    session.add(integration)
    session.flush()
    return integration


def get_integration(session: Session, integration_id: int) -> StoreIntegration | None:
    """The integration with this id, fresh from the database."""
    return session.scalar(select(StoreIntegration).where(StoreIntegration.id == integration_id)
                          .execution_options(populate_existing=True))


def find_integration(session: Session, name: str) -> StoreIntegration:
    """The integration named ``name``; :class:`StoreError` when there is none."""
    integration = session.scalar(select(StoreIntegration).where(StoreIntegration.name == name)
                                 .execution_options(populate_existing=True))
    if integration is None:
        raise StoreError(f"no store named {name!r} (see `stocksync stores list`)")
    return integration


def list_integrations(session: Session) -> list[tuple[StoreIntegration, StoreSyncLog | None]]:
    """Every integration by name, with its latest sync log (or ``None``)."""
    latest = (select(func.max(StoreSyncLog.id)).where(StoreSyncLog.integration_id == StoreIntegration.id)
              .correlate(StoreIntegration).scalar_subquery())
    rows = session.execute(select(StoreIntegration, StoreSyncLog)
                           .outerjoin(StoreSyncLog, StoreSyncLog.id == latest)
                           .order_by(StoreIntegration.name)).all()
    return [(row[0], row[1]) for row in rows]


def set_active(session: Session, name: str, active: bool) -> StoreIntegration:
    """Enable or disable the integration ``name`` (a disabled one never syncs).  Does not commit."""
    integration = find_integration(session, name)
    session.execute(update(StoreIntegration).where(StoreIntegration.id == integration.id)
                    .values(active=active, updated_at=func.now()))
    session.flush()
    return find_integration(session, name)


def auto_sync_ids(session: Session) -> list[int]:
    """Ids of the integrations the schedule syncs: active and ``auto_sync``."""
    return list(session.scalars(select(StoreIntegration.id)
                                .where(StoreIntegration.active.is_(True), StoreIntegration.auto_sync.is_(True))
                                .order_by(StoreIntegration.id)))


def recent_logs(session: Session, integration_id: int, limit: int = 10) -> list[StoreSyncLog]:
    """The integration's latest sync logs, newest first."""
    return list(session.scalars(select(StoreSyncLog).where(StoreSyncLog.integration_id == integration_id)
                                .order_by(StoreSyncLog.id.desc()).limit(limit)
                                .execution_options(populate_existing=True)))


def get_log(session: Session, log_id: int) -> StoreSyncLog | None:
    """One sync log, fresh from the database."""
    return session.scalar(select(StoreSyncLog).where(StoreSyncLog.id == log_id)
                          .execution_options(populate_existing=True))


def start_log(session: Session, *, integration_id: int, sync_run_id: int | None, trigger: str) -> int:
    """Open a ``running`` sync log; return its id.  Does not commit."""
    log = StoreSyncLog(integration_id=integration_id, sync_run_id=sync_run_id, trigger=trigger[:16], status="running")
    session.add(log)
    session.flush()
    return log.id


def finish_log(session: Session, log_id: int, counts: StoreCounts, *, api_calls: int = 0, pages: int = 0) -> None:
    """Close a sync log as succeeded with its counts, and its ``sync_runs`` row too.  Does not commit."""
    now = datetime.now(timezone.utc)
    sync_run_id = session.execute(text(
        "UPDATE store_sync_logs SET status = 'succeeded', finished_at = :now, items = :i, created = :c, "
        "updated = :u, skipped = :s, api_calls = :a WHERE id = :id RETURNING sync_run_id"),
        {"now": now, "i": counts.items, "c": counts.created, "u": counts.updated, "s": counts.skipped,
         "a": api_calls, "id": log_id}).scalar_one()
    if sync_run_id is not None:
        syncs.succeed_run(session, sync_run_id, finished_at=now, heartbeat_at=now, total_pages=pages,
                          pages_done=pages, items=counts.items, total_items=counts.items,
                          changed=counts.created + counts.updated, unchanged=counts.skipped, api_calls=api_calls,
                          retries=max(api_calls - pages, 0))


def fail_log(session: Session, log_id: int, error: str, *, api_calls: int = 0) -> None:
    """Mark a sync log (and its ``sync_runs`` row) failed with ``error``.  Commits."""
    now = datetime.now(timezone.utc)
    sync_run_id = session.execute(text(
        "UPDATE store_sync_logs SET status = 'failed', finished_at = :now, errors = :e, api_calls = :a "
        "WHERE id = :id AND status = 'running' RETURNING sync_run_id"),
        {"now": now, "e": error[:4000], "a": api_calls, "id": log_id}).scalar()
    if sync_run_id is not None:
        syncs.fail_run(session, sync_run_id, error, commit=False, api_calls=api_calls)
    session.commit()


def heartbeat(session: Session, sync_run_id: int, pages: int) -> None:
    """Say a store sync is alive (so it is not abandoned as stale) and how many pages it has read.  Commits."""
    syncs.heartbeat(session, sync_run_id, pages_done=pages)
    session.commit()


def apply_store_batch(session: Session, *, marketplace_id: int, sync_id: int, batch: int, fetched_at: datetime,
                      items: Iterable[StoreItemLike], actor: str, skew: timedelta | None = None) -> StoreCounts:
    """Apply one page of a store's items to the marketplace's stock rows, as of ``fetched_at``.  Does not commit.

    Items without a SKU are skipped.  The rest go through the snapshot path: variations, listings
    and missing stock rows upserted (:func:`db.snapshot.upsert_catalogue`), then every stock row set
    to the store's quantity plus the local events after ``fetched_at`` with one ``sync`` ledger row
    per change (:func:`db.snapshot.apply_snapshot`; key ``store:<sync>:<batch>:<stock id>``).
    ``created`` counts stock rows that did not exist before, ``updated`` existing rows whose quantity
    changed, ``skipped`` the rest (unchanged, or left alone by the no-stale-snapshot rules) plus the
    items without a SKU.
    """
    items = list(items)
    with_sku = [item for item in items if item.sku]
    no_sku = len(items) - len(with_sku)
    # One listing per store id (a page may repeat one when the store shifts under the walk).
    unique: Sequence[StoreItemLike] = list({item.external_id: item for item in with_sku}.values())
    if not unique:
        return StoreCounts(items=len(items), skipped=no_sku)
    skus = [item.sku for item in unique]
    existing = set(session.scalars(text(
        "SELECT s.id FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
        "WHERE s.marketplace_id = :mp AND v.sku = ANY(CAST(:sku AS text[]))"), {"mp": marketplace_id, "sku": skus}))
    page_items = [PageItem(external_id=item.external_id[:64], legacy_id=None, sku=item.sku, title=item.title,
                           quantity=item.quantity, publication_state=None, price=None, currency=None)
                  for item in unique]
    upsert_catalogue(session, marketplace_id=marketplace_id, sync_id=sync_id, fetched_at=fetched_at,
                     items=page_items, language=PRICE_KEY)
    rows = apply_snapshot(session, marketplace_id=marketplace_id, fetched_at=fetched_at, skus=skus,
                          quantities=[item.quantity for item in unique], key_prefix=f"store:{sync_id}:{batch}:",
                          sync_id=sync_id, actor=actor, skew=skew)
    created = sum(row.stock_id not in existing for row in rows)
    updated = sum(row.stock_id in existing and row.state == "apply" and row.after != row.before for row in rows)
    return StoreCounts(items=len(items), created=created, updated=updated,
                       skipped=len(rows) - created - updated + no_sku)


__all__ = ["ENV_NAME", "SYNC_KIND", "StoreCounts", "StoreError", "add_integration", "apply_store_batch",
           "auto_sync_ids", "check_credentials_env", "check_name", "check_platform", "fail_log", "find_integration",
           "finish_log", "get_integration", "get_log", "heartbeat", "list_integrations", "recent_logs",
           "resolve_credentials", "set_active", "start_log"]
