"""Read side of the admin console: plain functions over a Store returning plain dicts/lists (no Textual here), so the
screens stay thin and these are testable alone. All reads use Store.read_session (never blocks the node/workers)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from sqlalchemy import func, or_, select

from appliance.store.models import (
    Analysis, Association, AuditEvent, Delivery, FindingRow, Instance, Job, NodeStatus, OrganResultRow, ReportRow,
    Series, Setting, Study, Worker,
)

WORKER_STALE_SECONDS = 120  # a worker without heartbeat for longer is shown as "lost"
NODE_STALE_SECONDS = 60


def age(now: dt.datetime, t: dt.datetime | None) -> str:
    """'12s', '5m', '3h', '2d' ago (or '-')."""
    if t is None:
        return "-"
    s = max(0, int((now - t).total_seconds()))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def stamp(t: dt.datetime | None) -> str:
    return "-" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def disk_state(spool_dir: str | None, *, min_free_bytes: int, max_usage_percent: float,
               disk_usage=shutil.disk_usage) -> dict:
    if not spool_dir:
        return {"known": False, "why": "no spool folder configured (start the console with --config)"}
    p = Path(spool_dir).expanduser()
    if not p.exists():
        return {"known": False, "why": f"spool folder {p} does not exist"}
    du = disk_usage(p)
    pct = 100.0 * du.used / du.total if du.total else 0.0
    over = pct > max_usage_percent or du.free < min_free_bytes
    return {"known": True, "total": du.total, "used": du.used, "free": du.free, "percent": pct,
            "watermark_percent": max_usage_percent, "min_free_bytes": min_free_bytes, "over": over}


def dashboard(store, *, now: dt.datetime, disk: dict) -> dict:
    with store.read_session() as s:
        nodes = []
        last_rx = s.scalar(select(func.max(Instance.received_at)))
        for n in s.scalars(select(NodeStatus).order_by(NodeStatus.ae_title)):
            alive = (now - n.last_seen).total_seconds() < NODE_STALE_SECONDS
            nodes.append({"ae": n.ae_title, "host": n.host, "port": n.port, "active": n.active_associations,
                          "seen": age(now, n.last_seen), "alive": alive})
        workers = []
        for w in s.scalars(select(Worker).order_by(Worker.id)):
            alive = (now - w.last_heartbeat).total_seconds() < WORKER_STALE_SECONDS
            if not alive and w.current_job_id is not None:
                # The worker row is beaten between jobs; during a long study the job's lease is what it renews.
                lease = s.execute(select(Job.lease_owner, Job.lease_expires_at)
                                  .where(Job.id == w.current_job_id)).one_or_none()
                alive = bool(lease and lease.lease_owner == w.id and lease.lease_expires_at
                             and lease.lease_expires_at > now)
            workers.append({"id": w.id, "host": w.host, "pid": w.pid, "job": w.current_job_id,
                            "seen": age(now, w.last_heartbeat), "alive": alive})
        last_assoc = s.execute(select(Association.calling_ae, Association.started_at, Association.status)
                               .order_by(Association.started_at.desc(), Association.id.desc()).limit(1)).one_or_none()
        counts = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        per_hour = s.scalar(select(func.count()).select_from(Study)
                            .where(Study.first_received_at >= now - dt.timedelta(hours=1))) or 0
        per_day = s.scalar(select(func.count()).select_from(Study)
                           .where(Study.first_received_at >= now - dt.timedelta(hours=24))) or 0
        since = now - dt.timedelta(hours=24)
        hourly = [0] * 24  # index 23 = the last hour
        for (t,) in s.execute(select(Study.first_received_at).where(Study.first_received_at >= since)):
            hourly[min(23, max(0, 23 - int((now - t).total_seconds() // 3600)))] += 1
        done_day = s.scalar(select(func.count()).select_from(Analysis)
                            .where(Analysis.created_at >= now - dt.timedelta(hours=24))) or 0
        latest = s.execute(select(Analysis.bundle_id, Analysis.backend, Analysis.id)
                           .order_by(Analysis.created_at.desc(), Analysis.id.desc()).limit(1)).one_or_none()
        llm = None
        if latest is not None:
            ids = s.scalar(select(ReportRow.model_ids).where(ReportRow.analysis_id == latest.id))
            llm = _llm_name(ids)
        settings = {k: v for k, v in s.execute(select(Setting.key, Setting.value))}
        failed_deliveries = s.scalar(select(func.count()).select_from(Delivery).where(Delivery.state == "failed")) or 0
        pending_deliveries = s.scalar(select(func.count()).select_from(Delivery)
                                      .where(Delivery.state == "pending")) or 0
    return {
        "nodes": nodes, "last_received": age(now, last_rx) if last_rx else "never", "workers": workers,
        "last_association": (f"{last_assoc.calling_ae} {last_assoc.status} {age(now, last_assoc.started_at)} ago"
                             if last_assoc else "none"),
        "queue": {k: counts.get(k, 0) for k in ("pending", "running", "failed", "done", "cancelled")},
        "studies_last_hour": per_hour, "studies_last_24h": per_day, "hourly": hourly, "analyses_last_24h": done_day,
        "bundle": (latest.bundle_id if latest else None) or settings.get("bundle_id") or "-",
        "backend": (latest.backend if latest else None) or settings.get("backend") or "-",
        "llm": llm or settings.get("llm") or "-",
        "deliveries": {"pending": pending_deliveries, "failed": failed_deliveries},
        "disk": disk,
    }


def _llm_name(model_ids) -> str | None:
    if not isinstance(model_ids, dict):
        return None
    for key in ("llm", "llm_model", "model", "gguf"):
        if model_ids.get(key):
            return str(model_ids[key])
    return ", ".join(f"{k}={v}" for k, v in model_ids.items()) or None


def studies(store, search: str = "", *, limit: int = 500) -> list[dict]:
    """Newest first; `search` matches study UID, accession, study date or (when stored) patient ID."""
    q = select(Study).order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
    if search.strip():
        like = f"%{search.strip()}%"
        q = q.where(or_(Study.study_uid.like(like), Study.accession.like(like), Study.study_date.like(like),
                        Study.patient_id.like(like)))
    out = []
    with store.read_session() as s:
        rows = list(s.scalars(q))
        ids = [r.id for r in rows]
        if not ids:
            return []
        latest_job = {}
        for j in s.scalars(select(Job).where(Job.study_id.in_(ids)).order_by(Job.analysis_version)):
            latest_job[j.study_id] = j
        latest_an = {}
        for a in s.scalars(select(Analysis).where(Analysis.study_id.in_(ids)).order_by(Analysis.version)):
            latest_an[a.study_id] = a
        an_ids = [a.id for a in latest_an.values()]
        positives = dict(s.execute(select(FindingRow.analysis_id, func.count()).where(
            FindingRow.analysis_id.in_(an_ids), FindingRow.positive.is_(True)).group_by(FindingRow.analysis_id)).all())
        reviewed = dict(s.execute(select(ReportRow.analysis_id, ReportRow.reviewed_by)
                                  .where(ReportRow.analysis_id.in_(an_ids))).all())
        for st in rows:
            j, a = latest_job.get(st.id), latest_an.get(st.id)
            out.append({"study_uid": st.study_uid, "accession": st.accession or "", "date": st.study_date or "",
                        "instances": st.n_instances, "received": st.last_received_at,
                        "job": j.state if j else "-", "version": a.version if a else None,
                        "positives": positives.get(a.id, 0) if a else None,
                        "reviewed": (reviewed.get(a.id) if a else None)})
    return out


def study_detail(store, study_uid: str) -> dict | None:
    with store.read_session() as s:
        st = s.scalars(select(Study).where(Study.study_uid == study_uid)).one_or_none()
        if st is None:
            return None
        series = [{"uid": x.series_uid, "number": x.series_number, "modality": x.modality or "",
                   "description": x.series_description or "", "instances": x.n_instances}
                  for x in s.scalars(select(Series).where(Series.study_id == st.id).order_by(Series.series_number,
                                                                                             Series.id))]
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.study_id == st.id))}
        versions = []
        analyses = list(s.scalars(select(Analysis).where(Analysis.study_id == st.id)
                                  .order_by(Analysis.version.desc())))
        for a in analyses:
            rep = s.scalars(select(ReportRow).where(ReportRow.analysis_id == a.id)).one_or_none()
            versions.append({"analysis_id": a.id, "version": a.version, "created": a.created_at,
                             "bundle": a.bundle_id or "-", "backend": a.backend or "-",
                             "reason": jobs[a.job_id].reason if a.job_id in jobs else "-",
                             "reviewed_by": rep.reviewed_by if rep else None})
        job_rows = [{"id": j.id, "version": j.analysis_version, "state": j.state, "attempts": j.attempts,
                     "reason": j.reason, "error": (j.last_error or "").splitlines()[-1:] or [""]}
                    for j in sorted(jobs.values(), key=lambda j: -j.analysis_version)]
        for jr in job_rows:
            jr["error"] = jr["error"][0]
        detail = {"study_uid": st.study_uid, "accession": st.accession or "", "date": st.study_date or "",
                  "instances": st.n_instances, "received": st.last_received_at, "series": series,
                  "versions": versions, "jobs": job_rows, "latest": None}
        if analyses:
            a = analyses[0]
            organs = [{"organ": o.organ, "status": o.status, "volume_ml": o.volume_ml, "mean_hu": o.mean_hu,
                       "std_hu": o.std_hu}
                      for o in s.scalars(select(OrganResultRow).where(OrganResultRow.analysis_id == a.id)
                                         .order_by(OrganResultRow.id))]
            findings = [{"organ": f.organ, "finding": f.finding, "score": f.score, "threshold": f.threshold,
                         "positive": f.positive}
                        for f in s.scalars(select(FindingRow).where(FindingRow.analysis_id == a.id)
                                           .order_by(FindingRow.positive.desc(), FindingRow.score.desc(),
                                                     FindingRow.id))]
            rep = s.scalars(select(ReportRow).where(ReportRow.analysis_id == a.id)).one_or_none()
            deliveries = [{"id": d.id, "version": a2v, "destination": d.destination, "kind": d.kind,
                           "state": d.state, "attempts": d.attempts, "sent_at": d.sent_at,
                           "error": (d.last_error or "")}
                          for d, a2v in s.execute(select(Delivery, Analysis.version)
                                                  .join(Analysis, Analysis.id == Delivery.analysis_id)
                                                  .where(Analysis.study_id == st.id)
                                                  .order_by(Analysis.version.desc(), Delivery.destination,
                                                            Delivery.kind))]
            detail["latest"] = {
                "analysis_id": a.id, "version": a.version, "series_uid": a.series_uid or "-",
                "bundle": a.bundle_id or "-", "backend": a.backend or "-", "organs": organs, "findings": findings,
                "draft": rep.draft_text if rep else None, "reviewed_by": rep.reviewed_by if rep else None,
                "reviewed_at": rep.reviewed_at if rep else None, "llm": _llm_name(rep.model_ids) if rep else None,
                "deliveries": deliveries,
            }
        return detail


def jobs(store, *, state: str | None = None, limit: int = 500) -> list[dict]:
    q = (select(Job, Study.study_uid).join(Study, Study.id == Job.study_id)
         .order_by(Job.created_at.desc(), Job.id.desc()).limit(limit))
    if state:
        q = q.where(Job.state == state)
    with store.read_session() as s:
        return [{"id": j.id, "study_uid": uid, "version": j.analysis_version, "state": j.state,
                 "attempts": j.attempts, "max_attempts": j.max_attempts, "reason": j.reason, "worker": j.lease_owner,
                 "created": j.created_at, "error": ((j.last_error or "").strip().splitlines() or [""])[-1]}
                for j, uid in s.execute(q)]


def audit_log(store, *, limit: int = 300) -> list[dict]:
    """Admin/audit events and DICOM associations, newest first, as one list."""
    with store.read_session() as s:
        ev = [{"at": e.at, "kind": "admin" if e.actor != "node" else "node", "who": e.actor, "what": e.event,
               "detail": _short(e.detail)}
              for e in s.scalars(select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit))]
        assoc = [{"at": a.started_at, "kind": "assoc", "who": f"{a.calling_ae}@{a.peer_host}",
                  "what": f"{a.status} -> {a.called_ae}",
                  "detail": f"{a.n_received} received, {a.n_failed} failed" + (f"; {a.detail}" if a.detail else "")}
                 for a in s.scalars(select(Association).order_by(Association.started_at.desc(), Association.id.desc())
                                    .limit(limit))]
    return sorted(ev + assoc, key=lambda r: r["at"], reverse=True)[:limit]


def _short(detail) -> str:
    if not detail:
        return ""
    if isinstance(detail, dict):
        return ", ".join(f"{k}={v}" for k, v in detail.items())
    return str(detail)
