"""Actors of the events pipeline (see the README)."""
from __future__ import annotations
