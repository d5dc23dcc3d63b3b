"""Recipes (TOML under trainer/recipes/) and ``totalfm train recipe NAME --out DIR``: the whole training pipeline.

demo: synth (train/val/test by the split rules) -> build-pairs -> pretrain -> contrastive -> eval -> thresholds into
the checkpoint. Every step records its wall time in OUT/recipe_summary.json.
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
