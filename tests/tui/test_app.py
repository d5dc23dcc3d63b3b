"""The admin console driven by Textual's Pilot against a real SQLite store filled through the store API
(tests/tui/fill.py): every screen renders its data, every action changes the database (and the audit log), and the
screens refresh live when another process writes."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from appliance.store.models import AuditEvent, Delivery, Job, ReportRow
from tests.tui.fill import NOW, UID_A, UID_B, UID_C
from tui.app import DRAFT_LABEL, DashboardScreen, StudiesScreen, StudyDetailScreen

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector).content)


def table_rows(app, selector: str) -> list[list[str]]:
    t = app.screen.query_one(selector)
    return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]


async def open_study(pilot, uid: str):
    await pilot.press("2")
    await pilot.pause()
    table = pilot.app.screen.query_one("#studies")
    keys = [table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(table.row_count)]
    table.move_cursor(row=keys.index(uid))
    await pilot.press("enter")
    await pilot.pause()
    assert isinstance(pilot.app.screen, StudyDetailScreen)


def test_dashboard_shows_node_workers_queue_disk_model(make_app):
    async def run():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert isinstance(app.screen, DashboardScreen)
            t = text_of(app, "#dash")
            assert "TOTALFM 0.0.0.0:11112" in t and "assoc 1" in t and "seen 4s ago" in t
            assert "last image 2m ago; last assoc. UNKNOWN rejected 1m ago" in t
            assert "worker-1" in t and "idle" in t and "LOST" in t  # worker-2's heartbeat is 10 min old
            assert "pending 1  running 0  failed 1  done 1" in t
            assert "24 h " + "·" * 23 + "█ now" in t  # all three studies arrived in the last hour
            assert "3 in the last hour" in t
            assert "42% used, 290 GiB free; watermark 95%" in t
            assert "totalfm-untrained-0001" in t and "cpu (onnxruntime)" in t and "SmolLM2" in t
            assert DRAFT_LABEL in t
    asyncio.run(run())


def test_worker_on_a_long_study_is_busy_not_lost(make_app, store, db):
    """The worker row is beaten between jobs only; a held, unexpired job lease proves the worker is alive."""
    from sqlalchemy import update
    job = store.claim_job("worker-2")
    assert job is not None and job.id == db[1]["job_pending"]
    with store.session() as s:  # the clock of the screen is NOW: the lease runs 30 s past it
        s.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=NOW + dt.timedelta(seconds=30)))

    async def run():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            t = text_of(app, "#dash")
            assert "LOST" not in t and f"busy  job {job.id}" in t
            with store.session() as s:  # lease expired too: now it is lost
                s.execute(update(Job).where(Job.id == job.id).values(lease_expires_at=NOW - dt.timedelta(seconds=1)))
            await pilot.pause(0.8)
            assert "LOST" in text_of(app, "#dash")
    asyncio.run(run())


def test_dashboard_node_from_config_when_no_heartbeat(make_app, store):
    from sqlalchemy import delete
    from appliance.store.models import NodeStatus
    with store.session() as s:
        s.execute(delete(NodeStatus))

    async def run():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert "TOTALFM 127.0.0.1:11112  no heartbeat in the database" in text_of(app, "#dash")
    asyncio.run(run())


def test_dashboard_without_config_says_what_is_missing(make_app):
    async def run():
        app = make_app(config=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert "no spool folder configured" in text_of(app, "#dash")
    asyncio.run(run())


def test_studies_list_search_and_open(make_app):
    async def run():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("2")
            await pilot.pause()
            assert isinstance(app.screen, StudiesScreen)
            rows = table_rows(app, "#studies")
            assert [r[1] for r in rows] == ["ACC1003", "ACC1002", "ACC1001"]  # newest first
            assert rows[1][4] == "failed" and rows[2][4] == "done" and rows[2][6] == "3"
            await pilot.press("slash", "1", "0", "0", "2")
            await pilot.pause()
            assert [r[1] for r in table_rows(app, "#studies")] == ["ACC1002"]
            await pilot.press("enter")  # search submitted: focus back on the list
            await pilot.press("enter")  # open the study
            await pilot.pause()
            assert isinstance(app.screen, StudyDetailScreen) and app.screen.study_uid == UID_B
            assert "failed" in text_of(app, "#head") and "SeriesError" in text_of(app, "#head")
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(app.screen, StudiesScreen)
    asyncio.run(run())


def test_study_detail_shows_series_organs_findings_draft_versions_deliveries(make_app):
    async def run():
        app = make_app()
        async with app.run_test(size=(120, 40)) as pilot:
            await open_study(pilot, UID_A)
            head = text_of(app, "#head")
            assert "ACC1001" in head and "20 img" in head and "ABD PELVIS" in head and "analysed" in head
            organs = table_rows(app, "#organs")
            assert organs[0][:3] == ["liver", "ok", "1612"] and ["lungs", "truncated_by_scan", "-", "-", "-"] in organs
            findings = table_rows(app, "#findings")
            assert findings[0] == ["hepatic_steatosis", "liver", "0.87", "0.55", "POSITIVE"]
            assert ["splenomegaly", "spleen", "0.12", "0.50", "neg"] in findings
            assert ["adrenal_nodule", "adrenal_glands", "0.93", "1.01", "not screened"] in findings  # not "neg"
            draft = text_of(app, "#draft")
            assert DRAFT_LABEL in draft and "Cholelithiasis" in draft and "not reviewed" in draft
            assert "v1 2026-11-28 22:15:00 new study" in text_of(app, "#versions")
            dels = table_rows(app, "#deliveries")
            assert [d[2:5] for d in dels] == [["pacs", "SEG", "failed"], ["pacs", "SR", "sent"]]
    asyncio.run(run())


def test_action_mark_reviewed(make_app, store, db):
    analysis_id = db[1]["analysis"]

    async def run():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await open_study(pilot, UID_A)
            await pilot.press("v")
            await pilot.pause()
            assert "reviewed by dr.test" in text_of(app, "#draft")
    asyncio.run(run())
    with store.read_session() as s:
        rep = s.scalars(select(ReportRow).where(ReportRow.analysis_id == analysis_id)).one()
        assert rep.reviewed_by == "dr.test" and rep.reviewed_at is not None
        ev = s.scalars(select(AuditEvent).where(AuditEvent.event == "draft_reviewed")).one()
        assert ev.actor == "dr.test" and ev.detail["analysis_id"] == analysis_id


def test_action_reanalyse(make_app, store):
    async def run():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await open_study(pilot, UID_A)
            await pilot.press("r", "n")  # asked first; "no" does nothing
            await pilot.pause()
            assert app.last_message == "nothing done"
            await pilot.press("r", "y")
            await pilot.pause()
            assert "re-analysis queued as job" in app.last_message
            assert "pending" in text_of(app, "#versions")
    asyncio.run(run())
    with store.read_session() as s:
        jobs = s.scalars(select(Job).where(Job.reason == "admin reanalysis")).all()
        assert len(jobs) == 1 and jobs[0].state == "pending" and jobs[0].analysis_version == 2


def test_action_resend_delivery(make_app, store, db):
    seg = db[1]["delivery_seg"]

    async def run():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await open_study(pilot, UID_A)
            app.screen.query_one("#deliveries").focus()
            await pilot.pause()
            await pilot.press("e")  # cursor on the first row: the failed SEG
            await pilot.pause()
            assert f"delivery {seg} will be sent again" in app.last_message
    asyncio.run(run())
    with store.read_session() as s:
        d = s.get(Delivery, seg)
        assert d.state == "pending" and d.attempts == 0
        assert s.scalars(select(AuditEvent).where(AuditEvent.event == "delivery_resend")).one().actor == "dr.test"


def _echo_scp():
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    ae = AE(ae_title="PACS")
    ae.add_supported_context(Verification)
    return ae.start_server(("127.0.0.1", 0), block=False)


def test_action_echo_destination_success_and_failure(make_app, site_config, store):
    scp = _echo_scp()
    port = scp.server_address[1]
    try:
        text = site_config.read_text().replace('pacs = "PACS@127.0.0.1:1"', f'pacs = "PACS@127.0.0.1:{port}"\n'
                                               f'dead = "DEAD@127.0.0.1:1"')
        site_config.write_text(text)

        async def run():
            app = make_app()
            async with app.run_test(size=(80, 24)) as pilot:
                await open_study(pilot, UID_A)
                await pilot.press("o")  # destination of the selected delivery: pacs
                await app.workers.wait_for_complete()
                await pilot.pause()
                assert "PACS@127.0.0.1" in app.last_message and "success" in app.last_message
                app.echo_destination("dead")
                await app.workers.wait_for_complete()
                await pilot.pause()
                assert "association failed" in app.last_message
        asyncio.run(run())
    finally:
        scp.shutdown()
    with store.read_session() as s:
        evs = s.scalars(select(AuditEvent).where(AuditEvent.event == "echo").order_by(AuditEvent.id)).all()
        assert [e.detail["ok"] for e in evs] == [True, False]


def test_jobs_retry_cancel_filter(make_app, store, db):
    ids = db[1]

    async def run():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("3")
            await pilot.pause()
            rows = table_rows(app, "#jobs")
            assert [r[3] for r in rows] == ["pending", "failed", "done"]
            await pilot.press("f")
            await pilot.pause()
            assert [r[0] for r in table_rows(app, "#jobs")] == [str(ids["job_failed"])]
            assert "SeriesError" in text_of(app, "#joberr")
            await pilot.press("r")
            await pilot.pause()
            assert f"job {ids['job_failed']} queued again" in app.last_message
            await pilot.press("f")
            await pilot.pause()
            await pilot.press("x")  # cursor on the first row: the pending job of study C
            await pilot.pause()
            assert "Cancel job" in str(app.screen.query_one("#confirm").content)
            await pilot.press("y")
            await pilot.pause()
            assert f"job {ids['job_pending']} cancelled" in app.last_message
            await pilot.press("down", "down")
            await pilot.press("x", "y")  # a done job cannot be cancelled: the store's message is shown
            await pilot.pause()
            assert "only pending or running jobs can be cancelled" in app.last_message
    asyncio.run(run())
    with store.read_session() as s:
        assert s.get(Job, ids["job_failed"]).state == "pending"
        assert s.get(Job, ids["job_pending"]).state == "cancelled"
        events = [e.event for e in s.scalars(select(AuditEvent).order_by(AuditEvent.id))]
        assert "job_retry" in events and "job_cancel" in events


def test_config_view_valid_and_errors_in_place(make_app, site_config):
    async def run():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("4")
            await pilot.pause()
            t = text_of(app, "#config")
            assert "valid" in t and "store_url" in t
            site_config.write_text(site_config.read_text().replace("port = 11112", "port = 99999")
                                   .replace('llm_gguf = "off"', 'backend = "quantum"'))
            await pilot.pause(0.8)  # live refresh picks up the edited file
            t = text_of(app, "#config")
            assert "2 error(s)" in t
            lines = t.splitlines()
            i = next(k for k, ln in enumerate(lines) if "port = 99999" in ln)
            assert "↑" in lines[i + 1] and "out of range" in lines[i + 1]
            j = next(k for k, ln in enumerate(lines) if 'backend = "quantum"' in ln)
            assert "↑" in lines[j + 1] and "backend" in lines[j + 1]
    asyncio.run(run())


def test_console_opens_on_an_invalid_config(make_app, site_config):
    site_config.write_text(site_config.read_text().replace("port = 11112", 'port = "x"'))

    async def run():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("4")
            await pilot.pause()
            assert "1 error(s)" in text_of(app, "#config")
    asyncio.run(run())


def test_audit_view_lists_associations_and_admin_actions(make_app):
    async def run():
        app = make_app()
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("5")
            await pilot.pause()
            rows = table_rows(app, "#audit")
            assert rows[0][1:4] == ["assoc", "UNKNOWN@10.0.0.7", "rejected -> TOTALFM"]
            assert any(r[1] == "admin" and r[3] == "setting_changed" for r in rows)
            assert sum(r[1] == "assoc" for r in rows) == 4
            assert "calling AE not allowed" in text_of(app, "#auditdetail")  # full detail of the selected row
    asyncio.run(run())


def test_live_refresh_while_another_process_writes(make_app, db):
    """A separate process (as the node and a worker are) writes; the open dashboard shows it on its next tick."""
    code = ("import sys; from appliance.store import open_store; s = open_store(sys.argv[1], migrate_schema=False); "
            f"s.enqueue_analysis({UID_C!r}, reason='new images'); "
            "s.worker_heartbeat('worker-3', host='ct-ai-02', pid=1, current_job_id=None)")

    async def run():
        app = make_app(now=lambda: dt.datetime.now(dt.timezone.utc).replace(tzinfo=None))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert "failed 1" in text_of(app, "#dash")
            subprocess.run([sys.executable, "-c", code, db[0]], check=True, cwd=ROOT, timeout=60)
            await pilot.pause(0.8)
            t = text_of(app, "#dash")
            assert "pending 2" in t and "worker-3" in t
    asyncio.run(run())


def test_readable_at_80x24_every_screen(make_app):
    """No screen needs more than 80 columns for its key line (the footer bindings fit)."""
    async def run():
        app = make_app()
        async with app.run_test(size=(80, 24)) as pilot:
            for key in "12345":
                await pilot.press(key)
                await pilot.pause()
                assert app.screen.size.width == 80 and app.screen.size.height == 24
    asyncio.run(run())


def test_cli_rejects_missing_database(tmp_path, capsys):
    from appliance.errors import TotalFMError
    from tui.cli import main
    with pytest.raises(TotalFMError, match="cannot open the database|does not exist"):
        main(["--db", f"sqlite:///{tmp_path}/nope/x.db"])


def test_screenshots_script_writes_dashboard_and_detail(db, tmp_path):
    from tui.screenshots import main
    out = tmp_path / "shots"
    assert main([db[0], str(out), "--at", NOW.isoformat(), "--size", "80x24"]) == 0
    dash, detail = (out / "dashboard.svg").read_text(), (out / "study_detail.svg").read_text()
    assert dash.startswith("<svg") and "Dashboard" in dash
    assert "hepatic_steatosis" in detail  # newest analysed study: A
