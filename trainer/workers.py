"""Set-up of the trainer's worker processes (pair building, crop banks): one core each, and death with the parent.

Why the second: a worker pool blocks on its task queue forever once its parent is gone. Session 17 found two crop-bank
workers of a killed `train contrastive` still alive, orphaned, 50 minutes later.
"""
from __future__ import annotations

import os
import sys


def init_worker(parent_pid: int | None = None) -> None:
    """Pool / executor ``initializer``: pass ``initargs=(os.getpid(),)`` from the parent."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if parent_pid is not None and sys.platform.startswith("linux"):
        # die with the parent: after a SIGKILL of the run, orphaned workers must not keep burning cores
        try:
            import ctypes
            import signal
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)
        except OSError:
            pass
    try:
        import torch  # only present on trainer hosts; keep a worker to one core
        torch.set_num_threads(1)
    except ImportError:
        pass
