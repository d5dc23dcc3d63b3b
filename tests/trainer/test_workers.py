"""trainer.workers.init_worker: a worker process dies with its parent instead of waiting on its queue forever."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PARENT = """
import multiprocessing as mp, os, sys, time
from concurrent.futures import ProcessPoolExecutor
sys.path.insert(0, {repo!r})
from trainer.workers import init_worker
if __name__ == "__main__":
    init = init_worker if sys.argv[1] == "with" else None
    ex = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=init,
                             initargs=(os.getpid(),) if init else ())
    print(ex.submit(os.getpid).result(), flush=True)
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/status") as f:  # a zombie is dead, only not yet reaped
        return "zombie" not in f.read()


def _orphan_after_parent_killed(mode: str, tmp_path: Path, wait_s: float) -> int:
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(repo=str(REPO)))
    parent = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + wait_s
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    return worker


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_worker_dies_with_its_killed_parent(tmp_path):
    worker = _orphan_after_parent_killed("with", tmp_path, wait_s=10)
    assert not _alive(worker)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_without_it_the_worker_outlives_its_parent(tmp_path):
    """The control: what happened to the crop-bank workers of a killed `train contrastive` in session 17."""
    worker = _orphan_after_parent_killed("without", tmp_path, wait_s=2)
    try:
        assert _alive(worker)
    finally:
        os.kill(worker, signal.SIGKILL)
