"""Actors of the operations pipeline (see the README)."""
from __future__ import annotations
