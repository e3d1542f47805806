"""``stocksync scheduler``: the periodic jobs (one leader per fleet), their list, and one job run now."""
from __future__ import annotations

from datetime import datetime, timezone

import click

from runtime.settings import get_settings
from workers.cli.common import print_table


@click.command("scheduler")
@click.option("--once", "once", metavar="JOB", default=None,
              help="Enqueue JOB's message once, now, and exit (no leader lock; see --list for the names).")
@click.option("--list", "show", is_flag=True, help="Print every job, its actor, crontab and next run times, and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --list: print the jobs as JSON.")
def scheduler(once, show, as_json) -> None:
    """The periodic jobs: enqueue each job's message at its SCHEDULER_*_CRON times (one leader per fleet).

    Run one per host if you like: only the one holding the Redis leader lock enqueues; the others
    wait and take over within SCHEDULER_LOCK_TTL_S when it stops.
    """
    from workers import scheduler as jobs

    settings = get_settings()
    try:
        if as_json and not show:
            raise click.UsageError("--json goes with --list")
        if show and as_json:
            from workers.cli.common import echo_json

            times = jobs.next_fire_times(settings, datetime.now(timezone.utc), count=3)
            echo_json([{"job": job.name, "actor": job.actor, "args": list(job.args), "kwargs": job.kwargs,
                        "setting": job.setting.upper(), "cron": str(getattr(settings, job.setting)) or None,
                        "timezone": settings.scheduler_timezone, "next_runs": times.get(job.name, [])}
                       for job in jobs.JOBS])
            return
        if show:
            times = jobs.next_fire_times(settings, datetime.now(timezone.utc), count=3)
            rows = [(job.name, job.actor, str(getattr(settings, job.setting)) or "(off)",
                     ", ".join(f"{moment:%m-%d %H:%M %Z}" for moment in times.get(job.name, [])))
                    for job in jobs.JOBS]
            print_table(f"scheduled jobs ({settings.scheduler_timezone})", ("job", "actor", "cron", "next runs"), rows)
            return
        if once is not None:
            if once not in jobs.JOBS_BY_NAME:
                raise click.BadParameter(f"no job {once!r}; one of: {', '.join(jobs.JOBS_BY_NAME)}", param_hint="--once")
            if not settings.redis_url:
                raise click.ClickException("set REDIS_URL: without it the message would go to an in-process broker "
                                           "that no worker reads")
            message = jobs.send_now(settings, once)
            if message is None:
                raise click.ClickException(f"job {once} enqueued nothing (see the log above)")
            click.echo(f"enqueued {message.actor_name} on {message.queue_name} (message {message.message_id})")
            return
        jobs.run(settings)
    except jobs.SchedulerConfigError as error:
        raise click.ClickException(str(error)) from None
