"""Distributed training: 2 gloo ranks keep identical gradients/weights; torchrun runs a stage; SIGKILL + resume
continues from the checkpoint step."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.model.distributed import cleanup
from trainer.model.videomae import VideoMAE
from trainer.model.vit3d import ViTConfig

ROOT = Path(__file__).resolve().parents[2]
CFG = dict(input_shape=(8, 32, 32), tubelet=(4, 8, 8), dim=32, depth=1, heads=2, embed_dim=16)


def _worker(rank: int, world: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # same init on both ranks (DDP also broadcasts rank 0's weights)
    model = torch.nn.parallel.DistributedDataParallel(VideoMAE(ViTConfig(**CFG)), find_unused_parameters=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for _ in range(3):
        x = torch.rand(4, 1, 8, 32, 32, generator=g)
        loss = model(x, torch.randint(0, 16, (4,), generator=g), generator=g)
        opt.zero_grad()
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        gathered = [torch.zeros_like(grads) for _ in range(world)]
        dist.all_gather(gathered, grads)
        assert torch.equal(gathered[0], gathered[1]), "gradients differ across ranks"
        opt.step()
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save(w, f"{out}/w{rank}.pt")
    cleanup()  # barrier first: a rank that tears gloo down while its peer is still connected aborts (SIGABRT)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_have_identical_gradients(tmp_path):
    port = _free_port()
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    w0, w1 = torch.load(tmp_path / "w0.pt"), torch.load(tmp_path / "w1.pt")
    assert torch.equal(w0, w1)


def _cmd(out, steps, extra=()):
    return [sys.executable, "-m", "trainer.model.pretrain", "--out", str(out), "--synth-n", "1", "--steps",
            str(steps), "--batch-size", "4", "--threads", "1", *extra]


def _env():
    return os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_torchrun_two_ranks_runs_a_stage(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "trainer.model.pretrain", "--out", str(tmp_path), "--synth-n", "1", "--steps", "3",
           "--batch-size", "4", "--threads", "1"]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"world": 2' in r.stdout
    rows = (tmp_path / "pretrain_loss.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and (tmp_path / "final.pt").exists() and (tmp_path / "pretrain_loss.png").exists()


def test_kill_and_resume_continues_from_checkpoint(tmp_path):
    from trainer.model import checkpoint as ckptmod
    steps = 400
    p = subprocess.Popen(_cmd(tmp_path, steps, ("--time-budget", "600")) , cwd=ROOT, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = tmp_path / "last.pt"
    t0 = time.time()
    killed_after = None
    while time.time() - t0 < 240:
        if last.exists():
            try:
                killed_after = ckptmod.read(last)["train_state"]["step"]
            except Exception:  # noqa: BLE001 - being written; atomic rename makes this rare
                killed_after = None
            if killed_after and killed_after >= 25:
                break
        time.sleep(0.5)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert killed_after and killed_after < steps, "no checkpoint before the kill"
    saved = ckptmod.read(last)["train_state"]["step"]
    r = subprocess.run(_cmd(tmp_path, saved + 5), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {last} at step {saved}" in r.stdout + r.stderr
    import csv
    rows = list(csv.DictReader(open(tmp_path / "pretrain_loss.csv")))
    assert [int(x["step"]) for x in rows] == list(range(1, saved + 6))  # no step lost or repeated
