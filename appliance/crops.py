"""Organ crops: the ONE preprocessing step that turns (CT volume, label map) into model inputs.

The trainer and the appliance both call crop_organs(), so what a model sees in training is byte-for-byte what it
sees in the hospital (same code, same float32 arithmetic, deterministic).

Per organ (recipe in appliance.ontology): bounding box of its mask, centred in a fixed-shape grid at the recipe's
spacing, with the *source* direction (no rotation: resampling is axis-aligned and cheap), trilinear for HU, nearest
for the mask, outside the scan padded with the window low (0 after normalisation), HU clipped to the window and mapped
to 0..1. Only the sub-block of the source that the crop covers is resampled, never the whole volume.

Statuses, so nothing is silently cropped as if complete:
  ok                 whole organ, margin included, fits the fixed shape
  partial_in_crop    the organ (+ margin) is larger than the fixed shape along some axis; the crop is its centre
  truncated_by_scan  the mask touches an edge of the scanned volume: the organ is cut off by the scan range (still
                     cropped, flagged with the side, so training and scoring can decide to use it or not)
  too_small          fewer mL than the recipe's plausible minimum (a fragment or a segmentation speck): no crop
  not_in_crop        the organ's mask is scattered so widely that none of it falls inside the fixed-shape crop
                     around its bounding-box centre (e.g. a false piece on the far side of the body): no crop, so
                     nothing is encoded or scored from a box that does not show the organ
  absent             not in the label map: no crop
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from appliance import ontology
from appliance.errors import CropError
from appliance.volume import Volume

STATUSES = ("ok", "partial_in_crop", "truncated_by_scan", "too_small", "not_in_crop", "absent")


@dataclass(eq=False)
class OrganCrop:
    organ: str
    status: str
    reason: str
    image: Volume | None  # normalised 0..1 on the crop grid (geometry maps the crop back to patient LPS mm)
    mask: Volume | None  # uint8 organ mask on the same crop grid
    bbox: tuple[tuple[int, int], ...] | None  # source voxel index range per axis, [lo, hi)
    voxel_count: int = 0
    volume_ml: float = 0.0
    fit_fraction: tuple[float, float, float] = (1.0, 1.0, 1.0)  # share of (bbox + margin) extent inside the crop

    @property
    def usable(self) -> bool:
        return self.image is not None


@dataclass(eq=False)
class CropSet:
    crops: dict[str, OrganCrop] = field(default_factory=dict)  # every ontology organ, absent ones included

    def present(self) -> dict[str, OrganCrop]:
        return {k: c for k, c in self.crops.items() if c.usable}

    def report(self) -> dict[str, dict]:
        return {k: {"status": c.status, "reason": c.reason, "volume_ml": round(c.volume_ml, 1)}
                for k, c in self.crops.items()}


def organ_index_map(labels: Volume, label_space: str = "totalseg") -> np.ndarray:
    """Label map -> uint8 array of 1-based ontology organ indices (0 = background/other)."""
    arr = labels.array
    if not np.issubdtype(arr.dtype, np.integer):
        raise CropError(f"label map must hold integers, got {arr.dtype}")
    if label_space == "totalseg":
        lut = ontology.organ_index_lut(max(int(arr.max(initial=0)), 117))
        if arr.min(initial=0) < 0:
            raise CropError("label map has negative labels")
        return lut[arr]
    if label_space == "organ":
        if arr.min(initial=0) < 0 or arr.max(initial=0) > len(ontology.ORGANS):
            raise CropError(f"organ label map values must be 0..{len(ontology.ORGANS)}")
        return arr.astype(np.uint8, copy=False)
    raise CropError(f"label_space must be 'totalseg' or 'organ', got {label_space!r}")


def _edge_sides(vol: Volume, sl: tuple[slice, ...]) -> list[str]:
    """Patient-direction names of the scan edges that an organ's bounding box touches."""
    names = {0: ("right", "left"), 1: ("anterior", "posterior"), 2: ("inferior", "superior")}
    sides = []
    for a, s in enumerate(sl):
        v = vol.direction[:, a]
        k = int(np.argmax(np.abs(v)))
        low, high = names[k] if v[k] > 0 else names[k][::-1]
        if s.start == 0:
            sides.append(low)
        if s.stop == vol.shape[a]:
            sides.append(high)
    return sides


