"""Admin actions on result drafts, as plain functions over a Store (the TUI and scripts call these).

Why a separate module: store.py/queue.py stay the node's and workers' hot path; review bookkeeping is an admin
concern and every action here writes an audit event in the same transaction as the change.
"""

from __future__ import annotations

from sqlalchemy import select

from appliance.errors import StoreError
from appliance.store.models import Analysis, ReportRow, Study, utcnow


def mark_reviewed(store, analysis_id: int, *, actor: str) -> None:
    """Record that a radiologist reviewed the AI draft of analysis `analysis_id` (who and when), audited.

    Marking twice keeps the first reviewer: the audit log holds every attempt, the row the first review."""
    if not actor or not actor.strip():
        raise StoreError("a review needs the reviewer's name (actor)")
    with store.session() as s:
        report = s.scalars(select(ReportRow).where(ReportRow.analysis_id == analysis_id)).one_or_none()
        if report is None:
            if s.get(Analysis, analysis_id) is None:
                raise StoreError(f"analysis {analysis_id} does not exist")
            raise StoreError(f"analysis {analysis_id} has no draft report to review")
        already = report.reviewed_by is not None
        if not already:
            report.reviewed_by, report.reviewed_at = actor.strip(), utcnow()
        store._audit(s, "draft_reviewed", actor=actor.strip(),
                     detail={"analysis_id": analysis_id, "already_reviewed_by": report.reviewed_by if already else None})


def unmark_reviewed(store, analysis_id: int, *, actor: str) -> None:
    """Undo a review mark (e.g. set on the wrong study), audited."""
    with store.session() as s:
        report = s.scalars(select(ReportRow).where(ReportRow.analysis_id == analysis_id)).one_or_none()
        if report is None:
            raise StoreError(f"analysis {analysis_id} has no draft report")
        previous = report.reviewed_by
        report.reviewed_by, report.reviewed_at = None, None
        store._audit(s, "draft_review_removed", actor=actor, detail={"analysis_id": analysis_id,
                                                                     "was_reviewed_by": previous})


def review_state(store, analysis_id: int) -> tuple[str | None, object]:
    """(reviewed_by, reviewed_at) of the analysis' draft; (None, None) when not reviewed."""
    with store.read_session() as s:
        report = s.scalars(select(ReportRow).where(ReportRow.analysis_id == analysis_id)).one_or_none()
        if report is None:
            raise StoreError(f"analysis {analysis_id} has no draft report")
        return report.reviewed_by, report.reviewed_at


def analysis_ids_of_study(store, study_uid: str) -> list[int]:
    """Every analysis id of a study, newest version first."""
    with store.read_session() as s:
        return list(s.scalars(select(Analysis.id).join(Study, Study.id == Analysis.study_id)
                              .where(Study.study_uid == study_uid).order_by(Analysis.version.desc())))
