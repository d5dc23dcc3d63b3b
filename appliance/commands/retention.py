"""`totalfm retention --days N [--config FILE | --db URL --spool DIR] [--dry-run] [--no-require-delivery]`:
delete the spooled images of studies older than N days whose results were delivered (appliance/retention.py).
Run daily by systemd/totalfm-retention.timer."""

from __future__ import annotations

import argparse
import os

from appliance.errors import TotalFMError


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm retention", description=__doc__)
    p.add_argument("--config", default=None, help="site TOML (store_url, spool_dir); default $TOTALFM_CONFIG")
    p.add_argument("--db", help="database URL (instead of --config)")
    p.add_argument("--spool", help="spool folder (instead of --config)")
    p.add_argument("--days", type=float, required=True, help="keep images at least this many days after the last "
                   "image of the study arrived")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.add_argument("--no-require-delivery", action="store_true",
                   help="also purge analysed studies that have no delivery (sites without destinations)")
    args = p.parse_args(argv)
    url, spool = args.db, args.spool
    config = args.config or os.environ.get("TOTALFM_CONFIG")
    if config and not (url and spool):
        from appliance.config import load_worker_config  # noqa: PLC0415
        cfg = load_worker_config(config)
        url, spool = url or cfg.store_url, spool or cfg.spool_dir
    if not url or not spool:
        raise TotalFMError("retention needs the database and the spool folder: pass --config (site TOML) or "
                           "--db URL --spool DIR")
    if args.days < 0:
        raise TotalFMError("--days must be >= 0")
    from appliance.retention import run_retention  # noqa: PLC0415
    from appliance.store import open_store  # noqa: PLC0415
    store = open_store(url, migrate_schema=False)
    try:
        rep = run_retention(store, spool, days=args.days, dry_run=args.dry_run,
                            require_delivery=not args.no_require_delivery)
    finally:
        store.close()
    verb = "would delete" if args.dry_run else "deleted"
    for sp in rep.purged:
        print(f"{sp.study_uid}: {verb} {sp.files} files ({sp.bytes / 1e6:.1f} MB)"
              + (f", {sp.missing} already gone" if sp.missing else "")
              + (f"; {len(sp.outside_spool)} paths outside the spool left alone" if sp.outside_spool else ""))
    for uid, why in rep.kept.items():
        print(f"{uid}: kept ({why})")
    print(f"retention (> {args.days:g} days): {len(rep.purged)} studies, {rep.files} files, "
          f"{rep.bytes / 1e6:.1f} MB {verb}; {len(rep.kept)} old studies kept")
    return 0
