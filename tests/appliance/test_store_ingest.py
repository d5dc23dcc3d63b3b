"""Ingest: instances stored once (even from concurrent processes), PHI off by default, quiet period, versions."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp

import pytest
from sqlalchemy import func, select

from appliance.errors import StoreError
from appliance.store import PHI_SETTING, open_store
from appliance.store.models import Association, AuditEvent, Instance, Series, Study

from .conftest import add_instance

CT = dict(sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.4.90",
          path="/spool/a.dcm", size_bytes=1234, calling_ae="CT1")


def test_duplicate_sop_instance_is_stored_once(store):
    first = store.record_instance(study_uid="1.1", series_uid="1.1.1", sop_instance_uid="1.1.1.1", accession="A7",
                                  study_date="20240102", series_number=3, **CT)
    again = store.record_instance(study_uid="1.1", series_uid="1.1.1", sop_instance_uid="1.1.1.1", **CT)
    assert (first, again) == (True, False)
    with store.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 1
        study = s.scalars(select(Study)).one()
        assert (study.n_instances, study.accession, study.study_date) == (1, "A7", "20240102")
        assert s.scalars(select(Series)).one().n_instances == 1


def _record_many(url: str, start_evt, uids: list[str], out):
    store = open_store(url, migrate_schema=False)
    start_evt.wait()
    out.put(sum(store.record_instance(study_uid="2.1", series_uid="2.1.1", sop_instance_uid=u, **CT) for u in uids))
    store.close()


def test_duplicates_from_two_concurrent_processes_stored_once(store, store_url):
    uids = [f"2.1.1.{i}" for i in range(40)]
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_record_many, args=(store_url, start, uids, out)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    written = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert sum(written) == len(uids)  # every instance written by exactly one of the two
    with store.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == len(uids)
        assert s.scalar(select(func.count()).select_from(Study)) == 1
        assert s.scalars(select(Study)).one().n_instances == len(uids)


def test_phi_not_stored_by_default(store):
    store.record_instance(study_uid="3.1", series_uid="3.1.1", sop_instance_uid="3.1.1.1", accession="ACC1",
                          patient_name="DOE^JANE", patient_id="PID123", **CT)
    with store.read_session() as s:
        study = s.scalars(select(Study)).one()
        assert (study.patient_name, study.patient_id) == (None, None)
        assert study.accession == "ACC1" and study.study_uid == "3.1"


def test_phi_stored_when_admin_enables_it(store, store_url):
    store.set_setting(PHI_SETTING, True, actor="admin")
    store.record_instance(study_uid="3.2", series_uid="3.2.1", sop_instance_uid="3.2.1.1",
                          patient_name="DOE^JANE", patient_id="PID123", **CT)
    explicit_off = open_store(store_url, store_phi=False)
    explicit_off.record_instance(study_uid="3.3", series_uid="3.3.1", sop_instance_uid="3.3.1.1",
                                 patient_name="ROE^RICH", patient_id="PID9", **CT)
    explicit_off.close()
    with store.read_session() as s:
        rows = dict(s.execute(select(Study.study_uid, Study.patient_id)).all())
        assert rows == {"3.2": "PID123", "3.3": None}
        audit = s.scalars(select(AuditEvent).where(AuditEvent.event == "setting_changed")).one()
        assert audit.actor == "admin" and audit.detail["key"] == PHI_SETTING


def test_studies_ready_respects_quiet_period_and_late_instances_make_a_new_version(store):
    add_instance(store, "4.1", 3)
    now = dt.datetime.now(dt.timezone.utc)
    assert store.studies_ready(60, now=now) == []  # still receiving
    later = now + dt.timedelta(seconds=61)
    assert store.studies_ready(60, now=later) == ["4.1"]
    first = store.enqueue_analysis("4.1", reason="new study")
    assert store.studies_ready(60, now=later) == []  # covered by the queued job
    add_instance(store, "4.1", 1, received_at=later)  # a late instance after the job was queued
    assert store.studies_ready(60, now=later) == []  # quiet period starts again
    assert store.studies_ready(60, now=later + dt.timedelta(seconds=61)) == ["4.1"]
    second = store.enqueue_analysis("4.1", reason="late instances")
    assert second != first
    job = store.claim_job("w")
    job2 = store.claim_job("w")
    assert sorted([job.analysis_version, job2.analysis_version]) == [1, 2]
    assert store.studies_ready(0, now=later + dt.timedelta(seconds=61)) == []


def test_series_under_two_studies_is_rejected(store):
    store.record_instance(study_uid="5.1", series_uid="5.9", sop_instance_uid="5.9.1", **CT)
    with pytest.raises(StoreError, match="mixes up UIDs"):
        store.record_instance(study_uid="5.2", series_uid="5.9", sop_instance_uid="5.9.2", **CT)
    with pytest.raises(StoreError, match="SOPInstanceUID"):
        store.record_instance(study_uid="5.1", series_uid="5.9", sop_instance_uid="", **CT)
    with store.read_session() as s:  # the rejected instance left nothing behind
        assert s.scalar(select(func.count()).select_from(Study)) == 1
        assert s.scalar(select(func.count()).select_from(Instance)) == 1


def test_associations_and_audit_are_recorded(store):
    t0 = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.timezone.utc)
    aid = store.record_association(calling_ae="CT1", called_ae="TOTALFM", peer_host="10.0.0.5", started_at=t0,
                                   ended_at=t0 + dt.timedelta(seconds=9), n_received=120, n_failed=2,
                                   status="released", detail="2 instances rejected: not CT")
    store.audit("node_started", actor="system", detail={"port": 11112})
    with store.read_session() as s:
        a = s.get(Association, aid)
        assert (a.calling_ae, a.n_received, a.n_failed, a.started_at) == ("CT1", 120, 2, dt.datetime(2024, 5, 1, 10))
        ev = s.scalars(select(AuditEvent)).one()
        assert (ev.event, ev.actor, ev.detail) == ("node_started", "system", {"port": 11112})


def test_session_commits_on_success_and_rolls_back_on_error(store):
    with pytest.raises(RuntimeError):
        with store.session() as s:
            s.add(AuditEvent(at=dt.datetime(2024, 1, 1), event="lost", actor="x"))
            s.flush()
            raise RuntimeError("boom")
    with store.session() as s:
        s.add(AuditEvent(at=dt.datetime(2024, 1, 1), event="kept", actor="x"))
    with store.read_session() as s:
        assert s.scalars(select(AuditEvent.event)).all() == ["kept"]
