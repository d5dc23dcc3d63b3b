"""Stage 1: VideoMAE self-supervised pre-training of the organ encoder on organ crops.

    totalfm train pretrain --recipe demo --pairs DATASET --out CKPT_DIR [--steps N] [--time-budget S]
    torchrun --nproc_per_node 2 -m trainer.model.pretrain --recipe demo --pairs DATASET --out CKPT_DIR

Writes CKPT_DIR/{last.pt (resume), final.pt, pretrain_loss.csv, pretrain_loss.png, pretrain_summary.json}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from trainer.model import checkpoint as ckptmod
from trainer.model.data import BankDataset, collate, from_pairs, from_synth, organ_batches
from trainer.model.distributed import TrainSpec, cleanup, init_distributed, train_loop
from trainer.model.videomae import VideoMAE
from trainer.model.vit3d import ViTConfig, config_for


def model_config_from_recipe(recipe: dict) -> ViTConfig:
    m = dict(recipe.get("model", {}))
    size = m.pop("size", "tiny")
    if isinstance(m.get("measurements"), (bool, str)):  # yes/no (the current version) or a version's name
        from appliance.preprocess import MEASUREMENT_VERSIONS, measurements_spec
        version = measurements_spec(m["measurements"])
        m["measurements"] = MEASUREMENT_VERSIONS[version] if version else 0
    return config_for(size, **m)


def load_bank(args, cfg: ViTConfig, splits=("train",), measurements: bool = False):
    """``measurements``: also bank the organ measurements (the contrastive stage of an encoder that takes them; the
    MAE learns from pixels only)."""
    if args.pairs:
        return from_pairs(args.pairs, cfg.input_shape, splits=splits, measurements=measurements,
                          workers=getattr(args, "threads", 1))
    return from_synth(args.synth_n, args.synth_seed, cfg.input_shape, measurements=measurements)


def run(args, recipe: dict) -> dict:
    info = init_distributed(args.device)
    torch.set_num_threads(max(1, args.threads))
    st = recipe.get("pretrain", {})
    cfg = model_config_from_recipe(recipe)
    bank = load_bank(args, cfg)
    if len(bank) == 0:
        raise SystemExit("no training crops (split 'train') in the data source")
    model = VideoMAE(cfg, mask_ratio=float(st.get("mask_ratio", 0.9)), decoder_dim=int(st.get("decoder_dim", 64)),
                     decoder_depth=int(st.get("decoder_depth", 1)))
    bs = int(args.batch_size or st.get("batch_size", 32))
    batches = organ_batches(bank, bs, seed=args.seed)  # same-organ batches also for MAE (one organ = one context)

    def loss_fn(m, batch, device):
        return m(batch["crop"].to(device), batch["organ_index"].to(device)), {}

    def make_ckpt(m: VideoMAE) -> dict:
        ck = ckptmod.base_meta(cfg, stage="pretrain", recipe=recipe,
                               data={"source": str(args.pairs or f"synth:{args.synth_n}@{args.synth_seed}"),
                                     **bank.summary()})
        ck["encoder"] = m.encoder.state_dict()
        ck["mae"] = {"mask_ratio": m.mask_ratio}
        return ck

    spec = TrainSpec(model=model, dataset=BankDataset(bank, augment=True, seed=args.seed), collate=collate,
                     loss_fn=loss_fn, out_dir=Path(args.out), make_ckpt=make_ckpt, batches=batches,
                     epochs=int(args.epochs or st.get("epochs", 1)), max_steps=args.steps or st.get("steps"),
                     lr=float(st.get("lr", 1.5e-3)), ckpt_every=int(st.get("ckpt_every", 25)), seed=args.seed,
                     time_budget_s=args.time_budget or st.get("time_budget_s"), log_name="pretrain_loss", info=info)
    t0 = time.time()
    res = train_loop(spec)
    res |= {"wall_s": round(time.time() - t0, 1), "crops": len(bank), "batches_per_epoch": len(batches)}
    if info.is_main:
        (Path(args.out) / "pretrain_summary.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res), flush=True)
    cleanup()
    return res


def add_common(p: argparse.ArgumentParser):
    p.add_argument("--recipe", default="demo", help="recipe name (trainer/recipes/NAME.toml) or a .toml path")
    p.add_argument("--pairs", help="pair dataset (totalfm train build-pairs)")
    p.add_argument("--synth-n", type=int, default=16, help="without --pairs: generate N analytic studies in process")
    p.add_argument("--synth-seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--time-budget", type=float, help="stop (and checkpoint) after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def main(argv: list[str] | None = None) -> int:
    from trainer.recipe import load_recipe
    p = argparse.ArgumentParser(prog="totalfm train pretrain", description=__doc__.split("\n")[0])
    add_common(p)
    args = p.parse_args(argv)
    run(args, load_recipe(args.recipe))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
