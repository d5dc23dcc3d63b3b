"""Retention: only old studies with results delivered everywhere lose their spooled images; everything else is kept
with the reason; files outside the spool are never touched; dry-run deletes nothing; the purge is audited."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from appliance.commands import retention as retention_cmd
from appliance.retention import run_retention
from appliance.store import AnalysisResult, open_store
from appliance.store.models import AuditEvent, Instance

NOW = dt.datetime(2026, 11, 28, 12, 0)
OLD = NOW - dt.timedelta(days=40)
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def site(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    yield store, spool, tmp_path
    store.close()


def _study(store, spool, uid, n=3, when=OLD, outside=None):
    paths = []
    for i in range(n):
        p = (outside or spool) / uid / "1" / f"{i}.dcm"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"D" * 100)
        paths.append(p)
        store.record_instance(study_uid=uid, series_uid=f"{uid}.1", sop_instance_uid=f"{uid}.1.{i}",
                              sop_class_uid=CT, transfer_syntax_uid="1.2.840.10008.1.2.1", path=str(p),
                              size_bytes=100, calling_ae="MOD", received_at=when)
    return paths


def _analyse(store, uid, deliveries=("sent", "sent")):
    store.enqueue_analysis(uid, reason="t")
    job = store.claim_job("w")
    store.complete_job(job.id, "w", AnalysisResult(series_uid=f"{uid}.1"))
    aid = store.latest_analysis(uid)[0]
    for kind, state in zip(("SR", "SEG"), deliveries):
        d = store.enqueue_delivery(aid, destination="pacs", kind=kind)
        if state == "sent":
            store.delivery_sent(d)
    return aid


def test_only_old_delivered_studies_are_purged(site):
    store, spool, tmp = site
    done = _study(store, spool, "1.1")
    _analyse(store, "1.1")
    undelivered = _study(store, spool, "1.2")
    _analyse(store, "1.2", deliveries=("sent", "pending"))
    recent = _study(store, spool, "1.3", when=NOW - dt.timedelta(days=2))
    _analyse(store, "1.3")
    failed = _study(store, spool, "1.4")
    store.enqueue_analysis("1.4", reason="t", max_attempts=1)
    j = store.claim_job("w")
    store.fail_job(j.id, "w", "boom")
    rep = run_retention(store, spool, days=30, now=NOW)
    assert [p.study_uid for p in rep.purged] == ["1.1"] and rep.files == 3 and rep.bytes == 300
    assert not any(p.exists() for p in done) and not (spool / "1.1").exists()  # emptied folders removed
    assert all(p.exists() for p in undelivered + recent + failed)
    assert rep.kept == {"1.2": "results not delivered to every destination",
                        "1.4": "no result (job failed, cancelled or never ran)"}
    with store.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 9
        ev = s.scalars(select(AuditEvent).where(AuditEvent.event == "retention_purge")).one()
        assert ev.detail["study_uid"] == "1.1" and ev.detail["files"] == 3
    assert store.latest_analysis("1.1") is not None  # results stay
    assert run_retention(store, spool, days=30, now=NOW).purged == []  # idempotent


def test_dry_run_deletes_nothing(site):
    store, spool, _ = site
    files = _study(store, spool, "2.1")
    _analyse(store, "2.1")
    rep = run_retention(store, spool, days=30, dry_run=True, now=NOW)
    assert rep.files == 3 and all(p.exists() for p in files)


def test_no_delivery_needs_flag(site):
    store, spool, _ = site
    _study(store, spool, "3.1")
    _analyse(store, "3.1", deliveries=())
    assert run_retention(store, spool, days=30, now=NOW).purged == []
    assert run_retention(store, spool, days=30, require_delivery=False, now=NOW).files == 3


def test_never_deletes_outside_the_spool(site):
    store, spool, tmp = site
    elsewhere = tmp / "elsewhere"
    files = _study(store, spool, "4.1", outside=elsewhere)
    _analyse(store, "4.1")
    rep = run_retention(store, spool, days=30, now=NOW)
    assert len(rep.purged[0].outside_spool) == 3 and rep.files == 0
    assert all(p.exists() for p in files)


def test_cli(site, capsys):
    store, spool, tmp = site
    _study(store, spool, "5.1", when=dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(days=9))
    _analyse(store, "5.1")
    url = f"sqlite:///{tmp}/t.db"
    assert retention_cmd.main(["--db", url, "--spool", str(spool), "--days", "7", "--dry-run"]) == 0
    assert "would delete 3 files" in capsys.readouterr().out
    assert retention_cmd.main(["--db", url, "--spool", str(spool), "--days", "7"]) == 0
    assert "1 studies, 3 files" in capsys.readouterr().out
