"""Dramatiq actors, one module per pipeline: decode the message, call the pipeline, enqueue what follows.

An actor binds to the global broker when it is declared, so the fleet's broker is installed
here, before any actor module runs.
"""
from runtime.broker import install_broker

install_broker()
