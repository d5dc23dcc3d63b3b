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


def test_enriched_plan_gives_lo_to_hi_findings_one_per_organ_and_covers_the_catalogue():
    from collections import Counter

    from appliance.ontology import CATEGORY_FINDINGS
    primary = {f.name: f.organs[0] for f in CATEGORY_FINDINGS}
    rng = np.random.default_rng(3)
    counts: Counter = Counter()
    for i in range(600):
        sex = "male" if i % 2 else "female"
        x = sample_findings(rng, age=60, sex=sex, normal_fraction=0.0, per_study=(3, 6))
        assert 3 <= len(x) <= 6
        assert len({primary[n] for n in x}) == len(x)  # one finding per organ crop: single-finding training labels
        assert sex == "male" or "prostatomegaly" not in x
        first = [n for n in x if n in ("hepatomegaly", "splenomegaly", "cardiomegaly", "prostatomegaly",
                                       "pancreatic_atrophy", "aortic_aneurysm")]
        assert x[:len(first)] == first  # enlargements are inserted before the lesions that land in them
        counts.update(x)
    assert set(counts) == set(primary)
    # the realistic plan gives the rarest finding ~1 % of studies; enrichment gives every finding at least 4 %
    assert min(counts.values()) >= 0.04 * 600


def test_enriched_plan_keeps_the_normal_fraction_and_refuses_bad_ranges():
    import pytest
    d = _draws(n=2000, normal_fraction=0.1, per_study=(2, 4))
    assert 0.08 < sum(not x for x in d) / len(d) < 0.12
    with pytest.raises(ValueError, match="findings per study"):
        sample_findings(np.random.default_rng(0), age=50, sex="male", normal_fraction=0.0, per_study=(4, 2))
