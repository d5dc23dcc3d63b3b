"""Migrations build the schema (never create_all), downgrade to base and back works, and `totalfm db` reports it."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from appliance.cli import main as cli_main
from appliance.errors import StoreError
from appliance.store import migrate, open_store
from appliance.store.engine import make_engine

TABLES = {"studies", "series", "instances", "associations", "jobs", "analyses", "organ_results", "findings",
          "reports", "deliveries", "audit_events", "settings", "node_status", "workers"}


def test_migrations_create_schema_and_round_trip(store_url):
    engine = make_engine(store_url)
    assert TABLES.isdisjoint(inspect(engine).get_table_names())
    migrate.upgrade(engine)
    assert TABLES <= set(inspect(engine).get_table_names())
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.downgrade(engine, "base")
    assert TABLES.isdisjoint(inspect(engine).get_table_names())
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert TABLES <= set(inspect(engine).get_table_names())
    engine.dispose()
    # and the store works on the re-created schema
    store = open_store(store_url)
    assert store.job_counts() == {}
    store.close()


def test_open_without_migrating_refuses_old_schema(store_url):
    with pytest.raises(StoreError, match="totalfm db upgrade"):
        open_store(store_url, migrate_schema=False)


def test_db_command_upgrade_and_current(store_url, capsys):
    assert cli_main(["db", "current", "--url", store_url]) == 0
    assert "none (empty database)" in capsys.readouterr().out
    assert cli_main(["db", "upgrade", "--url", store_url]) == 0
    out = capsys.readouterr().out
    assert migrate.head_revision() in out and "up to date" in out


def test_bad_urls_give_admin_messages(tmp_path, capsys):
    with pytest.raises(StoreError, match="folder for the SQLite database does not exist"):
        open_store(f"sqlite:///{tmp_path}/missing/store.db")
    with pytest.raises(StoreError, match="in-memory"):
        open_store("sqlite://")
    with pytest.raises(StoreError, match="not supported"):
        open_store("mysql://x@localhost/db")
    with pytest.raises(StoreError, match="cannot open the database"):
        open_store("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert cli_main(["db", "current", "--url", "sqlite://"]) == 1
    assert "in-memory" in capsys.readouterr().err


def test_migrations_match_the_models(store_url):
    """A model changed without a new migration would make production schemas drift from the code."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from appliance.store.models import Base

    engine = make_engine(store_url)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []
