"""trainer.evaluate.metrics against hand computations (and sklearn when installed)."""
import numpy as np
import pytest

from trainer.evaluate import metrics as M


def test_auroc_hand_computed_with_ties():
    y = [1, 0, 1, 0, 1]
    s = [0.9, 0.8, 0.8, 0.1, 0.3]
    # pairs (pos, neg): (0.9,0.8)=1 (0.9,0.1)=1 (0.8,0.8)=0.5 (0.8,0.1)=1 (0.3,0.8)=0 (0.3,0.1)=1 -> 4.5/6
    assert M.auroc(y, s) == pytest.approx(4.5 / 6)
    assert M.auroc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert M.auroc([1, 1, 0], [0.1, 0.2, 0.9]) == 0.0
    assert np.isnan(M.auroc([0, 0], [0.1, 0.2]))
    assert np.isnan(M.auroc([1, 1], [0.1, 0.2]))
    # NaN scores are ignored (organ not assessable)
    assert M.auroc([1, 0, 1], [0.9, 0.1, np.nan]) == 1.0


def test_roc_curve_points():
    fpr, tpr, thr = M.roc_curve([1, 0, 1, 0], [0.9, 0.7, 0.6, 0.2])
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0, 0.5, 0.5, 1.0, 1.0]
    assert thr[1:].tolist() == [0.9, 0.7, 0.6, 0.2]
    # trapezoid area equals the rank statistic
    assert np.trapezoid(tpr, fpr) == pytest.approx(M.auroc([1, 0, 1, 0], [0.9, 0.7, 0.6, 0.2]))


def test_f1_and_best_threshold_hand_computed():
    y = [1, 1, 0, 0, 1, 0]
    s = [0.9, 0.6, 0.55, 0.3, 0.2, 0.1]
    c = M.confusion(y, s, 0.5)
    assert c == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    assert M.f1_score(y, s, 0.5) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # candidates: 0.9 -> F1 2/3 ; 0.6 -> 4/5 ; 0.55 -> 4/6 ; 0.3 -> 4/7 ; 0.2 -> 6/9 ; 0.1 -> 6/9
    thr, f1 = M.best_threshold(y, s)
    assert thr == 0.6 and f1 == pytest.approx(0.8)
    assert M.best_threshold([0, 0], [0.1, 0.9])[0] == 0.5
    assert np.isnan(M.f1_score([0, 0], [0.1, 0.2], 0.5))


def test_best_threshold_with_a_precision_floor_hand_computed():
    y = [1, 0, 0, 1, 0, 1, 0, 1, 0, 1]
    s = np.linspace(1.0, 0.1, 10)
    # calling everything: precision 5/10, F1 10/15 (the unconstrained max); only the top study: precision 1, F1 1/3;
    # every other cut has precision <= 1/2
    assert M.best_threshold(y, s) == pytest.approx((0.1, 2 / 3))
    assert M.best_threshold(y, s, min_precision=0.5) == pytest.approx((0.1, 2 / 3))
    assert M.best_threshold(y, s, min_precision=0.6) == pytest.approx((1.0, 1 / 3))
    thr, f1 = M.best_threshold([0, 1], [0.9, 0.1], min_precision=0.9)  # no cut reaches it
    assert np.isnan(thr) and f1 == 0.0


def test_bootstrap_ci_contains_point_and_is_deterministic():
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.3
    s = y * 0.8 + rng.normal(0, 0.5, 200)
    a = M.auroc(y, s)
    ci = M.bootstrap_ci(M.auroc, y, s, n=300, seed=3)
    assert ci["lo"] < a < ci["hi"] and ci["hi"] - ci["lo"] < 0.3
    assert ci == M.bootstrap_ci(M.auroc, y, s, n=300, seed=3)
    assert np.isnan(M.bootstrap_ci(M.auroc, [1, 0], [0.1, 0.2], n=10)["lo"])


def test_matches_sklearn_when_available():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.random(97) < 0.25
        s = np.round(y * 0.5 + rng.normal(0, 0.6, 97), 1)  # rounded -> many ties
        assert M.auroc(y, s) == pytest.approx(sk.roc_auc_score(y, s))
        t = float(np.median(s))
        assert M.f1_score(y, s, t) == pytest.approx(sk.f1_score(y, s >= t))


def test_macro_skips_undefined():
    assert M.macro([0.5, float("nan"), 1.0, None]) == 0.75
    assert np.isnan(M.macro([]))
