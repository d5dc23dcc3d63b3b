"""Session-20 diagnostic (#5, docs/results/model.md): how far can calibration alone move the organ-wise F1 of a
model, and is a finding the prompts miss in the encoder's inputs at all? Not product code and not tested.

    python bench/experiments/realistic_eval.py --bundle B --pairs P --out X.json --splits S.pkl   # embeds once
    python bench/experiments/calibration_ceiling.py --bundle B --splits S.pkl --eval X.json \
        [--train-pairs var/demo/pairs --test-pairs P]

Prints, on the embeddings saved by realistic_eval.py (val 256, test 320):
1. organ F1 per organ under the product's calibration (``zeroshot.calibrate_specs`` on val);
2. the same after a JOINT threshold search per organ: coordinate ascent over the thresholds of every finding scored
   in the organ (and its ``<organ>_abnormal`` prompt) for the organ decision's F1, with the product's precision floor
   (``MIN_VAL_PRECISION``), fitted on val: a candidate calibration;
3. the same search fitted on the TEST split itself: a ceiling (a local optimum, so not strictly an upper bound) of
   what any threshold choice could give these embeddings;
4. with ``--train-pairs`` (a recipe's pair dataset with a train split; embedded and measured here, minutes) and
   ``--test-pairs`` (the pairs the splits came from): per finding, a logistic-regression probe fitted on the train
   split's truth, scored on test, once on the organ embedding(s) and once on the organ measurements, next to the
   zero-shot AUROC: is the finding in the encoder's inputs, and does the prompt find it? Needs scikit-learn
   (installed with the trainer's TotalSegmentator dependencies; not a project dependency).
"""
import argparse
import json
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance import ontology  # noqa: E402
from appliance.scoring import NEVER_POSITIVE, prompt_view, score_matrix  # noqa: E402
from trainer.evaluate import cli  # noqa: E402
from trainer.evaluate import metrics as M  # noqa: E402
from trainer.evaluate.zeroshot import (MIN_VAL_PRECISION, calibrate_specs, finding_specs, finding_truth,  # noqa: E402
                                       organ_truth)


def _threshold(f) -> float:
    return f.prompt_threshold if f.score == "organ" else f.threshold


def _with_threshold(f, t: float):
    return replace(f, prompt_threshold=float(t)) if f.score == "organ" else replace(f, threshold=float(t))


def _organ_tables(split, specs, prompts, scale):
    """Per organ with embeddings and at least one positive: (organ, indices of the specs scored in it, their prompt
    scores [N, k] on the organ's crops, organ truth [N]), studies whose organ was not encoded left out."""
    for organ in ontology.ORGAN_NAMES:
        if organ not in split.embeddings:
            continue
        idx = [j for j, f in enumerate(specs) if organ in (f.organs or [f.organ])]
        s = score_matrix({organ: split.embeddings[organ]}, [prompt_view(specs[j]) for j in idx], prompts, scale)
        ok = np.isfinite(s).all(axis=1)
        y = organ_truth(split, organ)[ok]
        if y.any():
            yield organ, idx, s[ok], y


def _organ_confusion(y, s, t) -> tuple[int, int, int]:
    """(TP, FP, FN) of the organ decision: abnormal when any of its findings' scores reaches its threshold."""
    called = (s >= t[None, :]).any(axis=1)
    return int((called & y).sum()), int((called & ~y).sum()), int((~called & y).sum())


def _organ_f1(y, s, t) -> float:
    """The organ decision's F1, or -1 where fewer than ``MIN_VAL_PRECISION`` of its calls are right (the floor)."""
    tp, fp, fn = _organ_confusion(y, s, t)
    if tp + fp and tp < MIN_VAL_PRECISION * (tp + fp):
        return -1.0
    return 2 * tp / max(2 * tp + fp + fn, 1)


def joint_thresholds(split, specs, prompts, scale, rounds: int = 4) -> list:
    """Per organ, coordinate ascent over its findings' thresholds for the organ decision's F1 on ``split``. A finding
    scored in several organs is tuned in each in turn (the last organ's choice stands). Silenced findings
    (``NEVER_POSITIVE``) stay silent."""
    specs = list(specs)
    for _, idx, s, y in list(_organ_tables(split, specs, prompts, scale)):
        t = np.array([_threshold(specs[j]) for j in idx], float)
        best = _organ_f1(y, s, t)
        for _ in range(rounds):
            changed = False
            for k in [k for k in range(len(idx)) if t[k] < NEVER_POSITIVE]:
                for c in [*np.unique(s[:, k]).tolist(), NEVER_POSITIVE]:
                    tt = t.copy()
                    tt[k] = c
                    v = _organ_f1(y, s, tt)
                    if v > best + 1e-12:
                        best, t, changed = v, tt, True
            if not changed:
                break
        for k, j in enumerate(idx):
            specs[j] = _with_threshold(specs[j], t[k])
    return specs


