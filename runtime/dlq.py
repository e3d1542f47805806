"""Dead letters of the Redis broker: find them, read them, put them back, or drop them.

Dramatiq keeps the messages it gave up on in ``<ns>:<queue>.XQ`` (a sorted set of Redis message
ids scored by the time they died, in ms) and ``<ns>:<queue>.XQ.msgs`` (id -> encoded message),
drops them after 7 days, and has no tool to read or requeue them.  The dead-letter copy is the
message as it was enqueued before its last attempt, so the final error is not in it:
:class:`runtime.failures.FailureRecorder` keeps that error beside it, and :class:`DeadLetter`
joins the two.

Retry and purge run ``dlq.lua``: for each message, in one step, it checks the dead letter is still
the one that was read, removes it and (retry) enqueues it exactly as dramatiq does, and appends an
entry to the audit stream.  Two operators retrying at once, or a crash halfway, can neither lose
nor double a message.
"""
from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import re
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

import dramatiq
from dramatiq.errors import DecodeError

from runtime.queues import BROKER_NAMESPACE

#: The script behind retry and purge, read once at import.
LUA_SOURCE = Path(__file__).with_name("dlq.lua").read_text()


def error_key(namespace: str, message_id: str) -> str:
    """The Redis key holding a dead letter's error and traceback."""
    return f"{namespace}:dead-letter-errors:{message_id}"


#: Messages moved per script call: each call holds Redis for a moment only.
MOVE_BATCH = 100

#: Messages read per round trip when listing.
READ_BATCH = 500

#: The audit stream keeps about this many entries (retries and purges), newest last.
AUDIT_MAX_ENTRIES = 10_000

#: Options a message's last life left behind; a retried message starts afresh without them.
SPENT_OPTIONS = ("retries", "traceback", "requeue_timestamp", "eta", "redis_message_id")

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
#: The longest duration ``parse_since`` takes: dead letters do not live for years, and a longer one
#: would overflow the date arithmetic.
MAX_SINCE = timedelta(days=3650)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time from ``30m``, ``2h``, ``7d`` (that long ago) or an ISO 8601 date or time (UTC if naive).

    Raises:
      ValueError: ``text`` is neither, or a duration longer than :data:`MAX_SINCE`.
    """
    now = now or datetime.now(timezone.utc)
    relative = _RELATIVE.match(text)
    if relative:
        seconds = float(relative.group(1)) * _SECONDS[relative.group(2)]
        if seconds > MAX_SINCE.total_seconds():
            raise ValueError(f"a duration must be at most {MAX_SINCE.days}d, got {text.strip()[:40]!r}")
        return now - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expected a duration like 30m, 2h, 7d or an ISO 8601 time, got {text!r}") from None
    try:
        return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    except OverflowError:  # an offset that pushes year 1 or 9999 out of range
        raise ValueError(f"{text.strip()[:40]!r} is out of the range of dates") from None


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered message, with the error :class:`~runtime.failures.FailureRecorder` kept for it.

    ``redis_id`` is its key in the dead-letter set (a new one per enqueue); ``message_id`` is
    dramatiq's id, the same across retries, by which operators name it.  ``message`` is ``None``
    when the payload cannot be decoded (it can then only be purged).
    """

    queue: str
    redis_id: str
    payload: bytes
    dead_at: datetime
    message: dramatiq.Message | None
    note: dict | None

    @property
    def message_id(self) -> str:
        """Dramatiq's message id (the Redis id when the payload cannot be decoded)."""
        return self.message.message_id if self.message else self.redis_id

    @property
    def actor_name(self) -> str:
        """The actor the message was for."""
        return self.message.actor_name if self.message else "?"

    @property
    def error(self) -> str:
        """The final error, as the failure recorder kept it."""
        if self.note and self.note.get("error"):
            return self.note["error"]
        return "(no error recorded)"

    @property
    def traceback(self) -> str:
        """The final traceback, or else the one of the attempt before it that dramatiq kept."""
        if self.note and self.note.get("traceback"):
            return self.note["traceback"]
        return (self.message.options.get("traceback") if self.message else None) or ""

    @property
    def attempts(self) -> int:
        """How many attempts failed before the message was given up."""
        if self.note and self.note.get("failed_attempts") is not None:
            return int(self.note["failed_attempts"])
        return (self.message.options.get("retries", 0) if self.message else 0) + 1

    @property
    def enqueued_at(self) -> datetime | None:
        """When the message was first enqueued (or last retried from the dead letters)."""
        if not self.message:
            return None
        return datetime.fromtimestamp(self.message.message_timestamp / 1000, timezone.utc)

    @property
    def dead_letter_retries(self) -> int:
        """How many times an operator put this message back on its queue already."""
        return int(self.message.options.get("dead_letter_retries", 0)) if self.message else 0

    def matches(self, *, actor: str | None = None, since: datetime | None = None, grep: str | None = None) -> bool:
        """Whether this dead letter passes the filters (``grep``: case-insensitive, in the message or error)."""
        if actor is not None and self.actor_name != actor:
            return False
        if since is not None and self.dead_at < since:
            return False
        if grep:
            haystack = " ".join((_text(self.payload), self.error, self.traceback)).lower()
            if grep.lower() not in haystack:
                return False
        return True

    def revived(self, redis_id: str, now_ms: int) -> bytes:
        """The payload to enqueue again: a fresh retry budget, its own queue, a new Redis id.

        The timestamp is renewed too, or an actor's ``max_age`` would dead-letter it again at once.
        """
        if self.message is None:
            raise ValueError(f"dead letter {self.redis_id} cannot be decoded; it can only be purged")
        options = {key: value for key, value in self.message.options.items() if key not in SPENT_OPTIONS}
        options["redis_message_id"] = redis_id
        options["dead_letter_retries"] = self.dead_letter_retries + 1
        return dataclasses.replace(self.message, queue_name=self.queue, message_timestamp=now_ms,
                                   options=options).encode()

    def asdict(self) -> dict:
        """Everything about this dead letter, JSON-able."""
        return {
            "message_id": self.message_id, "redis_id": self.redis_id, "queue": self.queue, "actor": self.actor_name,
            "args": list(self.message.args) if self.message else None,
            "kwargs": self.message.kwargs if self.message else None,
            "options": {k: v for k, v in self.message.options.items() if k != "traceback"} if self.message else None,
            "error": self.error, "traceback": self.traceback, "attempts": self.attempts,
            "dead_letter_retries": self.dead_letter_retries,
            "enqueued_at": self.enqueued_at.isoformat() if self.enqueued_at else None,
            "dead_at": self.dead_at.isoformat(),
            "payload": None if self.message else _text(self.payload),
        }


