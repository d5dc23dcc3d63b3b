"""Session 17: why the segmenter's batch workers use a ProcessPoolExecutor, not multiprocessing.Pool.

A fresh-clone CI run hung in tests/trainer/test_seg_batches.py: BatchStream.close() -> Pool.terminate() waited
forever. gdb showed the main thread in task_handler.join() and the task handler blocked acquiring the result
queue's write lock, which a worker held when terminate() stopped it in the middle of sending a large batch.
This script repeats create -> draw -> stop with 8 MB results, as BatchStream does:

    python bench/experiments/pool_terminate_hang.py pool 300      # hung after 61 cycles here (timeout 60 s)
    python bench/experiments/pool_terminate_hang.py executor 300  # 300 cycles in 40 s
"""
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch  # threads alive in the parent, as in the test run

torch.ones(64, 64) @ torch.ones(64, 64)


def draw(i):
    return np.random.default_rng(i).normal(size=(16, 32, 64, 64)).astype(np.float32)  # one 8 MB batch


def main(kind: str, cycles: int) -> None:
    t0 = time.time()
    for k in range(cycles):
        if kind == "pool":
            pool = mp.get_context("fork").Pool(2)
            r = [pool.apply_async(draw, (j,)) for j in range(4)]
            r[0].get()
            pool.terminate()
            pool.join()
        else:
            ex = ProcessPoolExecutor(2, mp_context=mp.get_context("fork"))
            ex.submit(int).result()
            r = [ex.submit(draw, j) for j in range(4)]
            r[0].result()
            ex.shutdown(wait=True, cancel_futures=True)
        print(f"{kind}: cycle {k + 1}", flush=True)
    print(f"{kind}: {cycles} cycles in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
