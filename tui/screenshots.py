"""Write docs screenshots of the admin console from a real database:

    .venv/bin/python tui/screenshots.py DB OUT [--config SITE.toml] [--study UID] [--size 120x40]

DB is a database URL or a SQLite file path; OUT a folder. Writes OUT/dashboard.svg and OUT/study_detail.svg (the
newest study that has a result, or --study). Runs the app headless (Textual run_test) and saves with
app.save_screenshot, so the pictures are exactly what an admin sees.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _url(db: str) -> str:
    return db if "://" in db else f"sqlite:///{Path(db).expanduser().resolve()}"


async def _shoot(app, out: Path, study: str | None, size: tuple[int, int]) -> list[Path]:
    from tui import queries
    from tui.app import StudyDetailScreen
    written = []
    async with app.run_test(size=size) as pilot:
        await pilot.pause(0.5)
        written.append(Path(app.save_screenshot("dashboard.svg", path=str(out))))
        uid = study
        if uid is None:
            rows = [r for r in queries.studies(app.store) if r["version"]]
            uid = rows[0]["study_uid"] if rows else None
        if uid is None:
            print("no analysed study in the database: study_detail.svg not written", file=sys.stderr)
            return written
        app.push_screen(StudyDetailScreen(uid))
        await pilot.pause(0.5)
        written.append(Path(app.save_screenshot("study_detail.svg", path=str(out))))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("db", help="database URL or SQLite file")
    p.add_argument("out", help="output folder")
    p.add_argument("--config", help="site TOML (for the disk gauge and destinations)")
    p.add_argument("--study", help="study UID for the detail screenshot")
    p.add_argument("--size", default="120x40", help="terminal size COLSxROWS (default 120x40)")
    p.add_argument("--at", help="render as if the UTC time were this ISO time (reproducible pictures of old data)")
    args = p.parse_args(argv)
    from tui.cli import build_app
    cols, rows = (int(v) for v in args.size.lower().split("x"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {}
    if args.at:
        import datetime as dt
        at = dt.datetime.fromisoformat(args.at).replace(tzinfo=None)
        extra["now"] = lambda: at
    app = build_app(config=args.config, db=_url(args.db), actor="screenshots", refresh_seconds=3600, **extra)
    try:
        for path in asyncio.run(_shoot(app, out, args.study, (cols, rows))):
            print(path)
    finally:
        app.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
