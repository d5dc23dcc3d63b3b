"""Zero-shot evaluation of an organ encoder + text tower (or the whole-volume baseline) on held-out studies.

Scores come from ``appliance.scoring`` - the very functions the appliance runs - so thresholds saved here mean the
same thing in production. Decisions (documented, also printed in every report):

- **Finding truth** (per study): a catalogue finding is present when truth.json (via ``PairDataset.organ_labels``)
  lists it in any organ; ``<organ>_abnormal`` is present when that organ is abnormal. A study enters a finding's
  AUROC only if at least one of the finding's organs was encoded (otherwise the finding is "not assessable").
- **Finding score**: ``appliance.scoring.score_matrix`` (prompt-ensemble logits, 2-way softmax, max over organs).
  ``<organ>_abnormal`` (score rule "organ" since session 17, ``default_rule``): the organ's ``called`` evidence
  below as a probability, called at 0.5; its own prompts count as one of the organ's findings, at a threshold of
  their own (``prompt_threshold``, picked first: ``calibrate_specs``; since session 18 for the organ decision's F1,
  ``_prompt_threshold_for_organ``).
- **Organ-wise lesion classification** (organ abnormal or not): the organ's score is the MAXIMUM over every finding
  scored in that organ (its ``<organ>_abnormal`` finding and each catalogue finding listing the organ), each computed
  from THIS organ's crop only. Why: the generic "abnormal liver" prompt alone is weak for findings the text tower has
  seen under their specific names; any specific finding firing should make the organ abnormal. Three rules, all in the
  JSON (``organs[o]["rules"]``), one of them primary (``--organ-rule``):
  - ``called`` (primary since session 8): the organ is abnormal when at least one of its findings is called positive
    at that finding's own validation threshold - exactly what the appliance's draft shows, which has no organ
    threshold. Score = max over the organ's findings of ``logit(score) - logit(threshold)`` (decision at 0); findings
    whose threshold is ``NEVER_POSITIVE`` never fire in the appliance and are left out (no such finding: the organ is
    never called, its score a constant).
  - ``any``: the maximum raw score with a separate organ threshold picked on validation (sessions 1-7's primary).
  - ``abnormal_prompt``: the ``<organ>_abnormal`` prompt alone, with its own organ threshold.
  Organs whose crop was not encoded in a study are not assessable there (not counted as negatives).
- **Thresholds**: picked on the VALIDATION split by max F1 (``metrics.best_threshold``), per finding and per organ,
  then applied unchanged on the test split. Guard: when the validation scores do not rank the positives above the
  negatives (validation AUROC < ``MIN_VAL_AUROC``), max F1 degenerates into "call everything positive" (F1 = 2p/(1+p)
  beats any split of an uninformative score), so the threshold becomes ``NEVER_POSITIVE`` (``threshold_source:
  "uninformative_on_val"``): a finding the model cannot separate is never put in front of a radiologist as positive.
  Second guard (session 12): max F1 is taken only over the thresholds at which at least ``MIN_VAL_PRECISION`` (half)
  of the validation calls are right; a finding that never gets there is never called (``"imprecise_on_val"``). Why:
  at a moderate AUROC and a common finding, max F1 sits at a low threshold that calls far more studies than are
  positive (on the 320-study realistic test, ``aorta_abnormal`` at AUROC 0.59 called 126 studies for 67 positives,
  atherosclerosis 123 for 55), and the organ rule ORs those calls, so the organ F1 drowned in false calls
  (aorta: 157 false, 55 true). With the floor the shipped encoder's organ F1 on that split rose 0.583 -> 0.650, on
  held-out patient B 0.330 -> 0.554, at a finding F1 cost of 0.530 -> 0.497 (docs/results/model.md, session 12).
  A finding without validation positives keeps 0.5 (flagged ``threshold_source: "default"``); one scored by its
  positive prompts alone (score rule "positive", session 9) has no neutral 0.5 and is never called instead
  (``"no_val_positive"``). Tried in session 8 and
  not kept: the score only 5 % of validation negatives reach. On the realistic split it cut the stomach's false
  positives (24 -> 2 of 63) but added more elsewhere (spleen 1 -> 14): the validation split has no real-backed study,
  and patient B's crops score higher than the phantoms' (``called`` macro F1 0.405 -> 0.341).
- **Uncertainty**: percentile bootstrap over test studies (1000 resamples, 95 %); AUROC is "n/a" when the test split
  has no positive (or no negative) for a finding.
- **Macro figures**: mean over the organs / findings for which the metric is defined on the test split.

AI draft for radiologist review - not a diagnosis.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from appliance import ontology
from appliance.bundle import FindingSpec
from appliance.scoring import (DISCLAIMER, NEVER_CALLED, NEVER_POSITIVE, ORGAN_EVIDENCE_THRESHOLD,  # noqa: F401
                               organ_margins, prompt_view, score_matrix)  # (NEVER_*: re-exported)
from trainer.evaluate import metrics as M


@dataclass
class SplitData:
    """Per-study organ embeddings of one split. ``embeddings[organ]`` is [N,E] float32 with NaN rows where the organ
    was not encoded; ``labels[i]`` = {organ: {"abnormal": bool, "findings": [names]}} (evaluation truth)."""
    studies: list[str]
    embeddings: dict[str, np.ndarray]
    labels: list[dict]
    extra: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.studies)


def default_rule(finding) -> str:
    """The score rule of a finding the caller gives none for: "organ" for ``<organ>_abnormal`` (its organ's evidence,
    session 17), "pair" for the rest."""
    return "organ" if getattr(finding, "any_abnormality", False) else "pair"


def finding_specs(embed_texts: Callable[[list[str]], np.ndarray], findings: Sequence = None,
                  thresholds: dict | None = None, score_rules: dict | None = None
                  ) -> tuple[list[FindingSpec], np.ndarray]:
    """Ontology findings -> (FindingSpec list with pos/neg indices into the prompt table, prompt embeddings [P,E]).
    ``embed_texts``: list[str] -> [P,E] L2-normalised (torch text tower in the trainer, ONNX in the appliance).
    ``score_rules``: finding -> ``appliance.scoring.SCORE_RULES`` entry (default: ``default_rule``)."""
    findings = list(findings if findings is not None else ontology.FINDINGS)
    prompts: list[str] = []
    index: dict[str, int] = {}

    def idx(p):
        if p not in index:
            index[p] = len(prompts)
            prompts.append(p)
        return index[p]

    specs = []
    for f in findings:
        pos = [idx(p) for p in f.positive_prompts]
        neg = [idx(p) for p in f.negative_prompts]
        specs.append(FindingSpec(name=f.name, organ=f.organs[0], threshold=float((thresholds or {}).get(f.name, 0.5)),
                                 pos_index=pos, neg_index=neg, positive_prompts=list(f.positive_prompts),
                                 negative_prompts=list(f.negative_prompts), organs=list(f.organs),
                                 score=(score_rules or {}).get(f.name, default_rule(f))))
    emb = np.asarray(embed_texts(prompts), dtype=np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return specs, emb


def finding_truth(split: SplitData, specs: Sequence[FindingSpec]) -> np.ndarray:
    """[N, F] bool."""
    any_abn = {f"{o}_abnormal": o for o in ontology.ORGAN_NAMES}
    y = np.zeros((len(split), len(specs)), dtype=bool)
    for i, lab in enumerate(split.labels):
        present = set()
        for organ, d in (lab or {}).items():
            present.update(d.get("findings") or [])
            if d.get("abnormal"):
                present.add(f"{organ}_abnormal")
        for j, f in enumerate(specs):
            y[i, j] = f.name in present or (f.name in any_abn and f"{any_abn[f.name]}_abnormal" in present)
    return y


ORGAN_RULES = ("called", "any", "abnormal_prompt")


def organ_scores(split: SplitData, specs: Sequence[FindingSpec], prompts: np.ndarray, logit_scale: float
                 ) -> dict[str, dict[str, np.ndarray]]:
    """{organ: {rule: [N]}} scores from that organ's crop only (NaN = not encoded), for each of ``ORGAN_RULES``
    (see the module docstring). ``specs`` carry their calibrated thresholds (``called`` needs them; it is
    ``appliance.scoring.organ_margins``, the same evidence the "organ" score rule shows in the draft)."""
    called = organ_margins(split.embeddings, specs, prompts, logit_scale)
    out = {}
    for organ, emb in split.embeddings.items():
        mine = [prompt_view(f) for f in specs if organ in (f.organs or [f.organ])]
        if not mine:
            continue
        s = score_matrix({organ: emb}, mine, prompts, logit_scale)
        names = [f.name for f in mine]
        encoded = np.isfinite(s).any(axis=1)
        any_s = np.where(encoded, np.nanmax(np.where(np.isfinite(s), s, -np.inf), axis=1), np.nan)
        ab = s[:, names.index(f"{organ}_abnormal")] if f"{organ}_abnormal" in names else any_s
        out[organ] = {"called": called[organ], "any": any_s, "abnormal_prompt": ab}
    return out


def organ_truth(split: SplitData, organ: str) -> np.ndarray:
    return np.array([bool((lab or {}).get(organ, {}).get("abnormal", False)) for lab in split.labels])


MIN_VAL_AUROC = 0.6
MIN_VAL_PRECISION = 0.5  # a finding is called only at a threshold where most of its validation calls were right


def calibrate(y_val, s_val, rule: str = "pair") -> tuple[float, float, str]:
    """Validation labels/scores -> (threshold, validation F1 at it, threshold_source); see the module docstring.
    ``rule``: the finding's score rule. Without a validation positive a "pair" score keeps 0.5 (positive and negative
    prompts equally close); a "positive" score has no such midpoint (it sits near 0.9 for every crop), so the finding
    is never called (``NEVER_POSITIVE``, source "no_val_positive")."""
    # drops non-finite scores; (0.5, NaN) without positives or scores, (NaN, 0.0) when no cut reaches the precision
    thr, vf1 = M.best_threshold(y_val, s_val, min_precision=MIN_VAL_PRECISION)
    if not np.isfinite(vf1):
        return (NEVER_POSITIVE, vf1, "no_val_positive") if rule == "positive" else (thr, vf1, "default")
    auc = M.auroc(y_val, s_val)
    if not (np.isfinite(auc) and auc >= MIN_VAL_AUROC):
        return NEVER_POSITIVE, 0.0, "uninformative_on_val"
    if not np.isfinite(thr):
        return NEVER_POSITIVE, 0.0, "imprecise_on_val"
    return thr, vf1, "val_max_f1"


def calibrate_specs(val: SplitData, findings: Sequence[FindingSpec], prompt_embeddings: np.ndarray,
                    logit_scale: float, y_val: np.ndarray | None = None
                    ) -> tuple[list[FindingSpec], dict[str, tuple[float, str]]]:
    """Every finding's thresholds picked on ``val`` -> (the specs with them, {name: (validation F1, source)}).

    Two passes, because an "organ" finding's score is built from the others' calibrated margins: first each
    finding's own prompt score is calibrated (``calibrate``; an "organ" finding's result becomes its
    ``prompt_threshold``, recorded under ``name + "#prompt"``), then the "organ" findings get threshold
    ``ORGAN_EVIDENCE_THRESHOLD`` - or ``NEVER_POSITIVE`` (source "no_callable_finding") when none of their organ's
    findings can be called, so the draft says "not screened" rather than implying "normal"."""
    findings = list(findings)
    y_val = finding_truth(val, findings) if y_val is None else y_val
    views = [prompt_view(f) for f in findings]
    s_val = score_matrix(val.embeddings, views, prompt_embeddings, logit_scale) if len(val) else \
        np.full((0, len(findings)), np.nan)
    specs, cal = [], {}
    for j, (f, v) in enumerate(zip(findings, views)):
        thr, vf1, src = calibrate(y_val[:, j], s_val[:, j], v.score)
        if f.score == "organ":
            specs.append(replace(f, prompt_threshold=float(thr)))
            cal[f.name + "#prompt"] = (vf1, src)
        else:
            specs.append(replace(f, threshold=float(thr)))
            cal[f.name] = (vf1, src)
    for j, f in enumerate(specs):
        if f.score == "organ" and f.prompt_threshold < NEVER_POSITIVE and len(val):
            thr, vf1 = _prompt_threshold_for_organ(val, specs, f, prompt_embeddings, logit_scale)
            if thr != f.prompt_threshold:
                specs[j] = replace(f, prompt_threshold=thr)
                cal[f.name + "#prompt"] = (vf1, "val_max_organ_f1")
    callable_in = {o for f in specs for o in (f.organs or [f.organ])
                   if (f.prompt_threshold if f.score == "organ" else f.threshold) < NEVER_POSITIVE}
    for j, f in enumerate(specs):
        if f.score == "organ":
            ok = f.organ in callable_in
            specs[j] = replace(f, threshold=ORGAN_EVIDENCE_THRESHOLD if ok else NEVER_POSITIVE)
            cal[f.name] = (float("nan"), "organ_evidence" if ok else "no_callable_finding")
    return specs, cal


def _prompt_threshold_for_organ(val: SplitData, specs: Sequence[FindingSpec], f: FindingSpec,
                                prompt_embeddings: np.ndarray, logit_scale: float) -> tuple[float, float]:
    """The ``prompt_threshold`` of "organ" finding ``f`` that maximises the ORGAN decision's F1 on ``val`` (organ
    abnormal <=> any of its findings called), the organ's other findings at their thresholds -> (threshold, that F1).
    Why (session 18): under the organ rule the generic prompt's only job is to add organ calls that no specific
    finding makes, so its threshold is picked for that decision, not for the generic finding's own F1 (which
    ignores that the specific findings already call most of its positives). Candidates: every validation score, and
    ``NEVER_POSITIVE`` (the prompt adds nothing); as for a finding, only those at which at least
    ``MIN_VAL_PRECISION`` of the organ's validation calls are right; a tie keeps the threshold of the prompt's own
    F1. Only for a prompt that its own calibration found informative (a silenced prompt stays silent)."""
    emb = val.embeddings.get(f.organ)
    if emb is None:
        return f.prompt_threshold, float("nan")
    y = organ_truth(val, f.organ)
    others = [s for s in specs if f.organ in (s.organs or [s.organ]) and s.name != f.name]
    rest = organ_margins({f.organ: emb}, others, prompt_embeddings, logit_scale)[f.organ] if others else \
        np.where(np.isfinite(emb).any(axis=1), NEVER_CALLED, np.nan)
    p = score_matrix({f.organ: emb}, [prompt_view(f)], prompt_embeddings, logit_scale)[:, 0]
    ok = np.isfinite(p) & np.isfinite(rest)
    y, p, by_rest = y[ok], p[ok], rest[ok] >= 0

    def organ_f1(t):
        called = by_rest | (p >= t)
        if called.any() and (called & y).sum() < MIN_VAL_PRECISION * called.sum():
            return -1.0
        f1 = M.f1_score(y, called.astype(np.float64), 0.5)
        return f1 if np.isfinite(f1) else 0.0

    best_t, best = f.prompt_threshold, organ_f1(f.prompt_threshold)
    for t in [NEVER_POSITIVE, *np.unique(p)]:
        v = organ_f1(float(t))
        if v > best + 1e-12:
            best_t, best = float(t), v
    return best_t, best


def _fmt_ci(ci: dict) -> list:
    return [ci["lo"], ci["hi"]]


def evaluate(val: SplitData, test: SplitData, findings: Sequence[FindingSpec], prompt_embeddings: np.ndarray,
             logit_scale: float, *, n_boot: int = 1000, seed: int = 0, organ_rule: str = "called",
             prompt_supervised: Sequence[str] = ()) -> dict:
    """Thresholds on ``val``, metrics on ``test``. Returns a JSON-able dict (+ "_roc" curves for plotting).

    ``prompt_supervised``: findings whose prompts the model was trained against (the contrastive ``PromptAnchor``);
    they are flagged per finding and kept out of the zero-shot macro."""
    supervised = set(prompt_supervised)
    y_val, y_test = finding_truth(val, findings), finding_truth(test, findings)
    specs, cal = calibrate_specs(val, findings, prompt_embeddings, logit_scale, y_val)
    s_val = score_matrix(val.embeddings, specs, prompt_embeddings, logit_scale) if len(val) else \
        np.full((0, len(specs)), np.nan)
    s_test = score_matrix(test.embeddings, specs, prompt_embeddings, logit_scale)
    s_test_prompt = score_matrix(test.embeddings, [prompt_view(f) for f in specs], prompt_embeddings, logit_scale)

    res: dict = {"disclaimer": DISCLAIMER, "n_studies": {"val": len(val), "test": len(test)},
                 "logit_scale": float(logit_scale), "organ_rule": organ_rule, "findings": {}, "organs": {},
                 "thresholds": {}, "prompt_thresholds": {}, "organ_thresholds": {}, "_roc": {}}
    catalogue = {f.name for f in ontology.CATEGORY_FINDINGS}
    for j, f in enumerate(specs):
        thr, (vf1, src) = f.threshold, cal[f.name]
        if f.score == "organ":  # the organ's evidence is called at 0.5; its F1 on val is measured, not fitted
            yv, sv = y_val[:, j], s_val[:, j]
            vf1 = M.f1_score(yv, sv, thr) if yv[np.isfinite(sv)].any() else float("nan")
        yt, st = y_test[:, j], s_test[:, j]
        ok = np.isfinite(st)
        yt, st = yt[ok], st[ok]
        n_pos, n = int(yt.sum()), int(len(yt))
        auc = M.auroc(yt, st)
        ci = M.bootstrap_ci(M.auroc, yt, st, n=n_boot, seed=seed + j) if np.isfinite(auc) else \
            {"lo": float("nan"), "hi": float("nan")}
        conf = M.confusion(yt, st, thr)
        res["findings"][f.name] = {
            "organ": f.organ, "organs": list(f.organs or [f.organ]), "catalogue": f.name in catalogue,
            "prompt_supervised": f.name in supervised, "score": f.score,
            "auroc": auc, "auroc_ci": _fmt_ci(ci), "n_pos": n_pos, "n": n, "n_val_pos": int(y_val[:, j].sum()),
            "threshold": thr, "threshold_source": src, "val_f1": vf1, "f1": M.f1_from(conf), "confusion": conf}
        if f.score == "organ":  # what its own prompt pair alone would have scored, for the record
            okp = np.isfinite(s_test_prompt[:, j])
            res["findings"][f.name] |= {"prompt_threshold": f.prompt_threshold,
                                        "prompt_threshold_source": cal[f.name + "#prompt"][1],
                                        "prompt_auroc": M.auroc(y_test[okp, j], s_test_prompt[okp, j])}
            res["prompt_thresholds"][f.name] = f.prompt_threshold
        res["thresholds"][f.name] = thr
        if np.isfinite(auc):
            fpr, tpr, _ = M.roc_curve(yt, st)
            res["_roc"][f.name] = (fpr, tpr, auc)

    ov = organ_scores(val, specs, prompt_embeddings, logit_scale) if len(val) else {}
    ot = organ_scores(test, specs, prompt_embeddings, logit_scale)
    for k, organ in enumerate(ontology.ORGAN_NAMES):
        if organ not in ot:
            continue
        row = {}
        for rule in ORGAN_RULES:
            sv = ov.get(organ, {}).get(rule, np.array([]))
            if rule == "called":  # the findings' own thresholds decide; no organ threshold is fitted
                thr, src = 0.0, "finding_thresholds"
                yv = organ_truth(val, organ)  # f1_score drops the studies whose organ was not encoded (NaN)
                vf1 = M.f1_score(yv, sv, thr) if len(sv) and yv[np.isfinite(sv)].any() else float("nan")
            elif len(sv):
                thr, vf1, src = calibrate(organ_truth(val, organ), sv)
            else:
                thr, vf1, src = 0.5, float("nan"), "default"
            st = ot[organ][rule]
            ok = np.isfinite(st)
            yt, st = organ_truth(test, organ)[ok], st[ok]
            conf = M.confusion(yt, st, thr)
            f1 = M.f1_from(conf)
            if int(yt.sum()) == 0:
                f1 = float("nan")  # F1 undefined without positives (a correct all-negative call is not "F1 = 0")
            thr_local = thr
            ci = M.bootstrap_ci(lambda a, b: M.f1_score(a, b, thr_local) if a.any() else float("nan"), yt, st,
                                n=n_boot, seed=seed + 1000 + k) if np.isfinite(f1) else {"lo": float("nan"),
                                                                                          "hi": float("nan")}
            row[rule] = {"f1": f1, "f1_ci": _fmt_ci(ci), "threshold": thr,
                         "threshold_source": src, "val_f1": vf1,
                         "auroc": M.auroc(yt, st), "n_pos": int(yt.sum()), "n": int(len(yt)), "confusion": conf}
        res["organs"][organ] = {**row[organ_rule], "rules": row}
        res["organ_thresholds"][organ] = row[organ_rule]["threshold"]

    fa = [v["auroc"] for v in res["findings"].values()]
    res["macro"] = {
        "organ_f1": M.macro(v["f1"] for v in res["organs"].values()),
        "organ_f1_n": sum(np.isfinite(v["f1"]) for v in res["organs"].values()),
        "organ_f1_by_rule": {rule: M.macro(v["rules"][rule]["f1"] for v in res["organs"].values())
                             for rule in ORGAN_RULES},
        "finding_auroc": M.macro(fa),
        "finding_auroc_n": int(sum(np.isfinite(a) for a in fa)),
        "catalogue_auroc": M.macro(v["auroc"] for v in res["findings"].values() if v["catalogue"]),
        "catalogue_auroc_n": int(sum(np.isfinite(v["auroc"]) for v in res["findings"].values() if v["catalogue"])),
        "findings_na": sorted(k for k, v in res["findings"].items() if not np.isfinite(v["auroc"])),
    }
    if supervised:  # the honest zero-shot figure: only findings whose prompts were never trained against
        zs = [v["auroc"] for v in res["findings"].values() if not v["prompt_supervised"]]
        ps = [v["auroc"] for v in res["findings"].values() if v["prompt_supervised"]]
        res["macro"] |= {"zero_shot_auroc": M.macro(zs), "zero_shot_auroc_n": int(sum(np.isfinite(a) for a in zs)),
                         "prompt_supervised_auroc": M.macro(ps),
                         "prompt_supervised_auroc_n": int(sum(np.isfinite(a) for a in ps))}
    return res


# ------------------------------------------------------------------------------------------------ embeddings
def subset(split: SplitData, idx: Sequence[int]) -> SplitData:
    idx = list(idx)
    return SplitData([split.studies[i] for i in idx], {o: e[idx] for o, e in split.embeddings.items()},
                     [split.labels[i] for i in idx])


def evaluate_by_source(val: SplitData, test: SplitData, sources: Sequence[str], findings: Sequence[FindingSpec],
                       prompt_embeddings: np.ndarray, logit_scale: float, **kw) -> dict:
    """The macro figures of each test source apart (``sources[i]``: where test study i comes from, e.g. analytic
    phantoms or a real-backed patient), with the same validation thresholds and no bootstrap. Why: the pooled figure
    hides a domain gap; session 10's rerun scored 0.813 on the phantoms and 0.613 on the held-out patient, 0.786
    pooled."""
    out = {}
    for src in sorted(set(sources)):
        idx = [i for i, s in enumerate(sources) if s == src]
        r = evaluate(val, subset(test, idx), findings, prompt_embeddings, logit_scale, **{**kw, "n_boot": 0})
        out[src] = {"n_studies": len(idx), **{k: v for k, v in r["macro"].items() if k != "findings_na"}}
    return out


def split_from_bank(bank, split: str, encode: Callable[..., np.ndarray], embed_dim: int,
                    batch: int = 32) -> SplitData:
    """CropBank (``trainer.model.data``) rows of one split -> SplitData. ``encode(crops [B,1,d,h,w] float32,
    organ_index [B] int64[, measurements [B,K] float32]) -> [B,E]`` (measurements when the bank has them). Labels
    are per crop in the bank; merged per study."""
    idx = [i for i, s in enumerate(bank.split) if s == split]
    studies = sorted({bank.study[i] for i in idx})
    pos = {s: k for k, s in enumerate(studies)}
    emb = {o: np.full((len(studies), embed_dim), np.nan, np.float32) for o in ontology.ORGAN_NAMES}
    labels: list[dict] = [{} for _ in studies]
    for b in range(0, len(idx), batch):
        chunk = idx[b:b + batch]
        x = np.stack([bank.x[i].astype(np.float32) for i in chunk])
        oi = np.array([bank.organ[i] for i in chunk], dtype=np.int64)
        if getattr(bank, "measurements", False):
            e = np.asarray(encode(x, oi, np.stack([bank.m[i] for i in chunk])), dtype=np.float32)
        else:
            e = np.asarray(encode(x, oi), dtype=np.float32)
        for i, v in zip(chunk, e):
            organ = ontology.ORGAN_NAMES[bank.organ[i]]
            emb[organ][pos[bank.study[i]]] = v
            if bank.labels[i]:
                labels[pos[bank.study[i]]][organ] = dict(bank.labels[i])
    return SplitData(studies, emb, labels)


def attach_truth(split: SplitData, truth_by_study: dict[str, dict]) -> SplitData:
    """Replace/extend labels with full per-study truth ({organ: {...}} for every organ, incl. organs not cropped)."""
    for i, s in enumerate(split.studies):
        if s in truth_by_study:
            split.labels[i] = {**truth_by_study[s], **{k: v for k, v in split.labels[i].items()
                                                        if k not in truth_by_study[s]}}
    return split
