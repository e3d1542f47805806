"""Check the command lines that deploy files (supervisor, docker-compose) run against the real CLIs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import click

#: ``stocksync`` commands the deploy files name before the CLI has them: the other half of issue #5
#: adds them.  Their checks are skipped (with this reason) until they exist, then run like the rest.
PENDING = {"scheduler": "`stocksync scheduler` comes with the scheduler part of issue #5"}


class Pending(Exception):
    """The command is one of :data:`PENDING` and the CLI does not have it yet."""


def check_command(args: list[str]) -> None:
    """Parse ``args`` as ``stocksync ...`` or ``dramatiq ...`` would, without running anything.

    Raises:
      AssertionError: The program is neither, a command does not exist, or an option is refused.
      Pending: A pending ``stocksync`` command that the CLI does not have yet.
    """
    program = Path(args[0]).name
    if program == "stocksync":
        _check_stocksync(args[1:])
    elif program == "dramatiq":
        _check_dramatiq(args[1:])
    else:
        raise AssertionError(f"{args[0]!r} is not a stocksync or dramatiq command")


def _check_stocksync(args: list[str]) -> None:
    from workers.cli import main

    command: click.Command = main
    path = ["stocksync"]
    while isinstance(command, click.Group):
        if command.invoke_without_command and (not args or args[0].startswith("-")):
            break  # a group that runs on its own (``stocksync sandbox --port ...``)
        assert args, f"`{' '.join(path)}` needs a command"
        name, args = args[0], args[1:]
        if name not in command.commands:
            if len(path) == 1 and name in PENDING:
                raise Pending(PENDING[name])
            raise AssertionError(f"`{' '.join(path)}` has no command {name!r}")
        command, path = command.commands[name], [*path, name]
    try:
        command.make_context(" ".join(path), list(args))
    except click.ClickException as error:
        raise AssertionError(f"`{' '.join(path + args)}`: {error.format_message()}") from None


def _check_dramatiq(args: list[str]) -> None:
    from dramatiq.cli import make_argument_parser

    parser = make_argument_parser()
    parser.exit = _refuse  # argparse exits on an error; make it an assertion
    parser.error = _refuse
    parsed = parser.parse_args(args)
    module = parsed.broker.split(":")[0]
    assert importlib.util.find_spec(module) is not None, f"dramatiq's broker module {module!r} cannot be imported"


def _refuse(*args, **kwargs):
    raise AssertionError(f"dramatiq refuses its arguments: {args} {kwargs}")
