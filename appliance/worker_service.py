"""The analysis worker: the pipeline wired to the durable queue (appliance.store.worker_loop.run_worker).

`make_work(store, pipeline, results_dir)` returns the ``work(job) -> AnalysisResult`` callable: it finds the study's
instance files in the spool through the store's instance rows, runs the pipeline on them (the DICOM reader picks the
series and says why) and writes the organ label map under ``results_dir/<study_uid>/v<version>/``; the loop stores
the result with the job's completion in one transaction.

Also here, as plain functions over a Store (queue.py is not ours to change):
- ``study_instance_paths``: the spool files of a study,
- ``register_input``: record a DICOM folder / NIfTI file given on the command line as a study (``totalfm analyze``),
- ``claim_specific_job``: lease exactly the job we just queued (``claim_job`` takes the oldest due job, which could be
  another study's when workers share the database).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import signal
import socket
import threading
from pathlib import Path

from sqlalchemy import select, update

from appliance.errors import StoreError, TotalFMError
from appliance.store.models import Instance, Job as JobRow, JobState, Series, Study, utcnow
from appliance.store.queue import Job
from appliance.store.results import AnalysisResult

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NIFTI_PSEUDO_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # a NIfTI input is filed as one CT "instance" pointing at the file
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def _is_nifti(p: str | Path) -> bool:
    n = str(p)
    return n.endswith(".nii") or n.endswith(".nii.gz")


def study_instance_paths(store, study_uid: str) -> list[str]:
    """Spool paths of every stored instance of the study (all series; the reader chooses the CT series)."""
    with store.read_session() as s:
        rows = s.scalars(select(Instance.path).join(Series, Series.id == Instance.series_id)
                         .join(Study, Study.id == Series.study_id).where(Study.study_uid == study_uid)
                         .order_by(Instance.id)).all()
    if not rows:
        raise StoreError(f"study {study_uid} has no stored instances; nothing to analyse")
    return list(rows)


def job_source(paths: list[str]):
    """What the pipeline's load stage takes for these files (a NIfTI registered by `analyze` is one path)."""
    if len(paths) == 1 and _is_nifti(paths[0]):
        return paths[0]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing and len(missing) == len(paths):
        raise TotalFMError(f"none of the study's {len(paths)} spool files exist (first: {missing[0]}); the spool was "
                           f"cleaned or moved - resend the study")
    return [p for p in paths if os.path.exists(p)]


def results_dir_for(results_dir: str | Path, study_uid: str, version: int) -> Path:
    return Path(results_dir) / study_uid / f"v{version}"


def make_work(store, pipeline, results_dir: str | Path):
    def work(job: Job) -> AnalysisResult:
        paths = study_instance_paths(store, job.study_uid)
        out = pipeline.analyse(job_source(paths), out_dir=results_dir_for(results_dir, job.study_uid,
                                                                           job.analysis_version))
        res = out.result
        if not res.series_uid and not _is_nifti(paths[0]):
            res.series_uid = _series_of(store, paths)
        log.info("job %s: study analysed in %.1f s, %d positive findings (draft by %s)", job.id,
                 res.timings.get("total", 0.0), sum(f.positive for f in res.findings),
                 (res.report.model_ids or {}).get("draft_source") if res.report else None)
        return res
    return work


def _series_of(store, paths: list[str]) -> str | None:
    """Series UID as the store knows it (the node files instances under their UIDs) for the first readable path."""
    with store.read_session() as s:
        return s.scalar(select(Series.series_uid).join(Instance, Instance.series_id == Series.id)
                        .where(Instance.path == paths[0]).limit(1))


# ------------------------------------------------------------------------------------------------ one-shot analyse


def _derived_uid(*parts: str) -> str:
    """A valid UID under 2.25 (UUID-derived root) from content, so re-running analyze on the same input maps to the
    same study (a new analysis version, not a new study)."""
    h = hashlib.sha256("\x00".join(parts).encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(h, "big"))


