"""`stocksync` commands of the ops pipelines (registered on the main group by :func:`register`)."""
from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Add this module's commands to the ``stocksync`` group."""
