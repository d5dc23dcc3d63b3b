"""Classification metrics in plain numpy (no sklearn at run time; the tests cross-check against hand computations).

- :func:`auroc`: Mann-Whitney U statistic with mid-ranks for ties = area under the ROC curve with ties counted 1/2.
- :func:`roc_curve`: (fpr, tpr, thresholds), thresholds descending, one point per distinct score, starting at (0,0).
- :func:`f1_score` / :func:`confusion`: at a decision ``score >= threshold`` (same rule as ``appliance.scoring.decide``).
- :func:`best_threshold`: the threshold that maximises F1 on the given (validation) scores - candidates are the
  observed scores; ties broken by the larger threshold (fewer false positives). Why max-F1 and not Youden's J: the
  headline metric is F1 and positives are rare (10-30 %), where Youden's J favours high-recall thresholds with many
  false positives.
- :func:`bootstrap_ci`: percentile bootstrap over cases (studies), 95 % by default; resamples in which the metric is
  undefined (e.g. no positive drawn) are skipped and counted.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def _clean(y, s) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(bool).ravel()
    s = np.asarray(s, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    ok = np.isfinite(s)
    return y[ok], s[ok]


def rankdata(a: np.ndarray) -> np.ndarray:
    """Mid-ranks (1-based) with ties averaged."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    sa = a[order]
    ranks = np.empty(len(a), dtype=np.float64)
    i = 0
    n = len(a)
    while i < n:
        j = i
        while j + 1 < n and sa[j + 1] == sa[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def auroc(y, s) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, s = _clean(y, s)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(s)
    u = r[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(y, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, s = _clean(y, s)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.array([], dtype=int)
    tps = np.cumsum(y)[distinct]
    fps = np.cumsum(~y)[distinct]
    P, N = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fps / N]
    tpr = np.r_[0.0, tps / P]
    thr = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thr


def confusion(y, s, threshold: float) -> dict:
    y, s = _clean(y, s)
    p = s >= threshold
    return {"tp": int((p & y).sum()), "fp": int((p & ~y).sum()), "fn": int((~p & y).sum()),
            "tn": int((~p & ~y).sum())}


def f1_from(c: dict) -> float:
    """F1 = 2TP / (2TP + FP + FN); NaN when there is neither a positive case nor a positive call."""
    d = 2 * c["tp"] + c["fp"] + c["fn"]
    return float(2 * c["tp"] / d) if d else float("nan")


def f1_score(y, s, threshold: float) -> float:
    return f1_from(confusion(y, s, threshold))


def best_threshold(y, s, min_precision: float = 0.0) -> tuple[float, float]:
    """-> (threshold, F1 at it) maximising F1 on these scores among the thresholds whose precision is at least
    ``min_precision``; (0.5, NaN) without positives; (NaN, 0.0) when no threshold reaches that precision."""
    y, s = _clean(y, s)
    if y.sum() == 0 or len(s) == 0:
        return 0.5, float("nan")
    cands = np.unique(s)[::-1]  # descending: first max = largest threshold
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    tp = np.cumsum(yy)
    fp = np.cumsum(~yy)
    # for threshold t = cands[k], predicted positive = all with s >= t -> last index of that value in ss
    last = np.searchsorted(-ss, -cands, side="right") - 1
    tpk, fpk = tp[last], fp[last]
    fnk = y.sum() - tpk
    f1 = 2 * tpk / (2 * tpk + fpk + fnk)
    f1 = np.where(tpk >= min_precision * (tpk + fpk), f1, -1.0)  # tpk + fpk >= 1: every candidate calls a study
    k = int(np.argmax(f1))
    return (float(cands[k]), float(f1[k])) if f1[k] >= 0 else (float("nan"), 0.0)


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], y, s, *, n: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict:
    """Percentile bootstrap over cases -> {"lo", "hi", "n_valid", "n"} (NaN bounds if < 20 valid resamples)."""
    y, s = _clean(y, s)
    rng = np.random.default_rng(seed)
    vals = []
    m = len(y)
    if m == 0:
        return {"lo": float("nan"), "hi": float("nan"), "n_valid": 0, "n": n}
    for _ in range(int(n)):
        idx = rng.integers(0, m, size=m)
        v = metric(y[idx], s[idx])
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < 20:
        return {"lo": float("nan"), "hi": float("nan"), "n_valid": len(vals), "n": n}
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return {"lo": float(lo), "hi": float(hi), "n_valid": len(vals), "n": n}


def macro(values) -> float:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    return float(v.mean()) if len(v) else float("nan")
