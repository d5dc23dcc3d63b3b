"""Alembic environment: runs on the connection that appliance.store.migrate hands over (no alembic.ini)."""

from alembic import context

from appliance.store.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - we always pass a connection
    raise RuntimeError("run migrations through appliance.store.migrate, not the alembic command line")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite can only ALTER via table copies
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
