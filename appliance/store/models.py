"""The SQL schema (SQLAlchemy 2 typed ORM), portable between SQLite and PostgreSQL.

Why naive UTC datetimes everywhere: SQLite has no time-zone type, and comparing leases must behave the same on both
backends; every timestamp written by the store is UTC (see `utcnow`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint, Index
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)  # DICOM UIDs are at most 64 characters


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def as_naive_utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.timezone.utc).replace(tzinfo=None) if t.tzinfo else t


class Base(DeclarativeBase):
    pass


class JobState:
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    accession: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))  # DICOM DA, YYYYMMDD
    patient_name: Mapped[str | None] = mapped_column(String(256))  # NULL unless the PHI setting is on
    patient_id: Mapped[str | None] = mapped_column(String(64))
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(DateTime)
    last_received_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_description: Mapped[str | None] = mapped_column(String(128))
    series_number: Mapped[int | None] = mapped_column(Integer)
    n_instances: Mapped[int] = mapped_column(Integer, default=0)
    study: Mapped[Study] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)  # file in the spool
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Association(Base):
    """Audit trail of DICOM associations (who sent what, when, and how it went)."""
    __tablename__ = "associations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16))
    called_ae: Mapped[str] = mapped_column(String(16))
    peer_host: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    n_received: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)


class Job(Base):
    """One analysis run of one study: the durable work queue."""
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("study_id", "analysis_version", name="uq_jobs_study_version"),
        Index("ix_jobs_claim", "state", "not_before"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    analysis_version: Mapped[int] = mapped_column(Integer)
    # How many instances the study had when the job was queued: a study with more instances needs a new version.
    instances_covered: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=JobState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    not_before: Mapped[dt.datetime] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    study: Mapped[Study] = relationship()


class Analysis(Base):
    """A complete result version of a study; exists only together with all its rows (written in one transaction)."""
    __tablename__ = "analyses"
    __table_args__ = (UniqueConstraint("study_id", "version", name="uq_analyses_study_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    series_uid: Mapped[str | None] = mapped_column(UID)  # the series that was analysed
    bundle_id: Mapped[str | None] = mapped_column(String(128))
    backend: Mapped[str | None] = mapped_column(String(64))
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Files the analysis left on disk, by role, e.g. {"labels": ".../labels.nii.gz"} (organ label map on the analysed
    # series' grid, read by the DICOM node to write the SEG). Paths, not blobs: the database stays small.
    artifacts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    organ_results: Mapped[list[OrganResultRow]] = relationship(back_populates="analysis")
    findings: Mapped[list[FindingRow]] = relationship(back_populates="analysis")
    report: Mapped[ReportRow | None] = relationship(back_populates="analysis")


class OrganResultRow(Base):
    __tablename__ = "organ_results"
    __table_args__ = (UniqueConstraint("analysis_id", "organ", name="uq_organ_results_analysis_organ"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    organ: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32))
    volume_ml: Mapped[float | None] = mapped_column(Float)
    mean_hu: Mapped[float | None] = mapped_column(Float)
    std_hu: Mapped[float | None] = mapped_column(Float)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 little-endian
    embedding_dim: Mapped[int | None] = mapped_column(Integer)
    analysis: Mapped[Analysis] = relationship(back_populates="organ_results")


class FindingRow(Base):
    __tablename__ = "findings"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    organ: Mapped[str] = mapped_column(String(64))
    finding: Mapped[str] = mapped_column(String(128))
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    positive: Mapped[bool] = mapped_column()
    analysis: Mapped[Analysis] = relationship(back_populates="findings")


class ReportRow(Base):
    __tablename__ = "reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), unique=True)
    draft_text: Mapped[str] = mapped_column(Text)
    structured: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_ids: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reviewed_by: Mapped[str | None] = mapped_column(String(128))
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    analysis: Mapped[Analysis] = relationship(back_populates="report")


class Delivery(Base):
    """Persistent retry queue of DICOM objects (SR, SEG) to send back to PACS."""
    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_due", "state", "next_try_at"),
                      # one SR and one SEG per analysis and destination, even if two node processes plan at once
                      UniqueConstraint("analysis_id", "destination", "kind", name="uq_deliveries_analysis_dest_kind"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(8))  # SR | SEG
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[dt.datetime] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime)


class NodeStatus(Base):
    """Heartbeat of the DICOM node for the admin dashboard."""
    __tablename__ = "node_status"
    ae_title: Mapped[str] = mapped_column(String(16), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    active_associations: Mapped[int] = mapped_column(Integer, default=0)
    last_seen: Mapped[dt.datetime] = mapped_column(DateTime)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    current_job_id: Mapped[int | None] = mapped_column(Integer)
    last_heartbeat: Mapped[dt.datetime] = mapped_column(DateTime)
