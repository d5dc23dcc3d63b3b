"""Sliding-window organ segmentation at a fixed spacing: the one runtime path for any segmentation network.

``segment_volume(volume, preprocessing, predict)`` is used by the appliance (``predict`` = an ONNX Runtime / TensorRT
runner) and by the trainer's evaluation (``predict`` = the torch model), so what the trainer measures is what the
appliance runs. numpy/scipy only (no torch).

Steps (``preprocessing`` is the bundle's ``models.segmentation.preprocessing`` dict):
1. reorient to the canonical layout (``to_canonical``: axis permutations/flips only), resample to ``spacing_mm`` (trilinear, ``appliance.volume.resample``; the first voxel's outer corner
   stays fixed),
2. clip HU to ``clip_hu`` and normalise ``(x - mean) / std``,
3. pad every axis to at least ``patch_size`` (with the normalised ``clip_hu`` low value, i.e. air),
4. tile with windows of ``patch_size`` whose starts are evenly spaced so neighbours overlap by at least
   ``1 - step`` of a patch (nnU-Net's rule), batch the windows through ``predict`` ([B,1,d,h,w] -> [B,C,d,h,w]
   logits), turn logits into softmax probabilities and blend them with a Gaussian importance map
   (sigma = patch/8 per axis, normalised to max 1, zeros lifted to the smallest non-zero value),
5. argmax over channels, map channel -> label id through ``class_ids``,
6. optional connected-component clean-up on the working grid (``postprocess``, see ``clean_components``),
7. map the label map back onto the input grid with nearest neighbour.

Blending softmax probabilities (not raw logits) keeps one over-confident window edge from dominating its neighbours.

``postprocess`` (optional; absent = none, what every bundle before session 7 did) is the model's own clean-up rule,
decided by whoever trained it (nnU-Net stores one per model too): ``{"keep_largest": [label ids],
"min_component_fraction": f}``. A network that has seen one or two patients paints islands of an organ elsewhere
(session 7: a second "liver" in the pelvis of the held-out patient); a solid organ is one piece, so only its largest
component is real.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from appliance.errors import TotalFMError
from appliance.volume import Volume, resample, to_canonical

Predict = Callable[[np.ndarray], np.ndarray]


class SegmentationError(TotalFMError):
    """The segmentation preprocessing contract is broken (bad keys, predict returned the wrong shape)."""


REQUIRED_KEYS = ("spacing_mm", "patch_size", "clip_hu", "mean", "std", "class_ids")


def _check_preprocessing(pp: dict) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in pp]
    if missing:
        raise SegmentationError(f"segmentation preprocessing lacks {', '.join(missing)} (needs {', '.join(REQUIRED_KEYS)})")
    if len(pp["spacing_mm"]) != 3 or len(pp["patch_size"]) != 3:
        raise SegmentationError("spacing_mm and patch_size must have three entries (z, y, x)")
    if float(pp["std"]) <= 0:
        raise SegmentationError("preprocessing std must be positive")
    for key, allowed in (("blend", ("softmax", "logits")), ("importance_map", ("symmetric", "nnunet")),
                         ("window_frame", ("LPS", "RAS"))):
        if key in pp and pp[key] not in allowed:
            raise SegmentationError(f"preprocessing {key} = {pp[key]!r}; allowed: {', '.join(allowed)}")
    post = pp.get("postprocess")
    if post is not None:
        unknown = set(post) - {"keep_largest", "min_component_fraction"}
        if unknown:
            raise SegmentationError(f"postprocess has unknown keys {sorted(unknown)}; "
                                    "allowed: keep_largest, min_component_fraction")
        organ_ids = {int(c) for c in pp["class_ids"]} - {0}
        bad = [i for i in post.get("keep_largest", []) if int(i) not in organ_ids]
        if bad:
            raise SegmentationError(f"postprocess keep_largest names label ids {bad} that are not organ classes")
        if not 0.0 <= float(post.get("min_component_fraction", 0.0)) < 1.0:
            raise SegmentationError("postprocess min_component_fraction must be in [0, 1)")


def clean_components(labels: np.ndarray, keep_largest=(), min_component_fraction: float = 0.0) -> np.ndarray:
    """Connected-component clean-up of a label map (face connectivity); removed voxels become background (0).

    Label ids in ``keep_largest`` keep only their largest component (solid organs: one piece in every patient). Every
    other label drops the components smaller than ``min_component_fraction`` of its own largest one: tubes, paired
    organs and the spine are legitimately several pieces (vertebrae, bowel loops leaving the scan), so only specks go.
    """
    from scipy import ndimage

    keep = {int(i) for i in keep_largest}
    frac = float(min_component_fraction)
    out = labels.copy()
    objects = ndimage.find_objects(labels)  # bounding box per label id: label each organ inside its own box only
    for lab, box in enumerate(objects, start=1):
        if box is None or (lab not in keep and frac <= 0.0):
            continue
        m = labels[box] == lab
        cc, n = ndimage.label(m)
        if n <= 1:
            continue
        sizes = np.bincount(cc.ravel())[1:]
        if lab in keep:
            drop = np.arange(n) != int(np.argmax(sizes))  # exactly one survives, even on a size tie
        else:
            drop = sizes < frac * sizes.max()
        region = out[box]
        region[np.isin(cc, np.flatnonzero(drop) + 1)] = 0
    return out


def normalise(array: np.ndarray, pp: dict) -> np.ndarray:
    """Clip HU to ``clip_hu`` and standardise with ``mean``/``std`` (float32). Shared with the trainer's data code."""
    lo, hi = (float(v) for v in pp["clip_hu"])
    out = np.clip(array.astype(np.float32, copy=False), lo, hi)
    out -= np.float32(pp["mean"])
    out /= np.float32(pp["std"])
    return out


