"""Spool retention: delete the spooled images of studies that are old enough and whose results were delivered.

A study qualifies when (1) its last image arrived more than `days` ago, (2) it has a result (analysis) and no job of
it is pending or running, and (3) every delivery of its newest analysis was sent - at least one delivery exists -
unless `require_delivery=False` (sites without destinations). Studies whose job failed or whose SR/SEG never went out
are kept: the admin may still retry or resend, and that needs the images.

What is deleted: the study's instance files in the spool (only paths inside the spool folder - anything else is
reported and left alone), then their `instances` rows, in one transaction per study, plus an audit event
`retention_purge`. Results (analyses, findings, drafts) stay: they are small and they are the record. A crash between
file deletion and the row deletion is harmless: the next run finds the rows, the files are already gone (missing_ok).
If the same images are sent again later, they are new instances again and the study is re-analysed (as for any new
images).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, select

from appliance.store.models import Analysis, Delivery, Instance, Job, JobState, Series, Study, utcnow


@dataclass
class StudyPurge:
    study_uid: str
    files: int = 0
    bytes: int = 0
    missing: int = 0
    outside_spool: list[str] = field(default_factory=list)


@dataclass
class RetentionReport:
    days: float
    dry_run: bool
    purged: list[StudyPurge] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # study_uid -> why kept (only old studies)

    @property
    def files(self) -> int:
        return sum(p.files for p in self.purged)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.purged)


def eligible_studies(store, *, days: float, require_delivery: bool = True,
                     now: dt.datetime | None = None) -> tuple[list[str], dict[str, str]]:
    """(study UIDs to purge, {old study UID kept: why}) - old = last image received more than `days` ago."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=days)
    keep: dict[str, str] = {}
    ok: list[str] = []
    with store.read_session() as s:
        old = s.execute(select(Study.id, Study.study_uid).where(Study.last_received_at < cutoff)
                        .where(select(func.count()).select_from(Instance).join(Series, Series.id == Instance.series_id)
                               .where(Series.study_id == Study.id).scalar_subquery() > 0)
                        .order_by(Study.last_received_at)).all()
        for study_id, uid in old:
            active = s.scalar(select(func.count()).select_from(Job).where(
                Job.study_id == study_id, Job.state.in_((JobState.PENDING, JobState.RUNNING))))
            if active:
                keep[uid] = "a job is pending or running"
                continue
            newest = s.scalar(select(Analysis.id).where(Analysis.study_id == study_id)
                              .order_by(Analysis.version.desc()).limit(1))
            if newest is None:
                keep[uid] = "no result (job failed, cancelled or never ran)"
                continue
            states = list(s.scalars(select(Delivery.state).where(Delivery.analysis_id == newest)))
            if require_delivery and not states:
                keep[uid] = "results not delivered yet (no delivery planned)"
                continue
            if any(st != "sent" for st in states):
                keep[uid] = "results not delivered to every destination"
                continue
            ok.append(uid)
    return ok, keep


def purge_study(store, study_uid: str, spool_dir: str | Path, *, dry_run: bool = False,
                actor: str = "retention") -> StudyPurge:
    spool = Path(spool_dir).expanduser().resolve()
    out = StudyPurge(study_uid)
    with store.read_session() as s:
        rows = s.execute(select(Instance.id, Instance.path, Instance.size_bytes)
                         .join(Series, Series.id == Instance.series_id).join(Study, Study.id == Series.study_id)
                         .where(Study.study_uid == study_uid)).all()
    done_ids = []
    parents = set()
    for iid, path, size in rows:
        p = Path(path).expanduser()
        rp = p.resolve()
        if not rp.is_relative_to(spool):
            out.outside_spool.append(path)  # never delete outside the spool, whatever the database says
            continue
        if not dry_run:
            try:
                rp.unlink()
                out.files += 1
                out.bytes += size
            except FileNotFoundError:
                out.missing += 1
            parents.add(rp.parent)
        else:
            if rp.exists():
                out.files += 1
                out.bytes += size
            else:
                out.missing += 1
        done_ids.append(iid)
    if dry_run:
        return out
    with store.session() as s:
        if done_ids:
            s.execute(delete(Instance).where(Instance.id.in_(done_ids)))
        store._audit(s, "retention_purge", actor=actor,
                     detail={"study_uid": study_uid, "files": out.files, "bytes": out.bytes, "missing": out.missing,
                             "outside_spool": len(out.outside_spool)})
    for d in sorted(parents, key=lambda x: -len(x.parts)):  # remove emptied study/series folders
        while d != spool and d.is_relative_to(spool):
            try:
                os.rmdir(d)
            except OSError:
                break
            d = d.parent
    return out


def run_retention(store, spool_dir: str | Path, *, days: float, dry_run: bool = False,
                  require_delivery: bool = True, now: dt.datetime | None = None) -> RetentionReport:
    if days < 0:
        raise ValueError("days must be >= 0")
    uids, keep = eligible_studies(store, days=days, require_delivery=require_delivery, now=now)
    report = RetentionReport(days, dry_run, kept=keep)
    for uid in uids:
        report.purged.append(purge_study(store, uid, spool_dir, dry_run=dry_run))
    return report
