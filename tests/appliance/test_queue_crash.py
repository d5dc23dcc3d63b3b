"""CRASH TEST: two real worker processes drain 20 queued studies while one of them is SIGKILLed mid-job five times
(and restarted each time). Every study must end with exactly one complete result version: nothing lost, nothing
doubled, no half results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from appliance.store.models import Analysis, FindingRow, Job as JobRow, OrganResultRow, ReportRow, Study

from .conftest import REPO_ROOT, add_instance

N_STUDIES, N_KILLS, N_ORGANS, N_FINDINGS = 20, 5, 3, 4

WORKER = f"""
import sys, time
import numpy as np
from appliance.store import open_store, AnalysisResult, OrganResult, FindingResult, ReportDraft
from appliance.store.worker_loop import run_worker

url, worker_id = sys.argv[1], sys.argv[2]
store = open_store(url, migrate_schema=False)

def work(job):
    time.sleep(1.0)  # "analysing"
    organs = [OrganResult(f"organ{{i}}", "ok", volume_ml=10.0 * i, mean_hu=30.0, std_hu=5.0,
                          embedding=np.full(16, job.id, np.float32)) for i in range({N_ORGANS})]
    findings = [FindingResult(f"organ{{i % {N_ORGANS}}}", f"finding{{i}}", 0.1 * i, 0.5, i > 2)
                for i in range({N_FINDINGS})]
    return AnalysisResult(organs=organs, findings=findings, report=ReportDraft(f"DRAFT for {{job.study_uid}}"))

run_worker(store, worker_id, work, lease_seconds=2.0, heartbeat_seconds=0.4, poll_seconds=0.2)
"""


def _start(url: str, worker_id: str, log_dir: Path) -> subprocess.Popen:
    log = open(log_dir / f"{worker_id}.log", "w")
    return subprocess.Popen([sys.executable, "-c", WORKER, url, worker_id], cwd=REPO_ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))


def _holds_running_job(store, worker_id: str) -> bool:
    with store.read_session() as s:
        return s.scalar(select(func.count()).select_from(JobRow).where(
            JobRow.lease_owner == worker_id, JobRow.state == "running")) > 0


def _all_done(store) -> bool:
    return store.job_counts().get("done", 0) == N_STUDIES


def test_sigkilled_worker_loses_nothing_and_leaves_no_half_results(store, store_url, tmp_path):
    for i in range(N_STUDIES):
        add_instance(store, f"9.{i}", 2)
    for uid in store.studies_ready(0):
        store.enqueue_analysis(uid, reason="new study", max_attempts=N_KILLS + 5)
    assert store.job_counts() == {"pending": N_STUDIES}

    steady = _start(store_url, "steady", tmp_path)
    victim_id, victim = "victim0", _start(store_url, "victim0", tmp_path)
    deadline = time.monotonic() + 60
    try:
        kills = 0
        while kills < N_KILLS and time.monotonic() < deadline and not _all_done(store):
            if _holds_running_job(store, victim_id):
                time.sleep(0.3)  # let it get into the middle of the work
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                kills += 1
                victim_id = f"victim{kills}"
                victim = _start(store_url, victim_id, tmp_path)
            time.sleep(0.1)
        assert kills == N_KILLS, "the victim never held a job; the test did not exercise crashes"
        while not _all_done(store) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for p in (steady, victim):
            p.terminate()
            p.wait(timeout=10)
    logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")}
    assert store.job_counts() == {"done": N_STUDIES}, logs

    with store.read_session() as s:
        per_study = s.execute(
            select(Study.study_uid, func.count(Analysis.id)).outerjoin(Analysis, Analysis.study_id == Study.id)
            .group_by(Study.study_uid)).all()
        assert len(per_study) == N_STUDIES and all(n == 1 for _, n in per_study), per_study
        for a in s.scalars(select(Analysis)):
            assert s.scalar(select(func.count()).select_from(OrganResultRow)
                            .where(OrganResultRow.analysis_id == a.id)) == N_ORGANS
            assert s.scalar(select(func.count()).select_from(FindingRow)
                            .where(FindingRow.analysis_id == a.id)) == N_FINDINGS
            assert s.scalar(select(func.count()).select_from(ReportRow)
                            .where(ReportRow.analysis_id == a.id)) == 1
        assert s.scalar(select(func.count()).select_from(OrganResultRow)) == N_STUDIES * N_ORGANS
        assert s.scalar(select(func.count()).select_from(ReportRow)) == N_STUDIES
        # the killed attempts really happened and were retried
        assert s.scalar(select(func.sum(JobRow.attempts))) >= N_STUDIES + N_KILLS
