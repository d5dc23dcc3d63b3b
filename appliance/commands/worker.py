"""`totalfm worker --config SITE.toml`: an analysis worker taking studies from the queue (run several, on several
hosts, against one PostgreSQL database). SIGTERM finishes the current study, then exits."""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="totalfm worker", description=__doc__)
    ap.add_argument("--config", required=True, help="site TOML (top-level store_url/spool_dir + [worker] table)")
    ap.add_argument("--max-jobs", type=int, help="exit after this many completed jobs")
    ap.add_argument("--exit-when-idle", action="store_true", help="exit when the queue is empty")
    ap.add_argument("--worker-id", help="override [worker] worker_id (default host:pid)")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic",):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import dataclasses

    from appliance.config import load_worker_config
    from appliance.worker_service import run_service

    cfg = load_worker_config(args.config)
    if args.worker_id:
        cfg = dataclasses.replace(cfg, worker_id=args.worker_id)
    n = run_service(cfg, max_jobs=args.max_jobs, exit_when_idle=args.exit_when_idle,
                    install_signals=True)
    logging.getLogger("appliance.worker").info("worker done: %d job(s) completed", n)
    return 0
