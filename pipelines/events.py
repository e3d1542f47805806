"""Stock events after booking: push a row, re-check a flagged row, sweep what a crash left (plain functions).

``actors/events.py`` calls these and enqueues what they ask for.  The one non-obvious rule: a
push reads the listing first (one GET) and sends what that read, applied with the stock rules,
gives; when the read cannot be trusted (an event within the clock skew) nothing is sent and
the push is tried again later.
"""
from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from clients.adapters import ListingRead
from clients.errors import NotFound
from core.events import LOCAL_CHANGE_TYPES
from core.push_log import PushState
from db import events as stock_events
from db.snapshot import apply_recheck
from pipelines import push_log
from runtime import accounts, resources
from runtime.clients import account_limiter, catalogue_adapter
from runtime.settings import Settings, get_settings
from sqlalchemy import text

logger = logging.getLogger(__name__)

def readable(marketplace: str) -> bool:
    """Whether one listing of ``marketplace`` can be read back (a re-check, a push's read-before-write)."""
    found = accounts.find(marketplace)
    return found is not None and found.enabled and found.platform.read_one


def pushed(marketplace: str) -> bool:
    """Whether a local change on ``marketplace`` is sent there as an absolute quantity."""
    found = accounts.find(marketplace)
    return found is not None and found.platform.push


def not_restocking(settings: Settings | None = None, codes=()) -> frozenset[str]:
    """Accounts whose cancellations are local changes (they do not restock by themselves).

    ``STOCK_NOT_RESTOCKING`` names some; an account's own ``restock_on_cancel`` option (or its
    platform's default) names the others among ``codes``.
    """
    raw = (settings or get_settings()).stock_not_restocking
    named = {code.strip() for code in raw.split(",") if code.strip()}
    for code in codes:
        found = accounts.find(code)
        if found is not None and not found.restocks_on_cancel:
            named.add(code)
    return frozenset(named)


def restocks(marketplace: str, settings: Settings | None = None) -> bool:
    return marketplace not in not_restocking(settings, (marketplace,))


def check_accounts(events) -> None:
    """Refuse events whose account does not exist, or a local change an account cannot receive.

    A top-up on an account stocksync cannot push would be erased by the next sync (or never reach
    the marketplace): it is refused with a clear error, never kept silently.
    """
    for event in events:
        found = accounts.account(event.marketplace)
        if event.change_type in LOCAL_CHANGE_TYPES and not found.platform.takes_local_changes:
            found.require("push")


def skew(settings: Settings | None = None) -> timedelta:
    return timedelta(seconds=(settings or get_settings()).stock_event_skew_s)


def recheck_delay_ms(settings: Settings | None = None, attempt: int = 1) -> int:
    """When to read a flagged row again: once the ambiguous moment is further than the skew, backing off."""
    return min(int(2 * skew(settings).total_seconds() * 1000) + 1000 * attempt, 60_000)


def push_lease(settings: Settings | None = None) -> timedelta:
    """How long a push holds its row: longer than the longest push (every HTTP attempt timing out,
    with the client's backoffs), since a lease that ends while its POST may still land would let an
    older quantity land last."""
    settings = settings or get_settings()
    attempts = settings.backmarket_http_attempts
    return timedelta(seconds=settings.backmarket_timeout_s * attempts + 30 * (attempts - 1) + 30)


def book_events(events: list[stock_events.StockEvent], sessions=None) -> list[stock_events.EventResult]:
    """Book validated events in one transaction (the one booking path); ``sessions``: default the process's."""
    settings = get_settings()
    check_accounts(events)
    codes = sorted({event.marketplace for event in events})
    with (sessions or resources.sessions())() as session:
        results = stock_events.record_stock_events(session, events, skew=skew(settings),
                                                   not_restocking=not_restocking(settings, codes))
        session.commit()
    return results