def register_input(store, path: str | Path, *, calling_ae: str = "TOTALFM_CLI") -> str:
    """Record a DICOM folder/file or a NIfTI file as a stored study; returns its study UID.

    DICOM UIDs are used as they are; empty ones (de-identified data) are derived from the file content, so the
    same input always lands on the same study."""
    p = Path(path).resolve()
    if p.is_file() and _is_nifti(p):
        st = p.stat()
        uid = _derived_uid("nifti", str(p), str(st.st_size), str(int(st.st_mtime)))
        store.record_instance(study_uid=uid, series_uid=uid + ".1", sop_instance_uid=uid + ".1.1",
                              sop_class_uid=NIFTI_PSEUDO_SOP_CLASS, transfer_syntax_uid=EXPLICIT_VR_LE,
                              path=str(p), size_bytes=st.st_size, calling_ae=calling_ae, modality="CT",
                              series_description="NIfTI input")
        return uid
    import pydicom

    files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")) if p.is_dir() else [p]
    if not files:
        raise TotalFMError(f"{p}: no files to analyse")
    headers = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - not DICOM: skip, the reader reports unreadable files
            continue
        if "SOPClassUID" not in ds and "SOPClassUID" not in getattr(ds, "file_meta", {}):
            continue
        headers.append((f, ds))
    if not headers:
        raise TotalFMError(f"{p}: no DICOM files found")
    folder_key = _derived_uid("folder", str(p), *sorted(f.name for f, _ in headers))
    study_uid = None
    for f, ds in headers:
        meta = getattr(ds, "file_meta", None)
        study = str(getattr(ds, "StudyInstanceUID", "") or "") or folder_key
        series = str(getattr(ds, "SeriesInstanceUID", "") or "") or folder_key + ".1"
        sop = (str(getattr(ds, "SOPInstanceUID", "") or "") or str(getattr(meta, "MediaStorageSOPInstanceUID", "")
                                                                    or "") or _derived_uid("sop", str(f)))
        sop_class = (str(getattr(ds, "SOPClassUID", "") or "") or
                     str(getattr(meta, "MediaStorageSOPClassUID", "") or "") or CT_IMAGE_STORAGE)
        ts = str(getattr(meta, "TransferSyntaxUID", "") or EXPLICIT_VR_LE)
        store.record_instance(study_uid=study, series_uid=series, sop_instance_uid=sop, sop_class_uid=sop_class,
                              transfer_syntax_uid=ts, path=str(f), size_bytes=f.stat().st_size,
                              calling_ae=calling_ae, modality=str(getattr(ds, "Modality", "") or "") or None,
                              accession=str(getattr(ds, "AccessionNumber", "") or "") or None,
                              study_date=str(getattr(ds, "StudyDate", "") or "") or None,
                              series_description=str(getattr(ds, "SeriesDescription", "") or "") or None)
        study_uid = study_uid or study
    return study_uid


def claim_specific_job(store, job_id: int, worker_id: str, *, lease_seconds: float = 600) -> Job:
    """Lease exactly ``job_id`` (pending) to ``worker_id``."""
    now = utcnow()
    with store.session() as s:
        n = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.state == JobState.PENDING).values(
            state=JobState.RUNNING, lease_owner=worker_id, lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
            attempts=JobRow.attempts + 1, started_at=now)).rowcount
        if n != 1:
            raise StoreError(f"job {job_id} is not pending (a worker took it first?)")
        row, study_uid = s.execute(select(JobRow, Study.study_uid).join(Study, Study.id == JobRow.study_id)
                                   .where(JobRow.id == job_id)).one()
        return Job(id=row.id, study_uid=study_uid, study_id=row.study_id, analysis_version=row.analysis_version,
                   reason=row.reason, attempts=row.attempts, max_attempts=row.max_attempts,
                   lease_expires_at=row.lease_expires_at)


def analyse_and_store(store, pipeline, path: str | Path, results_dir: str | Path, *, reason: str = "totalfm analyze"):
    """Register the input, queue a new version, run it, store it; -> (job, PipelineOutput)."""
    study_uid = register_input(store, path)
    job_id = store.enqueue_analysis(study_uid, reason=reason[:64])
    worker_id = f"analyze@{socket.gethostname()}:{os.getpid()}"
    job = claim_specific_job(store, job_id, worker_id)
    try:
        out = pipeline.analyse(job_source(study_instance_paths(store, study_uid)),
                               out_dir=results_dir_for(results_dir, study_uid, job.analysis_version))
    except Exception as exc:
        store.fail_job(job.id, worker_id, f"{type(exc).__name__}: {exc}")
        raise
    if not out.result.series_uid and not _is_nifti(str(path)):
        out.result.series_uid = _series_of(store, study_instance_paths(store, study_uid))
    store.complete_job(job.id, worker_id, out.result)
    return job, out


# ------------------------------------------------------------------------------------------------ the service


def run_service(cfg, *, max_jobs: int | None = None, exit_when_idle: bool = False,
                stop: threading.Event | None = None, pipeline=None, install_signals: bool = False) -> int:
    """Load the pipeline once, then take jobs until stopped (SIGTERM/SIGINT end it after the current job)."""
    from appliance.pipeline import Pipeline
    from appliance.store import open_store
    from appliance.store.worker_loop import run_worker

    store = open_store(cfg.store_url)
    stop = stop or threading.Event()
    if install_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    pipeline = pipeline or Pipeline(cfg.bundle, backend=cfg.backend, threads=cfg.threads or None,
                                    llm=cfg.llm_path or cfg.llm_gguf)
    worker_id = cfg.worker_id or f"{socket.gethostname()}:{os.getpid()}"
    results = cfg.results_path()
    log.info("worker %s: bundle %s on %s, results under %s, store %s", worker_id, pipeline.bundle.bundle_id,
             pipeline.backend, results, store.engine.url.render_as_string(hide_password=True))
    try:
        return run_worker(store, worker_id, make_work(store, pipeline, results), lease_seconds=cfg.lease_seconds,
                          poll_seconds=cfg.poll_seconds, max_jobs=max_jobs, stop=stop, exit_when_idle=exit_when_idle)
    finally:
        store.close()
