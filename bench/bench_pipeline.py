"""Benchmark: the whole analysis pipeline on a 512x512x300 synthetic CT series (DICOM), per stage, peak RSS, and
studies per hour with 1 and 2 worker processes sharing one SQLite queue. Run on demand, not in CI:

    .venv/bin/python bench/bench_pipeline.py [--slices 300] [--jobs 4] [--bundle DIR] [--llm default|off|X.gguf]
                                             [--keep DIR] [--workers 1,2]

Every measurement runs in a fresh process (peak RSS is per process). Baseline in the same run: reading the series
alone (the `load` stage), so each stage prints its ratio to it. Without --bundle the default bundle is used
(appliance.bundle.default_bundle_path()); if none is installed, the untrained plumbing bundle is built and the
header says so: its networks are tiny random ones, so the segmentation/encoder seconds are NOT those of a real model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE_STUDY = textwrap.dedent("""
    import json, sys, time
    from appliance.pipeline import Pipeline
    t0 = time.perf_counter()
    p = Pipeline(sys.argv[1], backend=sys.argv[3], threads=int(sys.argv[4]) or None, llm=sys.argv[5])
    load_s = time.perf_counter() - t0
    out = p.analyse(sys.argv[2], out_dir=sys.argv[6])
    r = out.result
    print(json.dumps({"timings": r.timings, "pipeline_load_s": load_s, "backend": r.backend,
                      "draft": (r.report.model_ids or {}).get("draft_source"), "shape": list(out.volume.shape),
                      "organs_encoded": len(out.embeddings), "findings": len(r.findings)}))
""")


def _py(code: str, *args: str, env=None) -> dict:
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env)
    if p.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _bundle(arg: str | None, work: Path) -> tuple[str, str]:
    from appliance.bundle import BundleError, default_bundle_path, load_bundle

    if arg:
        return arg, "given"
    try:
        b = load_bundle(default_bundle_path())
        return str(b.root), "default bundle"
    except BundleError:
        out = work / "untrained_bundle"
        if not (out / "manifest.json").is_file():
            from export.untrained import build_untrained_bundle
            build_untrained_bundle(out)
        return str(out), "UNTRAINED plumbing bundle (no default bundle installed): model seconds are not a real model's"


def _throughput(series: Path, bundle: str, work: Path, n_jobs: int, n_workers: int, llm: str, cpus: int) -> dict:
    from sqlalchemy import func, select

    from appliance.store import open_store
    from appliance.store.models import Job
    from appliance.worker_service import register_input

    db = work / f"bench_{n_workers}w.db"
    if db.exists():
        db.unlink()
    url = f"sqlite:///{db}"
    store = open_store(url)
    uid = register_input(store, series)
    for _ in range(n_jobs):
        store.enqueue_analysis(uid, reason="benchmark")
    threads = max(1, cpus // n_workers)
    cfg = work / f"bench_{n_workers}w.toml"
    cfg.write_text(f'store_url = "{url}"\nspool_dir = "{work / "spool"}"\n[worker]\nbundle = "{bundle}"\n'
                   f'backend = "auto"\nllm_gguf = "{llm}"\nthreads = {threads}\nresults_dir = "{work / "results"}"\n')
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "appliance.cli", "worker", "--config", str(cfg),
                               "--exit-when-idle", "-q", "--worker-id", f"bench{i}"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(n_workers)]
    errs = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit("worker failed:\n" + "\n".join(e[-2000:] for e in errs))
    with store.read_session() as s:
        first, last, done = s.execute(select(func.min(Job.started_at), func.max(Job.finished_at),
                                             func.count()).where(Job.state == "done")).one()
    store.close()
    busy = (last - first).total_seconds()
    return {"workers": n_workers, "threads_each": threads, "jobs_done": done, "busy_s": busy, "wall_s": wall,
            "studies_per_hour": 3600.0 * done / busy if busy > 0 else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=4, help="studies queued for each throughput run")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--bundle")
    ap.add_argument("--llm", default="default")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="reuse/keep the series and bundle here (default: a temp dir)")
    args = ap.parse_args()

    from appliance.backends import cpu_count, describe_host

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    series = work / "dicom"
    if not series.is_dir():
        from appliance.dicom_write import write_ct_series
        from trainer.synth.study import generate_study

        t = time.perf_counter()
        study = generate_study("analytic", 0, 0, shape=(args.slices, 512, 512), spacing=(1.5, 0.8, 0.8))
        write_ct_series(study.image, series)
        print(f"(generated the synthetic series in {time.perf_counter() - t:.0f} s)")
    bundle, how = _bundle(args.bundle, work)
    cpus = cpu_count()
    print(f"host: {describe_host()}")
    print(f"bundle: {bundle} ({how}); LLM: {args.llm}")
    one = _py(ONE_STUDY, bundle, str(series), args.backend, str(args.threads), args.llm, str(work / "res1"))
    t = one["timings"]
    base = t["load"]
    print(f"\none study {tuple(one['shape'])} (z, y, x) on {one['backend']}, {one['organs_encoded']} organs encoded, "
          f"{one['findings']} findings, draft by {one['draft']}; models+LLM load {one['pipeline_load_s']:.2f} s")
    print(f"{'stage':10s} {'seconds':>8s} {'x load':>7s}")
    for k, v in t.items():
        if k == "peak_rss_mb":
            continue
        print(f"{k:10s} {v:8.2f} {v / base:7.2f}")
    print(f"peak RSS {t['peak_rss_mb']:.0f} MB (one process, whole run)")
    rows = []
    for n in (int(x) for x in args.workers.split(",")):
        r = _throughput(series, bundle, work, args.jobs, n, args.llm, cpus)
        rows.append(r)
    print(f"\n{'workers':>7s} {'threads':>7s} {'jobs':>5s} {'busy s':>8s} {'studies/h':>10s} {'x 1 worker':>10s}")
    for r in rows:
        print(f"{r['workers']:7d} {r['threads_each']:7d} {r['jobs_done']:5d} {r['busy_s']:8.1f} "
              f"{r['studies_per_hour']:10.1f} {r['studies_per_hour'] / rows[0]['studies_per_hour']:10.2f}")
    print(json.dumps({"one_study": one, "throughput": rows, "bundle": how, "cpus": cpus}), file=sys.stderr)
    if not args.keep:
        print(f"(work dir {work}; pass --keep DIR to reuse the series)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
