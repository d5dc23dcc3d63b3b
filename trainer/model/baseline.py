"""Whole-volume CLIP baseline (CT-CLIP style): ONE 3D ViT over the whole CT resampled to a fixed grid, the same text
tower (``trainer.model.text_tower.TextTower``, all-MiniLM-L6-v2, BERT frozen like the organ model's default
``train_text_layers: 0``), the same symmetric multi-positive InfoNCE (``trainer.model.contrastive``), the same data
(the pair dataset's train split, whole CT of each study) and the same training budget in WALL TIME (``--time-budget``
seconds, or ``--match-run DIR`` = the organ model's ``contrastive_summary.json`` wall_s). Wall time, not FLOPs: both
run on the same 2 CPU cores, so wall time is what the site pays; training FLOPs (3 x forward x samples seen) are
printed for both as well.

Evaluation uses the SAME ``trainer.evaluate.zeroshot.evaluate`` on the same val/test studies: the single
whole-volume embedding stands in for every organ of the study (restricted to the organs for which the organ model had
a usable crop, so both are scored on the same cases). ``--organ-checkpoint CKPT`` also evaluates the organ model and
writes the side-by-side table ``comparison.md`` (per organ F1, per finding AUROC, wins, encoder GFLOPs/study,
training time).

    totalfm train baseline --pairs DATASET --out DIR --match-run RUN_DIR --organ-checkpoint RUN_DIR/final.pt
    totalfm train baseline --synth-train 40 --synth-val 12 --synth-test 12 --time-budget 120 --out DIR

AI draft for radiologist review - not a diagnosis.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from appliance import ontology
from appliance.preprocess import fit_to_shape

HU_WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window (W400/L40) for the whole volume
DEFAULT_GRID = (32, 96, 96)  # (z, y, x): 8 x 12 x 12 = 1152 tokens with tubelet (4, 8, 8)


# ------------------------------------------------------------------------------------------------ data
def volume_input(volume, grid=DEFAULT_GRID) -> np.ndarray:
    """Whole CT -> float32 [1, d, h, w] in 0..1: canonical orientation, HU window, deterministic linear fit to grid
    (the same resampler as the organ encoder input, ``appliance.preprocess.fit_to_shape``)."""
    from appliance.volume import to_canonical

    v = to_canonical(volume)
    a = np.clip((np.asarray(v.array, np.float32) - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]), 0.0, 1.0)
    return fit_to_shape(a, tuple(grid)).astype(np.float32)[None]


def _key(polarity: str, organ: str | None, finding: str | None) -> str:
    return finding if polarity == "positive" and finding else f"normal:{organ}"


class Study:
    __slots__ = ("key", "split", "x", "sentences", "labels", "organs")

    def __init__(self, key, split, x, sentences, labels, organs):
        self.key, self.split, self.x, self.sentences, self.labels, self.organs = key, split, x, sentences, labels, \
            organs


def studies_from_pairs(path, grid, splits=("train", "val", "test"), limit: int | None = None) -> list[Study]:
    from appliance.nifti_io import read_nifti
    from trainer.pairs.dataset import USABLE, PairDataset

    out = []
    with PairDataset(path) as ds:
        usable = defaultdict(set)
        for r in ds.crops(status=USABLE):
            usable[r["study_key"]].add(r["organ"])
        for split in splits:
            rows = ds.studies(split=split, status="ok")[:limit or None]
            for r in rows:
                ct = Path(r["path"]) / "ct.nii.gz"
                if not ct.is_file():
                    print(f"baseline: {r['study_key']}: no {ct}, skipped", file=sys.stderr)
                    continue
                sents = [(s["text"], _key(s["polarity"], s["organ"], s["finding"]))
                         for s in ds.sentences(r["study_key"]) if s["section"] == "findings" and s["organ"]
                         and s["polarity"] in ("positive", "normal", "negated")]
                labels = ds.organ_labels(r["study_key"])
                organs = usable[r["study_key"]]
                out.append(Study(r["study_key"], split, volume_input(read_nifti(ct), grid).astype(np.float16),
                                 sents, {o: v for o, v in labels.items() if o in organs}, organs))
    return out


def studies_from_synth(n: int, seed: int, grid, phrasing: str = "train") -> list[Study]:
    from trainer.model.data import split_of_seed
    from trainer.synth.study import generate_study

    out = []
    split = split_of_seed(seed)
    for i in range(n):
        st = generate_study("analytic", seed=seed, index=i, phrasing=phrasing)
        sents = [(s["text"], _key(s["polarity"], s.get("organ"), s.get("finding"))) for s in st.truth["sentences"]
                 if s.get("organ") and s.get("section") == "findings"
                 and s.get("polarity") in ("positive", "normal", "negated")]
        by_organ = defaultdict(list)
        for f in st.truth["findings"]:
            by_organ[f["organ"]].append(f["finding"])
        lut = ontology.organ_label_lookup()  # TotalSegmentator id -> organ name
        organs = {lut[int(v)] for v in np.unique(np.asarray(st.labels.array)) if int(v) in lut}
        labels = {o: {"abnormal": bool(by_organ.get(o)), "findings": by_organ.get(o, [])} for o in organs}
        out.append(Study(f"analytic-{seed}-{i:05d}", split, volume_input(st.image, grid).astype(np.float16), sents,
                         labels, organs))
    return out


# ------------------------------------------------------------------------------------------------ model
def build(grid, dim: int, depth: int, heads: int, embed_dim: int, temperature: float = 0.07, *,
          stem: str = "linear", pool: str = "cls", anchor_weight: float = 0.0, anchor_holdout_every: int = 3):
    """The baseline's encoder family and objective follow the organ model's (stem, pooling, prompt anchor), so the
    comparison isolates organ separation."""
    from trainer.model.contrastive import CLIPModel, PromptAnchor
    from trainer.model.text_tower import TextTower
    from trainer.model.vit3d import OrganEncoder, ViTConfig

    cfg = ViTConfig(input_shape=tuple(grid), tubelet=(4, 8, 8), dim=dim, depth=depth, heads=heads,
                    embed_dim=embed_dim, n_organs=1, organ_embedding=False, stem=stem, pool=pool)
    image = OrganEncoder(cfg)
    text = TextTower(embed_dim=embed_dim, freeze_layers=-1)  # BERT frozen, projection trains (organ model default)
    model = CLIPModel(image, text, temperature=temperature, frozen_text_base=True)
    if anchor_weight > 0:
        model.anchor = PromptAnchor(anchor_weight, anchor_holdout_every)
    return model, cfg


def load_trained(run_dir: Path) -> dict:
    """A finished baseline run (``--reuse``): -> {"model", "cfg", "grid", "train"} with the model in eval mode and the
    training figures (seconds, steps, samples) of the run that produced it, so a comparison against a newer organ
    model states the baseline's real training cost."""
    from trainer.model.contrastive import CLIPModel, PromptAnchor, build_text_tower
    from trainer.model.vit3d import OrganEncoder, ViTConfig

    ck = torch.load(run_dir / "baseline.pt", map_location="cpu", weights_only=False)
    if ck.get("format") != "totalfm-baseline-ckpt":
        raise SystemExit(f"{run_dir / 'baseline.pt'} is not a whole-volume baseline checkpoint")
    cfg = ViTConfig.from_dict(ck["model_config"])
    image = OrganEncoder(cfg)
    image.load_state_dict(ck["image"])
    text = build_text_tower(ck["text"]["config"])
    text.load_state_dict(ck["text"]["state_dict"])
    model = CLIPModel(image, text, frozen_text_base=True)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(float(ck["logit_scale"])))
    if ck.get("anchor"):
        model.anchor = PromptAnchor(float(ck["anchor"]["weight"]), int(ck["anchor"]["holdout_every"]))
    info = json.loads((run_dir / "baseline_summary.json").read_text())["baseline"]
    keep = ("train_seconds", "steps", "samples_seen", "final_loss")
    return {"model": model.eval(), "cfg": cfg, "grid": list(ck["grid"]), "train": {k: info.get(k) for k in keep}}


