"""Report writer: every true finding stated positively, no absent finding stated positively (per-sentence truth and
a text check, over 200 seeds); sentences are exact substrings of the text; train and held-out phrasings disjoint."""

from __future__ import annotations

import re

import numpy as np
import pytest

from appliance.ontology import CATEGORY_FINDINGS, ORGAN_NAMES
from trainer.synth.phantom import PHASES
from trainer.synth.plan import sample_findings
from trainer.synth.report import LEXICON, NEGATION_CUE, template_set, write_report
from trainer.synth.study import generate_study

NAMES = [f.name for f in CATEGORY_FINDINGS]
ORGAN_OF = {f.name: f.organs for f in CATEGORY_FINDINGS}


def _truth(seed: int) -> dict:
    """A random truth (as generate_study would record it) without rendering a phantom: cheap for 200 seeds."""
    rng = np.random.default_rng(seed)
    sex = str(rng.choice(["male", "female"]))
    names = sample_findings(rng, age=int(rng.integers(25, 90)), sex=sex, normal_fraction=0.2)
    recs = []
    for n in names:
        recs.append({"finding": n, "organ": str(rng.choice(ORGAN_OF[n])), "inserted": True,
                     "size_mm": float(rng.uniform(3, 60)), "severity": str(rng.choice(["mild", "moderate", "severe"])),
                     "laterality": str(rng.choice(["left", "right", "bilateral"])) if n in (
                         "renal_cyst", "kidney_stone", "lung_nodule", "pleural_effusion", "adrenal_nodule") else None})
    vols = {o: (0.0 if (o == "prostate" and sex == "female") or (o == "lungs" and rng.random() < 0.2) else 100.0)
            for o in ORGAN_NAMES}
    return {"findings": recs, "phase": str(rng.choice(PHASES)), "sex": sex, "organ_volumes_ml": vols}


def _check(truth: dict, rep) -> None:
    present = {r["finding"] for r in truth["findings"]}
    sents = rep.sentences
    # sentences appear verbatim and in order in the text
    pos = 0
    for s in sents:
        i = rep.text.find(s["text"], pos)
        assert i >= 0, s["text"]
        pos = i + len(s["text"])
        assert s["polarity"] in ("positive", "negated", "normal", "not_a_finding")
        assert s["organ"] is None or s["organ"] in ORGAN_NAMES
    # per-sentence truth
    stated = {s["finding"] for s in sents if s["polarity"] == "positive"}
    assert stated == present, (stated, present)
    assert all(s["finding"] not in present for s in sents if s["polarity"] == "negated")
    organs_with_findings = {r["organ"] for r in truth["findings"]}
    assert all(s["organ"] not in organs_with_findings for s in sents if s["polarity"] == "normal")
    # text check, independent of the labels: keywords of each finding, negation cues
    for name in NAMES:
        kw = re.compile(LEXICON[name][2], re.I)
        hits = [s["text"] for s in sents if kw.search(s["text"])]
        if name in present:
            assert any(not NEGATION_CUE.search(t) for t in hits), (name, hits)
        else:
            assert all(NEGATION_CUE.search(t) for t in hits), (name, hits)
    tech = [s for s in sents if s["section"] == "technique" and s["phase"]]
    assert tech and tech[0]["phase"] == truth["phase"]


@pytest.mark.parametrize("phrasing", ["train", "heldout"])
def test_reports_state_exactly_the_true_findings_over_200_seeds(phrasing):
    n_negated = n_hedged = n_impr_only = 0
    for seed in range(200):
        truth = _truth(seed)
        rep = write_report(truth, np.random.default_rng(seed + 10_000), phrasing=phrasing)
        _check(truth, rep)
        n_negated += sum(s["polarity"] == "negated" for s in rep.sentences)
        n_hedged += sum(bool(s.get("hedged")) for s in rep.sentences)
        f_findings = {s["finding"] for s in rep.sentences if s["section"] == "findings" and s["polarity"] == "positive"}
        n_impr_only += len({r["finding"] for r in truth["findings"]} - f_findings)
    # the variety the issue asks for really occurs
    assert n_negated > 100 and n_hedged > 5 and n_impr_only > 5


def test_report_of_a_generated_study_matches_its_truth():
    s = generate_study("analytic", 4, 0, shape=(48, 64, 64), findings=["splenomegaly", "ascites", "kidney_stone"])
    _check(s.truth, s.report)
    assert s.report.text.startswith("TECHNIQUE:") and "\nIMPRESSION:\n" in s.report.text


def test_heldout_phrasing_shares_no_sentence_template_with_train():
    train, held = template_set("train"), template_set("heldout")
    assert train and held and not (train & held)
    # and in practice: no generated sentence (numbers masked) of one set occurs in the other
    def skeletons(phrasing):
        out = set()
        for seed in range(60):
            rep = write_report(_truth(seed), np.random.default_rng(seed), phrasing=phrasing)
            out |= {re.sub(r"\d+(\.\d+)?", "#", s["text"]) for s in rep.sentences}
        return out
    assert not (skeletons("train") & skeletons("heldout"))


def test_unknown_phrasing_is_refused():
    with pytest.raises(ValueError, match="heldout"):
        write_report(_truth(0), np.random.default_rng(0), phrasing="test")
