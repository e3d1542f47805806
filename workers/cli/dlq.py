"""``stocksync dlq``: the dead letters (list, show, retry, purge, history), through ``runtime.dlq``."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import click

from runtime.settings import get_settings
from workers.cli.common import print_table

#: How much of each argument ``dlq show`` prints (``--json`` prints everything).
ARGUMENT_WIDTH = 1000



class Since(click.ParamType):
    """A moment: ``30m``, ``2h``, ``7d`` ago, or an ISO 8601 time (UTC when it has no offset)."""

    name = "since"

    def convert(self, value, param, ctx):
        """Parse ``value`` with :func:`runtime.dlq.parse_since`."""
        if isinstance(value, datetime):
            return value
        from runtime.dlq import parse_since

        try:
            return parse_since(value)
        except ValueError as error:
            self.fail(str(error), param, ctx)


def _filters(command):
    """The filters shared by ``list``, ``retry --all`` and ``purge``."""
    for option in reversed((
        click.option("--queue", "-q", metavar="QUEUE", help="Only this queue's dead letters."),
        click.option("--actor", "-a", metavar="ACTOR", help="Only messages for this actor."),
        click.option("--since", type=Since(), metavar="WHEN",
                     help="Only those dead-lettered since WHEN: 30m, 2h, 7d ago, or an ISO 8601 time."),
        click.option("--grep", metavar="TEXT",
                     help="Only those whose message (actor, arguments) or error contains TEXT (any case)."),
    )):
        command = option(command)
    return command


def _dead_letters():
    from runtime import resources
    from runtime.dlq import DeadLetterQueues

    settings = get_settings()
    if resources.in_process(settings):
        raise click.ClickException("dead letters live in Redis: set REDIS_URL (the in-process demo broker keeps none)")
    return DeadLetterQueues(resources.sync_redis(), notes_namespace=settings.redis_namespace)


def _one(queues, message_id: str):
    found = queues.find(message_id)
    if not found:
        raise click.ClickException(f"no dead letter {message_id} (see `stocksync dlq list`)")
    if len(found) > 1:
        ids = ", ".join(f"{letter.redis_id} ({letter.queue})" for letter in found)
        raise click.ClickException(f"{len(found)} dead letters carry message {message_id} (a redelivered "
                                   f"duplicate): name one by its Redis id: {ids}")
    return found[0]


def _when(moment: datetime | None, short: bool = False) -> str:
    """A UTC time and how long ago it was; ``short`` for table cells."""
    if moment is None:
        return "-"
    ago = max(0.0, (datetime.now(timezone.utc) - moment).total_seconds())
    unit, seconds = next(((u, s) for u, s in (("d", 86400), ("h", 3600), ("m", 60)) if ago >= s), ("s", 1))
    stamp = f"{moment:%m-%d %H:%M}" if short else f"{moment:%Y-%m-%d %H:%M:%S} UTC"
    return f"{stamp} ({ago / seconds:.0f}{unit} ago)"


def _by_queue(letters) -> str:
    counts: dict[str, int] = {}
    for letter in letters:
        counts[letter.queue] = counts.get(letter.queue, 0) + 1
    return ", ".join(f"{queue}: {count}" for queue, count in sorted(counts.items()))


def _report(verb: str, result) -> None:
    if result.moved:
        click.echo(f"{verb} {len(result.moved)} dead letter(s) ({_by_queue(result.moved)})")
    for letter, reason in result.skipped:
        click.echo(f"skipped {letter.message_id} ({letter.queue}): {reason}", err=True)


class _RedisCommands(click.Group):
    """A group whose commands talk to Redis: an unreachable Redis is one line, not a traceback."""

    def invoke(self, ctx):
        """Run the command; turn a Redis connection error into a clear message."""
        import redis

        try:
            return super().invoke(ctx)
        except redis.exceptions.ConnectionError as error:
            raise click.ClickException(f"cannot reach Redis: {error}") from None


@click.group(cls=_RedisCommands)
def dlq() -> None:
    """Dead letters: messages that failed for good (Redis broker).  List, show, retry, purge."""


@dlq.command("list")
@_filters
@click.option("--limit", default=200, show_default=True, type=click.IntRange(0),
              help="Show the most recent N (0: all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, every field.")
def dlq_list(queue, actor, since, grep, limit, as_json) -> None:
    """List dead letters, oldest first."""
    letters = _dead_letters().select(queue=queue, actor=actor, since=since, grep=grep)
    shown = letters[-limit:] if limit else letters
    if as_json:
        for letter in shown:
            click.echo(json.dumps(letter.asdict(), default=str))
        return
    if not letters:
        click.echo("no dead letters")
        return
    rows = [(letter.message_id, letter.queue, letter.actor_name, _when(letter.dead_at, short=True),
             str(letter.attempts), letter.error) for letter in shown]
    print_table("dead letters", ("message id", "queue", "actor", "dead since", "attempts", "error"), rows)
    more = f"; showing the latest {len(shown)}" if len(shown) < len(letters) else ""
    click.echo(f"{len(letters)} dead letter(s) ({_by_queue(letters)}){more}")


@dlq.command("show")
@click.argument("message_id")
@click.option("--json", "as_json", is_flag=True, help="Every field as one JSON object.")
def dlq_show(message_id, as_json) -> None:
    """Show one dead letter: actor, arguments, error, traceback, attempts, times."""
    letter = _one(_dead_letters(), message_id)
    if as_json:
        click.echo(json.dumps(letter.asdict(), indent=2, default=str))
        return
    click.echo(f"message    {letter.message_id}  (Redis id {letter.redis_id})")
    click.echo(f"queue      {letter.queue}")
    click.echo(f"actor      {letter.actor_name}")
    if letter.message is None:
        click.echo(f"payload    {letter.payload[:ARGUMENT_WIDTH]!r} (cannot be decoded)")
    else:
        for index, value in enumerate(letter.message.args):
            click.echo(f"arg {index:<6} {_clip(json.dumps(value, default=str))}")
        for name, value in letter.message.kwargs.items():
            click.echo(f"{name:<10} {_clip(json.dumps(value, default=str))}")
    click.echo(f"attempts   {letter.attempts} failed; put back from the dead letters {letter.dead_letter_retries} "
               f"time(s) before")
    click.echo(f"enqueued   {_when(letter.enqueued_at)}")
    if letter.note and letter.note.get("failed_at"):
        click.echo(f"failed     {_when(datetime.fromtimestamp(letter.note['failed_at'], timezone.utc))}")
    click.echo(f"dead since {_when(letter.dead_at)}")
    click.echo(f"error      {letter.error}")
    if letter.traceback:
        click.echo("traceback:")
        click.echo(letter.traceback.rstrip())


def _clip(text: str) -> str:
    if len(text) <= ARGUMENT_WIDTH:
        return text
    return f"{text[:ARGUMENT_WIDTH]}… ({len(text)} characters; --json shows all)"


@dlq.command("retry")
@click.argument("message_id", required=False)
@click.option("--all", "every", is_flag=True, help="Every dead letter that passes the filters.")
@_filters
def dlq_retry(message_id, every, queue, actor, since, grep) -> None:
    """Put MESSAGE_ID (or --all that pass the filters) back on its own queue, with a fresh retry budget.

    Each message is moved in one atomic step: it cannot be lost, nor enqueued twice by two
    operators retrying at once.  Every move is kept in the audit stream (`stocksync dlq history`).
    """
    filtered = any(value is not None for value in (queue, actor, since, grep))
    if bool(message_id) == every:
        raise click.UsageError("name one MESSAGE_ID, or use --all (with filters if you like)")
    if message_id and filtered:
        raise click.UsageError("the filters go with --all, not with a MESSAGE_ID")
    queues, letters = _matching(message_id, queue, actor, since, grep)
    if not letters:
        return
    result = queues.retry(letters)
    _report("put back", result)
    if message_id and not result.moved:
        raise click.ClickException(f"dead letter {message_id} was not retried")


def _matching(message_id, queue, actor, since, grep):
    """The dead letters a command acts on (MESSAGE_ID's, or those passing the filters) and their store.

    Says so when none match, so the command only has to stop.
    """
    queues = _dead_letters()
    letters = [_one(queues, message_id)] if message_id else queues.select(queue=queue, actor=actor, since=since,
                                                                          grep=grep)
    if not letters:
        click.echo("no dead letters match")
    return queues, letters


@dlq.command("purge")
@click.argument("message_id", required=False)
@_filters
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(message_id, queue, actor, since, grep, yes) -> None:
    """Delete MESSAGE_ID, or every dead letter that passes the filters, for good (after a confirmation)."""
    if message_id and any(value is not None for value in (queue, actor, since, grep)):
        raise click.UsageError("the filters go without a MESSAGE_ID")
    queues, letters = _matching(message_id, queue, actor, since, grep)
    if not letters:
        return
    if not yes:
        click.confirm(f"Delete {len(letters)} dead letter(s) ({_by_queue(letters)}) for good?", abort=True)
    _report("purged", queues.purge(letters))


@dlq.command("history")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1), help="How many entries.")
def dlq_history(limit) -> None:
    """The latest retries and purges: when, who, which message, and the error it had."""
    entries = _dead_letters().history(limit)
    if not entries:
        click.echo("no retries or purges yet")
        return
    rows = [(_when(datetime.fromisoformat(entry["at"]), short=True), entry["action"], entry["by"], entry["queue"],
             entry["actor"], entry["message_id"], entry.get("error") or "") for entry in entries]
    print_table("dead-letter history (newest first)",
                 ("at", "action", "by", "queue", "actor", "message id", "error"), rows)
