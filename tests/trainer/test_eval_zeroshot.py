"""trainer.evaluate.zeroshot.evaluate on constructed embeddings: truth rules, val thresholds, n/a, reports."""
import json

import numpy as np
import pytest

from appliance import ontology
from trainer.evaluate.report import comparison_markdown, write_outputs
from trainer.evaluate.zeroshot import SplitData, evaluate, finding_specs, finding_truth


def _text_space(texts):
    """A deterministic 'text tower': each prompt -> unit vector; negatives of a finding point opposite-ish."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(len(texts), 32)).astype(np.float32)


def _split(n, seed, specs, prompts, findings=("hepatic_steatosis", "splenomegaly")):
    rng = np.random.default_rng(seed)
    emb = {o: np.full((n, 32), np.nan, np.float32) for o in ontology.ORGAN_NAMES}
    labels = []
    byname = {f.name: f for f in specs}
    for i in range(n):
        lab = {}
        for organ in ("liver", "spleen", "kidneys"):
            lab[organ] = {"abnormal": False, "findings": []}
            neg_dirs = [prompts[byname[f.name].neg_index].mean(0) for f in specs if f.organ == organ]
            v = np.sum(neg_dirs, axis=0) + rng.normal(0, 0.3, 32)
            emb[organ][i] = v / np.linalg.norm(v)
        for fname in findings:
            f = byname[fname]
            if rng.random() < 0.4:
                lab[f.organ] = {"abnormal": True, "findings": [fname]}
                v = prompts[f.pos_index].mean(0) * 3 + rng.normal(0, 0.3, 32)
                emb[f.organ][i] = v / np.linalg.norm(v)
        labels.append(lab)
    return SplitData([f"s{seed}-{i}" for i in range(n)], emb, labels)


def test_evaluate_separable_and_outputs(tmp_path):
    specs, prompts = finding_specs(_text_space)
    assert len(specs) == len(ontology.FINDINGS) and prompts.shape[1] == 32
    val, test = _split(40, 1, specs, prompts), _split(40, 2, specs, prompts)
    res = evaluate(val, test, specs, prompts, logit_scale=20.0, n_boot=100)
    f = res["findings"]
    assert f["hepatic_steatosis"]["auroc"] > 0.95 and f["splenomegaly"]["auroc"] > 0.95
    assert f["hepatic_steatosis"]["threshold_source"] == "val_max_f1"
    assert f["hepatic_steatosis"]["auroc_ci"][0] <= f["hepatic_steatosis"]["auroc"]
    assert np.isnan(f["renal_cyst"]["auroc"])  # no positives in test -> n/a
    assert "renal_cyst" in res["macro"]["findings_na"]
    assert f["lung_nodule"]["n"] == 0  # lungs never encoded -> not assessable
    assert res["organs"]["liver"]["rules"]["any"]["f1"] > 0.9 and np.isnan(res["organs"]["kidneys"]["f1"])
    assert "lungs" not in res["organs"] or res["organs"]["lungs"]["n"] == 0
    assert res["macro"]["organ_f1_n"] == 2
    paths = write_outputs(res, tmp_path, extra={"checkpoint": "x"})
    data = json.loads(paths["json"].read_text())
    assert data["findings"]["renal_cyst"]["auroc"] is None and "_roc" not in data
    md = paths["markdown"].read_text()
    assert "not a diagnosis" in md and "| hepatic_steatosis |" in md
    assert paths["roc"].stat().st_size > 1000 and (tmp_path / "eval_roc" / "splenomegaly.png").exists()
    # comparison against a worse "baseline"
    rnd = _split(40, 2, specs, prompts)
    for o in rnd.embeddings:
        rnd.embeddings[o] = np.random.default_rng(5).normal(size=rnd.embeddings[o].shape).astype(np.float32)
    base = evaluate(val, rnd, specs, prompts, logit_scale=20.0, n_boot=50)
    text, wins = comparison_markdown(res, base, {"gflops_per_study": 8.9}, {"gflops_per_study": 50.0})
    assert wins["organ_wins"] >= 2 and "whole-volume" in text


def test_finding_truth_abnormal_and_multi_organ():
    specs, _ = finding_specs(_text_space)
    names = [f.name for f in specs]
    split = SplitData(["a"], {}, [{"spleen": {"abnormal": True, "findings": ["ascites"]}}])
    y = finding_truth(split, specs)[0]
    assert y[names.index("ascites")] and y[names.index("spleen_abnormal")]
    assert not y[names.index("liver_abnormal")]


def test_uninformative_validation_scores_never_call_a_finding_positive():
    """Max F1 on scores that do not rank positives first picks the lowest score as threshold (everything positive,
    F1 = 2p/(1+p)); the guard turns that into a threshold no softmax score reaches."""
    from appliance.scoring import decide
    from trainer.evaluate import metrics as M
    from trainer.evaluate.zeroshot import MIN_VAL_AUROC, NEVER_POSITIVE, calibrate
    y = np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0], bool)
    flat = np.full(10, 0.49)
    assert M.best_threshold(y, flat)[0] == 0.49  # what plain max F1 would ship: every study positive
    thr, vf1, src = calibrate(y, flat)
    assert (thr, src) == (NEVER_POSITIVE, "uninformative_on_val") and not decide(1.0, thr)
    inverted = np.where(y, 0.2, 0.8)  # ranks negatives first
    assert calibrate(y, inverted)[2] == "uninformative_on_val"
    good = np.where(y, 0.9, 0.1) + np.linspace(0, 0.01, 10)
    thr, vf1, src = calibrate(y, good)
    assert src == "val_max_f1" and 0.1 < thr <= 0.91 and vf1 == 1.0 and M.auroc(y, good) >= MIN_VAL_AUROC
    assert calibrate(np.zeros(10, bool), good)[2] == "default"  # no validation positives: 0.5, flagged
    # ranked well enough (AUROC 0.70) but every cut calls more negatives than positives: never called
    y4 = np.array([0, 0, 1, 0, 0, 1, 0, 0] + [0] * 4, bool)
    noisy = np.linspace(0.9, 0.1, 12)
    assert M.auroc(y4, noisy) >= MIN_VAL_AUROC
    assert M.best_threshold(y4, noisy)[0] < 0.9  # what max F1 alone would ship
    assert calibrate(y4, noisy)[::2] == (NEVER_POSITIVE, "imprecise_on_val")
    # a positive-prompts-only score has no neutral 0.5: without a validation positive it is never called
    assert calibrate(np.zeros(10, bool), good, "positive")[::2] == (NEVER_POSITIVE, "no_val_positive")


def test_prompt_supervised_findings_are_flagged_and_kept_out_of_the_zero_shot_macro(tmp_path):
    specs, prompts = finding_specs(_text_space)
    val, test = _split(40, 1, specs, prompts), _split(40, 2, specs, prompts)
    res = evaluate(val, test, specs, prompts, logit_scale=20.0, n_boot=20, prompt_supervised=["hepatic_steatosis"])
    f, m = res["findings"], res["macro"]
    assert f["hepatic_steatosis"]["prompt_supervised"] and not f["splenomegaly"]["prompt_supervised"]
    assert m["prompt_supervised_auroc_n"] == 1 and m["zero_shot_auroc_n"] == m["finding_auroc_n"] - 1
    assert np.isclose(m["prompt_supervised_auroc"], f["hepatic_steatosis"]["auroc"])
    md = write_outputs(res, tmp_path, plots=False)["markdown"].read_text()
    assert "| hepatic_steatosis * |" in md and "| splenomegaly |" in md and "zero-shot findings only" in md
    plain = evaluate(val, test, specs, prompts, logit_scale=20.0, n_boot=20)
    assert "zero_shot_auroc" not in plain["macro"]  # nothing anchored: every figure is zero-shot, no split shown


def test_called_organ_rule_is_the_appliance_decision():
    """Primary organ rule: an organ is abnormal exactly when one of its findings, scored from that organ's crop, is
    called positive at the finding's own shipped threshold (``appliance.scoring.decide``; ``<organ>_abnormal`` by
    its own prompts at its prompt threshold); a finding whose threshold is NEVER_POSITIVE never makes its organ
    abnormal. The ``<organ>_abnormal`` finding (score rule "organ") makes exactly that call."""
    from dataclasses import replace

    from appliance.scoring import decide, prompt_view, score_matrix
    from trainer.evaluate.zeroshot import NEVER_POSITIVE, calibrate_specs, organ_scores
    specs, prompts = finding_specs(_text_space)
    assert {f.name for f in specs if f.score == "organ"} == {f"{o}_abnormal" for o in ontology.ORGAN_NAMES}
    val, test = _split(40, 1, specs, prompts), _split(40, 2, specs, prompts)
    res = evaluate(val, test, specs, prompts, logit_scale=20.0, n_boot=10)
    assert res["organ_rule"] == "called" and set(res["organs"]["liver"]["rules"]) == {"called", "any",
                                                                                      "abnormal_prompt"}
    cal, _ = calibrate_specs(val, specs, prompts, 20.0)
    assert {f.name: f.threshold for f in cal} == res["thresholds"]
    for organ in ("liver", "spleen"):
        mine = [prompt_view(f) for f in cal if organ in f.organs]
        s = score_matrix({organ: test.embeddings[organ]}, mine, prompts, 20.0)
        expected = np.array([any(decide(s[i, j], f.threshold) for j, f in enumerate(mine))
                             for i in range(len(test))])
        truth = np.array([lab[organ]["abnormal"] for lab in test.labels])
        conf = res["organs"][organ]["rules"]["called"]["confusion"]
        assert conf["tp"] == int((expected & truth).sum()) and conf["fp"] == int((expected & ~truth).sum())
        assert res["organs"][organ]["threshold_source"] == "finding_thresholds"
        assert res["findings"][f"{organ}_abnormal"]["confusion"] == conf  # the finding IS the organ's call
        assert res["findings"][f"{organ}_abnormal"]["threshold"] == 0.5
    # the liver called abnormal only through its findings: silence them and the organ can no longer be called
    muted = [replace(f, threshold=NEVER_POSITIVE, prompt_threshold=NEVER_POSITIVE) if "liver" in f.organs else f
             for f in cal]
    called = organ_scores(test, muted, prompts, 20.0)["liver"]["called"]
    assert not (called >= 0).any()


def test_organ_abnormal_is_never_called_when_none_of_its_organ_findings_can_be():
    """An organ whose findings (its generic prompt included) are all uninformative on validation: the
    ``<organ>_abnormal`` finding gets NEVER_POSITIVE ("not screened" in the draft), not a 0.5 that can never be met."""
    from trainer.evaluate.zeroshot import NEVER_POSITIVE, calibrate_specs
    specs, prompts = finding_specs(_text_space)
    val = _split(40, 1, specs, prompts)
    kidney = [f.name for f in specs if "kidneys" in f.organs and f.score != "organ"]
    val.embeddings["kidneys"][:] = val.embeddings["kidneys"][0]  # one crop for all: no score ranks anything
    for i, lab in enumerate(val.labels):  # every kidney finding has validation positives
        lab["kidneys"] = {"abnormal": i % 2 == 0, "findings": [kidney[i // 2 % len(kidney)]] if i % 2 == 0 else []}
    cal, src = calibrate_specs(val, specs, prompts, 20.0)
    by = {f.name: f for f in cal}
    assert all(by[n].threshold == NEVER_POSITIVE for n in kidney)
    assert by["kidneys_abnormal"].prompt_threshold == NEVER_POSITIVE
    assert by["kidneys_abnormal"].threshold == NEVER_POSITIVE and src["kidneys_abnormal"][1] == "no_callable_finding"
    assert by["liver_abnormal"].threshold == 0.5 and src["liver_abnormal"][1] == "organ_evidence"


def test_by_source_reports_a_domain_the_pooled_figure_hides(tmp_path):
    """A test split of two sources: one where the embeddings carry the findings, one where they are noise. The pooled
    AUROC sits between them; the per-source figures show which source fails, with the validation thresholds."""
    from trainer.evaluate.zeroshot import evaluate_by_source, subset
    specs, prompts = finding_specs(_text_space)
    val, good = _split(40, 1, specs, prompts), _split(40, 2, specs, prompts)
    bad = _split(40, 3, specs, prompts)
    for o in bad.embeddings:  # the "other patient": same truth, uninformative embeddings
        bad.embeddings[o] = np.random.default_rng(7).normal(size=bad.embeddings[o].shape).astype(np.float32)
    test = SplitData(good.studies + bad.studies, {o: np.concatenate([good.embeddings[o], bad.embeddings[o]])
                                                  for o in good.embeddings}, good.labels + bad.labels)
    sources = ["analytic"] * 40 + ["real-backed"] * 40
    by = evaluate_by_source(val, test, sources, specs, prompts, 20.0)
    pooled = evaluate(val, test, specs, prompts, logit_scale=20.0, n_boot=0)["macro"]["finding_auroc"]
    assert set(by) == {"analytic", "real-backed"} and by["analytic"]["n_studies"] == 40
    good_auc, bad_auc = by["analytic"]["finding_auroc"], by["real-backed"]["finding_auroc"]
    assert good_auc > pooled > bad_auc and good_auc - bad_auc > 0.2, (good_auc, pooled, bad_auc)
    alone = evaluate(val, subset(test, range(40, 80)), specs, prompts, logit_scale=20.0, n_boot=0)["macro"]
    assert by["real-backed"]["finding_auroc"] == alone["finding_auroc"]
    res = evaluate(val, test, specs, prompts, logit_scale=20.0, n_boot=0) | {"by_source": by}
    md = write_outputs(res, tmp_path, plots=False)["markdown"].read_text()
    assert "| real-backed | 40 |" in md and "By test source" in md


def test_generic_prompt_threshold_is_picked_for_the_organ_decision():
    """``<organ>_abnormal``'s own prompts add organ calls on top of the specific findings; their threshold is the one
    that maximises the ORGAN call's validation F1, not the generic finding's own F1 (session 18). Here hepatic
    steatosis finds the abnormal livers; the generic prompt ranks them high too, but also some normal livers,
    so at its own-F1 threshold it adds false organ calls; the threshold picked gives the best organ call there is."""
    from dataclasses import replace

    from appliance.scoring import prompt_view, score_matrix
    from trainer.evaluate import metrics as M
    from trainer.evaluate.zeroshot import NEVER_POSITIVE, calibrate, calibrate_specs, organ_scores, organ_truth
    specs, prompts = finding_specs(_text_space)
    by = {f.name: f for f in specs}
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    steatosis = prompts[by["hepatic_steatosis"].pos_index].mean(0)
    generic = prompts[by["liver_abnormal"].pos_index].mean(0)
    normal = np.sum([prompts[f.neg_index].mean(0) for f in specs if f.organ == "liver"], axis=0)
    rng = np.random.default_rng(5)
    n = 90
    emb = {o: np.full((n, 32), np.nan, np.float32) for o in ontology.ORGAN_NAMES}
    labels = []
    for i in range(n):
        sick, decoy = i % 3 == 0, i % 3 == 1 and i % 2 == 0  # 30 abnormal livers; 15 normal ones look "abnormal"
        v = normal + rng.normal(0, 0.2, 32) + (3 * steatosis + 2 * generic if sick else 0) + \
            (2 * generic if decoy else 0)
        emb["liver"][i] = unit(v)
        labels.append({"liver": {"abnormal": sick, "findings": ["hepatic_steatosis"] if sick else []}})
    val = SplitData([f"v{i}" for i in range(n)], emb, labels)
    cal, src = calibrate_specs(val, specs, prompts, 20.0)
    y = organ_truth(val, "liver")

    def organ_f1(found):
        called = organ_scores(val, found, prompts, 20.0)["liver"]["called"] >= 0
        return M.f1_score(y, called.astype(float), 0.5)

    chosen = {f.name: f for f in cal}["liver_abnormal"]
    own, _, own_src = calibrate(y, score_matrix({"liver": emb["liver"]}, [prompt_view(chosen)], prompts, 20.0)[:, 0],
                                chosen.score)
    assert own_src == "val_max_f1"  # the prompt is informative on its own
    at_own = [replace(f, prompt_threshold=own) if f.name == "liver_abnormal" else f for f in cal]
    assert organ_f1(at_own) < 1.0  # ... but at its own threshold it calls normal livers too
    assert src["liver_abnormal#prompt"][1] == "val_max_organ_f1" and chosen.prompt_threshold != own
    best = organ_f1(cal)
    assert best > organ_f1(at_own) and best == pytest.approx(src["liver_abnormal#prompt"][0])
    # no other prompt threshold (silence, or any validation score) gives the appliance's organ call a better F1
    p = score_matrix({"liver": emb["liver"]}, [prompt_view(chosen)], prompts, 20.0)[:, 0]
    for t in [NEVER_POSITIVE, *np.unique(p)]:
        assert organ_f1([replace(f, prompt_threshold=float(t)) if f.name == "liver_abnormal" else f
                         for f in cal]) <= best + 1e-12
