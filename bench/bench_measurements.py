"""Benchmark: the organ measurements per crop, per version, and the blob pass against its plain form (same run).

    .venv/bin/python bench/bench_measurements.py [--studies 4] [--seed 2000] [--repeats 2]

Crops: every usable organ crop of ``--studies`` analytic phantom studies (trainer.synth, the demo recipe's test seed
range), cut by appliance.crops exactly as the appliance cuts them, on each organ recipe's own grid. Prints ms per crop
for organ-measurements-v1 / v2 / v3 with ratios against v2 (what the demo recipe trains with), and the blob pass of
v3 (``appliance.preprocess.blob_strength``) against PLAIN: the same measure written the obvious way (six
``gaussian_filter`` calls, an eigen-solve wherever the diagonal has the blob's sign), checked to give the same bytes.
Why it matters: every crop of a training bank is measured once per run (demo: ~9,000 crops), and every crop of a
study once in the appliance.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def plain_blob_strength(img, where, spacing, sigma_mm):
    """The reference: six full gaussian_filter calls on the mask's box, eigvalsh wherever the diagonal agrees."""
    from scipy import ndimage

    from appliance.preprocess import filter_box

    spacing = np.asarray(spacing, np.float64)
    if not where.any():
        return np.zeros(0), np.zeros(0)
    box = filter_box(where, sigma_mm / spacing)
    idx = np.nonzero(where[box])
    x = np.asarray(img, np.float32)[box]
    h = np.empty((len(idx[0]), 3, 3), np.float64)
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            d = ndimage.gaussian_filter(x, sigma_mm / spacing, order=order)[idx]
            h[:, i, j] = h[:, j, i] = d * (sigma_mm ** 2 / (spacing[i] * spacing[j]))
    diag = h[:, (0, 1, 2), (0, 1, 2)]
    out = []
    for sign in (-1.0, 1.0):
        strength = np.zeros(len(h))
        cand = (sign * diag > 0).all(axis=1)
        if cand.any():
            strength[cand] = np.maximum(np.linalg.eigvalsh(sign * h[cand])[:, 0], 0.0)
        out.append(strength)
    return out[0], out[1]


def crops_of(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, tuple, str]]:
    from appliance import ontology
    from appliance.crops import crop_organs
    from trainer.synth.study import generate_study

    out = []
    for i in range(n):
        st = generate_study("analytic", seed=seed, index=i)
        for organ, c in crop_organs(st.image, st.labels).present().items():
            out.append((c.image.array, c.mask.array, ontology.ORGANS_BY_NAME[organ].crop.spacing_mm, organ))
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    """Best of ``repeats`` wall times (the least disturbed by a busy machine) and the last result."""
    best, res = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t)
    return best, res


def main():
    from appliance.preprocess import BLOB_SIGMAS_MM, _core, blob_strength, measurements_from_arrays

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=4)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    crops = crops_of(a.studies, a.seed)
    n = len(crops)
    print(f"{n} organ crops of {a.studies} analytic studies (seed {a.seed}); best of {a.repeats} runs")

    per_version = {}
    for v in ("organ-measurements-v1", "organ-measurements-v2", "organ-measurements-v3"):
        per_version[v], _ = timed(lambda v=v: [measurements_from_arrays(i, m, s, o, v) for i, m, s, o in crops],
                                  a.repeats)
    base = per_version["organ-measurements-v2"]
    print("| version | ms per crop | vs v2 |\n| --- | --- | --- |")
    for v, t in per_version.items():
        print(f"| {v} | {1000 * t / n:.1f} | {t / base:.2f}x |")

    cores = [(i, _core(np.asarray(m) > 0), s) for i, m, s, _ in crops]

    def blobs(fn):
        return [fn(i, c, s, sigma) for i, c, s in cores for sigma in BLOB_SIGMAS_MM]

    t_plain, ref = timed(lambda: blobs(plain_blob_strength), a.repeats)
    t_ours, got = timed(lambda: blobs(blob_strength), a.repeats)
    same = all(np.array_equal(x, y) for r, g in zip(ref, got) for x, y in zip(r, g))
    print(f"\nblob pass ({len(BLOB_SIGMAS_MM)} scales, bright + dark): plain {1000 * t_plain / n:.1f} ms per crop, "
          f"blob_strength {1000 * t_ours / n:.1f} ms per crop: {t_ours / t_plain:.2f}x; same bytes: {same}")
    if not same:
        raise SystemExit("blob_strength differs from the plain form")


if __name__ == "__main__":
    main()
