"""A small pure-Python model of the stock rules: stock rows kept by core/booking.py alone, in memory.

The property tests drive it side by side with the SQL booking (the same steps, the same clock)
and compare the rows; the pure tests drive it against a simulated marketplace and check the truth.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core import booking


@dataclass
class ModelRow:
    listed: int = 0
    unpushed: int = 0
    synced_at: datetime | None = None
    needs_recheck: bool = False
    pending: bool = False
    seq: int = 0
    lease: str | None = None
    pushed_at: datetime | None = None
    # The push's read: the quantity it decided, the unpushed part it carries, the seq it saw.
    planned: int | None = None
    read_quantity: int = 0
    read_at: datetime | None = None
    claimed_unpushed: int = 0
    read_seq: int = 0
    # Marketplace-side ledger rows: (event time, change).
    events: list[tuple[datetime, int]] = field(default_factory=list)


class BookingModel:
    """Stock rows of one marketplace, booked by the rules (keys, halves, snapshots, pushes)."""

    def __init__(self, *, skew: timedelta, restocks_on_cancel: bool, pushed: bool = True) -> None:
        self.skew = skew
        self.restocks = restocks_on_cancel
        self.pushed = pushed
        self.rows: dict[str, ModelRow] = {}
        self.keys: dict[str, datetime] = {}  # booked idempotency key -> event time
        self.said: dict[str, int | None] = {}  # booked key -> the restock its event recorded (a waiting cancel's)

    def row(self, sku: str) -> ModelRow:
        return self.rows.setdefault(sku, ModelRow())

    # -- events ------------------------------------------------------------------------------------

    def book(self, kind: str, sku: str, quantity: int, moment: datetime, key: str, other_key: str | None = None,
             restocked: int | None = None) -> booking.Booking | None:
        """Book one event (``restocked``: a cancellation's word on its restock); None for a duplicate."""
        row = self.row(sku)
        if key in self.keys:
            return None
        other = self.keys.get(other_key) if other_key else None
        said = restocked if other is None or kind == "order_cancelled" else self.said.get(other_key)
        decision = booking.decide_event(kind, quantity, moment, row.synced_at, skew=self.skew, other_half=other,
                                        pushed=self.pushed, restocks_on_cancel=self.restocks, restocked=said)
        self.keys[key], self.said[key] = moment, decision.restocked
        for suffix, part in decision.rows():
            settled = suffix.startswith(":settled")
            self._write(row, "order_cancelled" if settled else kind, other if settled else moment, part)
        return decision

    def _write(self, row: ModelRow, kind: str, moment: datetime, decision: booking.Booking) -> None:
        row.listed += decision.change
        row.unpushed += decision.local
        if booking.counted_by_marketplace(kind, decision.restocked, self.restocks):
            row.events.append((moment, decision.change))
        if decision.recheck:
            row.needs_recheck = True
        if decision.push:
            row.pending = True
            row.seq += 1

    # -- snapshots ---------------------------------------------------------------------------------

    def facts(self, row: ModelRow, fetched_at: datetime, quantity: int, now: datetime, owner: str | None
              ) -> booking.SnapshotFacts:
        other_push = (row.lease is not None and row.lease != owner) or (
            owner is None and row.pushed_at is not None and row.pushed_at >= fetched_at - self.skew)
        return booking.SnapshotFacts(
            listed=row.listed, unpushed=row.unpushed, synced_at=row.synced_at, needs_recheck=row.needs_recheck,
            other_push=other_push, fetched_at=fetched_at, quantity=quantity,
            newer=sum(change for t, change in row.events if t > fetched_at),
            near=sum(1 for t, _ in row.events if abs(t - fetched_at) <= self.skew))

    def snapshot(self, sku: str, fetched_at: datetime, quantity: int, now: datetime, owner: str | None = None
                 ) -> tuple[str, int]:
        """Apply a marketplace read of ``sku``; returns (state, after)."""
        row = self.row(sku)
        state, after = booking.decide_snapshot(self.facts(row, fetched_at, quantity, now, owner))
        if state == "apply":
            row.listed = after
            row.synced_at = fetched_at
            row.needs_recheck = False
        elif state == "ambiguous":
            row.needs_recheck = True
        return state, after

    # -- pushes ------------------------------------------------------------------------------------

    def claim(self, sku: str, owner: str) -> bool:
        row = self.row(sku)
        if not row.pending or (row.lease is not None and row.lease != owner):
            return False
        row.lease = owner
        return True

    def read_for_push(self, sku: str, owner: str, fetched_at: datetime, quantity: int, now: datetime
                      ) -> tuple[int, bool] | None:
        """The push's read: (quantity, whether to POST it), or None (not trusted: push later)."""
        row = self.row(sku)
        if row.planned is not None:
            since = sum(change for t, change in row.events if t > row.read_at)
            landed = booking.earlier_push_landed(quantity, planned=row.planned, read_before=row.read_quantity,
                                                 since=since, carried=row.claimed_unpushed)
            if landed:
                return row.planned, False
            row.planned = None
        state, after = self.snapshot(sku, fetched_at, quantity, now, owner=owner)
        if state != "apply":
            row.lease = None
            return None
        row.planned = booking.push_quantity(after)
        row.read_quantity, row.read_at = quantity, fetched_at
        row.claimed_unpushed = row.unpushed
        row.read_seq = row.seq
        return row.planned, True

    def confirm(self, sku: str, owner: str, now: datetime) -> bool:
        row = self.row(sku)
        if row.lease != owner:
            return False
        row.unpushed -= row.claimed_unpushed
        row.claimed_unpushed = 0
        row.planned = None
        row.lease = None
        row.pushed_at = now
        row.pending = row.seq != row.read_seq
        return not row.pending


# -- a marketplace and the truth, to drive a backend (the model, or the SQL booking) ---------------

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=__import__("datetime").timezone.utc)


