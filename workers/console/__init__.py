"""The operator console (``stocksync console``): server-rendered pages over the fleet's data and operations.

It reads PostgreSQL and Redis and acts only through the fleet's own operations (the producer API,
the sync, store and re-check actors, the dead-letter tool, the scheduler's jobs), under roles
checked on the server for every action, each one audited.
"""
