"""appliance.scoring: prompt-ensemble 2-way softmax, multi-organ max, missing organs, thresholds."""
import math

import numpy as np
import pytest

from appliance.bundle import FindingSpec
from appliance.scoring import decide, decisions, finding_scores, score_matrix


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# prompts: 0,1 positive (near +x), 2,3 negative (near -x / +y)
PROMPTS = _unit([[1, 0.1, 0], [1, -0.1, 0], [0, 1, 0], [-1, 0, 0.2]])
F1 = FindingSpec("lesion", "liver", 0.5, [0, 1], [2, 3])
F2 = FindingSpec("ascites", "liver", 0.7, [0], [3], organs=["liver", "spleen"])


def test_hand_computed_probability():
    e = _unit([0.6, 0.8, 0.0])
    s = 10.0
    lp = s * np.mean([PROMPTS[0] @ e, PROMPTS[1] @ e])
    ln = s * np.mean([PROMPTS[2] @ e, PROMPTS[3] @ e])
    want = math.exp(lp) / (math.exp(lp) + math.exp(ln))
    got = finding_scores({"liver": e}, [F1], PROMPTS, s)["lesion"]
    assert got == pytest.approx(want, rel=1e-6)


def test_direction_and_temperature():
    pos_like, neg_like = _unit([1, 0, 0]), _unit([-1, 0, 0])
    hi = finding_scores({"liver": pos_like}, [F1], PROMPTS, 20.0)["lesion"]
    lo = finding_scores({"liver": neg_like}, [F1], PROMPTS, 20.0)["lesion"]
    assert hi > 0.99 and lo < 0.01
    # larger temperature scale -> more confident, same side of 0.5
    mild = finding_scores({"liver": pos_like}, [F1], PROMPTS, 1.0)["lesion"]
    assert 0.5 < mild < hi


def test_multi_organ_takes_max_and_missing_organs_are_not_scored():
    liver, spleen = _unit([-1, 0, 0]), _unit([1, 0, 0])
    both = finding_scores({"liver": liver, "spleen": spleen}, [F1, F2], PROMPTS, 10.0)
    only_liver = finding_scores({"liver": liver}, [F2], PROMPTS, 10.0)
    assert both["ascites"] > 0.99 > only_liver["ascites"]
    assert finding_scores({"kidneys": liver}, [F1, F2], PROMPTS, 10.0) == {}
    assert finding_scores({"spleen": spleen}, [F1, F2], PROMPTS, 10.0).keys() == {"ascites"}


def test_batched_matches_single_and_nan_rows():
    rng = np.random.default_rng(0)
    liver = _unit(rng.normal(size=(5, 3)))
    spleen = _unit(rng.normal(size=(5, 3)))
    spleen[2] = np.nan
    m = score_matrix({"liver": liver, "spleen": spleen}, [F1, F2], PROMPTS, 7.0)
    for i in range(5):
        emb = {"liver": liver[i]}
        if i != 2:
            emb["spleen"] = spleen[i]
        one = finding_scores(emb, [F1, F2], PROMPTS, 7.0)
        assert m[i, 0] == pytest.approx(one["lesion"]) and m[i, 1] == pytest.approx(one["ascites"])
    liver[3] = np.nan
    spleen[3] = np.nan
    m = score_matrix({"liver": liver, "spleen": spleen}, [F1, F2], PROMPTS, 7.0)
    assert np.isnan(m[3]).all()


def test_decide_and_decisions():
    assert decide(0.5, 0.5) and not decide(0.49, 0.5) and not decide(float("nan"), 0.1)
    d = decisions({"lesion": 0.6, "ascites": 0.6}, [F1, F2])
    assert d["lesion"]["positive"] and not d["ascites"]["positive"]
    assert d["ascites"]["threshold"] == 0.7


