"""Errors every floor shares: a message or an argument that no retry can mend."""
from __future__ import annotations


class MalformedMessage(ValueError):
    """A message whose arguments cannot be used; retrying would not help (``permanent``)."""

    permanent = True
