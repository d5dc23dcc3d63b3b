"""The work queue on both backends: leases, takeover, complete-in-one-transaction, backoff, admin actions,
concurrent claimers never getting the same job."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from appliance.errors import LeaseLostError, StoreError
from appliance.store import (AnalysisResult, FindingResult, OrganResult, ReportDraft, embedding_from_bytes,
                             open_store)
from appliance.store.models import Analysis, AuditEvent, FindingRow, Job as JobRow, OrganResultRow, ReportRow

from .conftest import add_instance


def _result(n_organs=2) -> AnalysisResult:
    organs = [OrganResult(f"organ{i}", "ok", volume_ml=100.0 + i, mean_hu=40.0, std_hu=10.0,
                          embedding=np.arange(8, dtype=np.float32) + i) for i in range(n_organs)]
    return AnalysisResult(organs=organs,
                          findings=[FindingResult("organ0", "cyst", 0.8, 0.5, True),
                                    FindingResult("organ1", "mass", 0.1, 0.5, False)],
                          report=ReportDraft("DRAFT: cyst in organ0.", {"organ0": ["cyst"]}, {"llm": "test"}),
                          series_uid="9.9", bundle_id="bundle-1", backend="cpu", timings={"total_s": 1.5})


def _queue_one(store, uid="7.1") -> int:
    add_instance(store, uid, 2)
    return store.enqueue_analysis(uid, reason="new study")


def _count(s, model, **where):
    q = select(func.count()).select_from(model)
    for k, v in where.items():
        q = q.where(getattr(model, k) == v)
    return s.scalar(q)


def test_claim_complete_writes_every_row(store):
    job_id = _queue_one(store)
    job = store.claim_job("w1", lease_seconds=30)
    assert job.id == job_id and job.study_uid == "7.1" and job.attempts == 1
    assert store.claim_job("w2") is None  # leased, nothing else due
    assert store.heartbeat(job.id, "w1", lease_seconds=30)
    assert not store.heartbeat(job.id, "w2")
    store.complete_job(job.id, "w1", _result())
    with store.read_session() as s:
        a = s.scalars(select(Analysis)).one()
        assert (a.version, a.job_id, a.bundle_id, a.timings) == (1, job_id, "bundle-1", {"total_s": 1.5})
        assert _count(s, OrganResultRow, analysis_id=a.id) == 2
        assert _count(s, FindingRow, analysis_id=a.id) == 2
        r = s.scalars(select(ReportRow)).one()
        assert r.draft_text.startswith("DRAFT") and r.structured == {"organ0": ["cyst"]}
        o = s.scalars(select(OrganResultRow).where(OrganResultRow.organ == "organ1")).one()
        np.testing.assert_array_equal(embedding_from_bytes(o.embedding, o.embedding_dim), np.arange(8) + 1)
        j = s.get(JobRow, job_id)
        assert (j.state, j.lease_owner) == ("done", None)
    assert not store.heartbeat(job.id, "w1")


def test_failing_result_write_leaves_no_half_result(store):
    job_id = _queue_one(store)
    job = store.claim_job("w1")
    bad = _result()
    bad.organs.append(OrganResult("organ0", "ok"))  # duplicate organ: violates a unique constraint mid-write
    with pytest.raises(Exception):
        store.complete_job(job.id, "w1", bad)
    with store.read_session() as s:
        assert _count(s, Analysis) == 0 and _count(s, OrganResultRow) == 0 and _count(s, ReportRow) == 0
        assert s.get(JobRow, job_id).state == "running"
    store.complete_job(job.id, "w1", _result())  # a correct result still goes in
    with store.read_session() as s:
        assert _count(s, Analysis) == 1 and _count(s, OrganResultRow) == 2


def test_expired_lease_is_taken_over_and_old_holder_is_refused(store):
    _queue_one(store)
    job = store.claim_job("w1", lease_seconds=0.5)
    time.sleep(0.7)
    taken = store.claim_job("w2", lease_seconds=30)
    assert taken.id == job.id and taken.attempts == 2
    assert not store.heartbeat(job.id, "w1")
    with pytest.raises(LeaseLostError, match="no longer held by worker w1"):
        store.complete_job(job.id, "w1", _result())
    store.complete_job(job.id, "w2", _result())
    with store.read_session() as s:
        assert _count(s, Analysis) == 1


def test_worker_that_keeps_dying_fails_the_job(store):
    add_instance(store, "7.1", 1)
    job_id = store.enqueue_analysis("7.1", reason="new study", max_attempts=2)
    now = dt.datetime.now(dt.timezone.utc)
    store.claim_job("w1", lease_seconds=1, now=now)
    store.claim_job("w2", lease_seconds=1, now=now + dt.timedelta(seconds=2))
    assert store.claim_job("w3", lease_seconds=1, now=now + dt.timedelta(seconds=4)) is None
    with store.read_session() as s:
        j = s.get(JobRow, job_id)
        assert j.state == "failed" and "lease expired" in j.last_error


def test_fail_backs_off_exponentially_then_fails_keeping_the_error(store):
    store.retry_base_seconds = 10
    job_id = _queue_one(store)
    t = dt.datetime.now(dt.timezone.utc)
    delays = []
    for attempt in (1, 2):
        job = store.claim_job("w1", now=t)
        assert job.attempts == attempt
        store.fail_job(job.id, "w1", f"RuntimeError: boom {attempt}", now=t)
        with store.read_session() as s:
            j = s.get(JobRow, job_id)
            assert j.state == "pending" and j.last_error == f"RuntimeError: boom {attempt}"
            delays.append((j.not_before - t.replace(tzinfo=None)).total_seconds())
        assert store.claim_job("w1", now=t) is None  # not before the backoff
        t = t + dt.timedelta(seconds=delays[-1] + 1)
    assert delays == [10, 20]
    job = store.claim_job("w1", now=t)
    store.fail_job(job.id, "w1", "RuntimeError: boom 3", now=t)
    with store.read_session() as s:
        j = s.get(JobRow, job_id)
        assert (j.state, j.attempts, j.last_error) == ("failed", 3, "RuntimeError: boom 3")
    assert store.claim_job("w1", now=t + dt.timedelta(days=1)) is None


def test_admin_retry_cancel_reanalyse_are_audited(store):
    job_id = _queue_one(store)
    job = store.claim_job("w1")
    store.cancel_job(job_id, actor="alice")
    assert not store.heartbeat(job.id, "w1")
    with pytest.raises(LeaseLostError):
        store.complete_job(job.id, "w1", _result())
    with pytest.raises(StoreError, match="only failed or cancelled"):
        store.retry_job(_queue_one(store, "7.2"), actor="alice")
    store.retry_job(job_id, actor="bob")
    claimed = {j.id: j for j in (store.claim_job("w1"), store.claim_job("w1"))}
    again = claimed[job_id]
    assert again.study_uid == "7.1" and again.attempts == 1
    store.complete_job(again.id, "w1", _result())
    new_job = store.reanalyse_study("7.1", actor="carol")
    with pytest.raises(StoreError, match="not stored"):
        store.reanalyse_study("0.0", actor="carol")
    with store.read_session() as s:
        assert s.get(JobRow, new_job).analysis_version == 2
        events = s.execute(select(AuditEvent.event, AuditEvent.actor).order_by(AuditEvent.id)).all()
        assert events == [("job_cancel", "alice"), ("job_retry", "bob"), ("study_reanalyse", "carol")]


def _claim_all(url: str, name: str, start, out):
    store = open_store(url, migrate_schema=False)
    start.wait()
    got = []
    while (job := store.claim_job(name, lease_seconds=300)) is not None:
        got.append(job.id)
    out.put((name, got))
    store.close()


def test_concurrent_claimers_never_get_the_same_job(store, store_url):
    """On PostgreSQL this exercises FOR UPDATE SKIP LOCKED; on SQLite the IMMEDIATE write lock."""
    for i in range(30):
        add_instance(store, f"8.{i}", 1)
        store.enqueue_analysis(f"8.{i}", reason="new study")
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(store_url, f"c{i}", start, out)) for i in range(4)]
    for p in procs:
        p.start()
    start.set()
    claimed = dict(out.get(timeout=90) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    flat = [j for got in claimed.values() for j in got]
    assert len(flat) == 30 and len(set(flat)) == 30
    with store.read_session() as s:
        owners = dict(s.execute(select(JobRow.id, JobRow.lease_owner)).all())
    for name, got in claimed.items():
        assert all(owners[j] == name for j in got)
