"""The durable work queue: studies waiting for analysis, leases held by workers, retries with backoff.

A job is claimed with a lease; the worker renews it (heartbeat) while it works. A worker that dies simply stops
renewing, and once the lease expires any worker may take the job over. Results are written together with the job's
final state in one transaction, and only by the current lease holder, so a study never has a half result or two
versions from one job.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from appliance.errors import LeaseLostError, StoreError
from appliance.store.models import (
    Analysis, FindingRow, Job as JobRow, JobState, OrganResultRow, ReportRow, Study, as_naive_utc, utcnow,
)
from appliance.store.results import AnalysisResult


@dataclass(frozen=True)
class Job:
    """A claimed job, detached from the database (safe to pass to the pipeline and across threads)."""
    id: int
    study_uid: str
    study_id: int
    analysis_version: int
    reason: str
    attempts: int
    max_attempts: int
    lease_expires_at: dt.datetime


class QueueMixin:
    # provided by Store
    dialect: str
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float

    # --- scheduling -----------------------------------------------------------------------------------------------
    def studies_ready(self, quiet_seconds: float, now: dt.datetime | None = None) -> list[str]:
        """Studies quiet for `quiet_seconds` that hold instances no job (of any state) has covered yet."""
        now = as_naive_utc(now) if now else utcnow()
        covered = (select(JobRow.study_id, func.max(JobRow.instances_covered).label("n"))
                   .group_by(JobRow.study_id).subquery())
        q = (select(Study.study_uid)
             .outerjoin(covered, covered.c.study_id == Study.id)
             .where(Study.last_received_at <= now - dt.timedelta(seconds=quiet_seconds))
             .where(Study.n_instances > func.coalesce(covered.c.n, 0))
             .order_by(Study.last_received_at))
        with self.read_session() as s:
            return list(s.scalars(q))

    def enqueue_analysis(self, study_uid: str, *, reason: str, max_attempts: int | None = None) -> int:
        """Queue a new analysis version of the study; returns the job id."""
        with self.session() as s:
            return self._enqueue(s, study_uid, reason=reason, max_attempts=max_attempts)

    def _enqueue(self, s: Session, study_uid: str, *, reason: str, max_attempts: int | None) -> int:
        # Lock the study row so two schedulers cannot pick the same version number (SQLite: the write lock does it).
        study = s.scalars(select(Study).where(Study.study_uid == study_uid).with_for_update()).one_or_none()
        if study is None:
            raise StoreError(f"study {study_uid} is not stored; nothing to analyse")
        version = (s.scalar(select(func.max(JobRow.analysis_version)).where(JobRow.study_id == study.id)) or 0) + 1
        now = utcnow()
        job = JobRow(study_id=study.id, analysis_version=version, instances_covered=study.n_instances, reason=reason,
                     state=JobState.PENDING, attempts=0, max_attempts=max_attempts or self.max_attempts,
                     not_before=now, created_at=now)
        s.add(job)
        s.flush()
        return job.id

    # --- worker side ----------------------------------------------------------------------------------------------
    def claim_job(self, worker_id: str, *, lease_seconds: float = 60, now: dt.datetime | None = None) -> Job | None:
        """Take the oldest due job (pending, or running with an expired lease) and lease it to `worker_id`."""
        now = as_naive_utc(now) if now else utcnow()
        with self.session() as s:
            # A job whose worker died max_attempts times is not offered again: it probably kills workers.
            s.execute(update(JobRow).where(
                JobRow.state == JobState.RUNNING, JobRow.lease_expires_at < now,
                JobRow.attempts >= JobRow.max_attempts,
            ).values(state=JobState.FAILED, finished_at=now, lease_owner=None,
                     last_error=func.coalesce(JobRow.last_error, "") + "worker lost (lease expired) on every attempt"))
            due = (select(JobRow.id).where(or_(
                and_(JobRow.state == JobState.PENDING, JobRow.not_before <= now),
                and_(JobRow.state == JobState.RUNNING, JobRow.lease_expires_at < now),
            )).order_by(JobRow.not_before, JobRow.id).limit(1))
            if self.dialect == "postgresql":
                # Concurrent claimers skip rows another transaction is claiming instead of waiting for them.
                due = due.with_for_update(skip_locked=True)
            # One atomic UPDATE ... WHERE id = (SELECT ...): on SQLite inside BEGIN IMMEDIATE (engine.py).
            job_id = s.scalar(update(JobRow).where(JobRow.id == due.scalar_subquery()).values(
                state=JobState.RUNNING, lease_owner=worker_id,
                lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
                attempts=JobRow.attempts + 1, started_at=now,
            ).returning(JobRow.id))
            if job_id is None:
                return None
            row, study_uid = s.execute(select(JobRow, Study.study_uid).join(Study, Study.id == JobRow.study_id)
                                       .where(JobRow.id == job_id)).one()
            return Job(id=row.id, study_uid=study_uid, study_id=row.study_id, analysis_version=row.analysis_version,
                       reason=row.reason, attempts=row.attempts, max_attempts=row.max_attempts,
                       lease_expires_at=row.lease_expires_at)

    def heartbeat(self, job_id: int, worker_id: str, *, lease_seconds: float = 60) -> bool:
        """Renew the lease; False when the worker no longer holds it (taken over or cancelled): stop working."""
        now = utcnow()
        with self.session() as s:
            res = s.execute(update(JobRow).where(
                JobRow.id == job_id, JobRow.lease_owner == worker_id, JobRow.state == JobState.RUNNING,
            ).values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds)))
            return res.rowcount == 1

    def _held_job(self, s: Session, job_id: int, worker_id: str) -> JobRow:
        job = s.scalars(select(JobRow).where(JobRow.id == job_id).with_for_update()).one_or_none()
        if job is None:
            raise StoreError(f"job {job_id} does not exist")
        if job.state != JobState.RUNNING or job.lease_owner != worker_id:
            raise LeaseLostError(f"job {job_id} is no longer held by worker {worker_id} (state {job.state}, "
                                 f"held by {job.lease_owner or 'nobody'}); its result was discarded")
        return job

    def complete_job(self, job_id: int, worker_id: str, result: AnalysisResult) -> None:
        """Write the whole result version and mark the job done, in ONE transaction (all or nothing)."""
        now = utcnow()
        with self.session() as s:
            job = self._held_job(s, job_id, worker_id)
            analysis = Analysis(study_id=job.study_id, version=job.analysis_version, job_id=job.id,
                                series_uid=result.series_uid, bundle_id=result.bundle_id, backend=result.backend,
                                timings=result.timings, artifacts=result.artifacts, created_at=now)
            s.add(analysis)
            s.flush()
            for o in result.organs:
                data, dim = o.embedding_bytes()
                s.add(OrganResultRow(analysis_id=analysis.id, organ=o.organ, status=o.status, volume_ml=o.volume_ml,
                                     mean_hu=o.mean_hu, std_hu=o.std_hu, embedding=data, embedding_dim=dim))
            for f in result.findings:
                s.add(FindingRow(analysis_id=analysis.id, organ=f.organ, finding=f.finding, score=float(f.score),
                                 threshold=None if f.threshold is None else float(f.threshold),
                                 positive=bool(f.positive)))
            if result.report is not None:
                s.add(ReportRow(analysis_id=analysis.id, draft_text=result.report.draft_text,
                                structured=result.report.structured, model_ids=result.report.model_ids))
            job.state, job.finished_at, job.lease_owner, job.lease_expires_at = JobState.DONE, now, None, None

    def fail_job(self, job_id: int, worker_id: str, error: str, *, now: dt.datetime | None = None) -> None:
        """Record a failed attempt: retry later with exponential backoff, or give up after max_attempts."""
        now = as_naive_utc(now) if now else utcnow()
        with self.session() as s:
            job = self._held_job(s, job_id, worker_id)
            job.last_error = error[:4000]
            job.lease_owner, job.lease_expires_at = None, None
            if job.attempts >= job.max_attempts:
                job.state, job.finished_at = JobState.FAILED, now
            else:
                delay = min(self.retry_base_seconds * 2 ** (job.attempts - 1), self.retry_max_seconds)
                job.state, job.not_before = JobState.PENDING, now + dt.timedelta(seconds=delay)

    # --- admin actions (audited) ----------------------------------------------------------------------------------
    def retry_job(self, job_id: int, *, actor: str) -> None:
        with self.session() as s:
            job = _existing_job(s, job_id)
            if job.state not in (JobState.FAILED, JobState.CANCELLED):
                raise StoreError(f"job {job_id} is {job.state}; only failed or cancelled jobs can be retried")
            job.state, job.attempts, job.not_before, job.finished_at = JobState.PENDING, 0, utcnow(), None
            self._audit(s, "job_retry", actor=actor, detail={"job_id": job_id})

    def cancel_job(self, job_id: int, *, actor: str) -> None:
        with self.session() as s:
            job = _existing_job(s, job_id)
            if job.state not in (JobState.PENDING, JobState.RUNNING):
                raise StoreError(f"job {job_id} is {job.state}; only pending or running jobs can be cancelled")
            job.state, job.finished_at, job.lease_owner, job.lease_expires_at = JobState.CANCELLED, utcnow(), None, None
            self._audit(s, "job_cancel", actor=actor, detail={"job_id": job_id})

    def reanalyse_study(self, study_uid: str, *, actor: str, reason: str = "admin reanalysis") -> int:
        with self.session() as s:
            job_id = self._enqueue(s, study_uid, reason=reason, max_attempts=None)
            self._audit(s, "study_reanalyse", actor=actor, detail={"study_uid": study_uid, "job_id": job_id})
            return job_id


def _existing_job(session, job_id: int) -> JobRow:
    """The job row, or a StoreError an admin can read (admin actions name jobs by id)."""
    job = session.get(JobRow, job_id)
    if job is None:
        raise StoreError(f"job {job_id} does not exist")
    return job
