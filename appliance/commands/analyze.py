"""`totalfm analyze <dicom dir | nifti> [--bundle B] [--db URL] [--json]`: run the whole pipeline once.

Prints the organs found, every finding with its score against the bundle's threshold, the draft report and the stage
timings, and stores the result as a new analysis version of the study (SQLite under var/ unless --db is given).
AI output is a DRAFT for radiologist review - not a diagnosis.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_DB = "var/totalfm.db"


def _table(out, job) -> str:
    r = out.result
    lines = [f"study {job.study_uid}  analysis version {job.analysis_version}  series {r.series_uid or '-'}",
             f"bundle {r.bundle_id}  backend {r.backend}", "", "Organs:"]
    for o in r.organs:
        if o.status == "absent":
            continue
        ml = "" if o.volume_ml is None else f"{o.volume_ml:9.1f} mL"
        hu = "" if o.mean_hu is None else f"  mean {o.mean_hu:7.1f} HU  sd {o.std_hu:6.1f}"
        lines.append(f"  {o.organ:16s} {o.status:18s}{ml}{hu}")
    absent = [o.organ for o in r.organs if o.status == "absent"]
    if absent:
        lines.append(f"  not found: {', '.join(absent)}")
    lines += ["", "Findings (score vs threshold):"]
    for f in sorted(r.findings, key=lambda f: (not f.positive, f.organ, -f.score)):
        mark = "POSITIVE" if f.positive else "        "
        lines.append(f"  {mark} {f.organ:16s} {f.finding:34s} {f.score:6.3f} / {f.threshold:.3f}")
    if not r.findings:
        lines.append("  none scored (no usable organ crop)")
    lines += ["", r.report.draft_text if r.report else "(no draft)", "",
              "Timings (s): " + ", ".join(f"{k} {v}" for k, v in r.timings.items() if k != "peak_rss_mb")
              + f"; peak RSS {r.timings.get('peak_rss_mb')} MB"]
    if r.artifacts:
        lines.append(f"Label map: {r.artifacts.get('labels')}")
    return "\n".join(lines)


def _as_json(out, job) -> dict:
    r = out.result
    return {
        "study_uid": job.study_uid, "analysis_version": job.analysis_version, "series_uid": r.series_uid,
        "bundle_id": r.bundle_id, "backend": r.backend, "timings": r.timings, "artifacts": r.artifacts,
        "organs": [{"organ": o.organ, "status": o.status, "volume_ml": o.volume_ml, "mean_hu": o.mean_hu,
                    "std_hu": o.std_hu} for o in r.organs],
        "findings": [{"organ": f.organ, "finding": f.finding, "score": f.score, "threshold": f.threshold,
                      "positive": f.positive} for f in r.findings],
        "report": {"draft_text": r.report.draft_text, "structured": r.report.structured,
                   "model_ids": r.report.model_ids} if r.report else None,
        "disclaimer": "AI draft for radiologist review - not a diagnosis",
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="totalfm analyze", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="DICOM folder/file or NIfTI file")
    ap.add_argument("--bundle", help="model bundle directory (default: $TOTALFM_BUNDLE or the embedded bundle)")
    ap.add_argument("--db", help=f"store URL (default sqlite:///{DEFAULT_DB})")
    ap.add_argument("--results", help="where the label map goes (default: var/results)")
    ap.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    ap.add_argument("--threads", type=int, default=0, help="0 = all CPUs available to this process")
    ap.add_argument("--llm", default="default", help='"default" (bundled SmolLM2), "off", or a .gguf path')
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    from appliance.pipeline import Pipeline
    from appliance.store import open_store
    from appliance.worker_service import analyse_and_store

    url = args.db
    if not url:
        Path(DEFAULT_DB).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{DEFAULT_DB}"
    results = args.results or str(Path(DEFAULT_DB).parent / "results")
    pipeline = Pipeline(args.bundle, backend=args.backend, threads=args.threads or None, llm=args.llm)
    store = open_store(url)
    try:
        job, out = analyse_and_store(store, pipeline, args.path, results)
    finally:
        store.close()
    if args.json:
        json.dump(_as_json(out, job), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(_table(out, job))
        print(f"Stored in {url.split('@')[-1]} as analysis version {job.analysis_version}.")
    return 0
