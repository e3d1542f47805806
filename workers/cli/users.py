"""``stocksync users``: the operator console's users (add, list, disable, enable, set-role, set-password).

A password is read from a prompt (twice, hidden) or, with ``--password-stdin``, from the first line
of standard input; never from an argument, which would land in the shell history and ``ps``.
"""
from __future__ import annotations

import sys

import click

from core.console_rules import ROLES


def _sessions():
    from runtime import resources

    return resources.sessions()


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise click.UsageError("--password-stdin: standard input is empty")
        return line.rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def _run(change):
    from db.users import UserError

    with _sessions()() as session:
        try:
            result = change(session)
        except UserError as error:
            raise click.ClickException(str(error)) from None
        session.commit()
        return result


_stdin_option = click.option("--password-stdin", is_flag=True,
                             help="Read the password from the first line of standard input (for scripts).")


@click.group("users")
def users_group() -> None:
    """Users of the operator console and their roles (viewer, operator, admin)."""


@users_group.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True)
@_stdin_option
def add_command(username: str, role: str, password_stdin: bool) -> None:
    """Add USERNAME with ROLE; the password is asked for (or read from stdin)."""
    from db.users import add_user

    password = _password(password_stdin)
    user = _run(lambda session: add_user(session, username, password, role))
    click.echo(f"user {user.username} added ({user.role})")


@users_group.command("list")
def list_command() -> None:
    """Every user, role, state and last login."""
    from db.users import list_users
    from workers.cli.common import print_table

    found = _run(list_users)
    if not found:
        click.echo("no users yet: add one with `stocksync users add NAME --role admin`")
        return
    rows = [(u.username, u.role, "yes" if u.active else "no", f"{u.created_at:%Y-%m-%d %H:%M}",
             f"{u.last_login_at:%Y-%m-%d %H:%M}" if u.last_login_at else "never") for u in found]
    print_table("console users", ("user", "role", "active", "added", "last login"), rows)


@users_group.command("disable")
@click.argument("username")
def disable_command(username: str) -> None:
    """Disable USERNAME (their sessions end now)."""
    from db.users import set_active

    _run(lambda session: set_active(session, username, False))
    click.echo(f"user {username} disabled")


@users_group.command("enable")
@click.argument("username")
def enable_command(username: str) -> None:
    """Enable USERNAME again."""
    from db.users import set_active

    _run(lambda session: set_active(session, username, True))
    click.echo(f"user {username} enabled")


@users_group.command("set-role")
@click.argument("username")
@click.argument("role", type=click.Choice(ROLES))
def set_role_command(username: str, role: str) -> None:
    """Give USERNAME another ROLE (effective on their next page)."""
    from db.users import set_role

    _run(lambda session: set_role(session, username, role))
    click.echo(f"user {username} is now {role}")


@users_group.command("set-password")
@click.argument("username")
@_stdin_option
def set_password_command(username: str, password_stdin: bool) -> None:
    """Set USERNAME's password (asked for, or read from stdin); their sessions end."""
    from db.users import set_password

    password = _password(password_stdin)
    _run(lambda session: set_password(session, username, password))
    click.echo(f"password of {username} changed; their sessions were ended")
