"""Alembic migrations of the store, shipped inside the package and driven programmatically (appliance.store.migrate)."""