@dataclass(frozen=True)
class PushOutcome:
    """What a push did with one row: ``nothing`` to push, ``busy`` (another push holds the row),
    ``deferred`` (the read could not be trusted, or an order came after it: push later), ``pushed``,
    ``pending`` (a change came after the read: push again), or ``failed`` (``error``: the row's own,
    kept on the row with its lease, as a failed single push leaves it)."""

    status: str
    quantity: int | None = None
    #: Whether the row's line was written (a line of the marketplace's data limit was used).
    posted: bool = False
    error: BaseException | None = None


class PairedSlots:
    """Two slots of the catalog quota taken at once, so that a push's GET and POST go milliseconds apart.

    An absolute POST erases any order the marketplace took between our read and its landing: the
    POST must not wait for the quota after the read.  Both are granted together (urgent, ahead of
    a walk's page fetches) or neither.
    """

    def __init__(self, make_limiter, *, max_wait_s: float = 120.0, pool: "PairPool | None" = None) -> None:
        self._make_limiter = make_limiter
        self._limiter = None
        self.max_wait_s = max_wait_s
        self.pool = pool
        self.held: list[str] = []
        self.last_slot: str | None = None

    @property
    def limiter(self):
        # Made on first use, on the worker loop: its Redis client belongs to that loop.
        if self._limiter is None:
            self._limiter = self._make_limiter()
        return self._limiter

    async def take_two(self) -> None:
        if self.pool is not None:
            if not self.pool.pairs and self.pool.wanted > 1:
                await self.pool.fill(self)
            if self.pool.pairs:
                self.held = self.pool.pairs.pop(0)
                # They count from now, when the read leaves; a pair held past its window has left it: take another.
                if await self.limiter.restamp(self.held) == len(self.held):
                    return
        self.held = await self.take(2)

    async def take(self, count: int) -> list[str]:
        """``count`` slots granted together, urgently (ahead of page fetches), waiting up to ``max_wait_s``.

        A quota smaller than ``count`` (one call a window) grants what it holds: the calls left wait for
        the next window in :meth:`acquire`, as they must (a limit of 1 refuses a grant of 2 for good).
        """
        count = min(count, self.limiter.limit)
        # Urgent: a walk's page fetches must not take every slot a window frees while a push waits.
        loop = asyncio.get_running_loop()
        started, member = loop.time(), uuid.uuid4().hex
        while True:
            granted, wait_s = await self.limiter.try_acquire(count, urgent=True, member=member)
            if granted:
                return list(self.limiter.last_slots)
            if loop.time() - started + wait_s > self.max_wait_s:
                await self.limiter.withdraw(member, count)
                raise TimeoutError(f"no {count} free slots of {self.limiter.name} in {self.max_wait_s:.0f}s")
            await asyncio.sleep(wait_s + random.uniform(0, 0.05))

    async def acquire(self) -> float:
        if self.held:
            self.last_slot = self.held.pop(0)
            return 0.0
        waited = await self.limiter.acquire()
        self.last_slot = self.limiter.last_slot
        return waited

    async def penalize(self, seconds: float) -> None:
        await self.limiter.penalize(seconds)

    async def refund(self, slot: str) -> bool:
        return await self.limiter.refund(slot)