def _sample(src: np.ndarray, scale: np.ndarray, offset: np.ndarray, shape, order: int, cval: float,
            select: int | None = None) -> np.ndarray:
    """out[q] = src[scale * q + offset] for a diagonal mapping, reading only the needed sub-block of src.
    ``select``: sample the binary mask (src == select) instead of src (nearest neighbour)."""
    last = offset + scale * (np.asarray(shape) - 1)
    lo = np.maximum(np.floor(np.minimum(offset, last)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(np.maximum(offset, last)).astype(int) + 2, src.shape)
    if np.any(hi <= lo):  # crop lies entirely outside the scan
        return np.full(shape, cval, dtype=np.float32 if order else (np.uint8 if select is not None else src.dtype))
    block = src[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))]
    if select is not None:
        block = (block == select).astype(np.uint8)
    if order:
        block = block.astype(np.float32, copy=False)
    return ndimage.affine_transform(block, scale, offset=offset - lo, output_shape=tuple(shape), order=order,
                                    mode="constant", cval=cval, prefilter=False)


def crop_organs(volume: Volume, labels: Volume, *, organs=None, label_space: str = "totalseg",
                dtype=np.float32) -> CropSet:
    """One crop per ontology organ present in ``labels`` (on the same grid as ``volume``); see module docstring."""
    if not volume.same_grid(labels, tol_mm=1e-2):
        raise CropError(
            f"label map and CT are on different grids (CT {volume.shape} at {volume.spacing} mm, labels "
            f"{labels.shape} at {labels.spacing} mm); resample the labels onto the CT first")
    omap = organ_index_map(labels, label_space)
    wanted = [ontology.organ(o) for o in (organs or ontology.ORGAN_NAMES)]
    boxes = ndimage.find_objects(omap, max_label=len(ontology.ORGANS))
    src_sp = np.asarray(volume.spacing)
    out = CropSet()
    for org in wanted:
        i = ontology.ORGAN_NAMES.index(org.name) + 1
        sl = boxes[i - 1]
        if sl is None:
            out.crops[org.name] = OrganCrop(org.name, "absent", "not in the label map", None, None, None)
            continue
        sub = omap[sl] == i
        n = int(sub.sum())
        ml = n * volume.voxel_volume_ml
        bbox = tuple((s.start, s.stop) for s in sl)
        if ml < org.min_volume_ml:
            out.crops[org.name] = OrganCrop(
                org.name, "too_small", f"{ml:.1f} mL is below the plausible minimum of {org.min_volume_ml} mL "
                f"(fragment or segmentation speck)", None, None, bbox, n, ml)
            continue
        r = org.crop
        shape = np.asarray(r.shape)
        crop_sp = np.asarray(r.spacing_mm)
        centre_idx = np.array([(s.start + s.stop - 1) / 2.0 for s in sl])
        centre = volume.index_to_lps(centre_idx)
        origin = centre - volume.direction @ (crop_sp * (shape - 1) / 2.0)
        scale = crop_sp / src_sp
        offset = volume.lps_to_index(origin)
        lo, hi = r.hu_window
        hu = _sample(volume.array, scale, offset, shape, 1, lo)
        img = ((np.clip(hu, lo, hi) - np.float32(lo)) / np.float32(hi - lo)).astype(dtype, copy=False)
        mask = _sample(omap, scale, offset, shape, 0, 0, select=i)
        if not mask.any():
            out.crops[org.name] = OrganCrop(
                org.name, "not_in_crop", f"none of its {ml:.0f} mL falls inside the {r.extent_mm} mm crop around "
                f"its bounding-box centre (the mask is in scattered pieces)", None, None, bbox, n, ml)
            continue
        geom = dict(spacing=tuple(crop_sp), origin=tuple(origin), direction=volume.direction.copy())
        extent_needed = np.array([(s.stop - s.start) for s in sl]) * src_sp + 2 * r.margin_mm
        fit = tuple(float(min(1.0, e)) for e in (crop_sp * shape) / extent_needed)
        sides = _edge_sides(volume, sl)
        if sides:
            status, reason = "truncated_by_scan", f"cut off by the scan range at the {'/'.join(sides)} edge"
        elif min(fit) < 1.0:
            axes = [ax for ax, f in zip("zyx", fit) if f < 1.0]
            status, reason = "partial_in_crop", (
                f"organ plus margin is larger than the {r.extent_mm} mm crop along {','.join(axes)} "
                f"({min(fit):.0%} fits); the crop is its centre")
        else:
            status, reason = "ok", "whole organ with margin"
        out.crops[org.name] = OrganCrop(
            org.name, status, reason,
            Volume(img, meta={"organ": org.name, "kind": "image"}, **geom),
            Volume(mask, meta={"organ": org.name, "kind": "mask"}, **geom),
            bbox, n, ml, fit)
    return out
