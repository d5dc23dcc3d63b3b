"""Every training stage runs the same way, single process or under ``torchrun`` (DDP):
gloo on CPU, NCCL on GPU; DistributedSampler sharding; rank-0 checkpointing (atomic, every N steps + final);
resume from ``OUT/last.pt``; AMP (bf16/fp16) on GPU; tqdm progress on rank 0; loss curve CSV + PNG.

``train_loop(spec)`` is the shared loop; stages provide the model, dataset, collate and a ``loss_fn(model, batch)``.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from trainer.model import checkpoint as ckptmod


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def cleanup():
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class ShardedBatchSampler(Sampler):
    """Wraps a list of batches (lists of dataset indices, e.g. organ-grouped) and gives each rank every world-th
    batch of an epoch-seeded shuffle; all ranks get the same number of batches (the tail is dropped)."""

    def __init__(self, batches: list[list[int]], info: DistInfo, seed: int = 0, shuffle: bool = True):
        self.batches, self.info, self.seed, self.shuffle, self.epoch = batches, info, seed, shuffle, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.batches) // self.info.world

    def __iter__(self):
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed * 1000003 + self.epoch).shuffle(order)
        n = len(self) * self.info.world
        for i in order[self.info.rank:n:self.info.world]:
            yield self.batches[i]


@dataclass
class TrainSpec:
    model: torch.nn.Module
    dataset: Any
    collate: Callable
    loss_fn: Callable  # (model, batch, device) -> (loss tensor, dict of extra floats)
    out_dir: Path
    make_ckpt: Callable[[torch.nn.Module], dict]  # unwrapped model -> checkpoint dict without train_state
    batch_size: int = 16
    batches: list[list[int]] | None = None  # pre-built batches (organ-grouped); else DistributedSampler
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    ckpt_every: int = 50
    seed: int = 0
    num_workers: int = 0
    amp: bool = True
    time_budget_s: float | None = None
    log_name: str = "loss"
    info: DistInfo | None = None
    param_groups: Callable | None = None  # model -> list of param groups (per-group lr)


def _unwrap(m):
    return m.module if hasattr(m, "module") else m


def write_curve(out_dir: Path, name: str, rows: list[dict]):
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.csv"
    keys = list(rows[0].keys()) if rows else ["step", "loss"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 3.5))
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["loss"] for r in rows], lw=0.8, label="loss")
        if len(rows) > 10:
            k = max(2, len(rows) // 20)
            sm = np.convolve([r["loss"] for r in rows], np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], sm, lw=2, label=f"mean of {k}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(name)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}.png", dpi=100)
        plt.close(fig)
    except Exception:  # noqa: BLE001 - the CSV is the record; the PNG is a convenience
        pass
    return path


def train_loop(spec: TrainSpec) -> dict:
    info = spec.info or init_distributed()
    out = Path(spec.out_dir)
    seed_all(spec.seed + info.rank)
    model = spec.model.to(info.device)
    if info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=True)
    groups = spec.param_groups(_unwrap(model)) if spec.param_groups else \
        [{"params": [p for p in model.parameters() if p.requires_grad]}]
    opt = torch.optim.AdamW(groups, lr=spec.lr, weight_decay=spec.weight_decay)
    for g in opt.param_groups:
        g.setdefault("base_lr", g["lr"])
        g["base_lr"] = g["lr"]
    use_amp = spec.amp and info.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    if spec.batches is not None:
        sampler = ShardedBatchSampler(spec.batches, info, seed=spec.seed)
        loader = DataLoader(spec.dataset, batch_sampler=sampler, collate_fn=spec.collate,
                            num_workers=spec.num_workers)
    else:
        sampler = DistributedSampler(spec.dataset, num_replicas=info.world, rank=info.rank, shuffle=True,
                                     seed=spec.seed, drop_last=True)
        loader = DataLoader(spec.dataset, batch_size=spec.batch_size, sampler=sampler, collate_fn=spec.collate,
                            num_workers=spec.num_workers, drop_last=True)
    steps_per_epoch = max(1, len(loader))
    total = spec.max_steps or spec.epochs * steps_per_epoch

    step, rows = 0, []
    last = out / "last.pt"
    if last.exists():  # resume
        ck = ckptmod.read(last)
        ts = ck["train_state"]
        _unwrap(model).load_state_dict(ts["model"])
        opt.load_state_dict(ts["optimizer"])
        if ts.get("scaler"):
            scaler.load_state_dict(ts["scaler"])
        step, rows = int(ts["step"]), list(ts.get("rows", []))
        torch.set_rng_state(ts["rng"])
        if info.is_main:
            print(f"[{spec.log_name}] resumed from {last} at step {step}/{total}", flush=True)

    def save(final: bool = False):
        if not info.is_main:
            return
        ck = spec.make_ckpt(_unwrap(model))
        ck["train_state"] = {"model": _unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                             "scaler": scaler.state_dict() if scaler.is_enabled() else None, "step": step,
                             "rows": rows, "rng": torch.get_rng_state(), "total": total}
        ckptmod.save(last, ck)
        if final:
            ck.pop("train_state")
            ckptmod.save(out / "final.pt", ck)
        write_curve(out, spec.log_name, rows)

    bar = None
    if info.is_main:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, initial=step, desc=spec.log_name, mininterval=5, leave=True)
        except ImportError:
            pass
    t0 = time.time()
    step0, t_mark, total_max = step, 0.0, total
    model.train()
    stopped_for_time = False
    while step < total:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        for i, batch in enumerate(loader):
            if i < skip:
                continue
            if step >= total:
                break
            lr_f = min(1.0, (step + 1) / max(1, spec.warmup_steps))
            lr_f *= 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, total))))
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * max(lr_f, 0.02)
            ctx = torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()
            with ctx:
                loss, extra = spec.loss_fn(model, batch, info.device)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            step += 1
            lv = float(loss.detach())
            if info.distributed:
                t = torch.tensor([lv], device=info.device)
                dist.all_reduce(t)
                lv = float(t) / info.world
            rows.append({"step": step, "loss": lv, "lr": opt.param_groups[0]["lr"],
                         **{k: float(v) for k, v in (extra or {}).items()}, "time_s": round(time.time() - t0, 2)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{lv:.4f}")
            if step % spec.ckpt_every == 0:
                save()
            if spec.time_budget_s and (step - step0) % 8 == 0:
                # fit the cosine schedule to the steps the time budget allows, from the last 8 steps' pace (the
                # first steps are slow: caches fill), re-estimated every 8 steps, the same on every rank
                now = time.time() - t0
                pace = (now - t_mark) / 8 if step - step0 >= 8 else now / 8
                t_mark = now
                est = step + int(max(0.0, spec.time_budget_s - now) / max(pace, 1e-6))
                if info.distributed:
                    t = torch.tensor([est], device=info.device)
                    dist.all_reduce(t, op=dist.ReduceOp.MIN)
                    est = int(t)
                total = max(step + 1, min(total_max, est))
            if spec.time_budget_s and time.time() - t0 > spec.time_budget_s:
                stopped_for_time = True
                total = step
                break
        if stopped_for_time:
            break
    if bar is not None:
        bar.close()
    save(final=True)
    if info.distributed:
        dist.barrier()
    return {"steps": step, "final_loss": rows[-1]["loss"] if rows else None, "time_s": time.time() - t0,
            "stopped_for_time": stopped_for_time, "world": info.world}
