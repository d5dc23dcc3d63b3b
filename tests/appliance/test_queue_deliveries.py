"""Reading results back, and the persistent SR/SEG delivery retry queue, on both backends."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from sqlalchemy import select

from appliance.errors import StoreError
from appliance.store.models import AuditEvent

from .conftest import add_instance
from .test_queue import _result


def _done_analysis(store, uid="6.1") -> int:
    add_instance(store, uid, 1)
    store.enqueue_analysis(uid, reason="new study")
    job = store.claim_job("w")
    store.complete_job(job.id, "w", _result())
    return store.latest_analysis(uid)[0]


def test_latest_analysis_round_trips_the_result(store):
    assert store.latest_analysis("6.1") is None
    _done_analysis(store)
    store.reanalyse_study("6.1", actor="admin")
    job = store.claim_job("w")
    r2 = _result(n_organs=3)
    r2.report.draft_text = "DRAFT v2"
    store.complete_job(job.id, "w", r2)
    _, version, got = store.latest_analysis("6.1")
    assert version == 2 and got.report.draft_text == "DRAFT v2" and len(got.organs) == 3
    np.testing.assert_array_equal(got.organs[2].embedding, np.arange(8, dtype=np.float32) + 2)
    assert [(f.finding, f.positive) for f in got.findings] == [("cyst", True), ("mass", False)]
    assert got.timings == {"total_s": 1.5} and got.bundle_id == "bundle-1"


def test_delivery_retries_with_backoff_then_fails_keeping_error(store):
    analysis_id = _done_analysis(store)
    store.delivery_max_attempts, store.delivery_retry_base_seconds = 3, 60
    sr = store.enqueue_delivery(analysis_id, destination="PACS1", kind="SR")
    seg = store.enqueue_delivery(analysis_id, destination="PACS1", kind="SEG")
    # idempotent: planning the same object for the same destination again (another node process, a restart)
    # returns the existing row instead of queueing a second send
    assert store.enqueue_delivery(analysis_id, destination="PACS1", kind="SR") == sr
    with pytest.raises(StoreError, match="kind 'PDF' is unknown"):
        store.enqueue_delivery(analysis_id, destination="PACS1", kind="PDF")
    with pytest.raises(StoreError, match="does not exist"):
        store.enqueue_delivery(analysis_id + 99, destination="PACS1", kind="SR")
    t = dt.datetime.now(dt.timezone.utc)
    due = store.due_deliveries(now=t)
    assert [(d.id, d.kind, d.study_uid) for d in due] == [(sr, "SR", "6.1"), (seg, "SEG", "6.1")]
    store.delivery_sent(seg)
    store.delivery_failed(sr, "association rejected by PACS1", now=t)
    assert store.due_deliveries(now=t + dt.timedelta(seconds=59)) == []
    assert [d.id for d in store.due_deliveries(now=t + dt.timedelta(seconds=61))] == [sr]
    store.delivery_failed(sr, "timeout", now=t + dt.timedelta(seconds=61))
    assert store.due_deliveries(now=t + dt.timedelta(seconds=61 + 119)) == []  # 2nd delay is 120 s
    store.delivery_failed(sr, "timeout again", now=t + dt.timedelta(seconds=200))
    assert store.due_deliveries(now=t + dt.timedelta(days=30)) == []  # gave up after 3 attempts
    store.resend_delivery(sr, actor="admin")
    assert [d.id for d in store.due_deliveries()] == [sr]
    with store.read_session() as s:
        assert s.scalars(select(AuditEvent.event)).all() == ["delivery_resend"]
