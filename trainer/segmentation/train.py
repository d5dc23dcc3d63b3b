"""`totalfm train seg-train`: train the distilled 3-D U-Net on TotalSegmentator label maps (organ label space).

    totalfm train seg-train --recipe trainer/recipes/seg_demo.toml --out var/models/seg_demo.pt [--train-patient A|B]
        [--iterations N] [--max-minutes M] [--init CKPT|BUNDLE] [--device auto|cpu|cuda] [--precision auto|bf16|fp32]
        [--workers N] [--eval]

Writes the checkpoint every ``checkpoint_every`` iterations and at the end (atomic replace), so a partial run still
leaves a usable model. The checkpoint's ``preprocessing`` is exactly what ``appliance.segment.segment_volume`` needs
(it is copied into the bundle manifest by the exporter). ``--init`` continues from a checkpoint or from the segmenter
of a model bundle (trainer/segmentation/init_weights.py); `totalfm export seg` puts the result back into a bundle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

from appliance import ontology
from appliance.errors import TotalFMError

# A step whose loss or gradient is not finite is skipped (the weights stay as they were), as torch's GradScaler does.
# Why: oneDNN's bf16 Conv3d backward on CPU (torch 2.13) returns NaN weight gradients in ~1-4 % of calls when a
# level's depth is exactly 2 voxels (a 16-voxel-deep patch; tests/trainer/test_seg_batches.py shows it), and one such
# step would turn every weight into NaN. A run that keeps failing is diverging, not unlucky: it stops with an error.
MAX_CONSECUTIVE_SKIPS = 10


def load_recipe(path: str | Path) -> dict:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def postprocess_from_recipe(recipe: dict) -> dict | None:
    """The recipe's ``[postprocess]`` table (organ names) -> ``appliance.segment`` postprocess (label ids), or None."""
    post = recipe.get("postprocess")
    if not post:
        return None
    unknown = [n for n in post.get("keep_largest", []) if n not in ontology.ORGAN_NAMES]
    if unknown:
        raise TotalFMError(f"recipe [postprocess] keep_largest names unknown organs {unknown}")
    return {"keep_largest": [ontology.ORGAN_NAMES.index(n) + 1 for n in post.get("keep_largest", [])],
            "min_component_fraction": float(post.get("min_component_fraction", 0.0))}


def preprocessing_from_recipe(recipe: dict) -> dict:
    p = recipe["preprocessing"]
    pp = {
        "spacing_mm": [float(v) for v in p["spacing_mm"]],
        "patch_size": [int(v) for v in p["patch_size"]],
        "clip_hu": [float(v) for v in p["clip_hu"]],
        "mean": float(p["mean"]),
        "std": float(p["std"]),
        "step": float(p.get("step", 0.5)),
        "label_space": "organ",
        "class_ids": list(range(len(ontology.ORGANS) + 1)),
        "organs": ["background"] + list(ontology.ORGAN_NAMES),
    }
    post = postprocess_from_recipe(recipe)
    if post:
        pp["postprocess"] = post
    return pp


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except Exception:
        return None


def dice_ce_loss(logits, target, n_classes: int):
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    prob = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, n_classes).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    present = onehot.sum(dims) > 0
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    dice_loss = 1 - dice[present].mean()
    return ce + dice_loss


