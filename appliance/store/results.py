"""What an analysis produces, as plain dataclasses: the pipeline fills these without knowing SQLAlchemy, and
`Store.complete_job` writes them all in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class OrganResult:
    organ: str
    status: str  # "ok", "missing", "too_small", ...
    volume_ml: float | None = None
    mean_hu: float | None = None
    std_hu: float | None = None
    embedding: np.ndarray | None = None  # 1-D; stored as float32 bytes

    def embedding_bytes(self) -> tuple[bytes | None, int | None]:
        if self.embedding is None:
            return None, None
        v = np.ascontiguousarray(np.asarray(self.embedding, dtype="<f4").ravel())
        return v.tobytes(), int(v.size)


@dataclass
class FindingResult:
    organ: str
    finding: str
    score: float
    threshold: float | None
    positive: bool


@dataclass
class ReportDraft:
    draft_text: str
    structured: dict[str, Any] | None = None
    model_ids: dict[str, Any] | None = None


@dataclass
class AnalysisResult:
    organs: list[OrganResult] = field(default_factory=list)
    findings: list[FindingResult] = field(default_factory=list)
    report: ReportDraft | None = None
    series_uid: str | None = None
    bundle_id: str | None = None
    backend: str | None = None
    timings: dict[str, float] | None = None
    artifacts: dict[str, str] | None = None  # role -> file path, e.g. {"labels": ".../labels.nii.gz"}


def embedding_from_bytes(data: bytes, dim: int) -> np.ndarray:
    v = np.frombuffer(data, dtype="<f4")
    if v.size != dim:
        raise ValueError(f"stored embedding has {v.size} values, expected {dim}")
    return v