def organ_f1_table(test, specs, prompts, scale, title: str) -> None:
    rows = []
    for organ, idx, s, y in _organ_tables(test, specs, prompts, scale):
        tp, fp, fn = _organ_confusion(y, s, np.array([_threshold(specs[j]) for j in idx]))
        rows.append((organ, 2 * tp / max(2 * tp + fp + fn, 1), tp, fp, fn))
    print(f"\n{title}: organ F1 {np.mean([r[1] for r in rows]):.3f} over {len(rows)} organs")
    print("| organ | F1 | TP | FP | FN |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.3f} | {r[2]} | {r[3]} | {r[4]} |")


def _bank_splits(pairs, split, encode, input_shape, embed_dim, n_measurements):
    """(embedding SplitData, measurement SplitData) of one split of a pair dataset, from one crop bank."""
    from trainer.evaluate.zeroshot import split_from_bank
    from trainer.model import data

    bank = data.from_pairs(pairs, tuple(input_shape), splits=(split,), with_labels=True,
                           measurements=n_measurements, workers=2)
    return (split_from_bank(bank, split, encode, embed_dim),
            split_from_bank(bank, split, lambda x, organ_index, m: m, n_measurements))


def probe_table(train: tuple, test: tuple, zero_shot: dict) -> None:
    """``train`` / ``test``: (embedding SplitData, measurement SplitData) of the same studies."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    findings = list(ontology.FINDINGS)
    ytr, yt = finding_truth(train[0], findings), finding_truth(test[0], findings)

    def probe(tr, te, j, organs):
        xtr = np.concatenate([tr.embeddings[o] for o in organs], axis=1)
        xt = np.concatenate([te.embeddings[o] for o in organs], axis=1)
        oktr, okt = np.isfinite(xtr).all(1), np.isfinite(xt).all(1)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced"))
        return M.auroc(yt[okt, j], clf.fit(xtr[oktr], ytr[oktr, j]).decision_function(xt[okt]))

    rows = []
    for j, f in enumerate(findings):
        zs = (zero_shot.get(f.name) or {}).get("auroc", float("nan"))
        if not np.isfinite(zs) or ytr[:, j].sum() < 2:
            continue
        rows.append((f.name, zs, probe(train[0], test[0], j, f.organs), probe(train[1], test[1], j, f.organs),
                     int(ytr[:, j].sum()), int(yt[:, j].sum())))
    rows.sort(key=lambda r: r[1])
    macro = [np.mean([r[k] for r in rows]) for k in (1, 2, 3)]
    print(f"\nprobes fitted on train, scored on test, macro over {len(rows)} findings: zero-shot {macro[0]:.3f}, "
          f"embedding {macro[1]:.3f}, measurements {macro[2]:.3f}")
    print("| finding | zero-shot | probe: embedding | probe: measurements | train pos | test pos |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.3f} | {r[4]} | {r[5]} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="the bundle whose text prompts and logit scale score the splits")
    src.add_argument("--checkpoint", help="... or a contrastive checkpoint (as realistic_eval.py --checkpoint)")
    ap.add_argument("--splits", required=True, help="pickle written by realistic_eval.py --splits")
    ap.add_argument("--eval", required=True, help="realistic_eval.py's JSON (its zero-shot AUROC per finding)")
    ap.add_argument("--train-pairs", help="pair dataset with a train split: fit the probes there")
    ap.add_argument("--test-pairs", help="the pair dataset the splits were embedded from: score the probes there")
    a = ap.parse_args()
    encode, embed_texts, scale, meta = cli.encoders(a.bundle, a.checkpoint, 2)
    with open(a.splits, "rb") as f:
        val, test = pickle.load(f)
    specs, prompts = finding_specs(embed_texts, score_rules=cli.score_rules(meta, "positive"))
    shipped, _ = calibrate_specs(val, specs, prompts, scale)
    organ_f1_table(test, shipped, prompts, scale, "product calibration (val)")
    organ_f1_table(test, joint_thresholds(val, shipped, prompts, scale), prompts, scale, "joint search on val")
    organ_f1_table(test, joint_thresholds(test, shipped, prompts, scale), prompts, scale,
                   "CEILING: joint search on the test split itself")
    if a.train_pairs and a.test_pairs:
        cfg = meta["model_config"]
        grid = (cfg["input_shape"], int(cfg["embed_dim"]), int(cfg.get("measurements", 0)))
        probe_table(_bank_splits(a.train_pairs, "train", encode, *grid),
                    _bank_splits(a.test_pairs, "test", encode, *grid),
                    json.loads(Path(a.eval).read_text())["val 256, test 320"]["findings"])


if __name__ == "__main__":
    main()
