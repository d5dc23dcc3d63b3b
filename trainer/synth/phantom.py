"""The in-memory study both phantom kinds produce and lesion insertion edits: HU image, label map, grid, who."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from appliance.ontology import ORGANS_BY_NAME, TOTALSEG_ID_BY_NAME
from appliance.volume import Volume
from trainer.synth.grid import Grid

PHASES = ("non_contrast", "arterial", "portal_venous")


def ts_ids(*names: str) -> tuple[int, ...]:
    """TotalSegmentator ids of class names or of our organ names (an organ expands to its classes)."""
    out: list[int] = []
    for n in names:
        if n in ORGANS_BY_NAME:
            out.extend(ORGANS_BY_NAME[n].totalseg_ids)
        else:
            out.append(TOTALSEG_ID_BY_NAME[n])
    return tuple(out)


@dataclass
class Phantom:
    hu: np.ndarray  # float32 (z, y, x), noise-free
    labels: np.ndarray  # uint8 (z, y, x), TotalSegmentator `total` ids
    grid: Grid
    sex: str
    phase: str
    age: int
    kind: str  # "analytic" | "real-backed"
    meta: dict = field(default_factory=dict)
    _boxes: list | None = field(default=None, repr=False)

    def labels_changed(self) -> None:
        self._boxes = None

    def bbox(self, ids) -> tuple[slice, slice, slice] | None:
        """Tight bounding box (full-res slices) of the union of label ids, from one cached find_objects pass."""
        if self._boxes is None:
            self._boxes = ndimage.find_objects(self.labels, max_label=255)
        boxes = [self._boxes[i - 1] for i in ids if 0 < i <= len(self._boxes) and self._boxes[i - 1] is not None]
        if not boxes:
            return None
        return tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))

    def present(self, *names: str, min_ml: float = 0.5) -> bool:
        ids = ts_ids(*names)
        bb = self.bbox(ids)
        if bb is None:
            return False
        return float(np.isin(self.labels[bb], ids).sum()) * self.voxel_ml >= min_ml

    def mask(self, ids, bb=None) -> np.ndarray:
        bb = bb if bb is not None else self.bbox(ids)
        return np.isin(self.labels[bb], ids)

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.grid.spacing)) / 1000.0

    def volume_ml(self, *names: str) -> float:
        ids = ts_ids(*names)
        bb = self.bbox(ids)
        return 0.0 if bb is None else float(np.isin(self.labels[bb], ids).sum()) * self.voxel_ml

    def voxel_to_lps(self, idx) -> list[float]:
        idx = np.asarray(idx, dtype=np.float64)
        g = self.grid
        return [g.origin_lps[0] + idx[2] * g.spacing[2], g.origin_lps[1] + idx[1] * g.spacing[1],
                g.origin_lps[2] + idx[0] * g.spacing[0]]

    def lps_to_voxel(self, p) -> np.ndarray:
        g = self.grid
        return np.array([(p[2] - g.origin_lps[2]) / g.spacing[0], (p[1] - g.origin_lps[1]) / g.spacing[1],
                         (p[0] - g.origin_lps[0]) / g.spacing[2]])

    def organ_volumes_ml(self) -> dict[str, float]:
        counts = np.bincount(self.labels.ravel(), minlength=256)
        return {name: round(float(sum(counts[i] for i in o.totalseg_ids)) * self.voxel_ml, 2)
                for name, o in ORGANS_BY_NAME.items()}

    def image_volume(self, hu: np.ndarray | None = None) -> Volume:
        return self.grid.to_volume(self.hu if hu is None else hu, source=f"synth-{self.kind}")

    def label_volume(self) -> Volume:
        return self.grid.to_volume(self.labels, source=f"synth-{self.kind}-labels")