@dataclass(frozen=True)
class MoveResult:
    """What a retry or a purge did: the dead letters moved, and those left as they were (and why)."""

    moved: list[DeadLetter]
    skipped: list[tuple[DeadLetter, str]]


class DeadLetterQueues:
    """The dead letters of every queue of a dramatiq Redis broker.

    Parameters:
      redis(redis.Redis): A blocking Redis client on the broker's Redis.
      namespace(str): Dramatiq's key prefix.
      notes_namespace(str): The fleet's key prefix (``REDIS_NAMESPACE``): the failure recorder's
        errors and the audit stream live under it.
    """

    def __init__(self, redis, *, namespace: str = BROKER_NAMESPACE, notes_namespace: str = "stocksync") -> None:
        self.redis = redis
        self.namespace = namespace
        self.notes_namespace = notes_namespace
        self.audit_key = f"{notes_namespace}:dead-letter-audit"
        self._script = redis.register_script(LUA_SOURCE)

    def _key(self, queue: str, suffix: str = "") -> str:
        return f"{self.namespace}:{queue}{suffix}"

    def queues(self) -> list[str]:
        """The queues that have dead letters."""
        prefix, suffix = f"{self.namespace}:", ".XQ"
        found = self.redis.scan_iter(match=f"{prefix}*{suffix}", count=1000, _type="zset")
        return sorted({_text(key)[len(prefix):-len(suffix)] for key in found})

    def sizes(self) -> dict[str, int]:
        """Dead letters waiting, per queue."""
        queues = self.queues()
        with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zcard(self._key(queue, ".XQ"))
            return dict(zip(queues, pipe.execute()))

    def select(self, *, queue: str | None = None, actor: str | None = None, since: datetime | None = None,
               grep: str | None = None) -> list[DeadLetter]:
        """The dead letters that pass the filters, oldest first."""
        letters = []
        for name in [queue] if queue else self.queues():
            minimum = since.timestamp() * 1000 if since else "-inf"
            entries = self.redis.zrangebyscore(self._key(name, ".XQ"), minimum, "+inf", withscores=True)
            for start in range(0, len(entries), READ_BATCH):
                letters += self._load(name, entries[start:start + READ_BATCH])
        letters = [letter for letter in letters if letter.matches(actor=actor, since=since, grep=grep)]
        return sorted(letters, key=lambda letter: letter.dead_at)

    def _load(self, queue: str, entries: list) -> list[DeadLetter]:
        ids = [_text(redis_id) for redis_id, _ in entries]
        payloads = self.redis.hmget(self._key(queue, ".XQ.msgs"), ids)
        messages = []
        for payload in payloads:
            try:
                messages.append(dramatiq.Message.decode(payload) if payload is not None else None)
            except DecodeError:
                messages.append(None)
        # An undecodable payload's note is kept under its Redis id (it has no message id).
        note_ids = [m.message_id if m is not None else redis_id for redis_id, m in zip(ids, messages)]
        note_keys = [error_key(self.notes_namespace, ident) for ident in note_ids]
        notes = dict(zip(note_keys, self.redis.mget(note_keys))) if note_keys else {}
        letters = []
        for redis_id, (_, score), payload, message, ident in zip(ids, entries, payloads, messages, note_ids):
            if payload is None:
                continue  # moved or expired since the set was read
            note = notes.get(error_key(self.notes_namespace, ident))
            letters.append(DeadLetter(queue=queue, redis_id=redis_id, payload=payload,
                                      dead_at=datetime.fromtimestamp(score / 1000, timezone.utc), message=message,
                                      note=json.loads(note) if note else None))
        return letters

    def find(self, ident: str) -> list[DeadLetter]:
        """The dead letters whose message id or Redis id is ``ident`` (normally one)."""
        return [letter for letter in self.select() if ident in (letter.message_id, letter.redis_id)]

    def retry(self, letters: Iterable[DeadLetter], *, operator: str | None = None) -> MoveResult:
        """Put each dead letter back on its own queue with a fresh retry budget, atomically."""
        return self._move("retry", letters, operator)

    def purge(self, letters: Iterable[DeadLetter], *, operator: str | None = None) -> MoveResult:
        """Delete the dead letters for good (and their recorded errors), atomically."""
        result = self._move("purge", letters, operator)
        if result.moved:
            self.redis.delete(*{error_key(self.notes_namespace, letter.message_id) for letter in result.moved})
        return result

    def history(self, limit: int = 50) -> list[dict]:
        """The latest retries and purges, newest first."""
        entries = self.redis.xrevrange(self.audit_key, count=limit)
        return [json.loads(fields.get(b"entry") or fields.get("entry")) for _, fields in entries]

    def _move(self, command: str, letters: Iterable[DeadLetter], operator: str | None) -> MoveResult:
        operator = operator or _operator()
        by_queue: dict[str, list[DeadLetter]] = {}
        skipped: list[tuple[DeadLetter, str]] = []
        for letter in letters:
            if command == "retry" and letter.message is None:
                skipped.append((letter, "cannot be decoded: purge it instead"))
            else:
                by_queue.setdefault(letter.queue, []).append(letter)
        moved: list[DeadLetter] = []
        for queue, queued in by_queue.items():
            for start in range(0, len(queued), MOVE_BATCH):
                batch = queued[start:start + MOVE_BATCH]
                done = set(map(_text, self._script(keys=self._move_keys(queue),
                                                   args=self._move_args(command, batch, operator))))
                moved += [letter for letter in batch if letter.redis_id in done]
                skipped += [(letter, "already retried, purged or expired") for letter in batch
                            if letter.redis_id not in done]
        return MoveResult(moved=moved, skipped=skipped)

    def _move_keys(self, queue: str) -> list[str]:
        return [self._key(queue, ".XQ"), self._key(queue, ".XQ.msgs"), self._key(queue), self._key(queue, ".msgs"),
                self.audit_key]

    def _move_args(self, command: str, batch: list[DeadLetter], operator: str) -> list:
        now_ms = int(time.time() * 1000)
        args: list = [command, AUDIT_MAX_ENTRIES]
        for letter in batch:
            new_id, payload = "", b""
            if command == "retry":
                new_id = str(uuid.uuid4())
                payload = letter.revived(new_id, now_ms)
            audit = {"action": command, "at": datetime.now(timezone.utc).isoformat(), "by": operator,
                     "queue": letter.queue, "actor": letter.actor_name, "message_id": letter.message_id,
                     "dead_id": letter.redis_id, "new_id": new_id or None, "error": letter.error}
            args += [letter.redis_id, hashlib.sha1(letter.payload).hexdigest(), new_id, payload, json.dumps(audit)]
        return args


def _operator() -> str:
    """Who runs this command, for the audit stream: ``user@host``."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"