@dataclass(frozen=True)
class Event:
    kind: str
    sku: str
    quantity: int
    moment: datetime
    key: str
    other_key: str | None = None
    line: str | None = None


class ModelBackend:
    """The model as a backend of :class:`World`."""

    def __init__(self, model: BookingModel) -> None:
        self.model = model

    def book(self, event: Event, now: datetime) -> str:
        decision = self.model.book(event.kind, event.sku, event.quantity, event.moment, event.key, event.other_key)
        return "duplicate" if decision is None else decision.outcome

    def snapshot(self, quantities: dict[str, int], fetched_at: datetime, now: datetime) -> None:
        for sku, quantity in quantities.items():
            self.model.snapshot(sku, fetched_at, quantity, now)

    def claim(self, sku: str, owner: str, now: datetime) -> bool:
        return self.model.claim(sku, owner)

    def read_for_push(self, sku: str, owner: str, fetched_at: datetime, quantity: int, now: datetime
                      ) -> tuple[int, bool] | None:
        return self.model.read_for_push(sku, owner, fetched_at, quantity, now)

    def confirm(self, sku: str, owner: str, now: datetime) -> None:
        self.model.confirm(sku, owner, now)

    def holds(self, sku: str, owner: str) -> bool:
        return self.model.row(sku).lease == owner

    def state(self) -> dict[str, tuple[int, bool, bool]]:
        return {sku: (row.listed, row.pending, row.needs_recheck) for sku, row in self.model.rows.items()}


#: Steps to interleave; repeats weigh them.
OPERATIONS = ("tick", "order", "order", "cancel", "cancel", "deliver", "deliver", "deliver", "redeliver", "topup",
              "manual", "fetch", "apply", "push_claim", "push_send", "push_lost", "push_confirm", "recheck")