class PairPool:
    """The read-and-write pairs of several one-row pushes of a drain, taken in one urgent grant.

    During a walk every window's slots go at its start; one pair per push, each waiting for a window,
    pushes one row per window.  A drain with ``wanted`` rows takes up to ``MAX_POOLED_SHARE`` of the
    quota's pairs at once; each pair is stamped when its read leaves (:meth:`FleetRateLimiter.restamp`),
    and the pairs left over are given back (:meth:`release`).
    """

    #: The share of an account's quota one drain may reserve in one grant (the walk keeps the rest).
    MAX_POOLED_SHARE = 0.5

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self.pairs: list[list[str]] = []
        self._limiter = None

    async def fill(self, slots: PairedSlots) -> None:
        limiter = self._limiter = slots.limiter
        count = max(1, min(self.wanted, int(limiter.limit * self.MAX_POOLED_SHARE) // 2))
        taken = await slots.take(2 * count)
        self.pairs = [taken[index:index + 2] for index in range(0, len(taken), 2)]
        self.wanted -= count

    async def release(self) -> None:
        """Give back the pairs no push used."""
        if self._limiter is not None:
            for pair in self.pairs:
                for slot in pair:
                    await self._limiter.refund(slot)
        self.pairs = []


async def read_listings(marketplace: str, listings: list[str], slots: PairedSlots | None = None
                        ) -> tuple[datetime, int]:
    """The account's quantity of a row (its listings summed), as of when the first request left."""
    if slots is not None:
        await slots.take_two()
    fetched_at = datetime.now(timezone.utc)
    # Built here, on the loop: the HTTP session belongs to the loop that runs the request.
    adapter = catalogue_adapter(accounts.account(marketplace, "read_one"), limiter=slots)
    return fetched_at, await adapter.read_quantity(listings)


async def _read_for_push(marketplace: str, listings: list[str], slots: PairedSlots) -> tuple[datetime, dict[str, int]]:
    """Each listing's quantity (one call for a batch), as of when the request left, on the pair of slots."""
    await slots.take_two()
    fetched_at = datetime.now(timezone.utc)
    adapter = catalogue_adapter(accounts.account(marketplace, "push"), limiter=slots)
    return fetched_at, await adapter.read_quantities(listings)


async def _send_quantities(marketplace: str, quantities: list[tuple[str, int]], slots: PairedSlots) -> dict:
    adapter = catalogue_adapter(accounts.account(marketplace, "push"), limiter=slots)
    return await adapter.set_quantities(quantities)


def push_rows(marketplace: str, skus: list[str], owner: str, *, lease: timedelta,
              pool: PairPool | None = None) -> list[PushOutcome]:
    """Push rows of ``marketplace``: claim each, read their listings, decide each with the rules, write, confirm.

    The one push path: up to the adapter's ``push_batch`` rows read in one call and written in one
    (a batch of one is a single read and POST), the write sent at once after the read, on a pair of
    quota slots taken together.  A row whose plan a marketplace event moved between the read and
    the write is not sent (:func:`db.events.moved_since_read`).  Per row, in ``skus``' order: a
    :class:`PushOutcome`; a row that cannot be pushed (:class:`db.events.PushImpossible`) or whose
    line failed on its own is ``failed`` with its error.  Raises what the read or the write raise
    for the whole batch; a failed write keeps the leases (it may still land) and the error on the rows.
    """
    settings = get_settings()
    sessions = resources.sessions()
    outcomes: dict[str, PushOutcome] = {}
    claims: list[stock_events.PushClaim] = []
    for sku in skus:
        try:
            with sessions() as session:
                stock_id = stock_events.find_stock_id(session, marketplace, sku)
                if stock_id is None:
                    raise stock_events.PushImpossible(f"no stock row for sku {sku!r} on {marketplace}")
                claim = stock_events.claim_push(session, stock_id, owner, lease=lease)
                if claim is not None and not claim.needed:
                    push_log.note(session, PushState.SUPERSEDED, stock_ids=[stock_id], start=False,
                                  note="another push had sent the latest change")
                session.commit()
        except stock_events.PushImpossible as impossible:
            outcomes[sku] = PushOutcome("failed", error=impossible)
            continue
        if claim is None or not claim.needed:
            outcomes[sku] = PushOutcome("busy" if claim is None else "nothing")
        else:
            claims.append(claim)
    if claims and accounts.account(marketplace, "push").platform.compare_and_set:
        outcomes.update({claim.sku: _compare_and_set(marketplace, claim, owner, settings) for claim in claims})
    elif claims:
        outcomes.update(_read_decide_write(marketplace, claims, owner, settings, pool))
    return [outcomes[sku] for sku in skus]


def _compare_and_set(marketplace: str, claim, owner: str, settings: Settings) -> PushOutcome:
    """Push one row to a marketplace with a compare-and-set (Shopify): read, decide, write if unchanged.

    One read and one write: the write compares on what the read found (the levels as the marketplace
    holds them, :meth:`clients.adapters.CatalogueAdapter.read_listing`), never reading again; when the
    marketplace refuses it (an order landed since the read, nothing written), the plan is forgotten and
    the row read and decided again, up to ``SHOPIFY_PUSH_ATTEMPTS`` writes, then ``deferred`` to a later
    drain.  No paired slots: the compare makes the time between the read and the write harmless.
    """
    sessions = resources.sessions()
    attempts = settings.shopify_push_attempts
    try:
        for attempt in range(1, attempts + 1):
            fetched_at, read = resources.run_on_worker_loop(lambda: _read_compared(marketplace, claim.listing))
            quantity = read.quantity
            with sessions() as session:
                plan = stock_events.read_for_push(session, claim, fetched_at=fetched_at, quantity=quantity,
                                                  skew=skew(settings),
                                                  restocks_on_cancel=restocks(marketplace, settings))
                if plan is None:
                    _log(session, claim, PushState.WAITING, quantity,
                         note="read within the clock skew of a change: read again later")
                elif plan.post:
                    _log(session, claim, PushState.SENT, quantity, plan.quantity)
                session.commit()
            if plan is None:
                return PushOutcome("deferred")
            if not plan.post or resources.run_on_worker_loop(lambda: _send_compared(
                    marketplace, claim.listing, plan.quantity, read,
                    f"gid://stocksync/StockPush/{claim.stock_id}-{fetched_at.timestamp():.0f}")):
                break
            logger.info("push of %s on %s refused (stock changed since the read of %d): attempt %d of %d",
                        claim.sku, marketplace, quantity, attempt, attempts)
            with sessions() as session:
                stock_events.forget_refused_push(session, claim)
                _log(session, claim, PushState.REFUSED, quantity, plan.quantity,
                     note="the marketplace's count was not the one read (an order came): read again")
                session.commit()
        else:
            with sessions() as session:
                _log(session, claim, PushState.WAITING, quantity,
                     note=f"refused {attempts} times: a later drain reads again")
                session.commit()
            return PushOutcome("deferred")  # the drain gives the row back for a later read
    except BaseException as error:
        # The lease stays: a retry of this message takes it back and its read tells whether we landed.
        _note_errors([claim], owner, {claim.stock_id: error})
        raise
    with sessions() as session:
        up_to_date = stock_events.finish_push(session, claim)
        _log(session, claim, PushState.CONFIRMED if up_to_date else PushState.SUPERSEDED, quantity, plan.quantity,
             note=None if up_to_date else "a newer local change came after its read")
        session.commit()
    logger.info("pushed %s on %s: quantity %d (read %d)", claim.sku, marketplace, plan.quantity, quantity)
    return PushOutcome("pushed" if up_to_date else "pending", plan.quantity, posted=plan.post)


async def _read_compared(marketplace: str, listing: str) -> tuple[datetime, ListingRead]:
    """A compare-and-set push's one read of ``listing``, as of when the request left."""
    fetched_at = datetime.now(timezone.utc)
    adapter = catalogue_adapter(accounts.account(marketplace, "push"))
    return fetched_at, await adapter.read_listing(listing)


async def _send_compared(marketplace: str, listing: str, quantity: int, read: ListingRead, reference: str) -> bool:
    # The write compares on what the push's read found: no second read (the marketplace refuses it if stale).
    adapter = catalogue_adapter(accounts.account(marketplace, "push"))
    return await adapter.set_quantity(listing, quantity, read.quantity, reference=reference, basis=read.basis)


def _read_decide_write(marketplace: str, claims: list, owner: str, settings: Settings,
                       pool: PairPool | None = None) -> dict[str, PushOutcome]:
    sessions = resources.sessions()
    view = accounts.account(marketplace, "push")
    slots = PairedSlots(lambda: account_limiter(view), pool=pool)
    outcomes: dict[str, PushOutcome] = {}
    failed: dict[int, BaseException] = {}
    try:
        fetched_at, quantities = resources.run_on_worker_loop(
            lambda: _read_for_push(marketplace, [claim.listing for claim in claims], slots))
        plans: dict[str, stock_events.PushPlan] = {}
        with sessions() as session:  # in id order, as bookings lock rows
            for claim in sorted(claims, key=lambda claim: claim.stock_id):
                if claim.listing not in quantities:
                    failed[claim.stock_id] = NotFound(f"{marketplace} listing {claim.listing} ({claim.sku}) was not "
                                                      "in the read", api=view.platform.name)
                    continue
                plan = stock_events.read_for_push(
                    session, claim, fetched_at=fetched_at, quantity=quantities[claim.listing], skew=skew(settings),
                    restocks_on_cancel=restocks(marketplace, settings))
                if plan is None:
                    outcomes[claim.sku] = PushOutcome("deferred")
                    _log(session, claim, PushState.WAITING, quantities[claim.listing],
                         note="read within the clock skew of a change: read again later")
                else:
                    plans[claim.sku] = plan
            session.commit()
        by_sku = {claim.sku: claim for claim in claims}
        to_send = {sku: plan for sku, plan in plans.items() if plan.post}
        if to_send:
            with sessions() as session:
                moved = stock_events.moved_since_read(
                    session, owner, {by_sku[sku].stock_id: plan.seen for sku, plan in to_send.items()})
                for sku in [sku for sku in to_send if by_sku[sku].stock_id in moved]:
                    stock_events.drop_push_plan(session, by_sku[sku])
                    outcomes[sku] = PushOutcome("deferred")
                    _log(session, by_sku[sku], PushState.WAITING, quantities[by_sku[sku].listing],
                         note="an order came after the read: read again later")
                    del plans[sku], to_send[sku]
                for sku, plan in to_send.items():
                    _log(session, by_sku[sku], PushState.SENT, quantities[by_sku[sku].listing], plan.quantity)
                session.commit()
        lines = [(by_sku[sku].listing, plan.quantity) for sku, plan in to_send.items()]
        if lines:
            line_errors = resources.run_on_worker_loop(lambda: _send_quantities(marketplace, lines, slots))
            failed.update({by_sku[sku].stock_id: line_errors[by_sku[sku].listing] for sku in to_send
                           if by_sku[sku].listing in line_errors})
    except BaseException as error:
        # The leases stay: a retry of this message takes them back and its read tells whether we landed.
        _note_errors(claims, owner, dict.fromkeys((claim.stock_id for claim in claims), error))
        raise
    _note_errors(claims, owner, failed)
    for claim in claims:
        if claim.stock_id in failed:
            outcomes[claim.sku] = PushOutcome("failed", posted=claim.sku in to_send, error=failed[claim.stock_id])
    confirmed = [claim for claim in claims if claim.sku in plans and claim.stock_id not in failed]
    with sessions() as session:
        up_to_date = {claim.sku: stock_events.finish_push(session, claim) for claim in confirmed}
        for claim in confirmed:
            fresh = up_to_date[claim.sku]
            _log(session, claim, PushState.CONFIRMED if fresh else PushState.SUPERSEDED, quantities[claim.listing],
                 plans[claim.sku].quantity, note=None if fresh else "a newer local change came after its read")
        session.commit()
    for claim in confirmed:
        plan = plans[claim.sku]
        logger.info("pushed %s on %s: quantity %d (read %d)", claim.sku, marketplace, plan.quantity,
                    quantities[claim.listing])
        outcomes[claim.sku] = PushOutcome("pushed" if up_to_date[claim.sku] else "pending", plan.quantity,
                                          posted=plan.post)
    return outcomes


def _note_errors(claims: list, owner: str, errors: dict[int, BaseException]) -> None:
    if errors:
        with resources.sessions()() as session:
            for stock_id, error in errors.items():
                said = f"{type(error).__name__}: {error}"
                stock_events.note_push_error(session, stock_id, owner, said)
                push_log.note(session, PushState.RETRIED, stock_ids=[stock_id], error=said)
            session.commit()


def _log(session, claim: stock_events.PushClaim, state: PushState, quantity_read: int,
         quantity_sent: int | None = None, note: str | None = None) -> None:
    """Record ``state`` of ``claim``'s push in the push log (in ``session``'s transaction)."""
    push_log.note(session, state, stock_ids=[claim.stock_id], quantity_read=quantity_read, quantity_sent=quantity_sent,
                  note=note, owner=claim.owner)


_FLAGGED_ROW = text(
    "SELECT s.id, s.marketplace_id, s.needs_recheck, " + stock_events.ROW_LISTINGS + " "
    "FROM marketplace_stock s JOIN variations v ON v.id = s.variation_id "
    "JOIN marketplaces m ON m.id = s.marketplace_id WHERE m.code = :mp AND v.sku = :sku")


def recheck_row(marketplace: str, sku: str, *, refresh: bool = False) -> str:
    """Read a flagged row's listing(s) again (any row, with ``refresh``) and apply the read with the rules.

    Returns ``resolved`` (applied), ``clear`` (nothing to re-check), or ``again`` (the read could
    not be trusted yet: read again later).
    """
    if not readable(marketplace):
        return "clear"
    settings = get_settings()
    with resources.sessions()() as session:
        row = session.execute(_FLAGGED_ROW, {"mp": marketplace, "sku": sku}).first()
    if row is None or not (row.needs_recheck or refresh) or not row.listings:
        return "clear"
    return read_and_apply(marketplace, row.marketplace_id, sku, list(row.listings), settings)


def read_and_apply(marketplace: str, marketplace_id: int, sku: str, listings: list[str],
                   settings: Settings | None = None) -> str:
    """Read a row's listings (waiting for the catalog quota) and apply the read with the rules: ``resolved`` or ``again``."""
    settings = settings or get_settings()
    fetched_at, quantity = resources.run_on_worker_loop(lambda: read_listings(marketplace, listings))
    with resources.sessions()() as session:
        rows = apply_recheck(session, marketplace_id=marketplace_id, fetched_at=fetched_at,
                             quantities={sku: quantity}, skew=skew(settings),
                             restocks_on_cancel=restocks(marketplace, settings))
        session.commit()
    return "resolved" if rows and all(r.state == "apply" for r in rows) else "again"


def retry_push(marketplace: str, sku: str) -> bool:
    """Put ``sku``'s ``failed`` push on ``marketplace`` back in line (an operator's retry); True if it was failed."""
    with resources.sessions()() as session:
        changed = stock_events.retry_failed_pushes(session, marketplace, failed_before=datetime.now(timezone.utc),
                                                   sku=sku)
        push_log.note(session, PushState.RETRIED, back_in_line=marketplace, sku=sku, note="retried by an operator")
        session.commit()
    return bool(changed)


def sweep(marketplace: str) -> tuple[int, int]:
    """``(rows to re-check, rows to push)`` of ``marketplace`` that wait; ``failed`` pushes of over a minute
    ago go back in line first (a push that failed for good is tried again at each sweep), and pushes
    that ended over ``PUSH_LOG_RETENTION_DAYS`` ago leave the push log."""
    now = datetime.now(timezone.utc)
    with resources.sessions()() as session:
        if pushed(marketplace):
            stock_events.retry_failed_pushes(session, marketplace, failed_before=now - timedelta(minutes=1))
            push_log.note(session, PushState.RETRIED, back_in_line=marketplace, note="retried by the sweep")
        push_log.prune(session, marketplace, get_settings().push_log_retention_days, now)
        session.commit()
        flagged = stock_events.rows_to_recheck(session, marketplace, older_than=now - 2 * skew())
        pending = stock_events.push_backlog(session, marketplace).get(marketplace, 0)
    rechecks = len(flagged) if readable(marketplace) else 0
    pushes = pending if pushed(marketplace) else 0
    return rechecks, pushes
