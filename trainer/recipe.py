"""Recipes (TOML under trainer/recipes/) and ``totalfm train recipe NAME --out DIR``: the whole training pipeline.

demo: synth (train/val/test by the split rules) -> build-pairs -> [pretrain] -> contrastive -> eval -> thresholds into
the checkpoint. The recipe's ``contrastive.init`` decides whether stage 1 (VideoMAE) runs: "pretrain" runs it and
starts contrastive from it, "scratch" skips it; ``--ablation`` also trains the other start at the same contrastive
budget. Every step records its wall time in OUT/recipe_summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

RECIPES = Path(__file__).parent / "recipes"


def load_recipe(name_or_path: str) -> dict:
    p = Path(name_or_path)
    if not p.suffix:
        p = RECIPES / f"{name_or_path}.toml"
    if not p.exists():
        known = ", ".join(sorted(x.stem for x in RECIPES.glob("*.toml")))
        raise SystemExit(f"no recipe {name_or_path!r} (known: {known}, or a path to a .toml file)")
    with open(p, "rb") as f:
        r = tomllib.load(f)
    r.setdefault("name", p.stem)
    return r


def _totalfm() -> list[str]:
    exe = Path(sys.executable).parent / "totalfm"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from appliance.cli import main; "
                                                                  "sys.exit(main(sys.argv[1:]))"]


def _step(summary: dict, name: str, out: Path, fn):
    t0 = time.time()
    print(f"[recipe] {name} ...", flush=True)
    res = fn()
    summary["steps"][name] = {"seconds": round(time.time() - t0, 1), **(res if isinstance(res, dict) else {})}
    (out / "recipe_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"[recipe] {name} done in {time.time() - t0:.0f} s", flush=True)
    return res


def synth_studies(recipe: dict, out: Path) -> dict:
    """Every [data] group -> OUT/studies/<split>_<i>_<kind>/, then OUT/flat/<group>_study_XXXXX symlinks (pair keys
    stay unique). Splits are decided by build-pairs from truth.json (seed range / source patient), never by name."""
    d = recipe["data"]
    flat = out / "flat"
    flat.mkdir(parents=True, exist_ok=True)
    made = {}
    for split in ("train", "val", "test"):
        for i, g in enumerate(d.get(split, [])):
            name = f"{split}{i}_{g['kind']}{'_' + g['source'] if g.get('source') else ''}"
            folder = out / "studies" / name
            n = int(g["n"])
            have = len(list(folder.glob("study_*/truth.json"))) if folder.exists() else 0
            if have < n:
                cmd = _totalfm() + ["synth", "--no-dicom", "--n", str(n), "--kind", g["kind"], "--seed",
                                    str(g["seed"]), "--out", str(folder), "--workers", str(d.get("workers", 2)),
                                    "--normal-fraction", str(g.get("normal_fraction", d.get("normal_fraction", 0.3))),
                                    "--phrasing", g.get("phrasing", "train")]
                if g.get("size"):
                    cmd += ["--size", g["size"]]
                if g.get("source"):
                    cmd += ["--source", g["source"]]
                if g.get("findings_per_study"):  # enriched training plan (trainer.synth.plan._enriched)
                    cmd += ["--findings-per-study", ",".join(str(int(v)) for v in g["findings_per_study"])]
                subprocess.run(cmd, check=True)
            for s in sorted(folder.glob("study_*")):
                link = flat / f"{name}_{s.name}"
                if not link.exists():
                    link.symlink_to(os.path.relpath(s, flat))
            made[name] = n
    return {"groups": made}


def build_pairs(recipe: dict, out: Path) -> dict:
    from trainer.pairs.cli import build_pairs_main
    d = recipe["data"]
    rc = build_pairs_main(["--studies", str(out / "flat"), "--out", str(out / "pairs"), "--segmenter",
                           d.get("segmenter", "labels"), "--engine", d.get("engine", "rules"), "--workers",
                           str(d.get("workers", 2)), "--no-progress"])
    if rc:
        raise SystemExit(f"build-pairs failed ({rc})")
    from trainer.pairs.dataset import PairDataset
    with PairDataset(out / "pairs") as ds:
        return ds.summary()


INITS = ("pretrain", "scratch")


def eval_score_args(recipe: dict) -> list[str]:
    """Recipe ``[eval] held_out_score`` -> the eval's ``--held-out-score`` (how findings held out from the prompt
    anchor are scored; absent: the eval's default)."""
    rule = recipe.get("eval", {}).get("held_out_score")
    return ["--held-out-score", str(rule)] if rule else []


