"""Engine creation for the two supported backends, with the settings a multi-process appliance needs."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy import create_engine
from sqlalchemy.exc import ArgumentError

from appliance.errors import StoreError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str) -> Engine:
    try:
        u = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"database URL {url!r} is not valid; use sqlite:///path/to/db.sqlite or "
                         f"postgresql+psycopg://user@host:port/dbname") from exc
    if u.get_backend_name() == "sqlite":
        return _sqlite_engine(u)
    if u.get_backend_name() == "postgresql":
        if u.drivername != "postgresql+psycopg":
            u = u.set(drivername="postgresql+psycopg")
        return create_engine(u, pool_pre_ping=True)
    raise StoreError(f"database {u.get_backend_name()!r} is not supported; use SQLite or PostgreSQL")


def _sqlite_engine(u) -> Engine:
    db = u.database
    if not db or db == ":memory:":
        raise StoreError("an in-memory SQLite database cannot be shared between the node and the workers; "
                         "give a file path: sqlite:///path/to/db.sqlite")
    parent = Path(db).expanduser().resolve().parent
    if not parent.is_dir():
        raise StoreError(f"the folder for the SQLite database does not exist: {parent}; create it or fix the URL")
    engine = create_engine(u, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Take transaction control away from the sqlite3 module so that we can say BEGIN IMMEDIATE ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")  # readers (TUI) never block the writer (node, workers)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Why IMMEDIATE by default: a deferred transaction that reads and then writes fails at once with
        # SQLITE_BUSY (no waiting) when another process wrote in between; IMMEDIATE takes the write lock up front and
        # waits for it (busy timeout). Pure readers use sqlite_begin="DEFERRED" (see Store.read_session).
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