def gaussian_importance(patch: tuple[int, int, int], sigma_scale: float = 1.0 / 8, *,
                        centre: str = "symmetric") -> np.ndarray:
    """nnU-Net's importance map: a Gaussian centred on the patch, sigma = patch * sigma_scale, max 1, no zeros.

    centre "symmetric": at (n-1)/2 (our own models); "nnunet": at index n//2 as nnU-Net places it (one voxel off
    the middle on even sizes) - needed to reproduce TotalSegmentator's blend exactly."""
    grids = []
    for n in patch:
        c = (n // 2) if centre == "nnunet" else (n - 1) / 2.0
        s = max(n * sigma_scale, 1e-6)
        x = np.arange(n, dtype=np.float64)
        grids.append(np.exp(-0.5 * ((x - c) / s) ** 2))
    g = grids[0][:, None, None] * grids[1][None, :, None] * grids[2][None, None, :]
    g /= g.max()
    nz = g[g > 0]
    g[g == 0] = nz.min() if nz.size else 1.0
    return g.astype(np.float32)


def window_starts(size: int, patch: int, step: float) -> list[int]:
    """Evenly spaced window starts covering 0..size (size >= patch) with stride <= step * patch."""
    if size <= patch:
        return [0]
    stride = max(1, int(patch * step))
    n = int(math.ceil((size - patch) / stride)) + 1
    actual = (size - patch) / (n - 1)
    return [int(round(actual * i)) for i in range(n)]


def sliding_window_probabilities(image: np.ndarray, patch: tuple[int, int, int], predict: Predict, *,
                                 step: float = 0.5, batch_size: int = 2, pad_value: float = 0.0,
                                 blend: str = "softmax", importance_map: str = "symmetric",
                                 mirror_axes: tuple[int, ...] = ()) -> np.ndarray:
    """Blended softmax probabilities [C, *image.shape] of ``predict`` over windows of ``patch`` covering ``image``.

    blend "softmax" (default) blends probabilities; "logits" blends raw logits and takes the softmax at the end, as
    nnU-Net does. mirror_axes: axes on which the window grid (and the importance map) is laid out from the far end,
    i.e. in the frame of an array flipped on those axes - nnU-Net works on RAS arrays, ours are LPS, so reproducing
    TotalSegmentator's windows exactly needs axes 1 and 2 mirrored."""
    patch = tuple(int(p) for p in patch)
    orig = image.shape
    pads = [(0, max(0, p - s)) for s, p in zip(orig, patch)]
    # centre small axes in the padded array so the organ sits where the network saw organs in training
    pads = [(b // 2, b - b // 2) for _, b in pads]
    img = np.pad(image, pads, mode="constant", constant_values=pad_value) if any(b for _, b in pads) else image
    shape = img.shape
    per_axis = []
    for a, (s_, p_) in enumerate(zip(shape, patch)):
        st = window_starts(s_, p_, step)
        per_axis.append(sorted(s_ - p_ - v for v in st) if a in mirror_axes else st)
    starts = list(itertools.product(*per_axis))
    weight = gaussian_importance(patch, centre=importance_map)
    if mirror_axes:
        weight = np.ascontiguousarray(np.flip(weight, axis=tuple(mirror_axes)))
    acc = None
    norm = np.zeros(shape, dtype=np.float32)
    for i in range(0, len(starts), max(1, batch_size)):
        chunk = starts[i:i + batch_size]
        batch = np.stack([img[z:z + patch[0], y:y + patch[1], x:x + patch[2]] for z, y, x in chunk])[:, None]
        logits = np.asarray(predict(np.ascontiguousarray(batch, dtype=np.float32)))
        if logits.ndim != 5 or logits.shape[0] != len(chunk) or tuple(logits.shape[2:]) != patch:
            raise SegmentationError(f"predict returned shape {logits.shape}, expected [{len(chunk)}, C, {patch}]")
        logits = logits.astype(np.float32, copy=False)
        prob = logits if blend == "logits" else _softmax(logits, axis=1)
        if acc is None:
            acc = np.zeros((logits.shape[1],) + shape, dtype=np.float32)
        for (z, y, x), p in zip(chunk, prob):
            acc[:, z:z + patch[0], y:y + patch[1], x:x + patch[2]] += p * weight
            norm[z:z + patch[0], y:y + patch[1], x:x + patch[2]] += weight
    acc /= norm[None]
    crop = tuple(slice(b, b + s) for (b, _), s in zip(pads, orig))
    out = acc[(slice(None),) + crop]
    return _softmax(out, axis=0) if blend == "logits" else out


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _nearest_back(labels: Volume, reference: Volume) -> np.ndarray:
    """Nearest-neighbour map of ``labels`` onto ``reference``'s grid; edge voxels replicate (no background rim)."""
    pad = np.pad(labels.array, 1, mode="edge")
    origin = np.asarray(labels.origin) - labels.direction @ np.asarray(labels.spacing)
    padded = Volume(pad, labels.spacing, tuple(origin), labels.direction)
    return resample(padded, reference=reference, order=0, cval=0).array


def segment_volume(volume: Volume, preprocessing: dict, predict: Predict, *, batch_size: int = 2,
                   return_probabilities: bool = False):
    """Label map (Volume, uint8/uint16, label ids from ``class_ids``) on ``volume``'s grid.

    ``predict`` maps float32 [B,1,d,h,w] (normalised patches) to float32 logits [B,C,d,h,w], C == len(class_ids).
    With ``return_probabilities`` also returns the blended probabilities on the working (resampled) grid.
    """
    pp = preprocessing
    _check_preprocessing(pp)
    spacing = tuple(float(s) for s in pp["spacing_mm"])
    patch = tuple(int(p) for p in pp["patch_size"])
    class_ids = np.asarray(pp["class_ids"], dtype=np.int64)
    # canonical orientation first (axis flips/permutations only): the network learnt one anatomy layout
    work = resample(to_canonical(volume), spacing=spacing, order=1)
    img = normalise(work.array, pp)
    pad_value = float((float(pp["clip_hu"][0]) - float(pp["mean"])) / float(pp["std"]))
    # nnU-Net models (TotalSegmentator import) declare nnU-Net's blend; the window frame is the RAS array, whose
    # y/x run opposite to our canonical LPS array (export/totalseg_import.py measured 94.8 -> 99.9% identical
    # labels vs the totalsegmentator() API with these).
    mirror = (1, 2) if pp.get("window_frame") == "RAS" else ()
    prob = sliding_window_probabilities(img, patch, predict, step=float(pp.get("step", 0.5)),
                                        batch_size=batch_size, pad_value=pad_value,
                                        blend=pp.get("blend", "softmax"),
                                        importance_map=pp.get("importance_map", "symmetric"), mirror_axes=mirror)
    if prob.shape[0] != len(class_ids):
        raise SegmentationError(f"network gives {prob.shape[0]} channels but class_ids has {len(class_ids)}")
    dtype = np.uint8 if class_ids.max(initial=0) < 256 else np.uint16
    lab_work = class_ids[np.argmax(prob, axis=0)].astype(dtype)
    post = pp.get("postprocess")
    if post:
        lab_work = clean_components(lab_work, post.get("keep_largest", ()),
                                    float(post.get("min_component_fraction", 0.0)))
    lab_vol = Volume(lab_work, work.spacing, work.origin, work.direction)
    if work.same_grid(volume):
        out_arr = lab_work
    else:
        out_arr = _nearest_back(lab_vol, volume).astype(dtype, copy=False)
    out = volume.with_array(out_arr, label_space=pp.get("label_space", "organ"))
    if return_probabilities:
        return out, prob
    return out


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels) -> dict[int, float]:
    """Dice of each label id in ``labels`` (NaN where the label is absent from both maps)."""
    pred = np.asarray(pred)
    ref = np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"pred shape {pred.shape} != ref shape {ref.shape}")
    n = int(max(pred.max(initial=0), ref.max(initial=0), max(labels, default=0))) + 1
    p = pred.ravel().astype(np.int64)
    r = ref.ravel().astype(np.int64)
    inter = np.bincount(p[p == r], minlength=n)
    cp = np.bincount(p, minlength=n)
    cr = np.bincount(r, minlength=n)
    out = {}
    for lab in labels:
        denom = cp[lab] + cr[lab]
        out[int(lab)] = float("nan") if denom == 0 else float(2.0 * inter[lab] / denom)
    return out
