"""GPU experiment for issue 4: is the distilled segmenter short of training, and does a wider one do better?

On 2 CPU cores a 40-minute stage of the demo segmenter (channels 8-16-32-64, batch 2) gets ~6,300 iterations, and
each of the last stages lifted the held-out phantoms (session 14: 30 of 32 cells), still short of the >= 0.90 target
for every organ (esophagus, prostate, adrenals, pancreas, gallbladder and aorta furthest). This runs the same recipe
on one GPU and scores each run with seg-eval, the same way as on the CPU:

    continue  the shipped segmenter (the payload's init.pt) on patient A, the recipe's channels, --minutes of GPU
    wide      channels 16-32-64-128 from random weights on patient A, for the time the deadline leaves (--runs wide)

Both train with ``--device cuda`` (bf16 autocast) and ``--workers`` = the machine's cores less two drawing patches,
at ``--batch`` patches a step (the CPU recipe: 2). The data (real scans of patient A, 16 real-backed and 24
analytic phantoms, the held-out sets) is built there from the payload's real CTs, with every core.

Prepare the payload here (the venv has torch; ~17 MB, so the 36 MB tracked tree and it stay under the 64 MiB a call
carries), then run from the repository root on the GPU machine, carrying .gpu:

    .venv/bin/python bench/gpu_seg_budget.py --prepare .gpu [--init CKPT|BUNDLE]   (.gitignore ignores .gpu/)
    python3 bench/gpu_seg_budget.py --payload .gpu --out $OUT --work .gpuwork --minutes 5 --deadline 540
    (the same command again goes on where a cut run stopped: finished steps are skipped)

Everything it measures goes to OUT/gpu_seg_budget.json (written after every step); each run's checkpoint (1.4 MB for
the demo channels) and its seg-eval JSON come back too, so a better model can be shipped here with
`totalfm export seg --seg OUT/seg_continue.pt --into appliance/default_bundle`. --small: a few cases and iterations,
to check the script on a CPU box first (with --device cpu).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import REPO, Record, download_wheels, probe_torch, step_env, totalfm  # noqa: E402

NAME = "gpu_seg_budget"
RECIPE = REPO / "trainer" / "recipes" / "seg_demo.toml"
WIDE = [16, 32, 64, 128]


def prepare(dest: Path, init: str) -> None:
    """The payload: the shared real CTs (the real-backed phantoms and the held-out patient need them), the starting
    segmenter as a checkpoint, and wheels for Python 3.12 of what the GPU image lacks (pydicom, nibabel)."""
    from trainer.segmentation.init_weights import load_init
    from trainer.segmentation.unet import build, save_checkpoint

    shared = Path(os.environ.get("TOTALFM_SHARED_DATA", REPO.parent / "shared" / "data"))
    real = dest / "shared" / "data" / "real-ct"
    real.mkdir(parents=True, exist_ok=True)
    for p in (shared / "real-ct").iterdir():
        if (p.name.startswith("ts_") or p.suffix == ".json") and not (real / p.name).exists():
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, real / p.name)
    start = load_init(init)
    model = build(start.config)
    model.load_state_dict(start.state_dict)
    save_checkpoint(dest / "init.pt", model, start.preprocessing, {},
                    {"provenance": {"train_patient": "B" if start.held_out_patient == "A" else "A",
                                    "held_out_patient": start.held_out_patient, "init_from": start.source}})
    download_wheels(dest / "whl", "pydicom", "nibabel")
    size = {p.name: sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*"))) for p in dest.iterdir()}
    print(f"payload in {dest}: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(size.items())))


def gpu_recipe(work: Path, name: str, *, device: str, workers: int, batch: int, channels=None, small=False) -> Path:
    """seg_demo.toml on the GPU: its device, sampler workers and batch; a checkpoint every 500 steps."""
    text = RECIPE.read_text()
    text = re.sub(r"(?m)^batch = \d+", f"batch = {batch}", text)
    text = re.sub(r"(?m)^checkpoint_every = \d+", "checkpoint_every = 500", text)
    text = re.sub(r"(?m)^cache_dir = .*$", f'cache_dir = "{work / "cache"}"', text)
    text = re.sub(r'(?m)^device = "cpu"', f'device = "{device}"', text)
    text = re.sub(r"(?m)^sampler_workers = \d+", f"sampler_workers = {workers}", text)
    if channels:
        text = re.sub(r"(?m)^channels = .*$", f"channels = {list(channels)}", text)
    if small:
        text = re.sub(r"(?m)^n_realbacked = \d+", "n_realbacked = 2", text)
        text = re.sub(r"(?m)^n_analytic = \d+", "n_analytic = 2", text)
    p = work / f"seg_{name}.toml"
    p.write_text(text)
    return p


def dice(eval_json: Path) -> dict | None:
    if not eval_json.exists():
        return None
    return {s: {o: v["mean_dice"] for o, v in organs.items()}
            for s, organs in json.loads(eval_json.read_text())["summary"].items()}


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "--prepare":
        init = sys.argv[sys.argv.index("--init") + 1] if "--init" in sys.argv else "appliance/default_bundle"
        prepare(Path(sys.argv[2]), init)
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--payload", default=".gpu")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_seg_budget_out"))
    ap.add_argument("--work", default="/tmp/gpu_seg_budget")
    ap.add_argument("--runs", default="continue", help="comma-separated: continue, wide")
    ap.add_argument("--minutes", type=float, default=5.0, help="training minutes per run")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--deadline", type=float, default=0, help="seconds: start no step after this, cut a running one")
    a = ap.parse_args()
    out, work, payload = Path(a.out), Path(a.work).resolve(), (REPO / a.payload).resolve()
    rec = Record(NAME, out, work, a.deadline)
    env = step_env(payload, work, TOTALFM_SHARED_DATA=str(payload / "shared" / "data"))
    cores = os.cpu_count() or 2
    workers = max(1, cores - 2)
    rec.note("torch", probe_torch(env))
    rec.note("cores", cores)
    for run in [r for r in a.runs.split(",") if r]:
        if run not in ("continue", "wide"):
            raise SystemExit(f"unknown run {run!r}")
        recipe = gpu_recipe(work, run, device=a.device, workers=workers, batch=a.batch,
                            channels=WIDE if run == "wide" else None, small=a.small)
        ckpt = out / f"seg_{run}.pt"
        iterations = "40" if a.small else "1000000"
        args = ["train", "seg-train", "--recipe", str(recipe), "--out", str(ckpt), "--train-patient", "A",
                "--max-minutes", str(0.5 if a.small else a.minutes), "--iterations", iterations]
        if run == "continue":
            args += ["--init", str(payload / "init.pt")]
        if not rec.done(f"train_{run}"):
            rec.run(totalfm(*args), f"train_{run}", a.minutes * 60 + 600, env, log=work / f"train_{run}.log")
            shutil.copy2(work / f"train_{run}.log", out / f"train_{run}.log")
        if ckpt.exists():
            import torch

            m = torch.load(ckpt, map_location="cpu", weights_only=False)["metrics"]
            rec.note(f"train_{run}_metrics", m)
        if rec.done(f"train_{run}") and not rec.done(f"eval_{run}"):
            ej = out / f"eval_{run}.json"
            rec.run(totalfm("train", "seg-eval", str(ckpt), "--phantoms", "1" if a.small else "3", "--json", str(ej),
                            "--write-metrics"), f"eval_{run}", 600, env)
            rec.note(f"dice_{run}", dice(ej))
    return 0


if __name__ == "__main__":
    sys.exit(main())