def finite_step(loss, model) -> bool:
    """True when the loss and every gradient are finite (one device sync: the gradients' total norm)."""
    import torch

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return bool(torch.isfinite(loss)) and bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is refused before any work."""
    import torch

    name = (name or "cpu").lower()
    if name not in ("auto", "cpu", "cuda"):
        raise TotalFMError(f"seg-train device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TotalFMError("seg-train --device cuda: torch sees no CUDA GPU here (torch "
                           f"{torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu or auto")
    return name


def resolve_precision(name: str, device: str) -> str:
    """``auto`` -> ``bf16`` on a GPU, and on a CPU that computes in bf16 natively (AVX512-BF16 / AMX, via oneDNN),
    else ``fp32`` (bench/bench_seg_precision.py times both; docs/results/segmentation.md, session 16)."""
    name = (name or "auto").lower()
    if name not in ("auto", "bf16", "fp32"):
        raise TotalFMError(f"seg-train precision must be auto, bf16 or fp32, got {name!r}")
    if name != "auto":
        return name
    return "bf16" if device == "cuda" or cpu_computes_bf16() else "fp32"


def cpu_computes_bf16() -> bool:
    import torch

    # without native bf16 the CPU emulates it, slower than fp32; the probe is a private op, so a torch without it
    # counts as "no" (fp32 is always correct, only slower)
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: str, precision: str):
    """The forward pass's context: bf16 autocast, or nothing for fp32. bf16 needs no loss scaling (unlike fp16); the
    weights, the optimiser and the loss stay fp32."""
    import torch

    return torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def train(recipe: dict, out: Path, *, train_patient: str | None = None, iterations: int | None = None,
          max_minutes: float | None = None, data_dir=None, init: str | Path | None = None,
          device: str | None = None, workers: int | None = None, precision: str | None = None,
          log=print) -> Path:
    import torch

    from trainer.segmentation.batches import BatchStream
    from trainer.segmentation.seg_data import PatchSampler, training_cases
    from trainer.segmentation.unet import build, save_checkpoint

    d, t = recipe["data"], recipe["train"]
    train_patient = train_patient or d.get("train_patient", "A")
    iterations = int(iterations or t["iterations"])
    max_minutes = float(max_minutes if max_minutes is not None else t.get("max_minutes", 1e9))
    torch.set_num_threads(int(t.get("threads", 2)))
    device = resolve_device(device or t.get("device", "cpu"))
    precision = resolve_precision(precision or t.get("precision", "auto"), device)
    workers = int(workers if workers is not None else t.get("sampler_workers", 0))
    if workers < 0:
        raise TotalFMError(f"seg-train --workers must be 0 (draw patches in this process) or more, got {workers}")
    seed = int(d.get("seed", 0))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pp = preprocessing_from_recipe(recipe)
    # the starting weights are checked before the data is built: a refusal should not cost minutes of caching
    start = None
    if init:  # continue from an earlier checkpoint or a bundle's segmenter, same architecture (a further stage)
        from trainer.segmentation.init_weights import load_init

        start = load_init(init)
        if start.held_out_patient == train_patient:
            raise TotalFMError(f"--init {init} was trained with patient {train_patient} held out; training it on "
                               f"patient {train_patient} now would leave no held-out real patient to test on. "
                               f"Continue with --train-patient {'A' if train_patient == 'B' else 'B'}")
        if list(start.config["channels"]) != list(recipe["model"]["channels"]):
            raise TotalFMError(f"--init {init} has channels {start.config['channels']}, the recipe "
                               f"{recipe['model']['channels']}; use a recipe with the same [model] channels")
    t0 = time.time()
    cache = Path(d["cache_dir"]) if d.get("cache_dir") else None
    cases = training_cases(train_patient, pp["spacing_mm"], n_analytic=int(d["n_analytic"]),
                           n_realbacked=int(d["n_realbacked"]), n_whole_torso=int(d.get("n_whole_torso", 0)),
                           seed=seed, data_dir=data_dir, cache_dir=cache, workers=workers, log=log)
    t_data = time.time() - t0
    log(f"data ready in {t_data:.0f}s")
    weights = [float(t.get("real_weight", 3.0)) if c.name.startswith("ts_") else 1.0 for c in cases]
    sampling = {k: t[k] for k in ("p_spatial", "scale_range", "rotate_deg", "tilt_deg", "class_sampling")
                if k in t}  # absent: no spatial augmentation, classes drawn per case
    sampler = PatchSampler(cases, pp["patch_size"], pp, rng=rng, p_class=float(t.get("p_class", 0.7)),
                           case_weights=weights, **sampling)
    # the workers fork before CUDA is touched in this process
    batches = BatchStream(sampler, int(t["batch"]), workers=workers, seed=seed)
    model = build({"channels": recipe["model"]["channels"]})
    if start is not None:
        model.load_state_dict(start.state_dict)
        log(f"initialised from {start.source}")
    model.to(device)
    cuda = device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed patch shape: pick the fastest convolution once
    log(f"training on {device}" + (f" ({torch.cuda.get_device_name(0)})" if cuda else "")
        + (", bf16 autocast" if precision == "bf16" else ", fp32")
        + (f", {workers} sampler workers" if workers else ""))
    n_classes = model.config["n_classes"]
    opt = torch.optim.AdamW(model.parameters(), lr=float(t["lr"]), weight_decay=1e-4)
    lr0 = float(t["lr"])
    every = int(t.get("checkpoint_every", 150))
    deadline = t0 + max_minutes * 60
    provenance = {"train_patient": train_patient, "held_out_patient": "B" if train_patient == "A" else "A",
                  "recipe": recipe, "git_commit": _git_commit(), "device": device, "precision": precision,
                  "sampler_workers": workers,
                  "init_from": start.source if start else None, "cases": [c.name for c in cases]}
    losses: list[float] = []
    it = skipped = consecutive_skips = 0
    model.train()
    t_train = time.time()
    try:
        for it in range(1, iterations + 1):
            # progress = iterations done or wall-clock budget used, whichever is further: the poly schedule still
            # anneals when a busy machine makes the time budget, not the iteration count, end the run
            frac = min(1.0, max((it - 1) / iterations, (time.time() - t_train) / max(1.0, deadline - t_train)))
            for g in opt.param_groups:
                g["lr"] = lr0 * (1 - frac) ** 0.9
            x, y = next(batches)
            x = torch.from_numpy(x).to(device, non_blocking=cuda)
            y = torch.from_numpy(y).to(device, non_blocking=cuda)
            with autocast(device, precision):
                logits = model(x)
            loss = dice_ce_loss(logits.float(), y, n_classes)
            opt.zero_grad()
            loss.backward()
            if finite_step(loss, model):
                opt.step()
                losses.append(float(loss.detach()))
                consecutive_skips = 0
            else:
                skipped += 1
                consecutive_skips += 1
                log(f"it {it}: non-finite loss or gradient, step skipped ({skipped} so far)")
                if consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                    raise TotalFMError(f"seg-train: {consecutive_skips} steps in a row had a non-finite loss or "
                                       f"gradient (iteration {it}); the run is diverging. Lower [train] lr, or use "
                                       f"precision = \"fp32\" to rule out bf16")
            if it % 25 == 0:
                log(f"it {it}/{iterations} loss {np.mean(losses[-25:]):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                    f"{time.time() - t_train:.0f}s")
            stop = time.time() > deadline
            if it % every == 0 or stop or it == iterations:
                metrics = {"iterations": it, "skipped_steps": skipped,
                           "loss_last50": float(np.mean(losses[-50:])) if losses else None,
                           "train_wall_s": round(time.time() - t0, 1), "data_wall_s": round(t_data, 1),
                           "finished": it == iterations or stop}
                save_checkpoint(out, model, pp, metrics, {"provenance": provenance})
                model.train()
            if stop:
                log(f"wall-clock budget of {max_minutes} min reached at iteration {it}")
                break
    finally:
        batches.close()  # stops the sampler workers
    log(f"saved {out} after {it} iterations, {time.time() - t0:.0f}s total")
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="totalfm train seg-train", description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="trainer/recipes/seg_demo.toml")
    ap.add_argument("--out", default="var/models/seg_demo.pt")
    ap.add_argument("--train-patient", choices=["A", "B"], default=None)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--data-dir", default=None, help="shared data folder (default: TOTALFM_SHARED_DATA or ../shared/data)")
    ap.add_argument("--init", default=None,
                    help="start from these weights: a seg checkpoint (.pt) or a model bundle's segmenter (its "
                         "folder); the bundle's graph must reproduce its own logits; the held-out patient stays out")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                    help="where to train (default: the recipe's [train] device, else cpu)")
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None,
                    help="autocast precision (default: the recipe's [train] precision, else auto = bf16 on a GPU "
                         "or a CPU with native bf16, else fp32)")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes drawing patches (default: the recipe's [train] sampler_workers, else 0 = in "
                         "the training process); a GPU needs several to be kept busy")
    ap.add_argument("--eval", action="store_true", help="run seg-eval on the held-out patient + phantoms afterwards")
    a = ap.parse_args(argv)
    recipe = load_recipe(a.recipe)
    out = train(recipe, Path(a.out), train_patient=a.train_patient, iterations=a.iterations,
                max_minutes=a.max_minutes, data_dir=a.data_dir, init=a.init, device=a.device, workers=a.workers,
                precision=a.precision, log=lambda m: print(m, flush=True))
    if a.eval:
        from trainer.segmentation.evaluate import main as eval_main

        return eval_main([str(out)] + (["--data-dir", a.data_dir] if a.data_dir else []) + ["--write-metrics"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
