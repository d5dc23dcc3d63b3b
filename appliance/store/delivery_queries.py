"""Read-side queries the DICOM node's result sender needs (plain functions over a Store).

`plan_deliveries` is the only writer: it enqueues the SR/SEG deliveries an analysis still lacks for each destination,
so the sender loop can be restarted at any time and never sends twice nor forgets one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import exists, func, select
from sqlalchemy.orm import selectinload

from appliance.store.deliveries import DELIVERY_KINDS
from appliance.store.models import Analysis, Delivery, Instance, Series, Study, as_naive_utc
from appliance.store.results import AnalysisResult, FindingResult, OrganResult, ReportDraft


@dataclass(frozen=True)
class AnalysisSource:
    analysis_id: int
    version: int
    study_uid: str
    series_uid: str
    bundle_id: str | None
    artifacts: dict
    instance_paths: list[str]  # spool files of the analysed series


def missing_deliveries(store, destinations: list[str], kinds: tuple[str, ...] = DELIVERY_KINDS,
                       *, latest_only: bool = True, since: dt.datetime | None = None) -> list[tuple[int, str, str]]:
    """(analysis_id, destination, kind) for which no delivery row exists yet, oldest analysis first.

    latest_only: only each study's newest analysis version (an older version superseded before it was planned is
    not worth sending). since: only analyses created at or after it (a destination added to a site with years of
    results must not be flooded). One anti-join per (destination, kind), so the sender can run it every few seconds."""
    out = []
    with store.read_session() as s:
        newest = (select(Analysis.study_id, func.max(Analysis.version).label("v"))
                  .group_by(Analysis.study_id).subquery())
        for dest in destinations:
            for kind in kinds:
                q = select(Analysis.id).where(~exists().where(
                    Delivery.analysis_id == Analysis.id, Delivery.destination == dest, Delivery.kind == kind))
                if since is not None:
                    q = q.where(Analysis.created_at >= as_naive_utc(since))
                if latest_only:
                    q = q.join(newest, (newest.c.study_id == Analysis.study_id) & (newest.c.v == Analysis.version))
                out += [(a, dest, kind) for a in s.scalars(q.order_by(Analysis.id))]
    order = {k: i for i, k in enumerate(kinds)}
    return sorted(out, key=lambda r: (r[0], destinations.index(r[1]), order[r[2]]))


def plan_deliveries(store, destinations: list[str], kinds: tuple[str, ...] = DELIVERY_KINDS,
                    *, since: dt.datetime | None = None) -> list[int]:
    """Enqueue every missing delivery; returns the new delivery ids. One node process plans (no unique constraint
    on (analysis, destination, kind) in the schema), so this runs in the node's single sender thread."""
    return [store.enqueue_delivery(a, destination=d, kind=k)
            for a, d, k in missing_deliveries(store, destinations, kinds, since=since)]


def analysis_source(store, analysis_id: int) -> AnalysisSource | None:
    """The analysed series and its spool files; the series is the analysis' series_uid, else the study's series
    with the most instances (what the worker analyses when it does not record one)."""
    with store.read_session() as s:
        row = s.execute(select(Analysis, Study.study_uid).join(Study, Study.id == Analysis.study_id)
                        .where(Analysis.id == analysis_id)).one_or_none()
        if row is None:
            return None
        a, study_uid = row
        series_q = select(Series.id, Series.series_uid).where(Series.study_id == a.study_id)
        if a.series_uid:
            series_q = series_q.where(Series.series_uid == a.series_uid)
        else:
            series_q = series_q.order_by(Series.n_instances.desc(), Series.id)
        series = s.execute(series_q.limit(1)).one_or_none()
        if series is None:
            return AnalysisSource(a.id, a.version, study_uid, a.series_uid or "", a.bundle_id, a.artifacts or {}, [])
        paths = list(s.scalars(select(Instance.path).where(Instance.series_id == series.id).order_by(Instance.id)))
        return AnalysisSource(a.id, a.version, study_uid, series.series_uid, a.bundle_id, a.artifacts or {}, paths)


def delivery_states(store, analysis_id: int | None = None) -> list[dict]:
    """Every delivery (optionally of one analysis) with its state, for the CLI/TUI and the tests."""
    q = select(Delivery).order_by(Delivery.id)
    if analysis_id is not None:
        q = q.where(Delivery.analysis_id == analysis_id)
    with store.read_session() as s:
        return [{"id": d.id, "analysis_id": d.analysis_id, "destination": d.destination, "kind": d.kind,
                 "state": d.state, "attempts": d.attempts, "last_error": d.last_error, "sent_at": d.sent_at,
                 "next_try_at": d.next_try_at} for d in s.scalars(q)]


def analysis_result(store, analysis_id: int) -> AnalysisResult | None:
    """The stored result of one analysis version (Store.latest_analysis gives only the newest): the SR of a version
    must describe that version even when a newer one exists by the time it is sent. Embeddings are left out."""
    with store.read_session() as s:
        a = s.scalars(select(Analysis).where(Analysis.id == analysis_id)
                      .options(selectinload(Analysis.organ_results), selectinload(Analysis.findings),
                               selectinload(Analysis.report))).one_or_none()
        if a is None:
            return None
        organs = [OrganResult(o.organ, o.status, o.volume_ml, o.mean_hu, o.std_hu)
                  for o in sorted(a.organ_results, key=lambda o: o.id)]
        findings = [FindingResult(f.organ, f.finding, f.score, f.threshold, f.positive)
                    for f in sorted(a.findings, key=lambda f: f.id)]
        report = ReportDraft(a.report.draft_text, a.report.structured, a.report.model_ids) if a.report else None
        return AnalysisResult(organs, findings, report, a.series_uid, a.bundle_id, a.backend, a.timings, a.artifacts)
