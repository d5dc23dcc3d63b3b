"""`totalfm tui [--config FILE | --db URL]`: the admin console on the appliance's database.

--config: the site TOML (node keys + [worker]); the database, spool (disk gauge) and destinations (C-ECHO, resend)
come from it. An invalid config still opens the console (store_url read raw) so the Config view can show the errors
in place. --db: only the database (no disk gauge, no C-ECHO).
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

from appliance.errors import TotalFMError

ENV_CONFIG = "TOTALFM_CONFIG"


def build_app(*, config: str | None = None, db: str | None = None, actor: str | None = None,
              refresh_seconds: float = 2.0, **app_kwargs):
    from appliance.store import open_store  # noqa: PLC0415
    from dicom_node.config import NodeConfig, load_config  # noqa: PLC0415
    from tui.app import AdminApp  # noqa: PLC0415

    node_config = None
    url, spool = db, None
    min_free, max_pct = NodeConfig.min_free_bytes, NodeConfig.max_disk_usage_percent
    if config:
        try:
            node_config = load_config(config)
            url = url or node_config.store_url
            spool, min_free, max_pct = node_config.spool_dir, node_config.min_free_bytes, \
                node_config.max_disk_usage_percent
        except TotalFMError:
            try:
                raw = tomllib.loads(Path(config).read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise TotalFMError(f"config {config} cannot be read ({exc}); fix it or start with --db URL") from None
            url = url or raw.get("store_url")
            spool = raw.get("spool_dir") if isinstance(raw.get("spool_dir"), str) else None
    if not url:
        raise TotalFMError("no database: pass --config with a site TOML that has store_url, or --db URL")
    # migrate_schema=False: the console must never upgrade a schema under running node/workers.
    store = open_store(url, migrate_schema=False)
    return AdminApp(store, config_path=config, node_config=node_config, spool_dir=spool, min_free_bytes=min_free,
                    max_usage_percent=max_pct, actor=actor, refresh_seconds=refresh_seconds, **app_kwargs)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm tui", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", default=None, help=f"site TOML (default ${ENV_CONFIG})")
    g.add_argument("--db", help="database URL, e.g. sqlite:////var/lib/totalfm/totalfm.db")
    p.add_argument("--actor", help="name recorded in the audit log for your actions (default: $USER@tui)")
    p.add_argument("--refresh", type=float, default=2.0, help="seconds between live refreshes (default 2)")
    args = p.parse_args(argv)
    config = args.config or (None if args.db else os.environ.get(ENV_CONFIG) or None)
    app = build_app(config=config, db=args.db, actor=args.actor, refresh_seconds=args.refresh)
    try:
        app.run()
    finally:
        app.store.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