class World:
    """A marketplace (a dict of counts), the truth, and events on their way to a backend.

    An order lowers the marketplace's count at once; a cancellation gives the units back on the
    marketplace only when it restocks.  Deliveries are late and in any order, pages are applied
    late and out of order, a push is claim → read + POST (one step: milliseconds apart) → confirm,
    with anything in between, and its answer may be lost (the same message then reads again).
    """

    def __init__(self, backend, skus: list[str], initial: list[int], *, restocks_on_cancel: bool,
                 skew: timedelta) -> None:
        self.backend = backend
        self.skus = skus
        self.restocks = restocks_on_cancel
        self.skew = skew
        self.market = dict(zip(skus, initial))
        self.real = dict(zip(skus, initial))
        self.clock = 0.0
        self.lines: dict[str, Event] = {}
        self.cancelled: set[str] = set()
        self.undelivered: list[Event] = []
        self.delivered: list[Event] = []
        self.pages: list[tuple[float, dict[str, int]]] = []
        self.pushes: dict[str, list] = {}  # sku -> [owner, stage]
        self.owners = 0
        self.references = 0
        self.log: list[str] = []

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.clock)

    def note(self, text: str) -> None:
        self.log.append(f"{self.clock:6.1f} {text}")

    def start(self) -> None:
        self.snapshot(self.clock, dict(self.market))

    def snapshot(self, fetched: float, quantities: dict[str, int]) -> None:
        self.backend.snapshot(quantities, T0 + timedelta(seconds=fetched), self.now())
        self.note(f"apply page T={fetched:.1f} {quantities} -> {self.backend.state()}")

    def deliver(self, event: Event) -> str:
        outcome = self.backend.book(event, self.now())
        self.note(f"book {event.kind} {event.sku} {event.quantity} t={(event.moment - T0).total_seconds():.1f} "
                  f"-> {outcome} {self.backend.state().get(event.sku)}")
        return outcome

    def local(self, sku: str, kind: str, change: int) -> None:
        self.real[sku] += change
        self.references += 1
        self.deliver(Event(kind, sku, change, self.now(), f"{kind}:R{self.references}"))

    def step(self, draw, operation: str) -> None:
        sku = draw("sku", self.skus)
        if operation == "tick":
            self.clock += draw("tick", (0.5, 1.0, 2.0, 3.0, 7.0))
        elif operation == "order":
            quantity = draw("quantity", (1, 1, 2, 3))
            if self.market[sku] >= quantity:  # the marketplace sells only what it lists
                self.market[sku] -= quantity
                self.real[sku] -= quantity
                line = f"L{len(self.lines)}"
                event = Event("order_created", sku, quantity, self.now(), f"{line}:order_created",
                              f"{line}:order_cancelled", line)
                self.lines[line] = event
                self.undelivered.append(event)
                self.note(f"marketplace order {line} {sku} -{quantity} (market {self.market[sku]})")
        elif operation == "cancel":
            open_lines = sorted(set(self.lines) - self.cancelled)
            if open_lines:
                placed = self.lines[draw("line", open_lines)]
                self.cancelled.add(placed.line)
                self.real[placed.sku] += placed.quantity
                if self.restocks:
                    self.market[placed.sku] += placed.quantity
                self.undelivered.append(Event("order_cancelled", placed.sku, placed.quantity, self.now(),
                                              f"{placed.line}:order_cancelled", f"{placed.line}:order_created",
                                              placed.line))
                self.note(f"marketplace cancel {placed.line} (market {self.market[placed.sku]})")
        elif operation == "deliver" and self.undelivered:
            self.delivered.append(self._deliver_one(draw))
        elif operation == "redeliver" and self.delivered:
            event = draw("delivered", self.delivered)
            before = self.backend.state()[event.sku]
            assert self.deliver(event) == "duplicate" and self.backend.state()[event.sku][0] == before[0]
        elif operation == "topup":
            self.local(sku, "topup", draw("topup", (1, 2, 5)))
        elif operation == "manual":
            change = draw("manual", (-2, -1, 1, 3))
            if self.real[sku] + change >= 0:
                self.local(sku, "manual", change)
        elif operation == "fetch":
            chosen = sorted(set(draw("page", [self.skus[:1], self.skus[1:], self.skus])))
            self.pages.append((self.clock, {s: self.market[s] for s in chosen}))
            self.note(f"fetch page {self.pages[-1][1]}")
        elif operation == "apply" and self.pages:
            self.snapshot(*self.pages.pop(draw("which page", range(len(self.pages)))))
        elif operation == "push_claim":
            self.push_claim(sku)
        elif operation == "push_send":
            self.push_send(sku)
        elif operation == "push_lost" and self.pushes.get(sku, [None, None])[1] == "landed":
            # The POST's answer was lost: the push reads the listing at once to tell whether it landed.
            self.note(f"push answer lost {sku}")
            self.pushes[sku][1] = "claimed"
            self.push_send(sku)
        elif operation == "push_confirm":
            self.push_confirm(sku)
        elif operation == "recheck":
            self.recheck(sku)

    def _deliver_one(self, draw) -> Event:
        event = self.undelivered.pop(draw("undelivered", range(len(self.undelivered))))
        assert self.deliver(event) != "duplicate"
        return event

    def push_claim(self, sku: str) -> None:
        if sku not in self.pushes:
            self.owners += 1
            owner = f"push-{self.owners}"
            if self.backend.claim(sku, owner, self.now()):
                self.pushes[sku] = [owner, "claimed"]
                self.note(f"push claimed {sku}")

    def push_send(self, sku: str) -> None:
        push = self.pushes.get(sku)
        if push and push[1] == "claimed":
            decided = self.backend.read_for_push(sku, push[0], self.now(), self.market[sku], self.now())
            if decided is None:
                if not self.backend.holds(sku, push[0]):
                    del self.pushes[sku]  # let go: a later push reads again
                self.note(f"push of {sku} deferred (read {self.market[sku]} not trusted)")
                return
            quantity, post = decided
            self.note(f"push {sku}: read {self.market[sku]}, " + (f"sent {quantity}" if post else "had landed"))
            if post:
                self.market[sku] = quantity
            push[1] = "landed"

    def push_confirm(self, sku: str) -> None:
        push = self.pushes.get(sku)
        if push and push[1] == "landed":
            self.backend.confirm(sku, push[0], self.now())
            del self.pushes[sku]
            self.note(f"push confirmed {sku} -> {self.backend.state()[sku]}")

    def recheck(self, sku: str) -> None:
        if self.backend.state()[sku][2]:
            self.snapshot(self.clock, {sku: self.market[sku]})

    def settle(self, draw) -> None:
        """Deliver everything, apply the pages left, then push and re-check until quiet."""
        self.clock += 10
        while self.undelivered:
            self.delivered.append(self._deliver_one(draw))
            self.clock += 1
        while self.pages:
            self.snapshot(*self.pages.pop(draw("which page", range(len(self.pages)))))
        for _ in range(20):
            self.clock += 3 * self.skew.total_seconds()
            for sku in list(self.pushes):
                self.push_send(sku)
                self.clock += 0.5
                self.push_confirm(sku)
            state = self.backend.state()
            for sku in self.skus:
                if state[sku][1]:
                    self.push_claim(sku)
                    self.push_send(sku)
                    self.clock += 0.5
                    self.push_confirm(sku)
            for sku in self.skus:
                self.recheck(sku)
            state = self.backend.state()
            if not self.pushes and not any(pending or flagged for _, pending, flagged in state.values()):
                return
        raise AssertionError("the world did not settle in 20 rounds\n" + "\n".join(self.log))

    def check(self) -> None:
        """Every row equals the truth (never above, never below) and the marketplace shows it."""
        state = self.backend.state()
        trace = "\n".join(self.log)
        for sku in self.skus:
            listed = state[sku][0]
            assert listed == self.real[sku], f"{sku}: local {listed}, true count {self.real[sku]}\n{trace}"
            assert self.market[sku] == max(self.real[sku], 0), (
                f"{sku}: marketplace {self.market[sku]}, true count {self.real[sku]}\n{trace}")
