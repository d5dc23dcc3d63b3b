"""Encoder compute per study: analytic count and a measured one (torch.utils.flop_counter), 2 FLOPs per MAC,
matmul/conv/attention only (the same convention as ../shared/docs/anchors.md)."""
from __future__ import annotations

import math

import torch

from trainer.model.vit3d import ConvStem, OrganEncoder, ViTConfig

ANCHORS_GFLOPS = {"Merlin (I3D ResNet-152)": 1329.0, "CT-CLIP (CT-ViT)": 967.0,
                  "16 crops ViT-S 32x128x128 (anchors)": 1013.0}
DEMO_BUDGET_GFLOPS = 170.0


def _conv_stem_flops(cfg: ViTConfig) -> float:
    stem = ConvStem(cfg.tubelet, cfg.dim)
    shape = list(cfg.input_shape)
    flops = 0.0
    for i, conv in enumerate(stem.convs):
        if i:
            shape = [n // p for n, p in zip(shape, stem.pools[i - 1])]
        flops += 2 * math.prod(shape) * conv.in_channels * conv.out_channels * math.prod(conv.kernel_size)
    return flops + 2 * cfg.n_tokens * stem.proj.in_channels * cfg.dim


def analytic_flops_per_crop(cfg: ViTConfig) -> float:
    n = cfg.n_tokens + 1
    d = cfg.dim
    hidden = int(d * cfg.mlp_ratio)
    patch = _conv_stem_flops(cfg) if cfg.stem == "conv" else 2 * cfg.n_tokens * cfg.patch_voxels * d
    per_block = 2 * n * d * 3 * d + 2 * n * n * d * 2 + 2 * n * d * d + 2 * n * d * hidden * 2
    head = 2 * cfg.feature_dim * d + 2 * d * cfg.embed_dim
    if cfg.fusion == "sum":  # the measurement branch's own projection head
        head += 2 * d * d + 2 * d * cfg.embed_dim
    readout = 2 * cfg.measurements * d  # the organ measurements' linear readout (computing them is numpy, not counted)
    return float(patch + cfg.depth * per_block + head + readout)


def measured_flops_per_crop(cfg: ViTConfig) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    model = OrganEncoder(cfg).eval()
    x = torch.zeros(1, 1, *cfg.input_shape)
    idx = torch.zeros(1, dtype=torch.long)
    extra = (torch.zeros(1, cfg.measurements),) if cfg.measurements else ()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, idx, *extra)
    return float(fc.get_total_flops())


def flops_per_study(cfg: ViTConfig, n_organs: int = 16, measured: bool = True) -> dict:
    per_crop = measured_flops_per_crop(cfg) if measured else analytic_flops_per_crop(cfg)
    g = per_crop * n_organs / 1e9
    return {"gflops_per_crop": per_crop / 1e9, "gflops_per_study": g, "organs": n_organs,
            "tokens_per_crop": cfg.n_tokens, "ratio_vs_merlin": ANCHORS_GFLOPS["Merlin (I3D ResNet-152)"] / g,
            "within_demo_budget": g <= DEMO_BUDGET_GFLOPS}


def flops_table(configs: dict[str, ViTConfig]) -> str:
    rows = ["| encoder | tokens/crop | GFLOPs/crop | GFLOPs/study (16 organs) | x below Merlin |", "|---|---|---|---|---|"]
    for name, cfg in configs.items():
        f = flops_per_study(cfg)
        rows.append(f"| {name} | {f['tokens_per_crop']} | {f['gflops_per_crop']:.2f} | {f['gflops_per_study']:.1f} "
                    f"| {f['ratio_vs_merlin']:.0f} |")
    for k, v in ANCHORS_GFLOPS.items():
        rows.append(f"| {k} (anchor) | | | {v:.0f} | {ANCHORS_GFLOPS['Merlin (I3D ResNet-152)'] / v:.1f} |")
    return "\n".join(rows)
