"""Dramatiq actors, one module per pipeline.

An actor binds to the global broker when it is declared, so importing any actor module first
builds the fleet's broker (``workers.fleet``), whoever imports it: the workers, the CLI, tests.
"""
import workers.fleet  # noqa: F401
