"""Retrospective search over stored organ embeddings: rank organs by cosine similarity to a query embedding.

Only embeddings made by the SAME bundle are comparable (another bundle is another embedding space), so a search is
always restricted to one bundle_id; and only each study's newest analysis version counts (an older version is
superseded, not a second hit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select

from appliance.store.models import Analysis, OrganResultRow, Study
from appliance.store.results import embedding_from_bytes


@dataclass(frozen=True)
class OrganHit:
    score: float  # cosine similarity
    study_uid: str
    accession: str | None
    study_date: str | None
    analysis_id: int
    version: int
    organ: str
    status: str
    volume_ml: float | None


def search_organs(store, query: np.ndarray, *, bundle_id: str, organ: str | None = None,
                  top: int = 10) -> list[OrganHit]:
    q = np.asarray(query, dtype=np.float32).ravel()
    q = q / max(float(np.linalg.norm(q)), 1e-12)
    newest = (select(Analysis.study_id, func.max(Analysis.version).label("v"))
              .where(Analysis.bundle_id == bundle_id).group_by(Analysis.study_id).subquery())
    stmt = (select(OrganResultRow, Analysis.id, Analysis.version, Study.study_uid, Study.accession, Study.study_date)
            .join(Analysis, Analysis.id == OrganResultRow.analysis_id)
            .join(newest, (newest.c.study_id == Analysis.study_id) & (newest.c.v == Analysis.version))
            .join(Study, Study.id == Analysis.study_id)
            .where(Analysis.bundle_id == bundle_id, OrganResultRow.embedding.is_not(None),
                   OrganResultRow.embedding_dim == q.size))
    if organ:
        stmt = stmt.where(OrganResultRow.organ == organ)
    hits: list[OrganHit] = []
    with store.read_session() as s:
        rows = s.execute(stmt).all()
    if not rows:
        return []
    emb = np.stack([embedding_from_bytes(r[0].embedding, r[0].embedding_dim) for r in rows])
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    scores = emb @ q
    for i in np.argsort(-scores, kind="stable")[:top]:
        o, aid, ver, uid, acc, date = rows[i]
        hits.append(OrganHit(float(scores[i]), uid, acc, date, aid, ver, o.organ, o.status, o.volume_ml))
    return hits
