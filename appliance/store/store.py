"""The Store: one object that the DICOM node, the workers and the TUI share to read and write the SQL database.

Ingest (instances, associations, audit) lives here; the durable work queue is in `queue.py` (mixed in).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from appliance.errors import StoreError
from appliance.store import migrate
from appliance.store.engine import make_engine
from appliance.store.models import (
    Analysis, Association, AuditEvent, Instance, Job, NodeStatus, Series, Setting, Study, Worker, as_naive_utc, utcnow,
)
from appliance.store.deliveries import DeliveryMixin
from appliance.store.queue import QueueMixin
from appliance.store.results import (AnalysisResult, FindingResult, OrganResult, ReportDraft,
                                     embedding_from_bytes)

PHI_SETTING = "privacy.store_patient_identity"


class Store(QueueMixin, DeliveryMixin):
    def __init__(self, engine: Engine, *, store_phi: bool | None = None, max_attempts: int = 3,
                 retry_base_seconds: float = 30.0, retry_max_seconds: float = 3600.0):
        self.engine = engine
        self.dialect = engine.dialect.name
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(engine.execution_options(sqlite_begin="DEFERRED"), expire_on_commit=False)
        self._store_phi = store_phi
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds

    # --- sessions -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: commit on success, rollback on error (on SQLite it holds the write lock)."""
        with self._sessions() as s:
            with s.begin():
                yield s

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only transaction that never waits for writers (dashboards, queries)."""
        with self._read_sessions() as s:
            with s.begin():
                yield s

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, model):
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(model)

    # --- settings -------------------------------------------------------------------------------------------------
    def get_setting(self, key: str, default: Any = None) -> Any:
        with self.read_session() as s:
            row = s.get(Setting, key)
            return default if row is None else row.value

    def set_setting(self, key: str, value: Any, *, actor: str) -> None:
        with self.session() as s:
            row = s.get(Setting, key)
            if row is None:
                s.add(Setting(key=key, value=value, updated_at=utcnow()))
            else:
                row.value, row.updated_at = value, utcnow()
            self._audit(s, "setting_changed", actor=actor, detail={"key": key, "value": value})

    @property
    def store_phi(self) -> bool:
        """Patient name/ID are kept only when the admin enabled it (argument to open_store, or the setting)."""
        if self._store_phi is not None:
            return self._store_phi
        return bool(self.get_setting(PHI_SETTING, False))

    # --- ingest ---------------------------------------------------------------------------------------------------
    def record_instance(self, *, study_uid: str, series_uid: str, sop_instance_uid: str, sop_class_uid: str,
                        transfer_syntax_uid: str, path: str, size_bytes: int, calling_ae: str,
                        modality: str | None = None, accession: str | None = None, study_date: str | None = None,
                        series_description: str | None = None, series_number: int | None = None,
                        patient_name: str | None = None, patient_id: str | None = None,
                        received_at: dt.datetime | None = None) -> bool:
        """Store one received instance; False (nothing written) if its SOPInstanceUID is already stored.

        Why INSERT ... ON CONFLICT DO NOTHING: two associations (or two node processes) may deliver the same instance
        or the first instance of the same study at the same moment; the database decides, never a read-then-write.
        """
        for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid),
                          ("SOPInstanceUID", sop_instance_uid)):
            if not uid or len(uid) > 64:
                raise StoreError(f"{name} {uid!r} is empty or longer than 64 characters; the sender's data is invalid")
        now = as_naive_utc(received_at) if received_at else utcnow()
        keep_phi = self.store_phi
        with self.session() as s:
            s.execute(self._insert(Study).values(
                study_uid=study_uid, accession=accession, study_date=study_date,
                patient_name=patient_name if keep_phi else None, patient_id=patient_id if keep_phi else None,
                n_instances=0, first_received_at=now, last_received_at=now,
            ).on_conflict_do_nothing(index_elements=["study_uid"]))
            study_id = s.scalar(select(Study.id).where(Study.study_uid == study_uid))
            s.execute(self._insert(Series).values(
                study_id=study_id, series_uid=series_uid, modality=modality, series_description=series_description,
                series_number=series_number, n_instances=0,
            ).on_conflict_do_nothing(index_elements=["series_uid"]))
            series_id, series_study = s.execute(
                select(Series.id, Series.study_id).where(Series.series_uid == series_uid)).one()
            if series_study != study_id:
                raise StoreError(f"series {series_uid} arrived under study {study_uid} but is already stored under "
                                 f"another study; the sender mixes up UIDs")
            new_id = s.scalar(self._insert(Instance).values(
                series_id=series_id, sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid,
                transfer_syntax_uid=transfer_syntax_uid, path=path, size_bytes=size_bytes, calling_ae=calling_ae,
                received_at=now,
            ).on_conflict_do_nothing(index_elements=["sop_instance_uid"]).returning(Instance.id))
            if new_id is None:
                return False
            s.execute(update(Series).where(Series.id == series_id).values(n_instances=Series.n_instances + 1))
            s.execute(update(Study).where(Study.id == study_id).values(
                n_instances=Study.n_instances + 1,
                last_received_at=now,
                accession=func.coalesce(Study.accession, accession),
                study_date=func.coalesce(Study.study_date, study_date),
            ))
            return True

    def record_association(self, *, calling_ae: str, called_ae: str, peer_host: str, started_at: dt.datetime,
                           ended_at: dt.datetime | None, n_received: int, n_failed: int, status: str,
                           detail: str | None = None) -> int:
        with self.session() as s:
            row = Association(calling_ae=calling_ae, called_ae=called_ae, peer_host=peer_host,
                              started_at=as_naive_utc(started_at),
                              ended_at=as_naive_utc(ended_at) if ended_at else None,
                              n_received=n_received, n_failed=n_failed, status=status, detail=detail)
            s.add(row)
            s.flush()
            return row.id

    def audit(self, event: str, *, actor: str, detail: dict | None = None) -> None:
        with self.session() as s:
            self._audit(s, event, actor=actor, detail=detail)

    @staticmethod
    def _audit(s: Session, event: str, *, actor: str, detail: dict | None) -> None:
        s.add(AuditEvent(at=utcnow(), event=event, actor=actor, detail=detail))

    # --- status for the dashboard ---------------------------------------------------------------------------------
    def node_heartbeat(self, *, ae_title: str, host: str, port: int, active_associations: int) -> None:
        with self.session() as s:
            row = s.get(NodeStatus, ae_title)
            if row is None:
                s.add(NodeStatus(ae_title=ae_title, host=host, port=port, active_associations=active_associations,
                                 last_seen=utcnow()))
            else:
                row.host, row.port, row.active_associations, row.last_seen = host, port, active_associations, utcnow()

    def worker_heartbeat(self, worker_id: str, *, host: str, pid: int | None, current_job_id: int | None) -> None:
        with self.session() as s:
            row = s.get(Worker, worker_id)
            if row is None:
                s.add(Worker(id=worker_id, host=host, pid=pid, current_job_id=current_job_id, last_heartbeat=utcnow()))
            else:
                row.host, row.pid, row.current_job_id, row.last_heartbeat = host, pid, current_job_id, utcnow()

    def latest_analysis(self, study_uid: str) -> tuple[int, int, AnalysisResult] | None:
        """(analysis id, version, result) of the study's newest complete result version, or None."""
        with self.read_session() as s:
            a = s.scalars(select(Analysis).join(Study, Study.id == Analysis.study_id)
                          .where(Study.study_uid == study_uid).order_by(Analysis.version.desc()).limit(1)
                          .options(selectinload(Analysis.organ_results), selectinload(Analysis.findings),
                                   selectinload(Analysis.report))).one_or_none()
            if a is None:
                return None
            organs = [OrganResult(o.organ, o.status, o.volume_ml, o.mean_hu, o.std_hu,
                                  None if o.embedding is None else embedding_from_bytes(o.embedding, o.embedding_dim))
                      for o in sorted(a.organ_results, key=lambda o: o.id)]
            findings = [FindingResult(f.organ, f.finding, f.score, f.threshold, f.positive)
                        for f in sorted(a.findings, key=lambda f: f.id)]
            report = (ReportDraft(a.report.draft_text, a.report.structured, a.report.model_ids)
                      if a.report else None)
            return a.id, a.version, AnalysisResult(organs, findings, report, a.series_uid, a.bundle_id, a.backend,
                                                   a.timings, a.artifacts)

    def job_counts(self) -> dict[str, int]:
        with self.read_session() as s:
            return dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())


def open_store(url: str, *, migrate_schema: bool = True, **options: Any) -> Store:
    """Open the store at `url` ("sqlite:///path.db" or "postgresql+psycopg://...") and bring its schema to the
    newest version (Alembic), unless migrate_schema=False (then an outdated schema is an error)."""
    engine = make_engine(url)
    try:
        if migrate_schema:
            migrate.upgrade(engine)
        else:
            current, head = migrate.current_revision(engine), migrate.head_revision()
            if current != head:
                raise StoreError(f"the database schema is at revision {current or 'none'}, this software needs "
                                 f"{head}; run `totalfm db upgrade --url ...`")
    except OperationalError as exc:
        engine.dispose()
        raise StoreError(f"cannot open the database ({engine.url.render_as_string(hide_password=True)}): "
                         f"{exc.orig}") from exc
    return Store(engine, **options)
