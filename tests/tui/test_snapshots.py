"""SVG snapshots of the dashboard and a study detail at 80x24 and 120x40 (pytest-textual-snapshot).

The data are deterministic (tests/tui/fill.py pins every timestamp and UID; the clock and disk gauge are injected), so
a changed snapshot means the screen changed. Update after an intended change with:
    .venv/bin/python -m pytest tests/tui/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

from tests.tui.fill import UID_A

SIZES = [(80, 24), (120, 40)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard_snapshot(snap_compare, make_app, size):
    assert snap_compare(make_app(refresh_seconds=3600), terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_study_detail_snapshot(snap_compare, make_app, size):
    async def open_detail(pilot):
        from tui.app import StudyDetailScreen
        pilot.app.push_screen(StudyDetailScreen(UID_A))
        await pilot.pause()

    assert snap_compare(make_app(refresh_seconds=3600), terminal_size=size, run_before=open_detail)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_jobs_snapshot(snap_compare, make_app, size):
    assert snap_compare(make_app(refresh_seconds=3600), terminal_size=size, press=["3"])
