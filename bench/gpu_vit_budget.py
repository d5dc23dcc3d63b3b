"""GPU experiment for issue 5: does the organ ViT add anything once it gets a GPU budget?

Ran in session 12 on an H200 (two calls, --budget 150 --deadline 540 then --deadline 245; 847 s of device time):
A and B score the same on held-out studies although B's training loss keeps falling (docs/results/model.md,
session 12; bench/experiments/results/gpu_vit_budget_s12.json). W was cut by the deadline.

On 2 CPU cores the demo recipe's joint stage (ViT + measurement branch) gets ~400 steps after the measurement
warm-up, and the ViT adds nothing measurable (docs/results/model.md, session 9). This runs the same recipe, on the same
data, on one GPU, twice, and scores both the same way:

    A  the CPU recipe's step count (--cpu-steps, 394 in session 9's recipe run)   the control
    B  the joint stage for --budget seconds                                      the ViT with a GPU budget
    W  the measurement warm-up alone (A's warmup/final.pt)                       the measurement branch by itself

Data: the demo recipe's synth + build-pairs with every core (realistic test split, thresholds from its validation
split) and the enriched set of the earlier sessions (96 analytic studies, seed 3000, 3-6 findings each, held-out
phrasing). Scoring: `totalfm train eval --held-out-score positive` (the recipe's [eval] rule).

Prepare the payload here (the venv has torch), then run from the repository root on the GPU machine (python3 with
torch + CUDA), carrying .gpu. The tracked default bundle (33 MB) plus the payload (57 MB) exceed the 64 MiB a call
carries: untrack the bundle for the call (`git rm -r -q --cached appliance/default_bundle`, add it to
.git/info/exclude) and put it back after (`git reset -q -- appliance/default_bundle`).

    .venv/bin/python bench/gpu_vit_budget.py --prepare .gpu        (.gitignore ignores .gpu/ and .gpuwork/)
    python3 bench/gpu_vit_budget.py --payload .gpu --out $OUT --work .gpuwork --budget 150 --deadline 530
    (the same command again goes on where a cut run stopped)

--payload: a folder with whl/ (wheels of what the image lacks: pydicom, nibabel), minilm/ (all-MiniLM-L6-v2:
config.json, tokenizer.json, model.safetensors; fp16 is fine, it loads into fp32) and shared/data/ (the real CTs for
the real-backed studies). --small: a few studies and seconds, to check the script on a CPU box first. Everything it
measures goes to OUT/gpu_vit_budget.json (written after every step) and OUT/runs.tar.gz (summaries, loss curves,
eval reports).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import REPO, Record, download_wheels, probe_torch, step_env, totalfm  # noqa: E402


def gpu_recipe(work: Path, small: bool, workers: int) -> Path:
    """demo.toml with the GPU's device and cores, checkpoints every 1,000 steps (every 25 would write the 90 MB text
    tower a few times a second) and, with --small, a handful of studies."""
    text = (REPO / "trainer" / "recipes" / "demo.toml").read_text()
    text = re.sub(r'(?m)^device = "cpu"', 'device = "cuda"', text)
    text = re.sub(r"(?m)^workers = \d+", f"workers = {workers}", text)
    text = re.sub(r"(?m)^ckpt_every = \d+", "ckpt_every = 1000", text)
    if small:
        text = re.sub(r"\bn = \d+", "n = 3", text)
        text = re.sub(r"(?m)^measurement_warmup_steps = \d+", "measurement_warmup_steps = 30", text)
    p = work / "gpu_demo.toml"
    p.write_text(text)
    return p


def metrics(eval_dir: Path) -> dict | None:
    f = eval_dir / "eval.json"
    if not f.exists():
        return None
    macro = json.loads(f.read_text()).get("macro", {})
    return {k: v for k, v in macro.items() if k != "findings_na"}


def prepare(dest: Path) -> None:
    """Build the payload: MiniLM in fp16 (45 MB instead of 90), the shared real CTs the real-backed studies need,
    and wheels for Python 3.12 of what the GPU image lacks (plus the TensorRT bindings, to probe for libnvinfer)."""
    import torch
    from safetensors.torch import load_file, save_file

    from trainer.model.text_tower import minilm_dir
    src = minilm_dir()
    (dest / "minilm").mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copy2(src / name, dest / "minilm" / name)
    sd = load_file(str(src / "model.safetensors"))
    save_file({k: (v.half() if v.dtype == torch.float32 else v).contiguous() for k, v in sd.items()},
              str(dest / "minilm" / "model.safetensors"))
    shared = Path(os.environ.get("TOTALFM_SHARED_DATA", REPO.parent / "shared" / "data"))
    real = dest / "shared" / "data" / "real-ct"
    real.mkdir(parents=True, exist_ok=True)
    for p in (shared / "real-ct").iterdir():
        if p.name.startswith("ts_") or p.suffix == ".json":
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, real / p.name)
    download_wheels(dest / "whl", "pydicom", "nibabel", "tensorrt-cu13-bindings")
    print(f"payload in {dest}: " + ", ".join(f"{p.name} {sum(f.stat().st_size for f in p.rglob('*')) / 1e6:.1f} MB"
                                             for p in sorted(dest.iterdir())))


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--prepare":
        prepare(Path(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--payload", default=".gpu")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_vit_budget_out"))
    ap.add_argument("--work", default="/tmp/gpu_vit_budget")
    ap.add_argument("--budget", type=float, default=180.0, help="B's joint-stage seconds")
    ap.add_argument("--cpu-steps", type=int, default=394, help="A's joint steps (the CPU recipe's)")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--deadline", type=float, default=0, help="seconds: start no step after this, cut a running one "
                    "(rerun the same command to go on: finished steps are skipped)")
    a = ap.parse_args()
    out, work, payload = Path(a.out), Path(a.work), (REPO / a.payload).resolve()
    rec = Record("gpu_vit_budget", out, work, a.deadline)
    R, note = rec.R, rec.note
    R["work"] = str(work)
    cores = os.cpu_count() or 2
    env = step_env(payload, work, TOTALFM_MINILM_DIR=str(payload / "minilm"),
                   TOTALFM_SHARED_DATA=str(payload / "shared" / "data"))
    note("torch", probe_torch(env))
    r = subprocess.run([sys.executable, "-c", "import trainer.recipe, trainer.synth.cli, trainer.pairs.cli, "
                        "trainer.model.contrastive, trainer.evaluate.cli; print('ok')"], env=env,
                       capture_output=True, text=True, cwd=REPO)
    note("imports", r.stdout.strip() or r.stderr[-800:])
    trt = {}
    for mod in ("tensorrt", "tensorrt_bindings"):  # the second: the bindings wheel, which needs libnvinfer
        r = subprocess.run([sys.executable, "-c", f"import {mod} as t; print(t.__version__)"], env=env,
                           capture_output=True, text=True)
        trt[mod] = r.stdout.strip() or r.stderr.strip().splitlines()[-1:]
    trt["libnvinfer"] = subprocess.run("ldconfig -p | grep nvinfer | head -3; timeout 20 find / -xdev -name "
                                       "'libnvinfer.so*' 2>/dev/null | head -3", shell=True, capture_output=True,
                                       text=True).stdout.strip()
    note("tensorrt", trt)
    note("cores", cores)

    recipe = gpu_recipe(work, a.small, workers=cores)
    run_dir = work / "recipe"
    # 1. data: the demo recipe's synth + build-pairs (no training), and the enriched set
    done, sh = rec.done, rec.run

    if not done("synth_and_pairs"):
        sh(totalfm("train", "recipe", str(recipe), "--out", str(run_dir), "--threads", str(cores),
                   "--skip", "contrastive,eval,pretrain"), "synth_and_pairs", 900, env)
    enr = work / "enriched"
    if not done("enriched_synth"):
        shutil.rmtree(enr / "studies", ignore_errors=True)
        sh(totalfm("synth", "--no-dicom", "--n", "6" if a.small else "96", "--kind", "analytic", "--seed", "3000",
                   "--size", "128,128,96", "--findings-per-study", "3,6", "--normal-fraction", "0.1", "--phrasing",
                   "heldout", "--out", str(enr / "studies"), "--workers", str(cores)), "enriched_synth", 600,
           env)
    if not done("enriched_pairs"):
        sh(totalfm("train", "build-pairs", "--studies", str(enr / "studies"), "--out", str(enr / "pairs"),
                   "--segmenter", "labels", "--engine", "rules", "--workers", str(cores), "--no-progress"),
           "enriched_pairs", 600, env)
    pairs = run_dir / "pairs"

    def train(name: str, extra: list[str]) -> Path:
        d = work / name
        if not (d / "contrastive_summary.json").exists():
            sh(totalfm("train", "contrastive", "--recipe", str(recipe), "--pairs", str(pairs), "--out", str(d),
                       "--threads", str(cores), "--device", a.device, "--init", "scratch", *extra), f"train_{name}",
               1200, env)
        s = d / "contrastive_summary.json"
        if s.exists():
            j = json.loads(s.read_text())
            R["steps"].setdefault(f"train_{name}", {}).update(
                {k: j.get(k) for k in ("steps", "final_loss", "wall_s", "crops")} | {"warmup": j.get(
                    "measurement_warmup")})
        return d

    def evaluate(name: str, ckpt: Path, tags=("realistic", "enriched")) -> None:
        for tag, p, extra in (("realistic", pairs, []), ("enriched", enr / "pairs", ["--no-write-thresholds"])):
            d = work / f"eval_{name}_{tag}"
            if tag not in tags or not ckpt.exists() or (d / "eval.json").exists():
                continue
            ok = sh(totalfm("train", "eval", "--checkpoint", str(ckpt), "--pairs", str(p), "--out", str(d),
                            "--held-out-score", "positive", "--bootstrap", "50" if a.small else "200", "--no-plots",
                            "--threads", str(cores), *extra), f"eval_{name}_{tag}", 600, env)
            if ok:
                R.setdefault("results", {}).setdefault(name, {})[tag] = metrics(d)
                rec.save()

    # 2. B first (the question), then the control A with the same warm-up (same seed, same batches), then W
    b_dir = train("B_gpu_budget", ["--time-budget", str(10 if a.small else a.budget), "--epochs", "100000"])
    evaluate("B_gpu_budget", b_dir / "final.pt")
    a_dir = work / "A_cpu_steps"
    if (b_dir / "warmup" / "final.pt").exists() and not (a_dir / "warmup").exists():
        shutil.copytree(b_dir / "warmup", a_dir / "warmup")
    a_dir = train("A_cpu_steps", ["--steps", str(3 if a.small else a.cpu_steps)])
    evaluate("A_cpu_steps", a_dir / "final.pt")
    evaluate("W_warmup_only", b_dir / "warmup" / "final.pt")

    with tarfile.open(out / "runs.tar.gz", "w:gz") as tf:
        for p in sorted(work.glob("*/contrastive_summary.json")) + sorted(work.glob("*/*loss*.csv")) + \
                sorted(work.glob("*/warmup/*loss*.csv")) + sorted(work.glob("eval_*/*.json")) + \
                sorted(work.glob("eval_*/*.md")) + [run_dir / "recipe_summary.json", recipe]:
            if p.exists():
                tf.add(p, arcname=str(p.relative_to(work)))
    rec.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
