"""Actors of the ingram pipeline (see the README)."""
from __future__ import annotations
