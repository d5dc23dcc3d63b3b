"""The claim -> heartbeat -> complete/fail loop every analysis worker runs, independent of what the work is.

Why a heartbeat thread: the analysis of one study takes longer than a sensible lease, so the lease is renewed in the
background; if a renewal finds the lease gone (taken over after a stall, or cancelled by an admin) the result is
dropped instead of written twice.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from appliance.errors import LeaseLostError
from appliance.store.queue import Job
from appliance.store.results import AnalysisResult

log = logging.getLogger(__name__)


def run_worker(store, worker_id: str, work: Callable[[Job], AnalysisResult], *, lease_seconds: float = 60.0,
               heartbeat_seconds: float | None = None, poll_seconds: float = 2.0, max_jobs: int | None = None,
               stop: threading.Event | None = None, exit_when_idle: bool = False) -> int:
    """Process jobs until `stop` is set (or max_jobs done, or the queue is empty with exit_when_idle).
    Returns the number of jobs completed."""
    stop = stop or threading.Event()
    heartbeat_seconds = heartbeat_seconds or lease_seconds / 3
    host, pid = socket.gethostname(), os.getpid()
    done = 0
    while not stop.is_set() and (max_jobs is None or done < max_jobs):
        store.worker_heartbeat(worker_id, host=host, pid=pid, current_job_id=None)
        job = store.claim_job(worker_id, lease_seconds=lease_seconds)
        if job is None:
            if exit_when_idle:
                break
            stop.wait(poll_seconds)
            continue
        store.worker_heartbeat(worker_id, host=host, pid=pid, current_job_id=job.id)
        log.info("job %s: analysing version %s (attempt %s/%s)", job.id, job.analysis_version, job.attempts,
                 job.max_attempts)
        if _run_one(store, worker_id, job, work, lease_seconds, heartbeat_seconds):
            done += 1
    return done


def _run_one(store, worker_id, job, work, lease_seconds, heartbeat_seconds) -> bool:
    finished, lost = threading.Event(), threading.Event()

    host, pid = socket.gethostname(), os.getpid()

    def beat():
        while not finished.wait(heartbeat_seconds):
            if not store.heartbeat(job.id, worker_id, lease_seconds=lease_seconds):
                lost.set()
                return
            try:  # the worker row too, so the dashboard sees a live worker during a long study, not only between
                store.worker_heartbeat(worker_id, host=host, pid=pid, current_job_id=job.id)
            except Exception:  # status only; the lease above is what matters
                log.debug("worker heartbeat failed", exc_info=True)

    t = threading.Thread(target=beat, name=f"lease-{job.id}", daemon=True)
    t.start()
    try:
        try:
            result = work(job)
        except Exception as exc:  # the job failed, the worker carries on with the next one
            log.warning("job %s failed: %s", job.id, exc)
            finished.set()
            t.join()
            if not lost.is_set():
                try:
                    store.fail_job(job.id, worker_id, f"{type(exc).__name__}: {exc}")
                except LeaseLostError:
                    pass
            return False
        finished.set()
        t.join()
        if lost.is_set():
            log.warning("job %s: lease lost while working; result discarded", job.id)
            return False
        try:
            store.complete_job(job.id, worker_id, result)
        except LeaseLostError as exc:
            log.warning("%s", exc)
            return False
        return True
    finally:
        finished.set()