def encoder_gflops(image, cfg) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, *cfg.input_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        image.eval()(x, torch.zeros(1, dtype=torch.long))
    return fc.get_total_flops() / 1e9


def train(model, studies: list[Study], *, time_budget: float, batch_size: int, lr: float, seed: int,
          out_dir: Path, max_steps: int | None = None) -> dict:
    from trainer.model.contrastive import multi_positive_infonce

    rng = random.Random(seed)
    torch.manual_seed(seed)
    pool = [s for s in studies if s.sentences]
    if len(pool) < 2:
        raise SystemExit("baseline: fewer than 2 training studies with report sentences")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    model.train()
    t0 = time.time()
    rows, step, seen = [], 0, 0
    while True:
        elapsed = time.time() - t0
        if elapsed >= time_budget or (max_steps and step >= max_steps):
            break
        batch = rng.sample(pool, min(batch_size, len(pool)))
        pairs = [rng.choice(s.sentences) for s in batch]
        x = torch.from_numpy(np.stack([s.x.astype(np.float32) for s in batch]))
        if rng.random() < 0.5:  # light augmentation as for the organ crops: intensity jitter
            x = x * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
        img = model.image(x, torch.zeros(len(batch), dtype=torch.long))
        txt = model.encode_text([p[0] for p in pairs], x.device)
        loss, scale = multi_positive_infonce(img, txt, [p[1] for p in pairs], model.logit_scale)
        if model.anchor is not None:  # the one embedding answers for every finding of the study
            keys = ["+".join(sorted({k for _, k in s.sentences if not k.startswith("normal:")})) or "normal"
                    for s in batch]
            every = torch.ones(len(batch), len(model.anchor.findings))
            loss = loss + model.anchor.weight * model.anchor(model, img, None, keys, mask=every)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += len(batch)
        rows.append((step, round(time.time() - t0, 2), float(loss.detach()), float(scale)))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "baseline_loss.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "seconds", "loss", "logit_scale"])
        w.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot([r[0] for r in rows], [r[2] for r in rows])
        ax.set_xlabel("step")
        ax.set_ylabel("InfoNCE loss")
        ax.set_title("whole-volume baseline")
        fig.tight_layout()
        fig.savefig(out_dir / "baseline_loss.png", dpi=90)
        plt.close(fig)
    except Exception:  # noqa: BLE001 - the CSV is the record
        pass
    return {"steps": step, "samples_seen": seen, "train_seconds": round(time.time() - t0, 1),
            "final_loss": rows[-1][2] if rows else None}