def stage_plan(recipe: dict, ablation: bool = False) -> dict:
    """-> {"init": the recipe's contrastive start, "pretrain": whether stage 1 runs, "ablation": the other start or
    None}. Stage 1 runs when either contrastive run starts from it."""
    init = recipe.get("contrastive", {}).get("init", "pretrain")
    if init not in INITS:
        raise SystemExit(f"recipe contrastive.init must be one of {INITS}, not {init!r}")
    other = (INITS[1] if init == INITS[0] else INITS[0]) if ablation else None
    return {"init": init, "pretrain": "pretrain" in (init, other), "ablation": other}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="totalfm train recipe", description=__doc__.split("\n")[0])
    p.add_argument("recipe", help="demo | hospital | path/to/recipe.toml")
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", help="use this pair dataset instead of synthesising (hospital: the PACS export)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ablation", action="store_true",
                   help="also train contrastive from the other start (scratch <-> stage 1), same budget, to "
                        "measure what pre-training brings")
    p.add_argument("--skip", default="", help="comma list of steps to skip (synth,pairs,pretrain,contrastive,eval)")
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    summary = {"recipe": recipe.get("name"), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "steps": {}}
    t_all = time.time()
    pairs = Path(args.pairs or recipe.get("data", {}).get("pairs") or out / "pairs")
    if not args.pairs and "pairs" not in recipe.get("data", {}):
        if "synth" not in skip:
            _step(summary, "synth", out, lambda: synth_studies(recipe, out))
        if "pairs" not in skip:
            _step(summary, "build_pairs", out, lambda: build_pairs(recipe, out))
    common = ["--recipe", args.recipe, "--pairs", str(pairs), "--threads", str(args.threads)]
    from trainer.evaluate.cli import main as eval_main
    from trainer.model.contrastive import main as contrastive_main
    from trainer.model.flops import flops_per_study
    from trainer.model.pretrain import main as pretrain_main
    from trainer.model.pretrain import model_config_from_recipe
    plan = stage_plan(recipe, args.ablation)
    summary["plan"] = plan

    def init_args(init: str) -> list[str]:
        return ["--init", init] + (["--from", str(out / "pretrain")] if init == "pretrain" else [])

    def eval_args(run: str, dest: str) -> list[str]:
        # one protocol for the recipe's model and the ablation's: same split, bootstrap and score rules
        return (["--checkpoint", str(out / run), "--pairs", str(pairs), "--out", str(out / dest), "--bootstrap",
                 str(recipe.get("eval", {}).get("bootstrap", 500)), "--threads", str(args.threads)]
                + eval_score_args(recipe))

    if plan["pretrain"] and "pretrain" not in skip:
        _step(summary, "pretrain", out, lambda: pretrain_main(common + ["--out", str(out / "pretrain")]) or
              json.loads((out / "pretrain" / "pretrain_summary.json").read_text()))
    if "contrastive" not in skip:
        _step(summary, "contrastive", out, lambda: contrastive_main(
            common + ["--out", str(out / "contrastive")] + init_args(plan["init"])) or
            json.loads((out / "contrastive" / "contrastive_summary.json").read_text()))
    if "eval" not in skip:
        _step(summary, "eval", out, lambda: eval_main(eval_args("contrastive", "eval")) or _macro(out / "eval"))
    if plan["ablation"]:
        other = plan["ablation"]
        _step(summary, f"contrastive_{other}", out, lambda: contrastive_main(
            common + ["--out", str(out / f"contrastive_{other}")] + init_args(other)) or
            json.loads((out / f"contrastive_{other}" / "contrastive_summary.json").read_text()))
        _step(summary, f"eval_{other}", out, lambda: eval_main(eval_args(f"contrastive_{other}", f"eval_{other}"))
              or _macro(out / f"eval_{other}"))
    summary["flops"] = flops_per_study(model_config_from_recipe(recipe))
    summary["total_seconds"] = round(time.time() - t_all, 1)
    summary["checkpoint"] = str(out / "contrastive" / "final.pt")
    (out / "recipe_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: summary[k] for k in ("total_seconds", "checkpoint")} | {"flops": summary["flops"]}))
    return 0


def _macro(eval_dir: Path) -> dict:
    for name in ("eval.json", "results.json", "metrics.json"):
        f = eval_dir / name
        if f.exists():
            r = json.loads(f.read_text())
            return {"macro": r.get("macro")}
    return {}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
