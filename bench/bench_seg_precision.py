"""Benchmark: one segmenter training step (forward + loss + backward + AdamW) in fp32 and under bf16 autocast.

    .venv/bin/python bench/bench_seg_precision.py [--steps 12] [--threads 2] [--device cpu]

Times the shipped U-Net (8-16-32-64) and the wide one (16-32-64-128) at the demo recipe's batch (2) and patch
(32 x 64 x 64), with the training loss seg-train uses, in one process; fp32 of the shipped net is the baseline and every
row prints its ratio to it. The median of the steps after two warm-up steps is reported. seg-train's
``precision = "auto"`` picks bf16 where this shows it pays: on a GPU, and on a CPU with native bf16 (AMX / AVX512-BF16).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from trainer.segmentation.train import autocast, cpu_computes_bf16, dice_ce_loss
from trainer.segmentation.unet import UNet3D

NETS = {"shipped 8-16-32-64": (8, 16, 32, 64), "wide 16-32-64-128": (16, 32, 64, 128)}


def step_ms(channels, precision: str, steps: int, device: str) -> float:
    torch.manual_seed(0)
    model = UNet3D(channels=channels).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2, 1, 32, 64, 64, device=device)
    y = torch.randint(0, model.config["n_classes"], (2, 32, 64, 64), device=device)
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        with autocast(device, precision):
            logits = model(x)
        loss = dice_ce_loss(logits.float(), y, model.config["n_classes"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times[2:])) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.device}, {a.threads} threads, native CPU bf16: {cpu_computes_bf16()}, "
          f"median of {a.steps} steps, batch 2, patch 32x64x64")
    base = None
    for name, channels in NETS.items():
        for precision in ("fp32", "bf16"):
            ms = step_ms(channels, precision, a.steps, a.device)
            base = base or ms
            print(f"{name:20s} {precision:5s} {ms:7.0f} ms/step   ratio vs shipped fp32 {ms / base:5.2f}", flush=True)


if __name__ == "__main__":
    main()
