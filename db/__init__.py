"""PostgreSQL: typed models, the engine, Alembic migrations and the set-based stock operations."""
