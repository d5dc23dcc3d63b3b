"""`totalfm export calibrate --bundle DIR --pairs DATASET`: pick a bundle's finding thresholds again, on a pair dataset.

Why: the thresholds decide what the draft calls positive, and they depend on the validation studies they were picked
on and on the rule that picks them (trainer.evaluate.zeroshot.calibrate). A site (or a new rule, as in session 12)
should not need the training checkpoints to re-pick them. This runs the bundle's own graphs the way the appliance
runs them (ONNX Runtime, the stored prompt embeddings, each finding's stored score rule), picks the thresholds on the
dataset's validation split and measures them on its test split, both required: thresholds are not shipped without
their measured effect. The bundle is changed on a copy and swapped in (export.bundle_build.replace_thresholds); it
gets a new id, and its provenance records the old and new values, the data and the metrics.

    totalfm export calibrate --bundle appliance/default_bundle --pairs var/bigreal/pairs [--dry-run]

The dataset needs studies in its val and test splits. build-pairs assigns synthetic studies from their truth.json and
a hospital's own studies by patient (`--holdout`, trainer/pairs/README.md); for the latter the truth is what their
reports say.

AI draft for radiologist review - not a diagnosis.
"""

from __future__ import annotations

import argparse
import json
import time

from appliance.errors import TotalFMError


SAME_THRESHOLD = 1e-6  # thresholds closer than this are the same threshold (no call changes but exact ties)


def _repicked(new: dict, stored: dict, findings) -> tuple[dict, dict]:
    """Re-picked values of the bundle's ``findings`` -> (the values to store, {name: [stored, new]} that changed).
    The same graphs on the same data repick a threshold up to float noise (1e-8 between ONNX Runtime thread counts,
    session 17): that is no change, and the stored value stays, so the bundle is not rewritten for it."""
    values = {k: (stored[k] if k in stored and abs(float(v) - stored[k]) <= SAME_THRESHOLD else float(v))
              for k, v in new.items() if k in findings}
    return values, {k: [stored.get(k), v] for k, v in values.items() if v != stored.get(k)}


