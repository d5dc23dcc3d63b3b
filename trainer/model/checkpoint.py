"""Checkpoints that carry everything the exporter needs.

A checkpoint is one ``torch.save`` dict (``.pt``):
  format: "totalfm-encoder-ckpt", version 1
  stage: "pretrain" | "contrastive"
  model_config: ViTConfig dict;  encoder: state_dict of OrganEncoder (backbone + projection head)
  text: {"config": text tower config dict, "state_dict": ..., "class": "module:Class"} (contrastive only)
  logit_scale: float (exp'd CLIP temperature)
  ontology: {"version", "fingerprint"}; organs: [names] (organ_index order)
  preprocessing: {"input_shape": [d,h,w], "encoder_input": "appliance.preprocess.encoder_input",
                  "recipes": {organ: CropRecipe dict}}
  thresholds: {finding: float} (filled by eval), metrics: {...}
  train_state: {step, epoch, optimizer, scaler, rng} (for resume; the exporter ignores it)
  provenance: {recipe, data, git_commit, created}
"""
from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import torch

from appliance import ontology
from appliance.errors import TotalFMError
from trainer.model.vit3d import OrganEncoder, ViTConfig

FORMAT = "totalfm-encoder-ckpt"
VERSION = 1


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parents[2]).stdout.strip() or None
    except Exception:  # noqa: BLE001 - provenance only
        return None


def base_meta(cfg: ViTConfig, *, stage: str, recipe: dict | None = None, data: dict | None = None) -> dict:
    recipes = {o.name: {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(o.crop).items()} | {"min_volume_ml": o.min_volume_ml}
               for o in ontology.ORGANS}
    measurements = {}
    if cfg.measurements:  # the appliance computes these with the same function (appliance.preprocess)
        from appliance.preprocess import measurement_version
        measurements = {"measurements": measurement_version(cfg.measurements), "n_measurements": int(cfg.measurements)}
    return {
        "format": FORMAT, "version": VERSION, "stage": stage,
        "model_config": cfg.to_dict(),
        "ontology": {"version": ontology.ONTOLOGY_VERSION, "fingerprint": ontology.ontology_fingerprint()},
        "organs": [o.name for o in ontology.ORGANS],
        "preprocessing": {"input_shape": list(cfg.input_shape), "encoder_input": "appliance.preprocess.encoder_input",
                          "crop_value_range": [0.0, 1.0], "recipes": recipes, **measurements},
        "thresholds": {}, "prompt_thresholds": {}, "metrics": {}, "logit_scale": None, "text": None,
        "provenance": {"recipe": recipe, "data": data, "git_commit": git_commit(),
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }


def save(path: str | Path, ckpt: dict) -> Path:
    """Atomic write (tmp + rename) so a kill mid-save never leaves a broken checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    return path


def read(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        for name in ("final.pt", "last.pt"):
            if (path / name).exists():
                path = path / name
                break
    if not path.exists():
        raise TotalFMError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TotalFMError(f"{path} is not a TotalFM encoder checkpoint (format {FORMAT!r} expected)")
    return ckpt


def load_encoder(path: str | Path, *, check_ontology: bool = True) -> tuple[OrganEncoder, dict]:
    """-> (OrganEncoder in eval mode with the trained weights, meta = the checkpoint dict without tensors)."""
    ckpt = read(path)
    if check_ontology:
        ontology.check_compatible(ckpt["ontology"]["version"], ckpt["ontology"]["fingerprint"], what="checkpoint")
    cfg = ViTConfig.from_dict(ckpt["model_config"])
    model = OrganEncoder(cfg)
    model.load_state_dict(ckpt["encoder"])
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("encoder", "train_state", "mae_decoder")}
    meta["input_shape"] = list(cfg.input_shape)  # what export.bundle_build reads
    if meta.get("text"):
        meta["text"] = {k: v for k, v in meta["text"].items() if k != "state_dict"}
    return model, meta


def load_text_tower(path: str | Path):
    """-> (text tower module in eval mode, its config) for checkpoints of the contrastive stage."""
    ckpt = read(path)
    t = ckpt.get("text")
    if not t:
        raise TotalFMError(f"{path} has no text tower (stage {ckpt.get('stage')!r}); use a contrastive checkpoint")
    from trainer.model.contrastive import build_text_tower
    tower = build_text_tower(t["config"])
    tower.load_state_dict(t["state_dict"])
    tower.eval()
    return tower, t["config"]


def set_thresholds(path: str | Path, thresholds: dict[str, float], metrics: dict | None = None,
                   score_rules: dict[str, str] | None = None, prompt_thresholds: dict[str, float] | None = None
                   ) -> Path:
    """Written by eval: per-finding thresholds (picked on the validation split) into the checkpoint, with the score
    rule each was calibrated under (``appliance.scoring.SCORE_RULES``) and, for "organ" findings, the threshold of
    their own prompts; the exporter copies all three into the bundle."""
    ckpt = read(path)
    ckpt["thresholds"] = {k: float(v) for k, v in thresholds.items()}
    ckpt["score_rules"] = {k: str(v) for k, v in (score_rules or {}).items()}
    ckpt["prompt_thresholds"] = {k: float(v) for k, v in (prompt_thresholds or {}).items()}
    if metrics is not None:
        ckpt["metrics"] = metrics
    p = Path(path)
    return save(p if p.is_file() else p / "final.pt", ckpt)