@torch.no_grad()
def split_data(model, studies: list[Study], split: str, embed_dim: int):
    from trainer.evaluate.zeroshot import SplitData

    sel = [s for s in studies if s.split == split]
    emb = {o: np.full((len(sel), embed_dim), np.nan, np.float32) for o in ontology.ORGAN_NAMES}
    model.eval()
    for i, s in enumerate(sel):
        e = model.image(torch.from_numpy(s.x.astype(np.float32))[None], torch.zeros(1, dtype=torch.long))[0].numpy()
        for o in s.organs:
            emb[o][i] = e
    return SplitData([s.key for s in sel], emb, [dict(s.labels) for s in sel])


def embed_texts_fn(model):
    @torch.no_grad()
    def f(texts):
        return model.text.encode(list(texts)).numpy()
    return f


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="totalfm train baseline", description=__doc__.split("\n")[0])
    p.add_argument("--pairs", help="pair dataset (train split trains, val picks thresholds, test is reported)")
    p.add_argument("--synth-train", type=int, default=0)
    p.add_argument("--synth-val", type=int, default=0)
    p.add_argument("--synth-test", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--time-budget", type=float, help="training wall-time budget in seconds")
    p.add_argument("--match-run", help="organ model run dir: use its contrastive_summary.json wall_s as the budget")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--organ-checkpoint", help="contrastive checkpoint of the organ model: evaluate it too + compare")
    p.add_argument("--grid", type=int, nargs=3, default=list(DEFAULT_GRID))
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--embed-dim", type=int, default=None, help="default: the organ checkpoint's, else 128")
    p.add_argument("--stem", choices=["linear", "conv"], help="default: the organ checkpoint's, else linear")
    p.add_argument("--pool", choices=["cls", "mean_max"], help="default: the organ checkpoint's, else cls")
    p.add_argument("--anchor-weight", type=float,
                   help="prompt-supervised anchor weight; default: the organ checkpoint's, else 0 (off)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--held-out-score", choices=["pair", "positive"],
                   help="score rule for the catalogue findings each model's prompt anchor left out, applied to BOTH "
                        "models (one protocol); default: the organ checkpoint's stored rules, 'pair' for the baseline")
    p.add_argument("--reuse", metavar="BASELINE_DIR",
                   help="do not train: load BASELINE_DIR/baseline.pt (and its training figures from "
                        "baseline_summary.json) and evaluate and compare it again, e.g. against a new organ model")
    args = p.parse_args(argv)
    if not args.pairs and not (args.synth_train and args.synth_val and args.synth_test):
        p.error("give --pairs DATASET, or --synth-train N --synth-val N --synth-test N")
    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from trainer.evaluate.report import comparison_markdown, write_outputs
    from trainer.evaluate.zeroshot import evaluate, finding_specs

    organ_info: dict = {}
    if args.match_run:
        summ = json.loads((Path(args.match_run) / "contrastive_summary.json").read_text())
        organ_info["train_seconds"] = float(summ.get("wall_s") or summ.get("time_s"))
        organ_info["samples_seen"] = summ.get("samples_seen")
        organ_info["steps"] = summ.get("steps")
    budget = args.time_budget or organ_info.get("train_seconds")
    if not budget and not args.max_steps and not args.reuse:
        p.error("give --time-budget SECONDS or --match-run ORGAN_RUN_DIR (equal wall time), or --max-steps")
    organ_ckpt_meta = None
    if args.organ_checkpoint:
        from trainer.model import checkpoint as ckptmod

        organ_ckpt_meta = ckptmod.read(args.organ_checkpoint)
    embed_dim = args.embed_dim or (organ_ckpt_meta["model_config"]["embed_dim"] if organ_ckpt_meta else 128)

    reused = load_trained(Path(args.reuse)) if args.reuse else None
    if reused:
        args.grid, embed_dim = reused["grid"], int(reused["cfg"].embed_dim)
    t0 = time.time()
    if args.pairs:
        studies = studies_from_pairs(args.pairs, args.grid)
        src = f"pairs:{args.pairs}"
    else:
        studies = (studies_from_synth(args.synth_train, args.seed, args.grid)
                   + studies_from_synth(args.synth_val, 1000 + args.seed, args.grid)
                   + studies_from_synth(args.synth_test, 2000 + args.seed, args.grid, phrasing="heldout"))
        src = (f"synth: train {args.synth_train}@{args.seed}, val {args.synth_val}@{1000 + args.seed}, "
               f"test {args.synth_test}@{2000 + args.seed} (heldout phrasing)")
    n_by = {s: sum(st.split == s for st in studies) for s in ("train", "val", "test")}
    print(f"baseline: {n_by} studies loaded in {time.time() - t0:.0f}s ({src})", file=sys.stderr)

    ocfg0 = (organ_ckpt_meta or {}).get("model_config") or {}
    oanchor = (organ_ckpt_meta or {}).get("anchor") or {}
    anchor_weight = args.anchor_weight if args.anchor_weight is not None else float(oanchor.get("weight", 0.0))
    if reused:
        model, cfg, tr = reused["model"], reused["cfg"], reused["train"]
    else:
        model, cfg = build(args.grid, args.dim, args.depth, args.heads, embed_dim, stem=args.stem or
                           ocfg0.get("stem", "linear"), pool=args.pool or ocfg0.get("pool", "cls"),
                           anchor_weight=anchor_weight, anchor_holdout_every=int(oanchor.get("holdout_every", 3)))
        tr = train(model, [s for s in studies if s.split == "train"], time_budget=float(budget or 1e9),
                   batch_size=args.batch_size, lr=args.lr, seed=args.seed, out_dir=out, max_steps=args.max_steps)
    gflops = encoder_gflops(model.image, cfg)
    torch.save({"format": "totalfm-baseline-ckpt", "model_config": cfg.to_dict(), "image": model.image.state_dict(),
                "text": model.text.checkpoint_entry(), "logit_scale": float(model.logit_scale.detach().exp()),
                "grid": list(args.grid), "hu_window": list(HU_WINDOW), "data": src,
                "anchor": model.anchor.meta() if model.anchor is not None else None}, out / "baseline.pt")
    scale = float(model.logit_scale.detach().clamp(max=math.log(100.0)).exp())
    from trainer.evaluate.cli import score_rules  # the same rule choice as `train eval`, for both models

    base_meta = {"anchor": model.anchor.meta() if model.anchor is not None else None}  # stores no rules: pair
    specs, prompts = finding_specs(embed_texts_fn(model), score_rules=score_rules(base_meta, args.held_out_score))
    val, test = split_data(model, studies, "val", embed_dim), split_data(model, studies, "test", embed_dim)
    anchored = model.anchor.names if model.anchor is not None else []
    base_res = evaluate(val, test, specs, prompts, scale, n_boot=args.bootstrap, seed=args.seed,
                        prompt_supervised=anchored)
    base_info = {"gflops_per_study": gflops, "train_seconds": tr["train_seconds"],
                 "train_gflops": 3 * gflops * tr["samples_seen"],
                 "params_m": sum(p.numel() for p in model.image.parameters()) / 1e6,
                 "tokens": cfg.n_tokens, "grid": list(args.grid), **tr}
    write_outputs(base_res, out, title="Whole-volume CLIP baseline - zero-shot evaluation", stem="baseline_eval",
                  extra={"data": src, "info": base_info})
    summary = {"baseline": {"organ_macro_f1": base_res["macro"]["organ_f1"],
                            "finding_macro_auroc": base_res["macro"]["finding_auroc"], **base_info}}

    if args.organ_checkpoint:
        from trainer.evaluate.cli import load_splits, prompt_supervised_findings, torch_encoders
        from trainer.model.flops import flops_per_study

        encode, embed_texts, oscale, meta = torch_encoders(args.organ_checkpoint)
        ocfg = meta["model_config"]
        oval, otest, _ = load_splits(args, ocfg["input_shape"], encode, ocfg["embed_dim"],
                                     measurements=int(ocfg.get("measurements", 0)))
        ospecs, oprompts = finding_specs(embed_texts, score_rules=score_rules(meta, args.held_out_score))
        ores = evaluate(oval, otest, ospecs, oprompts, oscale,
                        n_boot=args.bootstrap, seed=args.seed, prompt_supervised=prompt_supervised_findings(meta))
        from trainer.model.vit3d import ViTConfig

        fl = flops_per_study(ViTConfig.from_dict(ocfg))
        enc_params = sum(v.numel() for v in organ_ckpt_meta["encoder"].values()) / 1e6
        organ_info |= {"gflops_per_study": fl["gflops_per_study"], "params_m": enc_params}
        if not organ_info.get("samples_seen") and organ_info.get("steps"):
            rec = ((organ_ckpt_meta.get("provenance") or {}).get("recipe") or {}).get("contrastive") or {}
            if rec.get("batch_size"):  # upper bound: every step a full batch of crops
                organ_info["samples_seen"] = int(organ_info["steps"]) * int(rec["batch_size"])
        if organ_info.get("samples_seen"):
            organ_info["train_gflops"] = 3 * fl["gflops_per_crop"] * organ_info["samples_seen"]
        write_outputs(ores, out, title="Organ-separated model - zero-shot evaluation", stem="organ_eval",
                      extra={"data": src, "checkpoint": args.organ_checkpoint, "info": organ_info})
        text, wins = comparison_markdown(ores, base_res, organ_info, base_info)
        (out / "comparison.md").write_text(text)
        summary["organ"] = {"organ_macro_f1": ores["macro"]["organ_f1"],
                            "finding_macro_auroc": ores["macro"]["finding_auroc"], **organ_info}
        summary["wins"] = wins
    (out / "baseline_summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(json.dumps(summary, default=float))
    return 0