def calibrate_bundle(bundle: str, pairs: str, *, threads: int = 2, bootstrap: int = 200, dry_run: bool = False,
                     bundle_id: str | None = None, keep_score_rules: bool = False, log=print) -> dict:
    """-> {"thresholds", "changed", "changed_rules", "macro", "manifest"}; see the module docstring. ``manifest`` is
    the new one, None on a dry run or when no threshold or rule changes. The ``<organ>_abnormal`` findings get this
    software's rule for them ("organ", the organ's evidence; trainer.evaluate.zeroshot.default_rule) unless
    ``keep_score_rules``; the other findings keep their stored rule (it depends on how the model was trained)."""
    from export.bundle_build import replace_thresholds
    from trainer.evaluate import cli as ev
    from appliance import ontology
    from trainer.evaluate.zeroshot import MIN_VAL_AUROC, MIN_VAL_PRECISION, default_rule, evaluate, finding_specs

    t0 = time.time()
    encode, embed_texts, scale, meta = ev.bundle_encoders(bundle, threads)
    old = meta["thresholds"]
    cfg = meta["model_config"]
    args = argparse.Namespace(pairs=pairs, threads=threads, seed=0, synth_val=0, synth_test=0)
    val, test, src = ev.load_splits(args, cfg["input_shape"], encode, int(cfg["embed_dim"]),
                                    measurements=int(cfg.get("measurements", 0)))
    if not len(val) or not len(test):
        raise TotalFMError(f"{pairs}: {len(val)} validation and {len(test)} test studies with truth; calibration "
                           "needs both (thresholds on val, their effect measured on test)")
    rules = ev.score_rules(meta, None)  # the bundle's stored rules
    if not keep_score_rules:
        rules |= {f.name: default_rule(f) for f in ontology.ANY_ABNORMALITY_FINDINGS if f.name in old}
    specs, prompts = finding_specs(embed_texts, score_rules=rules)
    res = evaluate(val, test, specs, prompts, scale, n_boot=bootstrap,
                   prompt_supervised=ev.prompt_supervised_findings(meta))
    thresholds, changed = _repicked(res["thresholds"], old, old)
    prompt_thr, changed_prompt = _repicked(res["prompt_thresholds"], meta.get("prompt_thresholds") or {}, old)
    stored_rules = meta.get("score_rules") or {}
    changed_rules = {f.name: [stored_rules.get(f.name, "pair"), f.score] for f in specs
                     if f.name in old and f.score != stored_rules.get(f.name, "pair")}
    macro = {k: v for k, v in res["macro"].items() if k != "findings_na"}
    log(f"{len(changed)} of {len(old)} thresholds, {len(changed_prompt)} prompt thresholds and {len(changed_rules)} "
        f"score rules change; on {len(test)} test studies: finding AUROC {macro['finding_auroc']:.3f}, organ F1 "
        f"{macro['organ_f1']:.3f}")
    for k, (a, b) in sorted(changed.items()):
        log(f"  {k:<28} {a:.3f} -> {b:.3f} ({res['findings'][k]['threshold_source']})")
    for k, (a, b) in sorted(changed_prompt.items()):
        log(f"  {k:<28} prompt {'-' if a is None else f'{a:.3f}'} -> {b:.3f} "
            f"({res['findings'][k]['prompt_threshold_source']})")
    for k, (a, b) in sorted(changed_rules.items()):
        log(f"  {k:<28} rule {a} -> {b}")
    out = {"thresholds": thresholds, "changed": changed, "changed_rules": changed_rules,
           "changed_prompt": changed_prompt, "macro": macro, "manifest": None}
    if dry_run or not (changed or changed_rules or changed_prompt):  # no call would change: the bundle stays
        return out
    calibration = {
        "data": src, "n_val": len(val), "n_test": len(test), "seconds": round(time.time() - t0, 1),
        "rule": f"max F1 on validation among thresholds with precision >= {MIN_VAL_PRECISION}; never positive when "
                f"validation AUROC < {MIN_VAL_AUROC} or no threshold reaches that precision; a finding scored by "
                "rule 'organ' (its organ's evidence) is called at 0.5, when one of the organ's findings is called; "
                "its own prompt's threshold is then picked for that organ call's validation F1",
        "threshold_source": {k: res["findings"][k]["threshold_source"] for k in thresholds},
        "prompt_threshold_source": {k: res["findings"][k]["prompt_threshold_source"] for k in prompt_thr},
    }
    metrics = {"macro": res["macro"], "organ_rule": res["organ_rule"], "organ_thresholds": res["organ_thresholds"],
               "data": src}
    out["manifest"] = replace_thresholds(bundle, thresholds, calibration=calibration, metrics=metrics,
                                         score_rules={f.name: f.score for f in specs if f.name in old},
                                         prompt_thresholds=prompt_thr, bundle_id=bundle_id, log=log)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="totalfm export calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, help="bundle folder whose thresholds are re-picked (changed in place)")
    p.add_argument("--pairs", required=True, help="pair dataset with val and test studies (train build-pairs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=200, help="resamples for the CIs stored with the metrics")
    p.add_argument("--bundle-id", help="the new bundle id (default: the old one + '-cal-' + a hash of the thresholds)")
    p.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    p.add_argument("--keep-score-rules", action="store_true",
                   help="keep the bundle's stored rule for the <organ>_abnormal findings (default: this software's "
                        "rule, the organ's evidence)")
    a = p.parse_args(argv)
    r = calibrate_bundle(a.bundle, a.pairs, threads=a.threads, bootstrap=a.bootstrap, dry_run=a.dry_run,
                         bundle_id=a.bundle_id, keep_score_rules=a.keep_score_rules)
    print(json.dumps({"bundle": a.bundle, "bundle_id": (r["manifest"] or {}).get("bundle_id"),
                      "dry_run": a.dry_run, "changed": len(r["changed"]), "changed_rules": len(r["changed_rules"]),
                      "changed_prompt": len(r["changed_prompt"]),
                      "finding_auroc": r["macro"]["finding_auroc"], "organ_f1": r["macro"]["organ_f1"]}, indent=2))
    return 0
