"""Benchmark: synthetic studies per minute (run on demand: .venv/bin/python bench/bench_synth.py [--n 4]).

Measures, in one process, 256x256x160 analytic phantoms with 3 lesions (blur + CT noise + report) against the bare
phantom (no blur, noise or lesions) as baseline, and real-backed studies the same way; prints the ratios, which show
what realism costs. Single process; run with --workers 2 through the CLI to use both cores.
"""

from __future__ import annotations

import argparse
import time

from trainer.synth.study import generate_study

LESIONS = ["liver_lesion", "renal_cyst", "lung_nodule"]


def _rate(fn, n: int) -> float:
    fn(0)  # warm-up (imports, caches of the real source)
    t = time.perf_counter()
    for i in range(1, n + 1):
        fn(i)
    return n / (time.perf_counter() - t) * 60.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--size", default="256,256,160", help="x,y,z voxels of the analytic phantom")
    a = ap.parse_args()
    shape = tuple(int(v) for v in a.size.split(","))[::-1]
    rows = []
    base = _rate(lambda i: generate_study("analytic", 1, i, shape=shape, realism=False), a.n)
    full = _rate(lambda i: generate_study("analytic", 1, i, shape=shape, findings=LESIONS), a.n)
    rows += [("analytic bare phantom (baseline)", base, 1.0), ("analytic + blur + noise + 3 lesions + report", full,
                                                             full / base)]
    rb = _rate(lambda i: generate_study("real-backed", 1, i, realism=False, source="ts_abdomen_pelvis"), a.n * 2)
    rf = _rate(lambda i: generate_study("real-backed", 1, i, findings=LESIONS, source="ts_abdomen_pelvis"), a.n * 2)
    rows += [("real-backed deformed only (baseline)", rb, 1.0), ("real-backed + noise + 3 lesions + report", rf,
                                                                  rf / rb)]
    print(f"shape x,y,z = {a.size}, n = {a.n} per row, one process")
    for name, rate, ratio in rows:
        print(f"{name:48s} {rate:8.1f} studies/min   ratio vs baseline {ratio:5.2f}")


if __name__ == "__main__":
    main()