def test_positive_rule_ignores_the_negative_prompts():
    """Rule "positive": sigmoid(scale x mean cosine to the positive prompts). Negative prompts, however close to the
    crop, do not move it; under "pair" they do."""
    from dataclasses import replace

    e = _unit([0.6, 0.8, 0.0])
    s = 10.0
    pos = replace(F1, score="positive")
    want = 1.0 / (1.0 + math.exp(-s * np.mean([PROMPTS[0] @ e, PROMPTS[1] @ e])))
    assert finding_scores({"liver": e}, [pos], PROMPTS, s)["lesion"] == pytest.approx(want, rel=1e-6)
    other_neg = replace(pos, neg_index=[0])  # a "negative" prompt identical to a positive one
    assert finding_scores({"liver": e}, [other_neg], PROMPTS, s)["lesion"] == pytest.approx(want, rel=1e-6)
    assert finding_scores({"liver": e}, [replace(F1, neg_index=[0])], PROMPTS, s)["lesion"] != pytest.approx(want)
    with pytest.raises(ValueError, match="unknown finding score rule"):
        score_matrix({"liver": e[None]}, [replace(F1, score="cosine")], PROMPTS, s)


def _sig_inv(p):
    return math.log(p) - math.log1p(-p)


def test_organ_rule_is_the_strongest_margin_of_the_organs_findings_hand_computed():
    """``<organ>_abnormal`` under rule "organ": sigmoid of the largest logit(score) - logit(threshold) over the
    findings scored in that organ's crop (its own prompts at ``prompt_threshold``), so it is called (>= 0.5) exactly
    when one of them is; a finding that can never be called (NEVER_POSITIVE) gives no reason."""
    from appliance.scoring import NEVER_POSITIVE, organ_margins
    abn = FindingSpec("liver_abnormal", "liver", 0.5, [0], [2], score="organ", prompt_threshold=0.9)
    specs = [F1, F2, abn]
    e = _unit([0.6, 0.8, 0.0])
    s = 10.0
    single = finding_scores({"liver": e}, [F1, F2, FindingSpec("p", "liver", 0.9, [0], [2])], PROMPTS, s)
    want = max(_sig_inv(single["lesion"]) - _sig_inv(0.5), _sig_inv(single["ascites"]) - _sig_inv(0.7),
               _sig_inv(single["p"]) - _sig_inv(0.9))
    got = finding_scores({"liver": e}, specs, PROMPTS, s)
    assert _sig_inv(got["liver_abnormal"]) == pytest.approx(want, rel=1e-6)
    assert organ_margins({"liver": e[None]}, specs, PROMPTS, s)["liver"][0] == pytest.approx(want, rel=1e-6)
    assert got["lesion"] == single["lesion"]  # the other findings keep their own scores
    # the decision is "any finding of the organ is called"
    for emb in (_unit([1, 0, 0]), _unit([-1, 0, 0.2]), e):
        sc = finding_scores({"liver": emb}, specs, PROMPTS, s)
        p = finding_scores({"liver": emb}, [FindingSpec("p", "liver", 0.9, [0], [2])], PROMPTS, s)["p"]
        any_called = decide(sc["lesion"], 0.5) or decide(sc["ascites"], 0.7) or decide(p, 0.9)
        assert decide(sc["liver_abnormal"], abn.threshold) == any_called
    # a finding that can never be called gives no reason; with none left the organ is never called
    muted = [FindingSpec("lesion", "liver", NEVER_POSITIVE, [0, 1], [2, 3]),
             FindingSpec("liver_abnormal", "liver", 0.5, [0], [2], score="organ", prompt_threshold=NEVER_POSITIVE)]
    assert finding_scores({"liver": _unit([1, 0, 0])}, muted, PROMPTS, s)["liver_abnormal"] < 1e-6
    # the organ's crop alone counts: ascites called from the spleen does not make the liver abnormal
    spleen_only = finding_scores({"liver": _unit([-1, 0, 0]), "spleen": _unit([1, 0, 0])}, specs, PROMPTS, s)
    assert spleen_only["ascites"] > 0.99 and spleen_only["liver_abnormal"] < 0.5
    # no liver crop: not assessable
    assert "liver_abnormal" not in finding_scores({"spleen": _unit([1, 0, 0])}, specs, PROMPTS, s)
