"""Training batches for the segmenter, drawn in this process or by a pool of worker processes.

Why workers: on 2 CPU cores a batch costs ~15 ms to draw against ~400-800 ms of forward / backward, so drawing in
the training process is free. On a GPU the forward / backward of the demo U-Net takes milliseconds and one process
drawing patches (scipy affine warps, ~7 ms a patch) would leave the GPU idle most of the time; a site's 16-core GPU
server draws them in parallel instead.

With workers, batch ``i`` is drawn with its own generator ``default_rng([seed, i])``, so the stream depends on the
seed alone, not on how many workers there are or which one finished first (a test checks 1 and 2 workers agree).
Without workers (``workers = 0``, the default) the sampler's own generator is used, exactly as before this module
existed, so the CPU recipes reproduce their earlier runs.
"""
from __future__ import annotations

import multiprocessing as mp
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator

import numpy as np

_SAMPLER = None  # the worker processes' copy of the PatchSampler (inherited through fork, never pickled)


def _draw(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, index, batch = args
    _SAMPLER.rng = np.random.default_rng([seed, index])
    return _SAMPLER.sample(batch)


class BatchStream:
    """Endless (x float32 [B,1,z,y,x], y int64 [B,z,y,x]) batches from ``sampler``; ``close()`` stops the workers.

    ``workers`` > 0: that many processes, forked here (in the constructor, so before the caller touches CUDA), at
    most ``prefetch`` x ``workers`` batches drawn ahead (bounded memory: a 16-patch batch of the demo patch is
    ~24 MB)."""

    def __init__(self, sampler, batch: int, *, workers: int = 0, seed: int = 0, prefetch: int = 2):
        global _SAMPLER
        self.sampler, self.batch, self.workers, self.seed = sampler, int(batch), int(workers), int(seed)
        self.index = 0
        self.depth = max(1, int(prefetch) * self.workers)
        self.pending: deque = deque()
        self.pool = None
        if self.workers > 0:
            # fork: the cases (hundreds of MB of volumes) are shared copy-on-write instead of pickled to every worker.
            # An executor, not multiprocessing.Pool: Pool.terminate() can wait forever on a queue lock that a worker
            # held when it was stopped (a CI run hung in close() that way, session 17); the executor shuts down by
            # letting its workers finish, and a dead worker raises BrokenProcessPool instead of a silent hang.
            _SAMPLER = sampler
            self.pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("fork"))
            self.pool.submit(int).result()  # the first task forks every worker: here, before CUDA is touched

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        if self.pool is None:
            return self.sampler.sample(self.batch)
        while len(self.pending) < self.depth:
            self.pending.append(self.pool.submit(_draw, (self.seed, self.index, self.batch)))
            self.index += 1
        return self.pending.popleft().result()

    def close(self) -> None:
        global _SAMPLER
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)  # at most one batch per worker is still drawn
            self.pool = None
            self.pending.clear()
            _SAMPLER = None
