"""Session-11 measurement (#5, docs/results/model.md): a model on the big realistic split
(bench/experiments/realistic_split.toml), with thresholds from the demo recipe's 96 validation studies and from all
256, pooled and per test source. Not product code; `totalfm train eval` stays the product's evaluation, and this
script calls the same functions on subsets of its splits.

    python bench/experiments/realistic_eval.py (--bundle DIR | --checkpoint CKPT) --pairs var/bigreal/pairs --out X.json
"""
import argparse
import json
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

RECIPE_VAL = ("val0_", "val1_")     # the demo recipe's own groups (study keys are <group>_study_XXXXX)
RECIPE_TEST = ("test0_", "test1_")


def main():
    from trainer.evaluate import cli
    from trainer.evaluate.zeroshot import evaluate, finding_specs, subset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint")
    src.add_argument("--bundle")
    ap.add_argument("--pairs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bootstrap", type=int, default=500, help="resamples for the CIs of the full split")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--splits", help="pickle of the embedded splits: written after embedding, read instead of "
                                     "embedding again when it exists (the crops take minutes to embed)")
    a = ap.parse_args()
    t0 = time.time()
    encode, embed_texts, scale, meta = cli.encoders(a.bundle, a.checkpoint, a.threads)
    cfg = meta["model_config"]
    if a.splits and Path(a.splits).exists():
        with open(a.splits, "rb") as f:
            val, test = pickle.load(f)
    else:
        args = argparse.Namespace(pairs=a.pairs, threads=a.threads, seed=0, synth_val=0, synth_test=0)
        val, test, _ = cli.load_splits(args, cfg["input_shape"], encode, int(cfg["embed_dim"]),
                                       measurements=int(cfg.get("measurements", 0)))
        if a.splits:
            with open(a.splits, "wb") as f:
                pickle.dump((val, test), f)
    specs, prompts = finding_specs(embed_texts, score_rules=cli.score_rules(meta, "positive"))
    supervised = cli.prompt_supervised_findings(meta)
    sources = test.extra["source"]
    v96 = [i for i, s in enumerate(val.studies) if s.startswith(RECIPE_VAL)]
    t64 = [i for i, s in enumerate(test.studies) if s.startswith(RECIPE_TEST)]
    print(f"val {len(val)} (recipe's {len(v96)}), test {len(test)} (recipe's {len(t64)}), "
          f"embedded in {time.time() - t0:.0f} s", flush=True)
    res = {}

    def run(name, vi, ti, boot=0):
        v = subset(val, vi) if vi is not None else val
        t = subset(test, ti) if ti is not None else test
        r = evaluate(v, t, specs, prompts, scale, n_boot=boot, prompt_supervised=supervised)
        m = r["macro"]
        res[name] = {"n_val": len(v), "n_test": len(t), "macro": {k: x for k, x in m.items() if k != "findings_na"},
                     "findings": r["findings"], "organs": {o: {k: x for k, x in d.items() if k != "rules"}
                                                           for o, d in r["organs"].items()}}
        print(f"| {name} | {len(v)} | {len(t)} | {m['finding_auroc']:.3f} ({m['finding_auroc_n']}) | "
              f"{m['organ_f1']:.3f} ({m['organ_f1_n']}) | {m.get('zero_shot_auroc', float('nan')):.3f} |", flush=True)

    print("| split | val | test | finding AUROC (n) | organ F1 (n) | zero-shot AUROC |\n| --- | --- | --- | --- | --- | --- |")
    run("recipe's (val 96, test 64)", v96, t64)
    run("val 96, test 320", v96, None)
    run("val 256, test 320", None, None, a.bootstrap)
    for s in sorted(set(sources)):
        idx = [i for i, x in enumerate(sources) if x == s]
        run(f"val 96, test {s}", v96, idx)
        run(f"val 256, test {s}", None, idx)
    Path(a.out).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
