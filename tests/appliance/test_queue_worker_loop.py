"""run_worker: failures go to fail_job with the error kept; a result whose lease was lost mid-work is discarded."""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select

from appliance.errors import SeriesGeometryError
from appliance.store.models import Analysis, Job as JobRow, Worker
from appliance.store.worker_loop import run_worker

from .conftest import add_instance
from .test_queue import _result


def test_work_errors_are_recorded_and_worker_carries_on(store):
    for uid in ("1.5", "1.6"):
        add_instance(store, uid, 1)
        store.enqueue_analysis(uid, reason="new study", max_attempts=1)

    def work(job):
        if job.study_uid == "1.5":
            raise SeriesGeometryError("slices 12 and 13 are duplicated")
        return _result()

    assert run_worker(store, "w1", work, lease_seconds=5, exit_when_idle=True) == 1
    with store.read_session() as s:
        states = dict(s.execute(select(JobRow.id, JobRow.state)).all())
        failed = s.scalars(select(JobRow).where(JobRow.state == "failed")).one()
        assert sorted(states.values()) == ["done", "failed"]
        assert failed.last_error == "SeriesGeometryError: slices 12 and 13 are duplicated"
        worker = s.get(Worker, "w1")  # the dashboard sees the worker, idle after the queue ran dry
        assert worker.current_job_id is None and worker.last_heartbeat is not None


def test_result_is_discarded_when_the_job_is_cancelled_mid_work(store):
    add_instance(store, "1.7", 1)
    job_id = store.enqueue_analysis("1.7", reason="new study")
    started = threading.Event()

    def work(job):
        started.set()
        time.sleep(1.0)  # heartbeats (every 0.2 s) notice the cancel meanwhile
        return _result()

    t = threading.Thread(target=run_worker, args=(store, "w1", work),
                         kwargs=dict(lease_seconds=0.6, heartbeat_seconds=0.2, exit_when_idle=True))
    t.start()
    assert started.wait(10)
    store.cancel_job(job_id, actor="admin")
    t.join(20)
    assert not t.is_alive()
    with store.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Analysis)) == 0
        assert s.get(JobRow, job_id).state == "cancelled"


def test_worker_row_is_heartbeated_during_a_long_job(store):
    # The dashboard tells a busy worker from a dead one by its row's heartbeat; it must move during the job.
    add_instance(store, "1.9", 1)
    store.enqueue_analysis("1.9", reason="new study")
    seen = []

    def work(job):
        with store.read_session() as s:
            first = s.get(Worker, "w3").last_heartbeat
        time.sleep(1.0)  # lease heartbeats every 0.2 s
        with store.read_session() as s:
            row = s.get(Worker, "w3")
            seen.append((first, row.last_heartbeat, row.current_job_id, job.id))
        return _result()

    assert run_worker(store, "w3", work, lease_seconds=0.6, heartbeat_seconds=0.2, exit_when_idle=True) == 1
    first, later, current, job_id = seen[0]
    assert later > first and current == job_id
