"""Findings plan: the configured share of normal studies, and the co-occurrences the plan promises."""

from __future__ import annotations

import numpy as np

from trainer.synth.plan import sample_findings


def _draws(n=3000, **kw):
    rng = np.random.default_rng(0)
    return [sample_findings(rng, age=int(rng.integers(25, 90)), sex=str(rng.choice(["male", "female"])), **kw)
            for _ in range(n)]


def test_default_normal_fraction_is_about_thirty_percent():
    d = _draws()
    frac = sum(not x for x in d) / len(d)
    assert 0.27 < frac < 0.33  # binomial sd at n=3000 is 0.008
    assert sum(not x for x in _draws(normal_fraction=0.0)) == 0


def test_ascites_goes_with_organomegaly_and_no_prostate_in_women():
    rng = np.random.default_rng(1)
    with_sm = without = n_with = n_without = 0
    for _ in range(4000):
        x = sample_findings(rng, age=60, sex="female", normal_fraction=0.0)
        assert "prostatomegaly" not in x
        if "splenomegaly" in x:
            n_with += 1; with_sm += "ascites" in x
        else:
            n_without += 1; without += "ascites" in x
    assert with_sm / n_with > 2 * without / n_without


def test_calcification_rises_with_age():
    rng = np.random.default_rng(2)
    young = sum("coronary_calcification" in sample_findings(rng, age=30, sex="male", normal_fraction=0) for _ in range(2000))
    old = sum("coronary_calcification" in sample_findings(rng, age=85, sex="male", normal_fraction=0) for _ in range(2000))
    assert old > 1.5 * young
