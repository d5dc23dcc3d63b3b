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


def test_enriched_plan_gives_lo_to_hi_drawn_findings_and_covers_the_catalogue():
    from collections import Counter

    from appliance.ontology import CATEGORY_FINDINGS
    from trainer.synth.plan import CO_OCCUR
    primary = {f.name: f.organs[0] for f in CATEGORY_FINDINGS}
    added = {b for _, b, _ in CO_OCCUR}
    rng = np.random.default_rng(3)
    counts: Counter = Counter()
    for i in range(600):
        sex = "male" if i % 2 else "female"
        x = sample_findings(rng, age=60, sex=sex, normal_fraction=0.0, per_study=(3, 6))
        assert len(set(x)) == len(x)
        # 3-6 drawn; only findings a co-occurrence rule adds come on top
        assert 3 <= len(x) and len([n for n in x if n not in added]) <= 6
        assert sex == "male" or "prostatomegaly" not in x
        first = [n for n in x if n in ("hepatomegaly", "splenomegaly", "cardiomegaly", "prostatomegaly",
                                       "pancreatic_atrophy", "aortic_aneurysm")]
        assert x[:len(first)] == first  # enlargements are inserted before the lesions that land in them
        counts.update(x)
    assert set(counts) == set(primary)
    # the realistic plan gives the rarest finding ~1 % of studies; enrichment gives every finding at least 4 %
    assert min(counts.values()) >= 0.04 * 600


def test_enriched_plan_lets_findings_of_one_organ_meet_as_in_patients():
    """Session 17: a plan with at most one finding per organ taught the encoder that a fractured spine is never
    osteopenic (fracture AUROC 0.31 on the realistic test, where 11 of 16 fractures are osteopenic)."""
    rng = np.random.default_rng(4)
    draws = [sample_findings(rng, age=60, sex="male", normal_fraction=0.0, per_study=(3, 6)) for _ in range(2000)]
    osteo = [x for x in draws if "osteopenia" in x]
    with_fracture = sum("fracture" in x for x in osteo) / len(osteo)
    assert with_fracture > 0.25  # the co-occurrence rule (0.25) plus chance
    effusion = [x for x in draws if "pleural_effusion" in x]
    assert sum("atelectasis" in x for x in effusion) / len(effusion) > 0.5  # rule 0.6, but not after cardiomegaly
    assert sum("steatosis" in " ".join(x) and "liver_lesion" in x for x in draws) > 0  # pairs no rule links, too


def test_enriched_plan_keeps_the_normal_fraction_and_refuses_bad_ranges():
    import pytest
    d = _draws(n=2000, normal_fraction=0.1, per_study=(2, 4))
    assert 0.08 < sum(not x for x in d) / len(d) < 0.12
    with pytest.raises(ValueError, match="findings per study"):
        sample_findings(np.random.default_rng(0), age=50, sex="male", normal_fraction=0.0, per_study=(4, 2))
