"""`totalfm db upgrade|current --url URL`: apply the store's schema migrations, or say which revision a database has."""

from __future__ import annotations

import argparse
import os

from sqlalchemy.exc import OperationalError

from appliance.errors import StoreError
from appliance.store import migrate
from appliance.store.engine import make_engine


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm db", description=__doc__)
    p.add_argument("action", choices=["upgrade", "current"])
    p.add_argument("--url", default=os.environ.get("TOTALFM_DB_URL"),
                   help="database URL, e.g. sqlite:///var/lib/totalfm/store.db or "
                        "postgresql+psycopg://totalfm@dbhost/totalfm (default: $TOTALFM_DB_URL)")
    args = p.parse_args(argv)
    if not args.url:
        raise StoreError("no database given; pass --url or set TOTALFM_DB_URL")
    engine = make_engine(args.url)
    try:
        if args.action == "upgrade":
            migrate.upgrade(engine)
        current, head = migrate.current_revision(engine), migrate.head_revision()
    except OperationalError as exc:
        raise StoreError(f"cannot reach the database: {exc.orig}") from exc
    finally:
        engine.dispose()
    state = "up to date" if current == head else f"needs `totalfm db upgrade` (newest is {head})"
    print(f"schema revision: {current or 'none (empty database)'} - {state}")
    return 0
