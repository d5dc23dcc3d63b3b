"""Read-side queries the DICOM node's result sender needs (plain functions over a Store).

`plan_deliveries` is the only writer: it enqueues the SR/SEG deliveries an analysis still lacks for each destination,
so the sender loop can be restarted at any time and never sends twice nor forgets one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from appliance.store.deliveries import DELIVERY_KINDS
from appliance.store.models import Analysis, Delivery, Instance, Series, Study


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
                       *, latest_only: bool = True) -> list[tuple[int, str, str]]:
    """(analysis_id, destination, kind) for which no delivery row exists yet, oldest analysis first.

    latest_only: only each study's newest analysis version (an older version superseded before it was sent is not
    worth sending)."""
    if not destinations:
        return []
    with store.read_session() as s:
        q = select(Analysis.id, Analysis.study_id, Analysis.version)
        rows = s.execute(q.order_by(Analysis.id)).all()
        if latest_only:
            newest = dict(s.execute(select(Analysis.study_id, func.max(Analysis.version))
                                    .group_by(Analysis.study_id)).all())
            rows = [r for r in rows if newest.get(r.study_id) == r.version]
        have = set(s.execute(select(Delivery.analysis_id, Delivery.destination, Delivery.kind)).all())
    return [(r.id, d, k) for r in rows for d in destinations for k in kinds if (r.id, d, k) not in have]


def plan_deliveries(store, destinations: list[str], kinds: tuple[str, ...] = DELIVERY_KINDS) -> list[int]:
    """Enqueue every missing delivery; returns the new delivery ids. One node process plans (no unique constraint
    on (analysis, destination, kind) in the schema), so this runs in the node's single sender thread."""
    return [store.enqueue_delivery(a, destination=d, kind=k) for a, d, k in missing_deliveries(store, destinations,
                                                                                                  kinds)]


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
